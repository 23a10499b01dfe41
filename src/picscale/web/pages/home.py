"""The home page (the feed, or a landing page for visitors) and the upload form."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.response import Template

from picscale.web.auth import ProtectedController, optional_user, services_of
from picscale.web.pages.rendering import GALLERY_SIZE, login_redirect, render


class HomePages(ProtectedController):
    @get("/")
    async def home(self, request: Request[Any, Any, Any], cursor: str | None = None) -> Template:
        user = await optional_user(request)
        if user is None:
            return await render(request, "landing.html")
        page = await services_of(request).social.feed(user, cursor, GALLERY_SIZE)
        return await render(request, "feed.html", page=page)

    @get("/upload")
    async def upload_form(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if await optional_user(request) is None:
            return login_redirect(request)
        return await render(request, "upload.html")
