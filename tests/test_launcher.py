"""``engine.process_per_gpu``: the plan of one analyzer process per GPU, and the supervisor that keeps them running.

The supervisor is tested with small stand-in children (whose exit codes and signals the tests
choose) and, end to end, with two real ``deepfake-stream run`` children on the CPU that split a
stream list over a real broker; on a GPU machine ``tests/test_gpu.py`` runs it on two GPUs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream.cli import main as cli_main
from stream.config import parse_config
from stream.config_merge import load_configs
from stream.launcher import EXIT_FATAL, ChildCommand, GpuProcess, Launcher, LaunchError, cli_command, plan_processes, visible_entries
from stream.logs import LOG_TAG_ENV, setup_logging
from stream.sharding import balanced_assignment
from stream.web.config import HttpConfig
from stream.web.server import HttpBindError
from tests.fixtures.media import TEST_ENCODER, astronaut_video
from tests.fixtures.mqtt import MosquittoBroker, collect_messages

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ the plan


def test_visible_entries_follow_this_process_numbering() -> None:
    assert visible_entries(["cuda:0", "cuda:1"], {}) == ["0", "1"]
    assert visible_entries(["cuda", "cuda:3"], {}) == ["0", "3"]
    assert visible_entries(["cuda:0", "cuda:1"], {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_entries(["cuda:1"], {"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}) == ["GPU-bb"]
    with pytest.raises(LaunchError, match=r"cuda:2 is not among the 2 GPU\(s\) that CUDA_VISIBLE_DEVICES='4,5' leaves visible"):
        visible_entries(["cuda:2"], {"CUDA_VISIBLE_DEVICES": "4,5"})
    with pytest.raises(LaunchError, match="one process per GPU, but engine.devices lists 'cpu'"):
        visible_entries(["cuda:0", "cpu"], {})


def test_each_process_gets_one_gpu_its_shard_an_instance_and_a_port() -> None:
    cfg = parse_config({"http": {"port": 9000}, "engine": {"process_per_gpu": True}})
    processes = plan_processes(cfg, cfg.shard_plan({}), ["2", "3"], "auto")
    assert [(p.index, p.visible, p.instance) for p in processes] == [(0, "2", "gpu0"), (1, "3", "gpu1")]
    assert processes[1].overlay == {
        "engine": {"devices": ["cuda:0"], "process_per_gpu": False, "mps": "auto"},
        "sharding": {"index": 1, "count": 2, "instance": "gpu1", "placement": "balanced"},
        "http": {"port": 9002},
    }
    assert [p.port for p in processes] == [9001, 9002]  # 9000 is the launcher's /health
    assert processes[1].label == "gpu1 (CUDA_VISIBLE_DEVICES=3)"
    named = parse_config({"sharding": {"instance": "edge-7"}, "http": {"port": 0}})
    free = plan_processes(named, named.shard_plan({}), ["0", "1"], "off")
    assert free[1].instance == "edge-7-gpu1"
    assert all(p.port and p.overlay["http"] == {"port": p.port} for p in free) and free[0].port != free[1].port  # port 0: free ones, found now
    off = parse_config({"http": {"enabled": False}})
    assert all(p.port is None and "http" not in p.overlay for p in plan_processes(off, off.shard_plan({}), ["0", "1"], "auto"))


def test_a_child_overlay_merges_into_a_valid_config(tmp_path: Path) -> None:
    base = tmp_path / "config.yaml"
    base.write_text(yaml.safe_dump({"streams": [{"name": f"cam-{i}", "url": "x.mp4"} for i in range(6)], "engine": {"process_per_gpu": True}}))
    cfg = load_configs([base])
    for process in plan_processes(cfg, cfg.shard_plan({}), ["0", "1"], "auto"):
        overlay = tmp_path / f"gpu{process.index}.yaml"
        overlay.write_text(yaml.safe_dump(process.overlay))
        child = load_configs([base, overlay])
        plan = child.shard_plan({})
        assert child.engine.devices == ["cuda:0"] and not child.engine.process_per_gpu and child.http.port == 8081 + process.index
        assert (plan.spec.index, plan.spec.count, plan.spec.instance) == (process.index, 2, f"gpu{process.index}")
        names = [f"cam-{i}" for i in range(6)]
        split = balanced_assignment(names, 2)
        assert plan.placement == "balanced" and list(plan.kept) == [name for name in names if split[name] == process.index]
        assert len(plan.kept) == 3  # an even split, whatever the names hash to


def test_a_sharded_box_or_ports_past_65535_are_refused() -> None:
    cfg = parse_config({"sharding": {"index": 1, "count": 3}})
    with pytest.raises(LaunchError, match=r"cannot also be shard 1 of 3 .*run one replica per GPU instead"):
        plan_processes(cfg, cfg.shard_plan({}), ["0", "1"], "auto")
    high = parse_config({"http": {"port": 65534}})
    with pytest.raises(LaunchError, match=r"http.port 65534 \+ 2 \(the launcher's, then one port per GPU\) is beyond 65535"):
        plan_processes(high, high.shard_plan({}), ["0", "1"], "auto")


def test_cli_command_passes_the_configs_then_the_overlay(tmp_path: Path) -> None:
    command = cli_command([Path("base.yaml"), Path("secrets.yaml")], "DEBUG", True)
    argv = command(GpuProcess(0, "0", "gpu0", {}), tmp_path / "gpu0.yaml", 12.5)
    assert argv[1:] == [
        "-m", "stream.cli", "--log-level", "DEBUG", "--log-json", "run",
        "--config", "base.yaml", "--config", "secrets.yaml", "--config", str(tmp_path / "gpu0.yaml"), "--duration", "12.5",
    ]  # fmt: skip
    assert "--duration" not in cli_command([], None, False)(GpuProcess(0, "0", "gpu0", {}), tmp_path / "o.yaml", None)


def test_without_a_gpu_run_stays_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"engine": {"process_per_gpu": True}, "detector": {"device": "cpu"}, "mqtt": {"enabled": False}, "http": {"enabled": False}}))
    assert cli_main(["run", "--config", str(config), "--duration", "0.1"]) == 0
    assert "engine.process_per_gpu: no GPU, so one analyzer process" in capsys.readouterr().err


def test_gpus_this_machine_lacks_are_one_line_before_any_child(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"engine": {"process_per_gpu": True, "devices": ["cuda:0", "cuda:1"]}, "mqtt": {"enabled": False}, "http": {"enabled": False}}))
    assert cli_main(["run", "--config", str(config), "--duration", "0.1"]) == EXIT_FATAL  # this machine has no CUDA
    err = capsys.readouterr().err
    assert "device cuda:0 requested but CUDA is not available on this machine" in err
    assert "analyzer process" not in err and "Traceback" not in err


def test_a_cpu_beside_the_gpus_is_refused_not_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"engine": {"process_per_gpu": True, "devices": ["cuda:0", "cuda:1", "cpu"]}, "mqtt": {"enabled": False}, "http": {"enabled": False}}))
    assert cli_main(["run", "--config", str(config), "--duration", "0.1"]) == EXIT_FATAL
    err = capsys.readouterr().err
    assert "engine.process_per_gpu runs one process per GPU, but engine.devices lists 'cpu'" in err
    assert "analyzer process" not in err and "Traceback" not in err


def test_a_missing_gpu_in_one_process_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"engine": {"devices": ["cuda:1"]}, "mqtt": {"enabled": False}, "http": {"enabled": False}}))
    assert cli_main(["run", "--config", str(config), "--duration", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "device cuda:1 requested but CUDA is not available on this machine" in err and "Traceback" not in err


def test_the_log_tag_marks_every_line_plain_and_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(LOG_TAG_ENV, "gpu1")
    try:
        setup_logging("INFO")
        logging.getLogger("stream.test").info("hello %s", "there")
        setup_logging("INFO", json_format=True)
        logging.getLogger("stream.test").info("json line")
    finally:
        monkeypatch.delenv(LOG_TAG_ENV)
        setup_logging("INFO")
    plain, line = capsys.readouterr().err.splitlines()[-2:]
    assert plain.endswith("INFO    [gpu1] stream.test: hello there")
    assert json.loads(line)["process"] == "gpu1" and json.loads(line)["message"] == "json line"


def test_a_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"detector": {"device": "cpu"}, "mqtt": {"enabled": False}, "http": {"port": port}}))
        assert cli_main(["run", "--config", str(config), "--duration", "0.1"]) == 2
    err = capsys.readouterr().err
    assert f"http: cannot listen on 127.0.0.1:{port} (address already in use); another analyzer may hold the port" in err.lower()
    assert "Traceback" not in err


async def test_the_launchers_port_in_use_starts_no_process(tmp_path: Path) -> None:
    processes, command = stand_ins(tmp_path, ["forever", "forever"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        launcher = Launcher(processes, command, http=HttpConfig(port=holder.getsockname()[1]))
        with pytest.raises(HttpBindError, match="cannot listen on 127.0.0.1"):
            await launcher.run()
    assert launcher.starts == {0: 0, 1: 0}


# ------------------------------------------------------- the supervisor, with stand-in children


CHILD = r"""
import json, os, signal, sys, time
out, behaviour, overlay = sys.argv[1], sys.argv[2], sys.argv[3]
duration = float(sys.argv[4]) if len(sys.argv) > 4 else None
runs = out + ".runs"
n = int(open(runs).read()) + 1 if os.path.exists(runs) else 1
open(runs, "w").write(str(n))
with open(out + f".{n}.json", "w") as f:
    json.dump({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "tag": os.environ.get("DEEPFAKE_LOG_TAG"),
               "overlay": open(overlay).read(), "overlay_path": overlay, "duration": duration}, f)
def on_term(*_):
    open(out + ".term", "w").write("x")
    sys.exit(0)
if behaviour == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)
if behaviour == "crash-once" and n == 1:
    sys.exit(1)
if behaviour == "fatal":
    sys.exit(2)
if behaviour in ("duration", "crash-once"):
    time.sleep(duration)
    sys.exit(0)
while True:
    time.sleep(0.05)
"""


def stand_ins(tmp_path: Path, behaviours: list[str]) -> tuple[list[GpuProcess], ChildCommand]:
    """A stand-in child per behaviour: it records what it was given, then exits, crashes, waits or ignores SIGTERM as told."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    processes = [GpuProcess(i, str(i + 4), f"gpu{i}", {"sharding": {"index": i, "count": len(behaviours)}}) for i in range(len(behaviours))]

    def command(process: GpuProcess, overlay: Path, duration_s: float | None) -> list[str]:
        argv = [sys.executable, str(script), str(tmp_path / f"child{process.index}"), behaviours[process.index], str(overlay)]
        return argv + ([str(duration_s)] if duration_s is not None else [])

    return processes, command


def started_runs(tmp_path: Path, index: int) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"child{index}.*.json"))]


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_children_see_their_gpu_tag_and_overlay_and_end_with_the_duration(tmp_path: Path) -> None:
    processes, command = stand_ins(tmp_path, ["duration", "duration"])
    launcher = Launcher(processes, command, environ={"CUDA_VISIBLE_DEVICES": "4,5", "PATH": os.environ["PATH"]})
    started = time.monotonic()
    assert await launcher.run(duration_s=1.0) == 0
    assert 1.0 <= time.monotonic() - started < 20
    assert launcher.starts == {0: 1, 1: 1}
    for index in (0, 1):
        (run,) = started_runs(tmp_path, index)
        assert run["visible"] == str(index + 4) and run["tag"] == f"gpu{index}"
        assert yaml.safe_load(str(run["overlay"])) == {"sharding": {"index": index, "count": 2}}
        assert 0.5 < float(run["duration"]) <= 1.0  # type: ignore[arg-type]
        assert not Path(str(run["overlay_path"])).exists()  # the overlays are removed with the launcher's temporary directory


async def test_a_crashed_child_is_started_again_with_the_time_left(tmp_path: Path) -> None:
    processes, command = stand_ins(tmp_path, ["crash-once", "duration"])
    launcher = Launcher(processes, command, backoff_s=(0.2, 1.0))
    assert await launcher.run(duration_s=3.0) == 0
    assert launcher.starts == {0: 2, 1: 1}
    first, second = started_runs(tmp_path, 0)
    assert float(second["duration"]) < float(first["duration"])  # type: ignore[arg-type]


async def test_a_child_that_cannot_run_stops_the_others(tmp_path: Path) -> None:
    processes, command = stand_ins(tmp_path, ["forever", "fatal"])
    launcher = Launcher(processes, command, backoff_s=(0.2, 1.0))
    code = await asyncio.wait_for(launcher.run(), 30)
    assert code == EXIT_FATAL and launcher.starts == {0: 1, 1: 1}  # exit 2 is not retried
    assert (tmp_path / "child0.term").exists()  # the healthy one was asked to stop, not left running


async def test_a_stop_is_passed_on_and_a_child_that_ignores_it_is_killed(tmp_path: Path) -> None:
    processes, command = stand_ins(tmp_path, ["forever", "ignore-term"])
    launcher = Launcher(processes, command, stop_timeout_s=1.0)
    task = asyncio.create_task(launcher.run())
    await wait_for(lambda: all(started_runs(tmp_path, i) for i in (0, 1)), 20, "both children started")
    launcher.request_stop()
    assert await asyncio.wait_for(task, 20) == 0
    assert (tmp_path / "child0.term").exists() and not (tmp_path / "child1.term").exists()
    assert launcher.starts == {0: 1, 1: 1}


async def test_a_child_that_outlives_the_duration_is_stopped(tmp_path: Path) -> None:
    processes, command = stand_ins(tmp_path, ["forever"])
    launcher = Launcher(processes, command, stop_timeout_s=0.5)
    started = time.monotonic()
    assert await asyncio.wait_for(launcher.run(duration_s=0.5), 20) == 0
    assert time.monotonic() - started < 10 and (tmp_path / "child0.term").exists()


LAUNCHER = r"""
import asyncio, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from tests.test_launcher import stand_ins
from stream.launcher import Launcher
from pathlib import Path
processes, command = stand_ins(Path(sys.argv[3]), ["forever"])
asyncio.run(Launcher(processes, command).run())
"""


async def test_children_go_when_the_launcher_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the launcher no time to pass anything on: the kernel's parent-death signal stops its children."""
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    root = str(Path(__file__).resolve().parents[1])
    launcher = await asyncio.create_subprocess_exec(sys.executable, str(script), root, str(Path(root) / "tests"), str(tmp_path))
    try:
        await wait_for(lambda: bool(started_runs(tmp_path, 0)), 30, "the child started")
        launcher.kill()
        await launcher.wait()
        await wait_for(lambda: (tmp_path / "child0.term").exists(), 10, "the child told to stop")
    finally:
        if launcher.returncode is None:
            launcher.kill()


async def test_restarts_back_off(tmp_path: Path) -> None:
    script = tmp_path / "die.py"
    script.write_text("import sys; sys.exit(3)")
    launcher = Launcher([GpuProcess(0, "0", "gpu0", {})], lambda p, o, d: [sys.executable, str(script)], backoff_s=(0.1, 0.4))
    started = time.monotonic()
    task = asyncio.create_task(launcher.run())
    await wait_for(lambda: launcher.starts[0] >= 5, 30, "five starts")
    elapsed = time.monotonic() - started
    launcher.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    # four waits between five starts: 0.1 + 0.2 + 0.4 + 0.4 s at least (the cap holds), never a tight loop; a slow machine only adds
    assert elapsed >= 1.1, elapsed


# ------------------------------------------------- end to end: two real analyzer processes on the CPU


def free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 all free on loopback (the launcher binds p, its children p + 1 + index)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + count - 1 > 65535:
            continue
        try:
            for offset in range(1, count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {count} neighbouring free ports")


async def box_metrics(http: aiohttp.ClientSession, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


async def box_health(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, object]]:
    async with http.get(f"http://127.0.0.1:{port}/health") as response:
        return response.status, await response.json()


@pytest.mark.timeout(300)
async def test_two_analyzer_processes_split_the_streams_and_a_killed_one_comes_back(mqtt_broker: MosquittoBroker, checkpoint: Path, tmp_path: Path) -> None:
    """The shipped child command, CPU overlays in place of ``cuda:0``: each stream is scored by the process that owns it,
    each process answers on its own port, a SIGKILLed one is started again and scores its streams again."""
    names = ["cam-a", "cam-b", "cam-c", "cam-d"]
    placed = balanced_assignment(names, 2, {name: 1.0 for name in names})
    split = {index: [name for name in names if placed[name] == index] for index in (0, 1)}
    assert len(split[0]) == len(split[1]) == 2  # the balanced split: two each
    clip = astronaut_video(tmp_path / "clip.mp4", seconds=2.0, fps=5, height=180)
    port = free_ports(3)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "detector": {"weights_dir": str(checkpoint.parent), "weights": [checkpoint.name], "encoder": TEST_ENCODER, "device": "cpu", "input_size": 64},
        "streams": [{"name": name, "url": str(clip), "loop": True, "realtime": True, "sample_fps": 1} for name in names],
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "client_id": "box", "reconnect_max_s": 2.0},
        "engine": {"max_batch": 4, "max_wait_ms": 10, "process_per_gpu": True},
        "http": {"port": port},
    }))  # fmt: skip
    cfg = load_configs([config])
    processes = plan_processes(cfg, cfg.shard_plan({}), ["0", "1"], "off")
    processes = [dataclasses.replace(p, overlay={**p.overlay, "engine": {**p.overlay["engine"], "devices": ["cpu"]}}) for p in processes]
    environ = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "HOSTNAME")} | {"OMP_NUM_THREADS": "1"}
    launcher = Launcher(processes, cli_command([config], None, False), environ=environ, backoff_s=(0.5, 2.0), http=cfg.http)

    def scored_by(seen, since: float) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for message in seen.messages:
            parts = message.topic.split("/")
            if message.at >= since and len(parts) == 3 and parts[2] == "score":
                found.setdefault(parts[1], set()).add(message.json()["instance"])
        return found

    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen, aiohttp.ClientSession() as http:
        task = asyncio.create_task(launcher.run())
        try:
            t0 = time.monotonic()
            await seen.wait_for(lambda _: set(scored_by(seen, t0)) == set(names), 150, "a score for every stream")
            assert scored_by(seen, t0) == {name: {f"gpu{index}"} for index, kept in split.items() for name in kept}
            for index in (0, 1):
                async with http.get(f"http://127.0.0.1:{port + 1 + index}/health") as response:
                    body = await response.json()
                assert body["shard"]["instance"] == f"gpu{index}" and sorted(body["streams"]) == sorted(split[index])
            status, box = await box_health(http, port)  # the launcher's own port: every process at once
            assert status == 200 and box["ok"] is True, box
            assert [(p["instance"], p["port"], p["ok"], p["restarts"]) for p in box["processes"]] == [("gpu0", port + 1, True, 0), ("gpu1", port + 2, True, 0)]
            async with http.get(f"http://127.0.0.1:{port}/health/live") as response:
                assert response.status == 200 and (await response.json())["processes"] == 2
            samples = await box_metrics(http, port)  # one scrape for the box, each sample labelled with its process
            assert samples[("deepfake_launcher_process_up", (("process", "gpu0"),))] == 1 == samples[("deepfake_launcher_process_up", (("process", "gpu1"),))]
            for index, kept in split.items():
                for name in kept:
                    assert samples[("deepfake_stream_samples_scored_total", (("process", f"gpu{index}"), ("stream", name)))] > 0
                    assert ("deepfake_stream_samples_scored_total", (("process", f"gpu{1 - index}"), ("stream", name))) not in samples
            async with http.get(f"http://127.0.0.1:{port}/") as response:
                page = await response.text()
            assert f'href="http://127.0.0.1:{port + 1}/"' in page and f'href="http://127.0.0.1:{port + 2}/"' in page

            victim = launcher.children[0]
            t_kill = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            status, box = await box_health(http, port)
            assert status == 503 and box["ok"] is False
            gone, alive = box["processes"]
            assert gone["ok"] is False and "not answering" in gone["problems"][0] and alive["ok"] is True, box
            samples = await box_metrics(http, port)
            assert samples[("deepfake_launcher_process_up", (("process", "gpu0"),))] == 0 and samples[("deepfake_launcher_process_up", (("process", "gpu1"),))] == 1
            await wait_for(lambda: launcher.starts[0] == 2, 30, "the killed process started again")
            await seen.wait_for(lambda _: set(scored_by(seen, t_kill + 1.0)) >= set(split[0]), 150, "its streams scored again")
            assert launcher.starts[1] == 1
            status, box = await box_health(http, port)
            assert status == 200 and box["processes"][0]["restarts"] == 1, box
        finally:
            launcher.request_stop()
            code = await asyncio.wait_for(task, 90)
    assert code == 0
    for index in (0, 1):
        assert seen.on(f"deepfake/instance/gpu{index}/available")[-1].payload == b"offline"
