"""Server-rendered pages (Jinja2 + htmx). They call the same domain as the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from picscale.domain.errors import DomainError, Invalid, NotFound
from picscale.domain.records import PhotoRecord, ProfileRecord
from picscale.imaging import Blur, Crop, Operation, Sharpen
from picscale.settings import Settings
from picscale.web.auth import (
    SESSION_COOKIE,
    cleared_session_cookie,
    csrf_token_of,
    optional_user,
    protect,
    services_of,
    set_csrf_cookie,
)
from picscale.web.caching import anonymous, shared_headers
from picscale.web.shared import MediaUrls, client_address, parse_id, start_session

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


def _safe_next(target: str | None) -> str:
    # only local paths: never an open redirect to another site
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _login_redirect(request: Request[Any, Any, Any]) -> Redirect:
    return Redirect(f"/login?next={quote(request.url.path)}")


def build_pages(settings: Settings, media_base: Callable[[], str]) -> Router:
    urls = MediaUrls(media_base)
    page_size = 12  # a gallery page; one of the cached first-page sizes

    async def render(
        request: Request[Any, Any, Any],
        template: str,
        status_code: int = 200,
        shared: str | None = None,
        **context: Any,
    ) -> Template:
        """``shared``: the surrogate keys of a page anyone may see; an anonymous
        visitor's copy (no form on it, so no CSRF token or cookie) may then be kept by
        the edge."""
        user = await optional_user(request)
        public = shared is not None and user is None and anonymous(request)
        context.update(
            me=user,
            csrf_token="" if public else csrf_token_of(request),
            urls=urls,
            max_upload_mb=settings.photos.max_upload_bytes // (1024 * 1024),
        )
        headers = (
            shared_headers(request, shared, settings.cdn.shared_seconds)
            if public and shared is not None
            else None
        )
        response = Template(template, context=context, status_code=status_code, headers=headers)
        if not public:
            set_csrf_cookie(request, response)
        return response

    @get("/", include_in_schema=False)
    async def home(request: Request[Any, Any, Any], cursor: str | None = None) -> Template:
        user = await optional_user(request)
        if user is None:
            return await render(request, "landing.html")
        page = await services_of(request).social.feed(user, cursor, page_size)
        return await render(request, "feed.html", page=page)

    @get("/signup", include_in_schema=False)
    async def signup_form(request: Request[Any, Any, Any]) -> Template:
        return await render(request, "signup.html", values={})

    @post("/signup", include_in_schema=False)
    async def signup(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        services = services_of(request)
        try:
            user = await services.users.sign_up(
                data.get("username", ""), data.get("password", ""), data.get("display_name")
            )
        except DomainError as exc:
            values = {
                "username": data.get("username", ""),
                "display_name": data.get("display_name", ""),
            }
            return await render(
                request, "signup.html", exc.status, error=exc.message, values=values
            )
        response = Redirect("/")
        await start_session(request, services, user, response)
        return response

    @get("/login", include_in_schema=False)
    async def login_form(request: Request[Any, Any, Any], next: str | None = None) -> Template:
        return await render(request, "login.html", next=_safe_next(next), username="")

    @post("/login", include_in_schema=False)
    async def login(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        services = services_of(request)
        target = _safe_next(data.get("next"))
        try:
            user = await services.users.authenticate(
                data.get("username", ""), data.get("password", ""), client_address(request)
            )
        except DomainError as exc:
            return await render(
                request,
                "login.html",
                exc.status,
                error=exc.message,
                next=target,
                username=data.get("username", ""),
            )
        response = Redirect(target)
        await start_session(request, services, user, response)
        return response

    @post("/logout", include_in_schema=False)
    async def logout(request: Request[Any, Any, Any]) -> Redirect:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await services_of(request).sessions.delete(token)
        response = Redirect("/")
        response.set_cookie(cleared_session_cookie())
        return response

    @get("/upload", include_in_schema=False)
    async def upload_form(request: Request[Any, Any, Any]) -> Response[Any]:
        if await optional_user(request) is None:
            return _login_redirect(request)
        return await render(request, "upload.html")

    async def _profile(request: Request[Any, Any, Any], username: str) -> ProfileRecord:
        found = await services_of(request).users.profile(username)
        if found is None:
            raise NotFound(f"no user is called {username!r}")
        return found

    @get("/u/{username:str}", include_in_schema=False)
    async def profile(
        request: Request[Any, Any, Any], username: str, cursor: str | None = None
    ) -> Template:
        services = services_of(request)
        found = await _profile(request, username)
        me = await optional_user(request)
        following = me is not None and await services.social.is_following(me, found.id)
        page = await services.photos.by_owner(found.id, cursor, page_size)
        template = "_grid.html" if request.headers.get("hx-request") else "profile.html"
        return await render(
            request,
            template,
            profile=found,
            following=following,
            page=page,
            more_url=f"/u/{found.username}?cursor=",
            shared=f"profile-{found.id}",
        )

    async def _follow_button(
        request: Request[Any, Any, Any], username: str, follow: bool
    ) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return _login_redirect(request)
        services = services_of(request)
        if follow:
            await services.social.follow(me, username)
        else:
            await services.social.unfollow(me, username)
        found = await _profile(request, username)
        return await render(request, "_follow.html", profile=found, following=follow)

    @post("/u/{username:str}/follow", include_in_schema=False)
    async def follow(request: Request[Any, Any, Any], username: str) -> Response[Any]:
        return await _follow_button(request, username, True)

    @post("/u/{username:str}/unfollow", include_in_schema=False)
    async def unfollow(request: Request[Any, Any, Any], username: str) -> Response[Any]:
        return await _follow_button(request, username, False)

    async def _photo(request: Request[Any, Any, Any], photo_id: str) -> PhotoRecord:
        return await services_of(request).photos.require(parse_id(photo_id, "photo"))

    async def _render_job(request: Request[Any, Any, Any], photo: PhotoRecord) -> int | None:
        """The owner of a photo still processing follows its job's event stream."""
        me = await optional_user(request)
        if photo.status != "processing" or me is None or me.id != photo.owner_id:
            return None
        return await services_of(request).photos.first_render(photo.id)

    @get("/p/{photo_id:str}", include_in_schema=False)
    async def photo(request: Request[Any, Any, Any], photo_id: str) -> Template:
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

    @get("/p/{photo_id:str}/status", include_in_schema=False)
    async def photo_status(request: Request[Any, Any, Any], photo_id: str) -> Response[Any]:
        found = await _photo(request, photo_id)
        render_job = await _render_job(request, found)
        response = await render(request, "_photo_image.html", photo=found, render_job=render_job)
        if found.status != "processing":
            response.headers["HX-Refresh"] = "true"  # show the whole page, edit form and all
        return response

    @post("/p/{photo_id:str}/edits", include_in_schema=False)
    async def edit(request: Request[Any, Any, Any], photo_id: str, data: Form) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return _login_redirect(request)
        try:
            operations = _operations_from_form(data)
            job = await services_of(request).photos.request_edit(
                me, parse_id(photo_id, "photo"), operations
            )
        except DomainError as exc:
            return await render(request, "_job.html", job=None, error=exc.message)
        return await render(request, "_job.html", job=job, error=None)

    @get("/jobs/{job_id:str}/progress", include_in_schema=False)
    async def job_progress(request: Request[Any, Any, Any], job_id: str) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return _login_redirect(request)
        job = await services_of(request).photos.job(parse_id(job_id, "job"), me)
        response = await render(request, "_job.html", job=job, error=job.error)
        if job.status == "done":
            response.headers["HX-Refresh"] = "true"  # the new version replaces the old
        return response

    @post("/p/{photo_id:str}/delete", include_in_schema=False)
    async def delete_photo(request: Request[Any, Any, Any], photo_id: str) -> Response[Any]:
        me = await optional_user(request)
        if me is None:
            return _login_redirect(request)
        await services_of(request).photos.delete(me, parse_id(photo_id, "photo"))
        return Redirect(f"/u/{me.username}")

    return Router(
        "/",
        route_handlers=protect(
            [
                home,
                signup_form,
                signup,
                login_form,
                login,
                logout,
                upload_form,
                profile,
                follow,
                unfollow,
                photo,
                photo_status,
                edit,
                job_progress,
                delete_photo,
            ]
        ),
        include_in_schema=False,
    )


def _number(data: dict[str, str], name: str) -> float | None:
    raw = (data.get(name) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise Invalid(f"{name} must be a number") from None


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
