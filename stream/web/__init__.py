"""The HTTP side: the server, and route modules that each get a narrow interface, never the service.

- ``server``: the aiohttp server's lifecycle
- ``health``: ``/health`` and ``/health/live``
- ``metrics``: ``/metrics`` (Prometheus)
- ``whip``: WebRTC ingest (``/whip/<stream>``), the operator page and its event stream

Routes are registered in ``stream/app.py``, the one place that wires the service together.
"""
