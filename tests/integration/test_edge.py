"""Media and static files through a real Varnish edge (the VCL Picscale ships): miss then
hit, revalidation, purge on delete, stale content while the origin is down, and origin
URLs while the edge is down."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.api import new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import Server, start_server
from tests.support.ports import free_port
from tests.support.varnish_server import VarnishServer, start_varnish
from tests.support.waiting import wait_until

IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass
class Stack:
    """An origin (`picscale serve`) and an edge in front of it, each restartable on its
    own port."""

    data_dir: Path
    origin_port: int = field(default_factory=free_port)
    edge_port: int = field(default_factory=free_port)
    origin: Server | None = None
    edge: VarnishServer | None = None

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    def start_origin(self) -> Server:
        self.origin = start_server(
            self.data_dir,
            port=self.origin_port,
            cdn_url=self.edge_url,
            cdn_health_seconds=0.3,
            cdn_shared_seconds=1,
            job_poll_seconds=0.2,
        )
        return self.origin

    def start_edge(self) -> None:
        if self.edge is None:
            self.edge = start_varnish(self.origin_port, port=self.edge_port)
        else:
            self.edge.start()

    def ensure_up(self) -> None:
        """Both running again, whatever a test before stopped."""
        if self.origin is None or self.origin.process.proc.poll() is not None:
            if self.origin is not None:
                self.origin.close()
            self.start_origin()
        if self.edge is None or self.edge.proc is None or self.edge.proc.poll() is not None:
            self.start_edge()
        edge = self.edge
        assert edge is not None

        # the edge's probe sees the origin (again) before a test asks through it: a request
        # the edge passes (a cookie) is answered only while it takes the origin for healthy
        def origin_healthy() -> bool:
            passed = httpx.get(edge.url + "/healthz", headers={"Cookie": "probe=1"}, timeout=2)
            return passed.status_code == 200

        wait_until(origin_healthy, timeout=30, what="the edge to see the origin up")

    def close(self) -> None:
        if self.edge is not None:
            self.edge.close()
        if self.origin is not None:
            self.origin.close()


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("edge"))
    try:
        s.start_origin()
        s.start_edge()
        yield s
    finally:
        s.close()


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """The module's origin and edge, both up: each test works as users of its own (a test
    that stops one has it started again for the next)."""
    shared_stack.ensure_up()
    return shared_stack


def edge_urls(client: httpx.Client, photo_id: str, edge: str) -> dict[str, str]:
    """The photo's URLs once the app hands out edge URLs (after its first health check)."""

    def on_edge() -> dict[str, str] | None:
        urls: dict[str, str] = client.get(f"/api/v1/photos/{photo_id}").json()["urls"]
        return urls if urls["large"].startswith(edge + "/media/") else None

    return wait_until(on_edge, timeout=30, what="media URLs on the edge")


def ready_photo(stack: Stack) -> tuple[httpx.Client, dict[str, str], dict[str, str]]:
    assert stack.origin is not None
    client, user = new_user(stack.origin)
    photo = wait_ready(client, upload(client, image_bytes(800, 600))["id"])
    return client, user, {"id": photo["id"], **edge_urls(client, photo["id"], stack.edge_url)}


def test_media_and_static_miss_then_hit_revalidate_and_originals_pass(stack: Stack) -> None:
    client, _, photo = ready_photo(stack)
    edge = httpx.Client(timeout=10)
    for variant in ("large", "thumb"):
        first = edge.get(photo[variant])
        second = edge.get(photo[variant])
        assert first.status_code == second.status_code == 200
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.content == second.content and first.content[:2] == b"\xff\xd8"
        for r in (first, second):
            assert r.headers["cache-control"] == IMMUTABLE
            assert r.headers["content-type"] == "image/jpeg"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["etag"].startswith('"')
            assert "xkey" not in r.headers and "surrogate-key" not in r.headers
        revalidated = edge.get(photo[variant], headers={"If-None-Match": first.headers["etag"]})
        assert revalidated.status_code == 304 and revalidated.content == b""
        assert revalidated.headers["x-cache"] == "HIT"
        ranged = edge.get(photo[variant], headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206 and ranged.content == first.content[:10]
    # originals are not kept at the edge: every request goes to the origin, however the
    # URL is spelled
    originals = [edge.get(photo["original"]) for _ in range(2)]
    assert [r.headers["x-cache"] for r in originals] == ["PASS", "PASS"]
    assert all(r.status_code == 200 for r in originals)
    spelled = photo["original"].replace("/original.", "/%6Friginal.")
    assert [edge.get(spelled).headers["x-cache"] for _ in range(2)] == ["PASS", "PASS"]
    # a client cannot make the edge say what it did not do
    spoofed = edge.get(photo["thumb"], headers={"x-edge-pass": "1", "x-edge-stale": "1"})
    assert spoofed.headers["x-cache"] == "HIT"
    # the origin's metrics and readiness stay behind the edge
    assert edge.get(stack.edge_url + "/metrics").status_code == 404
    assert edge.get(stack.edge_url + "/readyz").status_code == 404

    # pages name static files by content hash, on the edge; the edge keeps them
    page = client.get("/")
    found = re.findall(r'(?:src|href)="([^"]+/static/[^"]+)"', page.text)
    assert len(found) == 3 and all(u.startswith(stack.edge_url + "/static/") for u in found)
    # and the page's Content-Security-Policy lets the browser load them from there
    policy = page.headers["content-security-policy"]
    assert f"script-src 'self' {stack.edge_url.rstrip('/')}" in policy, policy
    for url in found:
        assert re.search(r"\.[0-9a-f]{12}\.(js|css)$", url), url
        first, second = edge.get(url), edge.get(url)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.headers["cache-control"] == IMMUTABLE
        assert first.headers["content-type"].startswith(("text/javascript", "text/css"))
        assert first.headers["x-content-type-options"] == "nosniff"
        origin_copy = httpx.get(stack.origin_url + url.removeprefix(stack.edge_url))
        assert origin_copy.headers["xkey"] == "static"  # the origin tags, the edge strips
        assert edge.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    # the plain name still answers, briefly cached; unknown names are 404
    plain = httpx.get(stack.origin_url + "/static/htmx-2.0.11.min.js")
    assert plain.status_code == 200 and plain.headers["cache-control"] == "public, max-age=300"
    missing = httpx.get(stack.origin_url + "/static/nope.js")
    assert missing.status_code == 404 and missing.json()["status_code"] == 404
    edge.close()


def test_reads_say_who_may_keep_them(stack: Stack) -> None:
    client, user, photo = ready_photo(stack)
    assert stack.origin is not None
    anonymous = stack.origin.client()
    name = user["username"]
    for path in (f"/api/v1/users/{name}", f"/api/v1/users/{name}/photos", f"/u/{name}"):
        shared = anonymous.get(path)
        assert shared.status_code == 200
        cache_control = shared.headers["cache-control"]
        assert cache_control.startswith("public, max-age=0, s-maxage=1,")
        assert "stale-while-revalidate=" in cache_control and "stale-if-error=" in cache_control
        assert f"profile-{user['id']}" in shared.headers["xkey"]
        assert "set-cookie" not in shared.headers  # nothing personal in a shared copy
        mine = client.get(path)
        assert mine.headers["cache-control"] == "private, no-store"
    # htmx fragments share the URLs of whole pages: the edge never keeps them
    assert "HX-Request" in anonymous.get(f"/u/{name}").headers["vary"]
    edge = httpx.Client(timeout=10)
    page = f"{stack.edge_url}/u/{name}"
    edge.get(page)
    assert edge.get(page).headers["x-cache"] == "HIT"
    fragment = edge.get(page, headers={"HX-Request": "true"})
    assert fragment.headers["x-cache"] == "PASS" and "<html" not in fragment.text
    assert "<html" in edge.get(page).text
    edge.close()
    # private by default: the feed, the signed-in user, sessions
    assert client.get("/api/v1/me").headers["cache-control"] == "private, no-store"
    assert client.get("/api/v1/feed").headers["cache-control"] == "private, no-store"
    photo_json = anonymous.get(f"/api/v1/photos/{photo['id']}")
    assert photo_json.headers["xkey"] == f"photo-{photo['id']} profile-{user['id']}"


def test_delete_purges_the_edge_before_the_api_answers(stack: Stack) -> None:
    client, user, photo = ready_photo(stack)
    edge = httpx.Client(timeout=10)
    profile = f"{stack.edge_url}/api/v1/users/{user['username']}"
    for url in (photo["large"], photo["thumb"], profile):
        edge.get(url)
        assert edge.get(url).headers["x-cache"] == "HIT"
    assert edge.get(profile).json()["photo_count"] == 1
    assert client.delete(f"/api/v1/photos/{photo['id']}").status_code == 204
    # no waiting: the purge happened before the 204
    for variant in ("large", "thumb"):
        gone = edge.get(photo[variant])
        assert gone.status_code == 404 and gone.headers["x-cache"] != "HIT"
        assert gone.json()["status_code"] == 404
    after = edge.get(profile)
    assert after.headers["x-cache"] == "MISS" and after.json()["photo_count"] == 0
    # the purge endpoint is the edge's, and only for the ACL
    assert edge.request("PURGE", stack.edge_url + "/").status_code == 400  # no keys
    edge.close()


def test_a_purge_of_many_keys_goes_in_batches(stack: Stack) -> None:
    """An account with thousands of follows still purges: keys go 100 to a request."""
    from picscale.observability.metrics import Metrics
    from picscale.tiers.edge.http import HttpEdge

    async def purge() -> None:
        edge = HttpEdge(stack.edge_url, stack.edge_url, metrics=Metrics(), interval=1)
        try:
            await edge.purge([f"profile-{n:019d}" for n in range(1000)])  # ~28 KB of keys
        finally:
            await edge.close()

    asyncio.run(purge())


def test_purge_is_refused_outside_the_acl(stack: Stack) -> None:
    other = start_varnish(stack.origin_port, purgers=("192.0.2.1",))
    try:
        r = httpx.request("PURGE", other.url + "/", headers={"xkey-purge": "photo-1"})
        assert r.status_code == 403
        allowed = httpx.request("PURGE", stack.edge_url + "/", headers={"xkey-purge": "photo-1"})
        assert allowed.status_code == 200
    finally:
        other.close()


def test_the_edge_serves_stale_copies_while_the_origin_is_down(stack: Stack) -> None:
    _, user, photo = ready_photo(stack)
    edge = httpx.Client(timeout=10)
    profile = f"{stack.edge_url}/api/v1/users/{user['username']}"
    fresh = edge.get(profile)
    assert fresh.status_code == 200
    large = edge.get(photo["large"])
    assert stack.origin is not None
    stack.origin.close()  # the origin is gone; its copies at the edge expire (s-maxage=1)

    def stale() -> httpx.Response | None:
        r = edge.get(profile)
        return r if r.headers.get("x-cache") == "HIT-STALE" else None

    served = wait_until(stale, timeout=30, what="a stale copy of the profile")
    assert served.status_code == 200 and served.json() == fresh.json()
    again = edge.get(photo["large"])
    assert again.status_code == 200 and again.content == large.content
    assert again.headers["x-cache"] == "HIT"
    # something the edge never kept is a clear error, not a hang
    assert edge.get(stack.edge_url + "/api/v1/users/nobody_here").status_code == 503
    edge.close()


def test_origin_urls_while_the_edge_is_down_and_purges_retried_by_a_job(stack: Stack) -> None:
    client, _, photo = ready_photo(stack)
    assert stack.origin is not None and stack.edge is not None
    # the origin may have switched before (the module shares it): count from here
    to_origin, log_seen = switches(stack, "origin"), len(stack.origin.process.log())
    stack.edge.stop()

    def on_origin() -> dict[str, str] | None:
        urls: dict[str, str] = client.get(f"/api/v1/photos/{photo['id']}").json()["urls"]
        return urls if urls["large"].startswith("/media/") else None

    urls = wait_until(on_origin, timeout=30, what="media URLs on the origin")
    assert client.get(stack.origin_url + urls["large"]).status_code == 200
    page = client.get("/").text
    assert '"/static/htmx-2.0.11.min.' in page  # static files from the origin too
    metrics = httpx.get(stack.origin_url + "/metrics").text
    assert switches(stack, "origin") >= to_origin + 1
    assert re.search(r"^picscale_edge_up 0", metrics, re.MULTILINE)
    assert "edge_down" in stack.origin.process.log()[log_seen:]

    # a delete while the edge is down: the API answers; a job purges once the edge is back
    db = stack.data_dir / "picscale.db"
    with sqlite3.connect(db) as conn:
        (jobs_before,) = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()
    assert client.delete(f"/api/v1/photos/{photo['id']}").status_code == 204

    def purge_job() -> tuple[str, int] | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT status, attempts, max_attempts FROM jobs"
                " WHERE kind = 'purge_edge' AND id > ?",
                (jobs_before,),
            ).fetchone()
        if row is None:
            return None
        assert row[2] == 100  # retried for hours, not for the default 5 attempts
        return (row[0], row[1])

    wait_until(
        lambda: (purge_job() or ("", 0))[1] >= 1, timeout=30, what="the purge job to be tried"
    )
    to_edge = switches(stack, "edge")
    stack.start_edge()
    wait_until(lambda: (purge_job() or ("",))[0] == "done", timeout=60, what="the purge job")
    wait_until(lambda: edge_base_is_back(client), timeout=30, what="URLs back on the edge")
    assert switches(stack, "edge") >= to_edge + 1


def switches(stack: Stack, to: str) -> float:
    """picscale_edge_switches_total{to=...} on the origin (0 before the first)."""
    metrics = httpx.get(stack.origin_url + "/metrics").text
    found = re.search(
        rf'^picscale_edge_switches_total\{{to="{to}"\}} ([0-9.e+]+)$', metrics, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def edge_base_is_back(client: httpx.Client) -> bool:
    return "127.0.0.1" in client.get("/").text.split("/static/htmx")[0].rsplit('"', 1)[-1]


def test_deleting_an_account_removes_everything_and_purges_its_keys(stack: Stack) -> None:
    client, user, photo = ready_photo(stack)
    assert stack.origin is not None
    fan, fan_user = new_user(stack.origin, "fan")
    assert fan.put(f"/api/v1/users/{user['username']}/follow").status_code == 204
    assert fan.get("/api/v1/me").status_code == 200
    assert [p["id"] for p in fan.get("/api/v1/feed").json()["items"]] == [photo["id"]]
    edge = httpx.Client(timeout=10)
    for variant in ("large", "thumb"):
        edge.get(photo[variant])
        assert edge.get(photo[variant]).headers["x-cache"] == "HIT"
    media = stack.data_dir / "media" / "photos" / photo["id"]
    assert media.is_dir()

    assert client.delete("/api/v1/me").status_code == 204
    for variant in ("large", "thumb"):
        assert edge.get(photo[variant]).status_code == 404  # purged before the 204
    assert client.get("/api/v1/me").status_code == 401  # its sessions went with it
    assert fan.get(f"/api/v1/users/{user['username']}").status_code == 404
    assert fan.get(f"/api/v1/photos/{photo['id']}").status_code == 404
    assert fan.get("/api/v1/feed").json()["items"] == []
    # the fan's side of the follow goes by a job (their shard may be another)
    wait_until(
        lambda: fan.get(f"/api/v1/users/{fan_user['username']}").json()["following_count"] == 0,
        what="the fan's following count",
    )
    assert not media.exists()
    # the name is free again
    again = stack.origin.client().post(
        "/api/v1/users", json={"username": user["username"], "password": "another password 1"}
    )
    assert again.status_code == 201
    edge.close()
