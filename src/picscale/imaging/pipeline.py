"""The image pipeline (pyvips): check an upload, then render a version's variants.

Only JPEG, PNG and WebP reach a decoder, chosen by their magic bytes and then loaded with
that format's own loader (``jpegload_buffer`` and so on), never with ``new_from_buffer``:
libvips can load many other formats (SVG, PDF, GIF, TIFF, ...) that must never be parsed
from user uploads, and a format-specific loader refuses anything else.

Everything here is synchronous and CPU-bound: callers run it in threads or processes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import pyvips

from picscale.imaging.ops import Blur, Crop, InvalidEdit, Operation, Sharpen, check_steps

VARIANT_WIDTHS = {"large": 1080, "thumb": 320}
JPEG_QUALITY = 85
PNG_COMPRESSION = 6
WEBP_QUALITY = 80

_LOADERS = {"jpeg": "jpegload_buffer", "png": "pngload_buffer", "webp": "webpload_buffer"}
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_EXTENSIONS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
_KEEP_NONE = 0  # VipsForeignKeep NONE: no EXIF, XMP, IPTC, ICC, comments or other metadata
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ACCEPTED = "this file is not a JPEG, PNG or WebP image: upload a .jpg, .png or .webp photo"
_CORRUPT = "the image is truncated or corrupt: upload the complete, original file"

VipsImage = Any  # pyvips.Image: pyvips ships no type information


def configure_vips(threads: int) -> None:
    """Per process, at start-up: turn off libvips' operation cache (it only helps programs
    that run one operation on one image twice; here it keeps finished images and their
    source buffers alive), and set how many threads one image's pipeline may use. Workers
    run one image per pool process, as many processes as cores: libvips' default of one
    thread per core on top of that oversubscribes the machine (measured by
    ``bench/jobs.py``: 2 workers did 14 jobs/s with libvips' default, 19 with 1 thread)."""
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(max(1, threads))


class ImageFormat(enum.Enum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"

    @property
    def extension(self) -> str:
        """The file extension for this format, without the dot."""
        return "jpg" if self is ImageFormat.JPEG else self.value

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.value]

    @classmethod
    def from_extension(cls, extension: str) -> ImageFormat | None:
        """``jpg``, ``.JPEG``, ``png``, ``webp`` and so on; None for anything else."""
        value = _EXTENSIONS.get(extension.lower().removeprefix("."))
        return None if value is None else cls(value)


class ImageInfo(msgspec.Struct, frozen=True):
    format: ImageFormat
    width: int  # as displayed: EXIF orientation applied
    height: int


class Rendered(msgspec.Struct, frozen=True):
    width: int  # of the "original" variant
    height: int
    format: ImageFormat
    variants: dict[str, bytes]  # "original", "large", "thumb"


class ImageRejected(Exception):
    """The image cannot be accepted: ``status`` is the HTTP status (413, 415 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        # both in args, so that the exception survives pickling out of a process pool
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


def sniff(data: bytes) -> ImageFormat | None:
    """The format named by the file's magic bytes, or None if not JPEG, PNG or WebP."""
    if data[:3] == b"\xff\xd8\xff":
        return ImageFormat.JPEG
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageFormat.PNG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def _load(data: bytes, fmt: ImageFormat, **options: Any) -> VipsImage:
    """Open with the loader for ``fmt`` only: reads the header, decodes no pixels yet."""
    loader = getattr(pyvips.Image, _LOADERS[fmt.value])
    return loader(data, fail_on="error", **options)


def _orientation(image: VipsImage) -> int:
    if image.get_typeof("orientation") == 0:
        return 1
    return int(image.get("orientation"))


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}".removesuffix(".0")


def _open(data: bytes, max_pixels: int) -> tuple[ImageFormat, VipsImage, int, int, int]:
    """Check everything the header tells: (format, image, width, height, orientation).

    The image is opened for sequential access with ``fail_on="error"``: nothing is decoded
    until its pixels are read, and a decode error then fails the read.
    """
    if not data:
        raise ImageRejected(422, "the file is empty")
    fmt = sniff(data)
    if fmt is None:
        raise ImageRejected(415, _ACCEPTED)
    try:
        image = _load(data, fmt, access="sequential")
        width, height = int(image.width), int(image.height)
        orientation = _orientation(image)
    except pyvips.Error:
        raise ImageRejected(422, f"{_CORRUPT} (its {fmt.name} header is unreadable)") from None
    if orientation in _ROTATED:
        width, height = height, width
    pixels = width * height
    if pixels > max_pixels:
        raise ImageRejected(
            413,
            f"image is {width}x{height} = {_megapixels(pixels)} megapixels; "
            f"the limit is {_megapixels(max_pixels)} megapixels",
        )
    return fmt, image, width, height, orientation


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Accept an upload or raise ImageRejected (415 wrong type, 413 too big, 422 broken).

    The pixel limit is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing; then every pixel is decoded once to find truncated
    and corrupt files.
    """
    fmt, image, width, height, _ = _open(data, max_pixels)
    try:
        image.avg()
    except pyvips.Error:
        raise ImageRejected(422, _CORRUPT) from None
    return ImageInfo(fmt, width, height)


def _is_srgb_profile(profile: bytes) -> bool:
    """Whether an ICC profile's description names sRGB (v2 ``desc`` or v4 ``mluc`` text)."""
    count = int.from_bytes(profile[128:132], "big")
    for i in range(min(count, 256)):
        entry = profile[132 + 12 * i : 144 + 12 * i]
        if entry[:4] == b"desc":
            offset = int.from_bytes(entry[4:8], "big")
            text = profile[offset : offset + min(int.from_bytes(entry[8:12], "big"), 4096)]
            return b"sRGB" in text or "sRGB".encode("utf-16-be") in text
    return False


def _to_srgb(image: VipsImage) -> VipsImage:
    """Bake an embedded colour profile (Display P3, Adobe RGB, CMYK, ...) into sRGB pixels.

    The outputs carry no profile, and a browser shows untagged pixels as sRGB; pixels
    already in sRGB are left alone.
    """
    colour_bands = image.bands - (1 if image.hasalpha() else 0)
    if (
        colour_bands >= 3
        and image.get_typeof("icc-profile-data") != 0
        and not _is_srgb_profile(cast(bytes, image.get("icc-profile-data")))
    ):
        depth = 16 if image.format == "ushort" else 8
        try:
            return image.icc_transform("srgb", embedded=True, intent="relative", depth=depth)
        except pyvips.Error:
            pass  # a broken profile: fall back to the colourspace alone
    if image.interpretation == "cmyk":
        return image.colourspace("srgb")
    return image


def _unsharp_mask(image: VipsImage, sigma: float) -> VipsImage:
    """The classic unsharp mask on the colour bands: image + (image - blur(image)).

    libvips' own ``sharpen`` works in LabS (a float conversion there and back), several
    times slower on a 12-megapixel photo for a result the eye hardly tells apart.
    """
    alpha = None
    if image.hasalpha():
        image, alpha = image.extract_band(0, n=image.bands - 1), image[image.bands - 1]
    sharpened = (image * 2 - image.gaussblur(sigma)).cast(image.format)  # cast clips
    return sharpened.bandjoin(alpha) if alpha is not None else sharpened


def _apply(image: VipsImage, op: Operation) -> VipsImage:
    if isinstance(op, Crop):
        return image.crop(op.x, op.y, op.width, op.height)
    if isinstance(op, Sharpen):
        return _unsharp_mask(image, op.sigma)
    if isinstance(op, Blur):
        return image.gaussblur(op.sigma)
    raise InvalidEdit(f"unknown operation {op!r}")  # pragma: no cover - checked before


def apply_operations(image: VipsImage, operations: Sequence[Operation]) -> VipsImage:
    """The edits, in order, on a loaded image (lazily: pixels flow when it is written)."""
    for op in operations:
        image = _apply(image, op)
    return image


def _resize_to_width(image: VipsImage, width: int) -> VipsImage:
    """Shrink to ``width`` pixels wide, keeping the aspect ratio; never enlarge."""
    if image.width <= width:
        return image
    scale = width / image.width
    if image.hasalpha():
        # premultiply so that transparent pixels do not bleed their colour into edges
        shrunk = image.premultiply().resize(scale).unpremultiply()
        return shrunk.cast(image.format)
    return image.resize(scale)


def _encode(image: VipsImage, fmt: ImageFormat) -> bytes:
    """Encode in ``fmt`` with no metadata at all (EXIF, GPS, XMP, IPTC, ICC, comments)."""
    if fmt is ImageFormat.JPEG:
        if image.hasalpha():
            image = image.flatten(background=[255])
        # Huffman optimisation saves a few percent of bytes at several times the encode
        # time: worth it for the variants that are served most, not the full-size one
        optimize = image.width <= max(VARIANT_WIDTHS.values())
        data = image.jpegsave_buffer(Q=JPEG_QUALITY, keep=_KEEP_NONE, optimize_coding=optimize)
    elif fmt is ImageFormat.PNG:
        data = image.pngsave_buffer(compression=PNG_COMPRESSION, keep=_KEEP_NONE)
    else:
        data = image.webpsave_buffer(Q=WEBP_QUALITY, keep=_KEEP_NONE)
    return cast(bytes, data)


def render(source: bytes, operations: Sequence[Operation], *, max_pixels: int) -> Rendered:
    """Make a version: the edits applied in order to the source, then its variants.

    Raises ImageRejected as ``probe`` does (with the same checks, made on the way: the
    source is decoded once), and with 422 if an operation does not fit the image.
    Every variant is in the source's format and carries no metadata.
    """
    fmt, image, width, height, orientation = _open(source, max_pixels)
    try:
        check_steps(operations, width, height)
    except InvalidEdit as exc:
        raise ImageRejected(422, str(exc)) from None
    try:
        if orientation != 1:
            # turning or flipping reads the pixels out of order: load for random access
            image = _load(source, fmt)
        image = _to_srgb(image.autorot())
        image = apply_operations(image, operations)
        # decode and edit once into memory: all three variants read these pixels
        image = image.copy_memory()
    except pyvips.Error:
        raise ImageRejected(422, _CORRUPT) from None
    try:
        variants = {"original": _encode(image, fmt)}
        for name, variant_width in VARIANT_WIDTHS.items():
            variants[name] = _encode(_resize_to_width(image, variant_width), fmt)
    except pyvips.Error as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ImageRejected(422, f"the image could not be encoded: {detail}") from None
    return Rendered(int(image.width), int(image.height), fmt, variants)
