"""The dashboard at ``/``: its recorder's bounds, then the page in headless Chromium on a real service.

The end-to-end test runs the service on a real encoded clip (forced-fake checkpoint: it alerts)
plus a stream that cannot open, with real mosquitto, and reads what the page shows through the
DevTools protocol: the cards, the chart growing, the card turning red with the snapshot and its
drawn face box, the timeline, the end of the episode; then the JSON, the JPEG and the SSE limits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from stream.alerts import AlertEvent
from stream.app import App
from stream.demo_media import astronaut_frame
from stream.recorder import MAX_CHANGES, MAX_POINTS, MAX_STREAMS, SNAPSHOT_MAX_SIDE, TIMELINE_SIZE, Recorder, make_snapshot
from stream.sources.base import StreamState
from stream.sources.config import StreamConfig
from stream.web import dashboard
from stream.web.dashboard import DASHBOARD_KEY
from tests.fixtures.browser import chromium, chromium_or_skip, until
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.fixtures.sse import sse_events
from tests.test_service import alerts, fast_stream, service_config

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


# ---- the recorder -------------------------------------------------------------------------------


def event(kind: str, alert_id: str, stream: str, t: float, score: float = 0.9) -> AlertEvent:
    return AlertEvent(kind, alert_id, stream, score, t, t if kind == "start" else t - 1, score, "score cleared" if kind == "end" else "")  # type: ignore[arg-type]


def test_recorder_keeps_a_bounded_history_timeline_and_change_log() -> None:
    rec = Recorder()
    t0 = 1_700_000_000.0
    for i in range(max(2 * MAX_POINTS * 3, MAX_CHANGES + 10)):  # 3x the history at 2 samples a second, more than the change log
        rec.score("cam", t0 + i / 2, 0.1 + (i % 2) * 0.5, 1)
    points = rec.streams["cam"].points
    assert len(points) == MAX_POINTS and points[-1][0] == t0 + math.floor((max(2 * MAX_POINTS * 3, MAX_CHANGES + 10) - 1) / 2)
    assert {s for _, s, _ in points} == {0.6}  # a second keeps its highest score
    rec.score("cam", t0 + 10_000.2, None, 0)
    rec.score("cam", t0 + 10_000.7, 0.3, 1)
    assert points[-1] == (t0 + 10_000, 0.3, 1)  # no face then a face in one second: the face's score

    assert rec.changes_since(rec.seq) == [] and len(rec.changes) == MAX_CHANGES
    assert rec.changes_since(0) is None  # fell out of the log: start over from state()
    assert [c[0] for c in rec.changes_since(rec.seq - 3) or []] == [rec.seq - 2, rec.seq - 1, rec.seq]

    for n in range(TIMELINE_SIZE + 20):
        rec.alert(event("start", f"a{n}", f"s{n % 3}", t0 + n))
        rec.alert(event("end", f"a{n}", f"s{n % 3}", t0 + n + 0.5))
    state = rec.state()
    assert len(state["timeline"]) == TIMELINE_SIZE and len(rec._episodes) == TIMELINE_SIZE  # noqa: SLF001 - the index shrinks with the timeline
    assert state["timeline"][0]["id"] == f"a{TIMELINE_SIZE + 19}" and state["timeline"][0]["ended_at"] == t0 + TIMELINE_SIZE + 19.5
    assert state["timeline"][0]["reason"] == "score cleared"
    rec.alert(event("start", "open", "s1", t0 + 500))
    assert rec.state()["streams"]["s1"]["alert"]["id"] == "open" and rec.state()["timeline"][0]["ended_at"] is None
    rec.alert(event("end", "a0", "s0", t0 + 501))  # the end of an episode gone from the timeline: no harm

    for n in range(MAX_STREAMS + 10):
        rec.score(f"extra{n}", t0, 0.5, 1)
    assert len(rec.streams) == MAX_STREAMS and "extra0" not in rec.streams and f"extra{MAX_STREAMS + 9}" in rec.streams


def test_snapshot_is_the_region_around_the_face_with_the_box_drawn_on_a_copy() -> None:
    frame = astronaut_frame(1080, 1920)
    before = frame.copy()
    box = (760.0, 300.0, 1160.0, 780.0)
    snap = make_snapshot("id1", 1.0, 0.99, frame, box)
    assert snap is not None and np.array_equal(frame, before)  # the frame is not drawn on
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(snap.jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert image.shape[:2] == (snap.height, snap.width) and max(image.shape[:2]) <= SNAPSHOT_MAX_SIDE
    x1, y1, x2, y2 = snap.box
    assert 0 < x1 < x2 < snap.width and 0 < y1 < y2 < snap.height  # context on every side
    for x, y in [((x1 + x2) // 2, y1), ((x1 + x2) // 2, y2), (x1, (y1 + y2) // 2), (x2, (y1 + y2) // 2)]:
        r, g, b = (int(v) for v in image[y, x])
        assert r > 200 and g < 80 and b < 80, (x, y, (r, g, b))  # the box, in red
    assert make_snapshot("id2", 1.0, 0.99, frame, (5000, 5000, 6000, 6000)) is None  # a box off the frame
    edge = make_snapshot("id3", 1.0, 0.99, frame, (-40, -40, 200, 200))
    assert edge is not None and edge.box[:2] == (0, 0)


# ---- the page in a browser --------------------------------------------------------------------

CARD = "document.querySelector('.card[data-stream=\"{}\"]')"


def card_js(stream: str, expression: str) -> str:
    """``expression`` evaluated with ``c`` bound to ``stream``'s card (null when it has none)."""
    return f"(() => {{ const c = {CARD.format(stream)}; return c && ({expression}); }})()"


GREY = "rgb(89, 97, 107)"  # dashboard.css --grey: failed, offline, stopped
RED = "rgb(142, 20, 20)"  # dashboard.css --red-dark: an alert is open


# the pixel of the snapshot under the middle of the face box's top edge, read back through a canvas
BOX_PIXEL = """(() => {
  const img = document.querySelector('.card[data-stream="lobby"] img.snapshot');
  const [x1, y1, x2, y2] = JSON.parse(img.dataset.box);
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return {edge: Array.from(ctx.getImageData(Math.round((x1 + x2) / 2), y1, 1, 1).data),
          box: [x1, y1, x2, y2], natural: [img.naturalWidth, img.naturalHeight], shown: img.getBoundingClientRect().width};
})()"""


async def sse_first_event(http: aiohttp.ClientSession, url: str) -> tuple[str, dict[str, Any]]:
    async with asyncio.timeout(10), contextlib.aclosing(sse_events(http, url)) as events:
        async for kind, payload in events:
            return kind, payload
    raise AssertionError("no event")


async def test_dashboard_shows_streams_scores_alerts_and_the_timeline_live(
    mqtt_broker: MosquittoBroker, astronaut_clip: Path, fake_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium_or_skip()
    monkeypatch.setattr(dashboard, "MAX_EVENT_CLIENTS", 2)
    missing = str(tmp_path / "missing.mp4")
    cfg = service_config(
        mqtt_broker, fake_checkpoint,
        [fast_stream("lobby", str(astronaut_clip), loop=True, realtime=True), fast_stream("door", missing)],
        client_id=f"dash-{mqtt_broker.port}",
    )  # fmt: skip
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/+/alert"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            assert app.http is not None and app.http.runner is not None
            base = f"http://127.0.0.1:{app.http.port}"
            board = app.http.runner.app[DASHBOARD_KEY]
            async with chromium(f"{base}/", tmp_path / "profile", window_size=(1400, 1000)) as page:
                # one card per configured stream, in config order; the one that cannot open is grey
                await page.wait_for("document.querySelectorAll('.card').length === 2", 20, "two cards")
                assert await page.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.stream)") == ["lobby", "door"]
                await page.wait_for(card_js("door", "c.dataset.state === 'failed'"), 20, "door failed")
                await page.wait_for(card_js("door", f"getComputedStyle(c).borderTopColor === '{GREY}'"), 5, "door's card grey")
                assert await page.evaluate("document.body.dataset.connection") == "live"
                assert await page.evaluate("document.getElementById('publish-link').getAttribute('href')") == "/publish"

                # score updates move the chart
                points = "+c.querySelector('svg.chart').dataset.points"
                path = "c.querySelector('svg.chart path.line').getAttribute('d')"
                first = await page.wait_for(card_js("lobby", f"{points} >= 2 && [{points}, {path}]"), 30, "two chart points")
                await asyncio.sleep(2.5)
                second = await page.evaluate(card_js("lobby", f"[{points}, {path}]"))
                assert second[0] > first[0] and second[1] != first[1] and second[1].startswith("M"), (first, second)
                assert float(await page.evaluate(card_js("lobby", "c.querySelector('.score').textContent"))) > 0.99

                # the alert turns the card red and shows the snapshot with the face box drawn
                await page.wait_for(card_js("lobby", "c.dataset.alert === 'open'"), 60, "lobby alerting")
                await page.wait_for(card_js("lobby", f"getComputedStyle(c).backgroundColor === '{RED}'"), 5, "lobby's card red")
                assert await page.evaluate("document.getElementById('count-alerts').textContent") == "1"
                await page.wait_for(card_js("lobby", "(i => i.complete && i.naturalWidth > 0 && !c.querySelector('.shot').hidden)(c.querySelector('img.snapshot'))"),
                                    10, "snapshot loaded")  # fmt: skip
                shown = await page.evaluate(BOX_PIXEL)
                r, g, b, _ = shown["edge"]
                assert r > 200 and g < 90 and b < 90 and shown["shown"] > 50, shown
                await seen.wait_for(lambda _: alerts(seen, "lobby", "start"), 10, "the alert on MQTT")
                alert_id = alerts(seen, "lobby", "start")[0]["id"]
                assert await page.evaluate(card_js("lobby", "c.querySelector('img.snapshot').dataset.id")) == alert_id

                # the timeline shows the open episode
                entry = f"document.querySelector('#timeline li[data-id=\"{alert_id}\"]')"
                assert await page.wait_for(f"{entry} && {entry}.className === 'open' && {entry}.dataset.stream === 'lobby'", 10, "open episode")

                # the JSON state, the JPEG and the event stream's limit
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{base}/dashboard.json") as response:
                        state = await response.json()
                    lobby = next(s for s in state["streams"] if s["stream"] == "lobby")
                    assert lobby["state"] == "streaming" and lobby["alert"]["id"] == alert_id and lobby["score"] > 0.99
                    assert len(lobby["history"]) >= 3 and lobby["snapshot"]["url"] == f"/snapshot/lobby.jpg?id={alert_id}"
                    assert state["timeline"][0]["id"] == alert_id and state["thresholds"] == {"alert": 0.8, "clear": 0.5}
                    async with http.get(base + lobby["snapshot"]["url"]) as response:
                        jpeg = await response.read()
                        assert response.status == 200 and response.content_type == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
                        assert response.headers["X-Face-Box"] == ",".join(map(str, lobby["snapshot"]["box"]))
                    async with http.get(f"{base}/snapshot/door.jpg") as response:
                        assert response.status == 404
                    kind, first_event = await sse_first_event(http, f"{base}/events")  # the browser's plus this one: the cap
                    assert kind == "snapshot" and [s["stream"] for s in first_event["streams"]] == ["lobby", "door"]
                    await until(lambda: board.clients == 1, 5, "the closed listener's slot freed")
                    async with http.get(f"{base}/events") as listening, http.get(f"{base}/events") as refused:
                        assert listening.status == 200 and refused.status == 503 and int(refused.headers["Retry-After"]) > 0

                # a stream added while the page is open gets its card (as a WHIP publisher's would)
                service.add_url_stream(StreamConfig.model_validate(fast_stream("gate", missing)))
                await page.wait_for(card_js("gate", "c.dataset.state === 'failed'"), 10, "gate's card")

                # the feed goes: the episode ends, the card is grey, the timeline shows the end
                await service.remove_stream("lobby", StreamState.OFFLINE, "test took it away")
                await page.wait_for(card_js("lobby", "c.dataset.alert === 'none' && c.dataset.state === 'offline'"), 10, "lobby offline")
                await page.wait_for(card_js("lobby", f"getComputedStyle(c).borderTopColor === '{GREY}'"), 5, "lobby's card grey")
                await page.wait_for(f"{entry}.className === 'closed' && !{entry}.textContent.includes('OPEN')", 10, "closed episode")
                reason = app.recorder.state()["timeline"][0]["reason"]
                assert reason and await page.evaluate(f"{entry}.querySelector('.why').textContent") == reason  # why it ended
                assert await page.evaluate("document.getElementById('count-alerts').textContent") == "0"

                shot = await page.call("Page.captureScreenshot", format="png")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))

                # the service stops with the page connected: its event stream ends at once
                started = time.monotonic()
                await app.stop()
                assert time.monotonic() - started < 10 and board.clients == 0
        finally:
            if app.http is not None and app.http.runner is not None:  # not stopped by the test itself
                await app.stop()
