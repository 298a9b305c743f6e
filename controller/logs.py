"""Controller logging: JSON lines on stderr, one object per record.

The formatter itself lives in `proxy/logs.py` so workers (which must not import the controller)
emit the same shape: `{"time", "level", "logger", "event", ...extra}`. The CLI calls
`configure_logging` once, before anything logs.
"""

from __future__ import annotations

import logging
from typing import Final

from proxy.logs import JSONFormatter
from proxy.logs import configure_logging as _configure_root

__all__ = ["JSONFormatter", "configure_logging"]

# Third-party loggers that are chatty at INFO and say nothing an operator needs.
_QUIET: Final = ("aiohttp.access", "asyncio")


def configure_logging(level: str = "info") -> None:
    """JSON logs on stderr at `level` ("debug", "info", "warning", "error")."""
    _configure_root(level)
    if level.lower() != "debug":
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
