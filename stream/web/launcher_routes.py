"""The per-GPU launcher's own HTTP: one address for the box, gathered from each analyzer process.

With ``engine.process_per_gpu`` every GPU's process serves its own pages on ``http.port`` + 1 + its
index; the launcher keeps ``http.port`` and answers there for all of them, so a container health
check, a Prometheus scrape or an operator's bookmark keeps meaning the whole box:

* ``GET /health``: every process's ``/health``; 200 only when every one answers 200. A process that
  is starting or being restarted does not answer, and is named with its restarts so far.
* ``GET /health/live``: 200 while the launcher runs (it restarts its processes itself).
* ``GET /metrics``: every process's metrics with a ``process`` label (``gpu0``...), plus
  ``deepfake_launcher_process_up`` and ``deepfake_launcher_process_restarts_total`` per process.
* ``GET /``: a page linking each process's dashboard.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

PROBE_TIMEOUT_S = 5.0
PROCESS_LABEL = "process"


@dataclass(frozen=True)
class ProcessView:
    """What the launcher knows of one analyzer process: its name, GPU, port and how often it was started."""

    instance: str
    visible: str
    port: int
    starts: int

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)


def add_routes(app: web.Application, processes: Callable[[], Sequence[ProcessView]], probe_host: str) -> None:
    """The launcher's routes; ``processes`` lists the children now, ``probe_host`` is where they listen."""
    host = f"[{probe_host}]" if ":" in probe_host else probe_host

    async def fetch_all(path: str) -> tuple[list[ProcessView], list[tuple[int, str] | BaseException]]:
        views = list(processes())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as session:
            answers = await asyncio.gather(*(_get(session, f"http://{host}:{view.port}{path}") for view in views), return_exceptions=True)
        return views, answers

    async def health(_: web.Request) -> web.Response:
        views, answers = await fetch_all("/health")
        reports = [_health_report(view, answer) for view, answer in zip(views, answers, strict=True)]
        ok = bool(reports) and all(report["ok"] for report in reports)
        return web.json_response({"ok": ok, "processes": reports}, status=200 if ok else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "processes": len(processes())})

    async def metrics(_: web.Request) -> web.Response:
        views, answers = await fetch_all("/metrics")
        texts = [(view, answer[1] if not isinstance(answer, BaseException) and answer[0] == 200 else None) for view, answer in zip(views, answers, strict=True)]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_MergedMetrics(texts))
        return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")

    async def index(request: web.Request) -> web.Response:
        name = request.url.host or "127.0.0.1"
        rows = "".join(
            f'<tr><td>{html.escape(v.instance)}</td><td>{html.escape(v.visible)}</td>'
            f'<td><a href="{html.escape(str(request.url.with_host(name).with_port(v.port).with_path("/")))}">:{v.port}</a></td><td>{v.restarts}</td></tr>'
            for v in processes()
        )
        page = (
            "<!doctype html><meta charset=utf-8><title>deepfake-stream: a process per GPU</title>"
            "<h1>deepfake-stream: a process per GPU</h1><p>Each process has its own dashboard; "
            '<a href="/health">/health</a> and <a href="/metrics">/metrics</a> here cover them all.</p>'
            f"<table><tr><th>process</th><th>GPU</th><th>dashboard</th><th>restarts</th></tr>{rows}</table>"
        )
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


def _health_report(view: ProcessView, answer: tuple[int, str] | BaseException) -> dict[str, object]:
    report: dict[str, object] = {"instance": view.instance, "gpu": view.visible, "port": view.port, "restarts": view.restarts}
    if isinstance(answer, BaseException):
        state = "starting" if view.starts <= 1 else "restarting"
        report.update(ok=False, status=None, problems=[f"not answering ({state}?): {type(answer).__name__}"])
        return report
    status, text = answer
    report.update(ok=status == 200, status=status)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    report["problems"] = body.get("problems", []) if isinstance(body, dict) else []
    return report


class _MergedMetrics:
    """Every process's metric families as one exposition, each sample labelled with its process."""

    def __init__(self, texts: Iterable[tuple[ProcessView, str | None]]) -> None:
        self.texts = list(texts)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("deepfake_launcher_process_up", "1 when the process answered /metrics just now", labels=[PROCESS_LABEL])
        restarts = CounterMetricFamily("deepfake_launcher_process_restarts", "Times the launcher started the process again", labels=[PROCESS_LABEL])
        merged: dict[str, Metric] = {}
        for view, text in self.texts:
            up.add_metric([view.instance], 0.0 if text is None else 1.0)
            restarts.add_metric([view.instance], float(view.restarts))
            for family in text_string_to_metric_families(text or ""):
                target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                target.samples += [sample._replace(labels={**sample.labels, PROCESS_LABEL: view.instance}) for sample in family.samples]
        yield up
        yield restarts
        yield from merged.values()
