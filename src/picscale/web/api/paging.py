"""The query parameters of a page of photos: where it starts and how long it is."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter, ParameterKwarg

from picscale.settings import Settings

Cursor = Annotated[
    str | None, Parameter(description="next_cursor from the previous page", max_length=32)
]


def page_size(settings: Settings) -> ParameterKwarg:
    """``limit``: from 1 to the configured maximum."""
    limit: ParameterKwarg = Parameter(ge=1, le=settings.feed.max_page_size, description="page size")
    return limit
