"""The JSON shapes of the API (ids as strings: 64-bit ids lose digits in JavaScript)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from picscale.domain.records import JobRecord, PhotoRecord, ProfileRecord, UserRecord
from picscale.imaging import Operation

Username = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class SignUpIn(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    password: Password
    display_name: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class LogInIn(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    password: Password


class ProfileIn(msgspec.Struct, forbid_unknown_fields=True):
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class EditIn(msgspec.Struct, forbid_unknown_fields=True):
    operations: Annotated[list[Operation], msgspec.Meta(min_length=1, max_length=100)]


class UserOut(msgspec.Struct):
    id: str
    username: str
    display_name: str
    created_at: datetime

    @classmethod
    def of(cls, user: UserRecord) -> UserOut:
        return cls(str(user.id), user.username, user.display_name, user.created_at)


class SessionOut(msgspec.Struct):
    token: str
    user: UserOut


class ProfileOut(msgspec.Struct):
    id: str
    username: str
    display_name: str
    photo_count: int
    follower_count: int
    following_count: int

    @classmethod
    def of(cls, p: ProfileRecord) -> ProfileOut:
        return cls(
            str(p.id),
            p.username,
            p.display_name,
            p.photo_count,
            p.follower_count,
            p.following_count,
        )


class OwnerOut(msgspec.Struct):
    id: str
    username: str


class PhotoUrls(msgspec.Struct):
    original: str
    large: str
    thumb: str


class PhotoOut(msgspec.Struct):
    id: str
    owner: OwnerOut
    caption: str
    created_at: datetime
    version: int
    width: int
    height: int
    status: Literal["processing", "ready", "failed"]
    # null until the first version's variants exist (status "processing")
    urls: PhotoUrls | None


class PageOut(msgspec.Struct):
    items: list[PhotoOut]
    next_cursor: str | None


class JobOut(msgspec.Struct):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    photo_id: str | None
    version: int | None = None
    error: str | None = None

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        return cls(
            str(job.id),
            job.status,
            str(job.photo_id) if job.photo_id is not None else None,
            job.version,
            job.error,
        )


class ErrorOut(msgspec.Struct):
    status_code: int
    detail: str


class MediaUrls:
    """Builds versioned, immutable media URLs, on the CDN edge while it is healthy
    (``base`` returns its URL then, '' for origin-relative URLs otherwise)."""

    def __init__(self, base: Callable[[], str] = lambda: "") -> None:
        self.base = base

    def url(self, photo: PhotoRecord, variant: str, version: int | None = None) -> str:
        ext = {"jpeg": "jpg"}.get(photo.format, photo.format)
        return f"{self.base()}/media/{photo.id}/v{version or photo.version}/{variant}.{ext}"

    def urls(self, photo: PhotoRecord) -> PhotoUrls | None:
        if photo.version < 1:
            return None
        return PhotoUrls(
            self.url(photo, "original"), self.url(photo, "large"), self.url(photo, "thumb")
        )

    def photo(self, p: PhotoRecord) -> PhotoOut:
        return PhotoOut(
            id=str(p.id),
            owner=OwnerOut(str(p.owner_id), p.owner_username),
            caption=p.caption,
            created_at=p.created_at,
            version=p.version,
            width=p.width,
            height=p.height,
            status=p.status,
            urls=self.urls(p),
        )
