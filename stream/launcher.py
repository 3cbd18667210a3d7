"""One analyzer process per GPU on one box (``engine.process_per_gpu``).

Why: one analyzer process drove two GPUs at 1.68x the samples of one (seventh session, two
H200s): its event loop and detection threads share one GIL, and that, not the GPUs, was busy.
A process per GPU shares nothing but the box.

The launcher is a small supervisor with no CUDA context of its own. It starts the MPS daemon
(``engine.mps``) once, so every child and its decoder workers share it, then runs
``deepfake-stream run`` once per GPU with that GPU alone visible (``CUDA_VISIBLE_DEVICES``) and a
config overlay: ``engine.devices: [cuda:0]``, shard ``index`` of ``count`` (the children split the
stream list evenly by sample rate, each working out the same split, ``stream/sharding.py``), MQTT
instance ``gpu<index>`` and ``http.port`` + 1 + index. The launcher keeps ``http.port`` for a
``/health`` of the whole box (``stream/web/launcher_routes.py``). A child that dies is started again
after a backoff; one that exits 2 (a config, checkpoint or MPS error, which a restart cannot mend)
stops them all. SIGINT and SIGTERM are passed on, and a child that does not stop in time is killed;
a child outliving the launcher (SIGKILL) gets SIGTERM from the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from stream.config import AppConfig
from stream.logs import LOG_TAG_ENV
from stream.sharding import ShardPlan
from stream.web import launcher_routes
from stream.web.config import HttpConfig
from stream.web.server import HttpBindError, HttpServer, free_port

log = logging.getLogger(__name__)

EXIT_FATAL = 2  # the CLI's exit for a bad config, checkpoint or MPS setting: the same child would fail again
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


class LaunchError(ValueError):
    """A per-GPU launch that cannot work; the message names the setting."""


@dataclass(frozen=True)
class GpuProcess:
    """One child: its index (its shard), the ``CUDA_VISIBLE_DEVICES`` entry it sees, its config overlay and HTTP port."""

    index: int
    visible: str
    instance: str
    overlay: dict[str, Any]
    port: int | None = None  # None: no HTTP server

    @property
    def label(self) -> str:
        return f"{self.instance} ({VISIBLE_ENV}={self.visible})"


def visible_entries(devices: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entry of each ``cuda``/``cuda:N`` in ``devices``, as this process numbers them
    (through its own ``CUDA_VISIBLE_DEVICES`` when that is set)."""
    inherited = environ.get(VISIBLE_ENV)
    entries = [entry.strip() for entry in inherited.split(",") if entry.strip()] if inherited is not None else None
    visible = []
    for device in devices:
        if not device.startswith("cuda"):
            raise LaunchError(f"engine.process_per_gpu runs one process per GPU, but engine.devices lists {device!r}")
        number = int(device.partition(":")[2] or 0)
        if entries is None:
            visible.append(str(number))
        elif number < len(entries):
            visible.append(entries[number])
        else:
            raise LaunchError(f"{device} is not among the {len(entries)} GPU(s) that {VISIBLE_ENV}={inherited!r} leaves visible")
    return visible


def check_launchable(cfg: AppConfig, shard: ShardPlan, count: int) -> None:
    """LaunchError when ``count`` processes cannot work here: this box is itself one shard of several (give each replica
    a GPU instead), or the HTTP ports would run past 65535."""
    if shard.spec.sharded:
        raise LaunchError(
            f"engine.process_per_gpu splits this box's streams over its GPUs, so the box cannot also be {shard.spec.describe()}: "
            f"run one replica per GPU instead, or leave sharding unset"
        )
    if cfg.http.enabled and cfg.http.port and cfg.http.port + count > 65535:
        raise LaunchError(f"http.port {cfg.http.port} + {count} (the launcher's, then one port per GPU) is beyond 65535")


def plan_processes(cfg: AppConfig, shard: ShardPlan, visible: Sequence[str], mps_mode: str) -> list[GpuProcess]:
    """A child per GPU in ``visible``, each with ``engine.mps: mps_mode``; LaunchError as ``check_launchable``."""
    count = len(visible)
    check_launchable(cfg, shard, count)
    processes = []
    for index, entry in enumerate(visible):
        instance = f"{cfg.sharding.instance}-gpu{index}" if cfg.sharding.instance else f"gpu{index}"
        overlay: dict[str, Any] = {
            "engine": {"devices": ["cuda:0"], "process_per_gpu": False, "mps": mps_mode},
            "sharding": {"index": index, "count": count, "instance": instance, "placement": "balanced"},
        }
        port = None
        if cfg.http.enabled:  # http.port 0: a free port each, found now, so the launcher's /health knows where to ask
            port = cfg.http.port + 1 + index if cfg.http.port else free_port(cfg.http.host)
            overlay["http"] = {"port": port}
        processes.append(GpuProcess(index, entry, instance, overlay, port))
    return processes


ChildCommand = Callable[[GpuProcess, Path, float | None], list[str]]


def cli_command(config_paths: Sequence[Path], log_level: str | None, log_json: bool) -> ChildCommand:
    """``deepfake-stream run`` with this process's configs, then the child's overlay (later files win)."""

    def command(process: GpuProcess, overlay: Path, duration_s: float | None) -> list[str]:
        argv = [sys.executable, "-m", "stream.cli"]
        argv += ["--log-level", log_level] if log_level else []
        argv += ["--log-json"] if log_json else []
        argv.append("run")
        for path in [*config_paths, overlay]:
            argv += ["--config", str(path)]
        argv += ["--duration", f"{duration_s:g}"] if duration_s is not None else []
        return argv

    return command


class Launcher:
    """Keeps one child per ``GpuProcess`` running until ``duration_s`` or ``request_stop``."""

    def __init__(
        self,
        processes: Sequence[GpuProcess],
        command: ChildCommand,
        environ: Mapping[str, str] | None = None,
        backoff_s: tuple[float, float] = (1.0, 30.0),
        steady_s: float = 60.0,
        stop_timeout_s: float = 30.0,
        http: HttpConfig | None = None,
    ) -> None:
        self.processes = list(processes)
        self.http_config = http  # the launcher's own /health, when given
        self.http: HttpServer | None = None
        self.command = command
        self.environ = dict(os.environ if environ is None else environ)
        self.backoff_s = backoff_s
        self.steady_s = steady_s  # a child that ran this long starts its next backoff from the first step again
        self.stop_timeout_s = stop_timeout_s
        self.starts: dict[int, int] = {p.index: 0 for p in self.processes}  # how often each child was started
        self.children: dict[int, asyncio.subprocess.Process] = {}  # the running (or last) process of each
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> int:
        """0 when every child ended as asked (the duration, a signal), ``EXIT_FATAL`` when one could not run."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        if duration_s is not None:  # a child that outlives its --duration (a stuck stop) is stopped like on a signal
            asyncio.get_running_loop().call_later(duration_s + self.stop_timeout_s, self.request_stop)
        if self.http_config is not None:
            app = web.Application()
            launcher_routes.add_routes(app, self.views, _probe_host(self.http_config.host))
            self.http = HttpServer(self.http_config, app)
            await self.http.start()
        try:
            with tempfile.TemporaryDirectory(prefix="deepfake-stream-gpus-") as directory:
                overlays = {}
                for process in self.processes:
                    overlays[process.index] = Path(directory) / f"gpu{process.index}.yaml"
                    overlays[process.index].write_text(yaml.safe_dump(process.overlay, sort_keys=False), encoding="utf-8")
                results = await asyncio.gather(*(self._keep(p, overlays[p.index], deadline) for p in self.processes))
        finally:
            if self.http is not None:
                await self.http.stop()
        return max(results, default=0)

    def views(self) -> list[launcher_routes.ProcessView]:
        """The children with an HTTP port, as the launcher's /health reports them."""
        return [launcher_routes.ProcessView(p.instance, p.visible, p.port, self.starts[p.index]) for p in self.processes if p.port is not None]

    async def _keep(self, process: GpuProcess, overlay: Path, deadline: float | None) -> int:
        first, most = self.backoff_s
        backoff = first
        env = {**self.environ, VISIBLE_ENV: process.visible, LOG_TAG_ENV: process.instance}
        while not self._stop.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return 0
            started = time.monotonic()
            try:
                child = await asyncio.create_subprocess_exec(*self.command(process, overlay, remaining), env=env, preexec_fn=functools.partial(_die_with_parent, os.getpid()))
            except OSError as exc:
                log.error("%s: cannot start the analyzer process: %s", process.label, exc, extra={"event": "launcher"})
                self.request_stop()
                return EXIT_FATAL
            self.starts[process.index] += 1
            self.children[process.index] = child
            log.info("%s: analyzer process %d started", process.label, child.pid, extra={"event": "launcher"})
            code = await self._wait(child)
            if self._stop.is_set():
                return 0
            if code == 0 and deadline is not None:
                return 0  # its --duration is over
            if code == EXIT_FATAL:
                log.error("%s exited %d (a config, checkpoint or MPS error; see its lines above): stopping the others", process.label, code, extra={"event": "launcher"})
                self.request_stop()
                return EXIT_FATAL
            if time.monotonic() - started >= self.steady_s:
                backoff = first
            log.warning("%s exited %s; starting it again in %g s", process.label, _describe_exit(code), backoff, extra={"event": "launcher"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, most)
        return 0

    async def _wait(self, child: asyncio.subprocess.Process) -> int:
        """The child's exit code; when a stop is asked first, it is passed on (SIGTERM, then SIGKILL after ``stop_timeout_s``)."""
        exited = asyncio.ensure_future(child.wait())
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.stop_timeout_s)
            except TimeoutError:
                log.warning("analyzer process %d did not stop in %g s: killed", child.pid, self.stop_timeout_s, extra={"event": "launcher"})
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        return await exited


PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent(launcher_pid: int) -> None:
    """In the child before it runs (Linux): SIGTERM it when the launcher dies, even by SIGKILL, so no analyzer is left
    holding a GPU and its streams without a supervisor (and a new launcher would start a second one)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher_pid:  # it died between the fork and the prctl
            os.kill(os.getpid(), signal.SIGTERM)


def _probe_host(bound: str) -> str:
    """Where the launcher reaches its children: they bind the same host; a wildcard is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bound, bound)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"on {signal.Signals(-code).name}"
    return f"with {code}"


def run_per_gpu(cfg: AppConfig, shard: ShardPlan, command: ChildCommand, duration_s: float | None = None) -> int | None:
    """Run a child per GPU of ``engine.devices``; None when there are fewer than two (the caller runs in-process).

    The GPUs are counted before MPS starts: counting creates no CUDA context, and the children are
    separate processes that start after the daemon.
    """
    from detector.build import engine_devices
    from detector.devices import resolve_device
    from detector.errors import DeviceError
    from stream.mps import MpsError, mode_for_children, start_mps

    devices = engine_devices(cfg.detector, cfg.engine)
    gpus = [d for d in devices if d.startswith("cuda")]
    try:
        # with several GPUs every device must be one: a `cpu` beside them is refused, not quietly left out
        visible = visible_entries(devices, os.environ) if len(gpus) > 1 else []
        for gpu in gpus:  # here, in one line, rather than once per child
            resolve_device(gpu)
    except (LaunchError, DeviceError) as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    if len(gpus) < 2:
        log.info("engine.process_per_gpu: %s, so one analyzer process", f"one GPU ({gpus[0]})" if gpus else "no GPU", extra={"event": "launcher"})
        return None
    try:
        check_launchable(cfg, shard, len(visible))  # before the daemon: nothing to undo when the settings cannot work
        mps = start_mps(cfg.engine.mps, cuda_wanted=True)
    except (LaunchError, MpsError) as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    processes = plan_processes(cfg, shard, visible, mode_for_children(cfg.engine.mps, mps))
    log.info("engine.process_per_gpu: %d analyzer processes, one per GPU", len(processes), extra={"event": "launcher"})
    launcher = Launcher(processes, command, http=cfg.http if cfg.http.enabled else None)
    try:
        return asyncio.run(_run_with_signals(launcher, duration_s))
    except HttpBindError as exc:  # before any child started
        log.error("%s", exc)
        return EXIT_FATAL
    finally:
        if mps is not None:  # last: its clients, the children, are gone
            mps.stop()


async def _run_with_signals(launcher: Launcher, duration_s: float | None) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, launcher.request_stop)
    return await launcher.run(duration_s)
