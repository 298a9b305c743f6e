"""Structured logs: one JSON object per line on stderr, for the controller and every worker.

Library code logs `logger.info("event.name", extra={...})`; this formatter turns the record into
`{"time", "level", "logger", "event", ...extra}`. It lives in `proxy/` so workers can use it without
importing the controller; the controller configures the same formatter.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_text:
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str = "info") -> None:
    """Send every log record to stderr as JSON; replaces handlers set earlier.

    The event loop only puts records on a queue; a background thread formats and writes them,
    so a slow or blocked stderr never stalls request handling.
    """
    global _listener
    if _listener is not None:
        # Stopped here, so not again at exit (a second stop fails: its thread is gone).
        atexit.unregister(_listener.stop)
        _listener.stop()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(records)]
    root.setLevel(level.upper())


class _QueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Keep `extra` fields and exc_info as they are: the formatter runs in the listener
        # thread and needs them; only resolve the message arguments now.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        return record
