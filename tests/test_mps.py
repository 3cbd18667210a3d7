"""engine.mps: when a private MPS daemon is started, when the analyzer runs without one, and that nothing is left behind.

The real daemon needs an NVIDIA GPU (``tests/test_gpu.py`` starts one there). Here a stand-in
``nvidia-cuda-mps-control`` on PATH records how it is called; the probe is the shipped one
(which finds no CUDA driver on this machine) or a command that checks what the probe is given.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import EngineConfig
from stream.config import AppConfig
from stream.mps import LOG_ENV, PIPE_ENV, PROBE, MpsDaemon, MpsError, mode_for_children, start_mps

FAKE_CONTROL = """#!/bin/sh
# stand-in for nvidia-cuda-mps-control: one line per call (arguments, pipe directory, stdin)
if [ "$1" = "-d" ]; then
    echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_RECORD"
    exit "${FAKE_MPS_START_RC:-0}"
fi
command="$(cat)"
echo "command $CUDA_MPS_PIPE_DIRECTORY $command" >> "$FAKE_MPS_RECORD"
if [ "$command" = "get_server_list" ] && [ -n "$FAKE_MPS_SERVER" ]; then echo "$FAKE_MPS_SERVER"; fi
"""

# what the shipped probe says on a machine with NVIDIA's tools but no usable GPU
PROBE_NO_DEVICE = [sys.executable, "-c", "import sys; sys.exit('cuInit failed: CUDA_ERROR_NO_DEVICE')"]
# succeeds only when it is given the daemon's pipe directory, as a real CUDA client would need
PROBE_NEEDS_PIPE = [sys.executable, "-c", "import os, sys; d = os.environ.get('CUDA_MPS_PIPE_DIRECTORY', ''); sys.exit(0 if d.endswith('/pipe') and os.path.isdir(d) else 'no pipe directory')"]


@pytest.fixture
def fake_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in control binary alone on PATH; returns the file it records its calls in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(FAKE_CONTROL)
    control.chmod(control.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    monkeypatch.setenv("FAKE_MPS_SERVER", "4242")  # get_server_list: the server the probe's context started
    monkeypatch.delenv(PIPE_ENV, raising=False)
    monkeypatch.delenv(LOG_ENV, raising=False)
    return record


@pytest.fixture
def no_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(PIPE_ENV, raising=False)


def _calls(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_off_or_a_cpu_engine_starts_nothing(fake_control: Path) -> None:
    assert start_mps("off", cuda_wanted=True) is None
    assert start_mps("on", cuda_wanted=False) is None
    assert start_mps("auto", cuda_wanted=False) is None
    assert _calls(fake_control) == []
    assert PIPE_ENV not in os.environ


def test_auto_without_the_control_binary_runs_without_it_quietly(no_control: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="stream.mps"):
        assert start_mps("auto", cuda_wanted=True) is None
    assert PIPE_ENV not in os.environ
    assert "not on PATH" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], "a machine without NVIDIA's tools is nothing to report"


def test_on_without_the_control_binary_is_an_error_naming_it(no_control: None) -> None:
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control is not on PATH"):
        start_mps("on", cuda_wanted=True)


def test_auto_when_no_context_opens_through_it_stops_the_daemon_and_says_why(fake_control: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream.mps"):
        assert start_mps("auto", cuda_wanted=True, probe=PROBE_NO_DEVICE) is None
    calls = _calls(fake_control)
    assert calls[0].startswith("start ") and calls[1].startswith("command ") and calls[1].endswith("quit"), calls
    pipe = Path(calls[0].split()[1])
    assert not pipe.parent.exists(), "the daemon's temporary directory is removed"
    assert PIPE_ENV not in os.environ and LOG_ENV not in os.environ
    assert "MPS not used" in caplog.text and "no CUDA context through the MPS daemon: cuInit failed: CUDA_ERROR_NO_DEVICE" in caplog.text


def test_on_when_no_context_opens_is_an_error(fake_control: Path) -> None:
    with pytest.raises(MpsError, match="no CUDA context through the MPS daemon"):
        start_mps("on", cuda_wanted=True, probe=PROBE_NO_DEVICE)
    assert _calls(fake_control)[-1].endswith("quit")
    assert PIPE_ENV not in os.environ


def test_a_context_no_server_served_is_not_taken_for_mps(fake_control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA makes a context of its own when the daemon does not answer: the probe passes, yet MPS is not in use."""
    monkeypatch.setenv("FAKE_MPS_SERVER", "")
    with pytest.raises(MpsError, match="without an MPS server"):
        start_mps("on", cuda_wanted=True, probe=PROBE_NEEDS_PIPE)
    calls = _calls(fake_control)
    assert [c.split()[-1] for c in calls[1:]] == ["get_server_list", "quit"], calls
    assert PIPE_ENV not in os.environ


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="this machine has a CUDA driver (tests/test_gpu.py covers it)")
def test_the_shipped_probe_names_a_missing_driver() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "no CUDA driver" in result.stderr


def test_a_daemon_that_does_not_start_is_reported(fake_control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MPS_START_RC", "3")
    with pytest.raises(MpsError, match="exited with 3"):
        start_mps("on", cuda_wanted=True, probe=PROBE_NEEDS_PIPE)
    assert PIPE_ENV not in os.environ


def test_no_room_for_the_daemons_pipes_is_a_reason_not_a_crash(fake_control: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "gone"))  # a temporary directory that is not there
    with caplog.at_level(logging.WARNING, logger="stream.mps"):
        assert start_mps("auto", cuda_wanted=True, probe=PROBE_NEEDS_PIPE) is None
    assert "no directory for the MPS daemon's pipes" in caplog.text
    assert _calls(fake_control) == []
    with pytest.raises(MpsError, match="no directory"):
        start_mps("on", cuda_wanted=True, probe=PROBE_NEEDS_PIPE)


def test_started_daemon_is_in_the_environment_until_stopped(fake_control: Path) -> None:
    daemon = start_mps("auto", cuda_wanted=True, probe=PROBE_NEEDS_PIPE)
    assert daemon is not None and daemon.directory is not None
    pipe = os.environ[PIPE_ENV]  # what the engine's CUDA context and the decoder workers (children) read
    assert pipe == str(daemon.directory / "pipe") and Path(pipe).is_dir()
    assert os.environ[LOG_ENV] == str(daemon.directory / "log")
    assert _calls(fake_control) == [f"start {pipe}", f"command {pipe} get_server_list"]
    daemon.stop()
    assert PIPE_ENV not in os.environ and LOG_ENV not in os.environ  # at once: nothing new of ours connects to it
    quitting = daemon.quitting
    daemon.stop()  # a second stop does nothing
    assert quitting is not None and daemon.quitting is quitting
    assert quitting.wait(10) == 0
    assert _calls(fake_control) == [f"start {pipe}", f"command {pipe} get_server_list", f"command {pipe} quit"]
    assert not daemon.directory.exists()


def test_a_daemon_the_operator_runs_is_used_as_it_is(fake_control: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PIPE_ENV, str(tmp_path / "operator-pipe"))
    daemon = start_mps("on", cuda_wanted=True, probe=PROBE_NEEDS_PIPE)
    assert daemon is not None and daemon.directory is None
    daemon.stop()
    assert _calls(fake_control) == []
    assert os.environ[PIPE_ENV] == str(tmp_path / "operator-pipe")


def test_children_use_our_daemon_or_none_and_never_start_their_own(tmp_path: Path) -> None:
    """What the per-GPU launcher and bench/per_gpu.py give the analyzer processes they start after start_mps."""
    ours = MpsDaemon(tmp_path, "nvidia-cuda-mps-control")
    assert [mode_for_children(mode, ours) for mode in ("auto", "on")] == ["auto", "on"]  # found through the environment
    assert [mode_for_children(mode, None) for mode in ("auto", "off")] == ["off", "off"]  # auto found none: no retry per child


def test_config_default_and_values() -> None:
    assert EngineConfig().mps == "auto"
    assert EngineConfig(mps="off").mps == "off"
    with pytest.raises(ValueError, match="mps"):
        EngineConfig(mps="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("detector_device", "engine_devices", "wanted"),
    [("auto", "all", True), ("cpu", "all", False), ("cuda:1", "all", True), ("auto", ["cpu"], False), ("cpu", ["cpu", "cuda:0"], True)],
)
def test_wants_cuda_reads_the_config_alone(detector_device: str, engine_devices: object, wanted: bool) -> None:
    cfg = AppConfig.model_validate({"detector": {"device": detector_device}, "engine": {"devices": engine_devices}})
    assert cfg.wants_cuda() is wanted


def test_metrics_say_whether_mps_took_effect() -> None:
    from types import SimpleNamespace

    from stream.outputs.publisher import NullPublisher
    from stream.web.metrics import ServiceMetrics

    registry = SimpleNamespace(started_at=0.0, handles=list)
    stats = SimpleNamespace(dropped={}, batches=0, frames=0, faces=0, failed_batches=0, busy_s=0.0)
    engine = SimpleNamespace(stats=stats, queue_depth=lambda: 0, ensemble=SimpleNamespace(device=SimpleNamespace(type="cpu")))
    for mps, value in ((True, b"deepfake_gpu_mps 1.0"), (False, b"deepfake_gpu_mps 0.0")):
        body, _ = ServiceMetrics(registry, engine, NullPublisher(), mps=mps).render()  # type: ignore[arg-type]
        assert value in body.splitlines()
