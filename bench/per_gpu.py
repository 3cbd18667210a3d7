"""Live capacity of one analyzer process per GPU (``engine.process_per_gpu``), measured as the service runs it.

Starts the MPS daemon once (as ``stream/launcher.py`` does), then one ``bench/pipeline.py --parts live``
process per GPU with that GPU alone visible and ``--shard i/N`` (the launcher's balanced split of the
streams ``s0..s<N-1>``). A barrier makes every process start each row's streams at the same moment, so
their measurement windows coincide. The rows are pooled: samples/s, faces/s and drops summed,
p50/p99 over every process's latencies, the analyzer processes' CPU summed; each process's own row is
kept under ``processes``.

    python bench/per_gpu.py --gpus 2 --out out/per_gpu.json -- --decoder nvdec --skip-frames nonref \\
        --compile --repeat-clips 8 --warmup 25 --duration 10 --streams 270 300 --keep-going
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.mps import mode_for_children, start_mps  # noqa: E402

SUMMED = ("streams", "expected_samples_per_s", "samples_per_s", "faces_per_s", "engine_dropped", "source_dropped", "analyzer_cores_busy")
# GPU and NVDEC %: each process reports its own card (bench/pipeline.py's Utilisation), so the mean is the cards' mean;
# CPU: /proc/stat sees the whole box from every process, so the mean is the same quantity measured twice
AVERAGED = ("gpu_util_pct", "nvdec_util_pct", "cpu_util_pct", "cpu_cores_busy", "detect_busy", "classify_busy", "mean_batch_frames", "decode_fps_per_stream")


def pooled(rows: list[dict[str, object]]) -> dict[str, object]:
    """One row of the box from each process's row of the same step (their windows coincide)."""
    row: dict[str, object] = {"part": "live", "processes_pooled": len(rows)}
    for key in SUMMED:
        row[key] = round(sum(float(r[key] or 0) for r in rows), 2)  # type: ignore[arg-type]
    for key in AVERAGED:
        values = [float(r[key]) for r in rows if r.get(key) is not None and r["streams"]]  # type: ignore[arg-type]
        row[key] = round(float(np.mean(values)), 3) if values else None
    latencies = np.array([x for r in rows for x in r.get("latencies_ms", [])])  # type: ignore[union-attr]
    row["latency_p50_ms"] = round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None
    row["latency_p99_ms"] = round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None
    startups = [r.get("startup_s") for r in rows if r["streams"]]
    row["startup_s"] = None if any(x is None for x in startups) else max(startups, default=0.0)  # type: ignore[type-var]
    row["not_streaming_at_warmup"] = sum(int(r.get("not_streaming_at_warmup") or 0) for r in rows)  # type: ignore[call-overload]
    row["gpu_mem_peak_gib"] = max(float(r["gpu_mem_peak_gib"] or 0) for r in rows)  # type: ignore[arg-type]
    row["falls_behind"] = any(bool(r.get("falls_behind")) for r in rows)
    row["processes"] = [{k: v for k, v in r.items() if k != "latencies_ms"} for r in rows]
    return row


def release(barrier: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """Say go for each step once every running process is ready for it, until they have all exited."""
    step = 1
    while any(p.poll() is None for p in procs):
        ready = [(barrier / f"{step}.{i}.ready").exists() for i in range(len(procs))]
        if all(ready[i] or procs[i].poll() is not None for i in range(len(procs))) and any(ready):
            (barrier / f"{step}.go").touch()
            step += 1
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2, help="processes, one per GPU (GPUs 0..N-1 of this machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "per_gpu.json")
    parser.add_argument("--mps", choices=["auto", "on", "off"], default="auto", help="one daemon for every process, as engine.mps")
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER, help="after --: bench/pipeline.py's live arguments")
    args = parser.parse_args()
    passed = [a for a in args.pipeline_args if a != "--"]
    mps = start_mps(args.mps, cuda_wanted=True)
    try:
        with tempfile.TemporaryDirectory(prefix="per-gpu-") as directory:
            work = Path(directory)
            procs = []
            for i in range(args.gpus):
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}
                command = [sys.executable, str(ROOT / "bench" / "pipeline.py"), *passed, "--parts", "live", "--gpus", "1", "--mps", mode_for_children(args.mps, mps),
                           "--shard", f"{i}/{args.gpus}", "--barrier", str(work), "--keep-latencies", "--out", str(work / f"gpu{i}.json")]  # fmt: skip
                procs.append(subprocess.Popen(command, env=env))
            release(work, procs)
            codes = [p.wait() for p in procs]
            results = [json.loads((work / f"gpu{i}.json").read_text()) if (work / f"gpu{i}.json").exists() else None for i in range(args.gpus)]
    finally:
        if mps is not None:
            mps.stop()
    if any(codes) or any(r is None for r in results):
        print(f"a process failed: exit codes {codes}", file=sys.stderr)
        return 1
    steps = zip(*(r["rows"] for r in results), strict=False)  # type: ignore[index]  # one that fell behind stops early (no --keep-going)
    rows = []
    print(f"{'N':>5} {'start s':>7} {'samples/s':>16} {'drops':>7} {'p50 ms':>7} {'p99 ms':>7} {'gpu %':>6} {'nvdec %':>7} {'cores':>6}  per process (streams: p99)")
    for step in steps:
        row = pooled(list(step))
        total = int(step[0]["streams_total"])  # type: ignore[call-overload]
        row["streams_total"] = total
        rows.append(row)
        each = ", ".join(f"{r['streams']}: {r['latency_p99_ms']}" for r in step)
        print(
            f"{total:5d} {row['startup_s']!s:>7} {row['samples_per_s']:8.1f}/{row['expected_samples_per_s']:<7.0f} {row['engine_dropped'] + row['source_dropped']:7.0f} "  # type: ignore[operator]
            f"{row['latency_p50_ms']!s:>7} {row['latency_p99_ms']!s:>7} {row['gpu_util_pct']!s:>6} {row['nvdec_util_pct']!s:>7} {row['cpu_cores_busy']!s:>6}  {each}"
            f"{'  BEHIND' if row['falls_behind'] else ''}",
            flush=True,
        )
    meta = {**results[0]["meta"], "processes": args.gpus, "mps": mps is not None, "pipeline_args": passed}  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
