"""Static files under content-hashed names: ``htmx-2.0.11.min.js`` is served as
``/static/htmx-2.0.11.min.<hash>.js``, immutable for a year, so a browser or an edge never
asks twice and a new release is a new URL. The plain name still answers, briefly cached,
for anything that links it directly."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler

from picscale.domain.errors import NotFound
from picscale.web.caching import IMMUTABLE, etag_matches

UNHASHED = "public, max-age=300"
# text types without a charset: the response adds '; charset=utf-8' to every text/ type
# (one charset parameter, not two)
_TYPES = {".js": "text/javascript", ".css": "text/css"}


@dataclass(frozen=True, slots=True)
class Asset:
    data: bytes
    content_type: str
    etag: str
    hashed: str  # the file name with its hash


class StaticAssets:
    def __init__(self, directory: Path) -> None:
        self._by_name: dict[str, Asset] = {}
        self._by_url: dict[str, tuple[Asset, bool]] = {}
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:12]
            stem, dot, ext = path.name.rpartition(".")
            hashed = f"{stem}.{digest}.{ext}" if dot else f"{path.name}.{digest}"
            content_type = _TYPES.get(path.suffix) or (
                mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            asset = Asset(data, content_type, f'"{digest}"', hashed)
            self._by_name[path.name] = asset
            self._by_url[hashed] = (asset, True)
            self._by_url[path.name] = (asset, False)

    def path(self, name: str) -> str:
        """``/static/<hashed name>`` of a file of the static directory."""
        asset = self._by_name.get(name)
        if asset is None:
            raise KeyError(f"no static file {name!r}")
        return f"/static/{asset.hashed}"

    def route(self) -> HTTPRouteHandler:
        assets = self._by_url

        @get("/static/{filename:str}", include_in_schema=False)
        async def static_file(request: Request[Any, Any, Any], filename: str) -> Response[bytes]:
            found = assets.get(filename)
            if found is None:
                raise NotFound("no such static file")
            asset, hashed = found
            headers = {
                "Cache-Control": IMMUTABLE if hashed else UNHASHED,
                "ETag": asset.etag,
                "X-Content-Type-Options": "nosniff",
                "xkey": "static",
                "Surrogate-Key": "static",
            }
            if etag_matches(request.headers.get("if-none-match"), asset.etag):
                return Response(b"", status_code=304, headers=headers)
            return Response(asset.data, media_type=asset.content_type, headers=headers)

        return static_file
