"""Image checks and the edit pipeline (pyvips)."""

from picscale.imaging.ops import (
    MAX_OPERATIONS,
    Blur,
    Crop,
    InvalidEdit,
    Operation,
    Sharpen,
    operations_from_json,
    operations_to_json,
    validate_operations,
)
from picscale.imaging.pipeline import (
    ImageFormat,
    ImageInfo,
    ImageRejected,
    Rendered,
    apply_operations,
    configure_vips,
    probe,
    render,
    sniff,
)

__all__ = [
    "MAX_OPERATIONS",
    "Blur",
    "Crop",
    "ImageFormat",
    "ImageInfo",
    "ImageRejected",
    "InvalidEdit",
    "Operation",
    "Rendered",
    "Sharpen",
    "apply_operations",
    "configure_vips",
    "operations_from_json",
    "operations_to_json",
    "probe",
    "render",
    "sniff",
    "validate_operations",
]
