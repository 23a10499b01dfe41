"""The JSON API for mobile clients (and the browser's upload and edit scripts): version 1,
one controller per resource, documented at /schema.

A controller whose OpenAPI description takes settings (page sizes, the upload limit) is
made by a factory when the app is built; its handlers find the settings and the media URLs
in the factory's scope, with nothing to look up per request. A handler's docstring is its
operation's description in the OpenAPI document."""

from __future__ import annotations

from litestar import Router

from picscale.settings import Settings
from picscale.web.api.feed import feed_controller
from picscale.web.api.jobs import JobsController
from picscale.web.api.me import MeController
from picscale.web.api.photos import photos_controller
from picscale.web.api.sessions import SessionsController
from picscale.web.api.users import users_controller
from picscale.web.shared import MediaUrls


def api_router(settings: Settings, urls: MediaUrls) -> Router:
    return Router(
        "/api/v1",
        route_handlers=[
            users_controller(settings, urls),
            SessionsController,
            MeController,
            photos_controller(settings, urls),
            JobsController,
            feed_controller(settings, urls),
        ],
        tags=["api"],
    )
