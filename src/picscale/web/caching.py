"""What a response lets caches do with it, and conditional and partial GETs.

- Media and hashed static files never change under their URL: ``IMMUTABLE``.
- Reads anyone may see (a profile, a user's photos, a photo), asked for by an anonymous
  visitor: ``PUBLIC`` lets an edge keep them briefly (``s-maxage``), serve them stale
  while it revalidates and while the origin fails, tagged with surrogate keys so that a
  change purges them. Browsers (``max-age=0``) always revalidate.
- Everything else, and anything a signed-in user reads: ``private, no-store`` (set by the
  request middleware on every response that does not say otherwise).
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from picscale.domain.text import decimal
from picscale.web.auth import SESSION_COOKIE

IMMUTABLE = "public, max-age=31536000, immutable"
# of a read anyone may see: kept ``s-maxage`` seconds (PICSCALE_CDN_SHARED_SECONDS)
PUBLIC = "public, max-age=0, s-maxage={}, stale-while-revalidate=30, stale-if-error=300"
PRIVATE = "private, no-store"


def anonymous(request: Request[Any, Any, Any]) -> bool:
    """No credentials: what this request reads is what everyone reads."""
    return not request.headers.get("authorization") and SESSION_COOKIE not in request.cookies


def shared_headers(request: Request[Any, Any, Any], keys: str, seconds: int) -> dict[str, str]:
    """Headers of a read anyone may see: an edge may keep an anonymous visitor's copy,
    tagged ``keys`` (space-separated surrogate keys); a signed-in reader's is private."""
    if not anonymous(request):
        return {"Cache-Control": PRIVATE}
    return {
        "Cache-Control": PUBLIC.format(seconds),
        "Vary": "Authorization, Cookie, HX-Request",
        "xkey": keys,
        "Surrogate-Key": keys,
    }


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` / ``If-Range``: a list of tags, weak ones compared weakly, or *."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _position(raw: str) -> int | None:
    return decimal(raw, max_digits=64) if raw else None


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one range of ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as (first, last);
    the whole file for what this does not serve (several ranges, other units); None when
    no byte of it exists (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return (0, size - 1)
    start, dash, end = (part.strip() for part in spec.strip().partition("-"))
    # ASCII digits only (``bytes=²-`` is no range); a number past any file's size is
    # as good as any other, so no length limit beyond the header's
    first_at, last_at = _position(start), _position(end)
    if not dash or (start and first_at is None) or (end and last_at is None):
        return (0, size - 1)  # not a range this serves: the whole file
    if first_at is None:  # the last n bytes
        if last_at is None:
            return (0, size - 1)
        return None if last_at == 0 or size == 0 else (max(0, size - last_at), size - 1)
    first = first_at
    last = last_at if last_at is not None else size - 1
    if first >= size or last < first:
        return None if first >= size else (0, size - 1)
    return first, min(last, size - 1)
