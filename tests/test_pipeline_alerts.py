"""Samples still in flight when a feed is lost never open a new alert episode after its end.

Seen on the dashboard's timeline before the fix: a file stream ends (``stopped`` ends the episode),
the engine then returns the last few samples decoded before the end, they score high again and a
second episode starts after the stream stopped, ended a moment later by ``stream ended``.
"""

from __future__ import annotations

import time

import numpy as np

from detector.engine import FaceResult, FrameResult
from stream.alerts import AlertConfig
from stream.outputs.publisher import NullPublisher
from stream.pipeline import StreamPipeline
from stream.recorder import Recorder
from stream.scoring import WindowConfig
from stream.sources.base import SampledFrame


def scored(pipeline: StreamPipeline, arrival: float, index: int, score: float = 0.99) -> None:
    image = np.zeros((120, 160, 3), np.uint8)
    frame = SampledFrame(image, index * 0.5, arrival, time.time(), index)
    face = FaceResult((40, 20, 100, 90), 0.99, score, image[20:90, 40:100])
    pipeline._handle(frame, FrameResult([face], arrival, arrival + 0.01, 1))  # noqa: SLF001 - a result as the engine hands it over


def test_samples_decoded_before_the_feed_was_lost_do_not_open_a_new_episode() -> None:
    recorder = Recorder()
    pipeline = StreamPipeline("cam", None, None, NullPublisher(), WindowConfig(), AlertConfig(min_samples=2), recorder=recorder)  # type: ignore[arg-type]
    before = time.monotonic() - 1.0  # decoded a moment ago
    for i in range(3):
        scored(pipeline, before + i * 0.01, i)
    assert pipeline.alerts.active and pipeline.stats.alerts == 1
    assert recorder.snapshot("cam") is not None  # the start came with its frame

    pipeline.close_alert("stream stopped")  # the feed is lost while samples are still in flight
    for i in range(3, 8):
        scored(pipeline, before + i * 0.01, i)  # decoded before the loss, scored after it
    assert not pipeline.alerts.active and pipeline.stats.alerts == 1
    assert pipeline.stats.samples_scored == 8  # still scored and published, only not alerted on

    after = time.monotonic()
    for i in range(8, 10):
        scored(pipeline, after + i * 0.01, i)  # the feed is back: a new episode may start
    assert pipeline.alerts.active and pipeline.stats.alerts == 2
    timeline = recorder.state()["timeline"]
    assert [e["reason"] for e in timeline] == [None, "stream stopped"]
