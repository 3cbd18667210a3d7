"""Throughput and latency of the whole pipeline, and of the DFDC winner's arrangement, in one run.

Part 1 (offline, same pre-decoded 1080p frames and the same model for every row):
  reference   the winner's way: MTCNN one frame per call (0.5x PIL shrink), the classifier once per
              32-frame video, no batching across streams;
  batched     our engine's batches of frames across streams (MTCNN batched, classifier on all crops);
  +gpu-resize MTCNN's input shrink on the GPU; +graphs CUDA graphs for the classifier;
  size-rule   our default rescale rule (0.33x for 1920 px wide frames).
Part 3 (sources): the same streams with the engine replaced by one that answers at once, so the
decoders' own capacity shows. Part 2 (live): N looping, real-time paced 1080p H.264 file streams through the real service path
(decode thread per stream -> by-pts sampler -> engine -> running score), no MQTT, for N in --streams
until the engine falls behind. Reports sampled frames/s, faces/s, drops, p50/p99 frame-arrival-to-score
latency, GPU/CPU utilisation and GPU memory.

    uv run python bench/pipeline.py --clips ../shared/media/clips --out out/bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.build import build_engine  # noqa: E402
from detector.classifier import DeepFakeClassifier, Ensemble  # noqa: E402
from detector.config import DetectorConfig, EngineConfig  # noqa: E402
from detector.engine import EngineStats, FrameResult, InferenceEngine  # noqa: E402
from detector.engine_pool import EnginePool  # noqa: E402
from detector.faces import FaceDetector  # noqa: E402
from detector.pipeline import faces_to_scores  # noqa: E402
from detector.video import read_evenly_spaced_frames  # noqa: E402
from stream.config import AlertConfig, StreamConfig, WindowConfig  # noqa: E402
from stream.mps import start_mps  # noqa: E402
from stream.outputs.publisher import NullPublisher  # noqa: E402
from stream.pipeline import StreamPipeline  # noqa: E402
from stream.sharding import balanced_assignment  # noqa: E402
from stream.sources.base import FrameSource, StreamState  # noqa: E402
from stream.sources.config import NVDEC  # noqa: E402
from stream.sources.factory import open_source  # noqa: E402
from stream.sources.workers import close_pools, default_workers  # noqa: E402

DEFAULT_CLIPS = ["nicoletmk-Real6.mp4", "facenet-video.mp4", "wav2lip-kim_7s_raw.mp4"]


def visible_gpu_indices() -> list[int]:
    """nvidia-smi's indices of the GPUs ``CUDA_VISIBLE_DEVICES`` leaves this process (empty: all of them, or not numbers);
    nvidia-smi counts in PCI order, as CUDA does on a box of identical cards."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    return [int(entry) for entry in entries] if entries and all(entry.isdigit() for entry in entries) else []


class Utilisation:
    """Samples GPU (nvidia-smi) and process-wide CPU utilisation in the background."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.gpus = visible_gpu_indices()  # nvidia-smi lists every card; a process given one GPU reports that one
        self.gpu: list[float] = []
        self.nvdec: list[float] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _cpu_times() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def _run(self) -> None:
        busy0, total0 = self._cpu_times()
        while not self._stop.wait(self.interval_s):
            busy1, total1 = self._cpu_times()
            if total1 > total0:
                self.cpu.append(100.0 * (busy1 - busy0) / (total1 - total0))
            busy0, total0 = busy1, total1
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,utilization.decoder", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5
                )
                rows = [[float(v) for v in line.split(",")] for line in out.stdout.strip().splitlines()]
                mine = [rows[i] for i in self.gpus if i < len(rows)] or rows
                self.gpu.append(float(np.mean([r[0] for r in mine])))
                self.nvdec.append(float(np.mean([r[1] for r in mine])))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass

    def summary(self) -> dict[str, float | None]:
        cores = os.cpu_count() or 1
        return {
            "gpu_util_pct": round(float(np.mean(self.gpu)), 1) if self.gpu else None,
            "nvdec_util_pct": round(float(np.mean(self.nvdec)), 1) if self.nvdec else None,
            "cpu_util_pct": round(float(np.mean(self.cpu)), 1) if self.cpu else None,
            "cpu_cores_busy": round(float(np.mean(self.cpu)) * cores / 100, 2) if self.cpu else None,
        }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_ensemble(encoder: str, models: int, device: torch.device, graphs: bool, input_size: int, compiled: bool = False) -> Ensemble:
    """Random weights (the published ones' compute), built as ``detector/build.py`` builds: compiled, then graphed."""
    torch.manual_seed(0)
    ensemble = Ensemble([DeepFakeClassifier(encoder) for _ in range(models)], device)
    if compiled:
        ensemble.enable_compile(input_size)
    if graphs:
        ensemble.enable_cuda_graphs(input_size)
    return ensemble


def run_reference(frames: list[np.ndarray], detector: FaceDetector, ensemble: Ensemble, per_video: int = 32) -> dict[str, float]:
    """MTCNN one frame per call; the classifier once per 32-frame video (the winner's predict_on_video)."""
    faces = 0
    sync()
    start = time.perf_counter()
    for v in range(0, len(frames), per_video):
        crops = []
        for frame in frames[v : v + per_video]:
            crops.extend(detector.detect([frame])[0].crops)
        crops = crops[: 4 * per_video - 1]
        faces += len(crops)
        if crops:
            faces_to_scores(crops, ensemble, 380, batch_size=4 * per_video)
    sync()
    seconds = time.perf_counter() - start
    return {"frames_per_s": len(frames) / seconds, "faces_per_s": faces / seconds, "ms_per_frame": 1000 * seconds / len(frames), "faces": faces}


def run_batched(frames: list[np.ndarray], detector: FaceDetector, ensemble: Ensemble, batch: int) -> dict[str, float]:
    """Our engine's unit of work: a batch of frames (from many streams), then every crop of the batch.

    Also splits the time (synchronised) into detection, crop preparation on the CPU and the classifier.
    """
    from detector.preprocessing import normalize_batch, stack_crops

    faces = 0
    split = {"detect_s": 0.0, "prepare_s": 0.0, "classify_s": 0.0}
    sync()
    start = time.perf_counter()
    for b in range(0, len(frames), batch):
        t0 = time.perf_counter()
        crops = [c for f in detector.detect(frames[b : b + batch]) for c in f.crops]
        sync()
        t1 = time.perf_counter()
        faces += len(crops)
        for c in range(0, len(crops), 64):
            x = stack_crops(crops[c : c + 64], 380)
            t2 = time.perf_counter()
            ensemble.predict(normalize_batch(x, ensemble.device, ensemble.dtype, ensemble.channels_last))
            sync()
            t3 = time.perf_counter()
            split["prepare_s"] += t2 - t1
            split["classify_s"] += t3 - t2
            t1 = t3
        split["detect_s"] += t1 - t0 - 0  # includes nothing of the classifier
    sync()
    seconds = time.perf_counter() - start
    split["detect_s"] = seconds - split["prepare_s"] - split["classify_s"]
    shares = {k.replace("_s", "_share"): round(v / seconds, 3) for k, v in split.items()}
    return {"frames_per_s": len(frames) / seconds, "faces_per_s": faces / seconds, "ms_per_frame": 1000 * seconds / len(frames), "faces": faces, **shares}


def box_agreement(frames: list[np.ndarray], ref: FaceDetector, fast: FaceDetector) -> dict[str, object]:
    """Box-for-box check of our MTCNN cascade against facenet-pytorch's on the same (GPU-shrunk) frames."""
    from stream.scoring import iou

    same_count, ious, prob_diff = 0, [], []
    for r, f in zip(ref.detect(frames), fast.detect(frames), strict=True):
        same_count += len(r) == len(f)
        left = list(range(len(f)))
        for box, prob in zip(r.boxes, r.probs, strict=True):
            if not left:
                ious.append(0.0)
                continue
            j = max(left, key=lambda k: iou(tuple(box), tuple(f.boxes[k])))
            ious.append(iou(tuple(box), tuple(f.boxes[j])))
            prob_diff.append(abs(float(prob) - float(f.probs[j])))
            left.remove(j)
    return {
        "frames": len(frames),
        "frames_with_same_face_count": same_count,
        "boxes": len(ious),
        "min_iou": round(min(ious), 4) if ious else None,
        "mean_iou": round(float(np.mean(ious)), 5) if ious else None,
        "max_prob_diff": float(max(prob_diff)) if prob_diff else None,
    }


def median_of(fn, repeats: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeats)]
    key = sorted(range(len(runs)), key=lambda i: runs[i]["frames_per_s"])[len(runs) // 2]
    out = dict(runs[key])
    out["runs_frames_per_s"] = [round(r["frames_per_s"], 2) for r in runs]
    return out


def offline_part(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    frames: list[np.ndarray] = []
    for name in args.clip_names:
        frames.extend(read_evenly_spaced_frames(args.clips / name, args.offline_frames // len(args.clip_names)).frames)
    rows: list[dict[str, object]] = []
    det_half = FaceDetector(device, rescale="half")
    det_half_gpu = FaceDetector(device, rescale="half", gpu_resize=True)
    det_half_fast = FaceDetector(device, rescale="half", gpu_resize=True, fast_mtcnn=True)
    det_size_fast = FaceDetector(device, rescale="size", gpu_resize=True, fast_mtcnn=True)
    rows.append({"part": "fast_mtcnn_agreement", **box_agreement(frames, det_half_gpu, det_half_fast)})
    print(f"  fast MTCNN vs facenet-pytorch on {len(frames)} frames: {rows[-1]}", flush=True)
    for models in args.models:
        plain = make_ensemble(args.encoder, models, device, False, 380)
        graphed = make_ensemble(args.encoder, models, device, device.type == "cuda", 380)
        # warm-up every path once (cuDNN autotune, lazy init)
        run_batched(frames[:8], det_half, plain, 8)
        run_reference(frames[:4], det_half, plain)
        run_batched(frames[:8], det_size_fast, graphed, 8)
        variants = [
            ("reference (per-frame MTCNN, per-video classifier)", lambda: run_reference(frames, det_half, plain)),
            (f"batched x{args.max_batch}", lambda: run_batched(frames, det_half, plain, args.max_batch)),
            (f"batched x{args.max_batch} +gpu-resize", lambda: run_batched(frames, det_half_gpu, plain, args.max_batch)),
            (f"batched x{args.max_batch} +gpu-resize +graphs", lambda: run_batched(frames, det_half_gpu, graphed, args.max_batch)),
            (f"batched x{args.max_batch} +gpu-resize +graphs +fast-mtcnn", lambda: run_batched(frames, det_half_fast, graphed, args.max_batch)),
            (f"batched x{args.max_batch} +gpu-resize +graphs +fast-mtcnn, size rule", lambda: run_batched(frames, det_size_fast, graphed, args.max_batch)),
        ]
        if device.type == "cuda":
            gpu_frames = [torch.from_numpy(f).to(device) for f in frames]  # as NVDEC hands them over
            gpu_engine = InferenceEngine(det_size_fast, graphed, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_pending_per_stream=len(frames), detect_workers=args.detect_workers)
            run_engine(gpu_frames[:16], gpu_engine)
            variants.append((f"GPU-resident: frames on the GPU, GPU crops, pipelined engine ({args.detect_workers} detect workers), size rule", lambda: run_engine(gpu_frames, gpu_engine)))
        base = None
        for label, fn in variants:
            result = median_of(fn, args.repeats)
            base = base or result["frames_per_s"]
            row = {"part": "offline", "models": models, "variant": label, "frames": len(frames), **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}}
            row["speedup_vs_reference"] = round(result["frames_per_s"] / base, 2)
            rows.append(row)
            split = " ".join(f"{k.split('_')[0]} {result[k]:.0%}" for k in ("detect_share", "prepare_share", "classify_share") if k in result)
            print(f"  {models} model(s)  {label:62s} {result['frames_per_s']:8.1f} frames/s {result['faces_per_s']:8.1f} faces/s  x{row['speedup_vs_reference']:<5} {split}", flush=True)
        if device.type == "cuda":
            gpu_engine.close()
            torch.cuda.empty_cache()
    return rows


def run_engine(frames: list[torch.Tensor], engine: InferenceEngine, streams: int = 32) -> dict[str, float]:
    """The live engine on frames already on the GPU: every frame submitted at once across ``streams`` names, timed to the last score."""
    sync()
    start = time.perf_counter()
    futures = [engine.submit(f"offline-{i % streams}", frame) for i, frame in enumerate(frames)]
    faces = sum(len(f.result(timeout=600).faces) for f in futures)
    seconds = time.perf_counter() - start
    return {"frames_per_s": len(frames) / seconds, "faces_per_s": faces / seconds, "ms_per_frame": 1000 * seconds / len(frames), "faces": faces}


def repeated_clip(clip: Path, times: int, out_dir: Path) -> Path:
    """``clip`` played ``times`` times in a row, remuxed (no re-encoding) into one longer file.

    A looped file has a loop point (a seek, a decoder drain) that a camera never has. Clips long
    enough not to end during a measurement leave it out of the figures.
    """
    if times <= 1:
        return clip
    out = out_dir / f"{clip.stem}-x{times}{clip.suffix}"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(f".{os.getpid()}.partial{clip.suffix}")  # bench/per_gpu.py's processes may write it at once
    with av.open(str(clip)) as src, av.open(str(partial), "w") as dst:
        video = src.streams.video[0]
        copy = dst.add_stream_from_template(video)
        packets = [packet for packet in src.demux(video) if packet.dts is not None]
        stamps = [(packet.pts, packet.dts) for packet in packets]
        step = stamps[1][1] - stamps[0][1] if len(stamps) > 1 else 1
        span = stamps[-1][1] - stamps[0][1] + step
        for k in range(times):
            for packet, (pts, dts) in zip(packets, stamps, strict=True):
                packet.stream, packet.time_base = copy, video.time_base  # the muxer rebases it in place
                packet.pts = None if pts is None else pts + k * span
                packet.dts = dts + k * span
                dst.mux(packet)
    partial.rename(out)
    return out


def shard_indices(n: int, shard: str | None) -> list[int]:
    """The stream numbers ``s<i>`` of ``n`` that ``--shard INDEX/COUNT`` keeps, all without it: the per-GPU launcher's
    balanced split (the eighth session's runs 47-49 used the rendezvous split, e.g. 147 + 153 of 300)."""
    if shard is None:
        return list(range(n))
    index, count = (int(x) for x in shard.split("/"))
    placed = balanced_assignment([f"s{i}" for i in range(n)], count)
    return [i for i in range(n) if placed[f"s{i}"] == index]


def barrier(directory: Path | None, shard: str | None) -> None:
    """``--barrier``: say this process is ready for its next row, then wait for bench/per_gpu.py's go, so every
    GPU's process starts its streams, and so measures, at the same time."""
    if directory is None:
        return
    step = next(BARRIER_STEPS)
    (directory / f"{step}.{(shard or '0/1').split('/')[0]}.ready").touch()
    while not (directory / f"{step}.go").exists():
        time.sleep(0.05)


BARRIER_STEPS = itertools.count(1)  # this process's rows (and their start-up), in the order bench/per_gpu.py releases them


async def until_streaming(sources: list[FrameSource], timeout_s: float) -> tuple[float | None, int]:
    """Seconds until every source is streaming (None past ``timeout_s``), and how many were not by then.

    Start-up (connecting, NVDEC sessions, the start turns) is its own figure; the warm-up and the
    measured window come after it, so a slow start does not read as a steady-state shortfall.
    """
    started = time.perf_counter()
    while True:
        waiting = sum(1 for s in sources if s.state != StreamState.STREAMING)
        if waiting == 0:
            return round(time.perf_counter() - started, 1), 0
        if time.perf_counter() - started > timeout_s:
            return None, waiting
        await asyncio.sleep(0.2)


async def live_once(n: int, args: argparse.Namespace, engine: InferenceEngine | EnginePool) -> dict[str, object]:
    pipelines: list[StreamPipeline] = []
    sources: list[FrameSource] = []
    window, alerts = WindowConfig(), AlertConfig()
    longer = Path(tempfile.gettempdir()) / "deepfake-stream-bench-clips"
    clips = [repeated_clip(args.clips / name, args.repeat_clips, longer) for name in args.clip_names]
    kept = shard_indices(n, args.shard)
    await asyncio.to_thread(barrier, args.barrier, args.shard)
    for i in kept:
        clip = clips[i % len(clips)]
        cfg = StreamConfig(name=f"s{i}", url=str(clip), sample_fps=args.sample_fps, loop=True, realtime=True, decoder=args.decoder, skip_frames=args.skip_frames)
        source = open_source(cfg, device=engine.device_for(cfg.name))
        source.start()
        sources.append(source)
        pipelines.append(StreamPipeline(cfg.name, source, engine, NullPublisher(), window, alerts))
    tasks = [asyncio.create_task(p.run()) for p in pipelines]
    startup_s, not_streaming = await until_streaming(sources, args.startup_timeout)
    await asyncio.to_thread(barrier, args.barrier, args.shard)  # every GPU's process measures from the same moment
    await asyncio.sleep(args.warmup)
    stats0 = dataclasses.replace(engine.stats)  # a copy: an engine's stats object keeps counting
    frames0, faces0 = stats0.frames, stats0.faces
    cpu0 = os.times()
    eng_drop0 = sum(engine.stats.dropped.values())
    src_drop0 = sum(s.stats.frames_dropped for s in sources)
    for p in pipelines:
        p.latencies.clear()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with Utilisation() as util:
        await asyncio.sleep(args.duration)
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    stats1 = dataclasses.replace(engine.stats)
    frames = stats1.frames - frames0
    batches = stats1.batches - stats0.batches
    latencies = np.array([x for p in pipelines for x in p.latencies]) * 1000
    fps_in = float(np.mean([s.stats.fps_in for s in sources])) if sources else 0.0  # a shard may own none
    decoders = sorted({str(s.stats.decoder) for s in sources})
    result = {
        "part": "live",
        "decoder": args.decoder,
        "decoders_used": decoders,
        "skip_frames": args.skip_frames,
        "models": args.live_models,
        "gpus": args.gpus,
        "shard": args.shard,
        "streams_total": n,
        "streams": len(kept),
        "expected_samples_per_s": len(kept) * args.sample_fps,
        "startup_s": startup_s,  # until every stream decoded its first picture (None: not within --startup-timeout)
        "not_streaming_at_warmup": not_streaming,
        "samples_per_s": round(frames / seconds, 2),
        "faces_per_s": round((engine.stats.faces - faces0) / seconds, 2),
        "engine_dropped": sum(engine.stats.dropped.values()) - eng_drop0,
        "source_dropped": sum(s.stats.frames_dropped for s in sources) - src_drop0,
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        "decode_fps_per_stream": round(fps_in, 1),
        "gpu_mem_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "nvdec_workers": NVDEC.workers_per_gpu if NVDEC.workers_per_gpu is not None else default_workers(NVDEC.backend),
        "nvdec_backend": NVDEC.backend,
        "mean_batch_frames": round(frames / batches, 2) if batches else None,
        # busy share of the engines' detection and classification stages (detection: per detection thread)
        "detect_busy": round((stats1.detect_s - stats0.detect_s) / seconds / max(args.detect_workers * args.gpus, 1), 3),
        "classify_busy": round((stats1.classify_s - stats0.classify_s) / seconds / max(args.gpus, 1), 3),
        "analyzer_cores_busy": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / seconds, 2),
        **util.summary(),
    }
    if args.keep_latencies:  # bench/per_gpu.py pools every process's latencies for its percentiles
        result["latencies_ms"] = [round(float(x), 2) for x in latencies]
    for s in sources:
        await s.stop()
    _, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for i in kept:
        engine.forget(f"s{i}")
    return result


def latency_part(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """Classifier forward latency by batch size, eager vs CUDA graphs (and compiled + graphs with --compile), median of 50 after warm-up."""
    if device.type != "cuda":
        return []
    rows = []
    arrangements = [("eager", make_ensemble(args.encoder, 1, device, False, 380)), ("graphs", make_ensemble(args.encoder, 1, device, True, 380))]
    if args.compile:
        arrangements.append(("compiled_graphs", make_ensemble(args.encoder, 1, device, True, 380, compiled=True)))
    for bs in (1, 2, 4, 8, 32, 64):
        x = torch.randn(bs, 3, 380, 380, device=device, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        result: dict[str, object] = {"part": "classifier_latency", "batch": bs}
        for label, ens in arrangements:
            for _ in range(5):
                ens.predict(x)
            times = []
            for _ in range(50):
                sync()
                t0 = time.perf_counter()
                ens.predict(x)  # includes the copy of the scores to the host, as the engine does
                times.append(time.perf_counter() - t0)
            result[f"{label}_ms"] = round(1000 * float(np.median(times)), 2)
        rows.append(result)
        print(f"  B7 batch {bs:3d}: " + "  ".join(f"{label} {result[f'{label}_ms']:7.2f} ms" for label, _ in arrangements), flush=True)
    return rows


def live_ensembles(args: argparse.Namespace, device: torch.device) -> list[Ensemble]:
    """Random weights (no checkpoint), one classifier per GPU asked for, built once for every engine setting."""
    devices = [torch.device("cuda", i) for i in range(args.gpus)] if device.type == "cuda" else [device]
    started = time.perf_counter()
    ensembles = [make_ensemble(args.encoder, args.live_models, d, d.type == "cuda" and not args.no_graphs, 380, compiled=args.compile) for d in devices]
    built = {"classifier_build_s": round(time.perf_counter() - started, 1), "compiled": all(e.compiled for e in ensembles)}
    if args.compile:
        from torch._dynamo.utils import counters

        built["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
    print(f"  classifier built: {built}", flush=True)
    return ensembles


def live_engine(args: argparse.Namespace, ensembles: list[Ensemble]) -> InferenceEngine | EnginePool:
    """The shipped builder around ``ensembles`` (every model and its CUDA graphs first, then the engines' threads, as
    ``detector/build.py`` does), one engine per GPU."""
    engine_cfg = EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_pending_per_stream=2, detect_workers=args.detect_workers)
    engines = []
    for ensemble in ensembles:
        d = ensemble.device
        detector_cfg = DetectorConfig(device=str(d), rescale="size", gpu_resize=True, fast_mtcnn=True, input_size=380, cuda_graphs=not args.no_graphs)
        engines.append(build_engine(detector_cfg, engine_cfg, ensemble=ensemble))
    return engines[0] if len(engines) == 1 else EnginePool(engines)


def engine_settings(args: argparse.Namespace) -> list[tuple[int, int, float]]:
    """(detection threads, max batch, max wait ms) for each row set: ``--engine-variants`` or the single flags."""
    if not args.engine_variants:
        return [(args.detect_workers, args.max_batch, args.max_wait_ms)]
    settings = []
    for text in args.engine_variants:
        workers, batch, wait = text.split("/")
        settings.append((int(workers), int(batch), float(wait)))
    return settings


class DecodeOnlyEngine:
    """Stands in for the engine in ``--parts sources``: every sample is answered at once with no faces.

    What the decoders alone deliver (decode rate, samples/s, CPU) with nothing else on the GPU.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stats = EngineStats()

    def device_for(self, stream: str) -> torch.device:
        return self.device

    def submit(self, stream: str, image: object) -> Future[FrameResult]:
        now = time.monotonic()
        self.stats.frames += 1
        self.stats.batches += 1
        future: Future[FrameResult] = Future()
        future.set_result(FrameResult([], now, now, 1))
        return future

    def forget(self, stream: str) -> None:
        pass

    def close(self) -> None:
        pass


def live_part(args: argparse.Namespace, device: torch.device, decode_only: bool = False) -> list[dict[str, object]]:
    """Rows for every (engine setting, decoder workers, N): the pools are closed between worker counts."""
    ensembles = [] if decode_only else live_ensembles(args, device)
    rows = []
    for workers_, batch, wait in engine_settings(args):
        args.detect_workers, args.max_batch, args.max_wait_ms = workers_, batch, wait
        engine = DecodeOnlyEngine(device) if decode_only else live_engine(args, ensembles)
        try:
            rows += _live_rows(args, engine, decode_only)
        finally:
            close_pools()
            engine.close()
    return rows


def _live_rows(args: argparse.Namespace, engine: InferenceEngine | EnginePool | DecodeOnlyEngine, decode_only: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for workers in args.nvdec_workers or [None]:
        NVDEC.workers_per_gpu = workers
        for n in args.streams:
            row = asyncio.run(live_once(n, args, engine))  # type: ignore[arg-type]
            behind = row["samples_per_s"] < 0.9 * row["expected_samples_per_s"] or (row["engine_dropped"] + row["source_dropped"]) > 0.02 * row["expected_samples_per_s"] * args.duration
            row["falls_behind"] = bool(behind)
            row.update(detect_workers=args.detect_workers, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
            if decode_only:
                row["part"] = "sources"
            rows.append(row)
            kept_note = f" kept {row['streams']}" if args.shard else ""
            waiting_note = f" ({row['not_streaming_at_warmup']} not streaming)" if row["not_streaming_at_warmup"] else ""
            if args.partial_out is not None:  # a run cut short still leaves its rows
                args.partial_out.write_text(json.dumps(rows, indent=1))
            print(
                f"  {row['part']:7s} {'shard ' + args.shard + ' ' if args.shard else ''}{args.decoder:7s} {args.skip_frames:6s} workers={workers} "
                f"dw={args.detect_workers} mb={args.max_batch} mw={args.max_wait_ms:g} N={n:4d}{kept_note} "
                f"samples/s {row['samples_per_s']:7.1f}/{row['expected_samples_per_s']:<6.0f} "
                f"faces/s {row['faces_per_s']:7.1f} drops {row['engine_dropped']}+{row['source_dropped']} p50 {row['latency_p50_ms']} p99 {row['latency_p99_ms']} ms "
                f"batch {row['mean_batch_frames']} detect {row['detect_busy']} classify {row['classify_busy']} "
                f"decode {row['decode_fps_per_stream']} fps gpu {row['gpu_util_pct']}% nvdec {row['nvdec_util_pct']}% cpu {row['cpu_cores_busy']} cores "
                f"(analyzer {row['analyzer_cores_busy']}) mem {row['gpu_mem_peak_gib']} GiB {row['decoders_used']} start-up {row['startup_s']} s{waiting_note}"
                f"{'  BEHIND' if behind else ''}",
                flush=True,
            )
            if behind and not args.keep_going:
                break
        close_pools()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "media" / "clips")
    parser.add_argument("--clip-names", nargs="+", default=DEFAULT_CLIPS)
    parser.add_argument("--repeat-clips", type=int, default=1, help="live: play each clip this many times in one file, so no stream reaches its end during a run (cameras never do)")
    parser.add_argument("--encoder", default="tf_efficientnet_b7.ns_jft_in1k")
    parser.add_argument("--models", type=int, nargs="+", default=[1, 7], help="ensemble sizes for the offline part")
    parser.add_argument("--offline-frames", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64, 128, 192, 256])
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--engine-variants", nargs="+", default=None, metavar="DW/MB/MW", help="live: a row set per engine setting (detection threads/max batch/max wait ms), one model build")
    parser.add_argument("--decoder", choices=["auto", "nvdec", "thread", "process"], default="auto", help="how live streams are decoded (see StreamConfig.decoder)")
    parser.add_argument("--detect-workers", type=int, default=EngineConfig().detect_workers, help="engine detection threads (CUDA)")
    parser.add_argument("--nvdec-workers", type=int, nargs="+", default=None, help="NVDEC worker processes per GPU (0: decode in this process's threads); several values: a row set for each")
    parser.add_argument("--nvdec-backend", choices=["pynvvideocodec", "ffmpeg"], default=NVDEC.backend, help="what feeds NVDEC (engine.nvdec_backend)")
    parser.add_argument("--keep-going", action="store_true", help="live: measure every N even after one falls behind")
    parser.add_argument("--gpus", type=int, default=1, help="live: one engine per GPU, streams placed by load")
    parser.add_argument("--live-models", type=int, default=1, help="live: ensemble size (7 = the winner's full ensemble)")
    parser.add_argument("--skip-frames", choices=["none", "nonref", "nonkey"], default="none")
    parser.add_argument("--parts", nargs="+", default=["offline", "live"], choices=["offline", "latency", "live", "sources"])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench.json")
    parser.add_argument("--compile", action="store_true", help="compile the classifier (detector.compile_classifier); latency part: adds compiled rows")
    parser.add_argument("--no-graphs", action="store_true", help="live: no CUDA graphs (eager classifier and P-Net pyramid)")
    parser.add_argument("--switch-interval-ms", type=float, default=None, help="the interpreter's GIL switch interval (sys.setswitchinterval); default Python's 5 ms")
    parser.add_argument("--partial-out", type=Path, default=None, help="live rows written here after each one")
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="live: the most seconds to wait for every stream to stream before the warm-up")
    parser.add_argument("--shard", default=None, metavar="INDEX/COUNT", help="live: only the streams s<i> this shard owns (the per-GPU launcher's balanced split)")
    parser.add_argument("--barrier", type=Path, default=None, help="live: wait for bench/per_gpu.py's go in this directory before each row")
    parser.add_argument("--keep-latencies", action="store_true", help="live: every sample's latency in the rows (for bench/per_gpu.py)")
    parser.add_argument("--mps", choices=["auto", "on", "off"], default=EngineConfig().mps, help="engine.mps: this process and its decoder workers under a private CUDA MPS daemon")
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    NVDEC.backend = args.nvdec_backend
    mps = start_mps(args.mps, cuda_wanted=True)  # before this process first touches CUDA (as stream/app.py does)
    try:
        return run(args, mps_used=mps is not None)
    finally:
        if mps is not None:
            mps.stop()


def run(args: argparse.Namespace, mps_used: bool) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "encoder": args.encoder,
        "sample_fps": args.sample_fps,
        "clips": args.clip_names,
        "repeat_clips": args.repeat_clips,
        "switch_interval_ms": sys.getswitchinterval() * 1000,
        "classifier_compiled": args.compile,
        "mps": mps_used,
    }
    print(json.dumps(meta))
    rows: list[dict[str, object]] = []
    if "offline" in args.parts:
        print("offline (same frames, same model):", flush=True)
        rows += offline_part(args, device)
    if "latency" in args.parts:
        print("classifier latency:", flush=True)
        rows += latency_part(args, device)
    if "live" in args.parts:
        print("live streams (1080p H.264, looped in real time):", flush=True)
        rows += live_part(args, device)
    if "sources" in args.parts:
        print("decoders alone (no engine: every sample answered at once):", flush=True)
        rows += live_part(args, device, decode_only=True)
    write_results(args.out, meta, rows)
    return 0


def write_results(out: Path, meta: dict[str, object], rows: list[dict[str, object]]) -> None:
    """The bench scripts' JSON: the run's meta and its rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
