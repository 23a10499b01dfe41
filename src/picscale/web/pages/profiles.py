"""A user's profile page (a gallery of their photos), and its follow button."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Template

from picscale.domain.errors import NotFound
from picscale.domain.records import ProfileRecord
from picscale.web.auth import ProtectedController, optional_user, services_of
from picscale.web.pages.rendering import GALLERY_SIZE, login_redirect, render


async def _profile(request: Request[Any, Any, Any], username: str) -> ProfileRecord:
    found = await services_of(request).users.profile(username)
    if found is None:
        raise NotFound(f"no user is called {username!r}")
    return found


async def _follow_button(
    request: Request[Any, Any, Any], username: str, follow: bool
) -> Response[Any]:
    me = await optional_user(request)
    if me is None:
        return login_redirect(request)
    services = services_of(request)
    if follow:
        await services.social.follow(me, username)
    else:
        await services.social.unfollow(me, username)
    found = await _profile(request, username)
    # the follower's own follow shows at once (the count itself follows by a job)
    count = await services.social.follower_count_seen_by(me, found.id)
    found = msgspec.structs.replace(found, follower_count=count)
    return await render(request, "_follow.html", profile=found, following=follow)


class ProfilePages(ProtectedController):
    @get("/u/{username:str}")
    async def profile(
        self, request: Request[Any, Any, Any], username: str, cursor: str | None = None
    ) -> Template:
        services = services_of(request)
        found = await _profile(request, username)
        me = await optional_user(request)
        following = me is not None and await services.social.is_following(me, found.id)
        page = await services.photos.by_owner(found.id, cursor, GALLERY_SIZE)
        template = "_grid.html" if request.headers.get("hx-request") else "profile.html"
        return await render(
            request,
            template,
            profile=found,
            following=following,
            page=page,
            more_url=f"/u/{found.username}?cursor=",
            shared=f"profile-{found.id}",
        )

    @post("/u/{username:str}/follow")
    async def follow(self, request: Request[Any, Any, Any], username: str) -> Response[Any]:
        return await _follow_button(request, username, True)

    @post("/u/{username:str}/unfollow")
    async def unfollow(self, request: Request[Any, Any, Any], username: str) -> Response[Any]:
        return await _follow_button(request, username, False)
