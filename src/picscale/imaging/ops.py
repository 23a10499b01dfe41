"""Edit operations: an ordered list, checked against the image before a job is queued."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

MAX_OPERATIONS = 10
SHARPEN_SIGMA = (0.1, 10.0)
BLUR_SIGMA = (0.1, 50.0)
MAX_SIDE = 100_000


class InvalidEdit(ValueError):
    """The edit cannot apply to this image; the message says which operation and why."""


class Crop(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="crop"):
    x: Annotated[int, msgspec.Meta(ge=0, le=MAX_SIDE)]
    y: Annotated[int, msgspec.Meta(ge=0, le=MAX_SIDE)]
    width: Annotated[int, msgspec.Meta(ge=1, le=MAX_SIDE)]
    height: Annotated[int, msgspec.Meta(ge=1, le=MAX_SIDE)]


class Sharpen(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="sharpen"
):
    sigma: Annotated[float, msgspec.Meta(ge=SHARPEN_SIGMA[0], le=SHARPEN_SIGMA[1])]


class Blur(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="blur"):
    sigma: Annotated[float, msgspec.Meta(ge=BLUR_SIGMA[0], le=BLUR_SIGMA[1])]


Operation = Crop | Sharpen | Blur


def _check_sigma(index: int, name: str, sigma: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not math.isfinite(sigma) or not low <= sigma <= high:
        raise InvalidEdit(f"operation {index} ({name}): sigma must be between {low} and {high}")


def validate_operations(ops: Sequence[Operation], width: int, height: int) -> None:
    """Raise InvalidEdit unless every operation fits the image as it is at its step."""
    if not ops:
        raise InvalidEdit("operations is empty: give at least one of crop, sharpen or blur")
    if len(ops) > MAX_OPERATIONS:
        raise InvalidEdit(f"{len(ops)} operations: at most {MAX_OPERATIONS} are allowed")
    for index, op in enumerate(ops, start=1):
        if isinstance(op, Crop):
            at = f"(the image is {width}x{height} at this step)"
            if op.x < 0 or op.y < 0 or op.width < 1 or op.height < 1:
                raise InvalidEdit(
                    f"operation {index} (crop): x and y must be >= 0, width and height >= 1"
                )
            if op.x + op.width > width:
                raise InvalidEdit(f"operation {index} (crop): x + width must be <= {width} {at}")
            if op.y + op.height > height:
                raise InvalidEdit(f"operation {index} (crop): y + height must be <= {height} {at}")
            width, height = op.width, op.height
        elif isinstance(op, Sharpen):
            _check_sigma(index, "sharpen", op.sigma, SHARPEN_SIGMA)
        elif isinstance(op, Blur):
            _check_sigma(index, "blur", op.sigma, BLUR_SIGMA)
        else:  # pragma: no cover - the union is closed
            raise InvalidEdit(f"operation {index}: unknown operation")


def operations_to_json(ops: Sequence[Operation]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(op) for op in ops]


def operations_from_json(data: Any) -> list[Operation]:
    return msgspec.convert(data, list[Operation])
