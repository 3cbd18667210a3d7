"""A sharded fleet on one broker: replicas that split one stream list and publish side by side.

Real parts only: mosquitto, ``deepfake-stream run`` processes (one per shard, told their
shard by ``DEEPFAKE_SHARD_INDEX``/``DEEPFAKE_SHARD_COUNT`` like a StatefulSet pod is told
its count), real encoded looping clips, a random-init B0.  The fleet test is sized for a
2-core machine: a 64 px classifier, one sample per second, a 320x180 clip at 5 fps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream.app import App
from stream.config import ConfigError, DiscoveryConfig, MqttConfig, parse_config
from stream.outputs.discovery import discovery_messages
from stream.outputs.mqtt import MqttPublisher
from stream.outputs.topics import INSTANCE_LEVEL, availability_topic
from stream.sharding import SHARD_COUNT_ENV, SHARD_INDEX_ENV, assignment, owner
from stream.sources.config import RESERVED_STREAM_NAMES
from stream.web.whip import Refused, check_stream_name
from tests.fixtures.media import TEST_ENCODER, astronaut_video
from tests.fixtures.mqtt import MosquittoBroker, MqttCollector, collect_messages

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
# 3 streams per shard with 3 shards; with 4, cam-c, cam-h and cam-k move to the new shard 3 (asserted below)
STREAMS = ["cam-a", "cam-b", "cam-c", "cam-d", "cam-e", "cam-f", "cam-h", "cam-j", "cam-k"]
BASE_CLIENT_ID = "fleet"


async def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


# ------------------------------------------------------- instances on one broker


async def test_named_instances_share_a_broker_without_taking_each_others_session(mqtt_broker: MosquittoBroker) -> None:
    cfg = MqttConfig(host=mqtt_broker.host, port=mqtt_broker.port, client_id=BASE_CLIENT_ID, reconnect_max_s=0.4)
    a, b = (MqttPublisher(cfg, initial_backoff_s=0.05, instance=name) for name in ("edge-a", "edge-b"))
    assert (a.client_id, a.available_topic) == ("fleet-edge-a", "deepfake/instance/edge-a/available")
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        tasks = [asyncio.create_task(p.run()) for p in (a, b)]
        try:
            await wait_until(lambda: a.connected and b.connected, 10, "both instances connected")
            a.publish_status("cam-1", {"state": "streaming"})
            b.publish_status("cam-2", {"state": "streaming"})
            await seen.wait_for(lambda _: bool(seen.on("deepfake/cam-1/status")) and bool(seen.on("deepfake/cam-2/status")), 5, "statuses")
            await asyncio.sleep(1.5)  # long enough for two clients with one id to have thrown each other off
            assert a.connected and b.connected and (a.connects, b.connects) == (1, 1)
            assert seen.on("deepfake/cam-1/status")[-1].json() == {"state": "streaming", "instance": "edge-a"}
            assert seen.on("deepfake/cam-2/status")[-1].json()["instance"] == "edge-b"
            assert [m.payload for m in seen.on(a.available_topic)] == [b"online"]
            await a.close(timeout_s=2)
            await seen.wait_for(lambda _: seen.on(a.available_topic)[-1].payload == b"offline", 5, "edge-a offline")
            assert b.connected and [m.payload for m in seen.on(b.available_topic)] == [b"online"]  # a's goodbye is a's alone
            assert not seen.on("deepfake/available")  # the lone analyzer's topic is not used by a fleet
        finally:
            for publisher in (a, b):
                await publisher.close(timeout_s=2)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
    log = mqtt_broker.log_text()
    assert "as fleet-edge-a (" in log and "as fleet-edge-b (" in log
    assert "already connected" not in log


def test_a_lone_analyzer_keeps_its_topic_and_client_id() -> None:
    publisher = MqttPublisher(MqttConfig(client_id="deepfake-stream"))
    assert (publisher.client_id, publisher.available_topic, publisher.instance) == ("deepfake-stream", "deepfake/available", None)
    assert availability_topic("site/", "deepfake-stream-3") == "site/instance/deepfake-stream-3/available"
    with pytest.raises(ValueError, match="one MQTT topic level"):
        availability_topic("deepfake", "a/b")


def test_no_stream_can_own_the_instance_topics() -> None:
    """``<prefix>/instance/#`` carries only the replicas' availability: a stream named ``instance`` is refused everywhere."""
    assert INSTANCE_LEVEL in RESERVED_STREAM_NAMES
    with pytest.raises(ConfigError, match=r"streams\.0\.name: .*'instance' is reserved"):
        parse_config({"streams": [{"name": "instance", "url": "x.mp4"}]})
    with pytest.raises(Refused) as refused:
        check_stream_name("instance")
    assert refused.value.status == 400
    check_stream_name("instances")  # only the exact level is reserved


def test_discovery_of_a_named_instance_keeps_the_fleets_entities() -> None:
    """A stream that moves to another replica keeps its HA entities: same config topics and unique ids, the new replica's availability."""
    discovery, mqtt = DiscoveryConfig(enabled=True), MqttConfig(client_id=BASE_CLIENT_ID)
    lone = discovery_messages("cam-a", discovery, mqtt)
    on_2 = discovery_messages("cam-a", discovery, mqtt, instance="shard-2")
    on_3 = discovery_messages("cam-a", discovery, mqtt, instance="shard-3")
    assert set(lone) == set(on_2) == set(on_3) == {"homeassistant/sensor/fleet/cam-a_score/config", "homeassistant/binary_sensor/fleet/cam-a_alert/config"}
    for topic in lone:
        assert lone[topic]["unique_id"] == on_2[topic]["unique_id"] == on_3[topic]["unique_id"]
        assert lone[topic]["availability_topic"] == "deepfake/available" and "hw_version" not in lone[topic]["device"]
        assert on_2[topic]["availability_topic"] == "deepfake/instance/shard-2/available"
        assert on_2[topic]["device"]["hw_version"] == "instance shard-2" and on_3[topic]["device"]["hw_version"] == "instance shard-3"
        assert on_2[topic]["state_topic"] == lone[topic]["state_topic"]  # stream topics do not depend on the replica


# ------------------------------------------------------------ an empty shard


async def test_an_empty_shard_is_ready_and_says_why(mqtt_broker: MosquittoBroker, checkpoint: Path, astronaut_clip: Path) -> None:
    """More replicas than streams: the idle one is ready (a StatefulSet must not stall on it) and reports its shard."""
    assert owner("cam-a", 3) != 0
    cfg = parse_config({
        "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 64},
        "streams": [{"name": "cam-a", "url": str(astronaut_clip), "loop": True, "realtime": True}],
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "client_id": BASE_CLIENT_ID},
        "http": {"port": 0},
        "sharding": {"index": 0, "count": 3, "instance": "idle"},
    })  # fmt: skip
    app = App(cfg)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen, aiohttp.ClientSession() as http:
        service = await app.start()
        try:
            assert service.streams == {}  # cam-a is another shard's
            await seen.wait_for(lambda _: bool(seen.on("deepfake/instance/idle/available")), 10, "the idle instance online")
            assert app.http is not None and app.http.port
            async with http.get(f"http://127.0.0.1:{app.http.port}/health") as response:
                status, body = response.status, await response.json()
            assert status == 200 and body["ok"] is True and body["problems"] == [], body
            assert "owns none of the 1 configured stream(s)" in body["note"]
            assert body["shard"] == {
                "index": 0, "count": 3, "instance": "idle", "named": True, "source": "config", "streams_kept": 0, "streams_skipped": 1, "empty": True,
            }  # fmt: skip
            samples = await scrape(http, app.http.port)
            assert samples[("deepfake_shard_info", (("count", "3"), ("index", "0"), ("instance", "idle")))] == 1
            assert samples[("deepfake_shard_streams", ())] == 0 and samples[("deepfake_shard_streams_skipped", ())] == 1
            assert not [m for m in seen.messages if m.topic.startswith("deepfake/cam-a/")]  # nothing published for a stream it does not own
        finally:
            await app.stop()


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


# -------------------------------------------------------------- the fleet test


@dataclass
class Replica:
    """One ``deepfake-stream run`` process of the fleet, its stderr in ``log``."""

    index: int
    count: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def instance(self) -> str:
        return f"shard-{self.index}"  # the default instance of a replica told its index by the environment

    def http_port(self) -> int | None:
        match = re.search(r"HTTP listening on http://[^:]+:(\d+)", self.log.read_text(errors="replace"))
        return int(match[1]) if match else None


class Fleet:
    """Starts replicas of one config as processes; kills whatever is left at the end."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config, self.logs = config, logs
        self.replicas: dict[int, Replica] = {}
        self.started: list[Replica] = []
        command = shutil.which("deepfake-stream", path=str(Path(sys.executable).parent))
        self.command = [command] if command else [sys.executable, "-m", "stream.cli"]

    async def start(self, index: int, count: int) -> Replica:
        env = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "HOSTNAME")}  # one host: the index names each replica
        env.update({SHARD_INDEX_ENV: str(index), SHARD_COUNT_ENV: str(count), "OMP_NUM_THREADS": "1"})  # 4 processes share 2 cores
        log = self.logs / f"shard-{index}-of-{count}-{len(self.started)}.log"
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *self.command, "run", "--config", str(self.config), cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=sink,
            )  # fmt: skip
        replica = self.replicas[index] = Replica(index, count, proc, log)
        self.started.append(replica)
        return replica

    async def kill(self, index: int) -> None:
        replica = self.replicas.pop(index)
        replica.proc.send_signal(signal.SIGKILL)  # no DISCONNECT, no offline: only the broker's last will can tell
        assert await asyncio.wait_for(replica.proc.wait(), 10) == -signal.SIGKILL

    async def stop_all(self) -> None:
        """SIGTERM every replica; each must end cleanly."""
        replicas, self.replicas = list(self.replicas.values()), {}
        for replica in replicas:
            replica.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(r.proc.wait() for r in replicas)), 60)
        assert codes == [0] * len(replicas), [(r.instance, r.proc.returncode, tail(r.log)) for r in replicas]

    def cleanup(self) -> None:
        for replica in self.started:
            if replica.proc.returncode is None:
                replica.proc.kill()

    def tails(self) -> str:
        return "\n".join(f"--- {r.log.name} (exit {r.proc.returncode})\n{tail(r.log)}" for r in self.started)


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def scored_by(seen: MqttCollector, since: float) -> dict[str, set[str]]:
    """stream -> the instances that published a score for it after ``since``, read from the MQTT score messages."""
    found: dict[str, set[str]] = defaultdict(set)
    for message in seen.messages:
        parts = message.topic.split("/")
        if message.at >= since and len(parts) == 3 and parts[2] == "score":
            found[parts[1]].add(message.json()["instance"])
    return found


def availability(seen: MqttCollector, instance: str, since: float = 0.0) -> list[bytes]:
    return [m.payload for m in seen.on(f"deepfake/instance/{instance}/available") if m.at >= since]


@contextlib.contextmanager
def explained(fleet: Fleet) -> Iterator[None]:
    """A failed wait or check carries the replicas' last log lines."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.tails()}") from None


def fleet_config(path: Path, clip: Path, checkpoint: Path, broker: MosquittoBroker) -> Path:
    """The one config every replica reads: the whole stream list, no shard (the environment says which)."""
    config = {
        "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 64},
        "streams": [{"name": name, "url": str(clip), "loop": True, "realtime": True, "sample_fps": 1} for name in STREAMS],
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": BASE_CLIENT_ID, "reconnect_max_s": 2.0},
        "engine": {"max_batch": 4, "max_wait_ms": 10},
        "http": {"port": 0},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def check_shard_reports(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    """Each replica's /health and /metrics name its shard and the streams it keeps."""
    for index, replica in fleet.replicas.items():
        port = replica.http_port()
        assert port is not None, "no HTTP port in the log"
        async with http.get(f"http://127.0.0.1:{port}/health") as response:
            body = await response.json()
        mine = assignment(STREAMS, replica.count)[index]
        assert body["shard"] == {
            "index": index, "count": replica.count, "instance": replica.instance, "named": True, "source": "environment",
            "streams_kept": len(mine), "streams_skipped": len(STREAMS) - len(mine), "empty": False,
        }  # fmt: skip
        assert sorted(body["streams"]) == sorted(mine)
        samples = await scrape(http, port)
        assert samples[("deepfake_shard_info", (("count", str(replica.count)), ("index", str(index)), ("instance", replica.instance)))] == 1
        assert samples[("deepfake_shard_streams", ())] == len(mine)


@pytest.mark.timeout(480)  # ~2.5 min on an idle 2-core machine; the waits are generous for a loaded one, and bounded
async def test_fleet_splits_streams_survives_a_killed_replica_and_reshards(
    mqtt_broker: MosquittoBroker, checkpoint: Path, tmp_path: Path
) -> None:
    """Three replicas, nine streams: each stream scored by exactly its owner; a SIGKILLed replica goes offline by its
    last will while the others score on, and resumes its streams when restarted; four replicas then move exactly the
    streams rendezvous hashing predicts and lose none."""
    three, four = assignment(STREAMS, 3), assignment(STREAMS, 4)
    moved = {name for name in STREAMS if owner(name, 3) != owner(name, 4)}
    assert all(len(names) == 3 for names in three.values()) and moved == set(four[3]) and 0 < len(moved) < len(STREAMS)  # the premise

    clip = astronaut_video(tmp_path / "clip.mp4", seconds=2.0, fps=5, height=180)
    fleet = Fleet(fleet_config(tmp_path / "config.yaml", clip, checkpoint, mqtt_broker), tmp_path)
    started = time.monotonic()
    phases: dict[str, float] = {}  # seconds per step, printed at the end (how the fleet test spends its time)
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen, aiohttp.ClientSession() as http:
        try:
            with explained(fleet):
                # 1. three shards: every stream scored, each by its owner only
                t0 = time.monotonic()
                for index in range(3):
                    await fleet.start(index, 3)
                await seen.wait_for(lambda _: set(scored_by(seen, t0)) == set(STREAMS), 120, "a score for every stream from 3 replicas")
                await asyncio.sleep(2)  # a little more scoring, so a second scorer would show
                first = scored_by(seen, t0)
                assert first == {name: {f"shard-{owner(name, 3)}"} for name in STREAMS}
                for name in STREAMS:
                    assert seen.on(f"deepfake/{name}/status")[-1].json()["instance"] == f"shard-{owner(name, 3)}"
                assert all(availability(seen, f"shard-{i}") == [b"online"] for i in range(3))
                await check_shard_reports(fleet, http)
                phases["3 replicas scoring"] = time.monotonic() - t0

                # 2. SIGKILL shard 1: its last will says offline on its own topic; the others score on
                victim = fleet.replicas[1]
                t_kill = time.monotonic()
                await fleet.kill(1)
                await seen.wait_for(lambda _: availability(seen, victim.instance, t_kill) == [b"offline"], 15, "shard-1's last will")
                offline_at = next(m.at for m in seen.on("deepfake/instance/shard-1/available") if m.at >= t_kill)
                survivors = [name for name in STREAMS if owner(name, 3) != 1]
                await seen.wait_for(lambda _: set(scored_by(seen, offline_at + 0.5)) >= set(survivors), 20, "the other shards scoring on")
                assert all(availability(seen, f"shard-{i}", t_kill) == [] for i in (0, 2))  # nobody else went offline
                assert not any("shard-1" in instances for instances in scored_by(seen, offline_at).values())
                assert set(scored_by(seen, offline_at)).isdisjoint(three[1])  # no coordinator: its streams wait for it
                phases["kill"] = time.monotonic() - t_kill

                # 3. restart shard 1: online again, its streams resume, scored by it
                t_back = time.monotonic()
                await fleet.start(1, 3)
                await seen.wait_for(lambda _: set(scored_by(seen, t_back)) >= set(three[1]), 90, "shard-1's streams resuming")
                assert availability(seen, "shard-1", t_back) == [b"online"]
                assert all(scored_by(seen, t_back)[name] == {"shard-1"} for name in three[1])
                phases["restart"] = time.monotonic() - t_back

                # 4. the fleet restarted with four shards: exactly the predicted streams move, none is lost
                t_stop = time.monotonic()
                await fleet.stop_all()
                await seen.wait_for(lambda _: all(availability(seen, f"shard-{i}", t_stop)[-1:] == [b"offline"] for i in range(3)), 10, "clean offline")
                phases["stop"] = time.monotonic() - t_stop
                t4 = time.monotonic()
                for index in range(4):
                    await fleet.start(index, 4)
                await seen.wait_for(lambda _: set(scored_by(seen, t4)) == set(STREAMS), 120, "a score for every stream from 4 replicas")
                await asyncio.sleep(2)
                after = scored_by(seen, t4)
                assert after == {name: {f"shard-{owner(name, 4)}"} for name in STREAMS}
                observed_moves = {name for name in STREAMS if after[name] != first[name]}
                assert observed_moves == moved and all(after[name] == {"shard-3"} for name in moved)
                await check_shard_reports(fleet, http)
                phases["4 replicas scoring"] = time.monotonic() - t4
                await fleet.stop_all()
        finally:
            fleet.cleanup()
            steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items())
            print(f"fleet test: {time.monotonic() - started:.0f} s ({steps})\n{fleet.tails()}")  # shown when the test fails
    assert "already connected" not in mqtt_broker.log_text()  # no two replicas ever shared a client id
    assert not seen.on("deepfake/available")  # a fleet never uses the lone analyzer's availability topic
