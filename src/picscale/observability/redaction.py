"""Credentials never reach a log line: a structlog processor run last, on every line.

A traceback's frames carry their local variables (what makes a 500 debuggable), and
those hold what a request carried: its bearer token and cookies in the ASGI scope, the
password of a login form, the body of a login. So are the URLs of the tiers (their
passwords) in errors. Three passes, over every value of the line, nested ones too:

- a value under a name that says it is a credential (``password``, ``token``,
  ``authorization``, ``cookie``, ``session``, ``secret``, ``csrf``, ``api_key``...) is
  replaced, whatever it is;
- in text, the forms credentials take are replaced: ``Bearer …``, ``password=…``,
  ``"token": "…"``, ``('authorization', '…')``, ``scheme://user:password@``;
- every credential found so far on the line is then replaced wherever else it appears
  on it (the same token in another frame's request object), and so is a fragment of one
  at least ``MIN_SECRET`` characters long (a repr cut short).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"
MIN_SECRET = 8  # shorter values are replaced where they are named, not everywhere else

_NAMES = (
    r"pass(?:word|wd|phrase)|secret|token|authorization|cookie|session|csrf|api[_-]?key"
    r"|credential|private[_-]?key"
)
SENSITIVE_NAME = re.compile(_NAMES, re.IGNORECASE)

_VALUE = r"""(?:b?'(?:\\.|[^'\\])*'?|b?"(?:\\.|[^"\\])*"?|[^\s&;,'"()\[\]{}<>]+)"""
_PATTERNS = (
    # password=…, token: …, "password": "…", ('authorization', b'…'), password='…'
    re.compile(
        rf"""(?P<keep>[\w.-]*(?:{_NAMES})[\w.-]*(?:['"]\s*[:,]|\s*[:=])\s*)(?P<value>{_VALUE})""",
        re.IGNORECASE,
    ),
    # PostgreSQL's detail of a unique violation: Key (token)=(…)
    re.compile(rf"(?P<keep>\([\w, ]*(?:{_NAMES})[\w, ]*\)=\()(?P<value>[^)]*)", re.IGNORECASE),
    # an Authorization header's value on its own
    re.compile(r"(?P<keep>\b(?:bearer|basic|digest)\s+)(?P<value>[\w.~+/=-]+)", re.IGNORECASE),
    # a URL's password: scheme://user:password@host
    re.compile(r"(?P<keep>\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]*:)(?P<value>[^\s@/'\"]+)(?=@)"),
)
_OPENING = re.compile(r"""b?['"]""")
_CANDIDATE = re.compile(rf"[^\s<>]{{{MIN_SECRET},}}")  # a credential: no spaces, no <object>


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """The structlog processor: ``event`` with every credential replaced."""
    found: set[str] = set()
    cleaned = {key: _named(key, value, found) for key, value in event.items()}
    _collect(cleaned.values(), found)
    secrets = sorted((s for s in found if _CANDIDATE.fullmatch(s)), key=len, reverse=True)
    event.clear()
    event.update({key: _scrubbed(value, secrets) for key, value in cleaned.items()})
    return event


def _named(key: Any, value: Any, found: set[str]) -> Any:
    """``value`` itself redacted when ``key`` names a credential (what it held is kept in
    ``found``); else its nested values, by their own names."""
    if isinstance(key, str) and SENSITIVE_NAME.search(key):
        _remember(value, found)
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _named(k, v, found) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_named(None, v, found) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)  # as the JSON renderer would write it, and checked as text


def _remember(value: Any, found: set[str]) -> None:
    if isinstance(value, Mapping):
        _remember(list(value.values()), found)
    elif isinstance(value, list | tuple):
        for v in value:
            _remember(v, found)
    elif isinstance(value, str | bytes):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        found.add(_unquoted(text))  # a local variable's repr: the string inside
        _collect([text], found)  # "Bearer x", "picscale_session=x": the credential alone


def _collect(values: Iterable[Any], found: set[str]) -> None:
    """The credentials that the patterns find anywhere in ``values``."""
    for value in values:
        if isinstance(value, str):
            for pattern in _PATTERNS:
                found.update(_unquoted(m["value"]) for m in pattern.finditer(value))
        elif isinstance(value, Mapping):
            _collect(value.values(), found)
        elif isinstance(value, list):
            _collect(value, found)


def _unquoted(text: str) -> str:
    """``'abc'``, ``b"abc"``, ``'abc'+12`` (a repr cut short), ``'ab`` → abc, ab."""
    opening = _OPENING.match(text)
    if opening is None:
        return text
    quote = opening.group()[-1]
    inner = text[opening.end() :]
    inner = re.sub(r"\+\d+$", "", inner) if re.search(r"['\"]\+\d+$", inner) else inner
    return inner[:-1] if inner.endswith(quote) else inner


def _scrubbed(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, Mapping):
        return {k: _scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, secrets) for v in value]
    return value


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials in their usual forms replaced, and the ``secrets``
    given, or a fragment of one (its first ``MIN_SECRET`` characters or more)."""
    for pattern in _PATTERNS:
        text = pattern.sub(_replace, text)
    for secret in secrets:
        text = _without(text, secret)
    return text


def _replace(match: re.Match[str]) -> str:
    value, keep = match["value"], match["keep"]
    opening = _OPENING.match(value)
    if opening is None:
        return f"{keep}{REDACTED}"
    quote = opening.group()[-1]
    closing = quote if len(value) > opening.end() and value.endswith(quote) else ""
    return f"{keep}{opening.group()}{REDACTED}{closing}"


def _without(text: str, secret: str) -> str:
    head = secret[:MIN_SECRET]
    at = text.find(head)
    while at >= 0:
        end = at + len(head)
        while end < len(text) and end - at < len(secret) and text[end] == secret[end - at]:
            end += 1
        text = text[:at] + REDACTED + text[end:]
        at = text.find(head, at + len(REDACTED))
    return text
