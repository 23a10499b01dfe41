"""The JSON API for mobile clients (and the browser's upload and edit scripts)."""

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post, put
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from picscale.domain.errors import NotFound
from picscale.settings import Settings
from picscale.web.auth import (
    SESSION_COOKIE,
    bearer_token,
    cleared_session_cookie,
    current_user,
    protect,
    services_of,
)
from picscale.web.caching import shared_headers
from picscale.web.schemas import (
    EditIn,
    JobOut,
    LogInIn,
    PageOut,
    PhotoOut,
    ProfileIn,
    ProfileOut,
    SessionOut,
    SignUpIn,
    UserOut,
)
from picscale.web.shared import MediaUrls, client_address, parse_id, start_session

Cursor = Annotated[
    str | None, Parameter(description="next_cursor from the previous page", max_length=32)
]

JOB_STREAM_SECONDS = 600.0  # a stream ends after this; EventSource reconnects
JOB_RECHECK_SECONDS = 5.0  # re-read the job at least this often, event or not


@dataclass
class UploadForm:
    file: UploadFile
    caption: str = ""


def build_api(settings: Settings, media_base: Callable[[], str]) -> Router:
    urls = MediaUrls(media_base)

    def shared(request: Request[Any, Any, Any], keys: str) -> dict[str, str]:
        return shared_headers(request, keys, settings.cdn.shared_seconds)

    max_limit = settings.feed.max_page_size

    Limit = Annotated[int, Parameter(ge=1, le=max_limit, description="page size")]

    @post("/users", status_code=HTTP_201_CREATED, summary="Sign up")
    async def sign_up(request: Request[Any, Any, Any], data: SignUpIn) -> UserOut:
        user = await services_of(request).users.sign_up(
            data.username, data.password, data.display_name
        )
        return UserOut.of(user)

    @post("/sessions", status_code=HTTP_201_CREATED, summary="Log in")
    async def log_in(request: Request[Any, Any, Any], data: LogInIn) -> Response[SessionOut]:
        services = services_of(request)
        user = await services.users.authenticate(
            data.username, data.password, client_address(request)
        )
        response = Response(SessionOut("", UserOut.of(user)), status_code=HTTP_201_CREATED)
        response.content.token = await start_session(request, services, user, response)
        return response

    @delete("/sessions", status_code=HTTP_204_NO_CONTENT, summary="Log out")
    async def log_out(request: Request[Any, Any, Any]) -> Response[None]:
        services = services_of(request)
        for token in {request.cookies.get(SESSION_COOKIE), bearer_token(request)}:
            if token:
                await services.sessions.delete(token)
        response: Response[None] = Response(None, status_code=HTTP_204_NO_CONTENT)
        response.set_cookie(cleared_session_cookie())
        return response

    @get("/me", summary="The signed-in user")
    async def me(request: Request[Any, Any, Any]) -> UserOut:
        return UserOut.of(await current_user(request))

    @patch("/me", summary="Change your display name")
    async def update_me(request: Request[Any, Any, Any], data: ProfileIn) -> ProfileOut:
        user = await current_user(request)
        profile = await services_of(request).users.update_profile(user, data.display_name)
        return ProfileOut.of(profile)

    @delete("/me", status_code=HTTP_204_NO_CONTENT, summary="Delete your account")
    async def delete_me(request: Request[Any, Any, Any]) -> Response[None]:
        """Everything of yours goes: photos and their media (also at the CDN edge),
        follows, sessions. There is no undo."""
        user = await current_user(request)
        services = services_of(request)
        await services.photos.delete_account(user)
        await services.sessions.delete_for_user(user.id)
        response: Response[None] = Response(None, status_code=HTTP_204_NO_CONTENT)
        response.set_cookie(cleared_session_cookie())
        return response

    @get("/users/{username:str}", summary="A profile")
    async def profile(request: Request[Any, Any, Any], username: str) -> Response[ProfileOut]:
        found = await services_of(request).users.profile(username)
        if found is None:
            raise NotFound(f"no user is called {username!r}")
        return Response(ProfileOut.of(found), headers=shared(request, f"profile-{found.id}"))

    @put("/users/{username:str}/follow", status_code=HTTP_204_NO_CONTENT, summary="Follow")
    async def follow(request: Request[Any, Any, Any], username: str) -> None:
        await services_of(request).social.follow(await current_user(request), username)

    @delete("/users/{username:str}/follow", status_code=HTTP_204_NO_CONTENT, summary="Unfollow")
    async def unfollow(request: Request[Any, Any, Any], username: str) -> None:
        await services_of(request).social.unfollow(await current_user(request), username)

    @get("/users/{username:str}/photos", summary="A user's photos, newest first")
    async def user_photos(
        request: Request[Any, Any, Any],
        username: str,
        cursor: Cursor = None,
        limit: Limit = settings.feed.page_size,
    ) -> Response[PageOut]:
        services = services_of(request)
        found = await services.users.profile(username)
        if found is None:
            raise NotFound(f"no user is called {username!r}")
        page = urls.page(await services.photos.by_owner(found.id, cursor, limit))
        return Response(page, headers=shared(request, f"profile-{found.id}"))

    @post(
        "/photos",
        status_code=HTTP_201_CREATED,
        summary="Upload a photo (JPEG, PNG or WebP)",
        request_max_body_size=settings.photos.max_upload_bytes + 1024 * 1024,
    )
    async def upload(
        request: Request[Any, Any, Any],
        data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> PhotoOut:
        user = await current_user(request)
        content = await data.file.read()
        await data.file.close()
        photo = await services_of(request).photos.upload(user, content, data.caption)
        return urls.photo(photo)

    @get("/photos/{photo_id:str}", summary="A photo")
    async def photo(request: Request[Any, Any, Any], photo_id: str) -> Response[PhotoOut]:
        found = await services_of(request).photos.require(parse_id(photo_id, "photo"))
        keys = f"photo-{found.id} profile-{found.owner_id}"
        return Response(urls.photo(found), headers=shared(request, keys))

    @delete("/photos/{photo_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a photo")
    async def delete_photo(request: Request[Any, Any, Any], photo_id: str) -> None:
        await services_of(request).photos.delete(
            await current_user(request), parse_id(photo_id, "photo")
        )

    @post("/photos/{photo_id:str}/edits", status_code=HTTP_202_ACCEPTED, summary="Edit a photo")
    async def edit(request: Request[Any, Any, Any], photo_id: str, data: EditIn) -> JobOut:
        user = await current_user(request)
        job = await services_of(request).photos.request_edit(
            user, parse_id(photo_id, "photo"), data.operations
        )
        return JobOut.of(job)

    @get("/jobs/{job_id:str}", summary="A job's progress")
    async def job(request: Request[Any, Any, Any], job_id: str) -> JobOut:
        user = await current_user(request)
        return JobOut.of(await services_of(request).photos.job(parse_id(job_id, "job"), user))

    @get(
        "/jobs/{job_id:str}/events",
        summary="A job's progress, live (Server-Sent Events)",
        description=(
            "An `event: status` message with the job (as `GET /jobs/{id}`) now and on every "
            "change; the stream ends after `done` or `failed` (or after ten minutes: "
            "reconnect)."
        ),
    )
    async def job_events(request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
        user = await current_user(request)
        services = services_of(request)
        ident = parse_id(job_id, "job")
        first = await services.photos.job(ident, user)  # someone else's job: 404 here

        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            job, last, sent = first, None, 0
            deadline = time.monotonic() + JOB_STREAM_SECONDS
            while True:
                state = (job.status, job.attempts, job.version, job.error)
                if state != last:
                    last, sent = state, sent + 1
                    body = msgspec.json.encode(JobOut.of(job)).decode()
                    yield ServerSentEventMessage(data=body, event="status", id=sent)
                if job.status in ("done", "failed") or time.monotonic() > deadline:
                    return
                await services.events.wait(ident, JOB_RECHECK_SECONDS)
                job = await services.photos.job(ident, user)

        return ServerSentEvent(stream(), headers={"Cache-Control": "no-store"})

    @get("/feed", summary="Home feed: your photos and those of people you follow")
    async def feed(
        request: Request[Any, Any, Any],
        cursor: Cursor = None,
        limit: Limit = settings.feed.page_size,
    ) -> PageOut:
        user = await current_user(request)
        return urls.page(await services_of(request).social.feed(user, cursor, limit))

    return Router(
        "/api/v1",
        route_handlers=protect(
            [
                sign_up,
                log_in,
                log_out,
                me,
                update_me,
                delete_me,
                profile,
                follow,
                unfollow,
                user_photos,
                upload,
                photo,
                delete_photo,
                edit,
                job,
                job_events,
                feed,
            ]
        ),
        tags=["api"],
    )
