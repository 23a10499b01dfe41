"""Images made in memory, for uploads."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def image_bytes(
    width: int = 640,
    height: int = 480,
    fmt: str = "JPEG",
    *,
    exif: Image.Exif | None = None,
    color: tuple[int, int, int] = (200, 80, 40),
) -> bytes:
    img = Image.new("RGB", (width, height), color)
    # some structure, so crops and blurs change something
    for x in range(0, width, max(1, width // 16)):
        for y in range(height):
            img.putpixel((x, y), (0, 0, 0))
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif is not None:
        kwargs["exif"] = exif
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PicscaleTestCamera"
    gps = {1: "N", 2: (37.0, 33.0, 58.0), 3: "E", 4: (126.0, 58.0, 40.0)}
    exif[0x8825] = gps
    return exif


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size
