"""64-bit ids that carry their logical shard (Instagram's scheme).

| 41 bits: ms since EPOCH | 13 bits: logical shard | 10 bits: sequence |

Ids sort by creation time, and the shard of any row can be read off its id, so that
sharding later moves no id. Within one process ids never repeat (the sequence wraps into
the next millisecond); across processes the sequence starts at a random point, and the
primary key refuses the rare collision rather than overwriting anything.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SHARD_BITS = 13
SEQUENCE_BITS = 10
MAX_SHARD = (1 << SHARD_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


def shard_of(id_: int) -> int:
    return (id_ >> SEQUENCE_BITS) & MAX_SHARD


def created_at_of(id_: int) -> datetime:
    ms = (id_ >> (SHARD_BITS + SEQUENCE_BITS)) + EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def compose(ms_since_epoch: int, shard: int, sequence: int) -> int:
    if not 0 <= shard <= MAX_SHARD:
        raise ValueError(f"shard {shard} outside 0..{MAX_SHARD}")
    if ms_since_epoch < 0 or ms_since_epoch >= 1 << 41:
        raise ValueError("timestamp outside the 41-bit range of the id epoch")
    return (ms_since_epoch << (SHARD_BITS + SEQUENCE_BITS)) | (shard << SEQUENCE_BITS) | sequence


class IdGenerator:
    """Makes ids for any shard; thread-safe, never repeating within a process."""

    def __init__(self, logical_shards: int = 8192) -> None:
        self._logical_shards = logical_shards
        self._lock = threading.Lock()
        self._last_ms = -1
        self._sequence = 0

    def random_shard(self) -> int:
        return random.randrange(self._logical_shards)

    def next_id(self, shard: int) -> int:
        """Increasing within this process. Each millisecond starts at a random sequence in
        the lower half, so processes minting ids for one shard rarely meet."""
        with self._lock:
            now = self._now_ms()
            if now > self._last_ms:
                self._last_ms = now
                self._sequence = random.randrange((MAX_SEQUENCE + 1) // 2)
            elif self._sequence < MAX_SEQUENCE:
                self._sequence += 1
            else:
                # this millisecond is used up (or the clock stepped back): wait for the next
                while now <= self._last_ms:
                    now = self._now_ms()
                self._last_ms = now
                self._sequence = random.randrange((MAX_SEQUENCE + 1) // 2)
            return compose(self._last_ms, shard, self._sequence)

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000 - EPOCH_MS
