"""/api/v1/photos: upload, read, delete and edit a photo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from picscale.settings import Settings
from picscale.web.auth import ProtectedController, current_user, services_of
from picscale.web.caching import shared_headers
from picscale.web.schemas import EditIn, JobOut, PhotoOut
from picscale.web.shared import MediaUrls, parse_id


@dataclass
class UploadForm:
    file: UploadFile
    caption: str = ""


def photos_controller(settings: Settings, urls: MediaUrls) -> type[ProtectedController]:
    """Made when the app is built: the upload's body limit comes from settings."""
    shared_seconds = settings.cdn.shared_seconds

    class PhotosController(ProtectedController):
        path = "/photos"

        @post(
            status_code=HTTP_201_CREATED,
            summary="Upload a photo (JPEG, PNG or WebP)",
            request_max_body_size=settings.photos.max_upload_bytes + 1024 * 1024,
        )
        async def upload(
            self,
            request: Request[Any, Any, Any],
            data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
        ) -> PhotoOut:
            user = await current_user(request)
            content = await data.file.read()
            await data.file.close()
            photo = await services_of(request).photos.upload(user, content, data.caption)
            return urls.photo(photo)

        @get("/{photo_id:str}", summary="A photo")
        async def photo(self, request: Request[Any, Any, Any], photo_id: str) -> Response[PhotoOut]:
            found = await services_of(request).photos.require(parse_id(photo_id, "photo"))
            keys = f"photo-{found.id} profile-{found.owner_id}"
            headers = shared_headers(request, keys, shared_seconds)
            return Response(urls.photo(found), headers=headers)

        @delete("/{photo_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a photo")
        async def delete_photo(self, request: Request[Any, Any, Any], photo_id: str) -> None:
            await services_of(request).photos.delete(
                await current_user(request), parse_id(photo_id, "photo")
            )

        @post("/{photo_id:str}/edits", status_code=HTTP_202_ACCEPTED, summary="Edit a photo")
        async def edit(
            self, request: Request[Any, Any, Any], photo_id: str, data: EditIn
        ) -> JobOut:
            user = await current_user(request)
            job = await services_of(request).photos.request_edit(
                user, parse_id(photo_id, "photo"), data.operations
            )
            return JobOut.of(job)

    return PhotosController
