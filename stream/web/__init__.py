"""The HTTP side: the server, and route modules that each get a narrow interface, never the service.

- ``server``: the aiohttp server's lifecycle
- ``health``: ``/health`` and ``/health/live``
- ``metrics``: ``/metrics`` (Prometheus)
- ``whip``: WebRTC ingest (``/whip/<stream>``), the camera publishing page (``/publish``) and its event stream
- ``dashboard``: the control-room dashboard (``/``), its JSON, event stream and alert snapshots

Routes are registered in ``stream/app.py``, the one place that wires the service together.
"""
