"""Who is asking: a session cookie (browsers) or a bearer token (mobile clients).

Browser writes are CSRF-protected with a double-submit token: the ``picscale_csrf``
cookie must be echoed in an ``X-CSRF-Token`` header or a ``csrf_token`` form field.
Requests authenticated by a bearer token carry no ambient credential and need no token.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any

from litestar import Controller, Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import ClientException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler

from picscale.domain.errors import Unauthorized
from picscale.domain.records import UserRecord
from picscale.services import Services

SESSION_COOKIE = "picscale_session"
CSRF_COOKIE = "picscale_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# what ``secrets.token_urlsafe(32)`` makes (43 characters), with room: anything else in
# the cookie or the header is no token (and is never echoed into a page)
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


def services_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    services: Services = connection.app.state.services
    return services


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def session_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return bearer_token(connection) or connection.cookies.get(SESSION_COOKIE) or None


async def optional_user(request: Request[Any, Any, Any]) -> UserRecord | None:
    """The signed-in user, or None. Resolved once per request."""
    state = request.state
    if "user" in state:
        cached: UserRecord | None = state["user"]
        return cached
    user: UserRecord | None = None
    token = session_token(request)
    if token:
        services = services_of(request)
        session = await services.sessions.get(token)
        if session is not None:
            await services.sticking.bind(session)  # read-your-writes for this user
            user = await services.users.get(session.user_id)
    state["user"] = user
    return user


async def resolve_user(request: Request[Any, Any, Any]) -> None:
    """Before every request that carries a credential: know the user even on public
    pages, so that their reads see their own writes."""
    if session_token(request):
        await optional_user(request)


async def current_user(request: Request[Any, Any, Any]) -> UserRecord:
    user = await optional_user(request)
    if user is None:
        raise Unauthorized(
            "log in first: send the session cookie or an 'Authorization: Bearer <token>' header"
        )
    return user


def _csrf_token(value: str | None) -> str:
    """``value`` if it is shaped like a token this service makes, else ''."""
    return value if value and _CSRF_TOKEN.fullmatch(value) else ""


def csrf_token_of(request: Request[Any, Any, Any]) -> str:
    """The token pages embed in their forms; created on first use (and when the cookie
    holds something that is not a token of ours)."""
    token: str = request.state.get("new_csrf") or _csrf_token(request.cookies.get(CSRF_COOKIE))
    if not token:
        token = secrets.token_urlsafe(32)
        request.state["new_csrf"] = token
    return token


def set_csrf_cookie(request: Request[Any, Any, Any], response: Response[Any]) -> None:
    token = request.state.get("new_csrf")
    if token and token != request.cookies.get(CSRF_COOKIE):
        response.set_cookie(_csrf_cookie(token, secure=_secure(request)))


def rotate_csrf(request: Request[Any, Any, Any], response: Response[Any]) -> str:
    token = secrets.token_urlsafe(32)
    request.state["new_csrf"] = token
    response.set_cookie(_csrf_cookie(token, secure=_secure(request)))
    return token


def _secure(request: Request[Any, Any, Any]) -> bool:
    # as the session cookie: production is served over HTTPS (a proxy may end TLS, so
    # the scheme the app sees is no guide there)
    return services_of(request).settings.is_production or request.url.scheme == "https"


def _csrf_cookie(token: str, *, secure: bool) -> Cookie:
    # readable by the page's script (it sends the header); SameSite adds a second fence
    return Cookie(
        key=CSRF_COOKIE, value=token, path="/", httponly=False, samesite="lax", secure=secure
    )


def session_cookie(token: str, *, max_age: int, secure: bool) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=token,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
        max_age=max_age,
    )


def cleared_session_cookie() -> Cookie:
    return Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True)


def protect(handlers: Sequence[BaseRouteHandler]) -> list[BaseRouteHandler]:
    """Put the CSRF guard on the handlers that change something. (Litestar copies a
    handler for every guard call, so safe handlers are better off without one.)"""
    for handler in handlers:
        if isinstance(handler, HTTPRouteHandler) and not set(handler.http_methods) <= SAFE_METHODS:
            handler.guards = [*(handler.guards or []), csrf_guard]
    return list(handlers)


class ProtectedController(Controller):
    """A controller whose handlers that change something are CSRF-guarded (``protect``)."""

    def get_route_handlers(self) -> list[BaseRouteHandler]:
        return protect(super().get_route_handlers())  # this controller's own copies


async def csrf_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """Refuse unsafe requests that ride on cookies without proving they came from us."""
    if connection.scope.get("method", "GET") in SAFE_METHODS:
        return
    # media types are case-insensitive (RFC 9110), as the framework reads them: a form
    # sent as 'Application/x-www-form-urlencoded' is still a form
    media_type = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "text/plain":
        # the one body type a cross-site form (or a no-cors fetch) can send without a CORS
        # preflight: no handler takes it, and JSON sent as text is not taken as JSON
        raise ClientException("send JSON with 'Content-Type: application/json'", status_code=415)
    if bearer_token(connection):
        return
    is_form = media_type in _FORM_TYPES
    if not connection.cookies.get(SESSION_COOKIE) and (
        not is_form or connection.scope["path"].startswith("/api/")
    ):
        # no ambient credential to abuse (handlers needing a user answer 401)
        return
    expected = _csrf_token(connection.cookies.get(CSRF_COOKIE))
    supplied = connection.headers.get(CSRF_HEADER, "")
    if not supplied and is_form:
        request: Request[Any, Any, Any] = Request(connection.scope, connection.receive)
        supplied = str((await request.form()).get(CSRF_FIELD, ""))
    # a token not shaped like ours (such as non-ASCII text, which compare_digest refuses
    # to compare) fails the check rather than breaking it
    supplied = _csrf_token(supplied)
    if not expected or not supplied or not hmac.compare_digest(expected, supplied):
        raise PermissionDeniedException(
            "CSRF check failed: reload the page and try again (API clients: send the "
            "picscale_csrf cookie's value in an X-CSRF-Token header, or use a bearer token)"
        )
