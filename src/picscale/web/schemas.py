"""The JSON shapes of the API (ids as strings: 64-bit ids lose digits in JavaScript)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from picscale.domain.records import JobRecord, ProfileRecord, UserRecord
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
