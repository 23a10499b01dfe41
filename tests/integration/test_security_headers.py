"""Every response tells the browser to do no more with it than it must: a
Content-Security-Policy (frame-ancestors 'none'), Referrer-Policy, nosniff; the pages
need no inline script or style for it; the CSRF cookie is Secure in production."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import PASSWORD, new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import Server, start_server

HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def owner(server: Server) -> tuple[httpx.Client, dict]:
    client, user = new_user(server, "headers")
    user["photo"] = wait_ready(client, upload(client, image_bytes(320, 240))["id"])
    return client, user


def browser(server: Server, username: str) -> httpx.Client:
    """A browser's session, logged in through the form."""
    b = server.client(headers=HTML)
    b.get("/login")
    r = b.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": b.cookies["picscale_csrf"]},
    )
    assert r.status_code == 302, r.text
    return b


def directives(policy: str) -> dict[str, list[str]]:
    found = {}
    for part in policy.split(";"):
        name, *values = part.split()
        found[name] = values
    return found


def assert_secured(r: httpx.Response) -> dict[str, list[str]]:
    what = f"{r.request.method} {r.request.url} ({r.status_code})"
    assert r.headers.get("x-content-type-options") == "nosniff", what
    assert r.headers.get("referrer-policy") == "same-origin", what
    assert len(r.headers.get_list("content-security-policy")) == 1, what
    policy = directives(r.headers["content-security-policy"])
    assert policy["frame-ancestors"] == ["'none'"], what
    return policy


def assert_page_policy(r: httpx.Response, edge: str = "") -> None:
    assert r.headers["content-type"].startswith("text/html"), r.headers
    policy = assert_secured(r)
    assert policy["default-src"] == ["'none'"]
    extra = [edge] if edge else []
    assert policy["script-src"] == ["'self'", *extra]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == ["'self'", *extra]
    assert policy["img-src"] == ["'self'", "data:", *extra]
    assert policy["connect-src"] == ["'self'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'self'"]


def assert_nothing_runs(r: httpx.Response) -> None:
    assert directives(r.headers["content-security-policy"])["default-src"] == ["'none'"]


def test_pages_carry_the_page_policy(server: Server, owner: tuple) -> None:
    _, user = owner
    me = browser(server, user["username"])
    anonymous = server.client(headers=HTML)
    photo = f"/p/{user['photo']['id']}"
    for client, path in [
        (anonymous, "/"),
        (anonymous, "/login"),
        (anonymous, "/signup"),
        (anonymous, f"/u/{user['username']}"),
        (anonymous, photo),
        (me, "/"),
        (me, "/upload"),
        (me, photo),
        (me, f"/u/{user['username']}"),
    ]:
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
        assert_page_policy(r)
    # error pages too: a handler's, and one for an address no route matches
    for path in ("/p/12345", "/no/such/page"):
        r = anonymous.get(path)
        assert r.status_code == 404
        assert_page_policy(r)


def test_json_media_and_static_files_run_nothing(server: Server, owner: tuple) -> None:
    client, user = owner
    anonymous = server.client()
    responses = [
        client.get("/api/v1/me"),
        client.get(f"/api/v1/photos/{user['photo']['id']}"),
        anonymous.get("/api/v1/me"),  # 401
        anonymous.get("/api/v1/no-such-thing"),  # 404 before any route
        anonymous.request("PATCH", "/login"),  # 405
        anonymous.post("/api/v1/users", content=b"{", headers={"Content-Type": "application/json"}),
        anonymous.get(user["photo"]["urls"]["thumb"]),
        anonymous.get("/static/picscale.css"),
        anonymous.get("/static/picscale.js"),
        anonymous.get("/healthz"),
        anonymous.head(f"/api/v1/photos/{user['photo']['id']}"),
    ]
    for r in responses:
        assert_secured(r)
        assert_nothing_runs(r)
    assert [r.status_code for r in responses[2:6]] == [401, 404, 405, 400]
    # the API's documentation page loads its renderer from a CDN: framing is all it forbids
    docs = anonymous.get("/schema")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert assert_secured(docs) == {"frame-ancestors": ["'none'"]}
    assert_nothing_runs(anonymous.get("/schema/openapi.json"))


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline script"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an event handler attribute"),
    (re.compile(r"\sstyle\s*=", re.I), "a style attribute"),
    (re.compile(r"<style", re.I), "a style element"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
    (re.compile(r"\shx-on", re.I), "an hx-on handler"),
]


def test_pages_and_fragments_need_no_inline_script_or_style(server: Server, owner: tuple) -> None:
    """What the policy would block: the browser test (tests/e2e) sees the pages work."""
    _, user = owner
    me = browser(server, user["username"])
    photo_id = user["photo"]["id"]
    token = me.cookies["picscale_csrf"]
    edit = me.post(
        f"/p/{photo_id}/edits",
        data={"blur": "1"},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert edit.status_code == 200 and "job-live" in edit.text, edit.text
    job_id = re.search(r"/jobs/(\d+)/progress", edit.text)
    assert job_id is not None
    pages = {
        "feed": me.get("/"),
        "upload": me.get("/upload"),
        "photo with its edit form": me.get(f"/p/{photo_id}"),
        "profile": me.get(f"/u/{user['username']}"),
        "login": server.client().get("/login"),
        "signup": server.client().get("/signup"),
        "error": server.client(headers=HTML).get("/p/1"),
        "edit job fragment": edit,
        "job progress fragment": me.get(f"/jobs/{job_id.group(1)}/progress"),
        "photo status fragment": me.get(f"/p/{photo_id}/status"),
    }
    assert 'id="edit-form"' in pages["photo with its edit form"].text
    for name, r in pages.items():
        assert r.status_code in (200, 404), (name, r.status_code)
        for pattern, what in INLINE:
            found = pattern.search(r.text)
            where = r.text[found.start() - 80 : found.end() + 80] if found else ""
            assert found is None, f"{what} in the {name}: {where}"
    scripts = re.findall(r'<script src="([^"]+)"', pages["feed"].text)
    assert [re.sub(r"\.[0-9a-f]{12}\.", ".", s) for s in scripts] == [
        "/static/htmx-2.0.11.min.js",
        "/static/picscale.js",
    ]


def test_static_text_files_send_one_charset(server: Server) -> None:
    page = httpx.get(server.url + "/")
    hashed = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert len(hashed) == 3
    for path in [*hashed, "/static/picscale.css", "/static/picscale.js"]:
        r = httpx.get(server.url + path)
        assert r.status_code == 200
        content_type = r.headers["content-type"]
        assert content_type in ("text/css; charset=utf-8", "text/javascript; charset=utf-8"), (
            path,
            content_type,
        )
        assert content_type.count("charset") == 1


def test_cookies_are_not_secure_over_plain_http_in_development(server: Server) -> None:
    r = httpx.get(server.url + "/login")
    assert "picscale_csrf=" in r.headers["set-cookie"]
    assert "secure" not in r.headers["set-cookie"].lower()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Production mode behind an edge (its URL named, the edge itself not running)."""
    srv = start_server(
        tmp_path_factory.mktemp("production"),
        job_workers=0,
        env="production",
        secret_key="s" * 48,
        cdn_url="http://127.0.0.1:9/",
    )
    yield srv
    srv.close()


def set_cookies(r: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}


def test_the_csrf_cookie_is_secure_in_production(production: Server) -> None:
    page = httpx.get(production.url + "/login")
    csrf = set_cookies(page)["picscale_csrf"]
    assert re.search(r";\s*secure\b", csrf, re.I), csrf
    name = "prod_user"
    created = httpx.post(
        production.url + "/api/v1/users", json={"username": name, "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    login = httpx.post(
        production.url + "/api/v1/sessions", json={"username": name, "password": PASSWORD}
    )
    assert login.status_code == 201, login.text
    cookies = set_cookies(login)
    for cookie in ("picscale_session", "picscale_csrf"):
        assert re.search(r";\s*secure\b", cookies[cookie], re.I), cookies[cookie]


def test_the_page_policy_names_the_edge(production: Server) -> None:
    """Media and static files come from the edge while it is healthy: the policy lets
    the browser load them from there (and from the origin, when the edge is down)."""
    page = httpx.get(production.url + "/login")
    assert page.status_code == 200
    assert_page_policy(page, edge="http://127.0.0.1:9")
