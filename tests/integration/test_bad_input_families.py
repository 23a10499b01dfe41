"""Bad input generated family by family (not only the values test_bad_input lists), on
every database: other scripts' digits and numbers past 64 bits as ids and cursors, byte
ranges of any text, numbers the edit form never sends, CSRF tokens of any text, content
types in any case, JSON nested thousands deep, text that is not UTF-8, NUL characters.
Each answers a 4xx with the API's JSON error body (the edit form: its fragment with the
error), never a 5xx. Reproducible: derandomized, no example database."""

from __future__ import annotations

import codecs
import json
import re

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.api import PASSWORD, new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import Server

FAMILY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def owner(server: Server) -> tuple[httpx.Client, dict]:
    client, user = new_user(server, "families")
    user["photo"] = wait_ready(client, upload(client, image_bytes(320, 240))["id"])
    return client, user


@pytest.fixture(scope="module")
def page(server: Server, owner: tuple) -> tuple[httpx.Client, str]:
    """The owner's browser: logged in through the form; its CSRF token."""
    _, user = owner
    browser = server.client()
    browser.get("/login")
    r = browser.post(
        "/login",
        data={
            "username": user["username"],
            "password": PASSWORD,
            "csrf_token": browser.cookies["picscale_csrf"],
        },
    )
    assert r.status_code == 302, r.text
    return browser, browser.cookies["picscale_csrf"]


def assert_json_error(r: httpx.Response, *statuses: int) -> None:
    what = f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    assert r.status_code in statuses, what
    assert r.headers["content-type"].startswith("application/json"), what
    body = r.json()
    assert body["status_code"] == r.status_code and body["detail"], what


def random_case(text: str) -> st.SearchStrategy[str]:
    def spelt(upper: list[bool]) -> str:
        return "".join(c.upper() if u else c.lower() for c, u in zip(text, upper, strict=True))

    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(spelt)


# digits of other scripts (and superscripts, fractions, circled numbers), mixed with ASCII
OTHER_DIGIT = st.characters(categories=["Nd", "No"]).filter(lambda c: not c.isascii())
OTHER_DIGITS = (
    st.lists(st.one_of(OTHER_DIGIT, st.sampled_from("0123456789")), min_size=1, max_size=24)
    .filter(lambda chars: any(not c.isascii() for c in chars))
    .map("".join)
)
PAST_64_BITS = st.integers(min_value=2**63, max_value=2**300).map(str)


@FAMILY
@given(value=st.one_of(OTHER_DIGITS, PAST_64_BITS))
def test_ids_and_cursors(server: Server, owner: tuple, value: str) -> None:
    client, user = owner
    assert_json_error(client.get(f"/api/v1/photos/{value}"), 404)
    assert_json_error(client.get(f"/api/v1/jobs/{value}"), 404)
    assert_json_error(client.get("/api/v1/feed", params={"cursor": value}), 422)
    url = f"/api/v1/users/{user['username']}/photos"
    assert_json_error(client.get(url, params={"cursor": value}), 422)


# what a Range header may hold: any visible Latin-1 text, or numbers in any digits
RANGE_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
)
RANGE_NUMBER = st.one_of(
    st.just(""), st.integers(0, 10**6).map(str), PAST_64_BITS, OTHER_DIGITS, RANGE_TEXT
)


@FAMILY
@given(
    spec=st.one_of(
        st.tuples(RANGE_NUMBER, RANGE_NUMBER).map(lambda ends: f"bytes={ends[0]}-{ends[1]}"),
        RANGE_TEXT.map(lambda text: "bytes=" + text),
    ),
    encoding=st.sampled_from(["latin-1", "utf-8"]),
)
def test_byte_ranges(server: Server, owner: tuple, spec: str, encoding: str) -> None:
    """A range this serves (206), one past the file (416) or anything else (ignored: 200)."""
    _, user = owner
    try:
        raw = spec.encode(encoding)
    except UnicodeEncodeError:
        raw = spec.encode("utf-8")
    r = httpx.get(server.url + user["photo"]["urls"]["thumb"], headers={"Range": raw})
    assert r.status_code in (200, 206, 416), (spec, r.status_code, r.text[:300])
    if r.status_code == 416:
        assert re.fullmatch(r"bytes \*/\d+", r.headers["content-range"])


NOT_FINITE = st.one_of(
    st.tuples(st.sampled_from(["", "+", "-"]), st.sampled_from(["nan", "inf", "infinity"])).flatmap(
        lambda p: random_case(p[1]).map(lambda word: p[0] + word)
    ),
    st.builds(
        lambda sign, m, e: f"{sign}{m}e{e}",
        st.sampled_from(["", "-"]),
        st.integers(1, 999),
        st.integers(309, 10**6),
    ),
    OTHER_DIGITS,
)
FORM_NUMBERS = ["sharpen", "blur", "crop_x", "crop_y", "crop_width", "crop_height"]


@FAMILY
@given(value=NOT_FINITE, field=st.sampled_from(FORM_NUMBERS))
def test_numbers_the_edit_form_never_sends(
    server: Server, owner: tuple, page: tuple, value: str, field: str
) -> None:
    _, user = owner
    browser, token = page
    form = {"crop_x": "0", "crop_y": "0", "crop_width": "10", "crop_height": "10", field: value}
    r = browser.post(
        f"/p/{user['photo']['id']}/edits",
        data=form,
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert r.status_code == 200 and "must be a number" in r.text, (form, r.status_code, r.text)


# what a cookie carries as sent: no separator, quote or escape the parser reads, nothing it
# strips (str.strip takes NBSP and NEL too)
TOKEN_TEXT = st.text(
    alphabet=st.characters(
        min_codepoint=0x21, max_codepoint=0xFF, exclude_characters='\x7f\x85\xa0";,%\\='
    ),
    max_size=60,
)
CSRF_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")


@FAMILY
@given(
    cookie=TOKEN_TEXT,
    header=st.one_of(TOKEN_TEXT, st.just("")),
    same=st.booleans(),
    encoding=st.sampled_from(["latin-1", "utf-8"]),
)
def test_csrf_tokens_of_any_text(
    server: Server, cookie: str, header: str, same: bool, encoding: str
) -> None:
    """Refused (403) unless the header echoes a cookie shaped like a token of ours; then
    the sign-up form answers for its too short name (422)."""
    header = cookie if same else header
    headers: dict[str, str | bytes] = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": ("picscale_csrf=" + cookie).encode(encoding),
    }
    if header:
        headers["X-CSRF-Token"] = header.encode(encoding)
    r = httpx.post(server.url + "/signup", headers=headers, content=b"username=x&password=y")
    if CSRF_SHAPE.fullmatch(cookie) and header == cookie:
        assert r.status_code == 422, r.text
    else:
        assert_json_error(r, 403)


@FAMILY
@given(
    media_type=st.sampled_from(["application/x-www-form-urlencoded", "text/plain"]).flatmap(
        random_case
    ),
    params=st.sampled_from(["", "; charset=utf-8", ";charset=UTF-8", " ; foo=bar"]),
    path=st.sampled_from(["/signup", "/login", "/api/v1/users", "/api/v1/sessions"]),
)
def test_content_types_in_any_case(
    server: Server, owner: tuple, media_type: str, params: str, path: str
) -> None:
    """A form is a form however it is spelt (CSRF-guarded where a page takes it); text is
    never taken as JSON."""
    _, user = owner
    login = {"username": user["username"], "password": PASSWORD}
    content_type = media_type + params
    if media_type.lower() == "text/plain":
        body = json.dumps(login).encode()
        expected = 415
    else:
        body = f"username={user['username']}&password={PASSWORD.replace(' ', '+')}".encode()
        # the pages' forms want their token; the API reads no form (its JSON is malformed)
        expected = 403 if not path.startswith("/api/") else 400
    r = httpx.post(server.url + path, headers={"Content-Type": content_type}, content=body)
    assert_json_error(r, expected)
    assert "picscale_session" not in r.headers.get("set-cookie", "")


@FAMILY
@given(
    depth=st.integers(2_000, 15_000),
    opener=st.sampled_from([b"[", b'{"a":', b'{"operations":[', b"[{}, "]),
    target=st.sampled_from(
        [
            ("POST", "/api/v1/users"),
            ("POST", "/api/v1/sessions"),
            ("POST", "/api/v1/photos/{photo}/edits"),
            ("PATCH", "/api/v1/me"),
        ]
    ),
)
def test_json_nested_thousands_deep(
    server: Server, owner: tuple, depth: int, opener: bytes, target: tuple[str, str]
) -> None:
    client, user = owner
    closer = {b"[": b"]", b'{"a":': b"}", b'{"operations":[': b"]}", b"[{}, ": b"]"}[opener]
    body = opener * depth + b"1" + closer * depth
    method, path = target
    r = client.request(
        method,
        path.format(photo=user["photo"]["id"]),
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_json_error(r, 400, 413)  # 413: over the JSON body limit before it is read


# (no quote or backslash: the same bytes go into a JSON string)
NOT_UTF8 = (
    st.binary(min_size=1, max_size=64)
    .map(lambda b: b.replace(b'"', b"").replace(b"\\", b""))
    .filter(lambda b: not _is_utf8(b))
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _known_charset(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


@FAMILY
@given(
    text=NOT_UTF8,
    charset=st.one_of(
        st.just(""),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(
            lambda name: not _known_charset(name)
        ),
    ),
)
def test_text_that_is_not_utf8(server: Server, owner: tuple, text: bytes, charset: str) -> None:
    client, _ = owner
    part_type = f"Content-Type: text/plain; charset={charset}\r\n" if charset else ""
    boundary = "families-boundary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="caption"\r\n'
        f"{part_type}\r\n".encode()
        + text
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post(
        "/api/v1/photos",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_json_error(r, 400)
    assert ("charset" if charset else "UTF-8") in r.json()["detail"]
    as_json = b'{"display_name": "' + text + b'"}'
    r = client.patch("/api/v1/me", content=as_json, headers={"Content-Type": "application/json"})
    assert_json_error(r, 400)


TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
WITH_NUL = st.builds(lambda a, b: a + "\x00" + b, TEXT, TEXT)


@FAMILY
@given(
    text=WITH_NUL,
    field=st.sampled_from(
        ["sign-up name", "display name", "password", "log-in name", "new display name", "caption"]
    ),
)
def test_nul_characters_anywhere(server: Server, owner: tuple, text: str, field: str) -> None:
    client, user = owner
    anonymous = server.client()
    signup = {"username": "nul_family", "password": PASSWORD}
    if field == "sign-up name":
        r = anonymous.post("/api/v1/users", json={**signup, "username": text})
    elif field == "display name":
        r = anonymous.post("/api/v1/users", json={**signup, "display_name": text})
    elif field == "password":
        r = anonymous.post("/api/v1/users", json={**signup, "password": PASSWORD + text})
    elif field == "log-in name":
        r = anonymous.post("/api/v1/sessions", json={"username": text, "password": PASSWORD})
    elif field == "new display name":
        r = client.patch("/api/v1/me", json={"display_name": text[:200]})
    else:
        files = {"file": ("x.jpg", image_bytes(32, 32), "image/jpeg")}
        r = client.post("/api/v1/photos", files=files, data={"caption": text})
    assert_json_error(r, 422)
    assert "NUL" in r.json()["detail"] or "username" in r.json()["detail"], r.json()
    assert anonymous.get("/api/v1/users/nul_family").status_code == 404
    profile = client.get(f"/api/v1/users/{user['username']}").json()
    assert profile["photo_count"] == 1 and "\x00" not in profile["display_name"]
