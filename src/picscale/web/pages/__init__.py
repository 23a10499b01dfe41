"""Server-rendered pages for browsers (Jinja2 + htmx): the same domain as the API, as HTML
forms and fragments. None of them is in the OpenAPI document."""

from litestar import Router

from picscale.web.pages.accounts import AccountPages
from picscale.web.pages.home import HomePages
from picscale.web.pages.photos import PhotoPages
from picscale.web.pages.profiles import ProfilePages


def pages_router() -> Router:
    return Router(
        "/",
        route_handlers=[HomePages, AccountPages, ProfilePages, PhotoPages],
        include_in_schema=False,
    )
