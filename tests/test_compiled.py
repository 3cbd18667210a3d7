"""The compiled classifier (``detector/compiled.py``): one compile for every batch size, a clear fallback.

Inductor itself needs CUDA and triton here (``tests/test_gpu.py`` runs it on the lent GPU); these tests
compile through dynamo with a backend that counts its compiles and runs the traced graph as is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from detector.classifier import Ensemble
from detector.compiled import MIN_DYNAMIC_BATCH, compile_classifier, compile_or_keep, is_compiled, use_compile_cache
from detector.config import DetectorConfig, default_compile_cache_dir
from detector.cuda_graphs import GraphedModel


def small_net() -> nn.Module:
    """No convolution: on the CPU a convolution's backend changes with the batch size, which would split
    dynamo's graph at 16 (B7's count on CUDA is checked on the GPU, ``tests/test_gpu.py``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 6 * 6, 8), nn.LayerNorm(8), nn.SiLU(), nn.Linear(8, 1)).eval()


class CountingBackend:
    """A dynamo backend that records each graph it is handed and runs it unchanged."""

    def __init__(self) -> None:
        self.graphs: list[fx.GraphModule] = []

    def __call__(self, gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> object:
        self.graphs.append(gm)
        return gm.forward


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch.compiler.reset()


def test_one_compile_serves_every_batch_size_from_two() -> None:
    model, backend = small_net(), CountingBackend()
    run = compile_classifier(model, backend=backend)
    with torch.inference_mode():
        for n in (2, 3, 5, 16, 33, 64):
            x = torch.randn(n, 3, 12, 12)
            assert torch.equal(run(x), model(x)), n
    assert len(backend.graphs) == 1
    assert is_compiled(run)


def test_a_single_crop_compiles_its_own_graph_once() -> None:
    """Why graphs of compiled models start at MIN_DYNAMIC_BATCH: dynamo specialises a batch of one."""
    model, backend = small_net(), CountingBackend()
    run = compile_classifier(model, backend=backend)
    with torch.inference_mode():
        run(torch.randn(4, 3, 12, 12))
        for _ in range(3):
            run(torch.randn(1, 3, 12, 12))
        run(torch.randn(7, 3, 12, 12))
    assert len(backend.graphs) == 2
    assert MIN_DYNAMIC_BATCH == 2


def test_the_models_of_an_ensemble_share_one_compile() -> None:
    """Same architecture, different weights: the weights are the graph's inputs, so 9 models (more than
    dynamo's default limit of 8 entries) compile once and each still computes with its own weights."""
    backend = CountingBackend()
    models = [small_net() for _ in range(9)]
    for i, model in enumerate(models):
        with torch.no_grad():
            model[-1].bias.fill_(float(i))
    runs = [compile_classifier(model, backend=backend) for model in models]
    x = torch.ones(2, 3, 12, 12)
    with torch.inference_mode():
        for model, run in zip(models, runs, strict=True):
            assert torch.equal(run(x), model(x))
    assert len(backend.graphs) == 1


def test_a_failed_compile_keeps_the_model_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    def broken(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> object:
        raise RuntimeError("no triton here")

    model = small_net()
    with caplog.at_level(logging.WARNING, logger="detector.compiled"):
        run = compile_or_keep(model, torch.randn(2, 3, 12, 12), "classifier 1/1 (test)", backend=broken)
    assert run is model and not is_compiled(run)
    assert "classifier 1/1 (test) runs uncompiled" in caplog.text and "no triton here" in caplog.text


def test_a_good_compile_is_run_once_on_the_example() -> None:
    backend = CountingBackend()
    run = compile_or_keep(small_net(), torch.randn(2, 3, 12, 12), "classifier", backend=backend)
    assert is_compiled(run) and len(backend.graphs) == 1  # compiled at start, not in the first live batch


def test_compiling_is_cuda_only_the_cpu_path_stays_the_winners() -> None:
    model = small_net()
    ensemble = Ensemble([model], torch.device("cpu"))
    ensemble.enable_compile(12, backend=CountingBackend())
    assert not ensemble.compiled
    x = torch.randn(3, 3, 12, 12)
    with torch.inference_mode():
        assert (ensemble.predict(x) == torch.sigmoid(model(x)).reshape(1, -1).numpy()).all()


def test_config_defaults_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert DetectorConfig().compile_classifier is False
    assert DetectorConfig().compile_cache_dir == default_compile_cache_dir() == Path.home() / ".cache" / "deepfake-stream" / "compile"
    assert DetectorConfig(compile_cache_dir="~/c").compile_cache_dir == Path.home() / "c"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "env"))
    assert DetectorConfig().compile_cache_dir == tmp_path / "env"


def test_compile_cache_goes_where_asked_unless_the_environment_chose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert use_compile_cache(tmp_path / "cache") is True
    assert (tmp_path / "cache").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton")
    use_compile_cache(tmp_path / "other")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")  # an operator's choice wins


def test_an_unwritable_compile_cache_is_a_warning_not_a_failed_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="detector.compiled"):
        assert use_compile_cache(blocker / "compile") is False
    assert f"compile cache {blocker / 'compile'} is not writable" in caplog.text
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_graphs_of_a_compiled_forward_need_its_device() -> None:
    with pytest.raises(ValueError, match="pass device"):
        GraphedModel(compile_classifier(small_net(), backend=CountingBackend()), 12, torch.float32, False)
