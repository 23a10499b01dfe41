"""/api/v1/sessions: log in (a bearer token, and the browser's cookie) and log out."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from picscale.web.auth import (
    SESSION_COOKIE,
    ProtectedController,
    bearer_token,
    cleared_session_cookie,
    services_of,
)
from picscale.web.schemas import LogInIn, SessionOut, UserOut
from picscale.web.shared import client_address, start_session


class SessionsController(ProtectedController):
    path = "/sessions"

    @post(status_code=HTTP_201_CREATED, summary="Log in")
    async def log_in(self, request: Request[Any, Any, Any], data: LogInIn) -> Response[SessionOut]:
        services = services_of(request)
        user = await services.users.authenticate(
            data.username, data.password, client_address(request)
        )
        response = Response(SessionOut("", UserOut.of(user)), status_code=HTTP_201_CREATED)
        response.content.token = await start_session(request, services, user, response)
        return response

    @delete(status_code=HTTP_204_NO_CONTENT, summary="Log out")
    async def log_out(self, request: Request[Any, Any, Any]) -> Response[None]:
        services = services_of(request)
        for token in {request.cookies.get(SESSION_COOKIE), bearer_token(request)}:
            if token:
                await services.sessions.delete(token)
        response: Response[None] = Response(None, status_code=HTTP_204_NO_CONTENT)
        response.set_cookie(cleared_session_cookie())
        return response
