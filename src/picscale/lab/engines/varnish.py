"""The media edge (from stage 5): Varnish, behind an HAProxy front (the ``edge`` port)
that sends to the origin while Varnish is down, as a CDN's failover does."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from picscale.lab.engine import Component, Engine
from picscale.lab.layout import Layout
from picscale.lab.probes import http_ok

VARNISHD = "/usr/sbin/varnishd"


def work_dir(layout: Layout) -> Path:
    """Varnish's working directory, where varnishstat finds its counters."""
    return layout.root / "varnish"


def _hit_ratio(layout: Layout) -> str:
    result = subprocess.run(
        ["varnishstat", "-n", str(work_dir(layout)), "-1", "-j",
         "-f", "MAIN.cache_hit", "-f", "MAIN.cache_miss"],
        check=True, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    data = json.loads(result.stdout)
    counters = data.get("counters", data)
    hits = int(counters["MAIN.cache_hit"]["value"])
    total = hits + int(counters["MAIN.cache_miss"]["value"])
    return f"hit ratio {hits / total:.0%} of {total}" if total else "no requests yet"


@dataclass(frozen=True)
class Varnish(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("varnish", "varnish_admin", "edge")

    def components(self, layout: Layout) -> list[Component]:
        port = layout.ports["varnish"]
        return [
            Component(
                name="varnish",
                role="media edge (HAProxy sends to the origin while it is down)",
                command=[
                    VARNISHD,
                    "-F",  # in the foreground, under supervisord
                    "-j",
                    "none",  # a lab's files, a lab's user
                    "-a",
                    f"127.0.0.1:{port}",
                    "-T",
                    f"127.0.0.1:{layout.ports['varnish_admin']}",
                    "-n",
                    str(work_dir(layout)),
                    "-f",
                    str(layout.root / "picscale.vcl"),
                    "-s",
                    "malloc,256m",
                ],
                port=port,
                healthy=partial(http_ok, f"http://127.0.0.1:{port}/.edge/health"),
                figure=partial(_hit_ratio, layout),
            )
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        from picscale.tiers.edge.varnish import render_vcl

        # Varnish's origin is the load balancer: any web server fills the edge
        vcl = render_vcl("127.0.0.1", layout.ports["haproxy"], purgers=("127.0.0.1",))
        (layout.root / "picscale.vcl").write_text(vcl)

    def app_env(self, layout: Layout) -> dict[str, str]:
        # media URLs point at the edge's front (HAProxy: Varnish, the origin as backup);
        # purges go to Varnish itself
        return {
            "PICSCALE_CDN_URL": layout.url("edge"),
            "PICSCALE_CDN_PURGE_URL": layout.url("varnish"),
        }

    def urls(self, layout: Layout) -> dict[str, str]:
        return {"Media edge": f"{layout.url('edge')} (Varnish {layout.url('varnish')})"}
