"""/api/v1/feed: the signed-in user's home feed."""

# no `from __future__ import annotations`: Litestar would evaluate the handlers' string
# annotations in the module's namespace, where `limit`'s `settings` does not exist
from typing import Annotated, Any

from litestar import Request, get

from picscale.settings import Settings
from picscale.web.api.paging import Cursor, page_size
from picscale.web.auth import ProtectedController, current_user, services_of
from picscale.web.schemas import PageOut
from picscale.web.shared import MediaUrls


def feed_controller(settings: Settings, urls: MediaUrls) -> type[ProtectedController]:
    """Made when the app is built: the page size's bounds and default come from settings."""

    class FeedController(ProtectedController):
        path = "/feed"

        @get(summary="Home feed: your photos and those of people you follow")
        async def feed(
            self,
            request: Request[Any, Any, Any],
            cursor: Cursor = None,
            limit: Annotated[int, page_size(settings)] = settings.feed.page_size,
        ) -> PageOut:
            user = await current_user(request)
            return urls.page(await services_of(request).social.feed(user, cursor, limit))

    return FeedController
