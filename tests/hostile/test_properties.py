"""Property-based tests (hypothesis) of the config loader and of the scoring/alerting state machines.

Cases (5):

1. ``test_random_nested_config_never_raises_anything_but_config_error`` - random nested mappings
   whose keys are mostly real config keys (so validation goes deep) and whose leaves are any YAML
   scalar (huge ints, inf/NaN, NUL bytes, bytes, dates): ``parse_config`` returns an AppConfig or
   raises ConfigError with one ``source: field: message`` line per problem.
2. ``test_random_yaml_files_never_raise_anything_but_config_error`` - the same data dumped to YAML
   (plus random garbage text) through ``load_config``.
3. ``test_confident_strategy_stays_within_min_and_max`` - for any non-empty scores in [0, 1].
4. ``test_running_score_window_never_exceeds_max_scores`` - random face batches at random times:
   the stream window and every track window hold at most ``max_scores`` scores, and the running
   score lies within the window's min and max.
5. ``test_alert_tracker_starts_and_ends_alternate`` - random scores, gaps and forced ends: events go
   start, (update...), end, start...; each episode has one fresh id shared by its events.
"""

from __future__ import annotations

import datetime as dt
import math
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from detector.aggregation import confident_strategy
from stream.alerts import AlertTracker
from stream.config import AppConfig, ConfigError, load_config, parse_config
from stream.scoring import FaceScore, RunningScore

pytestmark = pytest.mark.timeout(300)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def config_keys(model: type[BaseModel] = AppConfig, seen: set[str] | None = None) -> set[str]:
    """Every field name of the config models, recursively."""
    seen = set() if seen is None else seen
    for name, field in model.model_fields.items():
        seen.add(name)
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate.__name__ not in seen:
                seen.add(candidate.__name__)
                config_keys(candidate, seen)
    return {k for k in seen if k[0].islower()}


KEYS = sorted(config_keys())
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**63, -(2**63), 10**400, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "x\x00y", "rtsp://u:p@h/x", "a" * 5000, "cuda:0", "tpu", "DEBUG", "size", "confident"]),
    st.binary(max_size=8),
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 1, 1)),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8), st.integers(-3, 3))
TREE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=5), max_leaves=25)
CONFIG = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), TREE, max_size=6)


def check_config_error(exc: ConfigError, source: str) -> None:
    lines = str(exc).splitlines()
    assert lines and all(line.startswith(f"{source}: ") for line in lines), str(exc)[:500]


@PROPERTY
@given(st.one_of(CONFIG, TREE))
def test_random_nested_config_never_raises_anything_but_config_error(data: Any) -> None:
    try:
        cfg = parse_config(data, "fuzz.yaml")
    except ConfigError as exc:
        check_config_error(exc, "fuzz.yaml")
    else:
        assert isinstance(cfg, AppConfig)
        assert cfg.engine.max_wait_ms <= 60_000 and all(math.isfinite(s.watchdog_s) for s in cfg.streams)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(CONFIG.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(alphabet=string.printable + "&*!|>%@`{}[]", max_size=200)))
def test_random_yaml_files_never_raise_anything_but_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        check_config_error(exc, str(path))
    else:
        assert isinstance(cfg, AppConfig)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=200))
def test_confident_strategy_stays_within_min_and_max(scores: list[float]) -> None:
    value = confident_strategy(scores)
    assert min(scores) - 1e-12 <= value <= max(scores) + 1e-12


BOX = st.tuples(st.floats(0, 600), st.floats(0, 300), st.floats(1, 100), st.floats(1, 100)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
)
FACES = st.lists(st.builds(FaceScore, BOX, st.floats(0, 1), st.floats(0, 1)), max_size=4)


@PROPERTY
@given(
    st.floats(0.5, 30),
    st.integers(1, 16),
    st.lists(st.tuples(st.floats(0, 3), FACES), min_size=1, max_size=60),
)
def test_running_score_window_never_exceeds_max_scores(seconds: float, max_scores: int, samples: list[tuple[float, list[FaceScore]]]) -> None:
    running = RunningScore(seconds, max_scores)
    t = 1000.0
    for gap, faces in samples:
        t += gap
        snapshot = running.update(t, faces)
        window = running.window.scores()
        assert len(window) <= max_scores and snapshot.window_size == len(window)
        assert all(len(track.window) <= max_scores for track in running.tracks.values())
        assert all(info["window_size"] <= max_scores for info in snapshot.tracks.values())
        if window:
            assert snapshot.score is not None and min(window) - 1e-9 <= snapshot.score <= max(window) + 1e-9
        else:
            assert snapshot.score is None


STEP = st.one_of(st.floats(0, 1), st.none(), st.just("end"))


@settings(max_examples=300, deadline=None)
@given(st.floats(0.5, 1), st.floats(0, 1), st.integers(1, 5), st.lists(STEP, max_size=120))
def test_alert_tracker_starts_and_ends_alternate(alert: float, clear: float, min_samples: int, steps: list[object]) -> None:
    clear = min(clear, alert)
    tracker = AlertTracker("cam", alert, clear, min_samples, update_interval_s=0.0)
    events = []
    for i, step in enumerate(steps):
        event = tracker.end(float(i), 0.5, "forced") if step == "end" else tracker.update(float(i), step)  # type: ignore[arg-type]
        if event is not None:
            events.append(event)
    open_id: str | None = None
    ids: list[str] = []
    for event in events:
        if event.kind == "start":
            assert open_id is None, "start while an episode is open"
            open_id = event.alert_id
            assert open_id not in ids, "an id reused for a new episode"
            ids.append(open_id)
        else:
            assert open_id is not None and event.alert_id == open_id, f"{event.kind} outside its episode"
            if event.kind == "end":
                open_id = None
    assert tracker.episodes == len(ids)
    assert tracker.active == (open_id is not None)
