"""etcd: the consensus store that holds Patroni's leader key."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from picscale.lab.engine import Component, Engine
from picscale.lab.layout import Layout
from picscale.lab.probes import http_ok


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
                role="consensus store (Patroni's leader key)",
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
            )
        ]
