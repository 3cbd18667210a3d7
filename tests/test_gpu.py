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


def test_compiled_classifier_in_graphs_matches_eager_and_compiles_only_at_start() -> None:
    """``detector.compile_classifier``: inductor's B0, then graphs of it. Dynamo may split the batch sizes
    where a kernel choice depends on them (two graphs here on an H200, and for B7's default sizes on an
    H100), so compiles happen while the graphs are captured; live batches replay them and never compile."""
    from torch._dynamo.utils import counters

    torch.compiler.reset()
    counters.clear()
    torch.manual_seed(0)
    ensemble = Ensemble([DeepFakeClassifier(ENCODER)], torch.device("cuda"))
    x = torch.randn(13, 3, 380, 380, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    eager = ensemble.predict(x)
    ensemble.enable_compile(380)
    assert ensemble.compiled
    ensemble.enable_cuda_graphs(380, sizes=(1, 2, 4, 16))
    at_start = counters["stats"]["unique_graphs"]
    assert 1 <= at_start <= 3  # at most one per captured size (1 is left out: it replays the graph of 2)
    assert np.abs(eager - ensemble.predict(x)).max() < 2e-3
    assert np.abs(eager[:, :1] - ensemble.predict(x[:1])).max() < 2e-3  # one crop replays the graph of two
    assert np.abs(np.concatenate([eager, eager], axis=1) - ensemble.predict(torch.cat([x, x]))).max() < 2e-3
    assert counters["stats"]["unique_graphs"] == at_start


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


def _gpu_frames(shifts: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(astronaut_frame(1080, shift=s))).cuda() for s in shifts]


def test_pnet_pyramid_graphs_find_the_eager_boxes() -> None:
    """Replayed P-Net graphs: the eager boxes exactly at a captured size, and with padding (5 frames in a graph
    of 8) the same faces, none from the padded frames (their cells would index past the batch)."""
    eager = FaceDetector("cuda", gpu_resize=True, fast_mtcnn=True)
    graphed = FaceDetector("cuda", gpu_resize=True, fast_mtcnn=True, pnet_graphs=True)
    for shifts in ((-60, 0, 60, 90), (-60, 0, 60, 90, 30), (0,)):
        frames = _gpu_frames(shifts)
        want = eager.detect(frames)
        for _ in range(2):  # the capture, then a replay
            got = graphed.detect(frames)
            assert len(got) == len(frames)
            for w, g in zip(want, got, strict=True):
                assert len(w) == len(g) == 1
                if len(frames) in (1, 4):
                    np.testing.assert_array_equal(w.boxes, g.boxes)
                else:
                    assert np.abs(w.boxes - g.boxes).max() <= 2
    torch.cuda.synchronize()


def test_scripted_cascade_and_crops_give_the_eager_bits_on_cuda() -> None:
    """TorchScript (graph optimisation off) runs the eager kernels: the same boxes, probabilities and crop bytes."""
    from detector.gpu_preprocessing import prepare_crops

    eager = FaceDetector("cuda", gpu_resize=True, fast_mtcnn=True, scripted=False)
    scripted = FaceDetector("cuda", gpu_resize=True, fast_mtcnn=True, scripted=True)
    frames = _gpu_frames((-90, -60, 0, 30, 60, 90)) + [torch.from_numpy(np.ascontiguousarray(astronaut_frame(h))).cuda() for h in (480, 720, 2160)]
    want, got = eager.detect(frames), scripted.detect(frames)
    boxes, index = [], []
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert len(w) == len(g) >= 1
        np.testing.assert_array_equal(w.boxes, g.boxes)
        np.testing.assert_array_equal(w.probs, g.probs)
        boxes += w.boxes.tolist()
        index += [i] * len(w)
    crops = prepare_crops(frames, np.asarray(boxes), index, 380, scripted=False)
    assert torch.equal(prepare_crops(frames, np.asarray(boxes), index, 380, scripted=True), crops)


def test_pnet_pyramid_graphs_are_per_thread(caplog: pytest.LogCaptureFixture) -> None:
    """Two detection threads capture at the same moment (as an engine's do on its first batch), then replay
    their own graphs side by side, and each gets its own frames' faces."""
    import threading

    eager = FaceDetector("cuda", gpu_resize=True, fast_mtcnn=True)
    graphed = FaceDetector("cuda", gpu_resize=True, fast_mtcnn=True, pnet_graphs=True)
    batches = {"left": _gpu_frames((-90, -90, -90, -90)), "right": _gpu_frames((90, 90, 90, 90))}
    want = {name: eager.detect(frames)[0].boxes for name, frames in batches.items()}
    assert not np.array_equal(want["left"], want["right"])
    wrong: list[str] = []
    start = threading.Barrier(2)

    def detect(name: str) -> None:
        with torch.cuda.stream(torch.cuda.Stream()), torch.inference_mode():
            start.wait()
            for _ in range(20):
                for faces in graphed.detect(batches[name]):
                    if not np.array_equal(faces.boxes, want[name]):
                        wrong.append(name)

    threads = [threading.Thread(target=detect, args=(name,)) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert "capture" not in caplog.text  # both captured (a refused capture would have stayed eager, with a warning)


def test_private_mps_daemon_serves_a_cuda_process_and_goes_with_stop() -> None:
    """engine.mps on a GPU machine: the daemon starts, a torch process computes through its server, stop ends it."""
    import os
    import shutil
    import subprocess
    import sys

    from stream.mps import PIPE_ENV, start_mps

    if shutil.which("nvidia-cuda-mps-control") is None:
        pytest.skip("nvidia-cuda-mps-control is not on this GPU machine's PATH")
    if os.environ.get(PIPE_ENV):
        pytest.skip(f"{PIPE_ENV} is set: an operator's daemon serves this machine")
    daemon = start_mps("on", cuda_wanted=True)
    assert daemon is not None and daemon.directory is not None
    try:
        code = "import torch; x = torch.ones(1 << 20, device='cuda'); assert float(x.sum()) == float(1 << 20)"
        client = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, timeout=180, check=False)
        assert client.returncode == 0, client.stderr[-2000:]
        servers = subprocess.run(["nvidia-cuda-mps-control"], input="get_server_list\n", env=dict(os.environ), capture_output=True, text=True, timeout=30, check=False)
        assert servers.stdout.split(), "no MPS server served the CUDA process"
    finally:
        daemon.stop()
    assert PIPE_ENV not in os.environ
    assert daemon.quitting is not None
    assert daemon.quitting.wait(60) == 0  # its one client has exited (this process's context predates the daemon)
    assert not daemon.directory.exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.timeout(420)
def test_process_per_gpu_puts_an_analyzer_on_each_gpu(checkpoint, astronaut_clip, tmp_path) -> None:
    """``deepfake-stream run`` with ``engine.process_per_gpu`` on a two-GPU machine: a process per GPU, each scoring its
    balanced share of the streams on its own port, each GPU holding memory, SIGTERM ending them all with exit 0."""
    import json
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import yaml

    from stream.sharding import balanced_assignment
    from tests.fixtures.media import TEST_ENCODER

    names = [f"cam-{i}" for i in range(6)]
    placed = balanced_assignment(names, 2, {name: 2.0 for name in names})
    split = {index: [name for name in names if placed[name] == index] for index in (0, 1)}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cuda", "input_size": 128},
        "streams": [{"name": name, "url": str(astronaut_clip), "loop": True, "realtime": True, "sample_fps": 2, "decoder": "auto"} for name in names],
        "mqtt": {"enabled": False},
        "engine": {"process_per_gpu": True},
        "http": {"port": 18400},
    }))  # fmt: skip

    def used_mib() -> list[int]:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30, check=True)
        return [int(line) for line in out.stdout.split()]

    def scored(port: int) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r'^deepfake_stream_samples_scored_total\{stream="([^"]+)"\} (\S+)$', text, re.MULTILINE)}

    before = used_mib()
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        seen: dict[int, dict[str, float]] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            for index in (0, 1):
                try:
                    seen[index] = scored(18401 + index)  # 18400 is the launcher's /health
                except OSError:
                    pass
            if all(set(split[i]) == {k for k, v in seen.get(i, {}).items() if v > 0} for i in (0, 1)):
                break
            time.sleep(1)
        during = used_mib()
        with urllib.request.urlopen("http://127.0.0.1:18400/health", timeout=10) as response:
            box = json.loads(response.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    text = log.read_text(errors="replace")
    assert proc.returncode is not None and code == 0, text[-3000:]
    for index in (0, 1):
        assert {k for k, v in seen.get(index, {}).items() if v > 0} == set(split[index]), (seen, text[-3000:])  # each its own share, no other
        assert during[index] - before[index] > 300, (before, during)  # each GPU has an analyzer on it
        assert f"[gpu{index}]" in text
    assert "2 analyzer processes, one per GPU" in text and "Traceback" not in text
    assert [(p["instance"], p["port"], p["ok"]) for p in box["processes"]] == [("gpu0", 18401, True), ("gpu1", 18402, True)], box
