"""Cursor pagination: a page ends with the id to continue after (ids are time-ordered)."""

from __future__ import annotations

from picscale.domain.errors import Invalid
from picscale.domain.records import Page, PhotoRecord
from picscale.domain.text import decimal


def parse_cursor(cursor: str | None) -> int | None:
    """The id a page continues after: a 64-bit id in ASCII digits, as pages hand it out."""
    if cursor is None or cursor == "":
        return None
    before = decimal(cursor, max_digits=19)
    if before is None or before >= 2**63:
        raise Invalid("cursor is not valid: pass back the next_cursor of the previous page")
    return before


def page_of(photos: list[PhotoRecord], limit: int) -> Page:
    """A page of ``limit`` from ``photos``, read with one more than ``limit`` to know
    whether there is a next page."""
    items = photos[:limit]
    next_cursor = str(items[-1].id) if len(photos) > limit and items else None
    return Page(items=items, next_cursor=next_cursor)
