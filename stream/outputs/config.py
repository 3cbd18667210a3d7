"""Settings of the outputs: the MQTT broker connection and Home Assistant discovery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr

from detector.config import PositiveFloat, StrictModel


class TlsConfig(StrictModel):
    """TLS towards the broker; the certificate chain is always verified."""

    ca_certs: Path | None = Field(None, description="CA bundle the broker's certificate must chain to (default: the system's)")
    certfile: Path | None = Field(None, description="client certificate, for brokers that require one")
    keyfile: Path | None = Field(None, description="the client certificate's key")
    insecure: bool = Field(False, description="skip the hostname check (never the default; the chain is still verified)")


class MqttConfig(StrictModel):
    """The broker results go to; topics under ``topic_prefix``."""

    enabled: bool = Field(True, description="false: nothing is published (health does not ask for a broker)")
    host: str = Field("127.0.0.1", description="broker host")
    port: Annotated[int, Field(gt=0, lt=65536)] = Field(1883, description="broker port")
    username: str | None = Field(None, description="broker user")
    password: SecretStr | None = Field(None, description="broker password (never logged)")
    tls: TlsConfig | None = Field(None, description="TLS settings; absent: plain TCP")
    client_id: str = Field(
        "deepfake-stream", description="fixed: the broker keeps our QoS 1 session across reconnects; a replica of a fleet connects as <client_id>-<instance>"
    )
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+]+$")] = Field(
        "deepfake",
        description="<prefix>/available (a fleet replica: <prefix>/instance/<instance>/available), <prefix>/<stream>/{status,score,alert,alert/state,snapshot}",
    )
    keepalive_s: Annotated[int, Field(gt=0)] = Field(30, description="MQTT keepalive")
    score_interval_s: Annotated[float, Field(ge=0)] = Field(1.0, description="at most one score message per stream this often")
    max_pending_alerts: Annotated[int, Field(gt=0)] = Field(
        1000, description="alerts kept while the broker is down (beyond it the oldest is dropped with a warning)"
    )
    reconnect_max_s: PositiveFloat = Field(30.0, description="longest delay between reconnection attempts")


class DiscoveryConfig(StrictModel):
    """Home Assistant MQTT discovery: a score sensor and an alert binary_sensor per stream."""

    enabled: bool = Field(False, description="announce every stream to Home Assistant")
    prefix: Annotated[str, Field(pattern=r"^[^#+/]([^#+]*[^#+/])?$")] = Field("homeassistant", description="HA's discovery_prefix")
