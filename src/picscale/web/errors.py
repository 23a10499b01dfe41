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
            # no form on it: no CSRF token (the name would be the framework's own function)
            context={"status_code": status, "detail": detail, "csrf_token": ""},
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
    elif (undecodable := _undecodable_body(exc)) is not None:
        status, detail = 400, undecodable
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


# where the framework decodes a request's body: the JSON decoder and the multipart parser
_BODY_DECODERS = frozenset({"litestar.serialization.msgspec_hooks", "litestar._multipart"})


def _undecodable_body(exc: Exception) -> str | None:
    """What is wrong with a body the framework failed to decode, for the failures it lets
    through as they are (it answers 400 to the others): text that is not valid in its
    charset (or a charset nobody knows), JSON nested deeper than the decoder recurses.
    Told apart from the same errors in our own code by where they were raised."""
    # (a codec's "unknown encoding" is a plain LookupError, not a KeyError or IndexError)
    if not (isinstance(exc, UnicodeDecodeError | RecursionError) or type(exc) is LookupError):
        return None
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    if tb.tb_frame.f_globals.get("__name__") not in _BODY_DECODERS:
        return None
    if isinstance(exc, RecursionError):
        return "the JSON body is nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return f"the request body is not valid {exc.encoding.upper()} text"
    return "the request body names a charset that is not known: send UTF-8"


def _default_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
