"""/api/v1/users: sign up, profiles, follows and a user's photos."""

# no `from __future__ import annotations`: Litestar would evaluate the handlers' string
# annotations in the module's namespace, where `limit`'s `settings` does not exist
from typing import Annotated, Any

from litestar import Request, Response, delete, get, post, put
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from picscale.domain.errors import NotFound
from picscale.settings import Settings
from picscale.web.api.paging import Cursor, page_size
from picscale.web.auth import ProtectedController, current_user, services_of
from picscale.web.caching import shared_headers
from picscale.web.schemas import PageOut, ProfileOut, SignUpIn, UserOut
from picscale.web.shared import MediaUrls


def users_controller(settings: Settings, urls: MediaUrls) -> type[ProtectedController]:
    """Made when the app is built: the page size's bounds and default come from settings."""
    shared_seconds = settings.cdn.shared_seconds

    class UsersController(ProtectedController):
        path = "/users"

        @post(status_code=HTTP_201_CREATED, summary="Sign up")
        async def sign_up(self, request: Request[Any, Any, Any], data: SignUpIn) -> UserOut:
            user = await services_of(request).users.sign_up(
                data.username, data.password, data.display_name
            )
            return UserOut.of(user)

        @get("/{username:str}", summary="A profile")
        async def profile(
            self, request: Request[Any, Any, Any], username: str
        ) -> Response[ProfileOut]:
            found = await services_of(request).users.profile(username)
            if found is None:
                raise NotFound(f"no user is called {username!r}")
            headers = shared_headers(request, f"profile-{found.id}", shared_seconds)
            return Response(ProfileOut.of(found), headers=headers)

        @put("/{username:str}/follow", status_code=HTTP_204_NO_CONTENT, summary="Follow")
        async def follow(self, request: Request[Any, Any, Any], username: str) -> None:
            await services_of(request).social.follow(await current_user(request), username)

        @delete("/{username:str}/follow", status_code=HTTP_204_NO_CONTENT, summary="Unfollow")
        async def unfollow(self, request: Request[Any, Any, Any], username: str) -> None:
            await services_of(request).social.unfollow(await current_user(request), username)

        @get("/{username:str}/photos", summary="A user's photos, newest first")
        async def user_photos(
            self,
            request: Request[Any, Any, Any],
            username: str,
            cursor: Cursor = None,
            limit: Annotated[int, page_size(settings)] = settings.feed.page_size,
        ) -> Response[PageOut]:
            services = services_of(request)
            found = await services.users.profile(username)
            if found is None:
                raise NotFound(f"no user is called {username!r}")
            page = urls.page(await services.photos.by_owner(found.id, cursor, limit))
            headers = shared_headers(request, f"profile-{found.id}", shared_seconds)
            return Response(page, headers=headers)

    return UsersController
