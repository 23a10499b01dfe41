"""Headers every response carries so that a browser does no more with it than it must: no
MIME sniffing, no address sent to other sites, no framing by anyone, and on pages only
the scripts, styles and images of this site and its edge (the pages carry no inline
script or style: their behaviour is static/picscale.js)."""

from __future__ import annotations

from urllib.parse import urlsplit

REFERRER_POLICY = "same-origin"
# JSON, media, errors: nothing in them is to be run, styled or framed
NOTHING = "default-src 'none'; frame-ancestors 'none'"
# the API's documentation page (the framework's) loads its renderer from a CDN, inline
API_DOCS = "frame-ancestors 'none'"
_DOCS_PATH = "/schema"


def page_policy(edge_url: str = "") -> str:
    """The pages' Content-Security-Policy; ``edge_url``: the CDN that media and static
    files are served from while it is healthy (PICSCALE_CDN_URL), if any."""
    edge = ""
    if edge_url:
        parts = urlsplit(edge_url)
        edge = f" {parts.scheme}://{parts.netloc}"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self'{edge}",
            f"style-src 'self'{edge}",
            # data: for the empty favicon (no request for /favicon.ico)
            f"img-src 'self' data:{edge}",
            "connect-src 'self'",  # htmx and job event streams
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeaders:
    """Added by the request middleware to every response that does not set its own."""

    def __init__(self, edge_url: str = "") -> None:
        self._page = page_policy(edge_url).encode()

    def add(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        present = {name.lower() for name, _ in headers}
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        if b"content-security-policy" not in present:
            if path.startswith(_DOCS_PATH) and not path.endswith(".json"):
                policy = API_DOCS.encode()
            elif content_type.lower().startswith(b"text/html"):
                policy = self._page
            else:
                policy = NOTHING.encode()
            headers.append((b"content-security-policy", policy))
        if b"x-content-type-options" not in present:
            headers.append((b"x-content-type-options", b"nosniff"))
        if b"referrer-policy" not in present:
            headers.append((b"referrer-policy", REFERRER_POLICY.encode()))
