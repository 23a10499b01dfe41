"""``s3://bucket``: media in an S3 bucket (AWS S3 or any S3-compatible server).

URL: ``s3://BUCKET[/PREFIX]?endpoint=http://host:9000&region=us-east-1`` with optional
``access_key``/``secret_key`` (else botocore's usual chain: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws``, instance
roles), ``addressing_style`` (``path``, the default with an ``endpoint``, ``virtual`` or
``auto``) and ``max_attempts``. Without ``endpoint`` it is AWS itself.

Every object carries the SHA-256 of its bytes as ``x-amz-meta-sha256``: what
``picscale media migrate`` compares to skip what is already there. A single-part put
also sends ``Content-MD5`` and ``x-amz-checksum-sha256`` (the server rejects a body
that does not match) and checks the returned ETag against the MD5; larger objects go
up as multipart uploads with ``Content-MD5`` on each part.

The aiobotocore client is created on first use, in the running event loop (never at
import or construction time), and released by ``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from picscale.settings import SettingsError
from picscale.tiers.storage.port import (
    CHUNK_SIZE,
    ChecksumMismatch,
    MediaInfo,
    MediaNotFound,
    MediaStream,
    check_key,
    is_media_key,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

# objects above this go up in parts of PART_SIZE (S3 wants parts of 5 MiB or more)
MULTIPART_THRESHOLD = 8 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024
DELETE_BATCH = 1000  # the most DeleteObjects takes at once
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
MAX_ATTEMPTS = 4  # botocore "standard" retries: 1 try + 3 retries, with jittered backoff
MAX_POOL_CONNECTIONS = 20
_HASH_IN_THREAD = 256 * 1024

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PLAIN_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_PARAMS = frozenset(
    {"endpoint", "region", "access_key", "secret_key", "addressing_style", "max_attempts"}
)


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = error.get("Code")
        return str(code) if code is not None else None
    return None


async def _digest(name: str, data: bytes) -> bytes:
    """A digest of ``data``; a large one in a thread (hashlib lets go of the GIL), so
    that hashing a 20 MB upload does not hold up the event loop."""
    if len(data) < _HASH_IN_THREAD:
        return hashlib.new(name, data, usedforsecurity=False).digest()
    return await asyncio.to_thread(lambda: hashlib.new(name, data, usedforsecurity=False).digest())


async def _md5(data: bytes) -> tuple[str, str]:
    """(hex, base64) MD5 of ``data``: the ETag S3 returns, and the Content-MD5 it checks."""
    digest = await _digest("md5", data)
    return digest.hex(), base64.b64encode(digest).decode()


def _check_etag(
    key: str, response: Mapping[str, object], md5_hex: str, what: str = "object"
) -> None:
    """An unencrypted (or SSE-S3) single-part object's ETag is the MD5 of its bytes.

    Objects under SSE-KMS or SSE-C, and servers whose ETags are not MD5s, prove nothing
    this way; Content-MD5, which the server checks itself, covers them.
    """
    if response.get("SSECustomerAlgorithm") or str(
        response.get("ServerSideEncryption", "")
    ).startswith("aws:kms"):
        return
    match = _PLAIN_ETAG.match(str(response.get("ETag", "")))
    if match is not None and match.group(1) != md5_hex:
        raise ChecksumMismatch(
            f"{key}: S3 stored a {what} with MD5 {match.group(1)}, the bytes sent have {md5_hex}"
        )


class S3MediaStore:
    """Media in one bucket (under an optional key prefix) of an S3 API."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        addressing_style: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        setting: str = "PICSCALE_STORAGE_URL",
    ) -> None:
        if part_size < MIN_PART_SIZE or multipart_threshold < part_size:
            raise ValueError("S3 parts are 5 MiB or more, and the threshold at least one part")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._access_key = access_key
        self._secret_key = secret_key
        self._addressing_style = addressing_style or ("path" if endpoint_url else "auto")
        self._max_attempts = max_attempts
        self._setting = setting  # what messages tell the user to fix
        self._client: S3Client | None = None
        self._stack: AsyncExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:  # never the secret key
        where = self.endpoint_url or "AWS"
        return f"S3MediaStore(s3://{self.bucket}/{self.prefix} at {where})"

    @classmethod
    def from_url(cls, url: str, *, setting: str = "PICSCALE_STORAGE_URL") -> S3MediaStore:
        parts = urlsplit(url)
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise SettingsError(
                f"{setting}: {bucket!r} is not an S3 bucket name (3-63 characters: "
                "lowercase letters, digits, dots and hyphens); the form is "
                "s3://bucket?endpoint=http://host:9000&region=us-east-1"
            )
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted(set(query) - _PARAMS)
        if unknown:
            raise SettingsError(
                f"{setting}: unknown parameter(s) {', '.join(unknown)} in the s3:// URL; "
                f"known: {', '.join(sorted(_PARAMS))}"
            )
        params = {name: values[-1] for name, values in query.items()}
        endpoint = params.get("endpoint") or None
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise SettingsError(
                f"{setting}: endpoint={endpoint!r} should be an http:// or https:// URL"
            )
        if ("access_key" in params) != ("secret_key" in params):
            raise SettingsError(f"{setting}: give both access_key and secret_key, or neither")
        style = params.get("addressing_style") or None
        if style not in (None, "path", "virtual", "auto"):
            raise SettingsError(f"{setting}: addressing_style is path, virtual or auto")
        try:
            attempts = int(params.get("max_attempts") or MAX_ATTEMPTS)
        except ValueError:
            attempts = 0
        if not 1 <= attempts <= 20:
            raise SettingsError(f"{setting}: max_attempts is a number from 1 to 20")
        prefix = unquote(parts.path).strip("/")
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                raise SettingsError(
                    f"{setting}: the key prefix {prefix!r} should be lowercase letters, "
                    "digits, '.', '_', '-' and '/'"
                ) from None
        return cls(
            bucket,
            prefix=prefix,
            endpoint_url=endpoint,
            region=params.get("region") or None,
            access_key=params.get("access_key") or None,
            secret_key=params.get("secret_key") or None,
            addressing_style=style,
            max_attempts=attempts,
            setting=setting,
        )

    # -- the client ----------------------------------------------------------------------

    async def _s3(self) -> S3Client:
        loop = asyncio.get_running_loop()
        if self._client is not None:
            if self._loop is not loop:
                raise RuntimeError(
                    f"{self!r} was opened in another event loop: close() it there first"
                )
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                config = AioConfig(
                    retries={"mode": "standard", "max_attempts": self._max_attempts},
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=READ_TIMEOUT_SECONDS,
                    max_pool_connections=MAX_POOL_CONNECTIONS,
                    s3={"addressing_style": self._addressing_style},
                    # the checksums are ours (Content-MD5, SHA-256): no CRC32 trailers on
                    # top, which S3-compatible servers do not all understand
                    request_checksum_calculation="when_required",
                )
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret_key,
                        config=config,
                    )
                )
                self._stack, self._loop = stack, loop
            return self._client

    async def close(self) -> None:
        stack, self._stack, self._client, self._loop = self._stack, None, None, None
        self._lock = None
        if stack is not None:
            await stack.aclose()

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # -- the port ------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        object_key = self._key(key)
        sha256 = (await _digest("sha256", data)).hex()
        if len(data) <= self.multipart_threshold:
            await self._put_single(key, object_key, data, content_type, sha256)
            return

        async def parts() -> AsyncGenerator[bytes, None]:
            view = memoryview(data)
            for start in range(0, len(data), self.part_size):
                yield bytes(view[start : start + self.part_size])

        await self._put_multipart(key, object_key, parts(), content_type, sha256, len(data))

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        sha256: str,
    ) -> None:
        object_key = self._key(key)
        if size <= self.multipart_threshold:
            data = b"".join([chunk async for chunk in chunks])
            if len(data) != size or (await _digest("sha256", data)).hex() != sha256:
                raise ChecksumMismatch(
                    f"{key}: the bytes read are not the {size} bytes with SHA-256 {sha256}"
                )
            await self._put_single(key, object_key, data, content_type, sha256)
            return
        await self._put_multipart(
            key, object_key, self._rechunk(chunks), content_type, sha256, size
        )

    async def _rechunk(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        """Chunks of any size in, parts of ``part_size`` out (the last one shorter)."""
        buffer = bytearray()
        async for chunk in chunks:
            buffer += chunk
            while len(buffer) >= self.part_size:
                yield bytes(buffer[: self.part_size])
                del buffer[: self.part_size]
        if buffer:
            yield bytes(buffer)

    async def _put_single(
        self, key: str, object_key: str, data: bytes, content_type: str, sha256: str
    ) -> None:
        s3 = await self._s3()
        md5_hex, md5_b64 = await _md5(data)
        response = await s3.put_object(
            Bucket=self.bucket,
            Key=object_key,
            Body=data,
            ContentType=content_type,
            ContentMD5=md5_b64,
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
            Metadata={"sha256": sha256},
        )
        _check_etag(key, response, md5_hex)

    async def _put_multipart(
        self,
        key: str,
        object_key: str,
        parts: AsyncIterable[bytes],
        content_type: str,
        sha256: str,
        size: int,
    ) -> None:
        s3 = await self._s3()
        upload = await s3.create_multipart_upload(
            Bucket=self.bucket,
            Key=object_key,
            ContentType=content_type,
            Metadata={"sha256": sha256},
        )
        upload_id = upload["UploadId"]
        done: list[CompletedPartTypeDef] = []
        hashing = hashlib.sha256()
        sent = 0
        try:
            async for part in parts:
                await asyncio.to_thread(hashing.update, part)
                sent += len(part)
                md5_hex, md5_b64 = await _md5(part)
                number = len(done) + 1
                response = await s3.upload_part(
                    Bucket=self.bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                    ContentMD5=md5_b64,
                )
                _check_etag(key, response, md5_hex, what=f"part {number}")
                done.append({"PartNumber": number, "ETag": response["ETag"]})
            if sent != size or hashing.hexdigest() != sha256:
                raise ChecksumMismatch(
                    f"{key}: read {sent} bytes with SHA-256 {hashing.hexdigest()}, "
                    f"expected {size} bytes with SHA-256 {sha256}"
                )
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
        except BaseException:
            # the parts of an abandoned upload cost storage until it is aborted; a failed
            # abort must not hide why the upload failed
            with suppress(Exception):
                await asyncio.shield(
                    s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=object_key, UploadId=upload_id
                    )
                )
            raise

    async def get(self, key: str) -> bytes:
        async with await self.open(key) as stream:
            return await stream.read()

    async def open(self, key: str) -> MediaStream:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _error_code(exc) in _NOT_FOUND:
                raise MediaNotFound(key) from None
            raise
        body = response["Body"]
        info = MediaInfo(
            key,
            int(response.get("ContentLength", 0)),
            response.get("Metadata", {}).get("sha256"),
            response.get("ContentType"),
        )

        async def chunks() -> AsyncGenerator[bytes, None]:
            async for chunk in body.iter_chunks(CHUNK_SIZE):
                yield chunk

        async def close() -> None:
            await body.__aexit__(None, None, None)

        return MediaStream(info, chunks(), close)

    async def stat(self, key: str) -> MediaInfo | None:
        s3 = await self._s3()
        try:
            response = await s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _error_code(exc) in _NOT_FOUND:
                return None
            raise
        return MediaInfo(
            key,
            int(response.get("ContentLength", 0)),
            response.get("Metadata", {}).get("sha256"),
            response.get("ContentType"),
        )

    async def iter_objects(self, prefix: str = "") -> AsyncIterator[MediaInfo]:
        s3 = await self._s3()
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if is_media_key(key):  # else not media (another tool's object)
                    yield MediaInfo(key, int(item.get("Size", 0)))

    async def delete_prefix(self, prefix: str) -> int:
        s3 = await self._s3()
        paginator = s3.get_paginator("list_objects_v2")
        deleted = 0
        batch: list[str] = []

        async def flush() -> None:
            nonlocal deleted
            response = await s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise OSError(
                    f"S3 kept {len(errors)} of {len(batch)} objects under {prefix}/: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )
            deleted += len(batch)
            batch.clear()

        # a page continues after the last key listed, so deleting listed keys as we go
        # does not shift the pages
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/"):
            for item in page.get("Contents", []):
                batch.append(item["Key"])
                if len(batch) >= DELETE_BATCH:
                    await flush()
        if batch:
            await flush()
        return deleted

    async def ping(self) -> None:
        from botocore.exceptions import NoCredentialsError

        s3 = await self._s3()
        try:
            await s3.head_bucket(Bucket=self.bucket)
        except NoCredentialsError as exc:
            raise OSError(
                f"no S3 credentials for bucket {self.bucket!r}: put access_key and secret_key "
                f"in {self._setting}, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from exc
        except Exception as exc:
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                hint = f" --endpoint-url {self.endpoint_url}" if self.endpoint_url else ""
                raise OSError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}: "
                    f"create it (aws s3 mb s3://{self.bucket}{hint}) or fix {self._setting}"
                ) from exc
            if code in ("403", "AccessDenied", "Forbidden"):
                raise OSError(
                    f"access to bucket {self.bucket!r} is denied: check the credentials "
                    f"(access_key/secret_key in {self._setting}, or AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY) and the bucket's policy"
                ) from exc
            if code is None:
                raise OSError(
                    f"cannot reach S3 at {self.endpoint_url or 'AWS'} for bucket "
                    f"{self.bucket!r}: {type(exc).__name__}: {exc}"
                ) from exc
            raise
