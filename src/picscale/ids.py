"""64-bit ids that carry their logical shard (Instagram's scheme).

| 41 bits: ms since EPOCH | 13 bits: logical shard | 10 bits: sequence |

and the sequence is | 5 bits: node | 5 bits: counter |.

Ids sort by creation time, and the shard of any row can be read off its id, so that
sharding later moves no id. Ids never collide across processes: each process mints under
a node number (0..31) that no other live process holds at the same time (leased in the
global table ``id_nodes``, see ``picscale.data.id_nodes.NodeLease``), and within a process
the counter runs 0..31 per millisecond (across all shards), waiting for the next
millisecond when it is used up or when the clock has stepped back.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TIME_BITS = 41
SHARD_BITS = 13
SEQUENCE_BITS = 10
NODE_BITS = 5
COUNTER_BITS = 5
assert NODE_BITS + COUNTER_BITS == SEQUENCE_BITS
MAX_SHARD = (1 << SHARD_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_NODE = (1 << NODE_BITS) - 1
MAX_COUNTER = (1 << COUNTER_BITS) - 1
NODES = MAX_NODE + 1


def shard_of(id_: int) -> int:
    return (id_ >> SEQUENCE_BITS) & MAX_SHARD


def node_of(id_: int) -> int:
    """The node number of the process that minted the id."""
    return (id_ >> COUNTER_BITS) & MAX_NODE


def created_at_of(id_: int) -> datetime:
    ms = (id_ >> (SHARD_BITS + SEQUENCE_BITS)) + EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def compose(ms_since_epoch: int, shard: int, sequence: int) -> int:
    """``sequence`` is the whole 10-bit field: ``(node << COUNTER_BITS) | counter``."""
    if not 0 <= shard <= MAX_SHARD:
        raise ValueError(f"shard {shard} outside 0..{MAX_SHARD}")
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence} outside 0..{MAX_SEQUENCE}")
    if ms_since_epoch < 0 or ms_since_epoch >= 1 << TIME_BITS:
        raise ValueError("timestamp outside the 41-bit range of the id epoch")
    return (ms_since_epoch << (SHARD_BITS + SEQUENCE_BITS)) | (shard << SEQUENCE_BITS) | sequence


class IdGenerator:
    """Makes ids for any shard; thread-safe, never repeating within a process, and never
    colliding with another process's ids while each holds its own node number."""

    def __init__(self, logical_shards: int = 8192) -> None:
        self._logical_shards = logical_shards
        self._lock = threading.Lock()
        self._node: int | None = None
        self._last_ms = -1
        self._counter = 0

    @property
    def node(self) -> int | None:
        return self._node

    def set_node(self, node: int | None) -> None:
        """The node number this process holds (None: it holds none, and minting fails)."""
        if node is not None and not 0 <= node <= MAX_NODE:
            raise ValueError(f"id node {node} outside 0..{MAX_NODE}")
        with self._lock:
            self._node = node

    def random_shard(self) -> int:
        return random.randrange(self._logical_shards)

    def next_id(self, shard: int) -> int:
        """Increasing within this process (for one shard and one node)."""
        with self._lock:
            if self._node is None:
                raise RuntimeError(
                    "ids need a node number: none is held by this process (start a NodeLease "
                    "on the global database, or call IdGenerator.set_node)"
                )
            now = self._now_ms()
            if now > self._last_ms:
                self._last_ms, self._counter = now, 0
            elif self._counter < MAX_COUNTER:
                # the same millisecond (or the clock stepped back: keep counting in the
                # last millisecond we used, which no id of ours has exhausted yet)
                self._counter += 1
            else:
                self._last_ms, self._counter = self._wait_past(self._last_ms), 0
            return compose(self._last_ms, shard, (self._node << COUNTER_BITS) | self._counter)

    @classmethod
    def _wait_past(cls, last_ms: int) -> int:
        """This millisecond is used up (or the clock is behind it): wait for a later one."""
        now = cls._now_ms()
        while now <= last_ms:
            behind = last_ms - now
            if behind > 1:  # the clock stepped back: do not spin until it catches up
                time.sleep(min(behind, 1000) / 1000)
            now = cls._now_ms()
        return now

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000 - EPOCH_MS
