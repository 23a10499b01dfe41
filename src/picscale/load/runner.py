"""Run Locust's user journeys against a Picscale service, and read back what it did.

Locust runs in a process of its own (it patches the standard library with gevent),
started here with ``locustfile.py`` from this package. Before it starts, a few
celebrity accounts are seeded over plain HTTP; after it ends, its CSV files give the
summary, and ``writes.jsonl`` (every write the simulated members attempted) lets
``verify_writes`` check that the service kept every write it acknowledged.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SEED_FILE = "seed.json"  # the locustfile reads these names too
WRITES_FILE = "writes.jsonl"
IMAGE_FILE = "upload.jpg"
LOG_FILE = "locust.log"
CSV_PREFIX = "locust"
HTML_FILE = "report.html"

DEFAULT_TARGET = "http://127.0.0.1:8000"
PHOTOS_PER_CELEBRITY = 3
PROGRESS_SECONDS = 3.0
STOP_TIMEOUT_SECONDS = 10  # users finish the task they are in: every write attempted is logged
REQUEST_TIMEOUT_SECONDS = 30.0
VISIBLE_WITHIN_SECONDS = 10.0  # how long an acknowledged write may take to show (replica lag)
POLL_SECONDS = 0.2


class LoadError(RuntimeError):
    """Something the user can fix; the message says how."""


@dataclass(frozen=True)
class LoadOptions:
    target: str  # base URL, e.g. http://127.0.0.1:8000
    users: int
    spawn_rate: float
    duration: float  # seconds
    out_dir: Path  # Locust's CSV files and HTML report, writes.jsonl
    celebrities: int = 5
    locustfile: Path = LOCUSTFILE  # the journeys (a drill may run its own, built on these)


@dataclass(frozen=True)
class RequestRow:
    """One line of Locust's statistics; percentiles in milliseconds, None with no requests."""

    name: str
    requests: int
    failures: int
    rps: float
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass
class LoadSummary:
    rows: list[RequestRow]  # one per request name
    total: RequestRow  # Locust's "Aggregated" line
    errors: dict[str, int]  # "GET /api/v1/feed: 503", "GET /api/v1/feed: ConnectionError" -> count
    csv_prefix: Path
    html: Path
    writes: Path


# -- seeding ------------------------------------------------------------------------------


def sample_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A small JPEG with some structure, for every upload of the run."""
    import pyvips

    xyz = pyvips.Image.xyz(width, height)
    red, green = xyz[0] * (255 / width), xyz[1] * (255 / height)
    blue = (xyz[0] + xyz[1]) % 64 * 4
    data: bytes = red.bandjoin([green, blue]).cast("uchar").jpegsave_buffer(Q=85)
    return data


def _expect(response: httpx.Response, status: int, what: str) -> Any:
    if response.status_code != status:
        raise LoadError(
            f"could not {what}: {response.request.method} {response.request.url.path} "
            f"answered {response.status_code} {response.text[:300]}"
        )
    return response.json()


def check_target(target: str) -> None:
    try:
        response = httpx.get(f"{target}/healthz", timeout=5.0)
    except httpx.TransportError as exc:
        raise LoadError(
            f"nothing answers at {target} ({type(exc).__name__}): start it with `make run` "
            "or `picscale lab up`, or pass --target"
        ) from None
    if response.status_code != 200:
        raise LoadError(
            f"{target}/healthz answered {response.status_code}: is the service up there "
            "(`picscale lab status`), and is it Picscale?"
        )


def _celebrity(target: str, name: str, password: str, image: bytes) -> list[str]:
    """Sign up ``name`` and upload its photos; their ids."""
    body = {"username": name, "password": password}
    with httpx.Client(base_url=target, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        _expect(client.post("/api/v1/users", json=body), 201, "sign up a celebrity")
        token = _expect(client.post("/api/v1/sessions", json=body), 201, "log in")["token"]
        client.cookies.clear()
        return [
            str(
                _expect(
                    client.post(
                        "/api/v1/photos",
                        files={"file": (f"{name}-{i}.jpg", image, "image/jpeg")},
                        data={"caption": f"{name}'s photo {i}"},
                        headers={"Authorization": f"Bearer {token}"},
                    ),
                    201,
                    "upload a celebrity's photo",
                )["id"]
            )
            for i in range(1, PHOTOS_PER_CELEBRITY + 1)
        ]


def seed(target: str, out_dir: Path, celebrities: int) -> dict[str, Any]:
    """Celebrity accounts with a few photos each, most popular first; written to
    ``seed.json`` for the locustfile (with the run's id and its members' password)."""
    run = secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    image = sample_jpeg()
    (out_dir / IMAGE_FILE).write_bytes(image)
    names = [f"celeb{run}_{n}" for n in range(1, celebrities + 1)]
    # side by side: a sign-up hashes a password, seconds on a busy machine
    with ThreadPoolExecutor(max_workers=min(8, celebrities)) as pool:
        photos = pool.map(lambda name: _celebrity(target, name, password, image), names)
        state = {
            "run": run,
            "password": password,
            "image": IMAGE_FILE,
            "celebrities": names,
            "photos": [photo for own in photos for photo in own],
        }
    (out_dir / SEED_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return state


# -- running Locust -----------------------------------------------------------------------


def _paths(out_dir: Path) -> tuple[Path, Path, Path]:
    return out_dir / CSV_PREFIX, out_dir / HTML_FILE, out_dir / WRITES_FILE


def start_load(options: LoadOptions, say: Callable[[str], None]) -> LoadRun:
    """Seed the service, then start Locust headless; returns at once."""
    if importlib.util.find_spec("locust") is None:
        raise LoadError("Locust is not installed: it is in the dev dependency group (`uv sync`)")
    if options.celebrities < 1 or options.users < 1 or options.duration <= 0:
        raise LoadError("a run needs at least one celebrity, one user and a duration above 0")
    target = options.target.rstrip("/")
    out_dir = options.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    check_target(target)
    say(
        f"seeding {target}: {options.celebrities} celebrities with "
        f"{PHOTOS_PER_CELEBRITY} photos each"
    )
    seed(target, out_dir, options.celebrities)
    prefix, html, _ = _paths(out_dir)
    command = [
        sys.executable, "-m", "locust",
        "-f", str(options.locustfile),
        "--headless",
        "--users", str(options.users),
        "--spawn-rate", f"{options.spawn_rate:g}",
        "--run-time", f"{max(1, math.ceil(options.duration))}s",
        "--host", target,
        "--csv", str(prefix),
        "--csv-full-history",
        "--html", str(html),
        "--only-summary",
        "--stop-timeout", str(STOP_TIMEOUT_SECONDS),
        "--exit-code-on-error", "0",
        "--picscale-dir", str(out_dir),
    ]  # fmt: skip
    # Locust also reads LOCUST_* variables and locust.conf / pyproject.toml in its
    # working directory: neither may change the run
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    with (out_dir / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=out_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped by its pid
        )
    say(
        f"locust: {options.users} users (starting {options.spawn_rate:g}/s) for "
        f"{options.duration:g} s; files in {out_dir}"
    )
    return LoadRun(options, process, out_dir, say)


class LoadRun:
    """A running Locust process."""

    def __init__(
        self,
        options: LoadOptions,
        process: subprocess.Popen[bytes],
        out_dir: Path,
        say: Callable[[str], None],
    ) -> None:
        self.options = options
        self.process = process
        self.out_dir = out_dir
        self.say = say
        self.started = time.monotonic()
        self._stopping = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> LoadSummary:
        """Until Locust ends by itself, saying progress every few seconds. Raises
        TimeoutError (leaving it running) if that takes more than ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.process.poll() is None:
            step = PROGRESS_SECONDS
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    raise TimeoutError(f"Locust is still running after {timeout:g} s")
            try:
                self.process.wait(step)
            except subprocess.TimeoutExpired:
                self._progress()
        return self._finish()

    def stop(self) -> LoadSummary:
        """Stop Locust now (SIGINT: users finish their task, the report is written)."""
        self._stopping = True
        grace = {signal.SIGINT: STOP_TIMEOUT_SECONDS + 20.0, signal.SIGTERM: 10.0}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(grace.get(sig))
            except subprocess.TimeoutExpired:
                continue
        return self._finish()

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.running:
            self.stop()

    def _progress(self) -> None:
        prefix, _, _ = _paths(self.out_dir)
        last = last_total(Path(f"{prefix}_stats_history.csv"))
        elapsed = time.monotonic() - self.started
        if last is None:
            self.say(f"load: {elapsed:.0f} s, starting")
            return
        self.say(
            f"load: {elapsed:.0f} s, {last['User Count']} users, "
            f"{last['Total Request Count']} requests, {last['Total Failure Count']} failures, "
            f"{float(last['Requests/s']):.1f} req/s"
        )

    def _finish(self) -> LoadSummary:
        code = self.process.returncode
        prefix, html, writes = _paths(self.out_dir)
        if (code != 0 and not self._stopping) or not Path(f"{prefix}_stats.csv").exists():
            raise LoadError(
                f"Locust exited with status {code}; its log ({self.out_dir / LOG_FILE}) "
                f"ends:\n{_tail(self.out_dir / LOG_FILE)}"
            )
        summary = read_summary(prefix, html, writes)
        total = summary.total
        self.say(f"load: done, {total.requests} requests, {total.failures} failures")
        return summary


def run_load(options: LoadOptions, say: Callable[[str], None]) -> LoadSummary:
    """Seed, run for ``options.duration`` and summarise (Ctrl-C stops the run early)."""
    run = start_load(options, say)
    try:
        return run.wait()
    except KeyboardInterrupt:
        say("load: stopping")
        return run.stop()
    finally:
        if run.running:  # an error on this side: leave nothing behind
            run.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def last_total(history: Path) -> dict[str, str] | None:
    """The latest "Aggregated" line of Locust's history CSV (read from the file's end)."""
    try:
        with history.open("rb") as f:
            header = f.readline().decode()
            size = f.seek(0, os.SEEK_END)
            f.seek(max(len(header), size - 65536))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    columns = next(csv.reader([header]), [])
    for line in reversed(tail):
        row = next(csv.reader([line]), [])
        if len(row) == len(columns) and row[columns.index("Name")] == "Aggregated":
            return dict(zip(columns, row, strict=True))
    return None


# -- reading the results ------------------------------------------------------------------


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # "N/A": no requests


def _row(line: dict[str, str]) -> RequestRow:
    return RequestRow(
        name=line["Name"],
        requests=int(line["Request Count"]),
        failures=int(line["Failure Count"]),
        rps=float(line["Requests/s"]),
        p50=_number(line["50%"]),
        p95=_number(line["95%"]),
        p99=_number(line["99%"]),
    )


_CAUGHT = re.compile(r"^CatchResponseError\((['\"])(.*)\1\)$")


def error_kind(error: str) -> str:
    """``CatchResponseError('503')`` -> ``503``; ``ConnectionError(...)`` -> ``ConnectionError``."""
    caught = _CAUGHT.match(error)
    if caught:
        return caught.group(2)
    return error.split("(", 1)[0].strip() or error


def read_summary(csv_prefix: Path, html: Path, writes: Path) -> LoadSummary:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    rows = [_row(line) for line in lines if line["Name"] != "Aggregated"]
    total = next(
        (_row(line) for line in lines if line["Name"] == "Aggregated"),
        RequestRow("Aggregated", 0, 0, 0.0, None, None, None),
    )
    errors: Counter[str] = Counter()
    failures = Path(f"{csv_prefix}_failures.csv")
    if failures.exists():
        with failures.open(newline="") as f:
            for line in csv.DictReader(f):
                errors[f"{line['Name']}: {error_kind(line['Error'])}"] += int(line["Occurrences"])
    exceptions = Path(f"{csv_prefix}_exceptions.csv")
    if exceptions.exists():  # raised in the journeys themselves: a bug in the locustfile
        with exceptions.open(newline="") as f:
            for line in csv.DictReader(f):
                errors[f"locustfile: {line['Message']}"] += int(line["Count"])
    return LoadSummary(rows, total, dict(errors.most_common()), csv_prefix, html, writes)


def format_summary(summary: LoadSummary) -> str:
    """A plain-text table: one line per request name, the total, then errors by kind."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    header = ("name", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms")
    cells = [
        (r.name, str(r.requests), str(r.failures), f"{r.rps:.1f}", ms(r.p50), ms(r.p95), ms(r.p99))
        for r in [*summary.rows, summary.total]
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    out = [line(header), *(line(row) for row in cells[:-1])]
    out += ["-" * len(out[0]), line(cells[-1]), ""]
    if summary.errors:
        out.append("errors by kind:")
        out += [f"{count:>8}  {kind}" for kind, count in summary.errors.items()]
    else:
        out.append("errors: none")
    return "\n".join(out)


# -- checking the writes ------------------------------------------------------------------


def read_writes(path: Path) -> list[dict[str, Any]]:
    """The writes log's entries; a line torn by a killed process is skipped."""
    entries: list[dict[str, Any]] = []
    if not path.exists():
        return entries
    for text in path.read_text().splitlines():
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class Pending:
    """Not seen yet: may still come (replica lag, a queued job)."""

    reason: str


@dataclass(frozen=True)
class Gone:
    """Will not come: a failed job."""

    reason: str


Check = Callable[[], Pending | Gone | None]  # None: the write is there


def _settle(checks: list[Check], within: float) -> dict[int, str]:
    """Run each check until it passes, or is Gone, or ``within`` seconds have passed
    (each runs at least once); which did not pass, and why."""
    deadline = time.monotonic() + within
    pending = list(range(len(checks)))
    failed: dict[int, str] = {}
    while pending:
        still: list[int] = []
        for i in pending:
            verdict = checks[i]()
            if isinstance(verdict, Gone):
                failed[i] = verdict.reason
            elif isinstance(verdict, Pending):
                failed[i] = verdict.reason
                still.append(i)
            else:
                failed.pop(i, None)
        pending = still
        if pending and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        else:
            break
    return failed


def _get(client: httpx.Client, path: str, token: str | None = None) -> httpx.Response | Pending:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return client.get(path, headers=headers)
    except httpx.TransportError as exc:
        return Pending(type(exc).__name__)


def _found(client: httpx.Client, path: str) -> Check:
    def check() -> Pending | None:
        response = _get(client, path)
        if isinstance(response, Pending):
            return response
        return None if response.status_code == 200 else Pending(f"{path}: {response.status_code}")

    return check


def _follows(client: httpx.Client, user: str, followees: set[str]) -> Check:
    """No unfollows happen in the journeys: a member follows at least everyone whose follow
    was acknowledged (more if an unacknowledged one went through)."""

    def check() -> Pending | None:
        response = _get(client, f"/api/v1/users/{user}")
        if isinstance(response, Pending):
            return response
        if response.status_code != 200:
            return Pending(f"profile of {user}: {response.status_code}")
        count = int(response.json()["following_count"])
        if count < len(followees):
            return Pending(f"{user} follows {count}, {len(followees)} acknowledged")
        return None

    return check


def _rendered(client: httpx.Client, photo_id: str) -> Check:
    """An upload's first render (a job of its own) made the photo ready."""

    def check() -> Pending | Gone | None:
        response = _get(client, f"/api/v1/photos/{photo_id}")
        if isinstance(response, Pending):
            return response
        if response.status_code != 200:
            return Pending(f"photo {photo_id}: {response.status_code}")
        status = response.json()["status"]
        if status == "failed":
            return Gone(f"photo {photo_id} failed to render")
        return None if status == "ready" else Pending(f"photo {photo_id} still {status}")

    return check


class _Tokens:
    """Session tokens of the members whose jobs are read (a job shows only to its owner)."""

    def __init__(self, client: httpx.Client, password: str) -> None:
        self.client = client
        self.password = password
        self.tokens: dict[str, str] = {}

    def of(self, user: str) -> str | Pending:
        if user not in self.tokens:
            body = {"username": user, "password": self.password}
            try:
                response = self.client.post("/api/v1/sessions", json=body)
            except httpx.TransportError as exc:
                return Pending(type(exc).__name__)
            if response.status_code != 201:
                return Pending(f"cannot log in as {user}: {response.status_code}")
            self.client.cookies.clear()
            self.tokens[user] = str(response.json()["token"])
        return self.tokens[user]


def _job_done(client: httpx.Client, tokens: _Tokens, user: str, job_id: str) -> Check:
    def check() -> Pending | Gone | None:
        token = tokens.of(user)
        if isinstance(token, Pending):
            return token
        response = _get(client, f"/api/v1/jobs/{job_id}", token)
        if isinstance(response, Pending):
            return response
        if response.status_code != 200:
            return Pending(f"job {job_id}: {response.status_code}")
        job = response.json()
        if job["status"] == "failed":
            return Gone(f"job {job_id} failed: {job.get('error')}")
        return None if job["status"] == "done" else Pending(f"job {job_id} still {job['status']}")

    return check


@dataclass
class WriteCheck:
    checked: int
    lost: list[dict[str, Any]]  # the writes log's entries, with a "reason"
    jobs_checked: int
    jobs_lost: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.lost and not self.jobs_lost


def verify_writes(target: str, writes: Path, *, job_timeout: float = 60.0) -> WriteCheck:
    """Read back every acknowledged write: signed-up users and uploaded photos exist,
    follows show in the follower's count, and every job finished: each edit's job is
    done and each upload's first render made its photo ready. A write is lost if it has
    not shown after a few seconds (replica lag); a job, if it failed or is not done
    within ``job_timeout`` seconds."""
    acknowledged = [e for e in read_writes(writes) if e.get("ok")]
    seed_file = writes.with_name(SEED_FILE)
    if not seed_file.exists():
        raise LoadError(f"{seed_file} is missing: verify_writes reads a `picscale load` run")
    password = str(json.loads(seed_file.read_text())["password"])
    with httpx.Client(base_url=target.rstrip("/"), timeout=REQUEST_TIMEOUT_SECONDS) as client:
        entries: list[list[dict[str, Any]]] = []  # the log entries each check stands for
        checks: list[Check] = []
        followees: dict[str, set[str]] = defaultdict(set)
        follow_entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in acknowledged:
            kind, ident = entry["kind"], str(entry["id"])
            if kind == "signup":
                checks.append(_found(client, f"/api/v1/users/{ident}"))
            elif kind in ("upload", "edit"):
                photo = ident if kind == "upload" else str(entry["photo"])
                checks.append(_found(client, f"/api/v1/photos/{photo}"))
            elif kind == "follow":
                followees[entry["user"]].add(ident)
                follow_entries[entry["user"]].append(entry)
                continue
            else:
                continue
            entries.append([entry])
        for user, names in followees.items():
            checks.append(_follows(client, user, names))
            entries.append(follow_entries[user])
        lost = [
            {**entry, "reason": reason}
            for i, reason in _settle(checks, VISIBLE_WITHIN_SECONDS).items()
            for entry in entries[i]
        ]

        tokens = _Tokens(client, password)
        job_entries = [e for e in acknowledged if e["kind"] in ("upload", "edit")]
        job_checks = [
            _rendered(client, str(e["id"]))
            if e["kind"] == "upload"
            else _job_done(client, tokens, str(e["user"]), str(e["id"]))
            for e in job_entries
        ]
        jobs_lost = [
            {**job_entries[i], "reason": reason}
            for i, reason in _settle(job_checks, job_timeout).items()
        ]
    return WriteCheck(len(acknowledged), lost, len(job_entries), jobs_lost)


def write_unavailability(writes: Path, after: float) -> float:
    """Seconds during which writes failed after ``after`` (a unix time): from the first
    failed write then to the first acknowledged write after the last failed one; 0.0 if
    none failed, infinity if writes never came back."""
    entries = sorted(
        (e for e in read_writes(writes) if float(e["t"]) >= after), key=lambda e: float(e["t"])
    )
    failed = [float(e["t"]) for e in entries if not e["ok"]]
    if not failed:
        return 0.0
    first, last = failed[0], failed[-1]
    back = next((float(e["t"]) for e in entries if e["ok"] and float(e["t"]) > last), math.inf)
    return back - first


# -- the command's defaults ---------------------------------------------------------------


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def default_target(lab_dir: Path) -> str:
    """The lab's front door (its load balancer, else its web server) when a lab is up in
    ``lab_dir``, else where `make run` serves."""
    try:
        ports = json.loads((lab_dir / "lab.json").read_text())["ports"]
    except (OSError, ValueError, KeyError):
        return DEFAULT_TARGET
    for name in ("haproxy", "web1"):
        port = ports.get(name)
        if isinstance(port, int) and _answers(port):
            return f"http://127.0.0.1:{port}"
    return DEFAULT_TARGET


_SPAN = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``30``, ``30s``, ``2m``, ``1h`` or ``1m30s``."""
    spans: Iterator[re.Match[str]] = _SPAN.finditer(text.strip().lower())
    total, end = 0.0, 0
    for span in spans:
        if span.start() != end:
            break
        total, end = total + float(span.group(1)) * _UNIT_SECONDS[span.group(2)], span.end()
    if end == 0 or end != len(text.strip()) or total <= 0:
        raise ValueError(f"{text!r} is not a duration: write 30, 30s, 2m or 1m30s")
    return total
