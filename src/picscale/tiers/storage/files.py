"""``file:///dir``: media in a local directory, one file per key."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from picscale.tiers.storage.port import (
    CHUNK_SIZE,
    Hashing,
    MediaInfo,
    MediaNotFound,
    MediaStream,
    check_key,
    content_type_for,
    is_media_key,
)

_TEMP_PREFIX = ".tmp-"


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
        hashing = Hashing()
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
