"""Which classifier runs: configured checkpoints, the embedded model, or (demo only) random weights."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from detector.classifier import CheckpointError
from detector.config import DetectorConfig
from detector.model_choice import choose_model
from detector.weights import PUBLISHED_CHECKPOINTS
from stream.cli import main
from tests.fixtures.media import TEST_ENCODER


def published(weights_dir: Path, names: list[str] | None = None, **kw: object) -> DetectorConfig:
    return DetectorConfig(weights_dir=weights_dir, encoder=TEST_ENCODER, device="cpu", **({"weights": names} if names else {}), **kw)


def test_configured_checkpoints_that_exist_run(checkpoint: Path) -> None:
    choice = choose_model(DetectorConfig(weights_dir=checkpoint.parent, weights=[checkpoint.name], encoder=TEST_ENCODER))
    assert choice.kind == "configured" and choice.paths == [checkpoint] and not choice.missing


def test_some_of_the_winners_checkpoints_run_as_a_smaller_ensemble(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / PUBLISHED_CHECKPOINTS[2]).write_bytes(checkpoint.read_bytes())
    choice = choose_model(published(tmp_path))
    assert choice.kind == "configured" and [p.name for p in choice.paths] == [PUBLISHED_CHECKPOINTS[2]]
    assert len(choice.missing) == 6 and "1 of 7" in choice.label
    assert choice.hint is not None and "--names" in choice.hint and PUBLISHED_CHECKPOINTS[2] not in choice.hint


def test_missing_winner_checkpoints_without_fallback_name_the_command_that_fetches_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPFAKE_STREAM_WEIGHTS", str(tmp_path / "default"))
    with pytest.raises(CheckpointError) as raised:
        choose_model(published(tmp_path / "mine", fallback="none"))
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    command = message.split("fetch the DFDC winner's with: ")[1]
    assert shlex.split(command) == ["deepfake-stream", "weights", "download", "--dir", str(tmp_path / "mine")]


def test_custom_checkpoints_are_never_replaced(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="mine.pth does not exist"):
        choose_model(DetectorConfig(weights_dir=tmp_path, weights=["mine.pth"], encoder=TEST_ENCODER))


def test_random_weights_only_when_asked(tmp_path: Path) -> None:
    choice = choose_model(published(tmp_path, fallback="none"), allow_random=True)
    assert choice.random and "RANDOM" in choice.label and choice.paths == []


def test_run_without_weights_says_in_one_line_what_to_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"detector:\n  weights_dir: {tmp_path / 'w'}\n  fallback: none\nmqtt: {{enabled: false}}\nhttp: {{enabled: false}}\n")
    assert main(["run", "--config", str(config), "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].endswith(f"deepfake-stream weights download --dir {tmp_path / 'w'}")
