"""The shard map: which physical cluster holds each of the 8192 logical shards.

A user, and everything the user owns, lives on the logical shard carried in the user's
id (``ids.shard_of``); a photo's id is minted on its owner's shard, so any row routes by
its id alone. The map is versioned: every change (a shard move's flip) publishes a new
version, which every process picks up within a second (``map_store``).

The map is kept as contiguous ranges ``(first, last, cluster)`` that cover every logical
shard exactly once, sorted by ``first``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

LOGICAL_SHARDS = 8192


class ShardMapError(ValueError):
    """A map that does not cover every logical shard once, or names no such cluster."""


@dataclass(frozen=True, slots=True)
class ShardRange:
    first: int
    last: int  # inclusive
    cluster: str

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class ShardMap:
    version: int
    ranges: tuple[ShardRange, ...]
    logical: int = LOGICAL_SHARDS
    _firsts: tuple[int, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        expected = 0
        for r in self.ranges:
            if r.first != expected or r.last < r.first:
                raise ShardMapError(
                    f"shard map v{self.version}: ranges must cover 0..{self.logical - 1} "
                    f"in order without gaps (found {r.first}-{r.last} where {expected} was due)"
                )
            expected = r.last + 1
        if expected != self.logical:
            raise ShardMapError(
                f"shard map v{self.version}: ranges end at {expected - 1}, "
                f"not at {self.logical - 1}"
            )
        object.__setattr__(self, "_firsts", tuple(r.first for r in self.ranges))

    # -- reading -----------------------------------------------------------------------

    def cluster_of(self, shard: int) -> str:
        if not 0 <= shard < self.logical:
            raise ShardMapError(f"logical shard {shard} outside 0..{self.logical - 1}")
        return self.ranges[bisect.bisect_right(self._firsts, shard) - 1].cluster

    @property
    def clusters(self) -> list[str]:
        """Every cluster that holds at least one shard, in order of first appearance."""
        return list(dict.fromkeys(r.cluster for r in self.ranges))

    def shards_per_cluster(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.ranges:
            out[r.cluster] = out.get(r.cluster, 0) + r.size
        return out

    def ranges_of(self, cluster: str) -> list[ShardRange]:
        return [r for r in self.ranges if r.cluster == cluster]

    def owners(self, first: int, last: int) -> set[str]:
        """The clusters that hold any of the shards ``first..last``."""
        return {r.cluster for r in self.ranges if r.first <= last and r.last >= first}

    # -- changing (a new version) --------------------------------------------------------

    def assign(self, first: int, last: int, cluster: str) -> ShardMap:
        """A new version with shards ``first..last`` on ``cluster``."""
        if not 0 <= first <= last < self.logical:
            raise ShardMapError(f"shards {first}-{last} outside 0..{self.logical - 1}")
        cells: list[tuple[int, int, str]] = []
        for r in self.ranges:
            if r.last < first or r.first > last:
                cells.append((r.first, r.last, r.cluster))
                continue
            if r.first < first:
                cells.append((r.first, first - 1, r.cluster))
            if r.last > last:
                cells.append((last + 1, r.last, r.cluster))
        cells.append((first, last, cluster))
        return ShardMap(self.version + 1, _merged(sorted(cells)), self.logical)

    @classmethod
    def even(cls, clusters: Sequence[str], logical: int = LOGICAL_SHARDS) -> ShardMap:
        """Version 1: the logical shards split into one contiguous range per cluster."""
        if not clusters:
            raise ShardMapError("a shard map needs at least one cluster")
        n = len(clusters)
        cells = []
        for i, name in enumerate(clusters):
            first, last = i * logical // n, (i + 1) * logical // n - 1
            cells.append((first, last, name))
        return cls(1, _merged(cells), logical)

    # -- storage -------------------------------------------------------------------------

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {
                "version": self.version,
                "logical": self.logical,
                "ranges": [[r.first, r.last, r.cluster] for r in self.ranges],
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ShardMap:
        try:
            body: Any = msgspec.json.decode(raw)
            return cls(
                int(body["version"]),
                tuple(ShardRange(int(a), int(b), str(c)) for a, b, c in body["ranges"]),
                int(body.get("logical", LOGICAL_SHARDS)),
            )
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ShardMapError):
                raise
            raise ShardMapError(f"the stored shard map cannot be read: {exc}") from exc

    def describe(self) -> str:
        """``v3: c1 0-4095, c2 4096-8191``."""
        parts = ", ".join(f"{r.cluster} {r.first}-{r.last}" for r in self.ranges)
        return f"v{self.version}: {parts}"


def _merged(cells: Iterable[tuple[int, int, str]]) -> tuple[ShardRange, ...]:
    out: list[ShardRange] = []
    for first, last, cluster in cells:
        if out and out[-1].cluster == cluster and out[-1].last + 1 == first:
            out[-1] = ShardRange(out[-1].first, last, cluster)
        else:
            out.append(ShardRange(first, last, cluster))
    return tuple(out)


def parse_shards(text: str, logical: int = LOGICAL_SHARDS) -> tuple[int, int]:
    """``"12"`` or ``"4096-8191"`` as an inclusive range; ShardMapError if malformed."""
    first_s, sep, last_s = text.strip().partition("-")
    try:
        first = int(first_s)
        last = int(last_s) if sep else first
    except ValueError:
        raise ShardMapError(
            f"SHARDS must be a logical shard or a range like 4096-8191, not {text!r}"
        ) from None
    if not 0 <= first <= last < logical:
        raise ShardMapError(f"SHARDS {text!r} must lie within 0-{logical - 1}, low to high")
    return first, last
