"""Text from clients as the domain accepts it: numbers spelt in ASCII digits only, and no
NUL character in anything stored or looked up (PostgreSQL's text cannot hold one, and
SQLite would store it: both refuse it alike)."""

from __future__ import annotations

import re

from picscale.domain.errors import Invalid

_DIGITS = re.compile(r"[0-9]+")


def decimal(raw: str, *, max_digits: int) -> int | None:
    """The number ``raw`` spells in ASCII digits (at most ``max_digits``), else None.

    ``str.isdigit`` and ``int`` accept any script's digits (``int`` reads full-width
    digits as a number, and ``"²".isdigit()`` is true but ``int("²")`` fails): a number
    from a client is ASCII."""
    if len(raw) > max_digits or not _DIGITS.fullmatch(raw):
        return None
    return int(raw)


def refuse_nul(**fields: str | None) -> None:
    """Invalid (422) naming the first field that holds a NUL character."""
    for name, value in fields.items():
        if value and "\x00" in value:
            raise Invalid(f"{name.replace('_', ' ')} must not contain NUL characters")
