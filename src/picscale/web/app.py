"""The composition root: settings in, a Litestar app out. Nothing happens at import."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, cast

import structlog
from litestar import Litestar
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.template.config import TemplateConfig
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)

from picscale import __version__
from picscale.domain.errors import DomainError
from picscale.imaging import configure_vips
from picscale.observability.logging import configure_logging
from picscale.observability.metrics import Metrics
from picscale.services import Services, build_services
from picscale.settings import Settings, load_settings
from picscale.web.api import api_router
from picscale.web.assets import StaticAssets
from picscale.web.auth import resolve_user
from picscale.web.errors import handle_exception
from picscale.web.media import MediaController
from picscale.web.middleware import RequestContext
from picscale.web.ops import OpsController
from picscale.web.pages import pages_router
from picscale.web.pages.rendering import PageContext
from picscale.web.security import SecurityHeaders
from picscale.web.shared import MediaUrls

log = structlog.get_logger(__name__)


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("picscale.web").joinpath(name)))


class _Litestar(Litestar):
    """Litestar, answering HEAD as GET without the body (RFC 9110: a server that has GET
    has HEAD); Litestar's GET routes alone would answer HEAD with 405. Every response
    gets the security headers here, where even a request that matched no route passes
    (the app's middleware sees only routed requests)."""

    def __init__(self, *, security_headers: SecurityHeaders, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.security_headers = security_headers

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        http = cast("HTTPScope", scope)
        if scope["type"] != ScopeType.HTTP:
            await super().__call__(scope, receive, send)
            return
        secured = _secured(cast("Send", send), http["path"], self.security_headers)
        if http["method"] == "HEAD":
            http["method"] = "GET"
            secured = _headers_only(secured)
        await super().__call__(http, receive, secured)


def _secured(send: Send, path: str, security: SecurityHeaders) -> Send:
    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            security.add(path, headers)
            message["headers"] = headers
        await send(message)

    return secured


def _headers_only(send: Send) -> Send:
    """The response's start (its Content-Length too), and an empty body at once."""
    ended = False

    async def headers_only(message: Message) -> None:
        nonlocal ended
        if message["type"] == "http.response.body":
            if ended:
                return
            ended = True
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return headers_only


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """Build the web app. Its tiers are created at startup, in the serving process."""
    holder: dict[str, Services] = {}
    metrics = services.metrics if services else Metrics()
    assets = StaticAssets(_package_dir("static"))

    def edge_base() -> str:
        # the edge's URL while it is healthy; '' (origin-relative URLs) otherwise
        built = holder.get("services")
        return built.edge.base_url() if built is not None else ""

    def static_url(name: str) -> str:
        return edge_base() + assets.path(name)

    urls = MediaUrls(edge_base)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        configure_vips(settings.worker.vips_threads)  # uploads are probed in this process
        built = services or build_services(settings, metrics)
        await built.start()  # the shard map, an id node number
        holder["services"] = built
        app.state.services = built
        log.info("web_started", database=built.shards.dialect, cache=settings.cache.url)
        flusher = asyncio.create_task(built.metrics.flush_every())
        stop_watching = asyncio.Event()
        watcher = asyncio.create_task(built.edge.watch(stop_watching))
        try:
            yield
        finally:
            stop_watching.set()
            flusher.cancel()
            await asyncio.gather(flusher, watcher, return_exceptions=True)
            if services is None:
                await built.close()

    def current_services() -> Services:
        return holder["services"]

    return _Litestar(
        security_headers=SecurityHeaders(settings.cdn.url),
        route_handlers=[
            api_router(settings, urls),
            pages_router(),
            MediaController,
            OpsController,
            assets.route(),
        ],
        state=State({"pages": PageContext.of(settings, urls)}),
        lifespan=[lifespan],
        before_request=resolve_user,
        middleware=[DefineMiddleware(RequestContext, services=current_services)],
        exception_handlers={
            HTTPException: handle_exception,
            DomainError: handle_exception,
            Exception: handle_exception,
        },
        template_config=TemplateConfig(
            directory=_package_dir("templates"),
            engine=JinjaTemplateEngine,
            engine_callback=lambda engine: engine.engine.globals.update(static_url=static_url),
        ),
        openapi_config=OpenAPIConfig(
            title="Picscale",
            version=__version__,
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
        request_max_body_size=settings.web.max_json_bytes,
        # logging is ours (JSON lines, configure_logging): Litestar's default config would
        # reset the root logger to its own text format, at INFO
        logging_config=None,
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """The granian factory target: settings from PICSCALE_* variables."""
    settings = load_settings()
    configure_logging(settings.log_level, process="web")
    return create_app(settings)
