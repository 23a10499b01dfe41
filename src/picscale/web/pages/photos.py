"""A photo's page, its status while it is processed, its edits and their progress, and
its deletion."""

from __future__ import annotations

import math
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Redirect, Template

from picscale.domain.errors import DomainError, Invalid
from picscale.domain.records import PhotoRecord
from picscale.imaging import Blur, Crop, Operation, Sharpen
from picscale.web.auth import ProtectedController, optional_user, services_of
from picscale.web.pages.rendering import Form, login_redirect, render
from picscale.web.shared import parse_id


async def _photo(request: Request[Any, Any, Any], photo_id: str) -> PhotoRecord:
    return await services_of(request).photos.require(parse_id(photo_id, "photo"))


async def _render_job(request: Request[Any, Any, Any], photo: PhotoRecord) -> int | None:
    """The owner of a photo still processing follows its job's event stream."""
    me = await optional_user(request)
    if photo.status != "processing" or me is None or me.id != photo.owner_id:
        return None
    return await services_of(request).photos.first_render(photo.id)


class PhotoPages(ProtectedController):
    @get("/p/{photo_id:str}")
    async def photo(self, request: Request[Any, Any, Any], photo_id: str) -> Template:
        found = await _photo(request, photo_id)
        services = services_of(request)
        versions = await services.photos.versions(found.id)
        render_job = await _render_job(request, found)
        return await render(
            request,
            "photo.html",
            photo=found,
            versions=versions,
            render_job=render_job,
            shared=f"photo-{found.id} profile-{found.owner_id}",
        )

    @get("/p/{photo_id:str}/status")
    async def photo_status(self, request: Request[Any, Any, Any], photo_id: str) -> Response[Any]:
        found = await _photo(request, photo_id)
        render_job = await _render_job(request, found)
        response = await render(request, "_photo_image.html", photo=found, render_job=render_job)
        if found.status != "processing":
            response.headers["HX-Refresh"] = "true"  # show the whole page, edit form and all
        return response

    @post("/p/{photo_id:str}/edits")
    async def edit(
        self, request: Request[Any, Any, Any], photo_id: str, data: Form
    ) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return login_redirect(request)
        try:
            operations = _operations_from_form(data)
            job = await services_of(request).photos.request_edit(
                me, parse_id(photo_id, "photo"), operations
            )
        except DomainError as exc:
            return await render(request, "_job.html", job=None, error=exc.message)
        return await render(request, "_job.html", job=job, error=None)

    @get("/jobs/{job_id:str}/progress")
    async def job_progress(self, request: Request[Any, Any, Any], job_id: str) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return login_redirect(request)
        job = await services_of(request).photos.job(parse_id(job_id, "job"), me)
        response = await render(request, "_job.html", job=job, error=job.error)
        if job.status == "done":
            response.headers["HX-Refresh"] = "true"  # the new version replaces the old
        return response

    @post("/p/{photo_id:str}/delete")
    async def delete_photo(self, request: Request[Any, Any, Any], photo_id: str) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return login_redirect(request)
        await services_of(request).photos.delete(me, parse_id(photo_id, "photo"))
        return Redirect(f"/u/{me.username}")


def _number(data: dict[str, str], name: str) -> float | None:
    """A finite number in ASCII (``float`` also reads 'nan', 'inf', '1e400' and other
    scripts' digits, none of which the form sends)."""
    raw = (data.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw) if raw.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise Invalid(f"{name} must be a number")
    return value


def _operations_from_form(data: dict[str, str]) -> list[Operation]:
    """The edit form: an optional crop box, then sharpen and blur sliders (0 = off)."""
    ops: list[Operation] = []
    box = [_number(data, k) for k in ("crop_x", "crop_y", "crop_width", "crop_height")]
    if all(v is not None for v in box):
        x, y, w, h = (round(v or 0) for v in box)
        ops.append(Crop(x=x, y=y, width=w, height=h))
    sharpen = _number(data, "sharpen")
    if sharpen:
        ops.append(Sharpen(sigma=sharpen))
    blur = _number(data, "blur")
    if blur:
        ops.append(Blur(sigma=blur))
    if not ops:
        raise Invalid("choose an edit first: draw a crop box or move a slider")
    return ops
