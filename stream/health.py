"""/health and /metrics (filled in by the operations work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from stream.service import Service


def add_routes(app: web.Application, service: Service) -> None:
    """Register this module's routes."""
