"""config.yaml loading: defaults, strictness, readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.weights import default_cache_dir
from stream.config import AppConfig, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_loads() -> None:
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.detector.thresholds == (0.7, 0.8, 0.8)
    assert cfg.detector.input_size == 380
    assert len(cfg.detector.weights) == 7
    # one location for the config and `weights download` (issue: the shipped config read ./weights, the download wrote the cache)
    assert cfg.detector.weight_paths()[0] == default_cache_dir() / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"detector": {"thresholds": [0.7, 0.8]}}, "detector.thresholds"),
        ({"detector": {"input_size": "big"}}, "detector.input_size"),
        ({"detector": {"colour": 1}}, "detector.colour: Extra inputs are not permitted"),
        ({"detektor": {}}, "detektor: Extra inputs are not permitted"),
        ({"detector": {"device": "tpu"}}, "detector.device"),
        ({"streams": [{"name": "a", "url": "x"}, {"name": "b", "url": "y", "sample_fps": -1}]}, "streams.1.sample_fps"),
        ({"streams": [{"name": "a", "url": "x"}, {"name": "a", "url": "y"}]}, "duplicate stream name 'a'"),
        ({"streams": [{"name": "bad/name", "url": "x"}]}, "streams.0.name"),
        ({"alerts": {"alert_threshold": 0.5, "clear_threshold": 0.7}}, "clear_threshold must not exceed"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(data, "test.yaml")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == AppConfig()


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4))
def test_arbitrary_mappings_either_load_or_raise_config_error(data: dict) -> None:
    try:
        parse_config({"detector": data})
    except ConfigError as exc:
        assert str(exc).startswith("config: detector")
