"""What every page controller shares: a template rendered with what each page shows (the
user, the CSRF token, media URLs), the way to the login form, and the form body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from picscale.settings import Settings
from picscale.web.auth import csrf_token_of, optional_user, set_csrf_cookie
from picscale.web.caching import anonymous, shared_headers
from picscale.web.shared import MediaUrls

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]

GALLERY_SIZE = 12  # photos on a page of a gallery; one of the cached first-page sizes


@dataclass(frozen=True, slots=True)
class PageContext:
    """What pages are rendered with: made by create_app, kept as ``app.state.pages``."""

    urls: MediaUrls
    max_upload_mb: int
    shared_seconds: int

    @classmethod
    def of(cls, settings: Settings, urls: MediaUrls) -> PageContext:
        max_upload_mb = settings.photos.max_upload_bytes // (1024 * 1024)
        return cls(urls, max_upload_mb, settings.cdn.shared_seconds)


async def render(
    request: Request[Any, Any, Any],
    template: str,
    status_code: int = 200,
    shared: str | None = None,
    **context: Any,
) -> Template:
    """``shared``: the surrogate keys of a page anyone may see; an anonymous visitor's
    copy (no form on it, so no CSRF token or cookie) may then be kept by the edge."""
    pages: PageContext = request.app.state.pages
    user = await optional_user(request)
    public = shared is not None and user is None and anonymous(request)
    context.update(
        me=user,
        csrf_token="" if public else csrf_token_of(request),
        urls=pages.urls,
        max_upload_mb=pages.max_upload_mb,
    )
    headers = (
        shared_headers(request, shared, pages.shared_seconds)
        if public and shared is not None
        else None
    )
    response = Template(template, context=context, status_code=status_code, headers=headers)
    if not public:
        set_csrf_cookie(request, response)
    return response


def login_redirect(request: Request[Any, Any, Any]) -> Redirect:
    return Redirect(f"/login?next={quote(request.url.path)}")
