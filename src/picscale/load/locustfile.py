"""Picscale's user journeys, for Locust: run by `picscale load` in Locust's own process.

The app never imports this module. A simulated member signs up and logs in as a mobile
app does: the session token comes back in the JSON body and goes out as an
``Authorization: Bearer`` header, so no cookie rides along and no CSRF token is needed.
Then it mostly reads (the home feed; photos and profiles drawn from a Zipf distribution,
so that a few celebrities get most of the reads) and now and then writes: an upload,
an edit of one of its own photos, a follow.

Every write a member attempts is appended to ``writes.jsonl`` in the run's directory,
one JSON line each, acknowledged or not: what the drills check the service against.
"""

from __future__ import annotations

import bisect
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import locust.stats
from locust import HttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

SEED_FILE = "seed.json"  # written by picscale.load.runner before Locust starts
WRITES_FILE = "writes.jsonl"
REQUEST_TIMEOUT_SECONDS = 15.0
ZIPF_ALPHA = 1.0
MAX_EDITS_PER_PHOTO = 5  # a version is rendered with every edit before it: keep chains short
FIRST_EDIT_POLLS = 30  # how often a new member looks whether its first photo is ready...
FIRST_EDIT_POLL_SECONDS = 0.5  # ...and how long it waits between looks
EDITS: tuple[list[dict[str, Any]], ...] = (
    [{"op": "sharpen", "sigma": 1.0}],
    [{"op": "blur", "sigma": 1.5}],
    [{"op": "sharpen", "sigma": 0.8}, {"op": "blur", "sigma": 0.6}],
)

# requests are named by route, so that the statistics group them
SIGN_UP = "POST /api/v1/users"
LOG_IN = "POST /api/v1/sessions"
FEED = "GET /api/v1/feed"
PHOTO = "GET /api/v1/photos/{id}"
THUMB = "GET media: a photo's thumbnail"  # from the edge (CDN) when there is one
PROFILE = "GET /api/v1/users/{username}"
GALLERY = "GET /api/v1/users/{username}/photos"
UPLOAD = "POST /api/v1/photos"
EDIT = "POST /api/v1/photos/{id}/edits"
FOLLOW = "PUT /api/v1/users/{username}/follow"


class Zipf:
    """Ranks 0..n-1 drawn with P(k) proportional to 1/(k+1)^alpha; n may grow between
    draws (new uploads join the tail of the popularity ranking)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.cumulative: list[float] = []

    def rank(self, n: int, rng: random.Random) -> int:
        while len(self.cumulative) < n:
            k = len(self.cumulative) + 1
            previous = self.cumulative[-1] if self.cumulative else 0.0
            self.cumulative.append(previous + k**-self.alpha)
        return bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[n - 1], 0, n)


class WritesLog:
    """One JSON line per attempted write, flushed at once: a line written is a line kept,
    whatever happens to this process next."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def record(
        self,
        kind: str,
        outcome: Outcome,
        ident: str | None,
        user: str,
        **extra: str,
    ) -> None:
        entry: dict[str, Any] = {"t": time.time(), "kind": kind, "ok": outcome.ok}
        entry.update(id=ident, user=user, **extra)
        if not outcome.ok:
            entry["error"] = outcome.error
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class World:
    """What the members of this Locust process share."""

    run: str
    password: str
    image: bytes
    celebrities: list[str]  # by popularity, most popular first
    photos: list[str]  # the celebrities' photos by popularity, then uploads during the run
    writes: WritesLog
    members: list[str] = field(default_factory=list)  # signed up during the run
    zipf: Zipf = field(default_factory=lambda: Zipf(ZIPF_ALPHA))

    @classmethod
    def load(cls, directory: Path) -> World:
        seed = json.loads((directory / SEED_FILE).read_text())
        return cls(
            run=seed["run"],
            password=seed["password"],
            image=(directory / seed["image"]).read_bytes(),
            celebrities=list(seed["celebrities"]),
            photos=list(seed["photos"]),
            writes=WritesLog(directory / WRITES_FILE),
        )


_world: World | None = None


def world() -> World:
    if _world is None:
        raise RuntimeError("run by `picscale load`, which passes --picscale-dir to Locust")
    return _world


def add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--picscale-dir",
        default="",
        help="The run's directory: seed.json in, writes.jsonl out",
        include_in_web_ui=False,
    )


def on_init(environment: Environment, **_: Any) -> None:
    global _world
    directory = getattr(environment.parsed_options, "picscale_dir", "")
    if directory:
        _world = World.load(Path(directory))
    # on disk every second rather than every ten: `picscale load` shows progress from them
    locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1


def on_quit(**_: Any) -> None:
    # Locust writes its CSV files once a second and not again when it quits: wait for one
    # more round, so that they hold the final figures. (time.sleep is gevent's here.)
    time.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)
    if _world is not None:
        _world.writes.close()


events.init_command_line_parser.add_listener(add_arguments)  # type: ignore[no-untyped-call]
events.init.add_listener(on_init)  # type: ignore[no-untyped-call]
events.quit.add_listener(on_quit)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Outcome:
    """What came back: ``error`` is the unexpected status ("503") or, when no response
    came at all, the exception's kind ("ConnectionError", "ReadTimeout")."""

    status: int
    body: Any
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class OwnPhoto:
    id: str
    ready: bool = False
    edits: int = 0


class Member(HttpUser):
    """A member of the service using the mobile app."""

    wait_time = between(0.2, 1.0)

    username: str
    signed_up: bool
    token: str | None
    own: list[OwnPhoto]
    rng: random.Random

    def on_start(self) -> None:
        """A new member's first minute: sign up, look at the (empty) feed, look at a
        suggested account and follow it, post a first photo and, once it is rendered, edit
        it. (So every route is used by every member, however short the run.)"""
        self.rng = random.Random()
        self.username = f"m{world().run}_{uuid.uuid4().hex[:12]}"
        self.signed_up = False
        self.token = None
        self.own = []
        if not self.enter():
            return
        self.home_feed()
        suggested = self.popular_user()
        self.view_profile(suggested)
        self.view_gallery(suggested)
        self.follow_user(suggested)
        self.upload()
        for _ in range(FIRST_EDIT_POLLS):
            if self.edit_photo() or not self.own:
                return
            time.sleep(FIRST_EDIT_POLL_SECONDS)  # gevent's sleep: other members go on

    # -- the requests ----------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        name: str,
        expect: int,
        *,
        anonymous: bool = False,
        **kwargs: Any,
    ) -> Outcome:
        """One request; ``anonymous``: without the session (media, which edges share)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token and not anonymous else {}
        with self.client.request(
            method,
            path,
            name=name,
            catch_response=True,
            timeout=REQUEST_TIMEOUT_SECONDS,
            headers=headers,
            **kwargs,
        ) as response:
            if response.error is not None or response.status_code == 0:
                error = type(response.error).__name__
                response.failure(error)
                return Outcome(0, None, error)
            status = response.status_code
            if status != expect:
                if status == 401:
                    self.token = None  # the session is gone: log in again
                response.failure(str(status))
                return Outcome(status, None, str(status))
            if anonymous:  # media: the bytes are the answer
                response.success()
                return Outcome(status, None, None)
            try:
                body = response.json() if response.content else None
            except ValueError:
                response.failure("not JSON")
                return Outcome(status, None, "not JSON")
            response.success()
            return Outcome(status, body, None)

    def enter(self) -> bool:
        """Signed up and holding a session token (a new one if the last stopped working)."""
        writes = world().writes
        credentials = {"username": self.username, "password": world().password}
        if not self.signed_up:
            outcome = self.call("POST", "/api/v1/users", SIGN_UP, 201, json=credentials)
            writes.record("signup", outcome, self.username, self.username)
            # 409: an earlier attempt that got no answer did create the account
            self.signed_up = outcome.ok or outcome.status == 409
            if not self.signed_up:
                return False
            world().members.append(self.username)
        if self.token is None:
            outcome = self.call("POST", "/api/v1/sessions", LOG_IN, 201, json=credentials)
            if outcome.ok:
                self.token = str(outcome.body["token"])
                self.client.cookies.clear()  # a mobile client: the bearer token only
        return self.token is not None

    def popular_photo(self) -> str | None:
        photos = world().photos
        return photos[world().zipf.rank(len(photos), self.rng)] if photos else None

    def popular_user(self) -> str:
        """A celebrity most of the time; members who signed up during the run are the tail."""
        names = world().celebrities + world().members
        name = names[world().zipf.rank(len(names), self.rng)]
        return name if name != self.username else names[0]

    # -- the journeys: reads ---------------------------------------------------------

    @task(25)
    def home_feed(self) -> None:
        if self.enter():
            self.call("GET", "/api/v1/feed", FEED, 200)

    @task(30)
    def photo(self) -> None:
        photo_id = self.popular_photo()
        if photo_id is not None:
            outcome = self.call("GET", f"/api/v1/photos/{photo_id}", PHOTO, 200)
            urls = outcome.body.get("urls") if isinstance(outcome.body, dict) else None
            if urls:  # the app shows the picture: from the URL the API handed out
                self.call("GET", urls["thumb"], THUMB, 200, anonymous=True)

    @task(15)
    def profile(self) -> None:
        self.view_profile(self.popular_user())

    @task(10)
    def gallery(self) -> None:
        self.view_gallery(self.popular_user())

    def view_profile(self, name: str) -> None:
        self.call("GET", f"/api/v1/users/{name}", PROFILE, 200)

    def view_gallery(self, name: str) -> None:
        self.call("GET", f"/api/v1/users/{name}/photos", GALLERY, 200)

    # -- the journeys: writes --------------------------------------------------------

    @task(8)
    def upload(self) -> None:
        if not self.enter():
            return
        outcome = self.call(
            "POST",
            "/api/v1/photos",
            UPLOAD,
            201,
            files={"file": ("load.jpg", world().image, "image/jpeg")},
            data={"caption": f"load test {world().run}"},
        )
        photo_id = str(outcome.body["id"]) if outcome.ok else None
        world().writes.record("upload", outcome, photo_id, self.username)
        if photo_id is not None:
            self.own.append(OwnPhoto(photo_id))
            world().photos.append(photo_id)

    @task(6)
    def edit(self) -> None:
        self.edit_photo()

    def edit_photo(self) -> bool:
        """Edit one of its photos (the least edited); False if none is ready for it."""
        candidates = [p for p in self.own if p.edits < MAX_EDITS_PER_PHOTO]
        if not candidates or not self.enter():
            return False
        photo = min(candidates, key=lambda p: p.edits)
        if not photo.ready:  # edits start once the upload is rendered
            seen = self.call("GET", f"/api/v1/photos/{photo.id}", PHOTO, 200)
            if not seen.ok or seen.body["status"] != "ready":
                return False
            photo.ready = True
        outcome = self.call(
            "POST",
            f"/api/v1/photos/{photo.id}/edits",
            EDIT,
            202,
            json={"operations": self.rng.choice(EDITS)},
        )
        job_id = str(outcome.body["id"]) if outcome.ok else None
        world().writes.record("edit", outcome, job_id, self.username, photo=photo.id)
        if outcome.ok:
            photo.edits += 1
        return True

    @task(6)
    def follow(self) -> None:
        self.follow_user(self.popular_user())

    def follow_user(self, name: str) -> None:
        if not self.enter():
            return
        outcome = self.call("PUT", f"/api/v1/users/{name}/follow", FOLLOW, 204)
        world().writes.record("follow", outcome, name, self.username)
