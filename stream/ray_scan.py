"""``deepfake-stream scan --ray [ADDRESS]``: the offline scan spread over a Ray cluster.

Ray Data streams the video paths through two stages:

1. **decode** (CPU tasks, anywhere in the cluster): the evenly spaced frames of a
   video, exactly as the plain scan reads them (``read_evenly_spaced_frames``);
2. **score** (an actor pool): each actor holds one model replica (MTCNN + the
   classifier ensemble, built by ``detector.build.build_predictor``) on one GPU when
   the cluster has GPUs, else on CPU, and runs the plain scan's
   ``VideoPredictor.score_frames`` on the decoded frames.

Only small rows come back to the driver, which restores the input order and
writes the CSV with the plain scan's ``write_predictions``: same rows, same
scores, whichever worker scored a video.  Videos and checkpoints are read by
path on the workers, so on a multi-node cluster they must be at the same paths
on every node (a shared filesystem).

Ray is an optional extra (``pip install 'deepfake-stream[ray]'``) and is imported
only when this scan runs.  This module imports no torch at the top: the decode
tasks load it by reference and stay light; only the actors load the models.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.config import DetectorConfig
from detector.video import VideoReadError, read_evenly_spaced_frames

if TYPE_CHECKING:
    from types import ModuleType

    from detector.pipeline import VideoPrediction

log = logging.getLogger("deepfake_stream.ray_scan")

LOCAL = "local"  # `--ray` without an address: a new Ray instance on this machine
NO_FRAMES = np.zeros((0, 1, 1, 3), dtype=np.uint8)  # the frames column of a video that could not be read
DECODE_BYTES_PER_FRAME = 1920 * 1080 * 3  # an RGB 1080p frame


class RayScanError(RuntimeError):
    """A Ray scan that cannot run (no Ray, no GPU where one was asked for, a cluster that fails)."""


@dataclass(frozen=True)
class ReplicaPlan:
    """How many model replicas, what each one reserves, and the device its config names."""

    replicas: int
    num_gpus: float
    num_cpus: float
    device: str


def plan_replicas(cluster: Mapping[str, float], device: str, replicas: int | None = None) -> ReplicaPlan:
    """One replica per GPU when there are GPUs (and ``device`` allows them); else CPU replicas on half the CPUs.

    The other half of the CPUs decode: on a CPU cluster both stages compete for the same cores.
    """
    gpus = int(cluster.get("GPU", 0))
    cpus = int(cluster.get("CPU", 0))
    if replicas is not None and replicas < 1:
        raise RayScanError(f"model replicas must be at least 1, got {replicas}")
    if device == "cpu" or (device == "auto" and gpus == 0):
        return ReplicaPlan(replicas or max(1, cpus // 2), num_gpus=0, num_cpus=1, device="cpu")
    if gpus == 0:
        raise RayScanError(f"device {device!r} asks for a GPU, but the Ray cluster has none (resources: {dict(cluster)})")
    if replicas is not None and replicas > gpus:
        raise RayScanError(f"{replicas} GPU model replicas asked for, but the Ray cluster has {gpus} GPUs")
    return ReplicaPlan(replicas or gpus, num_gpus=1, num_cpus=1, device="cuda")  # Ray sets CUDA_VISIBLE_DEVICES per actor


def decode_row(row: dict[str, Any], frames_per_video: int) -> dict[str, Any]:
    """Stage 1 (a CPU task): the video's sampled frames as one (n, H, W, 3) array, or the reason there are none."""
    try:
        sampled = read_evenly_spaced_frames(row["path"], frames_per_video)
    except VideoReadError as exc:
        return {**row, "frames": NO_FRAMES, "error": str(exc)}
    return {**row, "frames": np.stack(sampled.frames), "error": ""}


class ModelReplica:
    """Stage 2 (one actor): one model replica, scoring decoded videos one at a time.

    A checkpoint that cannot be loaded does not kill the actor (Ray would only
    report that it died): its rows come back marked ``fatal`` with the loader's
    message, and the driver raises that as the plain scan would.
    """

    def __init__(self, detector_config: dict[str, Any]) -> None:
        from detector.build import build_predictor  # the one place the plain scan builds its models too
        from detector.errors import CheckpointError

        self.fatal = ""
        try:
            self.predictor = build_predictor(DetectorConfig.model_validate(detector_config))
        except CheckpointError as exc:
            self.fatal = str(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from detector.pipeline import NEUTRAL_SCORE, VideoPrediction

        rows: list[tuple[int, float, int, int, str]] = []
        for index, path, frames, error in zip(batch["index"], batch["path"], batch["frames"], batch["error"], strict=True):
            if self.fatal or error:
                pred = VideoPrediction(Path(path), NEUTRAL_SCORE, 0, 0, self.fatal or str(error))
            else:
                pred = self.predictor.score_frames(Path(path), list(np.array(frames)))  # a writable copy of the shared block
            rows.append((int(index), pred.score, pred.frames, pred.faces, pred.error or ""))
        index, score, n_frames, faces, errors = zip(*rows, strict=True) if rows else ((), (), (), (), ())
        return {
            "index": np.array(index, dtype=np.int64),
            "score": np.array(score, dtype=np.float64),
            "frames": np.array(n_frames, dtype=np.int64),
            "faces": np.array(faces, dtype=np.int64),
            "error": np.array(errors, dtype=object),
            "fatal": np.full(len(rows), bool(self.fatal)),
        }


def predictions_from_rows(rows: Sequence[Mapping[str, Any]], videos: Sequence[Path]) -> list[VideoPrediction]:
    """The actors' rows (any order) as the plain scan's predictions, in input order, paths as given.

    Raises CheckpointError when a replica could not load its checkpoints, and
    RayScanError when a video's row is missing or doubled.
    """
    from detector.errors import CheckpointError
    from detector.pipeline import VideoPrediction

    fatal = next((row["error"] for row in rows if row["fatal"]), None)
    if fatal is not None:
        raise CheckpointError(fatal)
    ordered = sorted(rows, key=lambda row: int(row["index"]))
    if [int(row["index"]) for row in ordered] != list(range(len(videos))):
        raise RayScanError(f"Ray returned {len(rows)} results for {len(videos)} videos")
    return [
        VideoPrediction(video, float(row["score"]), int(row["frames"]), int(row["faces"]), str(row["error"]) or None)
        for video, row in zip(videos, ordered, strict=True)
    ]


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401 - the extra's Ray Data, not a bare ray
    except ImportError as exc:
        raise RayScanError(f"scan --ray needs Ray Data ({exc}): install the extra, pip install 'deepfake-stream[ray]' or uv sync --extra ray") from None
    return ray


def ray_scan(
    videos: Sequence[Path],
    cfg: DetectorConfig,
    out: Path,
    address: str | None = LOCAL,
    progress: bool = True,
    replicas: int | None = None,
) -> list[VideoPrediction]:
    """Score every video on Ray and write the CSV like ``stream.scan.scan`` does; returns the predictions in input order.

    ``address``: ``local`` starts a Ray instance on this machine, ``auto`` joins
    the one running here, ``ray://head:10001`` a remote cluster.  When Ray is
    already initialised in this process that instance is used and left running.
    """
    from detector.errors import CheckpointError
    from stream.scan import write_predictions

    for path in cfg.weight_paths():  # fail before the cluster spins up, with the plain scan's message
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist (run `deepfake-stream weights download`?)")
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address == LOCAL:  # a throwaway instance of ours: no usage report leaves this machine
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayScanError(f"cannot start or reach Ray at {address!r}: {first_line(exc)}") from None
    try:
        rows = run_dataset(ray, videos, cfg, replicas, progress)
    finally:
        if started_here:
            ray.shutdown()
    predictions = predictions_from_rows(rows, videos)
    for pred in predictions:
        if pred.error:
            log.warning("%s scored %.1f: %s", pred.path, pred.score, pred.error)
    write_predictions(predictions, out)
    return predictions


def build_dataset(ray: ModuleType, videos: Sequence[Path], cfg: DetectorConfig, plan: ReplicaPlan) -> Any:
    """Video paths -> decode (CPU tasks) -> score (``plan.replicas`` model actors); lazy until consumed."""
    # workers have their own working directory: every path they get is absolute
    replica_cfg = cfg.model_copy(update={"device": plan.device, "weights": [p.resolve() for p in cfg.weight_paths()], "weights_dir": Path("/")})
    items = [{"index": i, "path": str(path.resolve())} for i, path in enumerate(videos)]
    # Each decode task reserves room for its frames at 1080p, so a node runs no more decodes than
    # its memory holds; that reservation also keeps Ray Data from fusing decoding into the actors
    # (where a GPU would wait while its own actor decodes).
    decode_memory = int(cfg.frames_per_video * DECODE_BYTES_PER_FRAME * 2)
    return (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map(decode_row, fn_kwargs={"frames_per_video": cfg.frames_per_video}, num_cpus=1, memory=decode_memory)
        .map_batches(
            ModelReplica,
            fn_constructor_kwargs={"detector_config": replica_cfg.model_dump(mode="json")},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=plan.replicas),
            num_gpus=plan.num_gpus,
            num_cpus=plan.num_cpus,
        )
    )


def run_dataset(ray: ModuleType, videos: Sequence[Path], cfg: DetectorConfig, replicas: int | None, progress: bool) -> list[dict[str, Any]]:
    """The scan over the cluster; the rows as they come (any order)."""
    plan = plan_replicas(ray.cluster_resources(), cfg.device, replicas)
    log.info("Ray scan: %d videos, %d model replicas (%s)", len(videos), plan.replicas, plan.device)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    try:
        return list(build_dataset(ray, videos, cfg, plan).take_all())
    except Exception as exc:  # noqa: BLE001 - whatever a worker or the cluster raised, as one line
        raise RayScanError(f"Ray scan failed: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
