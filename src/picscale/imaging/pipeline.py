"""The image pipeline (pyvips): check an upload, then render a version's variants.

Only JPEG, PNG and WebP reach the decoder, chosen by their magic bytes: libvips can load
many other formats (SVG, PDF, ...) that must never be parsed from user uploads.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import pyvips

from picscale.imaging.ops import Blur, Crop, Operation, Sharpen

VARIANT_WIDTHS = {"large": 1080, "thumb": 320}
_LOADERS = {"jpeg": "jpegload_buffer", "png": "pngload_buffer", "webp": "webpload_buffer"}
_KEEP_NONE = 0  # VipsForeignKeep NONE: no EXIF, XMP, IPTC, ICC or other metadata


class ImageFormat(enum.Enum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"

    @property
    def extension(self) -> str:
        return "jpg" if self is ImageFormat.JPEG else self.value

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @classmethod
    def from_extension(cls, extension: str) -> ImageFormat | None:
        return {"jpg": cls.JPEG, "jpeg": cls.JPEG, "png": cls.PNG, "webp": cls.WEBP}.get(
            extension.lower()
        )


class ImageInfo(msgspec.Struct, frozen=True):
    format: ImageFormat
    width: int  # as displayed: EXIF orientation applied
    height: int


class Rendered(msgspec.Struct, frozen=True):
    width: int
    height: int
    format: ImageFormat
    variants: dict[str, bytes]


class ImageRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sniff(data: bytes) -> ImageFormat | None:
    if data[:3] == b"\xff\xd8\xff":
        return ImageFormat.JPEG
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageFormat.PNG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def _load(data: bytes, fmt: ImageFormat, **options: Any) -> Any:
    loader = getattr(pyvips.Image, _LOADERS[fmt.value])
    return loader(data, **options)


def _oriented_size(image: Any) -> tuple[int, int]:
    width, height = int(image.width), int(image.height)
    try:
        orientation = int(image.get("orientation"))
    except pyvips.Error:
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Accept an upload or raise ImageRejected (415 wrong type, 413 too big, 422 broken)."""
    if not data:
        raise ImageRejected(422, "the file is empty")
    fmt = sniff(data)
    if fmt is None:
        raise ImageRejected(
            415, "this file is not a JPEG, PNG or WebP image: upload one of those formats"
        )
    try:
        header = _load(data, fmt, access="sequential")  # reads the header, no pixels yet
        width, height = _oriented_size(header)
    except pyvips.Error:
        raise ImageRejected(
            422, "the image is truncated or corrupt: its header is unreadable"
        ) from None
    pixels = width * height
    if pixels > max_pixels:
        raise ImageRejected(
            413,
            f"the image is {width}x{height} = {pixels / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels",
        )
    try:
        # decode every pixel, failing on any error: truncated and corrupt files stop here
        _load(data, fmt, access="sequential", fail_on="error").avg()
    except pyvips.Error:
        raise ImageRejected(
            422, "the image is truncated or corrupt: upload the full file"
        ) from None
    return ImageInfo(fmt, width, height)


def _apply(image: Any, op: Operation) -> Any:
    if isinstance(op, Crop):
        return image.crop(op.x, op.y, op.width, op.height)
    if isinstance(op, Sharpen):
        return image.sharpen(sigma=op.sigma)
    if isinstance(op, Blur):
        return image.gaussblur(op.sigma)
    raise ValueError(f"unknown operation {op!r}")


def _encode(image: Any, fmt: ImageFormat) -> bytes:
    if fmt is ImageFormat.JPEG:
        if image.hasalpha():
            image = image.flatten(background=[255, 255, 255])
        data = image.jpegsave_buffer(Q=85, keep=_KEEP_NONE, optimize_coding=True)
    elif fmt is ImageFormat.PNG:
        data = image.pngsave_buffer(compression=6, keep=_KEEP_NONE)
    else:
        data = image.webpsave_buffer(Q=80, keep=_KEEP_NONE)
    return cast(bytes, data)


def _resize_to_width(image: Any, width: int) -> Any:
    if image.width <= width:
        return image
    return image.resize(width / image.width)


def render(source: bytes, operations: Sequence[Operation], *, max_pixels: int) -> Rendered:
    """Make a version: the edits applied to the source, then its variants, metadata-free."""
    info = probe(source, max_pixels=max_pixels)
    try:
        image = _load(source, info.format).autorot()
        # keep colours as the eye saw them, then drop the profile with all other metadata
        if image.interpretation not in ("srgb", "b-w") and image.bands >= 3:
            image = image.colourspace("srgb")
        for op in operations:
            image = _apply(image, op)
        # render once into memory: the three variants all read these pixels
        image = image.copy_memory()
        variants = {"original": _encode(image, info.format)}
        for name, width in VARIANT_WIDTHS.items():
            variants[name] = _encode(_resize_to_width(image, width), info.format)
        return Rendered(int(image.width), int(image.height), info.format, variants)
    except pyvips.Error as exc:
        raise ImageRejected(422, f"the image could not be processed: {exc}".strip()[:300]) from None
