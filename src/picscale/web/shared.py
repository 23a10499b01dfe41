"""What the JSON API and the pages both use: ids from paths, the address a login comes
from, the session a login starts, and the URLs and JSON shapes of photos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request, Response

from picscale.domain.errors import NotFound
from picscale.domain.records import Page, PhotoRecord, UserRecord
from picscale.domain.text import decimal
from picscale.services import Services
from picscale.web.auth import SESSION_COOKIE, rotate_csrf, session_cookie
from picscale.web.schemas import OwnerOut, PageOut, PhotoOut, PhotoUrls


def parse_id(raw: str, what: str) -> int:
    """Ids travel as decimal strings of ASCII digits; anything else names nothing that
    exists (``²`` is a digit to ``str.isdigit``, and full-width digits convert to a real
    id, which would make them another spelling of it)."""
    value = decimal(raw, max_digits=19)
    if value is None or value >= 2**63:
        raise NotFound(f"{what} {raw!r} does not exist: ids are decimal numbers")
    return value


def client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


async def start_session(
    request: Request[Any, Any, Any], services: Services, user: UserRecord, response: Response[Any]
) -> str:
    """A fresh session id (and CSRF token) at every login; the browser's old one is dropped."""
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await services.sessions.delete(old)
    session = await services.sessions.create(user.id)
    await services.sticking.bind(session, new=True)
    secure = services.settings.is_production
    ttl = services.settings.sessions.ttl_seconds
    response.set_cookie(session_cookie(session.token, max_age=ttl, secure=secure))
    rotate_csrf(request, response)
    return session.token


class MediaUrls:
    """Builds versioned, immutable media URLs, on the CDN edge while it is healthy
    (``base`` returns its URL then, '' for origin-relative URLs otherwise)."""

    def __init__(self, base: Callable[[], str] = lambda: "") -> None:
        self.base = base

    def url(self, photo: PhotoRecord, variant: str, version: int | None = None) -> str:
        ext = {"jpeg": "jpg"}.get(photo.format, photo.format)
        return f"{self.base()}/media/{photo.id}/v{version or photo.version}/{variant}.{ext}"

    def urls(self, photo: PhotoRecord) -> PhotoUrls | None:
        if photo.version < 1:
            return None
        return PhotoUrls(
            self.url(photo, "original"), self.url(photo, "large"), self.url(photo, "thumb")
        )

    def photo(self, p: PhotoRecord) -> PhotoOut:
        return PhotoOut(
            id=str(p.id),
            owner=OwnerOut(str(p.owner_id), p.owner_username),
            caption=p.caption,
            created_at=p.created_at,
            version=p.version,
            width=p.width,
            height=p.height,
            status=p.status,
            urls=self.urls(p),
        )

    def page(self, page: Page) -> PageOut:
        return PageOut([self.photo(p) for p in page.items], page.next_cursor)
