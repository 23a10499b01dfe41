"""What the domain hands out: immutable records, safe to keep in a cache."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

PhotoStatus = Literal["processing", "ready", "failed"]
JobStatus = Literal["queued", "running", "done", "failed"]


class UserRecord(msgspec.Struct, frozen=True):
    id: int
    username: str
    display_name: str
    created_at: datetime


class ProfileRecord(msgspec.Struct, frozen=True):
    id: int
    username: str
    display_name: str
    photo_count: int
    follower_count: int
    following_count: int


class PhotoRecord(msgspec.Struct, frozen=True):
    id: int
    owner_id: int
    owner_username: str
    caption: str
    format: str
    status: PhotoStatus
    version: int
    width: int
    height: int
    created_at: datetime


class JobRecord(msgspec.Struct, frozen=True):
    id: int
    kind: str
    status: JobStatus
    photo_id: int | None
    owner_id: int | None
    version: int | None
    error: str | None
    attempts: int


class Page(msgspec.Struct, frozen=True):
    items: list[PhotoRecord]
    next_cursor: str | None


class IdPage(msgspec.Struct, frozen=True):
    """A page as ids only: cached lists hold ids, the photos themselves are cached once."""

    ids: list[int]
    next_cursor: str | None
