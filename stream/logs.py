"""Logging set-up: one line per event, plain or JSON; per-stream records carry the stream's name.

Modules log through ``logging.getLogger(__name__)``; what concerns one stream goes through
``stream_log(log, name)``, which adds ``stream`` (and keeps any ``event``) as structured
fields, so ``--log-json`` lines can be filtered by stream.
"""

from __future__ import annotations

import json
import logging
import os
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


LOG_TAG_ENV = "DEEPFAKE_LOG_TAG"  # set by the per-GPU launcher (stream/launcher.py): which of its processes wrote a line


class JsonFormatter(logging.Formatter):
    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.tag:
            payload["process"] = self.tag
        for key in ("stream", "event"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(payload)


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    """``$DEEPFAKE_LOG_TAG``, when set, marks every line (``[gpu1]``, or ``"process"`` in JSON)."""
    handler = logging.StreamHandler()
    tag = os.environ.get(LOG_TAG_ENV, "").strip()
    if json_format:
        handler.setFormatter(JsonFormatter(tag or None))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s {'[' + tag.replace('%', '%%') + '] ' if tag else ''}%(name)s: %(message)s"))
    handler.set_name("deepfake-stream")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "deepfake-stream"] + [handler]
    root.setLevel(level)
    for noisy in ("aioice", "aiortc", "libav", "asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
