"""The service's HTTP server (aiohttp): owns only the server's lifecycle, not its routes.

``stream/app.py`` builds the ``web.Application`` with each route module's routes and hands
it over.  It binds to loopback unless the config opens it.
"""

from __future__ import annotations

import logging
import os
import socket

from aiohttp import web

from stream.web.config import HttpConfig

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host`` now (the OS's pick), for a server started a moment later."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class HttpBindError(RuntimeError):
    """The configured HTTP address cannot be listened on (in use, not this machine's, not allowed)."""


class HttpServer:
    def __init__(self, cfg: HttpConfig, app: web.Application) -> None:
        self.cfg = cfg
        self.app = app
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise HttpBindError(
                f"http: cannot listen on {self.cfg.host}:{self.cfg.port} ({os.strerror(exc.errno) if exc.errno else exc}); another analyzer may hold the port: "
                f"stop it or set http.port"
            ) from None
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001 - the bound port for port 0
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        log.info("HTTP listening on http://%s:%d", self.cfg.host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
