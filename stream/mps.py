"""CUDA MPS for this analyzer's own processes, so the engine and its decoder workers share the GPU side by side.

Each decoder worker process (``stream/sources/workers.py``) holds its own CUDA context. Without
MPS the GPU time-slices between contexts: the workers' small copies and colour conversions
(thousands a second at 150 streams) each cost a context switch that stalls the engine's kernels.
Under MPS every process is a client of one server context and their kernels run concurrently.
Measured on one H100 (``bench/results/h100-mps.json``, run 41, one machine): 150 paced 1080p
streams, p99 sample-to-score 1082 -> 844 ms and GPU busy 97 -> 82 %. One stream in a fresh process:
p50 25.4 and 26.2 ms under MPS (runs 42, 45), 29.7 ms without (run 41): other machines.

``engine.mps``: ``auto`` starts a private MPS control daemon (its pipe and log directories in a
fresh temporary directory, so it serves this analyzer alone) when ``nvidia-cuda-mps-control`` is
on PATH, then checks it with a probe process that creates a CUDA context, and that the daemon
started a server for it (CUDA quietly makes a context of its own when it cannot reach one); anything
that fails leaves the analyzer without MPS, with one warning naming why. ``on`` makes such a
failure an error; ``off`` never starts one. A daemon the operator already runs
(``CUDA_MPS_PIPE_DIRECTORY`` set) is used as it is. All of this must happen before this process
first touches CUDA: the pipe directory is read when a CUDA context is made, and the decoder
workers inherit it from the environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

MpsMode = Literal["auto", "on", "off"]
CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"

# a CUDA context through the driver API alone: no torch import, so the probe takes well under a second
PROBE = """
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    sys.exit(f"no CUDA driver ({exc})")
def check(result, call):
    if result != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(result, ctypes.byref(name))
        sys.exit(f"{call} failed: {(name.value or b'error %d' % result).decode()}")
check(cuda.cuInit(0), "cuInit")
device, context, memory = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
check(cuda.cuMemAlloc_v2(ctypes.byref(memory), 1 << 20), "cuMemAlloc")
"""


class MpsError(RuntimeError):
    """``engine.mps: on`` and MPS could not be set up; the message says why."""


@dataclass
class MpsDaemon:
    """A private MPS control daemon this process started (``stop`` ends it), or None fields for one in use already."""

    directory: Path | None
    control: str | None
    env: dict[str, str] = field(default_factory=dict)
    quitting: subprocess.Popen[bytes] | None = None  # the detached ``quit``, once stop() ran

    def stop(self) -> None:
        """Ask the daemon to quit and remove its directory, in a detached process; the environment is restored at once.

        Detached, because the daemon waits for its clients to finish before it quits, and this process stays one
        (its CUDA context) until it exits.
        """
        if self.quitting is not None or self.directory is None or self.control is None:
            return
        for name in (PIPE_ENV, LOG_ENV):
            if os.environ.get(name) == self.env.get(name):
                os.environ.pop(name, None)
        try:
            self.quitting = subprocess.Popen(
                ["sh", "-c", 'echo quit | "$0"; rm -rf -- "$1"', self.control, str(self.directory)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("MPS control daemon in %s was not asked to quit: %s", self.directory, exc)


def start_mps(mode: MpsMode, cuda_wanted: bool, probe: Sequence[str] | None = None, timeout_s: float = 30.0) -> MpsDaemon | None:
    """Set up MPS for this process and its children per ``mode``; None when it runs without (``auto``: reason logged).

    ``cuda_wanted``: the engine is to run on a GPU (MPS is nothing to a CPU engine). ``probe``: the
    command that must create a CUDA context through the daemon (default: ``PROBE`` with this Python).
    """
    if mode == "off" or not cuda_wanted:
        return None
    if os.environ.get(PIPE_ENV):
        log.info("MPS: using the daemon at %s=%s", PIPE_ENV, os.environ[PIPE_ENV], extra={"event": "mps"})
        return MpsDaemon(None, None)
    control = shutil.which(CONTROL)
    if control is None:
        missing = f"{CONTROL} is not on PATH (it comes with the NVIDIA driver's utilities)"
        if mode == "on":
            raise MpsError(missing)
        log.debug("MPS not used: %s", missing, extra={"event": "mps"})  # no NVIDIA tools here (a CPU box): nothing to say
        return None
    try:
        return _start_private(control, probe or [sys.executable, "-c", PROBE], timeout_s)
    except MpsError as exc:
        if mode == "on":
            raise
        log.warning("MPS not used, the engine and the decoder workers take turns on the GPU: %s", exc, extra={"event": "mps"})
        return None


def mode_for_children(mode: MpsMode, daemon: MpsDaemon | None) -> MpsMode:
    """The ``engine.mps`` for analyzer processes this one starts after ``start_mps(mode, ...)`` returned ``daemon``.

    With a daemon they find it through the inherited environment and use it as it is. Without one,
    ``auto`` already said why (or ``off`` was asked), so they run without MPS rather than each trying
    again and starting a private daemon of its own.
    """
    return mode if daemon is not None else "off"


def _start_private(control: str, probe: Sequence[str], timeout_s: float) -> MpsDaemon:
    try:
        directory = Path(tempfile.mkdtemp(prefix="deepfake-stream-mps-"))
        (directory / "pipe").mkdir()
        (directory / "log").mkdir()
    except OSError as exc:
        raise MpsError(f"no directory for the MPS daemon's pipes ({exc})") from exc
    env = {**os.environ, PIPE_ENV: str(directory / "pipe"), LOG_ENV: str(directory / "log")}
    daemon = MpsDaemon(directory, control, env)
    try:
        started = subprocess.run([control, "-d"], env=env, timeout=timeout_s, capture_output=True, text=True, check=False)
        if started.returncode != 0:
            raise MpsError(f"{CONTROL} -d exited with {started.returncode}: {_last_line(started.stderr or started.stdout)}")
        checked = subprocess.run(list(probe), env=env, timeout=timeout_s, capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise MpsError(f"no CUDA context through the MPS daemon: {_last_line(checked.stderr or checked.stdout)}{_server_log(directory)}")
        # CUDA falls back to a context of its own when it cannot reach the daemon: only a server proves MPS served it
        servers = subprocess.run([control], input="get_server_list\n", env=env, timeout=timeout_s, capture_output=True, text=True, check=False)
        if not servers.stdout.split():
            raise MpsError(f"a CUDA context opened, but without an MPS server{_server_log(directory)}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        _stop_now(daemon, timeout_s)
        raise MpsError(f"{CONTROL}: {exc}") from exc
    except MpsError:
        _stop_now(daemon, timeout_s)
        raise
    os.environ[PIPE_ENV] = env[PIPE_ENV]
    os.environ[LOG_ENV] = env[LOG_ENV]
    log.info("MPS: private control daemon started in %s (the engine and the decoder workers share the GPU)", directory, extra={"event": "mps"})
    return daemon


def _stop_now(daemon: MpsDaemon, timeout_s: float) -> None:
    """A daemon that served no client of ours quits at once: wait for it, so nothing is left when start fails."""
    daemon.stop()
    if daemon.quitting is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.quitting.wait(timeout_s)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _server_log(directory: Path) -> str:
    """The control daemon's last log line, where it says why a server did not start."""
    control_log = directory / "log" / "control.log"
    try:
        return f" (control.log: {_last_line(control_log.read_text(errors='replace'))})"
    except OSError:
        return ""


__all__ = ["MpsDaemon", "MpsError", "MpsMode", "PROBE", "mode_for_children", "start_mps"]
