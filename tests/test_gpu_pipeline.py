"""The GPU-resident path on a real GPU: NVDEC source, GPU crops, pipelined engine, faults.

Skipped without CUDA (as in CI) and, for the NVDEC tests, without a working PyNvVideoCodec;
run on the lent H100, results committed under bench/results/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.classifier import DeepFakeClassifier, Ensemble
from detector.engine import InferenceEngine, SampleDropped
from detector.faces import FaceDetector
from stream.demo_media import astronaut_frame
from stream.sources.config import StreamConfig
from tests.fixtures.decoding import as_mpegts, clip, cpu_reference, sampled_frames, serve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ENCODER = "tf_efficientnet_b0.ns_jft_in1k"


@pytest.fixture(autouse=True)
def pynvvideocodec_unless_said() -> object:
    """The NVDEC tests below test PyNvVideoCodec's path unless they name the ffmpeg backend (the default)."""
    from stream.sources.config import NVDEC
    from stream.sources.workers import close_pools

    saved, NVDEC.backend = NVDEC.backend, "pynvvideocodec"
    yield NVDEC
    NVDEC.backend = saved
    close_pools()  # a worker keeps the backend it was started with: the next test starts its own


def nvdec_or_skip() -> None:
    from stream.sources.nvdec import nvdec_available

    reason = nvdec_available()
    if reason:
        pytest.skip(reason)


def ffmpeg_nvdec_or_skip() -> None:
    """Skip only where this PyAV has no CUDA hwaccel; torch's context made first, as the engine does in the service."""
    from av.codec.hwaccel import hwdevices_available

    from stream.sources.ffmpeg_nvdec import ffmpeg_nvdec_available

    if "cuda" not in hwdevices_available():
        pytest.skip("this PyAV's FFmpeg has no CUDA hwaccel")
    torch.zeros(1, device="cuda:0")  # torch's primary context exists before FFmpeg is asked, as when the engine loads first
    ffmpeg_nvdec_available.cache_clear()
    assert ffmpeg_nvdec_available(0) is None


def test_ffmpeg_nvdec_takes_torchs_context_and_leaves_the_callers_device() -> None:
    """FFmpeg refused the primary context torch had made (other flags); it must take torch's context instead."""
    ffmpeg_nvdec_or_skip()
    assert torch.cuda.current_device() == 0
    if torch.cuda.device_count() > 1:
        from stream.sources.ffmpeg_nvdec import ffmpeg_nvdec_available

        assert ffmpeg_nvdec_available(1) is None
        assert torch.cuda.current_device() == 0  # the check put the caller's device back


@pytest.fixture
def in_process() -> object:
    """NVDEC in the test process's own threads (so a test can reach into the decoder), restored afterwards."""
    from stream.sources.config import NVDEC

    saved = NVDEC.workers_per_gpu
    NVDEC.workers_per_gpu = 0
    yield NVDEC
    NVDEC.workers_per_gpu = saved


@pytest.mark.parametrize(("codec", "workers"), [("libx264", 0), ("libx265", 0), ("libx264", 2), ("libx265", 2)])
def test_nvdec_frames_stay_on_the_gpu_and_match_ffmpeg(tmp_path: Path, codec: str, workers: int) -> None:
    """In the test's own threads, and through worker processes (frames cross by CUDA IPC)."""
    nvdec_or_skip()
    from stream.sources.config import NVDEC

    NVDEC.workers_per_gpu, saved = workers, NVDEC.workers_per_gpu
    path = clip(tmp_path, codec)
    cfg = StreamConfig(name="cam", url=str(path), sample_fps=5, decoder="nvdec")
    try:
        frames, stats = asyncio.run(sampled_frames(cfg, "cuda:0"))
    finally:
        NVDEC.workers_per_gpu = saved
    assert stats.decoder == "nvdec:0"
    assert len(frames) == 10  # 2 s at 5 samples/s
    reference = cpu_reference(path)
    for frame in frames:
        assert isinstance(frame.image, torch.Tensor) and frame.image.is_cuda and frame.image.dtype == torch.uint8
        expected = reference[round(frame.pts_s, 3)]
        diff = np.abs(frame.image.cpu().numpy().astype(np.int16) - expected.astype(np.int16))
        assert diff.mean() < 2.5, diff.mean()



@pytest.mark.parametrize(("codec", "workers"), [("libx264", 0), ("libx265", 0), ("libx264", 2)])
def test_ffmpeg_nvdec_frames_stay_on_the_gpu_and_equal_ffmpegs(tmp_path: Path, codec: str, workers: int, in_process: object) -> None:
    """The ffmpeg backend (PyAV's CUDA hwaccel), four streams at once, in threads or worker processes: swscale's RGB."""
    from stream.sources.config import NVDEC

    ffmpeg_nvdec_or_skip()
    path = clip(tmp_path, codec)
    saved, NVDEC.backend = NVDEC.backend, "ffmpeg"
    NVDEC.workers_per_gpu = workers

    async def four() -> list[tuple[list, object]]:
        cfgs = [StreamConfig(name=f"cam{i}", url=str(path), sample_fps=5, decoder="nvdec", skip_frames="nonref") for i in range(4)]
        return await asyncio.gather(*(sampled_frames(cfg, "cuda:0") for cfg in cfgs))

    try:
        results = asyncio.run(four())
    finally:
        NVDEC.backend = saved
    reference = cpu_reference(path)
    for frames, stats in results:
        assert stats.decoder == "nvdec:0" and len(frames) == 10
        for frame in frames:
            assert isinstance(frame.image, torch.Tensor) and frame.image.is_cuda
            diff = np.abs(frame.image.cpu().numpy().astype(np.int16) - reference[round(frame.pts_s, 3)].astype(np.int16))
            assert diff.mean() < 0.01 and diff.max() <= 2, (diff.mean(), diff.max())

@pytest.mark.parametrize("backend", ["pynvvideocodec", "ffmpeg"])
def test_nvdec_loops_a_file_with_one_decoder_and_loses_no_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_process: object, backend: str) -> None:
    """Seeking back, not reopening: held B-frame pictures come out at each pass's end, the session carries on."""
    import av

    from stream.sources.config import NVDEC

    nvdec_or_skip() if backend == "pynvvideocodec" else ffmpeg_nvdec_or_skip()
    path = clip(tmp_path, frames=20, params="bframes=3:b-pyramid=none:keyint=25:log-level=error")
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    monkeypatch.setattr(NVDEC, "backend", backend)
    frames, stats = asyncio.run(sampled_frames(StreamConfig(name="loop", url=str(path), sample_fps=25, decoder="nvdec", loop=True), "cuda:0", limit=50))
    assert stats.decoder == "nvdec:0" and len(frames) == 50 and len(opened) == 1
    assert np.allclose(np.diff([f.pts_s for f in frames]), 0.04, atol=1e-3)
    for i, frame in enumerate(frames[20:], start=20):
        assert torch.equal(frame.image, frames[i % 20].image), i


def test_nvdec_skips_non_reference_pictures(tmp_path: Path, in_process: object) -> None:
    nvdec_or_skip()
    path = clip(tmp_path, "libx264", params="bframes=3:b-pyramid=none:keyint=25")
    all_frames, full = asyncio.run(sampled_frames(StreamConfig(name="a", url=str(path), sample_fps=5, decoder="nvdec"), "cuda:0"))
    some_frames, thin = asyncio.run(sampled_frames(StreamConfig(name="b", url=str(path), sample_fps=5, decoder="nvdec", skip_frames="nonref"), "cuda:0"))
    assert thin.frames_decoded < full.frames_decoded
    assert len(some_frames) >= len(all_frames) - 2  # still about every sample asked for


def test_unsupported_stream_falls_back_to_cpu_with_a_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture, in_process: object) -> None:
    nvdec_or_skip()
    path = clip(tmp_path, "mpeg4")
    caplog.set_level(logging.WARNING)
    frames, stats = asyncio.run(sampled_frames(StreamConfig(name="old", url=str(path), sample_fps=5, decoder="nvdec"), "cuda:0"))
    assert stats.decoder == "cpu" and len(frames) == 10
    assert isinstance(frames[0].image, np.ndarray)
    assert any("mpeg4" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("workers", [0, 2])
def test_out_of_sessions_sends_the_next_stream_to_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture, workers: int) -> None:
    nvdec_or_skip()
    from stream.sources.config import NVDEC
    from stream.sources.nvdec import SESSIONS
    from stream.sources.workers import decoder_pool

    path = clip(tmp_path)
    caplog.set_level(logging.WARNING)
    saved = NVDEC.sessions_per_gpu, NVDEC.workers_per_gpu
    NVDEC.workers_per_gpu = workers
    # every session taken: those open in this process (threads), or the pool's streams (workers)
    NVDEC.sessions_per_gpu = decoder_pool(0, 2).streams() if workers else SESSIONS.in_use(0)
    try:
        frames, stats = asyncio.run(sampled_frames(StreamConfig(name="late", url=str(path), sample_fps=5, decoder="nvdec"), "cuda:0"))
    finally:
        NVDEC.sessions_per_gpu, NVDEC.workers_per_gpu = saved
    assert stats.decoder == "cpu" and len(frames) == 10
    assert any("NVDEC sessions" in r.getMessage() for r in caplog.records)


def test_a_failing_decoder_session_is_recreated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_process: object) -> None:
    nvdec_or_skip()
    from stream.sources import nvdec

    path = as_mpegts(clip(tmp_path, frames=100))
    calls = {"n": 0}
    original = nvdec.NvdecDecoder._submit  # noqa: SLF001 - the one binding call, failed on purpose

    def failing_once(self, data, pts):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 20:  # the binding's own error type for a broken session
            raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED (simulated)")
        return original(self, data, pts)

    monkeypatch.setattr(nvdec.NvdecDecoder, "_submit", failing_once)
    url = f"http://127.0.0.1:{serve(path)}/{path.name}"  # a network source reconnects (a file would fail for good)
    cfg = StreamConfig(name="flaky", url=url, sample_fps=5, decoder="nvdec", reconnect_min_s=0.1, reconnect_max_s=0.2)
    frames, stats = asyncio.run(sampled_frames(cfg, "cuda:0", limit=15))
    assert stats.reconnects >= 1 and stats.decoder == "nvdec:0"
    assert len(frames) == 15


@pytest.fixture(scope="module")
def engine_parts() -> tuple[FaceDetector, Ensemble]:
    torch.manual_seed(0)
    model = DeepFakeClassifier(ENCODER)
    with torch.no_grad():
        model.fc.weight.mul_(2e5)  # spread the scores so a comparison means something
    return FaceDetector("cuda", fast_mtcnn=True, gpu_resize=True), Ensemble([model], torch.device("cuda"))


def test_gpu_frames_score_like_host_frames(engine_parts: tuple[FaceDetector, Ensemble]) -> None:
    detector, ensemble = engine_parts
    engine = InferenceEngine(detector, ensemble, max_wait_ms=0, detect_workers=2)
    try:
        frames = [astronaut_frame(h, shift=s) for h, s in ((1080, 0), (720, 40), (360, -30))]
        host = [engine.submit("host", f).result(timeout=120) for f in frames]
        gpu = [engine.submit("gpu", torch.from_numpy(f).cuda()).result(timeout=120) for f in frames]
    finally:
        engine.close()
    for h, g in zip(host, gpu, strict=True):
        assert len(h.faces) == len(g.faces) == 1
        assert h.faces[0].box == g.faces[0].box
        assert abs(h.faces[0].score - g.faces[0].score) < 0.05
        assert g.faces[0].crop.is_cuda  # the crop stays a view of the GPU frame


def test_out_of_memory_splits_the_batch(engine_parts: tuple[FaceDetector, Ensemble], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real CUDA OOM: the classifier may hold at most 4 faces at once; a 16-frame batch still gets scored."""
    detector, ensemble = engine_parts
    original = ensemble.predict

    def bounded(x: torch.Tensor) -> np.ndarray:
        if x.shape[0] > 4:
            torch.empty(1 << 50, device="cuda")  # raises torch.OutOfMemoryError, as a too large batch would
        return original(x)

    monkeypatch.setattr(ensemble, "predict", bounded)
    engine = InferenceEngine(detector, ensemble, max_batch=16, max_wait_ms=500, detect_workers=1)
    try:
        futures = [engine.submit(f"s{i}", torch.from_numpy(astronaut_frame(360, shift=i)).cuda()) for i in range(16)]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.close()
    assert all(len(r.faces) == 1 for r in results)
    assert engine.stats.oom_splits >= 2 and engine.stats.failed_batches == 0


def test_pipelined_engine_overlaps_and_loses_nothing(engine_parts: tuple[FaceDetector, Ensemble]) -> None:
    detector, ensemble = engine_parts
    engine = InferenceEngine(detector, ensemble, max_batch=8, max_wait_ms=5, detect_workers=2, max_pending_per_stream=64)
    try:
        frames = [torch.from_numpy(astronaut_frame(720, shift=i % 40)).cuda() for i in range(64)]
        started = time.monotonic()
        futures = [engine.submit(f"s{i % 8}", f) for i, f in enumerate(frames)]
        results = []
        for f in futures:
            try:
                results.append(f.result(timeout=120))
            except SampleDropped:
                pytest.fail("a sample was dropped")
        wall = time.monotonic() - started
    finally:
        engine.close()
    assert len(results) == 64 and all(len(r.faces) == 1 for r in results)
    assert engine.stats.detect_s + engine.stats.classify_s > wall * 0.5  # stages were busy while the wall clock ran
