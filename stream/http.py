"""The service's HTTP server (aiohttp): WHIP ingest, the operator page, /health and /metrics.

Each feature module contributes its routes through ``add_routes(app, service)``;
this module only owns the server's lifecycle.  It binds to loopback unless the
config opens it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from stream import health, webrtc

if TYPE_CHECKING:
    from stream.service import Service

log = logging.getLogger("deepfake_stream.http")

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service", object)  # type: ignore[arg-type]


def build_app(service: Service) -> web.Application:
    app = web.Application(client_max_size=max(service.cfg.whip.max_sdp_bytes, 1024) + 1024)
    app[SERVICE_KEY] = service
    health.add_routes(app, service)
    if service.cfg.whip.enabled:
        webrtc.add_routes(app, service)
    return app


class HttpServer:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        cfg = self.service.cfg.http
        self.runner = web.AppRunner(build_app(self.service), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.host, cfg.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001 - the bound port for port 0
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        log.info("HTTP listening on http://%s:%d", cfg.host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
