"""``picscale drill NAME``: a failure under load, and what the users felt.

A drill puts load on the lab's front door (``picscale load``'s journeys), breaks one
component, brings it back, and reports: requests that failed as clients saw them, how long
clients saw failures, when the service was whole again, acknowledged writes lost (every
write a client saw succeed is read back) and jobs lost (every accepted edit must finish).
The drills of stage 9 break nothing: a shard move and a celebrity, under load
(``shard_drills``).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picscale.lab import lab as labs
from picscale.lab.engine import LabError
from picscale.lab.engines.haproxy import server_up
from picscale.lab.engines.patroni import Patroni, shard_clusters
from picscale.lab.engines.postgres import query
from picscale.lab.engines.redis import master
from picscale.lab.layout import Layout
from picscale.load.runner import (
    LoadOptions,
    LoadSummary,
    start_load,
    verify_writes,
    write_unavailability,
)
from picscale.procs import group_members

if TYPE_CHECKING:
    from picscale.lab.shard_drills import ScenarioReport

# the expectations of the issue: no failed request for these
ZERO_FAILURES = {"web-server", "db-replica", "cache-master", "worker", "edge"}
MAX_WRITE_GAP_SECONDS = 12.0  # db-primary: writes may fail this long, no longer


@dataclass(frozen=True)
class Drill:
    name: str
    stage: int  # the first stage that has the component
    what: str


DRILLS = {
    d.name: d
    for d in (
        Drill("web-server", 3, "SIGKILL one web server (HAProxy retries its requests elsewhere)"),
        Drill("db-primary", 4, "SIGKILL the PostgreSQL primary (of c1) and its Patroni"),
        Drill("db-replica", 4, "SIGKILL a PostgreSQL replica and its Patroni"),
        Drill("cache-master", 5, "SIGKILL the Redis master (the Sentinels promote the replica)"),
        Drill("edge", 5, "SIGKILL Varnish (media come from the origin meanwhile)"),
        Drill("worker", 7, "SIGKILL a worker and its processes mid-job"),
        Drill("broker-restart", 7, "restart RabbitMQ (jobs wait in the outbox, then flow)"),
        Drill("db-primary-c2", 9, "SIGKILL the primary of shard cluster c2 and its Patroni"),
        Drill("shard-move", 9, "move a range of logical shards to the other cluster and back"),
        Drill("celebrity", 9, "one account gets most reads and follows from many new users"),
    )
}
# no component breaks in these: they have runs of their own (``shard_drills``)
SCENARIOS = {"shard-move", "celebrity"}
PRIMARY_KILLS = {"db-primary": "c1", "db-primary-c2": "c2"}


@dataclass
class DrillReport:
    name: str
    victim: str
    summary: LoadSummary
    failed_at: float  # when the failure was made (unix time)
    failures_seen_seconds: float  # from the failure to the last request that failed
    failover_seconds: float  # until the system had worked around the victim
    back_seconds: float  # until the victim was back (restarted after down_for)
    write_unavailable_seconds: float
    writes_checked: int
    writes_lost: int
    jobs_checked: int
    jobs_lost: int
    lost: list[dict[str, Any]] = field(default_factory=list)  # what was lost, writes and jobs
    expectations: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def recovered_seconds(self) -> float:
        """Until the service was whole for its users: worked around, no more failures."""
        return max(self.failures_seen_seconds, self.failover_seconds)

    @property
    def failed(self) -> int:
        return self.summary.total.failures

    @property
    def passed(self) -> bool:
        return all(met for _, met in self.expectations)


def cluster(layout: Layout, name: str) -> Patroni:
    """The stage's Patroni cluster ``name`` (c1, or from stage 9 c2)."""
    found = next((c for c in shard_clusters(layout) if c.cluster == name), None)
    if found is None:
        raise LabError(f"stage {layout.stage.number} has no PostgreSQL cluster {name}")
    return found


def _victim(lab: labs.Lab, name: str) -> str:
    layout = lab.layout
    if name == "web-server":
        return "web1"
    if name in (*PRIMARY_KILLS, "db-replica"):
        patroni = cluster(layout, PRIMARY_KILLS.get(name, "c1"))
        leader = patroni.leader(layout)
        if leader is None:
            raise LabError(
                f"no PostgreSQL primary in {patroni.cluster} now: wait for Patroni (`lab status`)"
            )
        if name in PRIMARY_KILLS:
            return patroni.node(leader)
        return patroni.node(next(n for n in patroni.numbers() if n != leader))
    if name == "cache-master":
        return master(layout, layout.ports["sentinel1"])
    if name == "edge":
        return "varnish"
    if name == "worker":
        return "worker1"
    return "rabbitmq"


def _busy_worker(lab: labs.Lab, say: Callable[[str], None]) -> str | None:
    """The worker component running a job now (the jobs table names the process that
    holds each running job), looked for during up to 15 s."""
    layout = lab.layout
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        # the jobs of each cluster's shards are in that cluster
        ports = [c.leader_port(layout) for c in shard_clusters(layout)] or [
            layout.ports["postgres"]
        ]
        owners = [
            owner
            for port in ports
            if port is not None
            for owner in query(port, "SELECT lease_owner FROM jobs WHERE status = 'running'")
        ]
        pids = {int(o.rsplit(":", 1)[1]) for o in owners if ":" in o}
        processes = lab.supervisor.processes()
        for n in range(1, layout.worker_count + 1):
            group = processes.get(f"worker{n}", {}).get("pid")
            if group and pids & set(group_members(int(group))):
                return f"worker{n}"
        time.sleep(0.05)  # jobs last a fraction of a second: look often
    say("  no worker was running a job in 15 s: killing worker1 anyway")
    return None


def _failed_over(lab: labs.Lab, name: str, victim: str) -> Callable[[], bool]:
    """True once the system has worked around the victim on its own."""
    layout = lab.layout
    if name in PRIMARY_KILLS:
        patroni = cluster(layout, PRIMARY_KILLS[name])
        return lambda: (n := patroni.leader(layout)) is not None and patroni.node(n) != victim
    if name == "cache-master":
        return lambda: master(layout, layout.ports["sentinel1"]) != victim
    if name == "web-server":  # the load balancer no longer sends it requests
        return lambda: not server_up(layout, "webs", victim)
    if name == "edge":
        return lambda: not server_up(layout, "edges", victim)
    return lambda: True


def run_drill(
    root: Path,
    name: str,
    say: Callable[[str], None],
    *,
    users: int = 10,
    before: float = 8.0,
    down_for: float = 10.0,
    after: float = 10.0,
) -> DrillReport | ScenarioReport:
    """Load for ``before`` s, break the victim, bring it back ``down_for`` s later, keep
    the load on ``after`` s more, then read every acknowledged write back. (The scenarios
    of stage 9 use the same times: see ``shard_drills``.)"""
    drill = DRILLS.get(name)
    if drill is None:
        raise LabError(f"no drill {name!r}: choose from {', '.join(DRILLS)}")
    lab = labs.require(root)
    if lab.layout.stage.number < drill.stage:
        raise LabError(
            f"the {name} drill needs stage {drill.stage} or later; the lab is at stage "
            f"{lab.layout.stage.number}: `picscale lab down`, then `lab up --stage {drill.stage}`"
        )
    if name in SCENARIOS:
        from picscale.lab import shard_drills

        scenario = shard_drills.SCENARIOS[name]
        return scenario(lab, drill, say, users=users, before=before, during=down_for, after=after)
    victim = _victim(lab, name)
    front = lab.layout.url("haproxy")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = lab.layout.root / "drills" / f"{name}-{stamp}"
    say(f"drill {name}: {drill.what}; victim {victim}")
    options = LoadOptions(
        target=front,
        users=users,
        spawn_rate=users,
        duration=before + down_for + after + 30,  # stopped by us, this is a ceiling
        out_dir=out_dir,
    )
    run = start_load(options, say)
    try:
        time.sleep(before)  # the load settles before the failure
        if name == "worker":  # the worker that is running a job now: it dies mid-job
            victim = _busy_worker(lab, say) or victim
        failed_at = time.time()
        if name == "broker-restart":
            say(f"  restarting {victim}…")
            lab.supervisor.stop_process(victim)
        else:
            pid = labs.kill(root, victim)
            say(f"  killed {victim} (pid {pid})")
        failed_over = _failed_over(lab, name, victim)
        failover_at = None
        deadline = time.monotonic() + down_for
        while time.monotonic() < deadline or failover_at is None:
            if not run.running:
                raise LabError(f"the load ended early: see {out_dir}")
            if failover_at is None and failed_over():
                failover_at = time.time()
                say(f"  worked around {victim} in {failover_at - failed_at:.1f} s")
            if time.monotonic() > deadline + 60:
                raise LabError(f"the {name} failover took more than {down_for + 60:g} s")
            time.sleep(0.2)  # the failure lasts down_for seconds, whatever happens
        say(f"  starting {victim} again…")
        labs.start(root, victim)
        back_at = time.time()
        say(f"  {victim} is back ({back_at - failed_at:.1f} s after the failure)")
        time.sleep(after)  # the load goes on while the victim rejoins
    finally:
        summary = run.stop()
    last_failure = _last_failure(summary, failed_at)
    seen = max(0.0, last_failure - failed_at) if last_failure else 0.0
    say("  reading back every acknowledged write…")
    check = verify_writes(front, summary.writes)
    report = DrillReport(
        name=name,
        victim=victim,
        summary=summary,
        failed_at=failed_at,
        failures_seen_seconds=seen,
        failover_seconds=failover_at - failed_at,
        back_seconds=back_at - failed_at,
        write_unavailable_seconds=write_unavailability(summary.writes, failed_at),
        writes_checked=check.checked,
        writes_lost=len(check.lost),
        jobs_checked=check.jobs_checked,
        jobs_lost=len(check.jobs_lost),
        lost=[*check.lost, *check.jobs_lost],
    )
    report.expectations = _expectations(report)
    return report


def _last_failure(summary: LoadSummary, since: float) -> float | None:
    """The last second (unix time) in which a request failed, from Locust's history."""
    history = Path(f"{summary.csv_prefix}_stats_history.csv")
    last = None
    previous = 0
    with history.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            failures = int(float(row.get("Total Failure Count") or 0))
            if failures > previous and float(row["Timestamp"]) >= since - 1:
                last = float(row["Timestamp"])
            previous = failures
    return last


def _expectations(report: DrillReport) -> list[tuple[str, bool]]:
    out = [
        (f"acknowledged writes lost = 0 (of {report.writes_checked})", report.writes_lost == 0),
        (f"jobs lost = 0 (of {report.jobs_checked})", report.jobs_lost == 0),
    ]
    if report.name in ZERO_FAILURES:
        out.insert(0, ("failed requests = 0", report.failed == 0))
    if report.name in PRIMARY_KILLS:
        out.insert(
            0,
            (
                f"writes unavailable <= {MAX_WRITE_GAP_SECONDS:g} s",
                report.write_unavailable_seconds <= MAX_WRITE_GAP_SECONDS,
            ),
        )
    return out


def format_report(report: DrillReport | ScenarioReport) -> str:
    if not isinstance(report, DrillReport):
        return report.format()
    s = report.summary
    lines = [
        f"drill {report.name} (victim {report.victim})",
        f"  requests                 {s.total.requests}",
        f"  failed, as clients saw   {s.total.failures}",
    ]
    for kind, count in sorted(s.errors.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {count:>6}  {kind}")
    lines += [
        f"  clients saw failures for {report.failures_seen_seconds:.1f} s",
        f"  worked around after      {report.failover_seconds:.1f} s",
        f"  fully recovered after    {report.recovered_seconds:.1f} s",
        f"  victim back after        {report.back_seconds:.1f} s (restarted after the drill's"
        " down time)",
        f"  writes unavailable       {report.write_unavailable_seconds:.1f} s",
        f"  acknowledged writes lost {report.writes_lost} of {report.writes_checked}",
        f"  jobs lost                {report.jobs_lost} of {report.jobs_checked}",
    ]
    lines += [f"    lost: {json.dumps(item, default=str)}" for item in report.lost[:10]]
    lines.append("expectations:")
    lines += [f"  {'met ' if met else 'MISSED'}  {text}" for text, met in report.expectations]
    lines.append(f"load report: {s.html}")
    return "\n".join(lines)
