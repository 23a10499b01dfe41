"""The media store port and the local-directory backend."""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from picscale.settings import Settings, SettingsError

# keys are built by the service from validated ids, never taken from a client; this
# check is the second line of defence against path tricks
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")

CHUNK_SIZE = 256 * 1024  # what a streaming read hands over at a time
_TEMP_PREFIX = ".tmp-"


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


class _Hashing:
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


class LocalMediaStore:
    """``file:///dir``: one file per key, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._put_sync, self._path(key), data)

    @staticmethod
    def _put_sync(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        sha256: str,
    ) -> None:
        path = self._path(key)

        def _open() -> tuple[BinaryIO, str]:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
            return os.fdopen(fd, "wb"), tmp

        fh, tmp = await asyncio.to_thread(_open)
        hashing = _Hashing()
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(fh.write, hashing.add(chunk))
            finally:
                await asyncio.to_thread(fh.close)
            hashing.check(key, size, sha256)
            await asyncio.to_thread(os.replace, tmp, path)
        except BaseException:
            # at once, not in a thread: a second cancellation must not leave it behind
            Path(tmp).unlink(missing_ok=True)  # noqa: ASYNC240
            raise

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MediaNotFound(key) from None

    async def open(self, key: str) -> MediaStream:
        path = self._path(key)

        def _open() -> tuple[BinaryIO, int]:
            fh = path.open("rb")
            return fh, os.fstat(fh.fileno()).st_size

        try:
            fh, size = await asyncio.to_thread(_open)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MediaNotFound(key) from None

        async def chunks() -> AsyncGenerator[bytes, None]:
            while chunk := await asyncio.to_thread(fh.read, CHUNK_SIZE):
                yield chunk

        async def close() -> None:
            await asyncio.to_thread(fh.close)

        return MediaStream(MediaInfo(key, size, None, content_type_for(key)), chunks(), close)

    async def stat(self, key: str) -> MediaInfo | None:
        path = self._path(key)
        try:
            st = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return MediaInfo(key, st.st_size, None, content_type_for(key))

    async def iter_objects(self, prefix: str = "") -> AsyncIterator[MediaInfo]:
        def _list() -> list[MediaInfo]:
            found = []
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    if name.startswith(_TEMP_PREFIX):  # a write that never finished
                        continue
                    path = Path(dirpath) / name
                    key = path.relative_to(self.root).as_posix()
                    if not key.startswith(prefix) or not is_media_key(key):
                        continue  # not a media object (a stray file)
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:  # deleted while listing
                        continue
                    found.append(MediaInfo(key, size, None, content_type_for(key)))
            return sorted(found, key=lambda info: info.key)

        for info in await asyncio.to_thread(_list):
            yield info

    async def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)

        def _delete() -> int:
            if not path.is_dir():
                return 0
            count = sum(1 for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
            return count

        return await asyncio.to_thread(_delete)

    async def ping(self) -> None:
        def _check() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise PermissionError(f"media directory {self.root} is not writable")

        await asyncio.to_thread(_check)

    async def close(self) -> None:
        """Nothing to release: each call opens and closes its own files."""


URL_FORMS = "file:///path/to/media or s3://bucket?endpoint=http://host:9000&region=us-east-1"


def open_media_store(url: str, *, setting: str = "PICSCALE_STORAGE_URL") -> MediaStore:
    """The store a URL names; ``setting`` is what a bad URL's message points at."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise SettingsError(f"{setting}: {url!r} is not a file URL: use file:///path")
        return LocalMediaStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        from picscale.tiers.storage.s3 import S3MediaStore

        return S3MediaStore.from_url(url, setting=setting)
    raise SettingsError(f"{setting} scheme {parts.scheme!r} is not supported: use {URL_FORMS}")


def create_media_store(settings: Settings) -> MediaStore:
    return open_media_store(settings.resolved_storage_url)
