"""`deepfake-stream scan` and `eval` end to end on real encoded video."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import main
from tests.fixtures.media import TEST_ENCODER

B0 = ["--encoder", TEST_ENCODER, "--device", "cpu", "--no-progress"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_scan_astronaut_video(astronaut_clip: Path, fake_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert main(["scan", str(astronaut_clip), "--out", str(out), "--weights", str(fake_checkpoint), "--frames", "8", *B0]) == 0
    rows = _rows(out)
    assert [r["filename"] for r in rows] == ["astronaut.mp4"]
    assert float(rows[0]["label"]) == pytest.approx(1 / (1 + math.exp(-6)), abs=1e-4)  # the face was found and scored


def test_scan_bad_inputs_get_neutral_scores_and_warnings(
    astronaut_clip: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("not a video at all\n" * 100)
    good = astronaut_clip.read_bytes()
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 3])
    corrupt = bytearray(good)
    for i in range(2000, len(corrupt), 97):
        corrupt[i] ^= 0xFF
    (videos / "corrupt.mp4").write_bytes(bytes(corrupt))
    (videos / "notes.txt").write_text("ignored: not a video extension")
    out = tmp_path / "p.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["scan", str(videos), "--out", str(out), "--weights", str(checkpoint), "--frames", "4", *B0]) == 0
    rows = {r["filename"]: float(r["label"]) for r in _rows(out)}
    assert set(rows) == {"empty.mp4", "text.mp4", "truncated.mp4", "corrupt.mp4"}
    assert rows["empty.mp4"] == 0.5 and rows["text.mp4"] == 0.5
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "empty.mp4" in warnings and "empty file" in warnings
    assert "text.mp4" in warnings and "cannot open as video" in warnings


def test_scan_shared_clips(clips_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    names = ["liveportrait-d0.mp4", "nicoletmk-Real6.mp4", "wav2lip-kim_lip_synced.mp4"]
    out = tmp_path / "p.csv"
    code = main(["scan", *[str(clips_dir / n) for n in names], "--out", str(out), "--weights", str(checkpoint), "--frames", "8", *B0])
    assert code == 0
    rows = _rows(out)
    assert [r["filename"] for r in rows] == names
    assert all(float(r["label"]) != 0.5 for r in rows)  # faces found in every clip


def test_eval_matches_hand_computed_log_loss(tmp_path: Path) -> None:
    preds = tmp_path / "p.csv"
    preds.write_text("filename,label\na.mp4,0.9\nb.mp4,0.2\nc.mp4,0.6\nd.mp4,1.0\nx.mp4,0.5\n")
    labels = tmp_path / "metadata.json"
    labels.write_text(json.dumps({n: {"label": lab} for n, lab in [("a.mp4", "FAKE"), ("b.mp4", "REAL"), ("c.mp4", "REAL"), ("d.mp4", "REAL"), ("e.mp4", "FAKE")]}))
    out = subprocess.run([sys.executable, "-m", "stream.cli", "eval", str(preds), "--labels", str(labels), "--json"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    eps = 1e-15
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(1 - (1 - eps))) / 4  # 1.0 is clipped to 1 - 1e-15
    assert result["log_loss"] == pytest.approx(expected, rel=1e-9)
    assert result["scored"] == 4 and result["missing"] == 1 and result["unlabelled"] == 1
    assert result["accuracy"] == pytest.approx(2 / 4)
    assert result["roc_auc"] == pytest.approx(2 / 3)


def test_eval_with_labels_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = tmp_path / "p.csv"
    preds.write_text("filename,label\na.mp4,0.7\nb.mp4,0.3\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label,kind\na.mp4,FAKE,x\nb.mp4,REAL,y\n")
    assert main(["eval", str(preds), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "log_loss  0.35667" in out and "roc_auc   1.00000" in out and "2 scored" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scan", "/does/not/exist.mp4"], "no such file"),
        (["scan", "x.mp4", "--frames", "0"], "--frames must be positive"),
        (["eval", "nope.csv", "--labels", "nope.json"], "predictions file not found"),
        (["scan"], "required: inputs"),
        (["frobnicate"], "invalid choice"),
        (["run", "--config", "/no/such/config.yaml"], "config file not found"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_bad_predictions_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = tmp_path / "p.csv"
    preds.write_text("filename,label\na.mp4,1.7\n")
    labels = tmp_path / "l.csv"
    labels.write_text("file,label\na.mp4,FAKE\n")
    assert main(["eval", str(preds), "--labels", str(labels)]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err


def test_wrong_checkpoint_is_one_line(astronaut_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"nope")
    assert main(["scan", str(astronaut_clip), "--out", str(tmp_path / "p.csv"), "--weights", str(bogus), *B0]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus.pth" in err and "not a loadable PyTorch weights file" in err


def test_roc_auc_matches_scikit_learn_including_ties() -> None:
    """eval computes ROC AUC itself (no scikit-learn import on its path); it must be scikit-learn's number."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from stream.evaluate import roc_auc

    rng = np.random.default_rng(12)
    for n in (2, 3, 7, 64, 500):
        for decimals in (1, 2, 6):  # few decimals: many tied scores
            y = rng.integers(0, 2, n)
            y[:2] = (0, 1)
            p = np.round(rng.random(n), decimals)
            assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))


def _labels_for(tmp_path: Path, names: list[str]) -> Path:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"{n},{lab}\n" for n, lab in zip(names, ["FAKE", "REAL"] * len(names), strict=False)) + "other.mp4,REAL\n")
    return labels


def _eval(preds: Path, labels: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", "eval", str(preds), "--labels", str(labels), *extra], capture_output=True, text=True, check=True)


def test_scan_records_its_checkpoints_and_eval_names_them(astronaut_clip: Path, fake_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert main(["scan", str(astronaut_clip), "--out", str(out), "--weights", str(fake_checkpoint), "--frames", "4", *B0]) == 0
    record = json.loads((tmp_path / "p.csv.json").read_text())
    assert record["random_weights"] is False and record["checkpoints"] == [fake_checkpoint.name]
    assert record["encoder"] == TEST_ENCODER and record["model"] == f"1 checkpoint(s) of {TEST_ENCODER}" and record["created"]
    labels = _labels_for(tmp_path, ["astronaut.mp4"])
    text = _eval(out, labels)
    assert f"model     1 checkpoint(s) of {TEST_ENCODER}" in text.stdout and "RANDOM" not in text.stdout + text.stderr
    as_json = json.loads(_eval(out, labels, "--json").stdout)
    assert as_json["model"]["checkpoints"] == [fake_checkpoint.name] and as_json["model"]["random_weights"] is False


def test_eval_warns_when_the_predictions_came_from_random_weights(astronaut_clip: Path, tmp_path: Path) -> None:
    import torch

    from detector.build import build_detector
    from detector.classifier import DeepFakeClassifier, Ensemble
    from detector.config import DetectorConfig
    from detector.pipeline import VideoPredictor
    from stream.evaluate import ModelRecord
    from stream.scan import scan

    cfg = DetectorConfig(encoder=TEST_ENCODER, device="cpu", frames_per_video=4, input_size=128)
    torch.manual_seed(0)
    predictor = VideoPredictor(build_detector(cfg), Ensemble([DeepFakeClassifier(TEST_ENCODER)], torch.device("cpu")), frames_per_video=4, input_size=128)
    out = tmp_path / "random.csv"
    scan([astronaut_clip], cfg, out, progress=False, predictor=predictor, model=ModelRecord("RANDOM B0 (demo fallback)", random_weights=True, encoder=TEST_ENCODER))
    labels = _labels_for(tmp_path, ["astronaut.mp4"])

    text = _eval(out, labels)
    warning = [line for line in text.stderr.splitlines() if "RANDOMLY INITIALISED" in line]
    assert len(warning) == 1 and str(out) in warning[0] and "say nothing" in warning[0]
    assert "RANDOM WEIGHTS: metrics meaningless" in text.stdout and "log_loss" in text.stdout
    as_json = _eval(out, labels, "--json")
    assert json.loads(as_json.stdout)["model"]["random_weights"] is True and "RANDOMLY INITIALISED" in as_json.stderr

    # the CSV is rewritten by something else: the record no longer describes it and is not trusted
    out.write_text(out.read_text() + "extra.mp4,0.5\n")
    stale = _eval(out, labels)
    assert "RANDOM" not in stale.stderr + stale.stdout and "describes another version of random.csv" in stale.stderr
    # no record at all: eval says the model is unknown, once, on stderr
    (tmp_path / "random.csv.json").unlink()
    bare = _eval(out, labels)
    assert bare.stderr.count("no model record") == 1 and "model " not in bare.stdout
    with pytest.raises(ValueError, match="ModelRecord"):
        scan([astronaut_clip], cfg, out, progress=False, predictor=predictor)
