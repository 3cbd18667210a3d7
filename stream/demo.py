"""``deepfake-stream demo``: the service on the demo clip with no set-up at all.

What it does that ``run`` does not:

* MQTT: starts an embedded broker (amqtt, in this process, on loopback) unless
  the config given with ``--config`` names a broker (``mqtt.host``) that answers,
  or ``--broker config`` says to use the configured one regardless.
* Weights: uses the configured checkpoints that exist; with none (a fresh machine,
  before ``deepfake-stream weights download``) a randomly initialised B0 with a
  loud warning, at a reduced input size on CPU so two cores keep up.
* A live terminal table (rich) of the streams, and one final ``demo summary:``
  line of JSON counts on stdout that scripts and tests can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stream.config import AppConfig, StreamConfig
from stream.outputs.publisher import Publisher
from stream.sources.base import StreamState
from stream.web.server import free_port

if TYPE_CHECKING:  # the demo's heavy parts (torch through the engine) load when it runs, not when it is imported
    from detector.engine_pool import Engine
    from stream.app import App
    from stream.registry import StreamRegistry

log = logging.getLogger(__name__)

BrokerChoice = Literal["embedded", "config"]
DEMO_STREAM = {"name": "demo", "url": "demo:", "sample_fps": 2.0}
CPU_FALLBACK_INPUT_SIZE = 160  # B0 at 160 px + MTCNN keeps 2 samples/s on 2 CPU cores
DEFAULT_HTTP_PORT = 8080
SUMMARY_PREFIX = "demo summary: "
BROKER_PREFIX = "demo MQTT broker: "
RANDOM_WEIGHTS_WARNING = (
    "NO CLASSIFIER WEIGHTS FOUND ({missing}): the demo runs a RANDOMLY INITIALISED B0 classifier, "
    "so its scores and alerts are MEANINGLESS until you run `{command}`"
)
DEMO_CHECKPOINT = "final_999_DeepFakeClassifier_tf_efficientnet_b7_ns_0_23"  # the one the demo fetches when it can


@dataclass
class DemoSummary:
    """The counts printed on the final line (``demo summary: {json}``)."""

    streams: int
    samples_scored: int
    faces: int
    alerts: int
    scores_published: int
    alerts_delivered: int
    broker: str
    weights: str
    seconds: float
    snapshots_published: int = 0
    first_score_s: float | None = None  # from the command's start to the first score of any stream
    first_alert_s: float | None = None  # ... to the first alert episode's start
    first_alert_end_s: float | None = None  # ... to the end of an episode


@dataclass
class Milestones:
    """When the demo first showed each step of the path, in seconds since the command started."""

    launched: float  # time.monotonic() at the command's start
    first_score_s: float | None = None
    first_alert_s: float | None = None
    first_alert_end_s: float | None = None

    def observe(self, view: DemoView) -> None:
        now = round(time.monotonic() - self.launched, 1)
        pipelines = [h.pipeline for h in view.streams.handles()]
        if self.first_score_s is None and any(p.stats.samples_scored for p in pipelines):
            self.first_score_s = now
        if self.first_alert_s is None and any(p.stats.alerts for p in pipelines):
            self.first_alert_s = now
        if self.first_alert_s is not None and self.first_alert_end_s is None and any(p.stats.alerts and not p.alerts.active for p in pipelines):
            self.first_alert_end_s = now


# ------------------------------------------------------------------ decisions


def explicit(model: Any, *path: str) -> bool:
    """Whether the config file set ``path`` itself (pydantic's fields_set), rather than leaving the default."""
    for name in path:
        if name not in model.model_fields_set:
            return False
        model = getattr(model, name)
    return True


def demo_config(cfg: AppConfig, config_given: bool) -> AppConfig:
    """The demo clip as the only stream, unless a config given with ``--config`` lists streams."""
    if config_given and cfg.streams:
        return cfg
    return cfg.model_copy(update={"streams": [StreamConfig.model_validate(DEMO_STREAM)]})  # a copy keeps fields_set for explicit()


def reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def choose_broker(cfg: AppConfig, config_given: bool, requested: BrokerChoice | None) -> tuple[BrokerChoice, str]:
    """Embedded unless asked otherwise or a given config names a broker that answers; returns (choice, why)."""
    if requested is not None:
        return requested, f"--broker {requested}"
    if not (config_given and explicit(cfg, "mqtt", "host")):
        return "embedded", "no broker configured"
    if reachable(cfg.mqtt.host, cfg.mqtt.port):
        return "config", f"configured broker {cfg.mqtt.host}:{cfg.mqtt.port} answers"
    log.warning("configured MQTT broker %s:%d does not answer; using an embedded broker instead", cfg.mqtt.host, cfg.mqtt.port)
    return "embedded", "configured broker unreachable"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def demo_http_port(cfg: AppConfig) -> int:
    """The configured port if the config set one, else 8080 when free, else any free port."""
    if explicit(cfg, "http", "port"):
        return cfg.http.port
    return DEFAULT_HTTP_PORT if port_free(cfg.http.host, DEFAULT_HTTP_PORT) else 0


# -------------------------------------------------------------- embedded broker


class EmbeddedBroker:
    """An amqtt broker in this event loop, anonymous, on loopback only."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        if not log.isEnabledFor(logging.DEBUG):  # amqtt logs every connection at INFO
            for name in ("amqtt", "transitions"):
                logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        if self._broker is not None:
            # amqtt logs the cancellation of its own broadcast loop at ERROR while shutting down; at the
            # end of the demo that is not an error anyone can act on, so its shutdown is kept quiet.
            broker_log = logging.getLogger("amqtt.broker")
            level = broker_log.level
            broker_log.setLevel(logging.CRITICAL)
            try:
                with contextlib.suppress(Exception):  # a broker that fails to stop must not fail the demo
                    await asyncio.wait_for(self._broker.shutdown(), 10)
            finally:
                broker_log.setLevel(level)
            self._broker = None


# ------------------------------------------------------------------- weights


def demo_model(cfg: AppConfig, download: bool = True) -> Any:
    """What the demo runs: the configured checkpoints; else one of the winner's, downloaded now if the
    release can be reached (checked to load before it is kept); else the embedded model; else random weights."""
    from detector.classifier import load_classifier
    from detector.model_choice import ModelChoice, choose_model
    from detector.weights import DownloadError, download_checkpoints, release_url

    det = cfg.detector
    choice = choose_model(det, allow_random=True)
    if choice.kind == "configured" or not download or not choice.missing or choice.hint is None:
        return choice
    name = DEMO_CHECKPOINT if DEMO_CHECKPOINT in {p.name for p in choice.missing} else choice.missing[0].name
    log.info("demo: fetching one of the DFDC winner's checkpoints (%s, ~270 MB) from %s into %s", name, release_url(), det.weights_dir)
    try:
        [path] = download_checkpoints(det.weights_dir, [name], verify=lambda part: load_classifier(part, det.encoder) and None)
    except DownloadError as exc:
        log.warning("demo: could not fetch %s (%s); running %s", name, exc, "the embedded model" if choice.kind == "embedded" else "without trained weights")
        return choice
    return ModelChoice("configured", [path], det.encoder, det.input_size, f"1 checkpoint of {det.encoder} (fetched for the demo; all 7: {choice.hint})")


def build_engine(cfg: AppConfig, download: bool = True) -> tuple[Any, str]:
    """The inference engine for ``demo_model``; returns (engine, model label)."""
    from detector.build import build_engine as build_inference_engine
    from detector.faces import resolve_device

    det = cfg.detector
    choice = demo_model(cfg, download)
    device = resolve_device(det.device)
    input_size = choice.input_size
    if choice.random:
        missing = ", ".join(p.name for p in choice.missing[:2]) + (" ..." if len(choice.missing) > 2 else "")
        log.warning(RANDOM_WEIGHTS_WARNING.format(missing=missing, command=choice.hint or "deepfake-stream weights download"))
        if device.type == "cpu":
            input_size = min(input_size, CPU_FALLBACK_INPUT_SIZE)
    elif choice.kind == "embedded":
        log.warning("demo: the DFDC winner's checkpoints are not here; running the %s. For the winner's ensemble: %s", choice.label.split(";")[0], choice.hint)
    if device.type == "cpu" and len(choice.paths) > 1:
        log.warning("%d-model ensemble on CPU: expect seconds per sample, not real time (a GPU, or fewer `detector.weights`)", len(choice.paths))
    log.info("demo classifier: %s on %s, input %d px", choice.label, device, input_size)
    engine = build_inference_engine(det, cfg.engine, choice=choice, input_size=input_size)
    return engine, choice.label


# --------------------------------------------------------------------- table


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class DemoView:
    """What the table reads: the streams, the publisher's counters and the engine's queue."""

    streams: StreamRegistry
    publisher: Publisher
    engine: Engine


def render(view: DemoView, header: str, started: float, duration_s: float | None) -> Group:
    """The live table: one row per stream, plus MQTT and engine counters."""
    table = Table(title="deepfake-stream demo", title_justify="left", expand=False)
    for column, justify in (("stream", "left"), ("state", "left"), ("score", "right"), ("fps in", "right"), ("scored", "right"),
                            ("faces", "right"), ("alerts", "right"), ("latency", "right"), ("detail", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for handle in view.streams.handles():
        stats = handle.pipeline.stats
        score_style = "bold red" if handle.pipeline.alerts.active else ""
        table.add_row(
            handle.name,
            Text(handle.state, style="green" if handle.state == StreamState.STREAMING else "yellow"),
            Text(_fmt(stats.last_score), style=score_style),
            _fmt(handle.source.stats.fps_in, 1),
            str(stats.samples_scored),
            str(stats.faces),
            Text(str(stats.alerts) + (" ACTIVE" if handle.pipeline.alerts.active else ""), style=score_style),
            "-" if stats.last_latency_s is None else f"{stats.last_latency_s * 1000:.0f} ms",
            (handle.detail or "")[:40],
        )
    publisher = view.publisher
    elapsed = time.monotonic() - started
    left = "" if duration_s is None else f" / {duration_s:.0f} s"
    footer = (
        f"MQTT {'connected' if publisher.connected else 'DISCONNECTED'}"
        f" · scores sent {publisher.scores_published} · alerts delivered {publisher.alerts_delivered}"
        f" · engine queue {view.engine.queue_depth()} · {elapsed:.0f} s{left} · Ctrl-C stops"
    )
    return Group(Text(header), table, Text(footer, style="dim"))


@contextlib.contextmanager
def logs_above(live: Live) -> Iterator[None]:
    """Route our log handler through the Live display's stderr proxy so lines print above the table."""
    handler = next((h for h in logging.getLogger().handlers if h.get_name() == "deepfake-stream"), None)
    if handler is None or not isinstance(handler, logging.StreamHandler) or not live.console.is_terminal:
        yield
        return
    previous = handler.setStream(sys.stderr)
    try:
        yield
    finally:
        if previous is not None:
            handler.setStream(previous)


# ----------------------------------------------------------------------- run


async def run_demo(
    cfg: AppConfig, duration_s: float | None, broker_choice: BrokerChoice, console: Console | None = None, download: bool = True, launched: float | None = None
) -> DemoSummary:
    """Broker (maybe), service, live table until ``duration_s`` or a signal; returns the summary.

    The model stack (torch, torchvision, timm: most of the start-up on a small machine) loads in a
    thread from the first moment, while the broker starts and the demo clip is built.
    """
    from stream.sources.factory import prepare_demo_media

    milestones = Milestones(launched if launched is not None else time.monotonic())
    loading = asyncio.create_task(asyncio.to_thread(build_engine, cfg, download), name="demo-model")
    media = asyncio.create_task(asyncio.to_thread(prepare_demo_media, cfg.streams), name="demo-media")
    console = console or _console()
    broker: EmbeddedBroker | None = None
    try:
        if cfg.mqtt.enabled and broker_choice == "embedded":
            broker = EmbeddedBroker("127.0.0.1", cfg.mqtt.port if explicit(cfg, "mqtt", "port") else 0)
            await broker.start()
            cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"host": broker.host, "port": broker.port, "username": None, "password": None, "tls": None})})
        broker_label = "disabled" if not cfg.mqtt.enabled else f"{'embedded' if broker else 'configured'} mqtt://{cfg.mqtt.host}:{cfg.mqtt.port}"
        cfg = cfg.model_copy(update={"http": cfg.http.model_copy(update={"port": demo_http_port(cfg)})})
        print(f"{BROKER_PREFIX}{broker_label} (topics {cfg.mqtt.topic_prefix}/#)", flush=True)
        engine, weights_label = await loading
        await media
    except BaseException:
        for task in (loading, media):
            with contextlib.suppress(BaseException):
                await task  # a thread cannot be cancelled: let it finish, keep its error out of the log
        if broker is not None:
            await broker.stop()
        raise
    from stream.app import App, stop_on_signals

    app = App(cfg, engine=engine)
    stop_on_signals(app)
    started = time.monotonic()
    try:
        service = await app.start()
        assert app.publisher is not None
        view = DemoView(service, app.publisher, engine)
        http = f"http://{cfg.http.host}:{app.http.port}" if app.http is not None else "(HTTP off)"
        header = f"MQTT {broker_label} · {http}/health · {http}/metrics · weights: {weights_label}"
        log.info("demo running: %s", header)
        await _show(app, view, header, started, duration_s, console, milestones)
    finally:
        await app.stop()
        if broker is not None:
            await broker.stop()
    return _summary(view, broker_label, weights_label, time.monotonic() - started, milestones)


def _console() -> Console:
    """stdout; wider than rich's 80 columns when it is a pipe or file, so rows and the header stay whole."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


async def _show(app: App, view: DemoView, header: str, started: float, duration_s: float | None, console: Console, milestones: Milestones) -> None:
    waiter = asyncio.create_task(app.wait(duration_s), name="demo-wait")
    with Live(render(view, header, started, duration_s), console=console, refresh_per_second=2, transient=False) as live, logs_above(live):
        while not waiter.done():
            milestones.observe(view)
            live.update(render(view, header, started, duration_s))
            await asyncio.wait({waiter}, timeout=0.25)
        live.update(render(view, header, started, duration_s))
    if not console.is_terminal:
        console.line()  # Live ends its last frame with a newline only on a terminal


def _summary(view: DemoView, broker_label: str, weights_label: str, seconds: float, milestones: Milestones) -> DemoSummary:
    stats = [h.pipeline.stats for h in view.streams.handles()]
    publisher = view.publisher
    return DemoSummary(
        streams=len(stats),
        samples_scored=sum(s.samples_scored for s in stats),
        faces=sum(s.faces for s in stats),
        alerts=sum(s.alerts for s in stats),
        scores_published=publisher.scores_published,
        alerts_delivered=publisher.alerts_delivered,
        broker=broker_label,
        weights=weights_label,
        seconds=round(seconds, 1),
        snapshots_published=publisher.snapshots_published,
        first_score_s=milestones.first_score_s,
        first_alert_s=milestones.first_alert_s,
        first_alert_end_s=milestones.first_alert_end_s,
    )





def main(cfg: AppConfig, config_given: bool, duration_s: float | None, broker: BrokerChoice | None, download: bool = True, launched: float | None = None) -> int:
    """Entry point of ``deepfake-stream demo``; bad checkpoints are one line, exit 2."""
    from detector.errors import CheckpointError

    cfg = demo_config(cfg, config_given)
    choice, why = choose_broker(cfg, config_given, broker)
    log.info("demo MQTT: %s broker (%s)", choice, why)
    try:
        summary = asyncio.run(run_demo(cfg, duration_s, choice, download=download, launched=launched))
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    print(SUMMARY_PREFIX + json.dumps(asdict(summary)), flush=True)
    return 0


def write_clip(path: Path) -> Path:
    """Copy the demo clip to ``path`` (the compose file's RTSP re-publisher streams it)."""
    import shutil

    from stream.demo_media import demo_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo_clip(), path)
    return path
