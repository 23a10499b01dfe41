"""A counter in a small shared file: bumped by writers, read by any process for free.

Processes on one host (the embedded setup) use it to tell each other "something
changed": the cache's invalidation log moved, or a job was queued.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path


class EpochFile:
    """An 8-byte counter in a shared file: bumped by writers, read by everyone for free."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.pwrite(fd, b"\0" * 8, 0)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._path = path

    def read(self) -> int:
        return int(struct.unpack_from("<Q", self._map, 0)[0])

    def bump(self) -> None:
        with open(self._path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                struct.pack_into("<Q", self._map, 0, self.read() + 1)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
