"""Where a photo's media live in the media store.

``photos/{id}/source`` is the upload as received (kept, never served); each version's
variants are ``photos/{id}/v{n}/{original,large,thumb}.{ext}``. Version numbers are
reserved when an edit is queued, so a job that runs twice writes the same keys.
"""

from __future__ import annotations

VARIANTS = ("original", "large", "thumb")


def photo_prefix(photo_id: int) -> str:
    """Everything of one photo: delete this prefix and it is gone."""
    return f"photos/{photo_id}"


def source_key(photo_id: int) -> str:
    return f"photos/{photo_id}/source"


def variant_key(photo_id: int, version: int, variant: str, extension: str) -> str:
    return f"photos/{photo_id}/v{version}/{variant}.{extension}"
