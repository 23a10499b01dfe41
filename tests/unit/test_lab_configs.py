"""The configurations the lab renders at its full stage are accepted by the engines' own
checkers (HAProxy, Prometheus), and say what the lab relies on."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from picscale.lab.engines.haproxy import haproxy_config
from picscale.lab.engines.postgres import Postgres
from picscale.lab.engines.prometheus import prometheus_config, write_targets
from picscale.lab.engines.redis import Redis
from picscale.lab.lab import Lab
from picscale.lab.layout import Layout
from picscale.lab.stages import PORT_NAMES, STAGES


def layout(tmp_path: Path, stage: int = 8) -> Layout:
    ports = {name: 20000 + n for n, name in enumerate(PORT_NAMES)}
    root = tmp_path / f"lab{stage}"
    root.mkdir()
    (root / "run").mkdir()
    return Layout(root, ports, "k" * 48, STAGES[stage])


def test_haproxy_accepts_the_full_stage_config(tmp_path: Path) -> None:
    lab = layout(tmp_path)
    text = haproxy_config(lab)
    # the edge front: Varnish first, the origin as its backup
    assert f"server varnish 127.0.0.1:{lab.ports['varnish']} check" in text
    assert f"server origin 127.0.0.1:{lab.ports['haproxy']} backup" in text
    assert "timeout check 5s" in text and "fall 3" in text
    config = lab.root / "haproxy.cfg"
    config.write_text(text)
    result = subprocess.run(
        ["/usr/sbin/haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_accepts_its_config_and_scrapes_what_runs(tmp_path: Path) -> None:
    lab = layout(tmp_path)
    write_targets(lab)
    config = lab.root / "prometheus.yml"
    config.write_text(prometheus_config(lab))
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    webs = json.loads((lab.root / "prometheus-targets" / "web.json").read_text())
    assert webs[0]["targets"] == [f"127.0.0.1:{lab.ports[f'web{n}']}" for n in (1, 2)]
    lab.workers = 3
    write_targets(lab)
    workers = json.loads((lab.root / "prometheus-targets" / "worker.json").read_text())
    assert len(workers[0]["targets"]) == 3


def test_each_stage_adds_its_tier_to_the_web_servers(tmp_path: Path) -> None:
    def web_env(stage: int) -> dict[str, str]:
        lab = Lab(Layout(tmp_path, {n: 1 for n in PORT_NAMES}, "k" * 48, STAGES[stage]), "")
        return next(c for c in lab.components if c.name == "web1").env

    assert "PICSCALE_CACHE_URL" not in web_env(4)
    assert web_env(5)["PICSCALE_CACHE_URL"].startswith("redis+sentinel://")
    assert "PICSCALE_SESSION_URL" not in web_env(5)
    assert web_env(6)["PICSCALE_SESSION_URL"] == web_env(6)["PICSCALE_CACHE_URL"]
    assert "PICSCALE_QUEUE_URL" not in web_env(6)
    assert web_env(7)["PICSCALE_QUEUE_URL"].startswith("amqp://")


def test_redis_configs_are_written_once(tmp_path: Path) -> None:
    """Redis and the Sentinels rewrite their files as roles change: a second `up` keeps
    what they learnt."""
    lab = layout(tmp_path)
    Redis().prepare(lab, print)
    replica = lab.root / "redis" / "redis2.conf"
    assert f"replicaof 127.0.0.1 {lab.ports['redis1']}" in replica.read_text()
    replica.write_text("# rewritten by Redis\n")
    Redis().prepare(lab, print)
    assert replica.read_text() == "# rewritten by Redis\n"


def test_lab_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    """An outgoing connection takes an ephemeral port: a lab port chosen there could be
    taken before its server binds it."""
    from picscale.lab.lab import _ephemeral_low, _free_port

    taken: set[int] = set()
    ports = [_free_port(taken) for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < _ephemeral_low() for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_engine_runs_on_ports_of_its_own(tmp_path: Path, stage: int) -> None:
    """Every component (every slot `lab scale` may fill too) has a name and a port no
    other has, among the ports its engine asks the lab for."""
    lab = layout(tmp_path, stage)
    programs = [c for e in lab.stage.engines for c in e.programs(lab)]
    assert len({c.name for c in programs}) == len({c.port for c in programs}) == len(programs)
    for engine in lab.stage.engines:
        own = {lab.ports[name] for name in engine.port_names()}
        assert {c.port for c in engine.programs(lab)} <= own, engine
    assert len(set(PORT_NAMES)) == len(PORT_NAMES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_component_has_a_health_check(tmp_path: Path, stage: int) -> None:
    """On ports that refuse connections (bound, not listening), every check says down."""
    with contextlib.ExitStack() as stack:
        held = {name: stack.enter_context(socket.socket()) for name in PORT_NAMES}
        for s in held.values():
            s.bind(("127.0.0.1", 0))
        ports = {name: s.getsockname()[1] for name, s in held.items()}
        lab = Lab(Layout(tmp_path, ports, "k" * 48, STAGES[stage]), "")
        assert [c.name for c in lab.components if c.healthy()] == []


def test_each_stage_runs_the_one_before_it_and_more(tmp_path: Path) -> None:
    """Except the single PostgreSQL, which Patroni's cluster replaces at stage 4."""
    names = {n: {c.name for c in Lab(layout(tmp_path, n), "").components} for n in STAGES}
    for n in sorted(STAGES)[1:]:
        assert names[n - 1] - {"postgres"} <= names[n], n
    assert [n for n in STAGES if STAGES[n].runs(Postgres)] == [2, 3]
