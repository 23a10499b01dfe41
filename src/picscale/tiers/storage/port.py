"""The media store port and the local-directory backend."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from picscale.settings import Settings, SettingsError

# keys are built by the service from validated ids, never taken from a client; this
# check is the second line of defence against path tricks
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")


class MediaNotFound(LookupError):
    pass


class InvalidKey(ValueError):
    pass


def check_key(key: str) -> str:
    if len(key) > 512 or not _KEY.match(key) or ".." in key:
        raise InvalidKey(f"invalid media key {key!r}")
    return key


class MediaStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; raises MediaNotFound."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many went."""
        ...

    async def ping(self) -> None: ...


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
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MediaNotFound(key) from None

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


def create_media_store(settings: Settings) -> MediaStore:
    url = urlsplit(settings.resolved_storage_url)
    if url.scheme == "file":
        return LocalMediaStore(Path(unquote(url.path)))
    raise SettingsError(
        f"PICSCALE_STORAGE_URL scheme {url.scheme!r} is not supported: use file:///path"
    )
