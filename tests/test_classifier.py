"""DeepFakeClassifier and strict loading of checkpoints in the published layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from detector.classifier import CheckpointError, DeepFakeClassifier, Ensemble, load_classifier, save_checkpoint
from tests.fixtures.media import TEST_ENCODER


@pytest.fixture(scope="module")
def model() -> DeepFakeClassifier:
    torch.manual_seed(1)
    return DeepFakeClassifier(TEST_ENCODER).eval()


def test_architecture_is_the_winners() -> None:
    b7 = DeepFakeClassifier()
    assert b7.fc.in_features == 2560 and b7.fc.out_features == 1
    assert "encoder.classifier.weight" in b7.state_dict()  # the unused ImageNet head is kept
    assert isinstance(b7.avg_pool, torch.nn.AdaptiveAvgPool2d)


def test_published_layout_loads_strictly_with_identical_outputs(model: DeepFakeClassifier, tmp_path: Path) -> None:
    path = tmp_path / "ck"
    save_checkpoint(model, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict"} and all(k.startswith("module.") for k in raw["state_dict"])
    loaded = load_classifier(path, "tf_efficientnet_b0_ns")  # the winner's legacy name works too
    x = torch.randn(3, 3, 380, 380)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_bare_state_dict_without_prefix_loads(model: DeepFakeClassifier, tmp_path: Path) -> None:
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    assert torch.equal(load_classifier(path, TEST_ENCODER).fc.weight, model.fc.weight)


def test_missing_key_is_named(model: DeepFakeClassifier, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in model.state_dict().items() if k != "fc.bias"}
    torch.save({"state_dict": state}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys fc\.bias"):
        load_classifier(tmp_path / "missing.pth", TEST_ENCODER)


def test_unexpected_key_is_named(model: DeepFakeClassifier, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys extra\.weight"):
        load_classifier(tmp_path / "extra.pth", TEST_ENCODER)


def test_wrong_encoder_fails_clearly(model: DeepFakeClassifier, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path / "b0.pth")
    with pytest.raises(CheckpointError, match="does not match encoder tf_efficientnet_b1"):
        load_classifier(tmp_path / "b0.pth", "tf_efficientnet_b1.ns_jft_in1k")


def test_wrong_shape_is_named(model: DeepFakeClassifier, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(2, 1280)
    torch.save({"state_dict": state}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape.*fc\.weight \(2, 1280\)"):
        load_classifier(tmp_path / "shape.pth", TEST_ENCODER)


class Evil:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a loadable PyTorch weights file"),
        (b"this is not a checkpoint", "not a loadable PyTorch weights file"),
        (pickle.dumps({"state_dict": Evil()}, protocol=2), "not a loadable PyTorch weights file"),
    ],
)
def test_non_checkpoints_are_rejected(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(path, TEST_ENCODER)


def test_checkpoint_without_tensors_is_rejected(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": 1}}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        load_classifier(tmp_path / "ints.pth", TEST_ENCODER)


def test_missing_file_suggests_download(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="weights download"):
        load_classifier(tmp_path / "nope", TEST_ENCODER)


def test_unknown_encoder() -> None:
    with pytest.raises(ValueError, match="unknown timm encoder"):
        DeepFakeClassifier("resnet_does_not_exist")


def test_ensemble_averages_per_model_strategy(make_checkpoint) -> None:
    paths = [make_checkpoint("low.pth", bias=-2.0), make_checkpoint("high.pth", bias=2.0)]
    ensemble = Ensemble.from_checkpoints(paths, TEST_ENCODER, torch.device("cpu"))
    scores = ensemble.predict(torch.zeros(4, 3, 64, 64))
    assert scores.shape == (2, 4)
    low, high = torch.sigmoid(torch.tensor(-2.0)).item(), torch.sigmoid(torch.tensor(2.0)).item()
    assert scores[0] == pytest.approx([low] * 4, abs=1e-6) and scores[1] == pytest.approx([high] * 4, abs=1e-6)
    assert Ensemble.aggregate(scores) == pytest.approx((low + high) / 2, abs=1e-6)
    assert ensemble.dtype == torch.float32  # fp32 on CPU


def test_graph_chunk_plan_pads_little_and_replays_few() -> None:
    """Crops go to the captured batch sizes whose replays cost least: 33 crops as 32 + 1, not padded to 64."""
    from detector.cuda_graphs import DEFAULT_SIZES, chunk_plan

    assert chunk_plan(DEFAULT_SIZES, 33) == (32, 1)
    assert chunk_plan(DEFAULT_SIZES, 45) == (32, 16)
    assert chunk_plan(DEFAULT_SIZES, 64) == (64,)
    assert chunk_plan(DEFAULT_SIZES, 3) == (4,)  # one replay of 4 beats 2 + 1
    for n in range(1, 300):
        plan = chunk_plan(DEFAULT_SIZES, n)
        assert sum(plan) >= n and sum(plan) - min(plan) < n  # holds them all; no replay holds only padding
        assert all(size in DEFAULT_SIZES for size in plan) and list(plan) == sorted(plan, reverse=True)
    assert chunk_plan((8, 64), 9, launch_cost=4) == (8, 8)
