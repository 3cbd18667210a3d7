"""Hostile checkpoint files: ``run`` and ``scan`` print one line naming the file and the reason, exit 2,
and a pickle that would run code never does (``torch.load(weights_only=True)``).

Cases (19 = 9 files x {run, scan} + 1 subprocess):

1. ``test_bad_checkpoint_is_one_line_exit_2`` x {run, scan} for: random bytes, an empty file, an mp4
   renamed ``.pth``, a zip archive that is not a torch file, a pickle whose ``__reduce__`` creates a
   marker file, a ``torch.save`` zip holding such an object, a pickle of a numpy array (a global
   outside the safe set), a state dict of ints, a b0 state dict with ``fc.weight`` of the wrong shape.
2. ``test_code_carrying_checkpoint_never_runs_in_a_fresh_process`` - the same through
   ``python -m stream.cli run --config`` in a subprocess: exit 2, one line, no marker file.

Each armed payload is first shown to create its marker when unpickled unsafely, so the test proves
the loader is what keeps it from running.
"""

from __future__ import annotations

import io
import logging
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.classifier import DeepFakeClassifier
from stream.cli import main
from tests.fixtures.media import TEST_ENCODER

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


class Armed:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def build(kind: str, path: Path, marker: Path, astronaut_clip: Path) -> tuple[str, bool]:
    """Write the ``kind`` of bad checkpoint to ``path``; returns (expected message, armed?)."""
    not_loadable = "is not a loadable PyTorch weights file"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "video":
        shutil.copyfile(astronaut_clip, path)
    elif kind == "zip-not-torch":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"not a pickle")
    elif kind == "reduce-pickle":
        path.write_bytes(pickle.dumps({"state_dict": Armed(marker)}, protocol=2))
        return not_loadable, True
    elif kind == "reduce-torch-zip":
        torch.save({"state_dict": {"module.fc.weight": Armed(marker)}}, path)
        return not_loadable, True
    elif kind == "numpy-pickle":
        path.write_bytes(pickle.dumps({"state_dict": {"fc.weight": np.zeros((1, 1280), np.float32)}}, protocol=2))
    elif kind == "ints-state-dict":
        torch.save({"state_dict": {"module.fc.weight": 1}}, path)
        return "holds no state dict of tensors", False
    elif kind == "wrong-shape":
        state = {f"module.{k}": v for k, v in DeepFakeClassifier(TEST_ENCODER).state_dict().items()}
        state["module.fc.weight"] = torch.zeros(2, 1280)
        torch.save({"state_dict": state}, path)
        return "has tensors of the wrong shape for tf_efficientnet_b0.ns_jft_in1k: fc.weight (2, 1280) != (1, 1280)", False
    else:
        raise AssertionError(kind)
    return not_loadable, False


def prove_armed(path: Path, marker: Path) -> None:
    """Unsafe loading of the payload runs its code (so the real loader is what stops it)."""
    data = path.read_bytes()
    if data[:2] == b"PK":
        torch.load(io.BytesIO(data), weights_only=False)
    else:
        pickle.loads(data)
    assert marker.exists(), "the payload is not armed"
    marker.unlink()


def run_config(tmp_path: Path, checkpoint: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"detector:\n  weights_dir: {checkpoint.parent}\n  weights: [{checkpoint.name}]\n  encoder: {TEST_ENCODER}\n  device: cpu\n"
        "mqtt:\n  enabled: false\nhttp:\n  enabled: false\n"
    )
    return cfg


KINDS = ["random-bytes", "empty", "video", "zip-not-torch", "reduce-pickle", "reduce-torch-zip", "numpy-pickle", "ints-state-dict", "wrong-shape"]


@pytest.mark.parametrize("command", ["run", "scan"])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_checkpoint_is_one_line_exit_2(
    kind: str, command: str, tmp_path: Path, astronaut_clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / f"{kind}.pth"
    expected, armed = build(kind, path, marker, astronaut_clip)
    if armed:
        prove_armed(path, marker)
    capsys.readouterr()
    if command == "run":
        code = main(["run", "--config", str(run_config(tmp_path, path)), "--duration", "1"])
    else:
        code = main(["scan", str(astronaut_clip), "--out", str(tmp_path / "p.csv"), "--weights", str(path),
                     "--encoder", TEST_ENCODER, "--device", "cpu", "--no-progress"])  # fmt: skip
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    print(f"injected: {kind} checkpoint via {command}; observed exit {code}: {lines}")
    logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers if h.get_name() != "deepfake-stream"]
    assert code == 2
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], lines
    assert "Traceback" not in out.err and out.out == ""
    assert not marker.exists(), "the checkpoint ran code"
    assert not (tmp_path / "p.csv").exists()


def test_code_carrying_checkpoint_never_runs_in_a_fresh_process(tmp_path: Path, astronaut_clip: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "armed.pth"
    build("reduce-torch-zip", path, marker, astronaut_clip)
    prove_armed(path, marker)
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "run", "--config", str(run_config(tmp_path, path)), "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    print(f"injected: armed torch.save zip; observed exit {result.returncode}: {lines}")
    assert result.returncode == 2
    assert len(lines) == 1 and "armed.pth is not a loadable PyTorch weights file" in lines[0]
    assert not marker.exists()
