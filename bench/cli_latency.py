"""Wall time of the quick ``deepfake-stream`` commands, each in a fresh interpreter.

What it measures (median of ``--runs`` runs each, default 5):

* ``--help``
* ``eval`` of a three-row predictions CSV against a three-row labels CSV
* a config error: ``run --config bad.yaml`` (a config that fails validation, exit 2)

Each run starts the installed console script (``.venv/bin/deepfake-stream``, else ``python -m
stream.cli``) in a subprocess, so the figure includes interpreter start-up and every import on
the command's path: what a user waits for.  The machine's load average is recorded beside the
numbers (a loaded machine makes every row slower, not one more than the others).

Usage::

    uv run python bench/cli_latency.py [--runs 5] [--out bench/results/cli-latency.json]

Not a timed test: it prints a table and writes JSON; ``tests/test_cli_imports.py`` is the cheap
guard that keeps torch and scikit-learn off these paths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "cli-latency.json"


def command_prefix() -> list[str]:
    script = Path(sys.executable).with_name("deepfake-stream")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "stream.cli"]


def write_inputs(directory: Path) -> dict[str, list[str]]:
    preds = directory / "predictions.csv"
    preds.write_text("filename,label\na.mp4,0.9\nb.mp4,0.2\nc.mp4,0.6\n")
    labels = directory / "labels.csv"
    labels.write_text("file,label\na.mp4,FAKE\nb.mp4,REAL\nc.mp4,FAKE\n")
    bad = directory / "bad.yaml"
    bad.write_text("streams:\n  - {name: cam, url: rtsp://127.0.0.1/x, sample_fps: -1}\n")
    return {
        "--help": (["--help"], 0),
        "eval (3 rows)": (["eval", str(preds), "--labels", str(labels)], 0),
        "config error": (["run", "--config", str(bad)], 2),
    }


def time_once(argv: list[str], expected_rc: int, cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != expected_rc:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}, expected {expected_rc}: {proc.stderr.strip()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--label", default="", help="free text stored in the JSON (e.g. 'before', 'after')")
    args = parser.parse_args()
    prefix = command_prefix()
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        work = Path(tmp)
        cases = write_inputs(work)
        for argv, rc in cases.values():  # warm the OS page cache once, untimed
            time_once(prefix + argv, rc, work)
        load_before = os.getloadavg()
        results = {}
        for name, (argv, rc) in cases.items():
            times = [time_once(prefix + argv, rc, work) for _ in range(args.runs)]
            results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "max_s": round(max(times), 3), "runs_s": [round(t, 3) for t in times]}
        load_after = os.getloadavg()
    print(f"{'command':<16} {'median s':>9} {'min s':>7} {'max s':>7}   ({args.runs} runs, load {load_before[0]:.1f} -> {load_after[0]:.1f})")
    for name, r in results.items():
        print(f"{name:<16} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f}")
    report = {
        "label": args.label,
        "command": [Path(prefix[0]).name, *prefix[1:]],  # the program, not this machine's path to it
        "runs": args.runs,
        "results": results,
        "loadavg_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
