"""Media files: /media/{photo id}/v{version}/{variant}.{ext}, immutable under their URL,
tagged for purges at the edge, with conditional and partial GETs."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from litestar import Controller, Request, Response, get

from picscale.domain.errors import NotFound
from picscale.domain.media import variant_key
from picscale.imaging import ImageFormat
from picscale.tiers.storage import MediaNotFound
from picscale.web.auth import services_of
from picscale.web.caching import IMMUTABLE, byte_range, etag_matches
from picscale.web.security import NOTHING

# /media/{photo id}/v{version}/{variant}.{ext}: anything else names nothing
_ID = re.compile(r"[0-9]{1,19}")
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")
_FILE = re.compile(r"(original|large|thumb)\.(jpg|png|webp)")


class MediaController(Controller):
    path = "/media"
    include_in_schema = False

    @get("/{photo_id:str}/{version:str}/{filename:str}")
    async def media(
        self, request: Request[Any, Any, Any], photo_id: str, version: str, filename: str
    ) -> Response[bytes]:
        id_ok, v_match, f_match = (
            _ID.fullmatch(photo_id) and int(photo_id) < 2**63,
            _VERSION.fullmatch(version),
            _FILE.fullmatch(filename),
        )
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
            "Content-Security-Policy": NOTHING,
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
