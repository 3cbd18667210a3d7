"""MqttPublisher against a real mosquitto (tests/fixtures/mqtt.py): no mocks.

Each test watches the broker with an independent aiomqtt subscriber, so what is
asserted is what an MQTT consumer of the service would actually see.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import SecretStr

from stream.config import MqttConfig, TlsConfig
from stream.outputs.mqtt import MqttPublisher
from stream.outputs.publisher import NullPublisher
from tests.fixtures.mqtt import MosquittoBroker, MqttCollector, collect_messages, make_tls_files, retained_message

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
LOGGER = "stream.outputs.mqtt"
AVAILABLE = "deepfake/available"


def make_cfg(broker: MosquittoBroker, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": "deepfake-test",
        "reconnect_max_s": 0.4,
        "score_interval_s": 0.5,
    }
    values.update(overrides)
    return MqttConfig(**values)


@contextlib.asynccontextmanager
async def running(publisher: MqttPublisher) -> AsyncIterator[asyncio.Task[None]]:
    """run() in the background; close() at the end, and run() must have returned without error."""
    task = asyncio.create_task(publisher.run())
    try:
        yield task
    finally:
        await publisher.close(timeout_s=2.0)
        await asyncio.wait_for(task, 5.0)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def retained(broker: MosquittoBroker, topic: str, timeout: float = 3.0) -> bytes:
    """What a consumer connecting now gets as the retained value of ``topic``."""
    return (await retained_message(broker.host, broker.port, topic, timeout)).payload


async def retained_or_none(broker: MosquittoBroker, topic: str, wait_s: float = 0.3) -> bytes | None:
    """The retained value of ``topic``, or None if a fresh subscriber gets nothing within ``wait_s``."""
    async with collect_messages(broker.host, broker.port, [topic]) as late:
        await asyncio.sleep(wait_s)
        return next((m.payload for m in late.messages if m.retain), None)


# ----------------------------------------------------------------- availability


async def test_online_retained_while_up_and_offline_retained_after_close(mqtt_broker: MosquittoBroker) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    task = asyncio.create_task(publisher.run())
    await wait_until(lambda: publisher.connected, what="connect")
    assert await retained(mqtt_broker, AVAILABLE) == b"online"

    async with collect_messages(mqtt_broker.host, mqtt_broker.port, [AVAILABLE]) as seen:
        await publisher.close()
        await asyncio.wait_for(task, 1.0)  # close() makes run() return
        await seen.wait_for(lambda msgs: bool(msgs) and msgs[-1].payload == b"offline", what="offline")
    assert not publisher.connected
    assert await retained(mqtt_broker, AVAILABLE) == b"offline"
    broker_log = mqtt_broker.log_text()
    assert "as deepfake-test (p2, c0, k30)" in broker_log  # MQTT 3.1.1, persistent session (clean session 0)
    assert "Client deepfake-test disconnected." in broker_log  # a clean DISCONNECT, not a dropped socket


CHILD = """
import asyncio, json, sys, types
from stream.outputs.mqtt import MqttPublisher
from stream.outputs.publisher import NullPublisher
# The real MqttConfig's values, as a namespace: importing stream.config costs ~10 s (torch via detector).
cfg = types.SimpleNamespace(**json.loads(sys.argv[1]))
asyncio.run(MqttPublisher(cfg, initial_backoff_s=0.05).run())
"""


async def test_last_will_publishes_offline_retained_when_the_process_is_killed(mqtt_broker: MosquittoBroker) -> None:
    cfg = make_cfg(mqtt_broker, client_id="doomed").model_dump(mode="json")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, json.dumps(cfg), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        async with collect_messages(mqtt_broker.host, mqtt_broker.port, [AVAILABLE]) as seen:
            try:
                await seen.wait_for(lambda msgs: any(m.payload == b"online" for m in msgs), 20.0, "online")
            except AssertionError:
                child.kill()
                _, stderr = await child.communicate()
                raise AssertionError(f"the child never came online: {stderr.decode(errors='replace')}") from None
            child.send_signal(signal.SIGKILL)  # no DISCONNECT, no close(): only the broker's last will can tell
            assert await asyncio.wait_for(child.wait(), 5.0) == -signal.SIGKILL
            await seen.wait_for(lambda msgs: bool(msgs) and msgs[-1].payload == b"offline", 5.0, "the last will")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert await retained(mqtt_broker, AVAILABLE) == b"offline"


async def test_cancelling_run_without_close_still_leaves_offline_retained(mqtt_broker: MosquittoBroker) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    task = asyncio.create_task(publisher.run())
    await wait_until(lambda: publisher.connected, what="connect")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # A cancelled client disconnects cleanly, which suppresses the will: it must say offline itself.
    assert await retained(mqtt_broker, AVAILABLE) == b"offline"


# ----------------------------------------------------------------------- status


async def test_status_is_retained_latest_wins_and_is_replayed_after_a_broker_restart(
    mqtt_broker: MosquittoBroker,
) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    publisher.publish_status("cam1", {"state": "starting"})  # before run(): kept and sent on connect
    async with running(publisher):
        publisher.publish_status("cam1", {"state": "live", "fps": 2.0})
        publisher.publish_status("cam2", {"state": "live"})
        await wait_until(lambda: publisher.connected, what="connect")
        status = await retained(mqtt_broker, "deepfake/cam1/status")
        assert json.loads(status) == {"state": "live", "fps": 2.0}

        # The broker loses the retained status (cleared here by an empty retained
        # message; persistence keeps everything else across the restart) ...
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as other:
            for stream in ("cam1", "cam2"):
                await other.publish(f"deepfake/{stream}/status", b"", qos=1, retain=True)
        mqtt_broker.restart()
        # ... and the publisher puts the latest one back when it reconnects.
        await wait_until(lambda: publisher.reconnects == 1 and publisher.connected, what="reconnect")
        assert json.loads(await retained(mqtt_broker, "deepfake/cam1/status")) == {"state": "live", "fps": 2.0}
        assert json.loads(await retained(mqtt_broker, "deepfake/cam2/status")) == {"state": "live"}
        assert await retained(mqtt_broker, AVAILABLE) == b"online"


async def test_alert_state_is_retained_qos1_latest_wins_and_replayed_after_a_restart_without_persistence(
    make_mqtt_broker: Callable[..., MosquittoBroker],
) -> None:
    broker = make_mqtt_broker(persistence=False)
    topic = "deepfake/cam1/alert/state"
    publisher = MqttPublisher(make_cfg(broker), initial_backoff_s=0.05)
    publisher.publish_alert_state("cam1", {"state": "off", "id": None, "since": 1.0})  # before run(): sent on connect
    async with running(publisher):
        await wait_until(lambda: publisher.connected, what="connect")
        publisher.publish_alert_state("cam1", {"state": "on", "id": "e1", "since": 2.0})
        publisher.publish_alert("cam1", {"event": "start", "id": "e1"})
        await wait_until(lambda: publisher.alerts_delivered == 1, what="the start alert")
        async with collect_messages(broker.host, broker.port, [topic]) as late:
            await late.wait_for(lambda msgs: bool(msgs), 3, "the retained state")
            assert [(m.retain, m.qos, m.json()) for m in late.messages] == [(True, 1, {"state": "on", "id": "e1", "since": 2.0})]

        async with collect_messages(broker.host, broker.port, ["deepfake/#"]) as seen:
            broker.restart()  # without persistence: every retained message is gone ...
            await wait_until(lambda: publisher.reconnects == 1 and publisher.connected, what="reconnect")
            # ... and the open episode is announced again through its retained state, not a second start
            assert json.loads(await retained(broker, topic)) == {"state": "on", "id": "e1", "since": 2.0}
            await asyncio.sleep(0.3)
            assert seen.on("deepfake/cam1/alert") == []
    with pytest.raises(ValueError, match="stream name"):
        publisher.publish_alert_state("cam/1", {"state": "off"})
    NullPublisher().publish_alert_state("cam1", {"state": "off"})  # MQTT disabled: accepted, goes nowhere


# ------------------------------------------------------------------------ score


async def test_scores_are_rate_limited_per_stream_and_the_latest_value_wins(mqtt_broker: MosquittoBroker) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker, score_interval_s=0.5), initial_backoff_s=0.05)
    publisher.publish_score("cam1", {"score": -1})  # not connected: dropped, never queued
    assert publisher.scores_dropped == 1
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/+/score"]) as seen, running(publisher):
        await wait_until(lambda: publisher.connected, what="connect")
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 1.6:  # ~80 scores for cam1 in 1.6 s, one for cam2
            publisher.publish_score("cam1", {"score": sent})
            if sent == 0:
                publisher.publish_score("cam2", {"score": 0.5})
            sent += 1
            await asyncio.sleep(0.02)
        last = sent - 1
        await seen.wait_for(
            lambda msgs: any(m.topic == "deepfake/cam1/score" and m.json() == {"score": last} for m in msgs),
            1.5, "the last score (sent when its interval elapses)",
        )
        await asyncio.sleep(0.6)  # nothing more may come
    cam1 = seen.on("deepfake/cam1/score")
    values = [m.json()["score"] for m in cam1]
    assert values[0] == 0  # the first of an interval goes at once
    assert -1 not in values
    assert 3 <= len(cam1) <= 5, values  # 1.6 s at one per 0.5 s, plus the trailing latest
    gaps = [b.at - a.at for a, b in itertools.pairwise(cam1)]
    assert min(gaps) >= 0.4, gaps
    assert values == sorted(values) and values[-1] == last
    assert all(m.qos == 0 and not m.retain for m in cam1)
    assert [m.json() for m in seen.on("deepfake/cam2/score")] == [{"score": 0.5}]  # per-stream limit
    assert publisher.scores_published == len(cam1) + 1


# ----------------------------------------------------------------------- alerts


async def test_alerts_are_delivered_with_qos1_in_order_and_not_retained(mqtt_broker: MosquittoBroker) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/+/alert"], qos=1) as seen, running(
        publisher
    ):
        for n in range(20):
            publisher.publish_alert("cam1", {"n": n, "score": 0.93})
        publisher.publish_snapshot("cam1", b"\xff\xd8 not connected yet \xff\xd9")  # dropped: not connected
        alerts = await seen.wait_for_count("deepfake/cam1/alert", 20)
        await wait_until(lambda: publisher.pending_alerts == 0, what="PUBACKs")
    assert [m.json()["n"] for m in alerts] == list(range(20))
    assert all(m.qos == 1 and not m.retain for m in alerts)
    assert publisher.alerts_delivered == 20 and publisher.alerts_dropped == 0
    assert publisher.snapshots_dropped == 1


async def test_alerts_raised_while_the_broker_is_down_arrive_once_in_order_after_restart(
    mqtt_broker: MosquittoBroker,
) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    # A persistent-session consumer: the broker queues alerts for it while it is cut off too.
    async with collect_messages(
        mqtt_broker.host, mqtt_broker.port, ["deepfake/+/alert"], qos=1, persistent=True
    ) as seen, running(publisher):
        await wait_until(lambda: publisher.connected, what="connect")
        publisher.publish_alert("cam1", {"n": 0})
        await seen.wait_for_count("deepfake/cam1/alert", 1)

        mqtt_broker.stop()
        await wait_until(lambda: not publisher.connected, what="the publisher to notice the broker is gone")
        for n in (1, 2, 3):
            publisher.publish_alert("cam1", {"n": n})
        await asyncio.sleep(0.3)  # a few failed reconnects meanwhile
        assert publisher.pending_alerts == 3
        assert publisher.connect_failures >= 1

        mqtt_broker.start()
        await seen.wait_for_count("deepfake/cam1/alert", 4, timeout=5.0)
        await wait_until(lambda: publisher.pending_alerts == 0, what="PUBACKs after restart")
        await asyncio.sleep(0.5)  # time for any duplicate to show up
    assert [m.json()["n"] for m in seen.on("deepfake/cam1/alert")] == [0, 1, 2, 3]
    assert publisher.alerts_delivered == 4
    assert publisher.reconnects == 1


async def test_an_alert_in_flight_when_the_broker_crashes_stays_in_the_outbox_until_acknowledged(
    mqtt_broker: MosquittoBroker,
) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    async with collect_messages(
        mqtt_broker.host, mqtt_broker.port, ["deepfake/+/alert"], qos=1, persistent=True
    ) as seen, running(publisher):
        await wait_until(lambda: publisher.connected, what="connect")
        mqtt_broker.save()  # the consumer's persistent session must outlive the crash below
        mqtt_broker.freeze()  # the broker hangs: the first alert is written to the socket, never acknowledged
        for n in (1, 2, 3):
            publisher.publish_alert("cam1", {"n": n})
        await asyncio.sleep(0.3)
        assert publisher.pending_alerts == 3 and publisher.alerts_delivered == 0
        mqtt_broker.kill()  # crash: the unread PUBLISH dies with it
        mqtt_broker.start()
        await seen.wait_for_count("deepfake/cam1/alert", 3, timeout=5.0)
        await wait_until(lambda: publisher.pending_alerts == 0, what="PUBACKs after restart")
        await asyncio.sleep(0.5)  # time for any duplicate to show up
    assert [m.json()["n"] for m in seen.on("deepfake/cam1/alert")] == [1, 2, 3]
    assert publisher.alerts_delivered == 3


async def test_a_full_outbox_drops_the_oldest_alert_with_a_warning(
    mqtt_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    publisher = MqttPublisher(make_cfg(mqtt_broker, max_pending_alerts=3), initial_backoff_s=0.05)
    for n in range(5):  # not running yet, so nothing can leave the outbox
        publisher.publish_alert("cam1", {"n": n})
    assert publisher.pending_alerts == 3
    assert publisher.alerts_dropped == 2
    drops = [r.getMessage() for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(drops) == 2
    assert "alert #1 for stream 'cam1'" in drops[0] and '{"n":0}' in drops[0]
    assert "alert #2 for stream 'cam1'" in drops[1] and '{"n":1}' in drops[1]

    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/+/alert"]) as seen, running(publisher):
        alerts = await seen.wait_for_count("deepfake/cam1/alert", 3)
        await asyncio.sleep(0.2)
    assert [m.json()["n"] for m in seen.on("deepfake/cam1/alert")] == [2, 3, 4]
    assert publisher.alerts_delivered == 3 and len(alerts) == 3


async def test_snapshots_are_raw_jpeg_bytes_qos0_not_retained(mqtt_broker: MosquittoBroker) -> None:
    jpeg = bytes(range(256)) * 64  # any bytes: the payload is not JSON, not re-encoded
    publisher = MqttPublisher(make_cfg(mqtt_broker), initial_backoff_s=0.05)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/+/snapshot"]) as seen, running(publisher):
        await wait_until(lambda: publisher.connected, what="connect")
        publisher.publish_snapshot("cam1", b"\xff\xd8" + jpeg + b"\xff\xd9")
        (snapshot,) = await seen.wait_for_count("deepfake/cam1/snapshot", 1)
    assert snapshot.payload == b"\xff\xd8" + jpeg + b"\xff\xd9"
    assert snapshot.qos == 0 and not snapshot.retain
    assert publisher.snapshots_published == 1
    assert await retained_or_none(mqtt_broker, "deepfake/cam1/snapshot") is None


# ------------------------------------------------------------------ auth & TLS


async def test_password_auth_connects_and_a_wrong_password_keeps_retrying_without_logging_it(
    make_mqtt_broker: Callable[..., MosquittoBroker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = make_mqtt_broker(users={"alice": "correct-horse-9"})
    good = MqttPublisher(
        make_cfg(broker, username="alice", password=SecretStr("correct-horse-9"), client_id="good", topic_prefix="good"),
        initial_backoff_s=0.05,
    )
    bad = MqttPublisher(
        make_cfg(broker, username="alice", password=SecretStr("wrong-Pass-42"), client_id="bad", topic_prefix="bad"),
        initial_backoff_s=0.05,
    )
    async with collect_messages(
        broker.host, broker.port, ["good/#", "bad/#"], username="alice", password="correct-horse-9"
    ) as seen, running(good), running(bad):
        good.publish_alert("cam1", {"n": 1})
        bad.publish_alert("cam1", {"n": 1})
        await seen.wait_for_count("good/cam1/alert", 1)
        await wait_until(lambda: bad.connect_failures >= 3, what="the bad publisher to retry")
        assert not bad.connected and bad.pending_alerts == 1
        assert seen.on("bad/available") == [] and seen.on("bad/cam1/alert") == []
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage() and "user 'alice'" in r.getMessage()]
    assert failures, caplog.text
    assert "not authori" in failures[0].lower(), failures[0]
    assert "wrong-Pass-42" not in caplog.text and "correct-horse-9" not in caplog.text


async def test_tls_verifies_the_broker_certificate_and_hostname(
    make_mqtt_broker: Callable[..., MosquittoBroker], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tls = make_tls_files(tmp_path / "tls", dns_names=("localhost",))
    broker = make_mqtt_broker(tls=tls)
    assert broker.tls_port is not None

    def publisher(name: str, host: str, tls_cfg: TlsConfig) -> MqttPublisher:
        cfg = make_cfg(broker, host=host, port=broker.tls_port, client_id=name, topic_prefix=name, tls=tls_cfg)
        return MqttPublisher(cfg, initial_backoff_s=0.05)

    trusted = publisher("trusted", "localhost", TlsConfig(ca_certs=tls.ca_cert))
    untrusted = publisher("untrusted", "localhost", TlsConfig())  # system CAs only: our CA is unknown
    wrong_host = publisher("wronghost", "127.0.0.1", TlsConfig(ca_certs=tls.ca_cert))  # cert is for localhost
    insecure = publisher("insecure", "127.0.0.1", TlsConfig(ca_certs=tls.ca_cert, insecure=True))
    async with collect_messages(broker.host, broker.port) as seen:  # watches over the plain listener
        async with running(trusted), running(untrusted), running(wrong_host), running(insecure):
            await seen.wait_for(
                lambda _: seen.payloads("trusted/available") == [b"online"]
                and seen.payloads("insecure/available") == [b"online"],
                5.0, "the verified TLS publishers to come online",
            )
            await wait_until(lambda: untrusted.connect_failures >= 2 and wrong_host.connect_failures >= 2)
            assert trusted.connected and insecure.connected
            assert not untrusted.connected and not wrong_host.connected
        assert seen.on("untrusted/available") == [] and seen.on("wronghost/available") == []
    rejected = [r.getMessage() for r in caplog.records if "mqtts://" in r.getMessage() and "failed" in r.getMessage()]
    assert any("localhost" in line and "certificate verify failed" in line for line in rejected), rejected
    assert any("127.0.0.1" in line and "certificate verify failed" in line for line in rejected), rejected


async def test_bad_topic_names_and_non_json_payloads_fail_at_the_call_site(mqtt_broker: MosquittoBroker) -> None:
    publisher = MqttPublisher(make_cfg(mqtt_broker))
    with pytest.raises(ValueError, match="stream name"):
        publisher.publish_alert("cam/1", {"n": 1})
    with pytest.raises(ValueError):
        publisher.publish_status("cam1", {"score": float("nan")})
    assert publisher.pending_alerts == 0


# A MqttCollector is reused by other test files; make sure its basics hold here too.
async def test_collector_records_topic_payload_retain_and_qos(mqtt_broker: MosquittoBroker) -> None:
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        await client.publish("x/retained", b"r", qos=1, retain=True)
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, ["x/#"], qos=1)
    async with collector:
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            await client.publish("x/live", b"l", qos=1)
        await collector.wait_for_count("x/live", 1)
    assert [(m.topic, m.payload, m.retain, m.qos) for m in collector.messages] == [
        ("x/retained", b"r", True, 1),
        ("x/live", b"l", False, 1),
    ]
