"""The configurations the lab renders at its full stage are accepted by the engines' own
checkers (HAProxy, Prometheus), and say what the lab relies on."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from picscale.lab.engines.etcd import describe_map
from picscale.lab.engines.haproxy import haproxy_config
from picscale.lab.engines.patroni import Patroni
from picscale.lab.engines.postgres import Postgres
from picscale.lab.engines.prometheus import prometheus_config, write_targets
from picscale.lab.engines.redis import Redis
from picscale.lab.lab import Lab
from picscale.lab.layout import Layout
from picscale.lab.stages import PORT_NAMES, STAGES
from picscale.settings import load_settings
from picscale.tiers.db.shard_map import ShardMap


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


def test_stage_9_gives_the_app_a_layout_of_two_patroni_clusters_and_the_map_in_etcd(
    tmp_path: Path,
) -> None:
    lab = layout(tmp_path, 9)
    web = next(c for c in Lab(lab, "").components if c.name == "web1")
    settings = load_settings(web.env)
    clusters = settings.database_layout()
    assert list(clusters) == ["c1", "c2"]  # c1 first: it holds the global tables
    for name, nodes in (("c1", ("pg1", "pg2", "pg3")), ("c2", ("c2-pg1", "c2-pg2"))):
        url = clusters[name]
        assert all(f"127.0.0.1:{lab.ports[node]}" in url for node in nodes), url
        assert url.endswith("/picscale?target_session_attrs=read-write")
        patroni = settings.cluster_setting(
            settings.database.patroni_url, name, "PICSCALE_DATABASE_PATRONI_URL"
        )
        apis = [node.replace("pg", "patroni") for node in nodes]
        assert patroni.split(",") == [f"http://127.0.0.1:{lab.ports[api]}" for api in apis]
    assert settings.shards.map_url == f"etcd://127.0.0.1:{lab.ports['etcd']}/picscale/shard-map"
    # the workers are configured alike; stage 8 keeps its one cluster and its map table
    worker = next(c for c in Lab(lab, "").components if c.name == "worker1")
    assert worker.env == web.env
    eight = next(c for c in Lab(layout(tmp_path, 8), "").components if c.name == "web1").env
    assert list(load_settings(eight).database_layout()) == ["c1"]
    assert "PICSCALE_SHARD_MAP_URL" not in eight


def test_stage_9_patroni_clusters_share_etcd_under_scopes_of_their_own(tmp_path: Path) -> None:
    lab = layout(tmp_path, 9)
    clusters = [e for e in lab.stage.engines if isinstance(e, Patroni)]
    assert [(c.cluster, c.nodes) for c in clusters] == [("c1", 3), ("c2", 2)]
    configs = {}
    for c in clusters:
        c.prepare(lab, print)
        for n in c.numbers():
            configs[c.node(n)] = json.loads((lab.root / c.node(n) / "patroni.yml").read_text())
    assert set(configs) == {"patroni1", "patroni2", "patroni3", "c2-patroni1", "c2-patroni2"}
    scopes = {name: config["scope"] for name, config in configs.items()}
    assert scopes["patroni1"] == "picscale-lab" and scopes["c2-patroni1"] == "picscale-lab-c2"
    assert len({config["name"] for config in configs.values()}) == 5
    assert {config["etcd3"]["hosts"] for config in configs.values()} == {
        f"127.0.0.1:{lab.ports['etcd']}"
    }
    dcs = configs["c2-patroni1"]["bootstrap"]["dcs"]
    parameters = dcs["postgresql"]["parameters"]
    # a shard move: logical replication, a slot and walsenders beside the replicas', and
    # Patroni must leave the move's logical slots alone
    assert parameters["wal_level"] == "logical"
    assert parameters["max_replication_slots"] >= 10 and parameters["max_wal_senders"] >= 10
    assert {"type": "logical"} in dcs["ignore_slots"]
    # PostgreSQL's exporter scrapes every node of both clusters
    exporter = next(c for c in Lab(lab, "").components if c.name == "pg_exporter")
    dsns = exporter.env["DATA_SOURCE_NAME"].split(",")
    assert len(dsns) == 5 and f"127.0.0.1:{lab.ports['c2-pg2']}/" in dsns[-1]


def test_the_shard_map_as_lab_status_shows_it() -> None:
    first = ShardMap.even(["c1", "c2"])
    assert describe_map(first) == (
        "shard map v1: c1 4096 shards (0-4095), c2 4096 shards (4096-8191)"
    )
    moved = first.assign(4096, 4607, "c1")
    assert describe_map(moved.assign(8191, 8191, "c1")) == (
        "shard map v3: c1 4609 shards (0-4607, 8191), c2 3583 shards (4608-8190)"
    )
