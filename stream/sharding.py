"""Splitting the configured streams over replicas without a coordinator.

Every replica reads the same config (the full stream list) and keeps only the
streams that rendezvous (highest-random-weight) hashing gives its shard: a
stream belongs to the shard with the largest ``blake2b(f"{shard}:{stream}")``.
No replica talks to another, and adding a shard moves only the ~1/(N+1) of the
streams that the new shard wins; every other stream stays where it was.

The hash is stable across processes, machines and Python versions (never
Python's salted ``hash()``): replicas must agree on the owner of every stream.

Which shard a process is comes from the config, else the environment
(``DEEPFAKE_SHARD_INDEX``/``DEEPFAKE_SHARD_COUNT``), else a StatefulSet pod's
ordinal (``deepfake-stream-3`` -> 3) with ``DEEPFAKE_SHARD_COUNT``; without any
of them a process is the single shard 0 of 1.  This module imports nothing of
the service, so the config module can import it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SHARD_INDEX_ENV = "DEEPFAKE_SHARD_INDEX"
SHARD_COUNT_ENV = "DEEPFAKE_SHARD_COUNT"
POD_NAME_ENVS = ("POD_NAME", "HOSTNAME")  # POD_NAME: the downward API; HOSTNAME: a pod's own name
MAX_SHARDS = 65_536  # owner() is O(count) per stream; beyond this a config value is a typo

INSTANCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # one MQTT topic level and a client id suffix: no / + # or spaces
_ORDINAL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?-(?P<ordinal>0|[1-9][0-9]*)$", re.IGNORECASE)

Source = Literal["config", "environment", "pod-ordinal", "default"]
Placement = Literal["rendezvous", "balanced"]


class ShardingError(ValueError):
    """Shard settings that cannot work; the message names the value and where it came from."""


def shard_weight(stream: str, shard: int) -> int:
    """The rendezvous weight of ``stream`` on ``shard``: 64 bits of blake2b, the same in every process."""
    digest = hashlib.blake2b(f"{shard}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(stream: str, count: int) -> int:
    """The shard (``0 <= shard < count``) that watches ``stream``; ties (never seen in 64 bits) go to the lower index."""
    _check_count(count, "shard count")
    return max(range(count), key=lambda shard: (shard_weight(stream, shard), -shard))


def streams_for_shard(names: Iterable[str], index: int, count: int) -> list[str]:
    """The names that shard ``index`` of ``count`` owns, in their given order."""
    _check_index(index, count, "shard index")
    return [name for name in names if owner(name, count) == index]


def assignment(names: Iterable[str], count: int) -> dict[int, list[str]]:
    """Every shard's streams (empty lists included), for operators and tests: who watches what."""
    _check_count(count, "shard count")
    shards: dict[int, list[str]] = {shard: [] for shard in range(count)}
    for name in names:
        shards[owner(name, count)].append(name)
    return shards


def balanced_assignment(names: Iterable[str], count: int, costs: Mapping[str, float] | None = None) -> dict[str, int]:
    """stream -> shard, every shard's load as even as the streams allow: heaviest first, each to the least loaded shard.

    A stream's load is its ``costs`` entry (the service passes its ``sample_fps``), 1 without one.
    Ties go to the shard with the larger rendezvous weight for that stream, so the split is the
    same in every process that reads the same list, with no coordinator. Unlike rendezvous hashing
    alone, adding or removing a stream may move others: meant for the per-GPU processes of one
    box (``stream/launcher.py``), which all restart together.
    """
    _check_count(count, "shard count")
    costs = costs or {}
    loads = [0.0] * count
    sizes = [0] * count
    placed: dict[str, int] = {}
    for name in sorted(set(names), key=lambda n: (-costs.get(n, 1.0), n)):
        shard = min(range(count), key=lambda s: (loads[s], sizes[s], -shard_weight(name, s)))
        placed[name] = shard
        loads[shard] += costs.get(name, 1.0)
        sizes[shard] += 1
    return placed


def pod_ordinal(pod_name: str) -> int | None:
    """A StatefulSet pod's ordinal (``deepfake-stream-3`` -> 3), or None for a name without one."""
    match = _ORDINAL.match(pod_name.strip())
    return int(match["ordinal"]) if match else None


@dataclass(frozen=True)
class ShardSpec:
    """This process's shard: ``index`` of ``count``, its ``instance`` name, and where the index came from."""

    index: int = 0
    count: int = 1
    instance: str = ""  # empty: shard-<index>
    source: Source = "default"

    def __post_init__(self) -> None:
        _check_index(self.index, self.count, "shard index")
        if not self.instance:
            object.__setattr__(self, "instance", f"shard-{self.index}")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, stream: str) -> bool:
        return self.count == 1 or owner(stream, self.count) == self.index

    def select(self, names: Iterable[str]) -> list[str]:
        """The names this shard keeps, in their given order."""
        return [name for name in names if self.owns(name)]

    def describe(self) -> str:
        """One line for the start-up log: ``shard 3 of 8 (pod-ordinal, instance deepfake-stream-3)``."""
        return f"shard {self.index} of {self.count} ({self.source}, instance {self.instance})"


def resolve_shard(
    index: int | None = None,
    count: int | None = None,
    instance: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ShardSpec:
    """Explicit values win; else ``DEEPFAKE_SHARD_INDEX``/``DEEPFAKE_SHARD_COUNT``; else the pod ordinal; else 0 of 1.

    Raises ShardingError for an index outside ``[0, count)``, a count below 1,
    a non-integer variable, or a count above 1 with no index and no pod ordinal
    to take it from (every replica would otherwise think it is shard 0).
    """
    env = os.environ if environ is None else environ
    pod_name = next((env[key].strip() for key in POD_NAME_ENVS if env.get(key, "").strip()), None)

    count_from = "config"
    if count is None:
        count, count_from = _env_int(env, SHARD_COUNT_ENV), f"${SHARD_COUNT_ENV}"
    if count is None:
        count, count_from = 1, "the default"
    _check_count(count, f"shard count ({count_from})")

    source: Source = "config"
    index_from = "config"
    if index is None:
        index, source, index_from = _env_int(env, SHARD_INDEX_ENV), "environment", f"${SHARD_INDEX_ENV}"
    if index is None and count == 1:
        index, source, index_from = 0, "default", "the default"
    if index is None:
        if pod_name is None:
            raise ShardingError(
                f"shard count {count} ({count_from}) but no shard index: set {SHARD_INDEX_ENV}, "
                f"sharding.index, or run as a StatefulSet pod (POD_NAME/HOSTNAME like deepfake-stream-3)"
            )
        index = pod_ordinal(pod_name)
        if index is None:
            raise ShardingError(
                f"shard count {count} ({count_from}) but pod name {pod_name!r} has no StatefulSet ordinal "
                f"(expected a name ending in -<number>, like deepfake-stream-3); set {SHARD_INDEX_ENV} or sharding.index"
            )
        source, index_from = "pod-ordinal", f"the ordinal of pod {pod_name!r}"
    if index < 0 or index >= count:
        hint = f"; is {SHARD_COUNT_ENV} the StatefulSet's replica count?" if source == "pod-ordinal" else ""
        raise ShardingError(f"shard index {index} ({index_from}) is outside 0..{count - 1} for shard count {count} ({count_from}){hint}")

    if instance is None or not instance.strip():
        instance = default_instance(index, count, pod_name)
    return ShardSpec(index=index, count=count, instance=instance.strip(), source=source)


def default_instance(index: int, count: int, pod_name: str | None) -> str:
    """The pod (host) name when it names this shard, else ``shard-<index>``.

    The instance names the replica's MQTT session, so it must differ between
    replicas: two processes on one host share ``HOSTNAME``, and a pod told its
    index by ``DEEPFAKE_SHARD_INDEX`` may carry another ordinal in its name.  A
    lone replica (count 1) keeps its host name: it has no peer to clash with.
    """
    if pod_name and (count == 1 or pod_ordinal(pod_name) == index):
        return pod_name
    return f"shard-{index}"


class ShardingConfig(BaseModel):
    """``sharding:`` in config.yaml: which part of the stream list this replica watches.

    Leave it empty on Kubernetes: a StatefulSet pod finds its index in its own
    name and the count in ``DEEPFAKE_SHARD_COUNT``, which the manifests set to
    the replica count.  Every replica must read the same stream list.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    index: int | None = Field(
        default=None,
        ge=0,
        description=f"This replica's shard, 0 <= index < count. Default: ${SHARD_INDEX_ENV}, else the StatefulSet pod ordinal, else 0.",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SHARDS,
        description=f"How many replicas share the stream list. Default: ${SHARD_COUNT_ENV}, else 1 (this replica watches every stream).",
    )
    instance: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=INSTANCE_PATTERN,
        description=(
            "This replica's name in logs, metrics, its MQTT client id and its availability topic <prefix>/instance/<instance>/available "
            "(letters, digits, . _ -). Setting it gives even a lone replica that identity. "
            "Default: the pod name ($POD_NAME, else $HOSTNAME) when its ordinal is the index, else shard-<index>."
        ),
    )

    placement: Placement = Field(
        default="rendezvous",
        description=(
            "How streams are split: rendezvous (each stream's owner from its name alone: adding a replica moves only the streams "
            "the new one wins; counts per replica vary by chance, e.g. 147/153 of 300) or balanced (each replica works out the "
            "same even split of the whole list by the streams' sample_fps, at most one stream apart for equal rates; adding a "
            "stream may move others). engine.process_per_gpu uses balanced for its processes."
        ),
    )

    @model_validator(mode="after")
    def _index_below_count(self) -> ShardingConfig:
        if self.index is not None and self.count is not None and self.index >= self.count:
            raise ValueError(f"index {self.index} must be below count {self.count}")
        return self

    def resolve(self, environ: Mapping[str, str] | None = None) -> ShardSpec:
        """This replica's ShardSpec: these values first, then the environment (see ``resolve_shard``)."""
        return resolve_shard(self.index, self.count, self.instance, environ)

    def plan(self, streams: Iterable[str], environ: Mapping[str, str] | None = None, costs: Mapping[str, float] | None = None) -> ShardPlan:
        """Which of ``streams`` (the enabled configured names; ``costs``: their loads for ``balanced``) this replica
        watches, and whether it is a named instance."""
        spec = self.resolve(environ)
        return ShardPlan.of(spec, streams, named=spec.sharded or self.instance is not None, placement=self.placement, costs=costs)


@dataclass(frozen=True)
class ShardPlan:
    """What this replica watches of the configured list: the decision the start-up log, /health and /metrics show.

    ``named``: the replica has its own MQTT identity (client id ``<client_id>-<instance>``,
    availability ``<prefix>/instance/<instance>/available``, payloads naming it), as it
    must when several replicas share a broker.  A lone replica without a configured
    instance is not named and publishes exactly as before sharding existed.
    """

    spec: ShardSpec
    named: bool
    kept: tuple[str, ...]  # enabled configured streams this shard watches, in config order
    skipped: tuple[str, ...]  # enabled configured streams other shards watch
    placement: Placement = "rendezvous"

    @classmethod
    def of(
        cls, spec: ShardSpec, streams: Iterable[str], *, named: bool, placement: Placement = "rendezvous", costs: Mapping[str, float] | None = None
    ) -> ShardPlan:
        names = list(streams)
        if placement == "balanced" and spec.sharded:
            split = balanced_assignment(names, spec.count, costs)
            kept = tuple(name for name in names if split[name] == spec.index)
        else:
            kept = tuple(spec.select(names))
        mine = set(kept)
        return cls(spec, named, kept, tuple(name for name in names if name not in mine), placement)

    def owns(self, stream: str) -> bool:
        """Whether this replica watches ``stream``: as planned for the enabled configured ones, by its name for any other
        (a disabled one, logged as such by its owner)."""
        if stream in self.kept:
            return True
        return False if stream in self.skipped else self.spec.owns(stream)

    @property
    def instance(self) -> str | None:
        """The name that sets this replica's MQTT identity apart, or None (unnamed: today's topics and client id)."""
        return self.spec.instance if self.named else None

    @property
    def empty(self) -> bool:
        """A shard of a fleet that was given no stream (more replicas than cameras): idle, and ready by design."""
        return self.spec.sharded and not self.kept

    def describe(self) -> str:
        """One start-up log line: the shard and how much of the list it keeps."""
        total = len(self.kept) + len(self.skipped)
        line = f"{self.spec.describe()}: watching {len(self.kept)} of {total} configured stream(s), {len(self.skipped)} left to other shards"
        line += " (balanced split)" if self.placement == "balanced" and self.spec.sharded else ""
        return line + (" (this shard owns none: idle, and /health counts it ready)" if self.empty else "")


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ShardingError(f"${key}={raw!r} is not an integer") from None


def _check_count(count: int, what: str) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise ShardingError(f"{what} must be an integer, got {count!r}")
    if count < 1:
        raise ShardingError(f"{what} is {count}: it must be at least 1")
    if count > MAX_SHARDS:
        raise ShardingError(f"{what} is {count}: at most {MAX_SHARDS} shards")


def _check_index(index: int, count: int, what: str) -> None:
    _check_count(count, "shard count")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ShardingError(f"{what} must be an integer, got {index!r}")
    if not 0 <= index < count:
        raise ShardingError(f"{what} {index} is outside 0..{count - 1} for shard count {count}")
