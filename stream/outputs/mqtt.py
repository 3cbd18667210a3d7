"""MQTT publishing of scores, statuses, alerts and snapshots (aiomqtt).

Topics, all under ``cfg.topic_prefix`` (``deepfake`` by default):

=============================  =====  ========  ===========================================
topic                          QoS    retained  delivery
=============================  =====  ========  ===========================================
``<prefix>/available``         1      yes       ``online`` on every connect; ``offline`` on
                                                :meth:`MqttPublisher.close` and, as the last
                                                will, when the connection dies abruptly
                                                (a named instance: ``<prefix>/instance/
                                                <instance>/available``, see ``topics.py``)
``<prefix>/<stream>/status``   1      yes       latest per stream, replayed on reconnect
``<prefix>/<stream>/score``    0      no        at most one per ``score_interval_s`` per
                                                stream, latest wins; dropped while offline
``<prefix>/<stream>/alert``    1      no        bounded outbox, at-least-once, in order
``<prefix>/<stream>/alert/     1      yes       latest per stream (``on`` with the open
state``                                         episode, or ``off``), replayed on reconnect
``<prefix>/<stream>/snapshot`` 0      no        raw JPEG; dropped while offline
=============================  =====  ========  ===========================================

The alert topic carries events (``start``/``update``/``end``); a subscriber that joins late,
or a broker that lost its retained messages, learns whether an episode is open from the
retained ``alert/state`` instead.  After a reconnect only that state is re-sent: events are
not replayed (a second ``start`` for one episode would read as a second episode); events
raised while the broker was away are still delivered from the outbox.

A named instance (``instance=``, a replica of a sharded fleet) also connects as
``<client_id>-<instance>`` and adds ``"instance": <instance>`` to every JSON payload
(status, score, alert, alert state), so a consumer sees which replica watches a stream.

The ``publish_*`` methods are plain (non-async) calls that never block the
detection pipeline: they record what must be sent and wake one sender task that
owns the connection.  :meth:`MqttPublisher.run` keeps that connection up for the
life of the service and never raises on broker or network errors.

Delivery guarantee for alerts: an alert leaves the outbox only once the broker
acknowledged it (PUBACK), so none is lost while the outbox does not overflow.
QoS 1 is at-least-once: if the connection dies after the broker got an alert but
before its PUBACK arrived, the alert is sent again after reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiomqtt

from stream.outputs import topics
from stream.outputs.config import MqttConfig, TlsConfig

log = logging.getLogger(__name__)
# paho's own log lines repeat what ours say once per event ("failed to receive on socket" before our
# "connection lost"); keep them out unless someone lowers this level to debug the protocol.
_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.setLevel(logging.CRITICAL)

ONLINE = b"online"
OFFLINE = b"offline"
OPERATION_TIMEOUT_S = 10.0  # CONNACK / PUBACK / DISCONNECT wait before the connection is deemed dead
MAX_PENDING_SNAPSHOTS = 8  # snapshots are large and only useful fresh: a short queue, oldest dropped
_LOG_PAYLOAD_CHARS = 200
_OFFLINE_TIMEOUT_S = 1.0  # PUBACK wait for the final offline message
_CLOSE_GRACE_S = 3.0  # beyond close()'s flush deadline: the offline publish and the DISCONNECT


@dataclass(frozen=True, slots=True)
class _Alert:
    seq: int
    stream: str
    topic: str
    payload: bytes

    def describe(self) -> str:
        """How the alert is named in logs: its stream, sequence number and (truncated) payload."""
        text = self.payload.decode("utf-8", "replace")
        if len(text) > _LOG_PAYLOAD_CHARS:
            text = text[:_LOG_PAYLOAD_CHARS] + "..."
        return f"alert #{self.seq} for stream {self.stream!r}: {text}"


def build_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate chain (``ca_certs``, else the system CAs).

    ``insecure`` only turns off the hostname check; the chain is always verified.
    ``certfile``/``keyfile`` add a client certificate for brokers that require one.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_certs) if tls.ca_certs is not None else None
    )
    if tls.certfile is not None:
        context.load_cert_chain(str(tls.certfile), str(tls.keyfile) if tls.keyfile is not None else None)
    if tls.insecure:
        context.check_hostname = False
    return context


def encode_json(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. NaN/Infinity are refused (not JSON; browsers' parsers reject them)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class MqttPublisher:
    """Publishes the service's results to one MQTT broker and survives broker outages.

    Usage::

        publisher = MqttPublisher(cfg.mqtt)
        task = asyncio.create_task(publisher.run())
        publisher.publish_alert("cam1", {...})
        ...
        await publisher.close()   # flushes alerts, publishes offline, disconnects; run() returns

    ``initial_backoff_s`` is the first reconnect delay (doubling up to
    ``cfg.reconnect_max_s``); tests pass a small value.  ``instance`` names a
    replica that shares the broker with its peers (see ``stream/outputs/topics.py``);
    None publishes as a lone analyzer.

    Not thread-safe: call every method from the event loop's thread (from a worker
    thread, go through ``loop.call_soon_threadsafe``).  One publisher per
    ``client_id``: the persistent session means a second one would keep taking
    the session over from the first.
    """

    def __init__(self, cfg: MqttConfig, *, initial_backoff_s: float = 1.0, instance: str | None = None) -> None:
        if initial_backoff_s <= 0:
            raise ValueError("initial_backoff_s must be positive")
        self._cfg = cfg
        self._initial_backoff_s = initial_backoff_s
        self._prefix = cfg.topic_prefix.rstrip("/")
        self.instance = instance
        self.client_id = topics.client_id(cfg.client_id, instance)
        self.available_topic = topics.availability_topic(self._prefix, instance)
        self._tls_context = build_tls_context(cfg.tls) if cfg.tls is not None else None  # fail fast on bad paths

        # What must be sent. Only the sender task (inside run()) takes from these.
        self._statuses: dict[str, tuple[int, bytes]] = {}  # stream -> (version, payload), latest only
        self._status_sent: dict[str, int] = {}  # stream -> version acknowledged on this connection
        self._status_version = 0
        self._outbox: deque[_Alert] = deque()
        self._in_flight: _Alert | None = None  # popped from the outbox, awaiting its PUBACK
        self._alert_seq = 0
        self._scores_pending: dict[str, bytes] = {}  # stream -> latest payload not yet sent
        self._score_next_at: dict[str, float] = {}  # stream -> loop time the next score may go
        self._snapshots: deque[tuple[str, bytes]] = deque()
        self._retained: dict[str, tuple[bytes, int]] = {}  # publish_retained(): topic -> (payload, qos), latest only
        self._retained_sent: dict[str, tuple[bytes, int]] = {}  # the entry (by identity) sent on this connection

        self._wakeup = asyncio.Event()
        self._close_requested = asyncio.Event()
        self._close_deadline = math.inf
        self._stopped = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._run_cancels = 0  # the run task's cancelling() count when run() started
        self._closed = False
        self._connected = False
        self._ever_connected = False

        self.scores_published = 0
        self.scores_dropped = 0  # offline, or replaced by a newer score within the interval
        self.snapshots_published = 0
        self.snapshots_dropped = 0
        self.alerts_delivered = 0
        self.alerts_dropped = 0
        self.connects = 0
        self.reconnects = 0  # successful connects after the first
        self.connect_failures = 0

    # ----------------------------------------------------------------- state

    enabled = True  # results go to a broker (Publisher protocol; NullPublisher says False)

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the loss (or close) of that connection."""
        return self._connected

    @property
    def pending_alerts(self) -> int:
        """Alerts not yet acknowledged by the broker (the outbox plus the one in flight)."""
        return len(self._outbox) + (1 if self._in_flight is not None else 0)

    def topic(self, stream: str, kind: str) -> str:
        return f"{self._prefix}/{stream}/{kind}"

    # ------------------------------------------------------------ publishing

    def publish_status(self, stream: str, payload: dict[str, Any]) -> None:
        """Retained QoS 1 status; only the latest per stream is kept, and it is re-sent on every reconnect.

        Replaying on reconnect restores the retained value on a broker that lost it
        (restart without persistence) and overwrites whatever an older instance left.
        """
        _check_stream(stream)
        data = encode_json(self._named(payload))
        self._status_version += 1
        self._statuses[stream] = (self._status_version, data)
        self._wakeup.set()

    def publish_score(self, stream: str, payload: dict[str, Any]) -> None:
        """QoS 0 score, rate limited per stream to one per ``cfg.score_interval_s``.

        The first score of an interval goes at once; further ones within the interval
        replace each other and the latest goes when the interval elapses (so the last
        value is never lost, and consumers see at most one message per interval).
        Scores are dropped, not queued, while disconnected: stale scores are noise.
        """
        _check_stream(stream)
        data = encode_json(self._named(payload))
        if not self._connected:
            self.scores_dropped += 1
            return
        if stream in self._scores_pending:
            self.scores_dropped += 1
        self._scores_pending[stream] = data
        self._wakeup.set()

    def publish_alert(self, stream: str, payload: dict[str, Any]) -> None:
        """QoS 1, non-retained alert through the bounded outbox (delivered in order, kept across reconnects).

        When ``cfg.max_pending_alerts`` are already pending, the oldest queued one is
        dropped with a warning naming it.
        """
        _check_stream(stream)
        data = encode_json(self._named(payload))
        self._alert_seq += 1
        alert = _Alert(self._alert_seq, stream, self.topic(stream, "alert"), data)
        if self._closed:
            self.alerts_dropped += 1
            log.warning("MQTT publisher closed: dropped %s", alert.describe())
            return
        if self.pending_alerts >= self._cfg.max_pending_alerts:
            victim = self._outbox.popleft() if self._outbox else alert  # the in-flight one is already on the wire
            self.alerts_dropped += 1
            log.warning(
                "MQTT alert outbox full (%d pending): dropped the oldest, %s",
                self._cfg.max_pending_alerts,
                victim.describe(),
            )
            if victim is alert:
                return
        self._outbox.append(alert)
        self._wakeup.set()

    def publish_alert_state(self, stream: str, payload: dict[str, Any]) -> None:
        """Retained QoS 1 ``<prefix>/<stream>/alert/state``; the latest is kept and re-sent on every reconnect.

        Goes through :meth:`publish_retained`, so it is sent before queued alert events.
        """
        _check_stream(stream)
        self.publish_retained(self.topic(stream, "alert/state"), self._named(payload), qos=1)

    def _named(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload as sent: a named instance says which replica it came from."""
        return payload if self.instance is None else {**payload, "instance": self.instance}

    def publish_snapshot(self, stream: str, jpeg: bytes) -> None:
        """QoS 0 raw JPEG, not retained; dropped while disconnected."""
        _check_stream(stream)
        if not self._connected:
            self.snapshots_dropped += 1
            return
        if len(self._snapshots) >= MAX_PENDING_SNAPSHOTS:
            self._snapshots.popleft()
            self.snapshots_dropped += 1
        self._snapshots.append((self.topic(stream, "snapshot"), bytes(jpeg)))
        self._wakeup.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Keep a connection to the broker until :meth:`close`; never raises on broker/network errors.

        Reconnects with exponential backoff: ``initial_backoff_s`` doubling up to
        ``cfg.reconnect_max_s`` (reset after each successful connection).
        """
        if self._run_task is not None:
            raise RuntimeError("MqttPublisher.run() is already running")
        if self._closed:
            return
        self._stopped.clear()
        self._run_task = asyncio.current_task()
        self._run_cancels = self._run_task.cancelling() if self._run_task is not None else 0
        delay = self._initial_backoff_s
        try:
            while not self._should_stop():
                self._raise_if_cancel_swallowed()
                try:
                    await self._connection()
                    break  # close() finished on this connection
                except (aiomqtt.MqttError, OSError) as exc:
                    if self._connected:
                        delay = self._initial_backoff_s  # the link worked: start the backoff over
                    self._log_connection_end(exc, delay)
                except Exception:  # a bug must not take the service down with it
                    log.exception("MQTT publisher error; reconnecting in %.3g s", delay)
                finally:
                    self._on_connection_lost()
                if self._should_stop():
                    break
                await self._backoff(delay)
                delay = min(delay * 2, self._cfg.reconnect_max_s)
        finally:
            if self.pending_alerts and self._close_requested.is_set():
                log.warning("MQTT publisher closed with %d undelivered alert(s)", self.pending_alerts)
            self._run_task = None
            self._stopped.set()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush pending alerts (for at most ``timeout_s``), publish ``offline`` retained, disconnect cleanly.

        run() returns once this is done. If the broker is unreachable, alerts still
        pending at the deadline are reported in a warning (the last will has already
        told subscribers the service is offline).
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        self._close_deadline = loop.time() + timeout_s
        self._close_requested.set()
        self._wakeup.set()
        task = self._run_task
        if task is None or task.done():
            if self.pending_alerts:
                log.warning("MQTT publisher closed before run(): %d alert(s) not delivered", self.pending_alerts)
            return
        try:
            # Beyond the flush deadline, allow for the offline publish and the DISCONNECT.
            async with asyncio.timeout(timeout_s + _CLOSE_GRACE_S):
                await self._stopped.wait()
        except TimeoutError:
            log.warning("MQTT publisher did not stop in time; cancelling it")
            task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OPERATION_TIMEOUT_S + _CLOSE_GRACE_S):
                    await self._stopped.wait()

    # ------------------------------------------------------------- internals

    def _make_client(self) -> aiomqtt.Client:
        cfg = self._cfg
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=self.client_id,
            clean_session=False,  # persistent session: the broker keeps our session across reconnects
            keepalive=cfg.keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
            will=aiomqtt.Will(self.available_topic, OFFLINE, qos=1, retain=True),
            tls_context=self._tls_context,
            logger=_paho_log,
        )

    async def _connection(self) -> None:
        """One connection's lifetime: returns after a clean close, raises MqttError when the link is lost.

        A fresh aiomqtt client per connection: the outbox is the only record of what
        is unacknowledged, so nothing is re-sent twice by paho's own retry queue.
        """
        client = self._make_client()
        try:
            await client.__aenter__()
        except BaseException:
            self.connect_failures += 1
            raise
        try:
            self._raise_if_cancel_swallowed()
            self._on_connected()
            await self._serve(client)
        except asyncio.CancelledError:
            # Cancelled without close(): a clean DISCONNECT would suppress the last
            # will, so say offline ourselves (best effort) before disconnecting.
            with contextlib.suppress(Exception):
                await client.publish(self.available_topic, OFFLINE, qos=1, retain=True, timeout=_OFFLINE_TIMEOUT_S)
            await _exit_quietly(client)
            raise
        except BaseException as exc:
            await _exit_quietly(client, exc)
            raise
        else:
            await client.__aexit__(None, None, None)
            log.info("MQTT disconnected from %s (closed)", self._address())

    def _on_connected(self) -> None:
        self._connected = True
        self.connects += 1
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._status_sent.clear()  # replay every stream's status on this connection
        self._retained_sent.clear()  # and every publish_retained() message
        log.info(
            "MQTT connected to %s as %r (%d status(es) to replay, %d alert(s) pending)",
            self._address(),
            self.client_id,
            len(self._statuses),
            self.pending_alerts,
        )

    def _on_connection_lost(self) -> None:
        self._connected = False
        self.scores_dropped += len(self._scores_pending)
        self._scores_pending.clear()
        self.snapshots_dropped += len(self._snapshots)
        self._snapshots.clear()

    def _log_connection_end(self, exc: BaseException, delay: float) -> None:
        user = f" (user {self._cfg.username!r})" if self._cfg.username is not None else ""
        reason = describe_error(exc)
        if self._connected:
            log.warning(
                "MQTT connection to %s lost: %s; %d alert(s) pending; reconnecting in %.3g s",
                self._address(),
                reason,
                self.pending_alerts,
                delay,
            )
        else:
            log.warning("MQTT connect to %s%s failed: %s; retrying in %.3g s", self._address(), user, reason, delay)

    def _address(self) -> str:
        scheme = "mqtts" if self._tls_context is not None else "mqtt"
        return f"{scheme}://{self._cfg.host}:{self._cfg.port}"

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run the sender until close() is done, while watching the link (an MqttError when it drops)."""
        sender = asyncio.create_task(self._send_loop(client), name="mqtt-sender")
        watcher = asyncio.create_task(_wait_disconnected(client), name="mqtt-link-watch")
        try:
            done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_and_wait(sender, watcher)
        (sender if sender in done else watcher).result()

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        """The one place that publishes: online, statuses, alerts in order, snapshots, due scores."""
        loop = asyncio.get_running_loop()
        await client.publish(self.available_topic, ONLINE, qos=1, retain=True)
        while True:
            # Cleared before looking at the queues, so a publish_*() during any await below
            # leaves it set and the wait at the bottom returns at once: no lost wake-ups.
            self._wakeup.clear()
            if (topic := self._next_unsent_retained()) is not None:  # publish_retained()
                entry = self._retained[topic]
                await client.publish(topic, entry[0], qos=entry[1], retain=True)
                self._retained_sent[topic] = entry
                continue
            if (stream := self._next_unsent_status()) is not None:
                version, data = self._statuses[stream]
                await client.publish(self.topic(stream, "status"), data, qos=1, retain=True)
                self._status_sent[stream] = version
                continue
            if self._outbox and not (self._close_requested.is_set() and self._close_overdue()):
                await self._deliver_alert(client, self._outbox.popleft())
                continue
            if self._snapshots:
                topic, jpeg = self._snapshots.popleft()
                await client.publish(topic, jpeg, qos=0)
                self.snapshots_published += 1
                continue
            next_score_at = await self._send_due_scores(client, loop.time())
            if self._close_requested.is_set():
                await client.publish(self.available_topic, OFFLINE, qos=1, retain=True, timeout=_OFFLINE_TIMEOUT_S)
                return
            timeout = None if next_score_at is None else max(0.0, next_score_at - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _deliver_alert(self, client: aiomqtt.Client, alert: _Alert) -> None:
        """Publish one alert and count it delivered only after its PUBACK; on failure it goes back to the head."""
        self._in_flight = alert
        try:
            timeout = OPERATION_TIMEOUT_S
            if self._close_requested.is_set():
                timeout = max(0.1, min(timeout, self._close_remaining()))
            await client.publish(alert.topic, alert.payload, qos=1, retain=False, timeout=timeout)
        except BaseException:
            self._outbox.appendleft(alert)
            raise
        finally:
            self._in_flight = None
        self.alerts_delivered += 1

    async def _send_due_scores(self, client: aiomqtt.Client, now: float) -> float | None:
        """Send every pending score whose interval has elapsed; return when the next one falls due."""
        next_at: float | None = None
        for stream in list(self._scores_pending):
            due = self._score_next_at.get(stream, -math.inf)
            if now < due:
                next_at = due if next_at is None else min(next_at, due)
                continue
            data = self._scores_pending.pop(stream)
            self._score_next_at[stream] = now + self._cfg.score_interval_s
            await client.publish(self.topic(stream, "score"), data, qos=0)
            self.scores_published += 1
        return next_at

    def _next_unsent_status(self) -> str | None:
        for stream, (version, _) in self._statuses.items():
            if self._status_sent.get(stream) != version:
                return stream
        return None

    def _raise_if_cancel_swallowed(self) -> None:
        """Honour a cancellation that Python 3.11's ``asyncio.wait_for`` (inside aiomqtt) swallowed."""
        task = self._run_task
        if task is not None and task.cancelling() > self._run_cancels:
            raise asyncio.CancelledError

    def _should_stop(self) -> bool:
        """After close(): stop once nothing is pending or the flush deadline has passed."""
        return self._close_requested.is_set() and (not self.pending_alerts or self._close_overdue())

    async def _backoff(self, delay: float) -> None:
        """Sleep before reconnecting; close() cuts it short unless alerts still wait to be flushed."""
        if self._close_requested.is_set():
            await asyncio.sleep(min(delay, self._close_remaining()))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._close_requested.wait()

    def _close_remaining(self) -> float:
        if not self._close_requested.is_set():
            return math.inf
        return max(0.0, self._close_deadline - asyncio.get_running_loop().time())

    def _close_overdue(self) -> bool:
        return self._close_remaining() <= 0

    # ---------------------------------------------- generic retained messages
    # For Home Assistant discovery (stream/outputs/discovery.py); the sender loop and
    # _on_connected() each have a one-line hook for these.

    def publish_retained(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
        """Retained message on any topic; only the latest per topic is kept and it is re-sent on every reconnect.

        Like statuses, replaying restores it on a broker that lost it.  An empty
        payload clears the broker's retained message for ``topic``.
        """
        if not topic or any(ch in topic for ch in "+#\x00"):
            raise ValueError(f"invalid MQTT topic for a retained message: {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        if isinstance(payload, dict):
            data = encode_json(payload)
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = bytes(payload)
        self._retained[topic] = (data, qos)
        self._wakeup.set()

    def _next_unsent_retained(self) -> str | None:
        for topic, entry in self._retained.items():
            if self._retained_sent.get(topic) is not entry:
                return topic
        return None


async def _wait_disconnected(client: aiomqtt.Client) -> None:
    """Return only by raising MqttError when the connection drops (we subscribe to nothing)."""
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("message stream ended")


async def _cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they have really finished.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt) swallows a cancellation
    that coincides with the awaited result, after which the task carries on; so
    cancel again until each one is done.  Their outcomes are retrieved (no
    "exception was never retrieved" noise); callers read the one they care about.
    """
    interrupted = False
    for task in tasks:
        task.cancel()
    while pending := [task for task in tasks if not task.done()]:
        try:
            await asyncio.wait(pending, timeout=0.05)
        except asyncio.CancelledError:
            interrupted = True  # finish cleaning up, then honour our own cancellation
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()
    if interrupted:
        raise asyncio.CancelledError


async def _exit_quietly(client: aiomqtt.Client, exc: BaseException | None = None) -> None:
    """Leave the client's context after a failure without masking the original error."""
    with contextlib.suppress(Exception):
        await client.__aexit__(type(exc) if exc is not None else None, exc, None)


def describe_error(exc: BaseException) -> str:
    """A one-line reason: aiomqtt hides the real cause (``__cause__``) and its own message behind a code."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    reason = str(cause) or type(cause).__name__
    if isinstance(cause, aiomqtt.MqttCodeError) and cause.args and isinstance(cause.args[0], str):
        reason = f"{cause.args[0]} ({reason})"  # "Unexpected disconnection ([code:128] Unspecified error)"
    return reason


def _check_stream(stream: str) -> None:
    """A stream name is one topic level: no separators or wildcards."""
    if not stream or any(ch in stream for ch in "/+#\x00"):
        raise ValueError(f"invalid stream name for an MQTT topic: {stream!r}")

