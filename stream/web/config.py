"""Settings of the HTTP server, of ``/health`` and of WebRTC (WHIP) ingest."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr

from detector.config import PositiveFloat, StrictModel
from stream.sources.config import StreamName


class HttpConfig(StrictModel):
    """/health, /metrics, WHIP and the pages."""

    enabled: bool = Field(True, description="false: no HTTP server (and no WHIP)")
    host: str = Field("127.0.0.1", description="address to bind: loopback unless the operator opens it")
    port: Annotated[int, Field(ge=0, lt=65536)] = Field(8080, description="port to bind (0: any free port)")


class HealthConfig(StrictModel):
    """When ``GET /health`` (readiness) counts a configured stream as a problem."""

    stream_grace_s: PositiveFloat = Field(
        30.0,
        description="a configured stream connecting, reconnecting or silent (streaming but no frame) for longer than this "
        "makes /health 503 and is named in `problems`; a failed one counts at once",
    )


class WhipConfig(StrictModel):
    """WebRTC ingest: ``POST /whip/<stream>`` with an SDP offer."""

    enabled: bool = Field(True, description="accept WHIP publishers")
    max_sessions: Annotated[int, Field(gt=0)] = Field(8, description="concurrent sessions; the next gets 503")
    max_sdp_bytes: Annotated[int, Field(gt=0)] = Field(64 * 1024, description="largest SDP offer accepted (413 beyond)")
    sample_fps: PositiveFloat = Field(2.0, description="frames analysed per second of a WHIP stream")
    watchdog_s: PositiveFloat = Field(10.0, description="a publisher silent this long goes offline")
    tokens: dict[StreamName, SecretStr] = Field(
        default_factory=dict, description="stream name -> bearer token; empty: open (loopback only by default)"
    )
