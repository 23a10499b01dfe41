"""The media store port: what every media backend does, the values it hands out, and
the key rules every backend enforces."""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

# keys are built by the service from validated ids, never taken from a client; this
# check is the second line of defence against path tricks
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")

CHUNK_SIZE = 256 * 1024  # what a streaming read hands over at a time


class MediaNotFound(LookupError):
    pass


class InvalidKey(ValueError):
    pass


class ChecksumMismatch(OSError):
    """What was stored (or read back) is not what was meant to be."""


def is_media_key(key: str) -> bool:
    return len(key) <= 512 and _KEY.match(key) is not None and ".." not in key


def check_key(key: str) -> str:
    if not is_media_key(key):
        raise InvalidKey(f"invalid media key {key!r}")
    return key


def content_type_for(key: str) -> str:
    """A media type from the key's extension (``source`` keys have none)."""
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class MediaInfo:
    key: str
    size: int
    # hex SHA-256 of the whole object when the backend has it without reading the
    # object (S3 keeps it in the object's metadata); None means "read it to know"
    sha256: str | None = None
    content_type: str | None = None


class MediaStream:
    """An object being read: its size first, then its bytes in chunks.

    ``async for chunk in stream`` reads it and closes it at the end; ``async with`` or
    ``aclose()`` closes one that is not read to the end (a client that went away).
    """

    def __init__(
        self,
        info: MediaInfo,
        chunks: AsyncGenerator[bytes, None],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.info = info
        self._chunks = chunks
        self._close = close
        self._closed = False

    @property
    def size(self) -> int:
        return self.info.size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._read()

    async def _read(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._chunks:
                yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._chunks.aclose()
            finally:
                await self._close()

    async def __aenter__(self) -> MediaStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class MediaStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; raises MediaNotFound."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many went."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None:
        """Release connections; the store may be used again afterwards (it reopens)."""
        ...

    # -- streaming, listing and checksums (large objects, `picscale media migrate`) --

    async def open(self, key: str) -> MediaStream:
        """Start reading an object (raises MediaNotFound before any byte is sent)."""
        ...

    async def stat(self, key: str) -> MediaInfo | None:
        """Size (and the checksum when kept) of an object, None when there is none."""
        ...

    def iter_objects(self, prefix: str = "") -> AsyncIterator[MediaInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        sha256: str,
    ) -> None:
        """Store an object read from ``chunks`` without holding it all in memory.

        ``size`` and ``sha256`` (hex) are what the chunks add up to; anything else
        raises ChecksumMismatch and stores nothing.
        """
        ...


class Hashing:
    """Counts and hashes chunks on their way through."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> bytes:
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk

    def check(self, key: str, size: int, sha256: str) -> None:
        if self.size != size or self.sha256.hexdigest() != sha256:
            raise ChecksumMismatch(
                f"{key}: got {self.size} bytes with SHA-256 {self.sha256.hexdigest()}, "
                f"expected {size} bytes with SHA-256 {sha256}"
            )
