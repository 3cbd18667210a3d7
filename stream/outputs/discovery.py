"""Home Assistant MQTT discovery: every stream shows up in HA without YAML.

Per stream, two retained config messages under the discovery prefix
(``homeassistant`` by default), as HA's MQTT integration expects them::

    <discovery prefix>/sensor/<node_id>/<stream>_score/config         the running score (0..1)
    <discovery prefix>/binary_sensor/<node_id>/<stream>_alert/config  ON while an alert episode is open

They point at the topics the service already publishes (``<prefix>/<stream>/score``
and the retained ``<prefix>/<stream>/alert/state``, so the binary sensor is right even when
HA subscribes in the middle of an episode) and use ``<prefix>/available`` (online/offline,
including the MQTT last will) for availability, so HA greys the entities out when
the analyzer dies.  The configs are retained and replayed by the publisher on
every reconnect, so HA finds them whenever it (re)starts.

A named instance (a replica of a sharded fleet) announces the streams it watches with
its own availability topic, ``<prefix>/instance/<instance>/available``, and names itself
in the device's ``hw_version`` (``instance deepfake-stream-2``).  The node id, config topics
and unique ids come from the configured ``mqtt.client_id``, the fleet's, not the instance's:
when a stream moves to another replica (the shard count changed), its new owner overwrites
the same retained configs, and HA keeps one entity that now follows the new replica.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from stream.outputs.config import DiscoveryConfig, MqttConfig
from stream.outputs.publisher import Publisher
from stream.outputs.topics import availability_topic

log = logging.getLogger(__name__)

SW_VERSION = "0.1.0"
ALERT_STATE_TEMPLATE = "{{ 'ON' if value_json.state == 'on' else 'OFF' }}"  # the retained alert/state payload


def node_id(client_id: str) -> str:
    """HA's node_id allows only ``[a-zA-Z0-9_-]``; derived from the configured MQTT client id so two analyzers (fleets) differ."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", client_id) or "deepfake_stream"


def object_id(stream: str, what: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{stream}_{what}")


def config_topic(discovery_prefix: str, component: str, node: str, obj: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{obj}/config"


def _device(node: str, stream: str, instance: str | None) -> dict[str, Any]:
    """One HA device per stream (a camera or feed), so its two entities group together; a named instance names itself."""
    device = {
        "identifiers": [f"{node}_{object_id(stream, 'stream')}"],
        "name": f"Deepfake analyzer {stream}",
        "manufacturer": "deepfake-stream",
        "model": "DFDC-winner EfficientNet ensemble",
        "sw_version": SW_VERSION,
    }
    if instance is not None:
        device["hw_version"] = f"instance {instance}"  # the replica (GPU box) that watches this stream now
    return device


def _availability(topic_prefix: str, instance: str | None) -> dict[str, Any]:
    return {
        "availability_topic": availability_topic(topic_prefix, instance),
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def score_sensor(stream: str, topic_prefix: str, node: str, instance: str | None = None) -> dict[str, Any]:
    """The ``sensor`` config: the running fakeness score; unitless, so no unit_of_measurement."""
    obj = object_id(stream, "score")
    return {
        "name": "Deepfake score",
        "unique_id": f"{node}_{obj}",
        "state_topic": f"{topic_prefix}/{stream}/score",
        "value_template": "{{ value_json.score }}",
        "state_class": "measurement",
        "suggested_display_precision": 3,
        "icon": "mdi:incognito",
        "device": _device(node, stream, instance),
        **_availability(topic_prefix, instance),
    }


def alert_binary_sensor(stream: str, topic_prefix: str, node: str, instance: str | None = None) -> dict[str, Any]:
    """The ``binary_sensor`` config: ON while an episode is open, from the retained alert state (attributes: id, since, score, peak)."""
    obj = object_id(stream, "alert")
    return {
        "name": "Deepfake alert",
        "unique_id": f"{node}_{obj}",
        "state_topic": f"{topic_prefix}/{stream}/alert/state",
        "value_template": ALERT_STATE_TEMPLATE,
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
        "json_attributes_topic": f"{topic_prefix}/{stream}/alert/state",
        "device": _device(node, stream, instance),
        **_availability(topic_prefix, instance),
    }


def discovery_messages(stream: str, discovery: DiscoveryConfig, mqtt: MqttConfig, instance: str | None = None) -> dict[str, dict[str, Any]]:
    """``{config topic: config payload}`` for one stream, as announced by ``instance`` (None: a lone analyzer)."""
    prefix = mqtt.topic_prefix.rstrip("/")
    node = node_id(mqtt.client_id)
    return {
        config_topic(discovery.prefix, "sensor", node, object_id(stream, "score")): score_sensor(stream, prefix, node, instance),
        config_topic(discovery.prefix, "binary_sensor", node, object_id(stream, "alert")): alert_binary_sensor(stream, prefix, node, instance),
    }


class Discovery:
    """Announces each stream once to Home Assistant through the publisher's retained messages."""

    def __init__(self, discovery: DiscoveryConfig, mqtt: MqttConfig, publisher: Publisher, instance: str | None = None) -> None:
        self.discovery = discovery
        self.mqtt = mqtt
        self.publisher = publisher
        self.instance = instance
        self.announced: set[str] = set()

    def announce(self, stream: str) -> None:
        if stream in self.announced:
            return
        for topic, payload in discovery_messages(stream, self.discovery, self.mqtt, self.instance).items():
            self.publisher.publish_retained(topic, payload, qos=1)
        self.announced.add(stream)
        log.info("Home Assistant discovery: announced stream %s under %s/", stream, self.discovery.prefix, extra={"stream": stream, "event": "discovery"})


def start_discovery(discovery: DiscoveryConfig, mqtt: MqttConfig, publisher: Publisher, instance: str | None = None) -> Discovery | None:
    """A Discovery when enabled and results go to a broker, else None; ``instance`` names a replica of a fleet."""
    if not discovery.enabled:
        return None
    if not publisher.enabled:
        log.warning("Home Assistant discovery enabled but MQTT is disabled: nothing announced")
        return None
    return Discovery(discovery, mqtt, publisher, instance)
