"""``deepfake-stream watch``: a built-in MQTT subscriber that prints what the service publishes.

One line per message: the local time it arrived, the topic and a compact payload (JSON
re-serialised on one line, JPEG snapshots as ``<jpeg N bytes>``, other binary as ``<binary N
bytes>``), and ``[retained]`` for what the broker had kept (statuses, availability, alert
states).  ``--json`` prints one JSON object per message instead, for scripts.

The broker comes from ``--config`` (or ``./config.yaml`` when present: ``mqtt.host``, ``port``,
``topic_prefix``, user, password and TLS), overridden by ``--host``/``--port``/``--prefix``.  A
broker that cannot be reached at start is one line on stderr and exit 2; a connection lost later
is reported on stderr and retried (the broker may be restarting).  Ctrl-C exits with 130.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import aiomqtt

from stream.outputs.mqtt import describe_error

MAX_TEXT_CHARS = 500  # a long payload (scores with many tracks) is cut on its line, with its length said
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MAX_S = 5.0


class BrokerUnreachable(Exception):
    """The first connection failed: the message says to which broker and why."""


@dataclass(frozen=True)
class WatchTarget:
    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None

    @property
    def topic(self) -> str:
        return f"{self.prefix.rstrip('/')}/#"

    @property
    def address(self) -> str:
        return f"{'mqtts' if self.tls_context is not None else 'mqtt'}://{self.host}:{self.port}"


def describe_payload(payload: bytes) -> tuple[str, Any]:
    """(kind, value): ``json`` with the parsed value, ``text``, ``jpeg``/``binary``/``empty`` with None."""
    if not payload:
        return "empty", None
    if payload[:3] == b"\xff\xd8\xff":
        return "jpeg", None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", None
    try:
        return "json", json.loads(text)
    except ValueError:
        return "text", text


def compact(payload: bytes) -> str:
    kind, value = describe_payload(payload)
    if kind in ("jpeg", "binary"):
        return f"<{kind} {len(payload)} bytes>"
    if kind == "empty":
        return "<empty>"
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False) if kind == "json" else value
    if not text.isprintable():
        text = json.dumps(text, ensure_ascii=False)  # newlines and control characters stay on one line, escaped
    if len(text) > MAX_TEXT_CHARS:
        text = f"{text[:MAX_TEXT_CHARS]}... ({len(payload)} bytes)"
    return text


def format_line(topic: str, payload: bytes, retained: bool, received: float) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(received)) + f".{int(received % 1 * 1000):03d}"
    return f"{stamp}  {topic}  {compact(payload)}" + ("  [retained]" if retained else "")


def format_json(topic: str, payload: bytes, retained: bool, qos: int, received: float) -> str:
    kind, value = describe_payload(payload)
    record = {"time": round(received, 3), "topic": topic, "retained": retained, "qos": qos, "kind": kind, "bytes": len(payload), "payload": value}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def _payload_bytes(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return str(payload).encode("utf-8")


async def watch(target: WatchTarget, *, as_json: bool = False, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """Print every message under ``target.prefix`` until cancelled; raise BrokerUnreachable if the first connect fails."""
    connected_once = False
    delay = 0.5
    while True:
        client = aiomqtt.Client(
            target.host,
            target.port,
            username=target.username,
            password=target.password,
            tls_context=target.tls_context,
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            async with client:
                await client.subscribe(target.topic, qos=1)
                print(f"watching {target.topic} on {target.address} (Ctrl-C to stop)", file=err, flush=True)
                connected_once, delay = True, 0.5
                async for message in client.messages:
                    payload = _payload_bytes(message.payload)
                    received = time.time()
                    topic, retained = message.topic.value, bool(message.retain)
                    line = format_json(topic, payload, retained, int(message.qos), received) if as_json else format_line(topic, payload, retained, received)
                    print(line, file=out, flush=True)
        except aiomqtt.MqttError as exc:
            if not connected_once:
                raise BrokerUnreachable(f"cannot connect to the MQTT broker {target.address}: {describe_error(exc)}") from None
            print(f"connection to {target.address} lost: {describe_error(exc)}; reconnecting in {delay:g} s", file=err, flush=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)
