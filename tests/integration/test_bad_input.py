"""Bad input gets a clear 4xx JSON error; nothing stored is lost; the server stays up."""

from __future__ import annotations

import functools
import io

import httpx
import pytest
import pyvips

from tests.support.api import new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import Server


@pytest.fixture(scope="module")
def owner(server: Server) -> tuple[httpx.Client, dict]:
    client, user = new_user(server, "owner")
    photo = wait_ready(client, upload(client, image_bytes(800, 600))["id"])
    user["photo"] = photo
    return client, user


def assert_error(r: httpx.Response, status: int, words: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status_code"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert words.lower() in body["detail"].lower(), body["detail"]


def post_file(client: httpx.Client, data: bytes, name: str = "x.jpg") -> httpx.Response:
    return client.post("/api/v1/photos", files={"file": (name, data, "image/jpeg")})


def truncated_jpeg() -> bytes:
    data = image_bytes(1200, 900)
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    data = bytearray(image_bytes(600, 400))
    data[400:2000] = b"\x00" * 1600  # tables and scan data wiped, header kept
    return bytes(data)


@functools.cache  # the same bytes for each server: made once
def bomb_png() -> bytes:
    # 20000 x 20000 = 400 megapixels, a few hundred kilobytes on disk
    data: bytes = pyvips.Image.black(20000, 20000).pngsave_buffer(compression=9)
    return data


UPLOADS = {
    "truncated jpeg": (truncated_jpeg, 422, "truncated"),
    "corrupt jpeg": (corrupt_jpeg, 422, "corrupt"),
    "text renamed .jpg": (lambda: b"hello, I am not an image\n" * 20, 415, "JPEG, PNG or WebP"),
    "html posing as image": (
        lambda: b"<!doctype html><html><script>alert(1)</script></html>",
        415,
        "not a JPEG",
    ),
    "svg posing as image": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        415,
        "not a JPEG",
    ),
    "gif": (lambda: b"GIF89a" + b"\x00" * 64, 415, "not a JPEG"),
    "zero bytes": (lambda: b"", 422, "empty"),
    "decompression bomb": (bomb_png, 413, "megapixels"),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_bad_uploads_are_refused(server: Server, owner: tuple, case: str) -> None:
    client, user = owner
    make, status, words = UPLOADS[case]
    assert_error(post_file(client, make()), status, words)
    # nothing half-stored: the profile still counts one photo
    assert client.get(f"/api/v1/users/{user['username']}").json()["photo_count"] == 1


def test_upload_over_the_size_limit(server: Server, owner: tuple) -> None:
    client, _ = owner
    too_big = b"\xff\xd8\xff" + b"\x00" * (21 * 1024 * 1024)
    assert_error(post_file(client, too_big), 413)


def test_upload_without_a_file_or_malformed_multipart(server: Server, owner: tuple) -> None:
    client, _ = owner
    no_file = client.post("/api/v1/photos", files={"caption": (None, "no file")})
    assert_error(no_file, 422, "file")
    assert_error(client.post("/api/v1/photos", data={"caption": "x"}), 400, "multipart")
    broken = client.post(
        "/api/v1/photos",
        content=b'--XYZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
        headers={"Content-Type": "multipart/form-data; boundary=XYZ"},
    )
    assert 400 <= broken.status_code < 500
    assert broken.json()["status_code"] == broken.status_code
    no_boundary = client.post(
        "/api/v1/photos", content=b"junk", headers={"Content-Type": "multipart/form-data"}
    )
    assert 400 <= no_boundary.status_code < 500


def test_anonymous_upload_needs_login(server: Server) -> None:
    assert_error(post_file(server.client(), image_bytes(64, 64)), 401, "log in")


EDITS = {
    "crop outside": ([{"op": "crop", "x": 700, "y": 0, "width": 200, "height": 100}], "x + width"),
    "crop outside after crop": (
        [
            {"op": "crop", "x": 0, "y": 0, "width": 100, "height": 100},
            {"op": "crop", "x": 50, "y": 50, "width": 60, "height": 10},
        ],
        "operation 2",
    ),
    "negative crop": ([{"op": "crop", "x": -1, "y": 0, "width": 10, "height": 10}], "x"),
    "negative sigma": ([{"op": "blur", "sigma": -1}], "sigma"),
    "absurd sigma": ([{"op": "sharpen", "sigma": 1e9}], "sigma"),
    "too many operations": ([{"op": "blur", "sigma": 1}] * 11, "at most 10"),
    "unknown op": ([{"op": "rotate", "degrees": 90}], "rotate"),
    "empty": ([], ""),
    "wrong type": ([{"op": "blur", "sigma": "lots"}], "sigma"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_bad_edits_are_refused(server: Server, owner: tuple, case: str) -> None:
    client, user = owner
    operations, words = EDITS[case]
    r = client.post(f"/api/v1/photos/{user['photo']['id']}/edits", json={"operations": operations})
    assert_error(r, 422, words)
    assert client.get(f"/api/v1/photos/{user['photo']['id']}").json()["version"] == 1


def test_edit_body_not_json_or_wrong_shape(server: Server, owner: tuple) -> None:
    client, user = owner
    url = f"/api/v1/photos/{user['photo']['id']}/edits"
    r = client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    assert_error(client.post(url, json={"ops": []}), 422)
    assert_error(client.post(url, json=[1, 2, 3]), 422)


def test_oversized_json_body(server: Server, owner: tuple) -> None:
    client, user = owner
    huge = {"operations": [{"op": "blur", "sigma": 1}], "pad": "x" * 200_000}
    assert_error(client.post(f"/api/v1/photos/{user['photo']['id']}/edits", json=huge), 413)
    assert_error(
        client.post("/api/v1/users", json={"username": "a" * 100_000, "password": "p"}), 413
    )


def test_someone_elses_photo(server: Server, owner: tuple) -> None:
    _, user = owner
    intruder, _ = new_user(server, "intruder")
    photo_id = user["photo"]["id"]
    assert_error(intruder.delete(f"/api/v1/photos/{photo_id}"), 403, "someone else")
    r = intruder.post(
        f"/api/v1/photos/{photo_id}/edits", json={"operations": [{"op": "blur", "sigma": 1}]}
    )
    assert_error(r, 403)
    assert intruder.get(f"/api/v1/photos/{photo_id}").json()["status"] == "ready"


@pytest.mark.parametrize(
    "path",
    [
        "/media/../picscale.db",
        "/media/%2e%2e/%2e%2e/picscale.db",
        "/media/1/v1/..%2F..%2Fpicscale.db",
        "/media/1/v1/%2e%2e%2fsecret_key",
        "/media/1%2Fv1/v1/original.jpg",
        "/media/abc/v1/original.jpg",
        "/media/1/v0/original.jpg",
        "/media/1/v1/source",
        "/media/1/v1/original.gif",
        "/media/99999999999999999999/v1/original.jpg",
        "/media//etc/passwd",
        "/static/../picscale.db",
        "/static/%2e%2e/%2e%2e/settings.py",
    ],
)
def test_path_tricks_in_media_urls(server: Server, path: str) -> None:
    r = httpx.get(server.url + path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert r.headers["content-type"].startswith("application/json")
    assert b"SQLite" not in r.content


def test_photo_ids_that_are_not_ids(server: Server, owner: tuple) -> None:
    client, _ = owner
    for bad in ("abc", "-1", "1.5", "9" * 30, "%00"):
        assert_error(client.get(f"/api/v1/photos/{bad}"), 404)
    assert_error(client.get("/api/v1/jobs/notanid"), 404)
    assert_error(client.get("/api/v1/feed", params={"limit": 0}), 422)
    assert_error(client.get("/api/v1/feed", params={"limit": 1000}), 422)
    assert_error(client.get("/api/v1/feed", params={"cursor": "garbage"}), 422)


def test_the_server_is_still_up_and_nothing_was_lost(server: Server, owner: tuple) -> None:
    client, user = owner
    assert httpx.get(server.url + "/readyz").status_code == 200
    photo = client.get(f"/api/v1/photos/{user['photo']['id']}").json()
    assert photo["status"] == "ready"
    original = httpx.get(server.url + photo["urls"]["original"])
    assert original.status_code == 200
    assert len(io.BytesIO(original.content).getvalue()) > 0
