"""The quick commands stay quick: ``--help``, ``eval`` and config errors never import the heavy stack.

torch alone takes seconds to import; scikit-learn/SciPy, PyAV, OpenCV, timm, facenet-pytorch,
aiortc and requests add more.  ``deepfake-stream eval`` and a config error must answer in about a
second, so the modules on their path import none of these (the commands that need them import
them where they are used).  Checked in a fresh interpreter through ``sys.modules``; the timings
themselves are measured by ``bench/cli_latency.py``, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "facenet_pytorch", "aiortc", "av", "cv2", "sklearn", "scipy", "requests")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))))
"""


def heavy_modules_after(body: str, cwd: Path = ROOT) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_cli_config_and_evaluate_loads_no_heavy_module() -> None:
    assert heavy_modules_after("import stream.cli, stream.config, stream.evaluate") == []


def test_eval_and_a_config_error_run_without_heavy_modules(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("filename,label\na.mp4,0.9\nb.mp4,0.2\nc.mp4,0.6\n")
    (tmp_path / "l.csv").write_text("file,label\na.mp4,FAKE\nb.mp4,REAL\nc.mp4,FAKE\n")
    (tmp_path / "bad.yaml").write_text("streams:\n  - {name: cam, url: x.mp4, sample_fps: -1}\n")
    body = (
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from stream.cli import main\n"
        "assert main(['eval', 'p.csv', '--labels', 'l.csv']) == 0\n"
        "assert main(['run', '--config', 'bad.yaml']) == 2\n"
    )
    assert heavy_modules_after(body, cwd=tmp_path) == []


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: importing the engine does pull torch in."""
    assert "torch" in heavy_modules_after("import detector.engine")
