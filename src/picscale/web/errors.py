"""Every error leaves as JSON ``{status_code, detail}`` with a message a person can act on.

Browser pages get the same message as a small HTML page instead.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Template

from picscale.domain.errors import DomainError, TooManyRequests
from picscale.tiers.db import DatabaseUnavailable
from picscale.tiers.db.database import ShardMoving
from picscale.tiers.sessions import SessionStoreUnavailable

log = structlog.get_logger(__name__)

SHARD_MOVING_HEADER = "x-picscale-shard-moving"

_MESSAGES = {
    400: "the request is malformed",
    401: "log in first: send the session cookie or an 'Authorization: Bearer <token>' header",
    403: "you are not allowed to do this",
    404: "nothing here: check the address",
    405: "this method is not allowed on this address",
    413: "the request body is too large",
    415: "this content type is not accepted here",
    500: "something went wrong on our side; it has been logged, please try again",
}


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/media/", "/static/", "/schema", "/metrics", "/healthz")):
        return False
    if request.headers.get("hx-request"):
        return False
    return "text/html" in request.headers.get("accept", "")


def _validation_detail(exc: ValidationException) -> str:
    detail = exc.detail or "the request is invalid"
    extra = exc.extra
    if isinstance(extra, list) and extra:
        parts = []
        for item in extra:
            if isinstance(item, dict):
                message = str(item.get("message", "")).strip()
                key = item.get("key")
                parts.append(f"{key}: {message}" if key and key not in message else message)
            else:
                parts.append(str(item))
        detail = "; ".join(p for p in parts if p) or detail
    return detail


def _render(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    if _wants_html(request):
        return Template(
            "error.html",
            context={"status_code": status, "detail": detail},
            status_code=status,
            headers=headers,
        )
    return Response(
        {"status_code": status, "detail": detail},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    headers: dict[str, str] | None = None
    if isinstance(exc, DomainError):
        status, detail = exc.status, exc.message
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, SessionStoreUnavailable):
        log.warning("session_store_unavailable", error=repr(exc)[:300])
        status = 503
        detail = "the session store is unavailable for a moment: try again shortly"
        headers = {"Retry-After": "2"}
    elif isinstance(exc, ShardMoving):
        # the request context replays the request once the map has moved on (the header
        # is its signal, never sent to a client); what reaches a client is a 503
        status = 503
        detail = "this account's data is moving between database clusters: try again"
        headers = {"Retry-After": "1", SHARD_MOVING_HEADER: str(exc.map_version or 0)}
    elif isinstance(exc, DatabaseUnavailable):
        log.warning("database_unavailable", error=repr(exc)[:300])
        status = 503
        detail = "the database is unavailable for a moment (a failover?): try again shortly"
        headers = {"Retry-After": "2"}
    elif isinstance(exc, ValidationException):
        # the body could not be decoded into the expected shape: a client error to fix
        status, detail = 422, _validation_detail(exc)
        if exc.detail and "boundary" in exc.detail:
            status = 400
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        generic = exc.detail in ("", None) or exc.detail == _default_phrase(status)
        detail = _MESSAGES.get(status, "request failed") if generic else exc.detail
        if exc.headers:
            headers = dict(exc.headers)
    else:
        log.exception("unhandled_error", error=type(exc).__name__)
        status, detail = 500, _MESSAGES[500]
    return _render(request, status, detail, headers)


def _default_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
