"""The per-GPU launcher's own ``/health``: one answer for the box, gathered from each analyzer process.

With ``engine.process_per_gpu`` every GPU's process serves its own ``/health`` on ``http.port`` +
1 + its index; the launcher keeps ``http.port`` and answers there for all of them, so a container
health check, a load balancer or an operator's one URL keeps meaning the whole box: 200 only when
every process answers 200. A process that is starting or being restarted does not answer, and is
named with its restarts so far.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ProcessView:
    """What the launcher knows of one analyzer process: its name, GPU, port and how often it was started."""

    instance: str
    visible: str
    port: int
    starts: int


def add_routes(app: web.Application, processes: Callable[[], Sequence[ProcessView]], probe_host: str) -> None:
    """``GET /health`` (every process's ``/health``, 200 only when all are 200) and ``GET /health/live`` (the launcher)."""

    async def health(_: web.Request) -> web.Response:
        views = list(processes())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as session:
            answers = await asyncio.gather(*(_probe(session, probe_host, view) for view in views))
        ok = bool(answers) and all(answer["ok"] for answer in answers)
        return web.json_response({"ok": ok, "processes": answers}, status=200 if ok else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "processes": len(processes())})

    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)


async def _probe(session: aiohttp.ClientSession, host: str, view: ProcessView) -> dict[str, object]:
    answer: dict[str, object] = {"instance": view.instance, "gpu": view.visible, "port": view.port, "restarts": max(view.starts - 1, 0)}
    try:
        async with session.get(f"http://{f'[{host}]' if ':' in host else host}:{view.port}/health") as response:
            body = await response.json(content_type=None)
            answer.update(ok=response.status == 200, status=response.status)
            if isinstance(body, dict):
                answer["problems"] = body.get("problems", [])
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        state = "starting" if view.starts <= 1 else "restarting"
        answer.update(ok=False, status=None, problems=[f"not answering ({state}?): {type(exc).__name__}"])
    return answer
