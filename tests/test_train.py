"""prepare -> train -> the service's loader and predictor, on tiny CPU configurations."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.classifier import Ensemble, load_classifier
from detector.faces import FaceDetector
from detector.pipeline import VideoPredictor
from detector.preprocessing import prepare_crop
from detector.video import read_evenly_spaced_frames
from stream.cli import main
from tests.fixtures.media import astronaut_frame, astronaut_video, write_video
from training.data import FaceCrops, FaceRecord, read_index, split_by_identity
from training.layout import DatasetError
from training.lite import LITE0_ENCODER
from training.prepare import PrepareConfig, dataset_for, prepare

FRAMES = 4
INPUT = 64


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 'people': the drifting astronaut, and a bigger, slower one."""
    root = tmp_path_factory.mktemp("real")
    astronaut_video(root / "anna.mp4", seconds=1.0, height=240)
    write_video(root / "bert.mp4", [astronaut_frame(300, face_fraction=0.9, shift=int(12 * np.cos(i / 4))) for i in range(20)])
    return root


@pytest.fixture(scope="module")
def manifest(videos: Path) -> Path:
    path = videos.parent / "manifest.csv"
    path.write_text("file,identity,label\nanna.mp4,anna,REAL\nbert.mp4,bert,REAL\n")
    return path


@pytest.fixture(scope="module")
def dataset(videos: Path, manifest: Path) -> Path:
    out = videos.parent / "dataset"
    prepare([videos], out, manifest, PrepareConfig(frames_per_video=FRAMES, device="cpu"), progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(dataset: Path) -> Path:
    out = dataset.parent / "sbi.pth"
    rc = main(["train", "--real", str(dataset), "--out", str(out), "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "4",
               "--input-size", str(INPUT), "--device", "cpu", "--workers", "0", "--val-identities", "bert", "--no-progress"])
    assert rc == 0
    return out


def _rows(dataset: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset / "index.jsonl").read_text().splitlines()]


def test_prepare_writes_crops_with_boxes_and_landmarks(dataset: Path) -> None:
    rows = _rows(dataset)
    assert len(rows) == 2 * FRAMES and {r["identity"] for r in rows} == {"anna", "bert"}
    for row in rows:
        width, height = row["crop_size"]
        x1, y1, x2, y2 = row["box"]
        points = np.array(row["landmarks"])
        assert (dataset / row["file"]).is_file() and row["prob"] > 0.9
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert points.shape == (5, 2)
        assert ((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1) & (points[:, 1] < y2)).all()
        assert points[:2, 1].max() < points[3:, 1].min()  # eyes above the mouth
        assert max(width, height) <= PrepareConfig().max_side
    summary = json.loads((dataset / "dataset.json").read_text())
    assert summary["crops"] == len(rows) and summary["skipped"] == {}


def test_landmarks_leave_the_detectors_boxes_bit_exact(videos: Path) -> None:
    frames = read_evenly_spaced_frames(videos / "bert.mp4", 2).frames
    plain = FaceDetector(device="cpu").detect(frames)
    marked = FaceDetector(device="cpu", landmarks=True).detect(frames)
    for a, b in zip(plain, marked, strict=True):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.probs, b.probs)
        assert all(np.array_equal(x, y) for x, y in zip(a.crops, b.crops, strict=True))
        assert a.landmarks is None and b.landmarks is not None and b.landmarks.shape == (len(b), 5, 2)


def test_unreadable_video_is_skipped_with_a_warning_naming_it(tmp_path: Path, videos: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video")
    with caplog.at_level(logging.WARNING):
        summary = prepare([broken, videos / "anna.mp4"], tmp_path / "ds", config=PrepareConfig(frames_per_video=2, device="cpu"), progress=False)
    assert summary.videos == 1 and str(broken) in summary.skipped
    assert any(str(broken) in record.getMessage() for record in caplog.records)


def test_size_budget_reduces_frames_per_video_evenly(tmp_path: Path, videos: Path, dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    full_bytes = sum((dataset / r["file"]).stat().st_size for r in _rows(dataset))
    with caplog.at_level(logging.WARNING):
        summary = prepare([videos], tmp_path / "small", config=PrepareConfig(frames_per_video=FRAMES, max_mb=full_bytes * 0.55 / 2**20, device="cpu"), progress=False)
    rows = _rows(tmp_path / "small")
    assert summary.frames_per_video < FRAMES and {r["identity"] for r in rows} == {"anna", "bert"}
    assert sum((tmp_path / "small" / r["file"]).stat().st_size for r in rows) <= full_bytes * 0.55
    assert len(list((tmp_path / "small" / "faces").rglob("*.jpg"))) == len(rows)  # dropped crops are deleted
    assert any("reduced" in record.getMessage() for record in caplog.records)


def test_manifest_fake_rows_are_left_out(tmp_path: Path, videos: Path) -> None:
    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,label\nanna.mp4,FAKE\nbert.mp4,REAL\n")
    prepare([videos], tmp_path / "ds", manifest, PrepareConfig(frames_per_video=1, device="cpu"), progress=False)
    assert {r["identity"] for r in _rows(tmp_path / "ds")} == {"bert"}  # no identity column: the video stem


def test_split_holds_out_whole_identities() -> None:
    records = [FaceRecord(f"{p}{i}.jpg", f"/v/{p}.mp4", p, i, (0, 0, 1, 1), ((0, 0),) * 5) for p in "abcdefghij" for i in range(3)]
    train, val = split_by_identity(records, val_fraction=0.2, seed=3)
    assert len({r.identity for r in val}) == 2 and not {r.identity for r in train} & {r.identity for r in val}
    assert len(train) + len(val) == len(records)
    train, val = split_by_identity(records, val_identities=["c", "d.mp4"])
    assert {r.identity for r in val} == {"c", "d"}
    with pytest.raises(DatasetError, match="'zed'"):
        split_by_identity(records, val_identities=["zed"])
    with pytest.raises(DatasetError, match="at least 2 identities"):
        split_by_identity(records[:3])


def test_validation_inputs_are_inference_inputs(videos: Path, dataset: Path) -> None:
    """The dataset's crop of a frame, through the inference margin and resize, matches what inference makes of that frame."""
    records = [r for r in read_index(dataset) if r.identity == "bert"]
    sampled = read_evenly_spaced_frames(videos / "bert.mp4", FRAMES)
    inference = FaceDetector(device="cpu").detect(sampled.frames)
    crops = FaceCrops(dataset, records, 96, train=False)
    for i, record in enumerate(records):
        image, points = crops[i]
        expected = prepare_crop(inference[sampled.indices.index(record.frame)].crops[0], 96)
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
        assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).mean() < 4  # JPEG q90 only
        assert float(points.min()) >= 0 and float(points.max()) < 96


def test_training_margins_stay_close_to_the_inference_margin(dataset: Path) -> None:
    records = read_index(dataset)
    train_crops = FaceCrops(dataset, records, 96, train=True, seed=1)
    margins = np.array([train_crops.margins_for(i) for i in range(len(records))])
    assert (margins > 0.2).all() and (margins < 0.45).all() and margins.std() > 0.01
    first = train_crops[0][0]
    train_crops.set_epoch(1)
    assert not torch.equal(first, train_crops[0][0])  # a new margin every epoch


def test_trained_checkpoint_loads_strictly_and_scores_videos(checkpoint: Path, videos: Path) -> None:
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert raw["encoder"] == LITE0_ENCODER and raw["input_size"] == INPUT
    assert raw["trained"]["data"]["train_identities"] == 1 and raw["trained"]["epoch"] in (1, 2)
    assert "module.encoder.classifier.weight" in raw["state_dict"]  # the unused ImageNet head is kept
    model = load_classifier(checkpoint, LITE0_ENCODER)
    predictor = VideoPredictor(FaceDetector(device="cpu"), Ensemble([model], torch.device("cpu")), frames_per_video=FRAMES, input_size=INPUT)
    prediction = predictor.predict(videos / "anna.mp4")
    assert prediction.error is None and prediction.faces == FRAMES and 0.0 < prediction.score < 1.0
    history = json.loads(checkpoint.with_name("sbi.train.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert all(0.0 <= e["val_auc"] <= 1.0 and e["val_log_loss"] > 0 for e in history["epochs"])
    assert history["best"]["epoch"] == raw["trained"]["epoch"]


def test_fp16_checkpoint_is_half_the_size_and_loads_into_fp32(checkpoint: Path, dataset: Path) -> None:
    half = dataset.parent / "sbi16.pth"
    rc = main(["train", "--real", str(dataset), "--out", str(half), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
               "--input-size", str(INPUT), "--device", "cpu", "--workers", "0", "--val-identities", "bert", "--fp16", "--no-progress"])
    assert rc == 0
    assert half.stat().st_size < 0.55 * checkpoint.stat().st_size and half.stat().st_size < 20e6
    stored = torch.load(half, map_location="cpu", weights_only=True)["state_dict"]
    assert stored["module.fc.weight"].dtype == torch.float16
    model = load_classifier(half, LITE0_ENCODER)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stored[f"module.{name}"].to(tensor.dtype)), name


def test_train_prepares_raw_videos_once_into_its_cache(tmp_path: Path, videos: Path, manifest: Path) -> None:
    cfg = PrepareConfig(frames_per_video=1, device="cpu")
    first = dataset_for([videos], manifest, cfg, cache_root=tmp_path, progress=False)
    stamp = (first / "index.jsonl").stat().st_mtime_ns
    again = dataset_for([videos], manifest, cfg, cache_root=tmp_path, progress=False)
    assert again == first and (first / "index.jsonl").stat().st_mtime_ns == stamp
    assert dataset_for([first]) == first  # a prepared dataset is used as it is


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--real", "/no/such/dir", "--out", "x.pth"], "/no/such/dir: no such file"),
        (["train", "--real", "{dataset}", "--out", "x.pth", "--batch-size", "3"], "--batch-size must be an even number"),
        (["train", "--real", "{dataset}", "--out", "x.pth", "--val-identities", "nobody"], "'nobody' is neither"),
        (["prepare", "--real", "{dataset}/index.jsonl", "--out", "{dataset}"], "already holds a dataset"),
        (["prepare", "--real", "{dataset}", "--out", "x", "--frames-per-video", "0"], "--frames-per-video must be at least 1"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], message: str, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([a.format(dataset=dataset) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_help_does_not_import_torch() -> None:
    code = "import sys; from stream.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.clips
def test_prepare_shared_real_clips_leaves_the_fakes_out(clips_dir: Path, tmp_path: Path) -> None:
    inputs = [clips_dir / "liveportrait-d0.mp4", clips_dir / "retalking-1.mp4", clips_dir / "wav2lip-kim_lip_synced.mp4"]
    summary = prepare(inputs, tmp_path / "ds", clips_dir / "labels.csv", PrepareConfig(frames_per_video=2, device="cpu"), progress=False)
    rows = _rows(tmp_path / "ds")
    assert summary.videos == 2 and {r["identity"] for r in rows} == {"liveportrait-d0", "retalking-1"}
    assert all(len(r["landmarks"]) == 5 for r in rows)
