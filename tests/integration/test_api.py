"""The JSON API end to end, against a real `picscale serve` (granian + worker)."""

from __future__ import annotations

import re
import uuid

import httpx

from tests.support.api import PASSWORD, job_events, new_user, upload, wait_job, wait_ready
from tests.support.images import gps_exif, image_bytes, size_of
from tests.support.picscale_server import Server
from tests.support.waiting import wait_until


def test_sign_up_log_in_me_and_log_out(server: Server) -> None:
    client = server.client()
    name = f"alice_{uuid.uuid4().hex[:8]}"
    r = client.post("/api/v1/users", json={"username": name, "password": PASSWORD})
    assert r.status_code == 201
    user = r.json()
    assert user["username"] == name and isinstance(user["id"], str) and user["id"].isdigit()
    assert "password" not in r.text

    again = client.post("/api/v1/users", json={"username": name, "password": PASSWORD})
    assert again.status_code == 409 and "taken" in again.json()["detail"]

    assert client.get("/api/v1/me").status_code == 401
    login = client.post("/api/v1/sessions", json={"username": name, "password": PASSWORD})
    assert login.status_code == 201
    first_cookie = client.cookies.get("picscale_session")
    assert first_cookie and login.json()["token"] == first_cookie
    assert "httponly" in login.headers["set-cookie"].lower()
    assert client.get("/api/v1/me").json()["id"] == user["id"]

    # logging in again rotates the session id; the old one stops working
    csrf = client.cookies.get("picscale_csrf")
    relog = client.post(
        "/api/v1/sessions",
        json={"username": name, "password": PASSWORD},
        headers={"X-CSRF-Token": csrf},
    )
    assert relog.status_code == 201
    assert client.cookies.get("picscale_session") != first_cookie
    stale = httpx.get(server.url + "/api/v1/me", cookies={"picscale_session": first_cookie})
    assert stale.status_code == 401

    # a cookie-authenticated write without the CSRF token is refused
    no_csrf = client.delete("/api/v1/sessions")
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    out = client.delete(
        "/api/v1/sessions", headers={"X-CSRF-Token": client.cookies.get("picscale_csrf")}
    )
    assert out.status_code == 204
    assert client.get("/api/v1/me").status_code == 401


def test_bearer_token_and_wrong_password(server: Server) -> None:
    client, user = new_user(server)
    assert client.get("/api/v1/me").json()["username"] == user["username"]
    bad = server.client().post(
        "/api/v1/sessions", json={"username": user["username"], "password": "wrong password"}
    )
    assert bad.status_code == 401
    assert bad.json() == {"status_code": 401, "detail": "wrong username or password"}


def test_failed_logins_are_rate_limited_per_account(server: Server) -> None:
    _, user = new_user(server)
    anon = server.client()
    body = {"username": user["username"], "password": "not the password"}
    statuses = [anon.post("/api/v1/sessions", json=body).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    limited = anon.post("/api/v1/sessions", json=body)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert "try again" in limited.json()["detail"]
    # even the right password waits until the window passes
    right = anon.post("/api/v1/sessions", json={**body, "password": PASSWORD})
    assert right.status_code == 429


def test_upload_processing_then_ready_with_variants(server: Server) -> None:
    client, user = new_user(server)
    data = image_bytes(2000, 1500, exif=gps_exif())
    photo = upload(client, data, caption="sunset")
    assert photo["status"] == "processing" and photo["urls"] is None
    assert photo["owner"] == {"id": user["id"], "username": user["username"]}
    assert photo["caption"] == "sunset" and photo["width"] == 2000

    ready = wait_ready(client, photo["id"])
    assert ready["version"] == 1
    sizes = {}
    for variant, url in ready["urls"].items():
        r = httpx.get(server.url + url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert "immutable" in r.headers["cache-control"]
        assert b"PicscaleTestCamera" not in r.content and b"Exif" not in r.content[:2048]
        sizes[variant] = size_of(r.content)
    assert sizes == {"original": (2000, 1500), "large": (1080, 810), "thumb": (320, 240)}

    profile = client.get(f"/api/v1/users/{user['username']}").json()
    assert profile["photo_count"] == 1
    listing = client.get(f"/api/v1/users/{user['username']}/photos").json()
    assert [p["id"] for p in listing["items"]] == [photo["id"]]


def test_exif_orientation_is_applied(server: Server) -> None:
    client, _ = new_user(server)
    photo = upload(client, image_bytes(400, 200, exif=gps_exif(orientation=6)))
    assert (photo["width"], photo["height"]) == (200, 400)
    ready = wait_ready(client, photo["id"])
    original = httpx.get(server.url + ready["urls"]["original"]).content
    assert size_of(original) == (200, 400)


def test_edit_makes_a_new_version_and_keeps_the_old(server: Server) -> None:
    client, _ = new_user(server)
    photo = wait_ready(client, upload(client, image_bytes(800, 600))["id"])
    v1_url = photo["urls"]["original"]
    ops = [
        {"op": "crop", "x": 100, "y": 50, "width": 400, "height": 300},
        {"op": "sharpen", "sigma": 1.0},
        {"op": "blur", "sigma": 2.0},
    ]
    r = client.post(f"/api/v1/photos/{photo['id']}/edits", json={"operations": ops})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running", "done") and job["photo_id"] == photo["id"]
    done = wait_job(client, job["id"])
    assert done["status"] == "done" and done["version"] == 2
    edited = client.get(f"/api/v1/photos/{photo['id']}").json()
    assert edited["version"] == 2 and (edited["width"], edited["height"]) == (400, 300)
    assert size_of(httpx.get(server.url + edited["urls"]["original"]).content) == (400, 300)
    # the earlier version's URL keeps working
    assert size_of(httpx.get(server.url + v1_url).content) == (800, 600)

    # a second edit starts from the current version's size
    r = client.post(
        f"/api/v1/photos/{photo['id']}/edits",
        json={"operations": [{"op": "crop", "x": 0, "y": 0, "width": 200, "height": 100}]},
    )
    assert wait_job(client, r.json()["id"])["version"] == 3
    assert client.get(f"/api/v1/photos/{photo['id']}").json()["width"] == 200


def test_follow_profile_counts_and_feed(server: Server) -> None:
    alice, a = new_user(server, "alice")
    bob, b = new_user(server, "bob")
    ids = [wait_ready(bob, upload(bob, image_bytes(320, 240))["id"])["id"] for _ in range(3)]

    assert alice.put(f"/api/v1/users/{b['username']}/follow").status_code == 204
    assert alice.put(f"/api/v1/users/{b['username']}/follow").status_code == 204  # idempotent
    assert alice.put(f"/api/v1/users/{a['username']}/follow").status_code == 422
    # the follower's own count at once (their shard); the followee's by a job, within seconds
    assert alice.get(f"/api/v1/users/{a['username']}").json()["following_count"] == 1

    def bob_counts() -> tuple[int, int]:
        profile = alice.get(f"/api/v1/users/{b['username']}").json()
        return profile["follower_count"], profile["photo_count"]

    wait_until(lambda: bob_counts() == (1, 3), what="bob's follower count to converge")

    first = alice.get("/api/v1/feed", params={"limit": 2}).json()
    assert [p["id"] for p in first["items"]] == ids[::-1][:2]
    second = alice.get("/api/v1/feed", params={"limit": 2, "cursor": first["next_cursor"]})
    assert [p["id"] for p in second.json()["items"]] == ids[:1]
    assert second.json()["next_cursor"] is None

    assert alice.delete(f"/api/v1/users/{b['username']}/follow").status_code == 204
    assert alice.get("/api/v1/feed").json()["items"] == []
    wait_until(lambda: bob_counts() == (0, 3), what="bob's follower count to converge")
    assert alice.get("/api/v1/users/nobody_here_at_all").status_code == 404


def test_delete_photo_removes_it_and_its_media(server: Server) -> None:
    owner, user = new_user(server)
    other, _ = new_user(server)
    photo = wait_ready(owner, upload(owner, image_bytes(320, 240))["id"])
    media = server.url + photo["urls"]["thumb"]
    assert httpx.get(media).status_code == 200

    forbidden = other.delete(f"/api/v1/photos/{photo['id']}")
    assert forbidden.status_code == 403 and "someone else" in forbidden.json()["detail"]
    edit = other.post(
        f"/api/v1/photos/{photo['id']}/edits", json={"operations": [{"op": "blur", "sigma": 1}]}
    )
    assert edit.status_code == 403

    assert owner.delete(f"/api/v1/photos/{photo['id']}").status_code == 204
    assert owner.get(f"/api/v1/photos/{photo['id']}").status_code == 404
    assert owner.delete(f"/api/v1/photos/{photo['id']}").status_code == 404
    wait_until(lambda: httpx.get(media).status_code == 404, what="media to be removed")
    assert not list((server.data_dir / "media" / "photos").glob(f"{photo['id']}*"))
    assert owner.get(f"/api/v1/users/{user['username']}").json()["photo_count"] == 0


def test_ids_are_strings_carrying_a_shard(server: Server) -> None:
    client, user = new_user(server)
    photo = upload(client, image_bytes(64, 64))
    from picscale.ids import shard_of

    assert shard_of(int(photo["id"])) == shard_of(int(user["id"]))
    assert int(photo["id"]) > 2**32  # would lose digits as a JavaScript number beyond 2**53


def test_health_metrics_and_schema(server: Server) -> None:
    c = server.client()
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["status"] == "ok" and set(ready["checks"]) == {"database", "queue", "storage"}
    rid = c.get("/api/v1/users/nobody_x", headers={"X-Request-ID": "trace-123"})
    assert rid.headers["x-request-id"] == "trace-123"
    route = r'route="/api/v1/users/\{username\}",status="404"'
    counted = r"picscale_http_requests_total\{method=\"GET\"," + route

    def request_counted() -> str | None:
        # a request is counted once its response has gone out: the next may come first
        text = c.get("/metrics").text
        return text if re.search(counted, text) else None

    metrics = wait_until(request_counted, timeout=10, what="the 404 in the metrics")
    assert "picscale_http_request_duration_seconds_bucket" in metrics
    assert re.search(
        r'picscale_db_queries_total\{host="[^"]+",intent="read",role="primary"\}', metrics
    )
    assert "picscale_cache_events_total" in metrics
    assert re.search(r'picscale_jobs_total\{kind="render_version",outcome="done"\}', metrics)
    assert "picscale_queue_depth" in metrics
    schema = c.get("/schema/openapi.json").json()
    assert "/api/v1/photos/{photo_id}" in schema["paths"]


def test_the_chain_of_edits_on_one_photo_is_bounded(server: Server) -> None:
    client, _ = new_user(server)
    photo = wait_ready(client, upload(client, image_bytes(64, 64))["id"])
    ten = {"operations": [{"op": "blur", "sigma": 0.5}] * 10}
    for version in range(2, 7):  # 5 edits of 10 operations: 50, the limit
        r = client.post(f"/api/v1/photos/{photo['id']}/edits", json=ten)
        assert r.status_code == 202, r.text
        assert wait_job(client, r.json()["id"])["version"] == version
    refused = client.post(f"/api/v1/photos/{photo['id']}/edits", json=ten)
    assert refused.status_code == 422
    assert "upload it as a new photo" in refused.json()["detail"]
    assert client.get(f"/api/v1/photos/{photo['id']}").json()["version"] == 6


def test_a_jobs_progress_streams_live_until_it_ends(server: Server) -> None:
    client, _ = new_user(server)
    photo = wait_ready(client, upload(client, image_bytes(400, 300))["id"])
    job = client.post(
        f"/api/v1/photos/{photo['id']}/edits",
        json={"operations": [{"op": "blur", "sigma": 3}]},
    ).json()
    events = job_events(client, job["id"])  # returns only because the stream ended
    assert events[-1]["status"] == "done" and events[-1]["version"] == 2
    order = ["queued", "running", "done"]
    seen = [order.index(e["status"]) for e in events]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # no repeats, no going back
    assert all(e["id"] == job["id"] for e in events)
    # a finished job: one event, then the end
    assert [e["status"] for e in job_events(client, job["id"])] == ["done"]

    other, _ = new_user(server)
    assert other.get(f"/api/v1/jobs/{job['id']}/events").status_code == 404
    anonymous = server.client().get(f"/api/v1/jobs/{job['id']}/events")
    assert anonymous.status_code == 401 and "log in" in anonymous.json()["detail"]


def test_media_is_cdn_correct_revalidates_and_serves_ranges(server: Server) -> None:
    client, _ = new_user(server)
    photo = wait_ready(client, upload(client, image_bytes(300, 200))["id"])
    url = server.url + photo["urls"]["large"]
    full = httpx.get(url)
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    body, etag = full.content, full.headers["etag"]
    assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert full.headers["x-content-type-options"] == "nosniff"
    assert full.headers["accept-ranges"] == "bytes"
    me = client.get("/api/v1/me").json()
    tags = {f"photo-{photo['id']}", f"user-{me['id']}"}  # what an edge purges by
    assert set(full.headers["xkey"].split()) == tags
    assert set(full.headers["surrogate-key"].split()) == tags

    for sent in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        again = httpx.get(url, headers={"If-None-Match": sent})
        assert again.status_code == 304 and again.content == b"", sent
        assert again.headers["etag"] == etag
    assert httpx.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200

    size = len(body)
    cases = {"bytes=0-9": (0, 9), "bytes=10-": (10, size - 1), "bytes=-5": (size - 5, size - 1)}
    for sent, (first, last) in cases.items():
        part = httpx.get(url, headers={"Range": sent})
        assert part.status_code == 206, sent
        assert part.content == body[first : last + 1], sent
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
    beyond = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    # several ranges, another unit, or an If-Range that no longer matches: the whole file
    for headers in (
        {"Range": "bytes=0-1,5-6"},
        {"Range": "items=0-1"},
        {"Range": "bytes=0-9", "If-Range": '"old"'},
    ):
        whole = httpx.get(url, headers=headers)
        assert whole.status_code == 200 and whole.content == body, headers
    assert httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206


def test_head_answers_like_get_without_the_body(server: Server) -> None:
    client, _ = new_user(server)
    photo = wait_ready(client, upload(client, image_bytes(120, 80))["id"])
    for path in (photo["urls"]["large"], f"/api/v1/photos/{photo['id']}", "/healthz"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        for name in ("content-type", "content-length", "etag", "cache-control"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
    page = client.head("/")
    assert page.status_code == 200 and page.content == b""
    assert page.headers["content-type"].startswith("text/html")
    # a route without GET still says which methods it has
    head = client.head("/api/v1/users")
    assert head.status_code == 405 and "POST" in head.headers["allow"]
