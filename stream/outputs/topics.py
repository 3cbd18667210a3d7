"""Who a replica is on the broker: its MQTT client id and availability topic, with or without an instance name.

A lone replica publishes as it always has: client id ``mqtt.client_id`` and availability on
``<prefix>/available``.  A *named* instance (a replica of a sharded fleet, or one given
``sharding.instance``) shares the broker with its peers, so both must be its own:

* client id ``<mqtt.client_id>-<instance>``: the session is persistent, and two clients
  with one id would take it from each other in turn;
* availability ``<prefix>/instance/<instance>/available`` (``online``, last will ``offline``):
  per replica, so one dying does not mark the others offline.  ``instance`` is reserved as a
  stream name (``stream/sources/config.py``), so ``<prefix>/instance/#`` holds only these and
  no stream topic ``<prefix>/<stream>/<kind>`` can meet them.

Stream topics stay ``<prefix>/<stream>/<kind>`` whichever replica watches the stream, so
consumers need not know the sharding; payloads name the instance instead.
"""

from __future__ import annotations

import re

INSTANCE_LEVEL = "instance"
_TOPIC_LEVEL = re.compile(r"^[^/+#\x00\s]+$")


def check_instance(instance: str) -> str:
    """``instance`` if it can be one topic level and a client-id suffix; ValueError otherwise."""
    if not _TOPIC_LEVEL.fullmatch(instance):
        raise ValueError(f"instance name {instance!r} must be one MQTT topic level (no / + # or spaces)")
    return instance


def client_id(base: str, instance: str | None) -> str:
    """The MQTT client id of this replica: ``base`` alone, or ``base-<instance>`` for a named instance."""
    return base if instance is None else f"{base}-{check_instance(instance)}"


def availability_topic(prefix: str, instance: str | None) -> str:
    """Where this replica says ``online``/``offline``: ``<prefix>/available``, or ``<prefix>/instance/<instance>/available``."""
    prefix = prefix.rstrip("/")
    return f"{prefix}/available" if instance is None else f"{prefix}/{INSTANCE_LEVEL}/{check_instance(instance)}/available"
