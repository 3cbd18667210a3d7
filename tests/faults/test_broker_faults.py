"""The MQTT broker restarts and crashes in the middle of an alert episode (real mosquitto, QoS 1, persistent sessions).

Cases (1):

1. ``test_broker_restart_and_crash_during_an_alert_episode`` - a forced-fake file stream raises an
   alert; the broker is restarted (SIGTERM) while the episode is open, then crashes (SIGKILL) and the
   episode ends (end of file) while it is down; after it comes back, a persistent-session consumer has
   exactly one episode: every ``start`` and the ``end`` carry the same id, nothing was lost, nothing
   was dropped, and the service counted one episode.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stream.app import App
from tests.fixtures.media import astronaut_video
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.test_service import _until, alerts, fast_stream, service_config, states

pytestmark = pytest.mark.timeout(180)


async def test_broker_restart_and_crash_during_an_alert_episode(
    mqtt_broker: MosquittoBroker, fake_checkpoint: Path, tmp_path: Path
) -> None:
    clip = astronaut_video(tmp_path / "twelve-seconds.mp4", seconds=12.0, height=240)  # ends on its own: the episode's end
    cfg = service_config(mqtt_broker, fake_checkpoint, [fast_stream("cam", str(clip), realtime=True)])
    async with collect_messages(
        mqtt_broker.host, mqtt_broker.port, ["deepfake/#"], persistent=True, client_id="fault-watcher"
    ) as seen:
        app = App(cfg)
        service = await app.start()
        publisher = service.publisher
        handle = service.streams["cam"]
        try:
            await seen.wait_for(lambda _: len(alerts(seen, "cam", "start")) == 1, 60, "the alert start")
            print(f"observed: alert start {alerts(seen, 'cam', 'start')[0]['id']}")

            mqtt_broker.restart()
            print("injected: broker restart (SIGTERM, start) during the episode")
            await asyncio.wait_for(_until(lambda: publisher.reconnects >= 1 and publisher.connected), 20)  # type: ignore[attr-defined]
            assert handle.pipeline.alerts.active, "the clip ended too early for this test"

            mqtt_broker.save()  # the consumer's persistent session must survive the crash
            mqtt_broker.kill()
            print("injected: broker crash (SIGKILL) during the episode")
            await asyncio.wait_for(_until(lambda: not handle.pipeline.alerts.active), 30)  # end of file ends the episode
            pending = publisher.pending_alerts  # type: ignore[attr-defined]
            print(f"observed: episode ended while the broker is down; {pending} alert(s) in the outbox")
            assert pending >= 1
            assert len(alerts(seen, "cam", "end")) == 0

            mqtt_broker.start()
            print("injected: broker back")
            await seen.wait_for(lambda _: len(alerts(seen, "cam", "end")) >= 1, 30, "the episode's end after the crash")
            await asyncio.wait_for(_until(lambda: publisher.pending_alerts == 0), 10)  # type: ignore[attr-defined]
            await asyncio.sleep(1.0)  # room for a duplicate to show up
        finally:
            await app.stop()
    starts, ends = alerts(seen, "cam", "start"), alerts(seen, "cam", "end")
    print(f"observed: {len(starts)} start(s) {[s['id'] for s in starts]}, {len(ends)} end(s) {[e['id'] for e in ends]}")
    print(f"observed: publisher delivered {publisher.alerts_delivered}, dropped {publisher.alerts_dropped}, reconnects {publisher.reconnects}")  # type: ignore[attr-defined]
    assert {s["id"] for s in starts} == {e["id"] for e in ends}  # one episode: QoS 1 may repeat a message, never invent one
    assert len({s["id"] for s in starts}) == 1
    assert ends[0]["reason"].startswith("stream")  # ended by the end of the clip, not by the service stopping
    assert handle.pipeline.stats.alerts == 1 and handle.pipeline.alerts.episodes == 1
    assert publisher.alerts_dropped == 0 and publisher.pending_alerts == 0  # type: ignore[attr-defined]
    assert publisher.reconnects >= 2  # type: ignore[attr-defined]
    assert states(seen, "cam")[-1] == "stopped"
