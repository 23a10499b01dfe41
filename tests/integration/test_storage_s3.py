"""The S3 media store, `picscale media migrate`, and the app on S3.

S3 is the one tier tested against a mock: no S3-compatible server can be installed from
Debian (or PyPI) here, so these tests run against `moto_server` (see tests/support/moto_server.py),
started on a free loopback port. The client under test is the real aiobotocore one,
making real HTTP requests; everything else in the app (granian, the worker, SQLite) is
real too. What every media store promises (missing keys, path tricks, streams, checksums)
is tested over every backend in test_storage_contract.py; here, what is S3's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from picscale.settings import SettingsError, load_settings
from picscale.tiers.storage import MediaNotFound, create_media_store
from picscale.tiers.storage.files import LocalMediaStore
from picscale.tiers.storage.migrate import Progress, migrate_media
from picscale.tiers.storage.port import CHUNK_SIZE, ChecksumMismatch
from picscale.tiers.storage.s3 import S3MediaStore
from tests.support.api import new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, start_moto
from tests.support.picscale_server import base_env, running_server
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.close()


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    name = f"media-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(name)
    return name


def s3_store(
    moto: MotoServer,
    bucket: str,
    *,
    threshold: int = 8 * MiB,
    cls: type[S3MediaStore] = S3MediaStore,
) -> S3MediaStore:
    return cls(
        bucket,
        endpoint_url=moto.endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        multipart_threshold=threshold,
        part_size=min(threshold, 8 * MiB),
    )


@pytest.fixture
async def store(moto: MotoServer, bucket: str) -> AsyncIterator[S3MediaStore]:
    s = S3MediaStore.from_url(moto.url(bucket))
    yield s
    await s.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_put_get_delete_prefix_and_ping(
    store: S3MediaStore, moto: MotoServer, bucket: str
) -> None:
    await store.ping()
    keys = {
        "photos/1/source": (os.urandom(3000), "image/jpeg"),
        "photos/1/v1/original.jpg": (b"original", "image/jpeg"),
        "photos/1/v1/thumb.webp": (b"thumb", "image/webp"),
        "photos/12/v1/large.png": (b"other photo", "image/png"),
    }
    for key, (data, content_type) in keys.items():
        await store.put(key, data, content_type)
    for key, (data, content_type) in keys.items():
        assert await store.get(key) == data
        info = await store.stat(key)
        assert info is not None
        assert (info.size, info.sha256, info.content_type) == (
            len(data),
            sha256(data),
            content_type,
        )
    assert [i.key async for i in store.iter_objects("photos/1/")] == sorted(
        k for k in keys if k.startswith("photos/1/")
    )

    # photos/1 is not a prefix of photos/12's keys: only whole path segments count
    assert await store.delete_prefix("photos/1") == 3
    assert set(moto.objects(bucket)) == {"photos/12/v1/large.png"}
    assert await store.delete_prefix("photos/1") == 0
    with pytest.raises(MediaNotFound):
        await store.get("photos/1/source")
    assert await store.get("photos/12/v1/large.png") == b"other photo"


async def test_delete_prefix_goes_past_one_page_and_one_batch(store: S3MediaStore) -> None:
    # more than 1000 keys: list_objects_v2 pages and delete_objects batches of 1000
    limit = asyncio.Semaphore(16)

    async def put(n: int) -> None:
        async with limit:
            await store.put(f"photos/7/v{n}/thumb.jpg", b"x", "image/jpeg")

    await asyncio.gather(*(put(n) for n in range(1, 1106)))
    await store.put("photos/8/source", b"kept", "application/octet-stream")
    assert await store.delete_prefix("photos/7") == 1105
    assert [i.key async for i in store.iter_objects()] == ["photos/8/source"]


async def test_checksums_are_stored_sent_and_checked(
    store: S3MediaStore, moto: MotoServer, bucket: str
) -> None:
    data = os.urandom(100_000)
    await store.put("photos/2/source", data, "image/jpeg")
    head = moto.head(bucket, "photos/2/source")
    assert head["Metadata"] == {"sha256": sha256(data)}
    assert head["ETag"].strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert head["ContentType"] == "image/jpeg"

    async def chunks(payload: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7000):
            yield payload[start : start + 7000]

    # a stream that is not what its checksum says stores nothing
    with pytest.raises(ChecksumMismatch):
        await store.put_stream(
            "photos/3/source",
            chunks(data),
            size=len(data),
            content_type="image/jpeg",
            sha256=sha256(b"something else"),
        )
    assert await store.stat("photos/3/source") is None
    await store.put_stream(
        "photos/3/source",
        chunks(data),
        size=len(data),
        content_type="image/jpeg",
        sha256=sha256(data),
    )
    assert await store.get("photos/3/source") == data


async def test_large_objects_go_up_in_parts_and_stream_down(moto: MotoServer, bucket: str) -> None:
    store = s3_store(moto, bucket, threshold=5 * MiB)
    try:
        data = os.urandom(11 * MiB)
        await store.put("photos/4/source", data, "image/png")
        head = moto.head(bucket, "photos/4/source")
        assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
        assert head["Metadata"] == {"sha256": sha256(data)}
        assert head["ContentType"] == "image/png"

        stream = await store.open("photos/4/source")
        assert stream.size == len(data)  # known before the first byte is read
        sizes, got = [], bytearray()
        async for chunk in stream:
            sizes.append(len(chunk))
            got += chunk
        assert bytes(got) == data and max(sizes) <= CHUNK_SIZE and len(sizes) > 1
        assert await store.get("photos/4/source") == data

        # a stream closed half way (a client that went away) releases its connection
        async with await store.open("photos/4/source") as half:
            async for _ in half:
                break

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), MiB):
                yield data[start : start + MiB]

        # a multipart upload whose bytes are not the promised ones is aborted
        with pytest.raises(ChecksumMismatch):
            await store.put_stream(
                "photos/5/source",
                chunks(),
                size=len(data),
                content_type="image/png",
                sha256=sha256(b"not it"),
            )
        assert await store.stat("photos/5/source") is None

        async def uploads(s3: S3Client) -> int:
            return len((await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", []))

        assert moto.call(uploads) == 0
    finally:
        await store.close()


async def test_a_key_prefix_keeps_a_shared_bucket_apart(moto: MotoServer, bucket: str) -> None:
    store = S3MediaStore.from_url(moto.url(bucket, prefix="tenant-a/media"))
    try:
        await store.put("photos/1/source", b"abc", "image/jpeg")
        assert set(moto.objects(bucket)) == {"tenant-a/media/photos/1/source"}
        assert [i.key async for i in store.iter_objects()] == ["photos/1/source"]
        assert await store.delete_prefix("photos/1") == 1
    finally:
        await store.close()


async def test_ping_says_what_to_do_about_a_missing_bucket(moto: MotoServer) -> None:
    store = S3MediaStore.from_url(moto.url("no-such-bucket-here"))
    try:
        with pytest.raises(OSError, match="does not exist") as caught:
            await store.ping()
        assert "aws s3 mb s3://no-such-bucket-here" in str(caught.value)
        assert SECRET_KEY not in str(caught.value) and SECRET_KEY not in repr(store)
    finally:
        await store.close()


def test_urls_choose_the_backend_and_bad_ones_say_why(moto: MotoServer, tmp_path: Path) -> None:
    s3 = create_media_store(load_settings({}, data_dir=tmp_path, storage_url=moto.url("pics")))
    assert isinstance(s3, S3MediaStore)
    assert (s3.bucket, s3.endpoint_url, s3.region) == ("pics", moto.endpoint, REGION)
    local = create_media_store(load_settings({}, data_dir=tmp_path))
    assert isinstance(local, LocalMediaStore) and local.root == (tmp_path / "media").resolve()

    for url, message in [
        ("ftp://host/media", "file:///path/to/media or s3://bucket"),
        ("s3://Bad_Bucket?endpoint=http://127.0.0.1:1", "not an S3 bucket name"),
        ("s3://pics?endpoint=http://127.0.0.1:1&acess_key=x", "unknown parameter(s) acess_key"),
        ("s3://pics?access_key=x", "both access_key and secret_key"),
        ("s3://pics?endpoint=127.0.0.1:9000", "http:// or https://"),
        ("s3://pics?max_attempts=0", "max_attempts"),
    ]:
        with pytest.raises(SettingsError, match="PICSCALE_STORAGE_URL") as caught:
            create_media_store(load_settings({}, data_dir=tmp_path, storage_url=url))
        assert message in str(caught.value), (url, str(caught.value))


# -- picscale media migrate --------------------------------------------------------------


def migrate(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "picscale", "media", "migrate", "--data-dir", str(data_dir), *args],
        env=base_env(data_dir),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_migrate_copies_verifies_and_skips_what_is_there(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    files = {
        "photos/1/source": os.urandom(40_000),
        "photos/1/v1/original.jpg": image_bytes(300, 200),
        "photos/1/v1/thumb.jpg": image_bytes(32, 24),
        "photos/2/v3/large.webp": os.urandom(5000),
        # above the 8 MiB multipart threshold: goes up in two parts
        "photos/2/source": os.urandom(9 * MiB),
    }
    for key, data in files.items():
        (media / key).parent.mkdir(parents=True, exist_ok=True)
        (media / key).write_bytes(data)
    (media / "photos/1/.tmp-abandoned").write_bytes(b"a write that never finished")
    total = sum(len(d) for d in files.values())

    first = migrate(tmp_path, "--to", moto.url(bucket))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[5/5]" in first.stdout and "copied  photos/2/source" in first.stdout
    assert f"5 object(s), {total / 1e6:.1f} MB: copied 5" in first.stdout
    assert "failed 0" in first.stdout
    assert moto.objects(bucket) == files  # and not the temp file
    assert moto.head(bucket, "photos/2/source")["ETag"].strip('"').endswith("-2")
    assert moto.head(bucket, "photos/1/v1/original.jpg")["ContentType"] == "image/jpeg"
    assert moto.head(bucket, "photos/1/source")["Metadata"] == {
        "sha256": sha256(files["photos/1/source"])
    }

    # a second run (as after an interruption) finds everything there already
    second = migrate(tmp_path, "--to", moto.url(bucket), "--from", f"file://{media}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "copied 0 (0 B), already there 5" in second.stdout
    assert "skipped photos/2/source" in second.stdout

    # an object that differs at the destination (here: with no checksum kept, so it is
    # read to compare) is copied again; the others are not
    async def overwrite(s3: S3Client) -> None:
        await s3.put_object(Bucket=bucket, Key="photos/1/v1/thumb.jpg", Body=b"truncated!")

    moto.call(overwrite)
    third = migrate(tmp_path, "--to", moto.url(bucket))
    assert third.returncode == 0, third.stdout + third.stderr
    assert "copied 1" in third.stdout and "already there 4" in third.stdout
    assert moto.objects(bucket)["photos/1/v1/thumb.jpg"] == files["photos/1/v1/thumb.jpg"]


def test_migrate_stops_with_a_clear_message_when_the_bucket_is_missing(
    moto: MotoServer, tmp_path: Path
) -> None:
    (tmp_path / "media/photos/1").mkdir(parents=True)
    (tmp_path / "media/photos/1/source").write_bytes(b"abc")
    result = migrate(tmp_path, "--to", moto.url("not-created-yet"))
    assert result.returncode != 0
    assert "bucket 'not-created-yet' does not exist" in result.stderr
    assert "create it" in result.stderr and "or fix --to" in result.stderr
    bad = migrate(tmp_path, "--to", "s3://Nope!")
    assert bad.returncode == 2 and "--to" in bad.stderr and "bucket name" in bad.stderr


class CorruptingStore(S3MediaStore):
    """Stores something other than what it was given: what the read-back must catch."""

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        sha256: str,
    ) -> None:
        await super().put_stream(key, chunks, size=size, content_type=content_type, sha256=sha256)
        await self.put(key, b"bit rot", "application/octet-stream")


async def test_migrate_reports_an_object_that_does_not_read_back_the_same(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    source = LocalMediaStore(tmp_path)
    await source.put("photos/1/source", b"the real bytes", "image/jpeg")
    target = s3_store(moto, bucket, cls=CorruptingStore)
    try:
        seen: list[Progress] = []
        report = await migrate_media(source, target, progress=seen.append)
    finally:
        await target.close()
    assert not report.ok and report.copied == 0
    assert [key for key, _ in report.failed] == ["photos/1/source"]
    assert "read back 7 bytes" in report.failed[0][1]
    assert [(p.key, p.outcome) for p in seen] == [("photos/1/source", "failed")]


# -- the app on S3 -----------------------------------------------------------------------


def test_the_app_stores_and_serves_media_from_s3(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    with running_server(tmp_path, storage_url=moto.url(bucket)) as server:
        ready = server.client().get("/readyz").json()
        assert ready["checks"]["storage"] == "ok"
        client, _ = new_user(server)
        data = image_bytes(1600, 1200)
        photo = wait_ready(client, upload(client, data)["id"])
        objects = moto.objects(bucket, f"photos/{photo['id']}/")
        assert objects[f"photos/{photo['id']}/source"] == data
        for variant in ("original", "large", "thumb"):
            url = photo["urls"][variant]
            key = f"photos/{photo['id']}/v1/{variant}.jpg"
            assert url.endswith(f"/v1/{variant}.jpg"), url
            served = httpx.get(server.url + url)
            assert served.status_code == 200 and served.content == objects[key]
            assert moto.head(bucket, key)["ContentType"] == "image/jpeg"
        assert not [p for p in (tmp_path / "media").rglob("*") if p.is_file()]

        assert client.delete(f"/api/v1/photos/{photo['id']}").status_code == 204
        wait_until(
            lambda: not moto.objects(bucket, f"photos/{photo['id']}/"),
            what="the photo's objects to be deleted from the bucket",
        )
