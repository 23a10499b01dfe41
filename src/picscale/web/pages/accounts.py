"""Sign up, log in and log out, as HTML forms."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Redirect, Template

from picscale.domain.errors import DomainError
from picscale.web.auth import (
    SESSION_COOKIE,
    ProtectedController,
    cleared_session_cookie,
    services_of,
)
from picscale.web.pages.rendering import Form, render
from picscale.web.shared import client_address, start_session


def _safe_next(target: str | None) -> str:
    # only local paths: never an open redirect to another site, nor a control character
    # in the Location header
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
        return target
    return "/"


class AccountPages(ProtectedController):
    @get("/signup")
    async def signup_form(self, request: Request[Any, Any, Any]) -> Template:
        return await render(request, "signup.html", values={})

    @post("/signup")
    async def signup(self, request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        services = services_of(request)
        try:
            user = await services.users.sign_up(
                data.get("username", ""), data.get("password", ""), data.get("display_name")
            )
        except DomainError as exc:
            values = {
                "username": data.get("username", ""),
                "display_name": data.get("display_name", ""),
            }
            return await render(
                request, "signup.html", exc.status, error=exc.message, values=values
            )
        response = Redirect("/")
        await start_session(request, services, user, response)
        return response

    @get("/login")
    async def login_form(
        self, request: Request[Any, Any, Any], next: str | None = None
    ) -> Template:
        return await render(request, "login.html", next=_safe_next(next), username="")

    @post("/login")
    async def login(self, request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        services = services_of(request)
        target = _safe_next(data.get("next"))
        try:
            user = await services.users.authenticate(
                data.get("username", ""), data.get("password", ""), client_address(request)
            )
        except DomainError as exc:
            return await render(
                request,
                "login.html",
                exc.status,
                error=exc.message,
                next=target,
                username=data.get("username", ""),
            )
        response = Redirect(target)
        await start_session(request, services, user, response)
        return response

    @post("/logout")
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await services_of(request).sessions.delete(token)
        response = Redirect("/")
        response.set_cookie(cleared_session_cookie())
        return response
