"""Media storage: a local directory embedded, an object store when scaled out."""

from picscale.tiers.storage.factory import create_media_store, open_media_store
from picscale.tiers.storage.port import (
    ChecksumMismatch,
    InvalidKey,
    MediaInfo,
    MediaNotFound,
    MediaStore,
    MediaStream,
    check_key,
)

__all__ = [
    "ChecksumMismatch",
    "InvalidKey",
    "MediaInfo",
    "MediaNotFound",
    "MediaStore",
    "MediaStream",
    "check_key",
    "create_media_store",
    "open_media_store",
]
