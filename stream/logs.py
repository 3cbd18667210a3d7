"""Logging set-up: one line per event, plain or JSON; per-stream records carry the stream's name.

Modules log through ``logging.getLogger(__name__)``; what concerns one stream goes through
``stream_log(log, name)``, which adds ``stream`` (and keeps any ``event``) as structured
fields, so ``--log-json`` lines can be filtered by stream.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import MutableMapping
from typing import Any


class StreamLog(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one stream: every record gets ``extra={"stream": name}``, merged with the call's own extra."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def stream_log(logger: logging.Logger, stream: str) -> StreamLog:
    return StreamLog(logger, {"stream": stream})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("stream", "event"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(payload)


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    handler = logging.StreamHandler()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.set_name("deepfake-stream")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "deepfake-stream"] + [handler]
    root.setLevel(level)
    for noisy in ("aioice", "aiortc", "libav", "asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
