"""Server-sent events: the wire format, and a bounded set of listeners per route."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, payload: Any) -> bytes:
    """One event: its name and a compact JSON payload."""
    return f"event: {event}\ndata: {json.dumps(payload, default=str, separators=(',', ':'))}\n\n".encode()


class EventListeners:
    """The open event streams of one route: at most ``limit`` at once (the route refuses beyond), each freed when its client goes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    async def serve(
        self, request: web.Request, push: Callable[[web.StreamResponse], Awaitable[None]], headers: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        """Open the stream and run ``push`` on it until it returns or the client goes away."""
        response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
        self.count += 1
        try:
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):  # the page went away
                await push(response)
        finally:
            self.count -= 1
        return response
