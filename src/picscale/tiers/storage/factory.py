"""Choose the media store by the scheme of its URL (``PICSCALE_STORAGE_URL``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from picscale.settings import Settings, SettingsError
from picscale.tiers.storage.port import MediaStore

URL_FORMS = "file:///path/to/media or s3://bucket?endpoint=http://host:9000&region=us-east-1"


def open_media_store(url: str, *, setting: str = "PICSCALE_STORAGE_URL") -> MediaStore:
    """The store a URL names; ``setting`` is what a bad URL's message points at."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise SettingsError(f"{setting}: {url!r} is not a file URL: use file:///path")
        from picscale.tiers.storage.files import LocalMediaStore

        return LocalMediaStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        from picscale.tiers.storage.s3 import S3MediaStore

        return S3MediaStore.from_url(url, setting=setting)
    raise SettingsError(f"{setting} scheme {parts.scheme!r} is not supported: use {URL_FORMS}")


def check_storage_url(url: str, *, setting: str = "PICSCALE_STORAGE_URL") -> None:
    """What ``open_media_store`` would refuse: it only reads the URL, opens nothing."""
    open_media_store(url, setting=setting)


def create_media_store(settings: Settings) -> MediaStore:
    return open_media_store(settings.resolved_storage_url)
