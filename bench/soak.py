"""Soak test: N looping file streams through the real service for a long time, watching for leaks.

What runs: the real ``Service`` (decoder thread per stream -> by-pts sampler -> shared batching
engine -> running score -> alert hysteresis -> MQTT publisher -> HTTP server), fed by N looping,
real-time paced copies of a generated astronaut clip.  Every ``--interval`` seconds (default: each
minute) it prints and records the process's RSS, open file descriptors (/proc/self/fd), thread
count (/proc/self/status: Python and native threads), the engine's queue depth, samples scored /
dropped / failed, and alert counts; it also scrapes /health and /metrics so those paths soak too.

Alerts that start *and* end: the clip alternates a segment of the astronaut as filmed with a segment
of the same face with its colour channels swapped, and the classifier checkpoint is a B0 whose final
layer is calibrated (at start-up, on crops the real detector takes from both segments) to score the
first kind ~0.98 and the second ~0.02, so every stream goes through an alert episode per cycle
(``start`` ... ``end``).  With ``--clip`` (e.g. a shared clip) a forced-fake checkpoint is used
instead: each stream raises one alert that stays open.

MQTT: a real mosquitto broker on a free loopback port (``tests/fixtures/mqtt.py``), in its own
process so its memory is not counted; ``--mqtt off`` uses the service's NullPublisher (also the
fallback when mosquitto is not installed).

Pass/fail: after ``--warmup`` minutes the reading taken then is the baseline; the run fails (exit 1)
if the final RSS, fd count or thread count exceeds the baseline by more than ``--max-growth``
(default 5 %), if nothing was scored after the warm-up, if a stream is not streaming at the end, or
if no alert episode completed (calibrated clip only).  The JSON (``--out``) holds the settings, every
reading and the verdict.

CPU budget: on 2 CPU cores the detector is slow (MTCNN + EfficientNet-B0 on CPU), so the defaults are
a small classifier input (``--input-size 128``), a low sampling rate (``--sample-fps 0.5``) and a
240p clip at 10 fps: 16 streams then need ~8 inferences/s, which fits two shared cores.

    uv run python bench/soak.py --minutes 30 --out bench/results/soak-30min.json
    uv run python bench/soak.py --minutes 2 --warmup 0.5 --streams 6 --interval 15   # the CI run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.classifier import DeepFakeClassifier, save_checkpoint  # noqa: E402
from detector.faces import FaceDetector  # noqa: E402
from detector.preprocessing import normalize_batch, stack_crops  # noqa: E402
from stream.app import App  # noqa: E402
from stream.config import AppConfig, parse_config  # noqa: E402
from stream.demo_media import astronaut_frame, write_video  # noqa: E402
from stream.logs import setup_logging  # noqa: E402
from stream.service import StreamService  # noqa: E402

ENCODER = "tf_efficientnet_b0.ns_jft_in1k"
CLIP_HEIGHT = 240
log = logging.getLogger("bench.soak")


# ------------------------------------------------------------------------------- media and weights


def segment_frames(kind: str, count: int, offset: int = 0) -> list[np.ndarray]:
    """``real``: the astronaut drifting; ``fake``: the same with R and B swapped (what the checkpoint flags)."""
    frames = []
    for i in range(count):
        frame = astronaut_frame(CLIP_HEIGHT, shift=int(20 * np.sin((i + offset) / 8)))
        frames.append(np.ascontiguousarray(frame[..., ::-1]) if kind == "fake" else frame)
    return frames


def write_cycle_clips(directory: Path, segment_s: float, fps: int) -> list[Path]:
    """Two clips, fake-then-real and real-then-fake, so half the streams are out of phase."""
    n = max(int(segment_s * fps), 1)
    fake, real = segment_frames("fake", n), segment_frames("real", n, offset=n)
    return [
        write_video(directory / "cycle-fake-first.mp4", fake + real, fps=fps),
        write_video(directory / "cycle-real-first.mp4", real + fake, fps=fps),
    ]


def calibrated_checkpoint(path: Path, input_size: int, seed: int = 0) -> dict[str, float]:
    """A random-init B0 whose fc separates the two segments' faces: logit ~+4 for 'fake', ~-4 for 'real'."""
    torch.manual_seed(seed)
    model = DeepFakeClassifier(ENCODER).eval()
    detector = FaceDetector(device="cpu")

    def features(frames: list[np.ndarray]) -> torch.Tensor:
        crops = [crop for faces in detector.detect(frames) for crop in faces.crops]
        if not crops:
            raise RuntimeError("the detector found no face in the soak clip")
        x = normalize_batch(stack_crops(crops, input_size), torch.device("cpu"), torch.float32, False)
        with torch.no_grad():
            return model.avg_pool(model.encoder.forward_features(x)).flatten(1)

    fake, real = features(segment_frames("fake", 16)), features(segment_frames("real", 16))
    gap = fake.mean(0) - real.mean(0)
    weight = gap / (gap @ gap) * 8.0  # the segments' mean logits 8 apart...
    bias = -(weight @ (fake.mean(0) + real.mean(0)) / 2)  # ...centred on 0
    with torch.no_grad():
        model.fc.weight.copy_(weight.unsqueeze(0))
        model.fc.bias.fill_(float(bias))
    save_checkpoint(model, path)
    fake_logits, real_logits = fake @ weight + bias, real @ weight + bias
    return {"fake_min_logit": float(fake_logits.min()), "real_max_logit": float(real_logits.max())}


def forced_fake_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    model = DeepFakeClassifier(ENCODER)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.fill_(6.0)
    save_checkpoint(model, path)


# ------------------------------------------------------------------------------- process readings


def proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reading(service: StreamService, started: float, scrapes: dict[str, int]) -> dict[str, Any]:
    pipelines = [h.pipeline for h in service.streams.values()]
    publisher: Any = service.publisher
    states: dict[str, int] = {}
    for handle in service.streams.values():
        states[handle.state] = states.get(handle.state, 0) + 1
    started_alerts = sum(p.stats.alerts for p in pipelines)
    active = sum(1 for p in pipelines if p.alerts.active)
    return {
        "minute": round((time.monotonic() - started) / 60, 3),
        "rss_mb": round(proc_status("VmRSS") / 1024, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": proc_status("Threads"),
        "python_threads": threading.active_count(),
        "engine_queue": service.engine.queue_depth(),
        "samples_scored": sum(p.stats.samples_scored for p in pipelines),
        "samples_dropped": sum(p.stats.samples_dropped for p in pipelines),
        "samples_failed": sum(p.stats.samples_failed for p in pipelines),
        "alerts_started": started_alerts,
        "alerts_ended": started_alerts - active,
        "alerts_active": active,
        "mqtt_alerts_delivered": getattr(publisher, "alerts_delivered", None),
        "mqtt_alerts_pending": getattr(publisher, "pending_alerts", None),
        "mqtt_alerts_dropped": getattr(publisher, "alerts_dropped", None),
        "mqtt_connected": getattr(publisher, "connected", None),
        "states": states,
        "scrapes_ok": dict(scrapes),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def format_reading(r: dict[str, Any]) -> str:
    mqtt = "" if r["mqtt_alerts_delivered"] is None else f" mqtt delivered {r['mqtt_alerts_delivered']} pending {r['mqtt_alerts_pending']}"
    return (
        f"[{r['minute']:6.2f} min] rss {r['rss_mb']:7.1f} MB  fds {r['fds']:4d}  threads {r['threads']:3d}  "
        f"engine queue {r['engine_queue']:3d}  scored {r['samples_scored']:6d} dropped {r['samples_dropped']:5d} "
        f"failed {r['samples_failed']:3d}  alerts started {r['alerts_started']:4d} ended {r['alerts_ended']:4d} "
        f"active {r['alerts_active']:3d}{mqtt}  states {r['states']}  load {r['loadavg_1m']}"
    )


# ------------------------------------------------------------------------------- the run


def build_config(args: argparse.Namespace, checkpoint: Path, clips: list[Path], broker: Any) -> AppConfig:
    streams = [
        {"name": f"soak{i:02d}", "url": str(clips[i % len(clips)]), "loop": True, "realtime": True, "sample_fps": args.sample_fps}
        for i in range(args.streams)
    ]
    mqtt = (
        {"host": broker.host, "port": broker.port, "client_id": f"soak-{os.getpid()}", "reconnect_max_s": 2.0}
        if broker is not None
        else {"enabled": False}
    )
    return parse_config(
        {
            "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": ENCODER, "device": "cpu", "input_size": args.input_size},
            "streams": streams,
            "window": {"seconds": 2.5 / args.sample_fps, "max_scores": 8},
            "alerts": {"alert_threshold": 0.8, "clear_threshold": 0.5, "min_samples": 2, "snapshot": True},
            "engine": {"max_batch": 16, "max_wait_ms": 50, "max_pending_per_stream": 2},
            "mqtt": mqtt,
            "http": {"host": "127.0.0.1", "port": 0},
            "logging": {"level": "WARNING"},
        },
        "soak",
    )


async def scrape(port: int | None, scrapes: dict[str, int]) -> None:
    """GET /health and /metrics, as a monitoring system would (counts the 200/503 answers)."""
    if port is None:
        return
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for path in ("/health", "/metrics"):
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=10)) as response:
                    await response.read()
                    scrapes[path] = scrapes.get(path, 0) + (1 if response.status in (200, 503) else 0)
            except (aiohttp.ClientError, TimeoutError):
                pass


def judge(readings: list[dict[str, Any]], args: argparse.Namespace, calibrated: bool, final_states: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    after = [r for r in readings if r["minute"] >= args.warmup - 1e-9]
    if len(after) < 2:
        return {}, [f"too few readings after the {args.warmup} min warm-up ({len(after)}); run longer or read more often"]
    base, last = after[0], after[-1]
    growth = {}
    for key in ("rss_mb", "fds", "threads"):
        growth[key] = {"baseline": base[key], "final": last[key], "max_after_warmup": max(r[key] for r in after),
                       "growth": round((last[key] - base[key]) / base[key], 4)}  # fmt: skip
        if growth[key]["growth"] > args.max_growth:
            problems.append(f"{key} grew {growth[key]['growth']:.1%} after the warm-up ({base[key]} -> {last[key]}), more than {args.max_growth:.0%}")
    if last["samples_scored"] <= base["samples_scored"]:
        problems.append("nothing was scored after the warm-up")
    not_streaming = {name: state for name, state in final_states.items() if state != "streaming"}
    if not_streaming:
        problems.append(f"streams not streaming at the end: {not_streaming}")
    if calibrated and last["alerts_ended"] == 0:
        problems.append("no alert episode completed")
    if last["samples_failed"]:
        problems.append(f"{last['samples_failed']} inference failures")
    return growth, problems


async def soak(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "soak-b0.pth"
    calibration: dict[str, float] | None = None
    if args.clip:
        clips = [Path(args.clip)]
        forced_fake_checkpoint(checkpoint)
    else:
        clips = write_cycle_clips(workdir, args.segment_s, args.clip_fps)
        calibration = calibrated_checkpoint(checkpoint, args.input_size)
        print(f"calibrated checkpoint: {calibration}", flush=True)

    broker = None
    if args.mqtt != "off":
        try:
            from tests.fixtures.mqtt import MosquittoBroker

            broker = MosquittoBroker(workdir / "mosquitto")
            broker.start()
        except Exception as exc:  # noqa: BLE001 - no mosquitto: run without MQTT, say so
            if args.mqtt == "mosquitto":
                raise
            print(f"mosquitto unavailable ({exc}); MQTT off (NullPublisher)", flush=True)
            broker = None

    cfg = build_config(args, checkpoint, clips, broker)
    setup_logging(cfg.logging.level)
    logging.getLogger("stream.pipeline").setLevel(logging.ERROR)  # not one line per alert: the readings count them
    settings = {k: v for k, v in vars(args).items()}
    settings.update({"clips": [str(c) for c in clips], "mqtt_broker": None if broker is None else f"mosquitto {broker.host}:{broker.port}",
                     "cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": torch.get_num_threads()})  # fmt: skip
    print(f"soak: {args.streams} streams for {args.minutes} min (warm-up {args.warmup} min), sample_fps {args.sample_fps}, "
          f"input {args.input_size}, MQTT {settings['mqtt_broker'] or 'off'}", flush=True)  # fmt: skip

    readings: list[dict[str, Any]] = []
    scrapes: dict[str, int] = {}
    result: dict[str, Any] = {"settings": settings, "calibration": calibration, "readings": readings}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(extra: dict[str, Any] | None = None) -> None:
        result.update(extra or {})
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)

    app = App(cfg)
    started = time.monotonic()
    final_states: dict[str, str] = {}
    try:
        service = await app.start()
        port = app.http.port if app.http is not None else None
        deadline = started + args.minutes * 60
        next_at = started + args.interval
        while True:
            await asyncio.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
            await scrape(port, scrapes)
            r = reading(service, started, scrapes)
            readings.append(r)
            print(format_reading(r), flush=True)
            save()
            if time.monotonic() >= deadline - 0.5:
                break
            next_at += args.interval
        final_states = {name: handle.state for name, handle in service.streams.items()}
    finally:
        await app.stop()
        if broker is not None:
            broker.stop()
    growth, problems = judge(readings, args, calibration is not None, final_states)
    verdict = "fail" if problems else "pass"
    save({"growth": growth, "problems": problems, "verdict": verdict, "final_states": final_states, "seconds": round(time.monotonic() - started, 1)})
    for key, g in growth.items():
        print(f"{key}: {g['baseline']} at the end of the warm-up -> {g['final']} at the end ({g['growth']:+.1%}; max {g['max_after_warmup']})")
    print(f"soak {verdict.upper()}" + (": " + "; ".join(problems) if problems else "") + f" (JSON: {out})", flush=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="On 2 CPU cores keep --input-size 128 and --sample-fps 0.5 (the defaults) for 16 streams; "
        "raise --sample-fps only with fewer streams or more cores.",
    )
    parser.add_argument("--streams", type=int, default=16, help="looping file streams (default 16)")
    parser.add_argument("--minutes", type=float, default=30.0, help="duration (default 30)")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before the baseline reading (default 2)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between readings (default 60: each minute)")
    parser.add_argument("--sample-fps", type=float, default=0.5, help="sampled frames per second per stream (default 0.5)")
    parser.add_argument("--input-size", type=int, default=128, help="classifier input size (default 128; 380 is the winner's)")
    parser.add_argument("--segment-s", type=float, default=12.0, help="seconds of each clip segment: one alert episode per two segments")
    parser.add_argument("--clip-fps", type=int, default=10, help="frame rate of the generated clip (default 10)")
    parser.add_argument("--clip", default=None, help="use this clip for every stream instead (forced-fake checkpoint: alerts stay open)")
    parser.add_argument("--mqtt", choices=["auto", "mosquitto", "off"], default="auto", help="auto: mosquitto if installed, else off")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS/fd/thread growth after the warm-up (default 0.05)")
    parser.add_argument("--workdir", default=None, help="keep clips, checkpoint and broker files here (default: a temp dir, removed)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"), help="JSON results (default bench/results/soak.json)")
    args = parser.parse_args(argv)
    if args.streams <= 0 or args.minutes <= 0 or args.interval <= 0 or args.sample_fps <= 0 or not 0 <= args.warmup < args.minutes:
        parser.error("need positive --streams/--minutes/--interval/--sample-fps and 0 <= --warmup < --minutes")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(soak(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
