"""Micro-benchmark of the proxy's per-request Python cost, with fake transports (no sockets).

Drives one DownstreamProtocol and one pooled UpstreamProtocol through keep-alive requests: a
client request read, the upstream head written, the pod's response read, the client response
written. Run: `.venv/bin/python -m tests.bench.hotpath [small|64k|chunked] [--profile]`.

`--secure`: the client connection is one of the HTTPS listener (TLS itself is not run: the
transports are fakes), so the proxy-wide HSTS response step applies. `--policy`: the route
carries a policy step run per request (a body limit the request is within).
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

from proxy.config import (
    DEFAULT_OPTIONS,
    Backend,
    BodyLimit,
    Endpoint,
    PathRule,
    RouteOptions,
    RouteTable,
    Snapshot,
    VirtualHost,
)
from proxy.downstream import DownstreamProtocol
from proxy.pool import Pool
from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from proxy.upstream import UpstreamProtocol

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
SMALL_BODY = b"x" * 100


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


class Sink:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def response(kind: str) -> list[bytes]:
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


def build(loop: asyncio.AbstractEventLoop) -> tuple[DownstreamProtocol, UpstreamProtocol]:
    options = RouteOptions(policy=(BodyLimit(1 << 20),)) if "--policy" in sys.argv else None
    rule = PathRule(
        "/",
        "prefix",
        "default/bench/80",
        "default/bench",
        None,
        80,
        "Prefix",
        options or DEFAULT_OPTIONS,
    )
    snap = Snapshot(
        RouteTable((VirtualHost("bench.local", (rule,)),)),
        (Backend("default/bench/80", (Endpoint("127.0.0.2", 18081),)),),
        (),
        1,
    )
    server = ProxyServer(ProxySettings(access_log="--no-log" not in sys.argv))
    server.use_loop(loop)
    server.apply(snap)
    if server.access is not None:
        server.access.stream = Sink()  # type: ignore[assignment]
    endpoint = Endpoint("127.0.0.2", 18081)
    up = UpstreamProtocol(
        server.pool, loop, endpoint, ("127.0.0.2", 18081), Pool.key(endpoint, None)
    )
    up.connection_made(FakeTransport(("127.0.0.2", 18081)))  # type: ignore[arg-type]
    server.pool.release(up)
    secure = "--secure" in sys.argv
    down = server.client_protocol("https" if secure else "http", 28443 if secure else 28080)
    down.connection_made(FakeTransport(("127.0.0.1", 40000)))  # type: ignore[arg-type]
    return down, up


def run(n: int, kind: str, down: DownstreamProtocol, up: UpstreamProtocol) -> None:
    pieces = response(kind)
    for _ in range(n):
        down.data_received(REQUEST)
        for p in pieces:
            up.data_received(p)


async def main() -> None:
    kind = next((a for a in sys.argv[1:] if not a.startswith("-")), "small")
    loop = asyncio.get_running_loop()
    down, up = build(loop)
    run(2000, kind, down, up)
    assert up.exchange is None and down.active is None, "request did not complete"
    n = 200000 if "--long" in sys.argv else 50000
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        run(n, kind, down, up)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    if "--once" in sys.argv:  # for `perf stat -e instructions`: a fixed amount of work
        run(n, kind, down, up)
        return
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        run(n, kind, down, up)
        best = min(best, (time.perf_counter() - t0) / n)
    print(f"{kind}: {best * 1e6:.2f} us/request")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
