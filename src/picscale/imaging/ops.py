"""Edit operations: an ordered list, checked against the image before a job is queued.

Decoding JSON with msgspec (``operations_from_json`` or a ``list[Operation]`` decoder)
already rejects unknown operations, unknown fields and out-of-range values with a
``msgspec.ValidationError``. ``validate_operations`` repeats the range checks, because
structs built in Python skip them, and adds what only the image can tell: whether each
crop fits the image as it is at that step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, cast

import msgspec

MAX_OPERATIONS = 10
SHARPEN_SIGMA = (0.1, 10.0)
BLUR_SIGMA = (0.1, 50.0)
MAX_SIDE = 100_000  # far beyond any image the pixel limit lets through

_Coord = Annotated[int, msgspec.Meta(ge=0, le=MAX_SIDE)]
_Side = Annotated[int, msgspec.Meta(ge=1, le=MAX_SIDE)]


class InvalidEdit(ValueError):
    """The edit cannot apply to this image; the message says which operation and why."""


class Crop(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="crop"):
    """Keep the ``width`` x ``height`` rectangle whose top-left corner is at (x, y)."""

    x: _Coord
    y: _Coord
    width: _Side
    height: _Side


class Sharpen(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="sharpen"
):
    """Sharpen edges; ``sigma`` is the radius of the blur the sharpening is measured against."""

    sigma: Annotated[float, msgspec.Meta(ge=SHARPEN_SIGMA[0], le=SHARPEN_SIGMA[1])]


class Blur(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="blur"):
    """Gaussian blur; ``sigma`` is the standard deviation in pixels."""

    sigma: Annotated[float, msgspec.Meta(ge=BLUR_SIGMA[0], le=BLUR_SIGMA[1])]


Operation = Crop | Sharpen | Blur


def _check_sigma(index: int, name: str, sigma: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        raise InvalidEdit(f"operation {index} ({name}): sigma must be a number")
    if not math.isfinite(sigma):
        raise InvalidEdit(
            f"operation {index} ({name}): sigma must be a finite number between {low} and {high}"
        )
    if not low <= sigma <= high:
        raise InvalidEdit(
            f"operation {index} ({name}): sigma must be between {low} and {high}, not {sigma:g}"
        )


def _check_crop(index: int, op: Crop, width: int, height: int) -> None:
    at = f"(the image is {width}x{height} at this step)"
    for name in ("x", "y", "width", "height"):
        value = getattr(op, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidEdit(f"operation {index} (crop): {name} must be a whole number")
    if op.x < 0 or op.y < 0:
        raise InvalidEdit(f"operation {index} (crop): x and y must be >= 0")
    if op.width < 1 or op.height < 1:
        raise InvalidEdit(f"operation {index} (crop): width and height must be >= 1")
    if op.x + op.width > width:
        raise InvalidEdit(f"operation {index} (crop): x + width must be <= {width} {at}")
    if op.y + op.height > height:
        raise InvalidEdit(f"operation {index} (crop): y + height must be <= {height} {at}")


def check_steps(ops: Sequence[Operation], width: int, height: int) -> tuple[int, int]:
    """Check each operation against the image as it is at its step; return the final size.

    No limit on the number of operations: a stored version's chain may be longer than one
    edit request (``render`` uses this on the whole chain).
    """
    for index, op in enumerate(ops, start=1):
        if isinstance(op, Crop):
            _check_crop(index, op, width, height)
            width, height = op.width, op.height
        elif isinstance(op, Sharpen):
            _check_sigma(index, "sharpen", op.sigma, SHARPEN_SIGMA)
        elif isinstance(op, Blur):
            _check_sigma(index, "blur", op.sigma, BLUR_SIGMA)
        else:
            raise InvalidEdit(
                f"operation {index}: unknown operation {type(op).__name__}; "
                "use crop, sharpen or blur"
            )
    return width, height


def validate_operations(ops: Sequence[Operation], width: int, height: int) -> None:
    """Raise InvalidEdit unless ``ops`` is a valid edit of a ``width`` x ``height`` image."""
    if not ops:
        raise InvalidEdit("operations is empty: give at least one of crop, sharpen or blur")
    if len(ops) > MAX_OPERATIONS:
        raise InvalidEdit(
            f"{len(ops)} operations: at most {MAX_OPERATIONS} are allowed in one edit"
        )
    check_steps(ops, width, height)


def operations_to_json(ops: Sequence[Operation]) -> list[dict[str, Any]]:
    """The operations as JSON-ready dicts, each with its ``op`` tag."""
    return [cast(dict[str, Any], msgspec.to_builtins(op)) for op in ops]


def operations_from_json(data: Any) -> list[Operation]:
    """Operations from decoded JSON; raises msgspec.ValidationError on anything invalid."""
    return msgspec.convert(data, list[Operation])
