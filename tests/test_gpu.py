"""GPU paths: run on the lent H100 (skipped where there is no CUDA, as in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.classifier import DeepFakeClassifier, Ensemble
from detector.engine import InferenceEngine
from detector.faces import FaceDetector
from detector.preprocessing import normalize_batch
from stream.demo_media import astronaut_frame

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ENCODER = "tf_efficientnet_b0.ns_jft_in1k"


def test_mtcnn_on_cuda_matches_cpu() -> None:
    frames = [astronaut_frame(h) for h in (480, 1080, 2160)]
    cpu = FaceDetector("cpu").detect(frames)
    gpu = FaceDetector("cuda").detect(frames)
    for c, g in zip(cpu, gpu, strict=True):
        assert len(c) == len(g) == 1
        assert np.abs(c.boxes - g.boxes).max() <= 2


def test_gpu_resize_agrees_with_pil_boxes() -> None:
    frames = [astronaut_frame(1080, shift=s) for s in (0, 40, 80)]
    pil = FaceDetector("cuda").detect(frames)
    gpu = FaceDetector("cuda", gpu_resize=True).detect(frames)
    for p, g in zip(pil, gpu, strict=True):
        assert len(p) == len(g) == 1
        assert np.abs(p.boxes - g.boxes).max() <= 6  # a few px of a ~700 px box


def test_fp16_channels_last_close_to_fp32_cpu() -> None:
    torch.manual_seed(0)
    model = DeepFakeClassifier(ENCODER)
    with torch.no_grad():
        model.fc.weight.mul_(2e5)  # spread the scores so the comparison means something
    state = model.state_dict()
    cpu = Ensemble([model], torch.device("cpu"))
    gpu_model = DeepFakeClassifier(ENCODER)
    gpu_model.load_state_dict(state)
    gpu = Ensemble([gpu_model], torch.device("cuda"))
    assert gpu.dtype == torch.float16 and gpu.channels_last
    batch = np.stack([np.asarray(astronaut_frame(380, 380, 0.9, shift=s)) for s in (-30, 0, 30)])
    p_cpu = cpu.predict(normalize_batch(batch))
    p_gpu = gpu.predict(normalize_batch(batch, "cuda", gpu.dtype, gpu.channels_last))
    assert np.abs(p_cpu - p_gpu).max() < 2e-2


def test_cuda_graphs_match_eager() -> None:
    torch.manual_seed(0)
    model = DeepFakeClassifier(ENCODER)
    ensemble = Ensemble([model], torch.device("cuda"))
    x = torch.randn(13, 3, 380, 380, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    eager = ensemble.predict(x)
    ensemble.enable_cuda_graphs(380, sizes=(1, 4, 16))
    graphed = ensemble.predict(x)
    assert np.abs(eager - graphed).max() < 1e-3
    assert ensemble.predict(x[:1]).shape == (1, 1)
    assert np.abs(ensemble.predict(torch.cat([x, x])) - np.concatenate([eager, eager], axis=1)).max() < 1e-3  # > largest size: chunks



@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_graphs_on_the_second_gpu_after_the_first() -> None:
    """Graphs captured on cuda:0 first, then on cuda:1 (one engine per GPU): both replay what eager gives."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 380, 380, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    for index in (0, 1):
        device = torch.device("cuda", index)
        ensemble = Ensemble([DeepFakeClassifier(ENCODER)], device)
        xd = x.to(device)
        eager = ensemble.predict(xd)
        ensemble.enable_cuda_graphs(380, sizes=(1, 8))
        assert np.abs(eager - ensemble.predict(xd)).max() < 1e-3, device

def test_engine_on_cuda() -> None:
    torch.manual_seed(0)
    ensemble = Ensemble([DeepFakeClassifier(ENCODER)], torch.device("cuda"))
    engine = InferenceEngine(FaceDetector("cuda", gpu_resize=True), ensemble, max_batch=8, max_wait_ms=50)
    try:
        futures = [engine.submit(f"s{i}", astronaut_frame(1080, shift=10 * i)) for i in range(8)]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.close()
    assert all(len(r.faces) == 1 for r in results)
    assert engine.stats.batches <= 2
