"""A short soak in CI: ``bench/soak.py`` for 2 minutes (0.5 min warm-up) with 6 streams, as a subprocess.

The soak itself fails (exit 1) on RSS/fd/thread growth beyond 5 % after the warm-up, on streams that
stopped streaming, on inference failures or when no alert episode completed; this test also checks
the JSON it wrote.  See docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_two_minute_soak_passes_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "2", "--warmup", "0.5", "--streams", "6",
        "--interval", "15", "--sample-fps", "1", "--segment-s", "6", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=540, check=False)
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["verdict"] == "pass" and data["problems"] == []
    readings = data["readings"]
    assert len(readings) >= 7 and readings[-1]["minute"] >= 1.9
    last = readings[-1]
    assert last["samples_scored"] > 100 and last["samples_failed"] == 0
    assert last["alerts_ended"] >= 6  # every stream went through at least one whole episode
    assert set(data["growth"]) == {"rss_mb", "fds", "threads"}
    assert all(g["growth"] <= 0.05 for g in data["growth"].values())
    assert data["final_states"] and set(data["final_states"].values()) == {"streaming"}
    if data["settings"]["mqtt_broker"] is not None:  # alerts really went through a broker
        sent = last["mqtt_alerts_delivered"] + last["mqtt_alerts_pending"]
        assert sent >= last["alerts_started"] + last["alerts_ended"] and last["mqtt_alerts_dropped"] == 0
    assert "soak PASS" in result.stdout
