"""The media store's contract, the same tests over every backend: a local directory
(``file://``), and S3 (``s3://``, with and without a key prefix in the bucket).

S3 runs against `moto_server`, the one mock among the tests: no S3-compatible server can
be installed here (see tests/support/moto_server.py). The client under test is the real
aiobotocore one making real HTTP requests.

Every ``open_store()`` is a store of its own on the same directory or bucket, as another
process would have: what one stores, another reads.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from picscale.settings import load_settings
from picscale.tiers.storage import (
    ChecksumMismatch,
    InvalidKey,
    MediaNotFound,
    MediaStore,
    create_media_store,
)
from picscale.tiers.storage.port import CHUNK_SIZE
from tests.support.moto_server import MotoServer, start_moto


@dataclass
class StorageBackend:
    name: str
    new_location: Callable[[], str]  # a PICSCALE_STORAGE_URL naming an empty place
    keeps_checksums: bool  # stat() gives the SHA-256 without reading the object

    def checksums_of(self, data: bytes) -> set[str | None]:
        """What stat() may say of ``data``'s SHA-256: None is "read it to know", and a
        backend that keeps checksums always has it; never a wrong one."""
        return {sha256(data)} if self.keeps_checksums else {None, sha256(data)}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["file", "s3", "s3-prefixed"])
def storage_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StorageBackend:
    """What each backend needs (one moto_server for the S3 ones)."""
    if request.param == "file":

        def new_directory() -> str:
            return f"file://{tmp_path_factory.mktemp('media')}"

        return StorageBackend(request.param, new_directory, keeps_checksums=False)
    moto: MotoServer = request.getfixturevalue("moto")
    prefix = "tenant-a/media" if request.param == "s3-prefixed" else ""

    def new_bucket() -> str:
        bucket = f"media-{uuid.uuid4().hex[:12]}"
        moto.create_bucket(bucket)
        return moto.url(bucket, prefix=prefix)

    return StorageBackend(request.param, new_bucket, keeps_checksums=True)


OpenStore = Callable[[], Awaitable[MediaStore]]


@pytest.fixture
async def open_store(storage_backend: StorageBackend, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens processes on one new, empty location (a directory, a bucket): the one place
    a media store is built."""
    url = storage_backend.new_location()
    opened: list[MediaStore] = []

    async def open_process() -> MediaStore:
        store = create_media_store(load_settings({}, data_dir=tmp_path, storage_url=url))
        opened.append(store)
        return store

    yield open_process
    for store in opened:
        await store.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunked(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def keys_of(store: MediaStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.iter_objects(prefix)]


OBJECTS = {
    "photos/1/source": (os.urandom(3000), "image/jpeg"),
    "photos/1/v1/original.jpg": (b"original", "image/jpeg"),
    "photos/1/v1/thumb.webp": (b"thumb", "image/webp"),
    "photos/12/v1/large.png": (b"other photo", "image/png"),
    "photos/13/v1/empty.jpg": (b"", "image/jpeg"),
}


async def test_what_one_process_puts_every_process_reads(
    storage_backend: StorageBackend, open_store: OpenStore
) -> None:
    one, other = await open_store(), await open_store()
    await one.ping()
    for key, (data, content_type) in OBJECTS.items():
        await one.put(key, data, content_type)
    for key, (data, content_type) in OBJECTS.items():
        assert await other.get(key) == data
        info = await other.stat(key)
        assert info is not None and (info.key, info.size) == (key, len(data))
        assert info.sha256 in storage_backend.checksums_of(data)
        if "." in key:  # a known extension: every backend says the type it was put with
            assert info.content_type == content_type
    assert await keys_of(other) == sorted(OBJECTS)  # in key order
    assert await keys_of(other, "photos/1/") == sorted(k for k in OBJECTS if "/1/" in k)

    await other.put("photos/1/v1/original.jpg", b"replaced", "image/jpeg")
    assert await one.get("photos/1/v1/original.jpg") == b"replaced"
    replaced = await one.stat("photos/1/v1/original.jpg")
    assert replaced is not None and replaced.size == len(b"replaced")


async def test_an_object_streams_in_chunks_with_its_size_known_first(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    data = os.urandom(3 * CHUNK_SIZE + 123)
    await store.put("photos/4/source", data, "image/png")
    stream = await store.open("photos/4/source")
    assert stream.size == len(data) and stream.info.key == "photos/4/source"
    sizes: list[int] = []
    got = bytearray()
    async for chunk in stream:
        sizes.append(len(chunk))
        got += chunk
    assert bytes(got) == data and len(sizes) > 1 and max(sizes) <= CHUNK_SIZE

    # a stream closed half way (a client that went away) leaves the store usable
    async with await store.open("photos/4/source") as half:
        async for _ in half:
            break
    assert await (await store.open("photos/4/source")).read() == data


async def test_a_stream_is_stored_only_if_it_is_what_its_checksum_says(
    storage_backend: StorageBackend, open_store: OpenStore
) -> None:
    store = await open_store()
    data, old = os.urandom(2 * CHUNK_SIZE + 5), b"the bytes already there"
    await store.put("photos/3/source", old, "image/jpeg")
    for size, digest in [(len(data), sha256(b"something else")), (len(data) - 1, sha256(data))]:
        with pytest.raises(ChecksumMismatch):
            await store.put_stream(
                "photos/3/source",
                chunked(data),
                size=size,
                content_type="image/jpeg",
                sha256=digest,
            )
        with pytest.raises(ChecksumMismatch):
            await store.put_stream(
                "photos/5/source",
                chunked(data),
                size=size,
                content_type="image/jpeg",
                sha256=digest,
            )
    assert await store.get("photos/3/source") == old  # nothing stored over it...
    assert await store.stat("photos/5/source") is None  # ...nor anywhere else
    assert await keys_of(store) == ["photos/3/source"]  # and nothing half-written is listed

    await store.put_stream(
        "photos/5/source",
        chunked(data),
        size=len(data),
        content_type="image/jpeg",
        sha256=sha256(data),
    )
    assert await store.get("photos/5/source") == data
    info = await store.stat("photos/5/source")
    assert info is not None and info.size == len(data)
    assert info.sha256 in storage_backend.checksums_of(data)


async def test_delete_prefix_deletes_whole_path_segments_only(open_store: OpenStore) -> None:
    one, other = await open_store(), await open_store()
    for key, (data, content_type) in OBJECTS.items():
        await one.put(key, data, content_type)
    # photos/1 is not a prefix of photos/12's keys: only whole path segments count
    assert await one.delete_prefix("photos/1") == 3
    assert await keys_of(other) == ["photos/12/v1/large.png", "photos/13/v1/empty.jpg"]
    with pytest.raises(MediaNotFound):
        await other.get("photos/1/source")
    assert await other.get("photos/12/v1/large.png") == b"other photo"
    assert await other.delete_prefix("photos/1") == 0  # again: nothing left
    assert await other.delete_prefix("photos/404") == 0  # never there


async def test_a_missing_key_is_media_not_found(open_store: OpenStore) -> None:
    store = await open_store()
    await store.put("photos/9/v1/large.jpg", b"a sibling", "image/jpeg")
    for missing in ("photos/9/v1/original.jpg", "photos/9/v1", "photos/9"):
        with pytest.raises(MediaNotFound):
            await store.get(missing)
        with pytest.raises(MediaNotFound):
            await store.open(missing)
        assert await store.stat(missing) is None, missing


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "photos/../../secret",
        "photos/1/../../../x",
        "/photos/1/source",
        "photos//1",
        "photos/1/",
        "Photos/1",
        "photos/1/source\x00.jpg",
        "photos/ 1",
        "%2e%2e/secret",
        "photos/1/" + "a" * 600,
        "",
    ],
)
async def test_path_tricks_are_refused(open_store: OpenStore, key: str) -> None:
    store = await open_store()
    with pytest.raises(InvalidKey):
        await store.put(key, b"x", "image/jpeg")
    with pytest.raises(InvalidKey):
        await store.put_stream(
            key, chunked(b"x"), size=1, content_type="image/jpeg", sha256=sha256(b"x")
        )
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.open(key)
    with pytest.raises(InvalidKey):
        await store.stat(key)
    with pytest.raises(InvalidKey):
        await store.delete_prefix(key)
    assert await keys_of(store) == []


async def test_a_closed_store_opens_again_when_used(open_store: OpenStore) -> None:
    store = await open_store()
    await store.put("photos/6/source", b"before", "image/jpeg")
    await store.close()
    assert await store.get("photos/6/source") == b"before"
    await store.ping()
    await store.put("photos/6/source", b"after", "image/jpeg")
    await store.close()
    assert await store.get("photos/6/source") == b"after"
