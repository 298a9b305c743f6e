"""Fakes of what the code under test meets: a clock, transports, a proxy wired to them.

`FakeClock` is a monotonic clock a test moves instead of sleeping.

`FakeTransport` is just enough of asyncio.Transport for the protocols and counts what is
written; `RecordingTransport` also keeps the bytes and whether reading is paused. `build` wires
a real ProxyServer to one pooled upstream connection and one client connection on fake
transports, with one route (Host bench.local) to one endpoint: `REQUEST` fed to the client side
and `response(kind)` to the upstream side make one keep-alive request, with no socket and no
event-loop turn. Unit tests and the hot-path benchmark (tests/bench/hotpath.py) share them.

`proxy_v2` builds the PROXY protocol v2 header a load balancer sends (`AWS_TLV`: one of its
TLVs), for the unit and integration tests of proxy/proxyprotocol.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from proxy.config import (
    DEFAULT_OPTIONS,
    Backend,
    Endpoint,
    PathRule,
    RouteOptions,
    RouteTable,
    Snapshot,
    VirtualHost,
)
from proxy.downstream import DownstreamProtocol
from proxy.pool import Pool
from proxy.proxyprotocol import V2_SIGNATURE
from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from proxy.upstream import UpstreamProtocol

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
SMALL_BODY = b"x" * 100
POD = ("127.0.0.2", 18081)  # the upstream connection's peer
CLIENT = ("127.0.0.1", 40000)  # the client connection's peer


class FakeClock:
    """An injectable monotonic clock: tests move time instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Just enough of asyncio.Transport for the protocols."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.written += len(p)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class RecordingTransport(FakeTransport):
    """A FakeTransport that keeps the bytes written and whether reading is paused (a subclass,
    so that the benchmark's transports stay as cheap as they were)."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__(peer)
        self.data = bytearray()
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.data += data

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Sink:
    """Where the access log goes: nowhere."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def response(kind: str) -> list[bytes]:
    """The pod's response as the reads that bring it: "small" (100 bytes, one read), "64k"
    (Content-Length) or "chunked" (64 KiB in one chunk), both in 32 KiB reads."""
    if kind == "small":
        return [
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
            + SMALL_BODY
        ]
    body = b"y" * 65536
    if kind == "64k":
        head = (
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 65536\r\n"
            b"Last-Modified: Thu, 26 Nov 2026 11:00:00 GMT\r\nConnection: keep-alive\r\n"
            b'ETag: "abc-10000"\r\nAccept-Ranges: bytes\r\n\r\n'
        )
        data = head + body
        return [data[i : i + 32768] for i in range(0, len(data), 32768)]
    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    data = head + b"10000\r\n" + body + b"\r\n0\r\n\r\n"
    return [data[i : i + 32768] for i in range(0, len(data), 32768)]


def build(
    loop: asyncio.AbstractEventLoop,
    *,
    options: RouteOptions = DEFAULT_OPTIONS,
    secure: bool = False,
    access_log: bool = True,
    client: FakeTransport | None = None,
    regex_path: str | None = None,
) -> tuple[DownstreamProtocol, UpstreamProtocol]:
    """A proxy with one idle pooled connection to the pod and one client connection, of the
    HTTPS listener when `secure` (TLS itself is not run); the route carries `options`. The
    access log, when on, is written to a Sink; `client` is the client side's transport.
    `regex_path`: the route is that regex rule (use-regex) instead of Prefix "/"."""
    rule = PathRule("/", "prefix", "default/bench/80", "default/bench", None, 80, "Prefix", options)
    if regex_path is not None:
        rule = PathRule(regex_path, "regex", rule.backend, rule.ingress, None, 80, None, options)
    snap = Snapshot(
        RouteTable((VirtualHost("bench.local", (rule,)),)),
        (Backend("default/bench/80", (Endpoint(*POD),)),),
        (),
        1,
    )
    server = ProxyServer(ProxySettings(access_log=access_log))
    server.use_loop(loop)
    server.apply(snap)
    if server.access is not None:
        server.access.stream = Sink()  # type: ignore[assignment]
    endpoint = Endpoint(*POD)
    up = UpstreamProtocol(server.pool, loop, endpoint, POD, Pool.key(endpoint, None))
    up.connection_made(FakeTransport(POD))  # type: ignore[arg-type]
    server.pool.release(up)
    down = server.client_protocol("https" if secure else "http", 28443 if secure else 28080)
    down.connection_made(client or FakeTransport(CLIENT))  # type: ignore[arg-type]
    return down, up


def run(
    n: int, kind: str, down: DownstreamProtocol, up: UpstreamProtocol, request: bytes = REQUEST
) -> None:
    """`n` keep-alive requests through a built proxy, the pod answering `response(kind)`."""
    pieces = response(kind)
    for _ in range(n):
        down.data_received(request)
        for p in pieces:
            up.data_received(p)


# ---- PROXY protocol headers -------------------------------------------------------------------

AWS_TLV = b"\xea\x00\x17\x01vpce-08d2bf15fac5001c9"  # an NLB's VPC endpoint id


def proxy_v2(
    *,
    command: int = 1,
    family: int = 0x11,
    source: str = "192.0.2.1",
    destination: str = "198.51.100.1",
    ports: tuple[int, int] = (51234, 443),
    tlvs: bytes = b"",
    length: int | None = None,
    version: int = 2,
) -> bytes:
    """A v2 header (family 0x11: TCP over IPv4, 0x21: TCP over IPv6)."""
    addresses = b""
    if family >> 4 in (1, 2):
        addresses = (
            ipaddress.ip_address(source).packed
            + ipaddress.ip_address(destination).packed
            + ports[0].to_bytes(2, "big")
            + ports[1].to_bytes(2, "big")
        )
    elif family >> 4 == 3:
        addresses = b"\0" * 216
    body = addresses + tlvs
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + size.to_bytes(2, "big") + body
