"""The request context: an id on every log line, metrics by route, fresh cache view.

A plain ASGI middleware, outermost, so it also sees requests that fail routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import structlog
from litestar.enums import ScopeType
from litestar.types import Empty
from litestar.utils.scope.state import CONNECTION_STATE_KEY

from picscale.tiers.db.read_your_writes import current_scope, request_scope
from picscale.web.caching import PRIVATE
from picscale.web.errors import SHARD_MOVING_HEADER

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

    from picscale.services import Services

log = structlog.get_logger("picscale.http")

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# noisy endpoints polled by probes and scrapers are counted but not logged
_QUIET = ("/healthz", "/readyz", "/metrics")
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024
DRAIN_TIMEOUT_SECONDS = 10.0


def _incoming_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _VALID_ID.match(value):
            return value.decode()
    return os.urandom(16).hex()


async def _drain(receive: Receive, done: Callable[[], bool]) -> None:
    async def drain() -> None:
        received = 0
        while not done() and received < DRAIN_LIMIT_BYTES:
            message = await receive()
            received += len(cast("dict[str, bytes]", message).get("body", b""))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drain(), timeout=DRAIN_TIMEOUT_SECONDS)


# a write fenced by a shard move is replayed once the map names the shard's new cluster:
# its body is kept while the handler reads it, up to this much (an upload's limit)
REPLAY_BODY_LIMIT = 64 * 1024 * 1024
REPLAYS = 3
_MOVING = SHARD_MOVING_HEADER.encode()


class _Replayable:
    """The request's body as the handler read it, to hand the same body to a replay."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._kept: list[ReceiveMessage] = []
        self._size = 0
        self.complete = False  # the whole body was read
        self.too_big = False

    async def first(self) -> ReceiveMessage:
        message = await self._receive()
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > REPLAY_BODY_LIMIT:
                self.too_big = True
                self._kept.clear()
            elif not self.too_big:
                self._kept.append(message)
            if not message.get("more_body", False):
                self.complete = True
        return message

    def again(self) -> Receive:
        kept = list(self._kept)

        async def receive() -> ReceiveMessage:
            if kept:
                return kept.pop(0)
            return await self._receive()

        return receive

    @property
    def replayable(self) -> bool:
        return not self.too_big


# what the framework parsed from the request and keeps on its connection state: a replay
# parses the body again (the first attempt's upload files are closed by now)
_PARSED = ("body", "form", "json", "msgpack", "content_type")


def _for_replay(scope: Scope) -> Scope:
    """The scope again, with a copy of its connection state that has forgotten what was
    parsed (the rest, such as its exception handlers, is kept)."""
    state = dict(scope.get("state") or {})
    kept = state.get(CONNECTION_STATE_KEY)
    if kept is not None:
        fresh = copy.copy(kept)
        for name in _PARSED:
            if hasattr(fresh, name):
                setattr(fresh, name, Empty)
        state[CONNECTION_STATE_KEY] = fresh
    return cast("Scope", {**scope, "state": state})


class RequestContext:
    def __init__(self, app: ASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self.services = services  # resolved per request: the tiers start after the app

    async def _attempt(
        self, scope: Scope, receive: Receive, send: Send, *, last: bool
    ) -> int | None:
        """Run the request once. A response that says a shard move fenced its write is
        held back (None is returned otherwise): the map version it was routed by, for
        the caller to replay it once the map moved on; on the ``last`` attempt it goes
        out as the 503 it is, without the signal."""
        held = False
        moved_from: int | None = None

        async def send_or_hold(message: Message) -> None:
            nonlocal held, moved_from
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                signal = [v for k, v in headers if k.lower() == _MOVING]
                if signal:
                    message["headers"] = [(k, v) for k, v in headers if k.lower() != _MOVING]
                    if not last:
                        held, moved_from = True, int(signal[0] or b"0")
                        return
            if held:
                return
            await send(message)

        with request_scope():
            await self.app(scope, receive, send_or_hold)
        return moved_from if held else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope)
        method = scope["method"]
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        start = time.perf_counter()
        body_read = False

        async def receive_tracked() -> ReceiveMessage:
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                scope = current_scope()
                if scope is not None:
                    await scope.save_written()  # read-your-writes: before the client hears
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    # what a handler did not mark shareable is nobody's to keep
                    headers.append((b"cache-control", PRIVATE.encode()))
                message["headers"] = headers
            await send(message)

        try:
            # see the writes other processes made since this process last looked
            services = self.services()
            await services.cache.sync()
            body = _Replayable(receive_tracked)
            receive_now: Receive = body.first
            run_scope: Scope = scope
            for attempt in range(REPLAYS + 1):
                moved_from = await self._attempt(
                    run_scope,
                    receive_now,
                    send_with_id,
                    last=attempt == REPLAYS or not body.replayable,
                )
                if moved_from is None:
                    break
                # a move's fence: wait for the map that names the new cluster, then again
                await services.shards.wait_moved(moved_from)
                log.info("request_replayed_after_shard_move", attempt=attempt + 1)
                receive_now = body.again()
                run_scope = _for_replay(scope)
            if not body_read and status >= 400:
                # refused before its body was read (too large, not allowed): read the rest,
                # so the client gets our answer rather than a connection reset mid-send
                await _drain(receive_tracked, lambda: body_read)
        finally:
            elapsed = time.perf_counter() - start
            route = cast("dict[str, Any]", scope).get("path_template") or "unmatched"
            self.services().metrics.observe_request(method, route, status, elapsed)
            if not scope["path"].startswith(_QUIET):
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=route,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")
