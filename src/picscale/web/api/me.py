"""/api/v1/me: the signed-in user reads, renames and deletes their account."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, patch
from litestar.status_codes import HTTP_204_NO_CONTENT

from picscale.web.auth import (
    ProtectedController,
    cleared_session_cookie,
    current_user,
    services_of,
)
from picscale.web.schemas import ProfileIn, ProfileOut, UserOut


class MeController(ProtectedController):
    path = "/me"

    @get(summary="The signed-in user")
    async def me(self, request: Request[Any, Any, Any]) -> UserOut:
        return UserOut.of(await current_user(request))

    @patch(summary="Change your display name")
    async def update_me(self, request: Request[Any, Any, Any], data: ProfileIn) -> ProfileOut:
        user = await current_user(request)
        profile = await services_of(request).users.update_profile(user, data.display_name)
        return ProfileOut.of(profile)

    @delete(status_code=HTTP_204_NO_CONTENT, summary="Delete your account")
    async def delete_me(self, request: Request[Any, Any, Any]) -> Response[None]:
        """Everything of yours goes: photos and their media (also at the CDN edge),
        follows, sessions. There is no undo."""
        user = await current_user(request)
        services = services_of(request)
        await services.photos.delete_account(user)
        await services.sessions.delete_for_user(user.id)
        response: Response[None] = Response(None, status_code=HTTP_204_NO_CONTENT)
        response.set_cookie(cleared_session_cookie())
        return response
