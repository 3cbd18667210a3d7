"""Hostile config files through the real CLI: ``deepfake-stream run --config bad.yaml`` in a subprocess.

Every case must print exactly one line on stderr naming the field (or the YAML problem), print
nothing on stdout, never a traceback, and exit 2 - without starting the service.

Cases (28): unknown keys (top level, in a stream, in mqtt), wrong types (string for int, mapping for
list, non-bool, port out of range, date as a name), duplicate stream names, negative rates and
times (sample_fps, reconnect_min_s, whip.sample_fps, window.seconds, engine.max_wait_ms,
mqtt.score_interval_s), non-finite and absurd numbers (.inf watchdog, .nan sample_fps, 1e12 ms
batch wait), overlong URL and name (5000 chars), a name with a slash, YAML nested 20000 deep, a
5000-digit integer, a python/object tag that would run a command (it must not), a "billion laughs"
alias bomb, a top-level list, non-UTF-8 bytes, a directory instead of a file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)

STREAM = "streams:\n  - name: cam\n    url: rtsp://127.0.0.1:8554/cam\n"
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{a}: &{a} [{', '.join([f'*{p}'] * 9)}]\n" for p, a in zip("abcdefgh", "bcdefghi", strict=True)
)  # 9**9 strings once expanded

CASES: dict[str, tuple[str | bytes, str]] = {
    "unknown-top-level-key": ("detektor:\n  device: cpu\n", "detektor: Extra inputs are not permitted"),
    "unknown-stream-key": (STREAM + "    fps: 5\n", "streams.0.fps: Extra inputs are not permitted"),
    "unknown-mqtt-key": ("mqtt:\n  passwd: hunter2\n", "mqtt.passwd: Extra inputs are not permitted"),
    "string-for-int": ("detector:\n  input_size: big\n", "detector.input_size: Input should be a valid integer"),
    "mapping-for-list": ("streams:\n  name: cam\n  url: x\n", "streams: Input should be a valid list"),
    "non-bool": ("http:\n  enabled: maybe\n", "http.enabled: Input should be a valid boolean"),
    "port-out-of-range": ("mqtt:\n  port: 70000\n", "mqtt.port: Input should be less than 65536"),
    "date-as-name": ("streams:\n  - name: 2024-01-01\n    url: x\n", "streams.0.name: Input should be a valid string"),
    "duplicate-names": (STREAM + "  - name: cam\n    url: /tmp/x.mp4\n", "streams: Value error, duplicate stream name 'cam'"),
    "negative-sample-fps": (STREAM + "    sample_fps: -2\n", "streams.0.sample_fps: Input should be greater than 0"),
    "negative-reconnect": (STREAM + "    reconnect_min_s: -1\n", "streams.0.reconnect_min_s: Input should be greater than 0"),
    "negative-whip-fps": ("whip:\n  sample_fps: -0.5\n", "whip.sample_fps: Input should be greater than 0"),
    "negative-window": ("window:\n  seconds: -16\n", "window.seconds: Input should be greater than 0"),
    "negative-batch-wait": ("engine:\n  max_wait_ms: -1\n", "engine.max_wait_ms: Input should be greater than or equal to 0"),
    "negative-score-interval": ("mqtt:\n  score_interval_s: -1\n", "mqtt.score_interval_s: Input should be greater than or equal to 0"),
    "infinite-watchdog": (STREAM + "    watchdog_s: .inf\n", "streams.0.watchdog_s: Input should be a finite number"),
    "nan-sample-fps": (STREAM + "    sample_fps: .nan\n", "streams.0.sample_fps"),
    "absurd-batch-wait": ("engine:\n  max_wait_ms: 1.0e+12\n", "engine.max_wait_ms: Input should be less than or equal to 60000"),
    "url-5000-chars": (f"streams:\n  - name: cam\n    url: rtsp://127.0.0.1/{'a' * 5000}\n", "streams.0.url: String should have at most 4096 characters"),
    "name-5000-chars": (f"streams:\n  - name: {'c' * 5000}\n    url: x\n", "streams.0.name: String should match pattern"),
    "name-with-slash": ("streams:\n  - name: cam/1\n    url: x\n", "streams.0.name: String should match pattern"),
    "nested-20000-deep": ("streams: " + "[" * 20000 + "]" * 20000 + "\n", "invalid YAML (nested too deeply)"),
    "5000-digit-integer": ("detector:\n  batch_size: " + "9" * 5000 + "\n", "invalid YAML (Exceeds the limit"),
    "python-object-tag": ('detector: !!python/object/apply:os.system ["touch {marker}"]\n', "invalid YAML (could not determine a constructor"),
    "billion-laughs": (BOMB + "streams: *i\n", "streams.0: Input should be a valid dictionary"),
    "top-level-list": ("- name: cam\n  url: x\n", "the top level must be a mapping, got list"),
    "not-utf8": (b"\xff\xfe\x00streams: \x80\x81\n", "cannot read config"),
    "directory": ("", "cannot read config"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_line_naming_the_field_exit_2(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    marker = tmp_path / "pwned"
    path = tmp_path / f"{case}.yaml"
    if case == "directory":
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{marker}", str(marker)))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "run", "--config", str(path), "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    err = result.stderr
    print(f"injected: {case} ({path.stat().st_size if path.is_file() else 'dir'} bytes); observed in {took:.1f} s: exit {result.returncode}: {err[:300].strip()}")
    assert result.returncode == 2, err[-2000:]
    assert err.count("\n") == 1 and err.startswith("error: "), err[-2000:]  # one line
    assert expected in err and str(path) in err
    assert "Traceback" not in err and result.stdout == ""
    assert not marker.exists()  # the python tag ran nothing
    assert took < 30
