"""``config.yaml``: the whole service's settings, assembled from the sections that live beside their users.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored
setting, and errors name the field's path (``streams.1.sample_fps``).  Where each
section lives: ``detector/config.py`` (detector, engine), ``stream/sources/config.py``
(streams), ``stream/scoring.py`` (window), ``stream/alerts.py`` (alerts),
``stream/outputs/config.py`` (mqtt, discovery), ``stream/web/config.py`` (http, health, whip),
``stream/sharding.py`` (sharding) and here (logging).  Loading a config imports none of the
heavy modules (torch, PyAV, aiortc), so a bad file is reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from detector.config import DetectorConfig, EngineConfig, StrictModel
from stream.alerts import AlertConfig
from stream.outputs.config import DiscoveryConfig, MqttConfig, TlsConfig
from stream.scoring import WindowConfig
from stream.sharding import ShardingConfig, ShardPlan
from stream.sources.config import StreamConfig
from stream.web.config import HealthConfig, HttpConfig, WhipConfig

__all__ = [
    "AlertConfig", "AppConfig", "ConfigError", "DetectorConfig", "DiscoveryConfig", "EngineConfig", "HealthConfig", "HttpConfig",
    "LoggingConfig", "MqttConfig", "ShardingConfig", "StreamConfig", "TlsConfig", "WhipConfig", "WindowConfig", "load_config", "parse_config",
]  # fmt: skip


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


class LoggingConfig(StrictModel):
    """Log lines: plain text or one JSON object per line."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="`--log-level` overrides it")
    json_format: bool = Field(False, description="one JSON object per line (for log shippers); `--log-json` overrides it")


class AppConfig(StrictModel):
    """The whole of ``config.yaml``."""

    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="faces, crops, classifier, aggregation")
    streams: list[StreamConfig] = Field(default_factory=list, description="every feed to watch")
    window: WindowConfig = Field(default_factory=WindowConfig, description="the running score's window")
    alerts: AlertConfig = Field(default_factory=AlertConfig, description="when an alert starts and ends")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="cross-stream batching")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="where results are published")
    http: HttpConfig = Field(default_factory=HttpConfig, description="/health, /metrics, WHIP and the pages")
    health: HealthConfig = Field(default_factory=HealthConfig, description="when /health counts a configured stream as a problem")
    whip: WhipConfig = Field(default_factory=WhipConfig, description="WebRTC ingest")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="log format and level")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig, description="Home Assistant MQTT discovery")
    sharding: ShardingConfig = Field(
        default_factory=ShardingConfig, description="which part of `streams` this replica watches when several share the list (default: all of it)"
    )

    def wants_cuda(self) -> bool:
        """Whether the engine may run on a GPU as configured: read from the config alone, since nothing may touch CUDA
        before ``engine.mps`` is settled (``stream/mps.py``)."""
        devices = [self.detector.device] if self.engine.devices == "all" else self.engine.devices
        return any(device != "cpu" for device in devices)

    def shard_plan(self, environ: Mapping[str, str] | None = None) -> ShardPlan:
        """This replica's share of the enabled streams (``sharding``, else the environment); ShardingError when it cannot work."""
        enabled = [s for s in self.streams if s.enabled]
        return self.sharding.plan([s.name for s in enabled], environ, costs={s.name: s.sample_fps for s in enabled})

    @field_validator("streams")
    @classmethod
    def _unique_names(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for stream in streams:
            if stream.name in seen:
                raise ValueError(f"duplicate stream name {stream.name!r}")
            seen.add(stream.name)
        return streams

    @model_validator(mode="after")
    def _grace_covers_sampling(self) -> AppConfig:
        """A stream sampled less often than once per grace period would look silent to /health between samples."""
        grace = self.health.stream_grace_s
        for index, stream in enumerate(self.streams):
            if stream.enabled and 1.0 / stream.sample_fps >= grace:
                raise ValueError(
                    f"streams.{index}.sample_fps: one sample every {1.0 / stream.sample_fps:g} s is not shorter than "
                    f"health.stream_grace_s ({grace:g} s), so /health would call {stream.name!r} silent; raise one of them"
                )
        return self


def format_validation_error(source: str, error: ValidationError, source_of: Callable[[tuple[str | int, ...]], str] | None = None) -> str:
    """One line per problem: ``source: a.b.0.c: message`` (``source_of(loc)``, when given, names the file that set the field)."""
    lines = []
    for item in error.errors():
        # a key from the file is shown escaped when it is not plain text: one problem stays one line
        where = ".".join(str(p) if str(p).isprintable() and str(p) else repr(str(p)) for p in item["loc"]) or "(top level)"
        lines.append(f"{source_of(item['loc']) if source_of else source}: {where}: {' '.join(item['msg'].splitlines())}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "config") -> AppConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_config(path: str | Path) -> AppConfig:
    """Read and validate a YAML config file; raises ConfigError with a readable message."""
    return parse_config(read_config_data(path), str(path))


def read_config_data(path: str | Path) -> object:
    """A YAML file's data, not yet validated; ConfigError (naming the file) when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's int string-conversion limit
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return data
