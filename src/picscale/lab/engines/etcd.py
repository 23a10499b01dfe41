"""etcd: the consensus store that holds Patroni's leader keys and, from stage 9, the
shard map."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial

from picscale.lab.engine import Component, Engine
from picscale.lab.engines.patroni import SHARD_MAP_KEY, sharded
from picscale.lab.layout import Layout
from picscale.lab.probes import http_ok
from picscale.tiers.db.shard_map import ShardMap


def shard_map(layout: Layout) -> ShardMap | None:
    """The shard map stored in the lab's etcd (through its v3 JSON gateway); None if no
    process has published one yet."""
    key = base64.b64encode(SHARD_MAP_KEY.encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{layout.ports['etcd']}/v3/kv/range",
        data=json.dumps({"key": key}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310
        kvs = json.loads(response.read()).get("kvs") or []
    return ShardMap.from_json(base64.b64decode(kvs[0]["value"])) if kvs else None


def describe_map(found: ShardMap) -> str:
    """``shard map v1: c1 4096 shards (0-4095), c2 4096 shards (4096-8191)``."""
    parts = []
    for cluster, count in found.shards_per_cluster().items():
        spans = ", ".join(
            f"{r.first}-{r.last}" if r.first != r.last else str(r.first)
            for r in found.ranges_of(cluster)
        )
        parts.append(f"{cluster} {count} shards ({spans})")
    return f"shard map v{found.version}: " + ", ".join(parts)


def _map_figure(layout: Layout) -> str:
    try:
        found = shard_map(layout)
    except (urllib.error.URLError, OSError, ValueError):
        return "shard map: etcd does not answer"
    return describe_map(found) if found is not None else "shard map: not published yet"


@dataclass(frozen=True)
class Etcd(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("etcd", "etcd_peer")

    def components(self, layout: Layout) -> list[Component]:
        client = f"http://127.0.0.1:{layout.ports['etcd']}"
        peer = f"http://127.0.0.1:{layout.ports['etcd_peer']}"
        return [
            Component(
                name="etcd",
                role="consensus store (Patroni's leader keys, the shard map)"
                if sharded(layout)
                else "consensus store (Patroni's leader key)",
                command=[
                    "etcd",
                    "--name=e1",
                    f"--data-dir={layout.root / 'etcd'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=e1={peer}",
                    "--log-level=warn",
                ],
                port=layout.ports["etcd"],
                healthy=partial(http_ok, f"{client}/health"),
                figure=partial(_map_figure, layout) if sharded(layout) else None,
            )
        ]
