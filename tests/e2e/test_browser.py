"""End to end in a real browser: sign up, upload, crop and sharpen, follow, see the feed.

Drives Debian's Chromium (``/usr/bin/chromium``) headless through Playwright's sync API
against a real ``picscale serve`` (the module-scoped ``server`` fixture).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    Route,
    expect,
    sync_playwright,
)
from playwright.sync_api import (
    Error as PlaywrightError,
)

from tests.support.images import image_bytes
from tests.support.picscale_server import Server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
TIMEOUT_MS = 30_000
PASSWORD = "correct horse battery"

# Records, in sessionStorage (it survives the navigations and reloads in one tab), each
# distinct visible state of the watched elements, so that a state the page shows only
# briefly (an upload's progress bar, an edit job's progress) is seen whatever its timing.
WATCH_SCRIPT = """
([key, selectors]) => {
  const seen = JSON.parse(sessionStorage.getItem(key) || "[]");
  const record = () => {
    for (const selector of selectors) {
      for (const el of document.querySelectorAll(selector)) {
        if (el.hidden || el.closest("[hidden]")) continue;
        const state = {
          selector,
          tag: el.tagName.toLowerCase(),
          text: (el.textContent || "").trim(),
          value: "value" in el ? String(el.value) : null,
        };
        const last = seen[seen.length - 1];
        if (!last || JSON.stringify(last) !== JSON.stringify(state)) {
          seen.push(state);
          sessionStorage.setItem(key, JSON.stringify(seen));
        }
      }
    }
  };
  new MutationObserver(record).observe(document.body, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
  record();
}
"""


def watch(page: Page, key: str, *selectors: str) -> None:
    page.evaluate(WATCH_SCRIPT, [key, list(selectors)])


def watched(page: Page, key: str) -> list[dict[str, Any]]:
    """What ``watch`` recorded (kept in sessionStorage, so it outlives a reload: the page
    reloads itself once a new photo is ready, possibly while we ask)."""

    def read() -> str | None:
        try:
            text: str = page.evaluate("(key) => sessionStorage.getItem(key) || '[]'", key)
        except PlaywrightError as exc:
            if "context was destroyed" not in str(exc):
                raise
            return None  # navigating: ask the next document
        return text

    states: list[dict[str, Any]] = json.loads(
        wait_until(read, timeout=30, interval=0.1, what="the recorded states")
    )
    return states


class Problems:
    """Console errors, uncaught page errors and 5xx responses seen by a browser context."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def attach(self, context: BrowserContext) -> None:
        context.on("console", self._console)
        context.on("weberror", lambda e: self.items.append(f"page error: {e.error}"))
        context.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        where = message.location.get("url", "") if message.location else ""
        page_url = message.page.url if message.page else "?"
        self.items.append(f"console error on {page_url}: {message.text} ({where})")

    def _response(self, response: Response) -> None:
        if response.status >= 500:
            self.items.append(f"{response.status} from {response.request.method} {response.url}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: run `bash scripts/system-deps.sh test`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def new_context(browser: Browser, server: Server, problems: Problems) -> BrowserContext:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    problems.attach(context)
    return context


def sign_up(page: Page, username: str) -> None:
    page.goto("/signup")
    page.locator("#username").fill(username)
    page.locator("#display_name").fill(username.title())
    page.locator("#password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/$"), timeout=TIMEOUT_MS)
    expect(page.locator("header")).to_contain_text(username, timeout=TIMEOUT_MS)
    expect(page.get_by_role("button", name="Log out")).to_be_visible(timeout=TIMEOUT_MS)


def test_upload_edit_follow_and_feed(server: Server, browser: Browser, tmp_path: Path) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    suffix = uuid.uuid4().hex[:8]
    alice, bob = f"alice_{suffix}", f"bob_{suffix}"
    photo_file = tmp_path / "holiday.jpg"
    photo_file.write_bytes(image_bytes(1200, 900))
    problems = Problems()

    # -- user A: sign up, upload, crop + sharpen ------------------------------------------
    context_a = new_context(browser, server, problems)
    try:
        page = context_a.new_page()
        sign_up(page, alice)

        page.locator("header").get_by_role("link", name="Upload", exact=True).click()
        expect(page).to_have_url(re.compile(r"/upload$"))
        page.locator("#file").set_input_files(photo_file)
        page.locator("#caption").fill("A striped holiday")
        watch(page, "upload", "#upload-progress", "#upload-status")
        page.get_by_role("button", name="Upload").click()

        expect(page).to_have_url(re.compile(r"/p/\d+$"))
        photo_id = page.url.rsplit("/", 1)[1]
        upload_states = watched(page, "upload")
        assert any(s["tag"] == "progress" for s in upload_states), upload_states
        statuses = [s["text"] for s in upload_states if s["selector"] == "#upload-status"]
        assert any(t.startswith("Uploading") for t in statuses), statuses
        assert "Uploaded. Processing…" in statuses, statuses

        # processing, then (HX-Refresh) the ready photo with its edit form
        photo = page.locator("#photo")
        expect(photo).to_be_visible()
        expect(photo).to_have_attribute("data-version", "1")
        expect(photo).to_have_attribute("data-width", "1200")
        expect(photo).to_have_attribute("data-height", "900")
        expect(page.locator("#version")).to_have_text("1")
        expect(page.get_by_text("A striped holiday")).to_be_visible()
        page.wait_for_function(
            "() => { const i = document.getElementById('photo');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )

        # draw a crop box: from 10% to 60% of the displayed photo, both ways
        photo.scroll_into_view_if_needed()
        box = photo.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100, box
        page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=12)
        page.mouse.up()
        crop_label = page.locator("#crop-label")
        expect(crop_label).to_have_text(re.compile(r"^Crop: \d+\u00d7\d+ at \(\d+, \d+\)\.$"))
        expect(page.locator("#crop-box")).to_be_visible()
        found = re.match(r"Crop: (\d+)\u00d7(\d+) at \((\d+), (\d+)\)", crop_label.inner_text())
        assert found is not None
        crop_w, crop_h, crop_x, crop_y = (int(v) for v in found.groups())
        assert 500 <= crop_w <= 700 and 350 <= crop_h <= 550, (crop_w, crop_h)
        assert 60 <= crop_x <= 180 and 45 <= crop_y <= 135, (crop_x, crop_y)
        expect(page.locator("#crop_width")).to_have_value(str(crop_w))
        expect(page.locator("#crop_height")).to_have_value(str(crop_h))

        sharpen = page.locator("#sharpen")
        sharpen.fill("1.5")
        expect(sharpen).to_have_value("1.5")
        expect(page.locator("#sharpen-out")).to_have_text("1.5")

        watch(page, "edit", "#job progress", "#job .job-status", "#job .error")
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        # the POST's body, kept as it passes: a quick job's refresh may navigate away
        # before the test could ask the browser for it
        answers: list[tuple[int, str]] = []

        def keep_answer(route: Route) -> None:
            if route.request.method != "POST":
                route.fallback()
                return
            response = route.fetch()
            answers.append((response.status, response.text()))
            route.fulfill(response=response)

        page.route(f"**/p/{photo_id}/edits", keep_answer)
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith(f"/p/{photo_id}/edits")
        ) as posted:
            page.get_by_role("button", name="Apply edit").click()
        assert posted.value.status == 200, posted.value.status
        assert len(answers) == 1 and answers[0][0] == 200, answers
        assert "<progress" in answers[0][1], answers[0][1]

        # the job's progress, then (HX-Refresh) the page again, now at version 2
        expect(page.locator("#version")).to_have_text("2")
        expect(photo).to_be_visible()
        expect(photo).to_have_attribute("data-version", "2")
        expect(photo).to_have_attribute("data-width", str(crop_w))
        expect(photo).to_have_attribute("data-height", str(crop_h))
        assert int(photo.get_attribute("data-width") or 0) < 1200
        assert int(photo.get_attribute("data-height") or 0) < 900
        expect(photo).to_have_attribute("src", re.compile(rf"/media/{photo_id}/v2/large\.jpg$"))
        expect(page.locator("a.version-link")).to_have_text(["v1", "v2"])
        page.wait_for_function(
            "() => { const i = document.getElementById('photo');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        natural = photo.evaluate("(i) => [i.naturalWidth, i.naturalHeight]")
        assert natural[0] < 1200 and natural[1] < 900, natural
        assert abs(natural[0] / natural[1] - crop_w / crop_h) < 0.02, (natural, crop_w, crop_h)
        edit_states = watched(page, "edit")
        assert any(s["tag"] == "progress" for s in edit_states), edit_states
        assert any(
            re.match(r"Edit (queued|running): making version 2", s["text"]) for s in edit_states
        ), edit_states
        assert not any(s["selector"] == "#job .error" for s in edit_states), edit_states
        # the progress came live from the job's event stream, not from polling
        assert any(re.search(r"/api/v1/jobs/\d+/events$", url) for url in asked), asked
        assert sum("/progress" in url for url in asked) <= 2, asked
    finally:
        context_a.close()

    # -- user B: sign up, follow A, see A's photo in the feed --------------------------
    context_b = new_context(browser, server, problems)
    try:
        page = context_b.new_page()
        sign_up(page, bob)
        expect(page.locator("article.feed-item")).to_have_count(0)

        page.goto(f"/u/{alice}")
        expect(page.get_by_role("heading", level=1)).to_contain_text(f"@{alice}")
        expect(page.locator(f'#gallery a.tile[data-photo-id="{photo_id}"]')).to_be_visible()
        expect(page.locator("#follower-count")).to_have_text("0")
        page.get_by_role("button", name="Follow", exact=True).click()
        expect(page.locator("#follower-count")).to_have_text("1")
        expect(page.get_by_role("button", name="Unfollow", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Follow", exact=True)).to_have_count(0)

        page.locator("header").get_by_role("link", name="Feed", exact=True).click()
        expect(page).to_have_url(re.compile(r"/$"))
        item = page.locator(f'article.feed-item[data-photo-id="{photo_id}"]')
        expect(item).to_be_visible()
        expect(item).to_contain_text(f"@{alice}")
        expect(item).to_contain_text("A striped holiday")
        expect(item.locator("img")).to_have_attribute(
            "src", re.compile(rf"/media/{photo_id}/v2/large\.jpg$")
        )
        page.wait_for_function(
            "(id) => { const i = document.querySelector("
            '`article.feed-item[data-photo-id="${id}"] img`);'
            " return i && i.complete && i.naturalWidth > 0; }",
            arg=photo_id,
        )
    finally:
        context_b.close()

    assert problems.items == [], "\n".join(problems.items)
