"""Typed configuration (``config.yaml``) for the detector and the streaming service.

Every model forbids unknown keys so a typo is an error, not a silently ignored
setting; errors name the field's path (``streams.1.sample_fps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from detector.weights import DEFAULT_ENCODER, PUBLISHED_CHECKPOINTS

StreamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


class StrictModel(BaseModel):
    # inf/NaN are never meaningful here, and an infinite timeout overflows the threads' waits
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class DetectorConfig(StrictModel):
    """The DFDC-winner inference settings."""

    weights_dir: Path = Path("weights")
    weights: list[Path] = Field(default_factory=lambda: [Path(name) for name in PUBLISHED_CHECKPOINTS])
    encoder: str = DEFAULT_ENCODER
    input_size: Annotated[int, Field(gt=0, le=2048)] = 380
    frames_per_video: Annotated[int, Field(gt=0, le=10_000)] = 32
    thresholds: tuple[Probability, Probability, Probability] = (0.7, 0.8, 0.8)
    min_face_size: Annotated[int, Field(gt=0)] = 20
    rescale: Literal["size", "half"] = "size"
    strategy: Literal["confident", "mean"] = "confident"
    device: str = "auto"
    batch_size: Annotated[int, Field(gt=0, le=1024)] = 64
    fast_mtcnn: bool = True  # facenet's nets and code, per-box crop loops replaced by one exact gather
    gpu_resize: bool = False  # CUDA: shrink frames for MTCNN on the GPU (PIL-like, not bit-exact)
    cuda_graphs: bool = False  # CUDA: replay captured graphs for the classifier at fixed batch sizes

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def weight_paths(self, base: Path | None = None) -> list[Path]:
        """Checkpoint paths, relative ones resolved against ``weights_dir`` (itself against ``base``)."""
        root = self.weights_dir if base is None or self.weights_dir.is_absolute() else base / self.weights_dir
        return [w if w.is_absolute() else root / w for w in self.weights]


class StreamConfig(StrictModel):
    """One camera or broadcast feed."""

    name: StreamName
    url: Annotated[str, Field(min_length=1, max_length=4096)]
    sample_fps: PositiveFloat = 2.0
    enabled: bool = True
    loop: bool = False  # files only: start again at the end
    realtime: bool = False  # files only: pace decoding at the video's own rate
    open_timeout_s: PositiveFloat = 10.0
    read_timeout_s: PositiveFloat = 10.0
    watchdog_s: PositiveFloat = 10.0
    skip_frames: Literal["none", "nonref", "nonkey"] = "none"  # nonref: skip frames no other frame references
    decoder: Literal["thread", "process"] = "thread"  # process: decode in a child process (many streams)
    reconnect_min_s: PositiveFloat = 1.0  # backoff doubles from here after each failed attempt
    reconnect_max_s: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _backoff_order(self) -> StreamConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class WindowConfig(StrictModel):
    """The running score's window: the last ``seconds`` or the last ``max_scores`` face scores."""

    seconds: PositiveFloat = 16.0
    max_scores: Annotated[int, Field(gt=0)] = 32


class AlertConfig(StrictModel):
    alert_threshold: Probability = 0.8
    clear_threshold: Probability = 0.5
    min_samples: Annotated[int, Field(gt=0)] = 3
    snapshot: bool = True

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertConfig:
        if self.clear_threshold > self.alert_threshold:
            raise ValueError("clear_threshold must not exceed alert_threshold")
        return self


class EngineConfig(StrictModel):
    """Cross-stream batching on the one inference worker."""

    max_batch: Annotated[int, Field(gt=0, le=1024)] = 32
    max_wait_ms: Annotated[float, Field(ge=0, le=60_000)] = 20.0  # beyond threading.TIMEOUT_MAX the worker's wait raises
    max_pending_per_stream: Annotated[int, Field(gt=0)] = 4


class TlsConfig(StrictModel):
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    insecure: bool = False  # skip hostname verification (never the default)


class MqttConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    client_id: str = "deepfake-stream"
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+]+$")] = "deepfake"
    keepalive_s: Annotated[int, Field(gt=0)] = 30
    score_interval_s: Annotated[float, Field(ge=0)] = 1.0
    max_pending_alerts: Annotated[int, Field(gt=0)] = 1000
    reconnect_max_s: PositiveFloat = 30.0


class HttpConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"  # loopback unless the operator opens it
    port: Annotated[int, Field(ge=0, lt=65536)] = 8080


class WhipConfig(StrictModel):
    enabled: bool = True
    max_sessions: Annotated[int, Field(gt=0)] = 8
    max_sdp_bytes: Annotated[int, Field(gt=0)] = 64 * 1024
    sample_fps: PositiveFloat = 2.0
    watchdog_s: PositiveFloat = 10.0
    tokens: dict[StreamName, SecretStr] = Field(default_factory=dict)  # stream name -> bearer token


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False


class DiscoveryConfig(StrictModel):
    """Home Assistant MQTT discovery: a score sensor and an alert binary_sensor per stream (stream/discovery.py)."""

    enabled: bool = False
    prefix: Annotated[str, Field(pattern=r"^[^#+/]([^#+]*[^#+/])?$")] = "homeassistant"  # HA's discovery_prefix


class AppConfig(StrictModel):
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    streams: list[StreamConfig] = Field(default_factory=list)
    window: WindowConfig = Field(default_factory=WindowConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    whip: WhipConfig = Field(default_factory=WhipConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)

    @field_validator("streams")
    @classmethod
    def _unique_names(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for stream in streams:
            if stream.name in seen:
                raise ValueError(f"duplicate stream name {stream.name!r}")
            seen.add(stream.name)
        return streams


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: ``source: a.b.0.c: message``."""
    lines = []
    for item in error.errors():
        # a key from the file is shown escaped when it is not plain text: one problem stays one line
        where = ".".join(str(p) if str(p).isprintable() and str(p) else repr(str(p)) for p in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {' '.join(item['msg'].splitlines())}")
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
    return parse_config(data, str(path))
