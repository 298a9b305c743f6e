"""Access log: one JSON line per answered request, written in small batches.

Exchanges append a tuple of fields (no formatting, no logging machinery on the request path);
every BATCH entries, and on the server's timer sweep, the batch is rendered with bytes
formatting and written to stdout in one call, apart from the structured diagnostics on stderr.
Small batches keep each write short, so no request waits behind a large flush.
"""

from __future__ import annotations

import json
import sys
import time
from typing import BinaryIO

# client, method, host, target, status, bytes, seconds, upstream, request id, reason
Entry = tuple[bytes, bytes, bytes, bytes, int, int, float, str | None, bytes, str | None]

BATCH = 128


def _json_bytes(value: bytes) -> bytes:
    """`value` as the inside of a JSON string. httptools already refuses control characters
    other than HTAB in targets and field values, so three checks cover the rest."""
    if value.isascii() and b'"' not in value and b"\\" not in value and b"\t" not in value:
        return value
    return json.dumps(value.decode("latin-1")).encode()[1:-1]


class AccessLog:
    __slots__ = ("_second", "_stamp", "entries", "stream")

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream
        self.entries: list[tuple[float, Entry]] = []
        self._second = -1
        self._stamp = b""

    def record(self, entry: Entry) -> None:
        entries = self.entries
        entries.append((time.time(), entry))
        if len(entries) >= BATCH:
            self.flush()

    def _time(self, when: float) -> bytes:
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%s.%03dZ" % (self._stamp, int(when * 1000) % 1000)

    def flush(self) -> None:
        entries = self.entries
        if not entries:
            return
        self.entries = []
        lines = []
        for when, e in entries:
            client, method, host, target, status, sent, seconds, upstream, rid, reason = e
            lines.append(
                b'{"time":"%s","event":"access","client":"%s","method":"%s","host":"%s",'
                b'"target":"%s","status":%d,"bytes":%d,"ms":%.3f,"upstream":%s,'
                b'"request_id":"%s"%s}\n'
                % (
                    self._time(when),
                    client,
                    method,
                    _json_bytes(host),
                    _json_bytes(target),
                    status,
                    sent,
                    seconds * 1000,
                    b"null" if upstream is None else b'"%s"' % upstream.encode(),
                    _json_bytes(rid),
                    b"" if reason is None else b',"reason":"%s"' % reason.encode(),
                )
            )
        data = b"".join(lines)
        try:
            stream = self.stream if self.stream is not None else sys.stdout.buffer
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not take the data path down
