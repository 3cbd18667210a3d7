"""Inference fails for one stream's frames (a real bad input, no monkeypatching) while others are scored.

Cases (2):

1. ``test_bad_frames_of_one_stream_fail_only_that_stream`` - a custom FrameSource attached with
   ``service.add_source`` sends good frames, then a burst of frames that are not RGB (grayscale 2-D
   arrays, RGBA, float32) at 20/s, then good frames again, beside a good file stream.  With the engine
   waiting 100 ms to fill batches, the bad frames share batches with the good stream's frames: the
   bad stream's status goes ``error`` naming the reason and back to ``streaming`` ("inference
   recovered") afterwards; the good stream never reports an error and keeps scoring; the engine runs on.
2. ``test_frames_too_small_for_the_detector_are_scored_faceless`` - 2x2 and 8x8 RGB frames (a hostile
   or broken camera) are smaller than MTCNN's smallest pyramid level: they yield "no face", not an
   inference error, and never fail anyone's batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from stream.app import App
from stream.sources.base import SampledFrame, SourceStats, StreamState
from tests.fixtures.media import astronaut_frame
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.test_service import fast_stream, service_config, states

pytestmark = pytest.mark.timeout(180)


class ArraySource:
    """A FrameSource that hands over the given arrays at ``interval_s``, then ends (None)."""

    name = "array"

    def __init__(self, frames: Iterator[np.ndarray], interval_s: float) -> None:
        self.frames = frames
        self.interval_s = interval_s
        self.sent = 0
        self.stopped = False

    def start(self) -> None: ...

    @property
    def state(self) -> StreamState:
        return StreamState.STOPPED if self.stopped else StreamState.STREAMING

    @property
    def stats(self) -> SourceStats:
        return SourceStats(self.state, 0.0, self.sent, self.sent, 0, 0, None, None, None)

    async def next_frame(self) -> SampledFrame | None:
        if self.stopped:
            return None
        await asyncio.sleep(self.interval_s)
        image = next(self.frames, None)
        if image is None or self.stopped:
            return None
        self.sent += 1
        return SampledFrame(image, self.sent * self.interval_s, time.monotonic(), time.time(), self.sent - 1)

    async def stop(self) -> None:
        self.stopped = True


def statuses(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m.json() for m in seen.on(f"deepfake/{stream}/status")]


def face_scores(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [s for s in (m.json() for m in seen.on(f"deepfake/{stream}/score")) if s["score"] is not None]


async def test_bad_frames_of_one_stream_fail_only_that_stream(
    mqtt_broker: MosquittoBroker, astronaut_clip, fake_checkpoint
) -> None:
    good = astronaut_frame(360)
    bad_kinds = [
        np.zeros((360, 640), dtype=np.uint8),  # grayscale: 2-D
        np.zeros((360, 640, 4), dtype=np.uint8),  # RGBA
        good.astype(np.float32) / 255,  # float RGB
    ]

    def frames() -> Iterator[np.ndarray]:
        yield from [good] * 10  # 0.5 s of good frames
        for i in range(80):  # 4 s of nothing but bad frames
            yield bad_kinds[i % len(bad_kinds)]
        yield from [good] * 40  # 2 s of good frames again

    cfg = service_config(
        mqtt_broker,
        fake_checkpoint,
        [fast_stream("good", str(astronaut_clip), loop=True, realtime=True)],
        engine={"max_batch": 8, "max_wait_ms": 100, "max_pending_per_stream": 64},  # wait for company: shared batches
    )
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            await seen.wait_for(lambda _: len(face_scores(seen, "good")) >= 2, 60, "the good stream scoring")
            source = ArraySource(frames(), 0.05)
            handle = service.add_source("bad", source, kind="custom")
            service.set_state(handle, "streaming", "custom source")
            print("injected: stream 'bad' sends 10 good frames, 80 non-RGB frames (2-D, RGBA, float32) at 20/s, 40 good frames")
            good_before = len(face_scores(seen, "good"))
            await asyncio.wait_for(handle.task, 90)  # type: ignore[arg-type]
            await seen.wait_for(lambda _: len(face_scores(seen, "good")) >= good_before + 4, 30, "the good stream still scoring")
            stats = handle.pipeline.stats
            engine = service.engine.stats
        finally:
            await app.stop()
    bad_statuses = statuses(seen, "bad")
    errors = [s for s in bad_statuses if s["state"] == "error"]
    print(f"observed: 'bad' statuses {[(s['state'], s['detail']) for s in bad_statuses]}")
    print(f"observed: 'bad' submitted {stats.samples_submitted}, scored {stats.samples_scored}, failed {stats.samples_failed}, dropped {stats.samples_dropped}")
    print(f"observed: engine {engine.batches} batches ok, {engine.failed_batches} failed; 'good' states {states(seen, 'good')}")
    assert errors, bad_statuses
    assert "expected uint8 HxWx3 RGB" in errors[0]["detail"] and errors[0]["detail"].startswith("inference failed")
    recovered = bad_statuses[bad_statuses.index(errors[-1]) + 1 :]
    assert any(s["state"] == "streaming" and s["detail"] == "inference recovered" for s in recovered)
    assert stats.samples_failed >= 40 and stats.samples_scored >= 20
    assert "error" not in states(seen, "good")  # never blamed for its neighbour's frames
    assert service.streams["good"].pipeline.stats.samples_failed == 0
    assert engine.failed_batches >= 40


async def test_frames_too_small_for_the_detector_are_scored_faceless(
    mqtt_broker: MosquittoBroker, astronaut_clip, fake_checkpoint
) -> None:
    tiny = [np.full((2, 2, 3), 128, np.uint8), np.full((8, 8, 3), 128, np.uint8), np.full((2, 640, 3), 128, np.uint8)]
    cfg = service_config(
        mqtt_broker,
        fake_checkpoint,
        [fast_stream("good", str(astronaut_clip), loop=True, realtime=True)],
        engine={"max_batch": 8, "max_wait_ms": 100, "max_pending_per_stream": 64},
    )
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            await seen.wait_for(lambda _: len(face_scores(seen, "good")) >= 2, 60, "the good stream scoring")
            source = ArraySource(iter(tiny * 20), 0.05)
            handle = service.add_source("tiny", source, kind="custom")
            print("injected: stream 'tiny' sends 60 frames of 2x2, 8x8 and 640x2 pixels at 20/s")
            await asyncio.wait_for(handle.task, 60)  # type: ignore[arg-type]
            stats = handle.pipeline.stats
        finally:
            await app.stop()
    print(f"observed: 'tiny' scored {stats.samples_scored}, failed {stats.samples_failed}, faces {stats.faces}; statuses {statuses(seen, 'tiny')}")
    assert stats.samples_failed == 0 and stats.samples_scored + stats.samples_dropped == 60 and stats.faces == 0
    assert all(s["state"] != "error" for s in statuses(seen, "tiny"))
    assert "error" not in states(seen, "good") and service.engine.stats.failed_batches == 0
