"""The worker channel: framed messages between the controller's publisher and one worker.

Each worker process gets one end of a Unix socketpair. Frames are a 4-byte big-endian length, a
1-byte message type and the payload. The controller sends `SETTINGS` once, then `SNAPSHOT` (a
full encoded snapshot) or `ENDPOINTS` (an encoded endpoints-only update) whenever routing
changes, and `DRAIN` to shut the worker down gracefully. The worker answers every snapshot or
update with `ACK` or `NACK` (the version, and for a NACK the reason) and sends `READY` once its
listeners accept connections (with what its request path runs, as JSON: `proxy.native.report()`),
then `STATS` (a `WorkerStats`: its counters and per-request metrics) every second: the
controller aggregates them into metrics and treats their absence as a stalled event loop.

This module is the only wire contract besides `proxy.config`; the controller imports it, never
the other way round.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

_HEADER: Final = struct.Struct("!IB")
MAX_FRAME: Final = 1 << 30  # a 10,000-Ingress snapshot is a few MiB; anything near 1 GiB is a bug


class MessageType(enum.IntEnum):
    SETTINGS = 1
    SNAPSHOT = 2
    ENDPOINTS = 3
    ACK = 4
    NACK = 5
    READY = 6
    DRAIN = 7
    STATS = 8  # worker -> controller, every second: WorkerStats; doubles as a heartbeat


class ChannelClosed(ConnectionError):
    """The other end went away (EOF) or sent a frame that cannot be read."""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """The decoded payload of an ACK or NACK: which version, and why a NACK refused it."""

    version: int
    reason: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "reason": self.reason}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Reply:
        raw = json.loads(payload)
        return cls(int(raw["version"]), raw.get("reason"))


# The labels of one series of per-request cells (proxy/metrics.py): ingress "ns/name", service
# "ns/name", host, path pattern ("" where there is none), status class 0..9, method, client
# protocol ("HTTP/1.1", "HTTP/2.0": the access log's words).
SeriesKey = tuple[str, str, str, str, int, str, str]


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """A worker's per-request metrics (`proxy.metrics.RequestMetrics.export`).

    `series`: the cumulative cells (layout in proxy/metrics.py) of only the series that moved
    since the previous STATS; the controller replaces what it held for those. The rest are the
    worker's totals since it started.
    """

    series: Mapping[SeriesKey, tuple[float, ...]] = field(default_factory=dict)
    sizes: bool = False  # the cells carry the size histograms (--metrics-ingress-nginx-names)
    local_replies: Mapping[str, int] = field(default_factory=dict)  # by reason
    retries: int = 0  # attempts on another endpoint after a failed one
    ejections: int = 0  # endpoints ejected after a connect failure

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: a series is one row `[*key, *cell]`, whole numbers written as integers
        (most cells are counts: a third fewer bytes)."""
        rows = []
        for key, cell in self.series.items():
            row: list[Any] = list(key)
            row += [int(v) if v.is_integer() else v for v in cell]
            rows.append(row)
        return {
            "series": rows,
            "sizes": self.sizes,
            "local_replies": dict(self.local_replies),
            "retries": self.retries,
            "ejections": self.ejections,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RequestCounts:
        """The inverse of `to_json`; raises ValueError (or TypeError, KeyError) when malformed."""
        series: dict[SeriesKey, tuple[float, ...]] = {}
        for row in raw["series"]:
            key = (
                str(row[0]),
                str(row[1]),
                str(row[2]),
                str(row[3]),
                int(row[4]),
                str(row[5]),
                str(row[6]),
            )
            series[key] = tuple(float(v) for v in row[7:])
        return cls(
            series=series,
            sizes=bool(raw["sizes"]),
            local_replies={str(k): int(v) for k, v in raw["local_replies"].items()},
            retries=int(raw["retries"]),
            ejections=int(raw["ejections"]),
        )


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """The payload of STATS: what one worker counted (see `STATS_LEVELS` for which are levels)."""

    # Levels: what is open now (summed over live workers only).
    connections_open: int = 0
    tunnels_open: int = 0  # upgraded (WebSocket) connections
    upstream_connections_open: int = 0
    upstream_connections_idle: int = 0  # pooled
    # Counters since the worker started: they only grow (a worker that is gone keeps counting).
    connections_total: int = 0  # accepted
    connections_refused: int = 0  # closed at once, max connections reached
    requests: int = 0
    local_replies: int = 0  # answered or ended by the worker itself
    rejected: int = 0  # malformed or hostile requests refused
    upstream_connects: int = 0
    upstream_connect_failures: int = 0
    upstream_stale_retries: int = 0  # retried after a stale pooled connection
    # HTTP/2 to clients (proxy/h2server.py).
    http2_streams_open: int = 0  # a level
    http2_streams: int = 0
    http2_resets_received: int = 0
    http2_resets_sent: int = 0
    http2_goaways_sent: int = 0
    http2_flood_trips: int = 0
    request_metrics: RequestCounts = field(default_factory=RequestCounts)

    def counters(self) -> dict[str, int]:
        """The plain counters and levels by name (all fields but `request_metrics`)."""
        return {name: getattr(self, name) for name in STATS_COUNTERS}

    def encode(self) -> bytes:
        doc: dict[str, Any] = self.counters()
        doc["metrics"] = self.request_metrics.to_json()
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> WorkerStats:
        """Raises ValueError (or TypeError, KeyError) on a malformed payload."""
        raw = json.loads(payload)
        counters = {name: int(raw[name]) for name in STATS_COUNTERS}
        return cls(**counters, request_metrics=RequestCounts.from_json(raw["metrics"]))


# Every plain counter of a STATS, and those of them that are levels rather than monotonic.
STATS_COUNTERS: Final = tuple(f.name for f in fields(WorkerStats) if f.name != "request_metrics")
STATS_LEVELS: Final = frozenset(
    {
        "connections_open",
        "tunnels_open",
        "upstream_connections_open",
        "upstream_connections_idle",
        "http2_streams_open",
    }
)


def frame(message: Message) -> bytes:
    return _HEADER.pack(len(message.payload), message.type) + message.payload


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Read one frame; raises ChannelClosed on EOF or a malformed frame."""
    try:
        header = await reader.readexactly(_HEADER.size)
        length, kind = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ChannelClosed(f"frame of {length} bytes exceeds the limit")
        payload = await reader.readexactly(length)
        return Message(MessageType(kind), payload)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc) or "channel closed") from exc
    except ValueError as exc:  # unknown message type
        raise ChannelClosed(f"bad frame: {exc}") from exc


async def send_message(writer: asyncio.StreamWriter, message: Message) -> None:
    writer.write(frame(message))
    await writer.drain()
