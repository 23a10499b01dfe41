"""What the domain caches: one key function per cached entity, so that the whole key
scheme reads in one place, and the keys each kind of change makes stale."""

from __future__ import annotations

SCHEMA_VERSION = "v1"  # bump when a cached shape changes: a deploy never reads old shapes

# first pages of a gallery in these sizes are cached (and invalidated)
CACHED_PAGE_SIZES = (12, 20)


def photo_key(photo_id: int) -> str:
    return f"{SCHEMA_VERSION}:photo:{photo_id}"


def profile_key(username: str) -> str:
    return f"{SCHEMA_VERSION}:profile:{username}"


def user_photos_key(user_id: int, page_size: int) -> str:
    return f"{SCHEMA_VERSION}:user_photos:{user_id}:first:{page_size}"


def first_pages(user_id: int) -> list[str]:
    """A user's gallery's first pages (feeds are timelines: ``tiers/timelines``)."""
    return [user_photos_key(user_id, n) for n in CACHED_PAGE_SIZES]


def photo_changed(photo_id: int, owner_id: int, owner_username: str) -> list[str]:
    """What a photo's upload, new version, failure or deletion makes stale."""
    return [photo_key(photo_id), profile_key(owner_username), *first_pages(owner_id)]
