"""Access log: one JSON line per answered request, written in small batches.

Exchanges append a tuple of fields (no formatting, no logging machinery on the request path);
every BATCH entries, and on the worker's timer sweep, the batch is rendered with bytes
formatting and written to stdout in one call, apart from the structured diagnostics on stderr.
Small batches keep each write short, so no request waits behind a large flush.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import BinaryIO, Final

from proxy.config import PathRule

# client, method, host, target, status, bytes, seconds, upstream, request id, reason,
# X-Forwarded-For as received, upstream status (0: none, and then upstream seconds mean nothing),
# upstream seconds (head arrival - request sent), the path rule (it names Ingress and Service;
# looked up here rather than on the request path), the client's protocol ("HTTP/1.1",
# "HTTP/2.0": nginx's $server_protocol).
Entry = tuple[
    bytes,
    bytes,
    bytes,
    bytes,
    int,
    int,
    float,
    str | None,
    bytes,
    str | None,
    bytes | None,
    int,
    float,
    PathRule | None,
    bytes,
]

BATCH = 128
XFF_LIMIT = 256  # bytes of X-Forwarded-For logged: it is client-controlled and may be long

# ".mmmZ" for every millisecond: one index instead of a format per line.
_MILLIS: Final = tuple(b".%03dZ" % i for i in range(1000))


# A byte that cannot stand as it is inside a JSON string: control characters (httptools lets
# only HTAB through), '"', '\\' and anything beyond ASCII.
_UNSAFE: Final = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _json_bytes(value: bytes) -> bytes:
    """`value` as the inside of a JSON string."""
    if _UNSAFE.search(value) is None:
        return value
    return json.dumps(value.decode("latin-1")).encode()[1:-1]


def _rule_fields(rule: PathRule) -> bytes:
    service = rule.service
    return b',"ingress":"%s","service":%s' % (
        rule.ingress.encode(),
        b"null" if service is None else b'"%s"' % service.encode(),
    )


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
        # One flat list of pieces joined once: an order of magnitude cheaper than a bytes
        # %-format per line (this runs once per request, on the event loop).
        out: list[bytes] = []
        extend = out.extend
        second = self._second
        stamp = self._stamp
        unsafe = _UNSAFE.search
        for when, e in entries:
            (
                client,
                method,
                host,
                target,
                status,
                sent,
                seconds,
                upstream,
                rid,
                reason,
                xff,
                upstream_status,
                upstream_seconds,
                rule,
                protocol,
            ) = e
            if unsafe(host + target + rid) is not None:
                host, target, rid = _json_bytes(host), _json_bytes(target), _json_bytes(rid)
            forwarded = b"null" if xff is None else b'"%s"' % _json_bytes(xff[:XFF_LIMIT])
            if int(when) != second:
                stamp = self._time(when)[:-5]
                second = self._second
            extend(
                (
                    b'{"time":"',
                    stamp,
                    _MILLIS[int(when * 1000) % 1000],
                    b'","event":"access","client":"',
                    client,
                    b'","forwarded_for":',
                    forwarded,
                    b',"method":"',
                    method,
                    b'","protocol":"',
                    protocol,
                    b'","host":"',
                    host,
                    b'","target":"',
                    target,
                    b'","status":%d,"bytes":%d,"ms":%.3f,"upstream":'
                    % (status, sent, seconds * 1000),
                    b"null" if upstream is None else b'"%s"' % upstream.encode(),
                    b',"upstream_status":null,"upstream_ms":null'
                    if not upstream_status
                    else b',"upstream_status":%d,"upstream_ms":%.3f'
                    % (upstream_status, upstream_seconds * 1000),
                    b',"ingress":null,"service":null' if rule is None else _rule_fields(rule),
                    b',"request_id":"',
                    rid,
                    b'"}\n' if reason is None else b'","reason":"%s"}\n' % reason.encode(),
                )
            )
        data = b"".join(out)
        try:
            stream = self.stream if self.stream is not None else sys.stdout.buffer
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not take the data path down
