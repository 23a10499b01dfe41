"""Media files, health probes and metrics."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from litestar import Request, Response, Router, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from picscale.domain.errors import NotFound
from picscale.domain.media import variant_key
from picscale.imaging import ImageFormat
from picscale.tiers.storage import MediaNotFound
from picscale.web.auth import services_of
from picscale.web.caching import IMMUTABLE, byte_range, etag_matches

# /media/{photo id}/v{version}/{variant}.{ext}: anything else names nothing
_ID = re.compile(r"^[0-9]{1,19}$")
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")
_FILE = re.compile(r"^(original|large|thumb)\.(jpg|png|webp)$")


@get("/media/{photo_id:str}/{version:str}/{filename:str}", include_in_schema=False)
async def media(
    request: Request[Any, Any, Any], photo_id: str, version: str, filename: str
) -> Response[bytes]:
    id_ok, v_match, f_match = _ID.match(photo_id), _VERSION.match(version), _FILE.match(filename)
    if not (id_ok and v_match and f_match):
        raise NotFound("no such media: URLs look like /media/<photo id>/v<n>/<variant>.<ext>")
    fmt = ImageFormat.from_extension(f_match.group(2))
    assert fmt is not None
    key = variant_key(int(photo_id), int(v_match.group(1)), f_match.group(1), fmt.extension)
    services = services_of(request)
    photo = await services.photos.get(int(photo_id))
    if photo is None:
        raise NotFound("no such media (the photo may have been deleted)")
    try:
        data = await services.storage.get(key)
    except MediaNotFound:
        raise NotFound("no such media (the photo may have been deleted)") from None
    etag = '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'
    tags = f"photo-{photo.id} user-{photo.owner_id}"
    headers = {
        "Cache-Control": IMMUTABLE,
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'",
        # what an edge purges by: this photo, or everything of its owner
        "xkey": tags,
        "Surrogate-Key": tags,
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(b"", status_code=304, headers=headers)
    wanted = request.headers.get("range")
    if wanted is not None and etag_matches(request.headers.get("if-range", etag), etag):
        span = byte_range(wanted, len(data))
        if span is None:  # unsatisfiable
            headers["Content-Range"] = f"bytes */{len(data)}"
            return Response(b"", status_code=416, headers=headers)
        if span != (0, len(data) - 1):
            first, last = span
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return Response(
                data[first : last + 1],
                status_code=206,
                media_type=fmt.content_type,
                headers=headers,
            )
    return Response(data, media_type=fmt.content_type, headers=headers)


@get("/healthz", summary="Alive", tags=["ops"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Ready: database, queue and storage answer", tags=["ops"])
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """503 only when this process can serve nothing: a load balancer takes it out of the
    pool. A shared dependency whose loss the service rides out does not count, or every
    server would leave the pool at once and a partial outage would become a whole one:
    the queue (jobs wait in the database: the lease table, or the outbox while a broker is
    down), and the primary database while there are replicas (reads go on; writes wait
    for the failover). Those are reported as "degraded"."""
    services = services_of(request)
    checks: dict[str, str] = {}

    async def check(name: str, probe: Any) -> bool:
        try:
            await asyncio.wait_for(probe(), timeout=2.0)
            checks[name] = "ok"
            return True
        except Exception as exc:  # a probe reports, it does not crash
            checks[name] = f"failing: {type(exc).__name__}: {exc}"[:300]
            return False

    database = await check("database", services.db.ping)
    queue = await check("queue", services.queue.depth)
    storage = await check("storage", services.storage.ping)
    ready = storage and (database or services.db.replicas is not None)
    status = "ok" if database and queue and storage else "degraded" if ready else "unavailable"
    return Response(
        {"status": status, "checks": checks},
        status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
    )


@get("/metrics", summary="Prometheus metrics", tags=["ops"], include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    services = services_of(request)
    services.metrics.cache_store_figures(await services.cache.stats())
    body, content_type = services.metrics.exposition()
    return Response(body, media_type=content_type)


def build_system() -> Router:
    return Router("/", route_handlers=[media, healthz, readyz, metrics])
