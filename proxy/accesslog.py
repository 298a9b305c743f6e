"""Access log: one JSON line per answered request, written in batches.

Exchanges append a tuple of fields (no formatting, no logging machinery on the request path);
the server's timer sweep formats and writes the batch, so the cost per request is one list
append plus its share of a batched write. Lines go to stdout, apart from the structured
diagnostics on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

# client, method, host, target, status, bytes, seconds, upstream, request id, reason
Entry = tuple[bytes, bytes, bytes, bytes, int, int, float, str | None, bytes, str | None]

_MAX_BATCH = 4096


class AccessLog:
    __slots__ = ("entries", "stream")

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.entries: list[tuple[float, Entry]] = []

    def record(self, entry: Entry) -> None:
        self.entries.append((time.time(), entry))
        if len(self.entries) >= _MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        entries = self.entries
        if not entries:
            return
        self.entries = []
        lines = []
        dumps = json.dumps
        for when, e in entries:
            client, method, host, target, status, sent, seconds, upstream, rid, reason = e
            doc = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
                + f".{int(when * 1000) % 1000:03d}Z",
                "event": "access",
                "client": client.decode("latin-1"),
                "method": method.decode("latin-1"),
                "host": host.decode("latin-1"),
                "target": target.decode("latin-1"),
                "status": status,
                "bytes": sent,
                "ms": round(seconds * 1000, 3),
                "upstream": upstream,
                "request_id": rid.decode("latin-1"),
            }
            if reason is not None:
                doc["reason"] = reason
            lines.append(dumps(doc, separators=(",", ":")))
        lines.append("")
        stream = self.stream if self.stream is not None else sys.stdout
        try:
            stream.write("\n".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not take the data path down
