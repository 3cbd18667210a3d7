"""stream/sharding.py: rendezvous hashing of streams over replicas, and where a replica learns its shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.sharding import (
    SHARD_COUNT_ENV,
    SHARD_INDEX_ENV,
    ShardingConfig,
    ShardingError,
    ShardPlan,
    ShardSpec,
    assignment,
    balanced_assignment,
    owner,
    pod_ordinal,
    resolve_shard,
    shard_weight,
    streams_for_shard,
)

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"cam-{i:04d}" for i in range(1000)]


def binomial(n: int, p: float) -> tuple[float, float]:
    """Mean and standard deviation of how many of n streams land on a shard that wins each with probability p."""
    return n * p, (n * p * (1 - p)) ** 0.5


# ------------------------------------------------------------------ hashing


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 16])
def test_every_stream_is_owned_by_exactly_one_shard(count: int) -> None:
    per_shard = [streams_for_shard(NAMES, index, count) for index in range(count)]
    owned = [name for names in per_shard for name in names]
    assert sorted(owned) == sorted(NAMES)  # none lost, none twice
    assert per_shard == list(assignment(NAMES, count).values())
    # and the load is even: each shard within 4 binomial standard deviations of 1000 / count
    expected, spread = binomial(len(NAMES), 1 / count)
    for names in per_shard:
        assert abs(len(names) - expected) <= 4 * spread, [len(n) for n in per_shard]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 10])
def test_adding_a_shard_moves_about_one_in_n_plus_one_streams_all_to_the_new_shard(count: int) -> None:
    before = {name: owner(name, count) for name in NAMES}
    after = {name: owner(name, count + 1) for name in NAMES}
    moved = [name for name in NAMES if before[name] != after[name]]
    expected, spread = binomial(len(NAMES), 1 / (count + 1))
    assert abs(len(moved) - expected) <= 4 * spread, (len(moved), expected)
    assert {after[name] for name in moved} == {count}  # only to the new shard, never between old ones
    # and removing it again puts each moved stream back where it was
    assert all(owner(name, count) == before[name] for name in moved)


def test_selection_keeps_the_config_order() -> None:
    names = ["zulu", "alpha", "mike", "bravo", "yankee", "charlie"]
    for index in range(3):
        mine = streams_for_shard(names, index, 3)
        assert mine == [n for n in names if n in mine]
    assert ShardSpec(0, 1).select(names) == names


def test_owners_are_pinned_values_so_a_hash_change_cannot_slip_in() -> None:
    """Replicas of two releases (a rolling update) must agree; a different hash would reshuffle every stream."""
    assert shard_weight("cam-0000", 0) == 13572578565106456514
    assert [owner(n, 4) for n in ["cam-0000", "cam-0001", "cam-0002", "lobby", "entrance", "news-hd"]] == [2, 0, 1, 1, 2, 1]
    assert {shard: len(names) for shard, names in assignment(NAMES, 4).items()} == {0: 256, 1: 266, 2: 246, 3: 232}


def test_owner_does_not_depend_on_pythonhashseed() -> None:
    here = [owner(name, 7) for name in NAMES[:200]]
    script = "import json; from stream.sharding import owner; print(json.dumps([owner(f'cam-{i:04d}', 7) for i in range(200)]))"
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=60)
        assert json.loads(out.stdout) == here
    # the salted builtin would have differed between these seeds: the check above has teeth
    salted = "print(hash('cam-0000') % 7)"
    runs = {subprocess.run([sys.executable, "-c", salted], env={**os.environ, "PYTHONHASHSEED": s}, capture_output=True, text=True, check=True).stdout for s in ("1", "2", "3", "4")}
    assert len(runs) > 1


@pytest.mark.parametrize(("call", "message"), [
    (lambda: owner("a", 0), "shard count is 0: it must be at least 1"),
    (lambda: owner("a", -3), "at least 1"),
    (lambda: streams_for_shard(["a"], 4, 4), "shard index 4 is outside 0..3"),
    (lambda: streams_for_shard(["a"], -1, 4), "shard index -1 is outside 0..3"),
    (lambda: ShardSpec(2, 2), "outside 0..1"),
    (lambda: owner("a", True), "must be an integer"),
])
def test_bad_counts_and_indices_are_named(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ShardingError, match=message.replace(".", r"\.")):
        call()


# ------------------------------------------------- where the shard comes from


@pytest.mark.parametrize(("name", "ordinal"), [
    ("deepfake-stream-3", 3), ("deepfake-stream-0", 0), ("web-12", 12), ("a.b-c-7", 7),
    ("deepfake-stream", None), ("deepfake-stream-", None), ("7", None), ("x-03", None), ("x--1", None), ("", None),
])
def test_pod_ordinal(name: str, ordinal: int | None) -> None:
    assert pod_ordinal(name) == ordinal


def test_default_is_the_single_shard_even_on_a_host_without_an_ordinal() -> None:
    spec = resolve_shard(environ={"HOSTNAME": "laptop"})
    assert (spec.index, spec.count, spec.source, spec.instance) == (0, 1, "default", "laptop")
    assert spec.owns("anything") and not spec.sharded
    assert resolve_shard(environ={}).instance == "shard-0"


def test_statefulset_pod_takes_its_ordinal_and_the_count_from_the_environment() -> None:
    spec = resolve_shard(environ={SHARD_COUNT_ENV: "4", "POD_NAME": "deepfake-stream-3", "HOSTNAME": "deepfake-stream-3"})
    assert (spec.index, spec.count, spec.source, spec.instance) == (3, 4, "pod-ordinal", "deepfake-stream-3")
    assert spec.select(NAMES) == streams_for_shard(NAMES, 3, 4)
    assert spec.describe() == "shard 3 of 4 (pod-ordinal, instance deepfake-stream-3)"
    # HOSTNAME alone (no downward API) works too; POD_NAME wins when both are set
    assert resolve_shard(environ={SHARD_COUNT_ENV: "4", "HOSTNAME": "deepfake-stream-1"}).index == 1
    assert resolve_shard(environ={SHARD_COUNT_ENV: "4", "POD_NAME": "deepfake-stream-2", "HOSTNAME": "node-x"}).index == 2


def test_environment_index_beats_the_ordinal_and_config_beats_the_environment() -> None:
    env = {SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "1", "POD_NAME": "deepfake-stream-3"}
    assert resolve_shard(environ=env).index == 1 and resolve_shard(environ=env).source == "environment"
    spec = resolve_shard(index=0, count=2, instance="edge-a", environ=env)
    assert (spec.index, spec.count, spec.source, spec.instance) == (0, 2, "config", "edge-a")
    # config count with the environment's index; blank variables count as unset
    assert resolve_shard(count=8, environ={SHARD_INDEX_ENV: "5"}).index == 5
    assert resolve_shard(environ={SHARD_COUNT_ENV: " ", SHARD_INDEX_ENV: ""}) == ShardSpec(0, 1, "shard-0", "default")


@pytest.mark.parametrize(("kwargs", "environ", "message"), [
    ({}, {SHARD_COUNT_ENV: "four"}, "$DEEPFAKE_SHARD_COUNT='four' is not an integer"),
    ({}, {SHARD_COUNT_ENV: "0"}, "shard count ($DEEPFAKE_SHARD_COUNT) is 0: it must be at least 1"),
    ({}, {SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "x1"}, "$DEEPFAKE_SHARD_INDEX='x1' is not an integer"),
    ({}, {SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "4"}, "shard index 4 ($DEEPFAKE_SHARD_INDEX) is outside 0..3"),
    ({}, {SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "-1"}, "shard index -1 ($DEEPFAKE_SHARD_INDEX) is outside 0..3"),
    ({}, {SHARD_COUNT_ENV: "4", "HOSTNAME": "laptop"}, "pod name 'laptop' has no StatefulSet ordinal"),
    ({}, {SHARD_COUNT_ENV: "4"}, "shard count 4 ($DEEPFAKE_SHARD_COUNT) but no shard index"),
    ({}, {SHARD_COUNT_ENV: "4", "POD_NAME": "deepfake-stream-4"}, "outside 0..3 for shard count 4 ($DEEPFAKE_SHARD_COUNT); is DEEPFAKE_SHARD_COUNT the StatefulSet's replica count?"),
    ({"index": 2}, {}, "shard index 2 (config) is outside 0..0 for shard count 1 (the default)"),
    ({"count": 0}, {}, "shard count (config) is 0"),
])
def test_bad_settings_raise_errors_naming_the_value_and_its_source(kwargs: dict[str, int], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ShardingError) as info:
        resolve_shard(**kwargs, environ=environ)
    assert message in str(info.value)


# -------------------------------------------------------------- the config model


def test_sharding_config_resolves_like_the_function_and_validates_its_fields() -> None:
    assert ShardingConfig().resolve({}) == ShardSpec(0, 1)
    assert ShardingConfig.model_validate({"count": 3}).resolve({"POD_NAME": "deepfake-stream-2"}).index == 2
    assert ShardingConfig(index=1, count=2, instance="b").resolve({}) == ShardSpec(1, 2, "b", "config")
    for bad, where in [({"index": -1}, "index"), ({"count": 0}, "count"), ({"index": 3, "count": 3}, "index 3 must be below count 3"), ({"shards": 2}, "shards"), ({"instance": ""}, "instance")]:
        with pytest.raises(ValidationError, match=where):
            ShardingConfig.model_validate(bad)
    described = ShardingConfig.model_json_schema()["properties"]
    assert all(described[field].get("description") for field in ("index", "count", "instance"))


def test_instances_differ_between_replicas_on_one_host() -> None:
    """The instance names the MQTT session: two processes on one host (same HOSTNAME) must not share it."""
    on_box = [resolve_shard(environ={SHARD_COUNT_ENV: "3", SHARD_INDEX_ENV: str(i), "HOSTNAME": "box"}).instance for i in range(3)]
    assert on_box == ["shard-0", "shard-1", "shard-2"]
    # a pod told another index than its ordinal is named after its shard, not after the pod it may be confused with
    assert resolve_shard(environ={SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "1", "POD_NAME": "deepfake-stream-3"}).instance == "shard-1"
    assert resolve_shard(environ={SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "3", "POD_NAME": "deepfake-stream-3"}).instance == "deepfake-stream-3"


def test_plan_keeps_this_shards_streams_and_says_whether_the_replica_is_named() -> None:
    names = ["lobby", "entrance", "news-hd", "cam-0000", "cam-0001", "cam-0002"]  # owners with 4 shards: 1 2 1 2 0 1
    plan = ShardingConfig(index=1, count=4).plan(names)
    assert plan.kept == ("lobby", "news-hd", "cam-0002") and plan.skipped == ("entrance", "cam-0000", "cam-0001")
    assert plan.named and plan.instance == "shard-1" and not plan.empty
    assert plan.describe() == "shard 1 of 4 (config, instance shard-1): watching 3 of 6 configured stream(s), 3 left to other shards"
    # a lone replica is not named (today's topics and client id) unless its instance is configured
    lone = ShardingConfig().plan(names, environ={"HOSTNAME": "box"})
    assert lone.kept == tuple(names) and not lone.named and lone.instance is None and not lone.empty
    assert ShardingConfig(instance="edge-a").plan(names, environ={}).instance == "edge-a"
    # more replicas than streams: the idle shard is empty (and says so), a lone replica with nothing configured is not
    idle = ShardingConfig(index=3, count=4).plan(["lobby", "news-hd"])
    assert idle.empty and idle.kept == () and "owns none" in idle.describe()
    assert not ShardingConfig().plan([], environ={}).empty
    assert ShardPlan.of(ShardSpec(0, 1), names, named=False).skipped == ()


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "has space", "-lead"])
def test_instance_must_be_one_topic_level(bad: str) -> None:
    with pytest.raises(ValidationError, match="instance"):
        ShardingConfig(instance=bad)


# ------------------------------------------------------------ balanced placement


def test_balanced_placement_is_even_where_rendezvous_is_not() -> None:
    """Six cameras on two GPUs: rendezvous hashing may well put four or five on one; balanced puts three on each."""
    names = [f"cam-{i}" for i in range(6)]
    placed = balanced_assignment(names, 2)
    assert sorted(list(placed.values()).count(shard) for shard in (0, 1)) == [3, 3]
    for count in (2, 3, 7):  # any list: at most one stream apart
        sizes = [list(balanced_assignment(NAMES[:301], count).values()).count(shard) for shard in range(count)]
        assert max(sizes) - min(sizes) <= 1, sizes
    uneven = [len(v) for v in assignment(NAMES[:300], 2).values()]
    assert uneven[0] != uneven[1]  # the premise: rendezvous alone splits 300 unevenly


def test_balanced_placement_weighs_the_sample_rate_and_is_the_same_everywhere() -> None:
    costs = {"fast": 10.0, "a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 1.0}
    placed = balanced_assignment(costs, 2, costs)
    loads = [sum(costs[name] for name, shard in placed.items() if shard == s) for s in (0, 1)]
    assert sorted(loads) == [5.0, 10.0]  # the heavy stream alone on one shard, the five light ones on the other
    assert balanced_assignment(reversed(list(costs)), 2, costs) == placed  # the order of the list does not matter
    script = "from stream.sharding import balanced_assignment; print(sorted(balanced_assignment([f'cam-{i}' for i in range(50)], 3).items()))"
    runs = {subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    assert len(runs) == 1  # no salted hash: every process works out the same split


def test_a_balanced_plan_keeps_its_share_in_config_order() -> None:
    names = ["lobby", "gate", "dock", "yard"]
    plans = [ShardingConfig(index=i, count=2, placement="balanced").plan(names, environ={}) for i in (0, 1)]
    assert sorted(plans[0].kept + plans[1].kept) == sorted(names) and len(plans[0].kept) == len(plans[1].kept) == 2
    assert all(list(plan.kept) == [n for n in names if n in plan.kept] for plan in plans)
    assert "(balanced split)" in plans[0].describe()
    assert plans[0].owns(plans[0].kept[0]) and not plans[0].owns(plans[1].kept[0])
    lone = ShardingConfig(placement="balanced").plan(names, environ={})
    assert lone.kept == tuple(names) and "balanced" not in lone.describe()  # one shard: nothing to split
