"""stream/ray_scan.py: the offline scan on a real local Ray cluster gives the plain scan's rows and scores.

One Ray instance for the module (2 CPUs, a small object store, no dashboard,
worker logs kept out of the test output): starting Ray and each model actor
(whose process imports torch, timm and facenet) is what these tests spend
their time on, not scoring.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detector.classifier import CheckpointError
from stream.cli import main
from stream.config import DetectorConfig
from stream.demo_media import astronaut_frame, astronaut_video, write_video
from stream.ray_scan import ModelReplica, RayScanError, build_dataset, decode_row, plan_replicas, predictions_from_rows, ray_scan
from stream.scan import scan
from tests.fixtures.media import TEST_ENCODER

B0 = ["--encoder", TEST_ENCODER, "--device", "cpu", "--no-progress"]
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="ray is in the dev group: uv sync")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    started = time.monotonic()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    log.info("ray.init took %.1f s", time.monotonic() - started)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real H.264 clips of different sizes and lengths, one without a face, and two unreadable files, in no sorted order."""
    root = tmp_path_factory.mktemp("ray-media")
    wide = astronaut_video(root / "b-wide.mp4", seconds=1.0, height=360)
    small = astronaut_video(root / "a-small.mp4", seconds=0.6, height=240)
    black = write_video(root / "c-black.mp4", [np.zeros_like(astronaut_frame(240))] * 10)
    (root / "d-empty.mp4").write_bytes(b"")
    (root / "e-text.mp4").write_text("not a video\n" * 50)
    return [wide, root / "d-empty.mp4", small, black, root / "e-text.mp4"]


def detector_config(checkpoint: Path, **changes: Any) -> DetectorConfig:
    """The random-init B0 at a small input size: scores vary per face, and the CPU stays quick."""
    return DetectorConfig(weights=[checkpoint], weights_dir=Path("."), encoder=TEST_ENCODER, frames_per_video=4, input_size=128, device="cpu", **changes)


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


# --------------------------------------------------------------- end to end


def test_ray_scan_gives_the_plain_scans_rows_and_scores(ray_cluster: Any, videos: list[Path], checkpoint: Path, tmp_path: Path) -> None:
    cfg = detector_config(checkpoint)
    plain = scan(videos, cfg, tmp_path / "plain.csv", progress=False)
    started = time.monotonic()
    on_ray = ray_scan(videos, cfg, tmp_path / "ray.csv", progress=False)
    log.info("ray_scan of %d videos took %.1f s", len(videos), time.monotonic() - started)
    assert [p.path for p in on_ray] == [p.path for p in plain] == videos  # input order, paths as given
    assert [(p.score, p.frames, p.faces) for p in on_ray] == [(p.score, p.frames, p.faces) for p in plain]
    assert [p.error is None for p in on_ray] == [p.error is None for p in plain] == [True, False, True, False, False]
    assert on_ray[3].error is not None and "no face found" in on_ray[3].error
    assert on_ray[1].error is not None and "empty file" in on_ray[1].error
    assert plain[0].faces > 0 and plain[0].score != 0.5  # the astronaut was found and scored
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert [row[0] for row in csv_rows(tmp_path / "ray.csv")[1:]] == [v.name for v in videos]


def test_decoding_and_scoring_stay_separate_stages(ray_cluster: Any, videos: list[Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray Data fuses compatible stages; fused, each GPU actor would decode its own videos and idle meanwhile."""
    cfg = detector_config(checkpoint)
    for plan in (plan_replicas({"CPU": 2.0}, "cpu"), plan_replicas({"CPU": 8.0, "GPU": 1.0}, "auto")):
        build_dataset(ray_cluster, videos, cfg, plan).explain()
        optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
        assert "TaskPoolMapOperator[Map(decode_row)]" in optimized and "ActorPoolMapOperator[MapBatches(ModelReplica)]" in optimized, optimized


@pytest.mark.clips
def test_cli_scan_ray_on_shared_clips_writes_the_plain_scans_csv(ray_cluster: Any, clips_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    names = ["wav2lip-kim_lip_synced.mp4", "liveportrait-d0.mp4", "nicoletmk-Real6.mp4"]
    inputs = [str(clips_dir / n) for n in names]
    common = ["--weights", str(checkpoint), "--frames", "4", *B0]
    assert main(["scan", *inputs, "--out", str(tmp_path / "plain.csv"), *common]) == 0
    assert main(["scan", *inputs, "--out", str(tmp_path / "ray.csv"), *common, "--ray"]) == 0  # joins the module's instance
    rows = csv_rows(tmp_path / "ray.csv")
    assert rows == csv_rows(tmp_path / "plain.csv")
    assert [r[0] for r in rows[1:]] == names and all(float(r[1]) != 0.5 for r in rows[1:])


@pytest.mark.parametrize(("extra", "message"), [
    (["--device", "cuda"], "device 'cuda' asks for a GPU, but the Ray cluster has none"),
    (["--weights", "/no/such/model.pth"], "checkpoint /no/such/model.pth does not exist"),
])
def test_cli_ray_errors_are_one_line_before_any_actor_starts(
    ray_cluster: Any, videos: list[Path], checkpoint: Path, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scan", str(videos[0]), "--out", str(tmp_path / "p.csv"), "--weights", str(checkpoint), "--encoder", TEST_ENCODER, "--no-progress", "--ray", *extra]
    started = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert time.monotonic() - started < 10 and not (tmp_path / "p.csv").exists()


def test_ray_flag_swallowing_a_video_is_a_usage_error(videos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--ray", str(videos[0]), str(videos[2])]) == 2
    assert "--ray took" in capsys.readouterr().err


# ------------------------------------------------------- parts, without Ray


@pytest.mark.parametrize(("cluster", "device", "replicas", "expected"), [
    ({"CPU": 2.0}, "auto", None, (1, 0, "cpu")),
    ({"CPU": 16.0}, "cpu", None, (8, 0, "cpu")),
    ({"CPU": 64.0, "GPU": 4.0}, "auto", None, (4, 1, "cuda")),
    ({"CPU": 64.0, "GPU": 4.0}, "cuda:1", 2, (2, 1, "cuda")),
    ({"CPU": 64.0, "GPU": 4.0}, "cpu", 3, (3, 0, "cpu")),
])
def test_one_replica_per_gpu_else_cpu_replicas(cluster: dict[str, float], device: str, replicas: int | None, expected: tuple[int, int, str]) -> None:
    plan = plan_replicas(cluster, device, replicas)
    assert (plan.replicas, plan.num_gpus, plan.device) == expected


@pytest.mark.parametrize(("cluster", "device", "replicas", "message"), [
    ({"CPU": 8.0}, "cuda", None, "asks for a GPU, but the Ray cluster has none"),
    ({"CPU": 8.0, "GPU": 2.0}, "auto", 3, "3 GPU model replicas asked for, but the Ray cluster has 2 GPUs"),
    ({"CPU": 8.0}, "auto", 0, "at least 1"),
])
def test_impossible_plans_are_named(cluster: dict[str, float], device: str, replicas: int | None, message: str) -> None:
    with pytest.raises(RayScanError, match=message):
        plan_replicas(cluster, device, replicas)


def test_a_replica_that_cannot_load_its_checkpoint_fails_the_scan_with_the_loaders_message(videos: list[Path], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"nope")
    replica = ModelReplica(detector_config(bogus).model_dump(mode="json"))
    row = decode_row({"index": 0, "path": str(videos[0])}, frames_per_video=2)
    assert row["frames"].shape[0] == 2 and row["error"] == ""
    batch = {key: np.array([value] if key != "frames" else [value]) for key, value in row.items()}
    out = replica(batch)
    assert out["fatal"].tolist() == [True]
    rows = [{key: column[0] for key, column in out.items()}]
    with pytest.raises(CheckpointError, match="bogus.pth is not a loadable PyTorch weights file"):
        predictions_from_rows(rows, videos[:1])


def test_missing_or_doubled_rows_are_an_error() -> None:
    row = {"index": 0, "score": 0.5, "frames": 0, "faces": 0, "error": "x", "fatal": False}
    with pytest.raises(RayScanError, match="1 results for 2 videos"):
        predictions_from_rows([row], [Path("a.mp4"), Path("b.mp4")])
    with pytest.raises(RayScanError, match="2 results for 1 videos"):
        predictions_from_rows([row, row], [Path("a.mp4")])


def test_decode_tasks_stay_light_the_module_imports_no_torch() -> None:
    """Decode workers load this module by reference: torch, timm and facenet (seconds each) are for the actors only."""
    import subprocess
    import sys

    script = "import sys, stream.ray_scan; print(sorted(m for m in ('torch', 'timm', 'facenet_pytorch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
