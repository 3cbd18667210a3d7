"""Where results go: the ``Publisher`` interface, its MQTT implementation and Home Assistant discovery.

A new output (a webhook, a message queue) is a new module here implementing
``publisher.Publisher``, built in ``stream/app.py``.
"""
