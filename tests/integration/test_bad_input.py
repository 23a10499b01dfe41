"""Bad input gets a clear 4xx JSON error; nothing stored is lost; the server stays up."""

from __future__ import annotations

import functools
import html
import io
import json
import re
import uuid

import httpx
import pytest
import pyvips

from tests.support.api import PASSWORD, new_user, upload, wait_ready
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


def other_digits(number: str) -> list[str]:
    """``number`` in other scripts' decimal digits (full-width, Arabic-Indic, Devanagari,
    mathematical bold): ``int()`` reads each as the same number."""
    return [
        "".join(chr(zero + int(d)) for d in number) for zero in (0xFF10, 0x0660, 0x0966, 0x1D7CE)
    ]


def assert_html_error(r: httpx.Response, status: int, words: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert words.lower() in r.text.lower(), r.text


def page_session(server: Server, username: str) -> tuple[httpx.Client, str]:
    """A browser's session: logged in through the form; its CSRF token."""
    browser = server.client()
    browser.get("/login")
    token = browser.cookies["picscale_csrf"]
    r = browser.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    assert r.status_code == 302, r.text
    return browser, browser.cookies["picscale_csrf"]


def test_digits_of_other_scripts_are_no_ids(server: Server, owner: tuple) -> None:
    client, user = owner
    photo_id = user["photo"]["id"]
    spellings = [*other_digits(photo_id), "²", "¹²³", photo_id[:-1] + "²", "٣"]
    for spelling in spellings:
        assert_error(client.get(f"/api/v1/photos/{spelling}"), 404, "decimal")
        assert_error(client.get(f"/api/v1/jobs/{spelling}"), 404, "decimal")
        # another spelling of the id must not reach the photo, least of all to delete it
        assert_error(client.delete(f"/api/v1/photos/{spelling}"), 404)
        page = client.get(f"/p/{spelling}", headers={"Accept": "text/html"})
        assert_html_error(page, 404, "decimal")
        assert_error(httpx.get(f"{server.url}/media/{spelling}/v1/original.jpg"), 404)
    assert_error(httpx.get(f"{server.url}/media/{2**63}/v1/original.jpg"), 404)
    assert client.get(f"/api/v1/photos/{photo_id}").json()["status"] == "ready"


def test_cursors_are_64_bit_ids_in_ascii_digits(server: Server, owner: tuple) -> None:
    client, user = owner
    bad = [str(2**63), str(2**64), "9" * 19, "9" * 25, "²", "1²", *other_digits("12")]
    for cursor in bad:
        for url in ("/api/v1/feed", f"/api/v1/users/{user['username']}/photos"):
            assert_error(client.get(url, params={"cursor": cursor}), 422, "cursor")
        for url in ("/", f"/u/{user['username']}"):
            page = client.get(url, params={"cursor": cursor}, headers={"Accept": "text/html"})
            assert_html_error(page, 422, "cursor")
    last = client.get(f"/api/v1/users/{user['username']}/photos", params={"cursor": 2**63 - 1})
    assert last.status_code == 200 and len(last.json()["items"]) == 1


def test_ranges_in_digits_of_other_scripts_are_ignored(server: Server, owner: tuple) -> None:
    """A Range this does not understand is ignored (RFC 9110 lets a server): the whole
    file, as for any other malformed Range."""
    _, user = owner
    url = server.url + user["photo"]["urls"]["original"]
    whole = httpx.get(url).content
    for spec in (
        "bytes=²-",
        "bytes=-²",
        "bytes=0-²",
        "bytes=³-¹",
        "bytes=\u0663-",
        "bytes=\uff11-",
    ):
        for encoding in ("latin-1", "utf-8"):
            try:
                raw = spec.encode(encoding)
            except UnicodeEncodeError:
                continue
            r = httpx.get(url, headers={"Range": raw})
            assert r.status_code == 200, (spec, encoding, r.status_code, r.text[:200])
            assert r.content == whole
    assert httpx.get(url, headers={"Range": "bytes=0-9"}).status_code == 206


NOT_NUMBERS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "+Infinity",
    "1e400",
    "-1e309",
    "\uff11\uff12",
    "\u0663",
]


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_the_edit_form_takes_finite_numbers_only(server: Server, owner: tuple, value: str) -> None:
    """The page's edit form answers its fragment with the error, as for any refused edit
    (htmx swaps no 4xx answer into the page)."""
    client, user = owner
    browser, token = page_session(server, user["username"])
    photo_id = user["photo"]["id"]
    box = {"crop_x": "0", "crop_y": "0", "crop_width": "10", "crop_height": "10"}
    for form in (
        {"sharpen": value},
        {"blur": value},
        {**box, "crop_x": value},
        {**box, "crop_height": value},
    ):
        r = browser.post(
            f"/p/{photo_id}/edits", data=form, headers={"HX-Request": "true", "X-CSRF-Token": token}
        )
        assert r.status_code == 200, (form, r.status_code, r.text[:300])
        assert "must be a number" in r.text, (form, r.text)
    assert client.get(f"/api/v1/photos/{photo_id}").json()["version"] == 1


def raw_post(
    server: Server, path: str, headers: dict[str, bytes | str], body: bytes
) -> httpx.Response:
    return httpx.post(server.url + path, headers=headers, content=body)


def test_csrf_tokens_that_are_not_ascii(server: Server) -> None:
    browser = server.client()
    browser.get("/signup")
    token = browser.cookies["picscale_csrf"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"username=x&password=y"
    cases = [
        {"Cookie": "picscale_csrf=é".encode(), "X-CSRF-Token": "é".encode()},
        {"Cookie": "picscale_csrf=é".encode("latin-1"), "X-CSRF-Token": token},
        {"Cookie": f"picscale_csrf={token}", "X-CSRF-Token": "é".encode("latin-1")},
        {"Cookie": f"picscale_csrf={token}", "X-CSRF-Token": (token[:-1] + "é").encode()},
        {
            "Cookie": ("picscale_csrf=" + "é" * 43).encode(),
            "X-CSRF-Token": ("é" * 43).encode("latin-1"),
        },
    ]
    for headers in cases:
        assert_error(raw_post(server, "/signup", {**form, **headers}, body), 403, "CSRF")
    field = f"username=x&password=y&csrf_token=%C3%A9{token[1:]}".encode()
    assert_error(
        raw_post(server, "/signup", {**form, "Cookie": f"picscale_csrf={token}"}, field), 403
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "Application/x-www-form-urlencoded",
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8",
        "application/X-WWW-Form-Urlencoded;charset=utf-8",
    ],
)
def test_a_form_in_capitals_is_still_a_form(
    server: Server, owner: tuple, content_type: str
) -> None:
    """Logging in through the form needs its CSRF token however its type is spelt: else a
    cross-site page can log a visitor in as someone else."""
    _, user = owner
    body = f"username={user['username']}&password={PASSWORD.replace(' ', '+')}".encode()
    r = raw_post(server, "/login", {"Content-Type": content_type}, body)
    assert_error(r, 403, "CSRF")
    assert "picscale_session" not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("content_type", ["TEXT/PLAIN", "Text/Plain; charset=utf-8", "text/plain"])
def test_json_sent_as_text_is_not_taken(server: Server, owner: tuple, content_type: str) -> None:
    client, user = owner
    name = f"plain_{uuid.uuid4().hex[:10]}"
    signup = json.dumps({"username": name, "password": PASSWORD}).encode()
    assert_error(raw_post(server, "/api/v1/users", {"Content-Type": content_type}, signup), 415)
    assert_error(httpx.get(f"{server.url}/api/v1/users/{name}"), 404)  # nobody signed up
    login = json.dumps({"username": user["username"], "password": PASSWORD}).encode()
    r = raw_post(server, "/api/v1/sessions", {"Content-Type": content_type}, login)
    assert_error(r, 415)
    assert "picscale_session" not in r.headers.get("set-cookie", "")
    edit = json.dumps({"operations": [{"op": "blur", "sigma": 1}]}).encode()
    url = f"/api/v1/photos/{user['photo']['id']}/edits"
    assert_error(client.post(url, content=edit, headers={"Content-Type": content_type}), 415)
    assert client.get(f"/api/v1/photos/{user['photo']['id']}").json()["version"] == 1


CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def page_token(page: httpx.Response) -> str:
    """The CSRF token a page sends with htmx requests (its hx-headers) and in its meta tag."""
    found = re.search(r"<body hx-headers='([^']*)'>", page.text)
    assert found is not None, page.text[:2000]
    headers = json.loads(html.unescape(found.group(1)))
    assert list(headers) == ["X-CSRF-Token"], headers
    meta = re.search(r'<meta name="csrf-token" content="([^"]*)">', page.text)
    assert meta is not None and html.unescape(meta.group(1)) == headers["X-CSRF-Token"]
    token: str = headers["X-CSRF-Token"]
    return token


@pytest.mark.parametrize(
    "cookie",
    [
        'a","X-Evil":"b',
        "</script><script>alert(1)</script>",
        "'><img src=x onerror=alert(1)>",
        "\\u0022",
        "short",
        "é" * 43,
        "x" * 43 + "!",
    ],
)
def test_a_csrf_cookie_that_is_no_token_is_replaced(server: Server, cookie: str) -> None:
    page = httpx.get(server.url + "/login", headers={"Cookie": b"picscale_csrf=" + cookie.encode()})
    assert page.status_code == 200
    token = page_token(page)
    assert CSRF_TOKEN.fullmatch(token) and token != cookie
    assert f"picscale_csrf={token};" in page.headers["set-cookie"]
    assert "X-Evil" not in page.text and "alert(1)" not in page.text


def test_a_csrf_cookie_of_ours_is_kept(server: Server) -> None:
    first = httpx.get(server.url + "/login")
    token = first.cookies["picscale_csrf"]
    again = httpx.get(server.url + "/login", cookies={"picscale_csrf": token})
    assert page_token(again) == token and "set-cookie" not in again.headers


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["array", "object"])
def test_json_nested_5000_deep(server: Server, owner: tuple, kind: str) -> None:
    client, user = owner
    body = nested(5000, kind)
    json_type = {"Content-Type": "application/json"}
    for method, url in [
        ("POST", "/api/v1/users"),
        ("POST", "/api/v1/sessions"),
        ("POST", f"/api/v1/photos/{user['photo']['id']}/edits"),
        ("PATCH", "/api/v1/me"),
    ]:
        r = client.request(method, url, content=body, headers=json_type)
        assert_error(r, 400, "nested too deeply")
        wrapped = b'{"operations":' + body + b"}"
        r = client.request(method, url, content=wrapped, headers=json_type)
        assert_error(r, 400, "nested too deeply")
    assert client.get(f"/api/v1/photos/{user['photo']['id']}").json()["version"] == 1


def test_text_that_is_not_utf8(server: Server, owner: tuple) -> None:
    client, user = owner
    image = image_bytes(64, 64)
    for caption in (b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80", b"ok \xc3"):
        r = client.post(
            "/api/v1/photos",
            files={"file": ("x.jpg", image, "image/jpeg"), "caption": (None, caption)},
        )
        assert_error(r, 400, "UTF-8")
    boundary = "picscale-test"
    unknown_charset = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="caption"\r\n'
        "Content-Type: text/plain; charset=no-such-charset\r\n\r\n"
        f"hello\r\n--{boundary}--\r\n"
    ).encode()
    r = client.post(
        "/api/v1/photos",
        content=unknown_charset,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(r, 400, "charset")
    for body in (b'{"display_name": "caf\xe9"}', b'{"display_name": "\xed\xa0\x80"}'):
        r = client.patch("/api/v1/me", content=body, headers={"Content-Type": "application/json"})
        assert_error(r, 400, "UTF-8")
    # nothing half-stored: one photo, the name unchanged
    profile = client.get(f"/api/v1/users/{user['username']}").json()
    assert profile["photo_count"] == 1 and profile["display_name"] == user["display_name"]


def test_nul_characters_are_refused(server: Server, owner: tuple) -> None:
    """PostgreSQL's text cannot hold NUL, SQLite would store it: both refuse it (422)."""
    client, user = owner
    name = f"nul_{uuid.uuid4().hex[:10]}"
    for body, words in [
        ({"username": name, "password": PASSWORD, "display_name": "a\x00b"}, "display name"),
        ({"username": name + "\x00", "password": PASSWORD}, "username"),
        ({"username": name, "password": PASSWORD + "\x00"}, "password"),
    ]:
        assert_error(httpx.post(f"{server.url}/api/v1/users", json=body), 422, words)
    assert_error(httpx.get(f"{server.url}/api/v1/users/{name}"), 404)  # nobody signed up
    for body in (
        {"username": user["username"] + "\x00", "password": PASSWORD},
        {"username": "\x00", "password": "\x00"},
    ):
        assert_error(httpx.post(f"{server.url}/api/v1/sessions", json=body), 422, "NUL")
    assert_error(client.patch("/api/v1/me", json={"display_name": "me\x00"}), 422, "NUL")
    caption = {"caption": "a\x00b"}
    r = client.post("/api/v1/photos", files={"file": ("x.jpg", image_bytes(64, 64))}, data=caption)
    assert_error(r, 422, "NUL")
    assert_error(client.put("/api/v1/users/a%00b/follow"), 404)
    assert_error(client.get("/api/v1/users/a%00b/photos"), 404)
    # the pages' forms: their own page again, with the error
    browser = server.client()
    browser.get("/signup")
    token = browser.cookies["picscale_csrf"]
    html_page = {"Accept": "text/html"}
    signup = {"username": name, "password": PASSWORD, "display_name": "\x00", "csrf_token": token}
    assert_html_error(browser.post("/signup", data=signup, headers=html_page), 422, "NUL")
    login = {"username": name + "\x00", "password": PASSWORD, "csrf_token": token}
    assert_html_error(browser.post("/login", data=login, headers=html_page), 422, "NUL")
    # a login's next page with a NUL (or any control character) in it is the home page
    login = {"username": user["username"], "password": PASSWORD, "csrf_token": token}
    r = browser.post("/login", data={**login, "next": "/u/\x00x"}, headers=html_page)
    assert r.status_code == 302 and r.headers["location"] == "/"
    profile = client.get(f"/api/v1/users/{user['username']}").json()
    assert profile["photo_count"] == 1 and profile["display_name"] == user["display_name"]


def test_the_server_is_still_up_and_nothing_was_lost(server: Server, owner: tuple) -> None:
    client, user = owner
    assert httpx.get(server.url + "/readyz").status_code == 200
    photo = client.get(f"/api/v1/photos/{user['photo']['id']}").json()
    assert photo["status"] == "ready"
    original = httpx.get(server.url + photo["urls"]["original"])
    assert original.status_code == 200
    assert len(io.BytesIO(original.content).getvalue()) > 0
