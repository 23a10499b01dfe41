"""Media storage: a local directory embedded, an object store when scaled out."""

from picscale.tiers.storage.port import (
    InvalidKey,
    MediaNotFound,
    MediaStore,
    check_key,
    create_media_store,
)

__all__ = ["InvalidKey", "MediaNotFound", "MediaStore", "check_key", "create_media_store"]
