"""stream/config_merge.py: a base config plus secret fragments into the one file the service reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stream.config import load_config
from stream.config_merge import deep_merge, field_origin, main, parse_assignment


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_deep_merge_merges_mappings_and_replaces_everything_else() -> None:
    base = {"mqtt": {"host": "broker", "port": 1883}, "streams": [{"name": "a", "url": "x"}], "whip": {"tokens": {"a": "1"}}}
    overlay = {"mqtt": {"password": "p"}, "streams": [{"name": "b", "url": "y"}], "whip": {"tokens": {"b": "2"}}}
    merged = deep_merge(base, overlay)
    assert merged == {
        "mqtt": {"host": "broker", "port": 1883, "password": "p"},
        "streams": [{"name": "b", "url": "y"}],  # lists are replaced, never concatenated
        "whip": {"tokens": {"a": "1", "b": "2"}},
    }
    assert base["mqtt"] == {"host": "broker", "port": 1883}  # inputs untouched


@pytest.mark.parametrize(("text", "expected"), [
    ("mqtt.client_id=deepfake-stream-deepfake-stream-3", {"mqtt": {"client_id": "deepfake-stream-deepfake-stream-3"}}),
    ("http.port=9000", {"http": {"port": 9000}}),
    ("mqtt.enabled=false", {"mqtt": {"enabled": False}}),
    ("mqtt.client_id=a: b", {"mqtt": {"client_id": "a: b"}}),  # not a YAML scalar: kept as text
    ("mqtt.client_id=[x", {"mqtt": {"client_id": "[x"}}),  # not YAML at all: kept as text
])
def test_set_assignments(text: str, expected: dict[str, object]) -> None:
    assert parse_assignment(text) == expected


def test_merged_file_is_valid_private_and_has_the_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "config.yaml", {"mqtt": {"host": "mosquitto"}, "streams": [{"name": "cam", "url": "rtsp://h/cam"}]})
    secret = write(tmp_path / "mqtt.yaml", {"mqtt": {"username": "u", "password": "s3cret"}})
    out = tmp_path / "run" / "config.yaml"
    assert main([str(base), str(secret), "--out", str(out), "--set", "mqtt.client_id=ds-1"]) == 0
    cfg = load_config(out)
    assert cfg.mqtt.host == "mosquitto" and cfg.mqtt.username == "u" and cfg.mqtt.client_id == "ds-1"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret"
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind
    assert "merged 2 files" in capsys.readouterr().out


@pytest.mark.parametrize(("files", "sets", "message"), [
    ({"mqtt.yaml": {"mqtt": {"pasword": "x"}}}, [], "mqtt.pasword: Extra inputs are not permitted"),
    ({"mqtt.yaml": "- just\n- a list\n"}, [], "mqtt.yaml: the top level must be a mapping, got list"),
    ({"mqtt.yaml": "mqtt: [unclosed\n"}, [], "mqtt.yaml: invalid YAML"),
    ({}, ["http.port=seventy"], "http.port: Input should be a valid integer"),
    ({}, ["novalue"], "--set 'novalue': expected key.path=value"),
    ({}, ["mqtt..host=x"], "expected key.path=value"),
])
def test_bad_inputs_exit_2_naming_file_and_field(files: dict[str, object], sets: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(write(tmp_path / "config.yaml", {"mqtt": {"host": "h"}}))] + [str(write(tmp_path / name, data)) for name, data in files.items()]
    out = tmp_path / "out.yaml"
    argv = [*paths, "--out", str(out)] + [arg for s in sets for arg in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # the service never starts on a half-merged config


def test_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "o.yaml")]) == 2
    assert "absent.yaml: config file not found" in capsys.readouterr().err


# ------------------------------------------------- run --config A --config B


def test_run_reads_several_configs_merged_in_order(tmp_path: Path) -> None:
    from stream import cli

    base = write(tmp_path / "config.yaml", {"mqtt": {"host": "mosquitto", "username": "base"}, "streams": [{"name": "cam", "url": "rtsp://h/cam"}]})
    secret = write(tmp_path / "mqtt.yaml", {"mqtt": {"username": "u", "password": "s3cret"}})
    args = cli.build_parser().parse_args(["run", "--config", str(base), "--config", str(secret)])
    assert args.config == [base, secret]
    cfg = cli.load_app_config(args.config)
    assert cfg.mqtt.host == "mosquitto" and cfg.mqtt.username == "u" and cfg.streams[0].name == "cam"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret"
    assert cli.load_app_config([base]) == load_config(base)  # one file: exactly the single-file loader


@pytest.mark.parametrize(("second", "message"), [
    ({"mqtt": {"pasword": "x"}}, "{second}: mqtt.pasword: Extra inputs are not permitted"),
    ({"streams": [{"name": "b"}]}, "{second}: streams.0.url: Field required"),  # the later list replaced the base's whole
    ({"mqtt": {"port": "x"}}, "{second}: mqtt.port: Input should be a valid integer"),
    ({"mqtt": {"username": "u"}}, "{first}: mqtt.keepalive_s: Input should be greater than 0"),  # the base's field, the base named
    ("[1, 2]", "{second}: the top level must be a mapping, got list"),
])
def test_run_errors_name_the_file_that_set_the_field(second: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream import cli

    first = write(tmp_path / "config.yaml", {"mqtt": {"host": "h", "keepalive_s": 0 if "keepalive" in message else 30}, "streams": [{"name": "a", "url": "x.mp4"}]})
    later = write(tmp_path / "secret.yaml", second)
    assert cli.main(["run", "--config", str(first), "--config", str(later)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(first=first, second=later) in err, err


def test_field_origin_follows_the_merge() -> None:
    layers = [
        ("base", {"mqtt": {"host": "h", "port": 1}, "streams": [{"name": "a", "url": "x"}], "whip": {"tokens": {"a": "1"}}}),
        ("secrets", {"mqtt": {"password": "p"}, "whip": {"tokens": {"b": "2"}}}),
        ("--set http.port=x", {"http": {"port": "x"}}),
        ("flat", {"window": 3}),
    ]
    assert field_origin(("mqtt", "port"), layers) == "base"
    assert field_origin(("mqtt", "password"), layers) == "secrets"
    assert field_origin(("whip", "tokens", "a"), layers) == "base" and field_origin(("whip", "tokens", "b"), layers) == "secrets"
    assert field_origin(("streams", 0, "sample_fps"), layers) == "base"  # missing in the one list that survives: its file
    assert field_origin(("http", "port"), layers) == "--set http.port=x"
    assert field_origin(("window", "seconds"), layers) == "flat"
    assert field_origin(("discovery",), layers) is None
    # a scalar replaced by a later mapping: only the later mapping's keys survive
    assert field_origin(("mqtt", "host"), [("a", {"mqtt": {"host": "h"}}), ("b", {"mqtt": "oops"}), ("c", {"mqtt": {"port": 1}})]) == "c"
