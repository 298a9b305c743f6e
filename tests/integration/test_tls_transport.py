"""The HTTPS listener's own TLS transport (proxy/tlsserver.py), over real sockets.

First the transport contract on its own (a test protocol behind a `TLSListener`): handshakes
that fail or never finish, flow control both ways, close_notify, EOF, abort, listener close.
Then the proxy's HTTPS path with large bodies and slow peers: bytes intact, buffers bounded.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import hashlib
import socket
import ssl
import termios
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from backends import Client, Pod, pattern, render_request, snapshot
from tls_env import client_context

from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from proxy.tls import self_signed_certificate, server_context
from proxy.tlsserver import HIGH_WATER, TLSListener, TLSTransport

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.uvloop,
]

MiB = 1 << 20


class Recorder(asyncio.Protocol):
    """Records what the transport tells it; `on_made` lets a test act on connect."""

    def __init__(self, on_made: Callable[[Recorder], None] | None = None) -> None:
        self.on_made = on_made
        self.on_resume: Callable[[Recorder], None] | None = None
        self.transport: TLSTransport | None = None
        self.data = bytearray()
        self.chunks: list[bytes] = []  # each data_received call's bytes
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.write_paused = False
        self.pauses = 0
        self.resumed = asyncio.Event()
        self.received = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TLSTransport)
        self.transport = transport
        self.events.append("made")
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.data += data
        self.chunks.append(data)
        self.received.set()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pauses += 1
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resumed.set()
        if self.on_resume is not None:
            self.on_resume(self)


class Server:
    def __init__(self, listener: TLSListener, protocols: list[Recorder]) -> None:
        self.listener = listener
        self.protocols = protocols
        self.port: int = listener.sockets[0].getsockname()[1]

    async def protocol(self, index: int = 0) -> Recorder:
        for _ in range(200):
            if len(self.protocols) > index and self.protocols[index].transport is not None:
                return self.protocols[index]
            await asyncio.sleep(0.01)
        raise AssertionError("no connection was made")


@contextlib.asynccontextmanager
async def tls_server(
    on_made: Callable[[Recorder], None] | None = None,
    handshake_timeout: float = 5.0,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> AsyncIterator[Server]:
    loop = asyncio.get_running_loop()
    context = server_context(self_signed_certificate(), alpn=alpn)
    sock = socket.create_server(("127.0.0.1", 0))
    protocols: list[Recorder] = []

    def factory() -> Recorder:
        protocol = Recorder(on_made)
        protocols.append(protocol)
        return protocol

    listener = TLSListener(loop, sock, context, factory, handshake_timeout)
    try:
        yield Server(listener, protocols)
    finally:
        listener.close()
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.abort()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=client_context(), server_hostname=""),
        5.0,
    )


async def read_all(reader: asyncio.StreamReader, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        data = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert data, f"EOF after {got} of {size} bytes"
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


# ---- the transport on its own ----------------------------------------------------------------


def greeting(text: bytes) -> Callable[[Recorder], None]:
    def greet(p: Recorder) -> None:
        assert p.transport is not None
        p.transport.write(text)

    return greet


async def test_round_trip_and_connection_facts() -> None:
    async with tls_server(greeting(b"ready")) as server:
        reader, writer = await connect(server.port)
        assert await reader.readexactly(5) == b"ready"
        protocol = await server.protocol()
        transport = protocol.transport
        assert transport is not None
        writer.write(b"hello")
        await asyncio.wait_for(protocol.received.wait(), 5)
        assert bytes(protocol.data) == b"hello"
        assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert transport.get_extra_info("sockname")[1] == server.port
        tls = transport.get_extra_info("ssl_object")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() is None  # the client offered none
        assert transport.get_extra_info("no such thing", 7) == 7
        assert not transport.can_write_eof()
        assert server.listener.handshaking == set()
        writer.close()


def send_records_at_once(port: int, alpn: str, records: list[bytes]) -> socket.socket:
    """A client that completes its handshake (offering `alpn`), then writes each of `records`
    as a TLS record of its own, all in one send: the server finds them in its socket together."""
    context = client_context()
    context.set_alpn_protocols([alpn])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    raw.sendall(outgoing.read())
    assert tls.selected_alpn_protocol() == alpn
    time.sleep(0.2)  # the server finishes its side of the handshake first
    for record in records:
        tls.write(record)
    raw.sendall(outgoing.read())
    return raw


@pytest.mark.parametrize(
    ("alpn", "reads"),
    [
        ("h2", [b"onetwothree"]),
        ("http/1.1", [b"one", b"two", b"three"]),
    ],
)
async def test_a_multiplexed_connection_takes_every_record_in_one_read(
    alpn: str, reads: list[bytes]
) -> None:
    """With ALPN h2 the records the client wrote together reach the protocol in one
    data_received (its streams are answered in one write); an HTTP/1.1 connection gets a
    record per readiness event, as it reads one request at a time."""
    async with tls_server(alpn=("h2", "http/1.1")) as server:
        raw = await asyncio.to_thread(
            send_records_at_once, server.port, alpn, [b"one", b"two", b"three"]
        )
        try:
            protocol = await server.protocol()
            for _ in range(500):
                if len(protocol.data) >= 11:
                    break
                await asyncio.sleep(0.01)
            assert protocol.chunks == reads
        finally:
            raw.close()


async def test_records_then_the_clients_close_in_one_burst() -> None:
    """A multiplexed read that meets the end of the connection after some records hands
    those records over first, then reports the EOF once."""
    async with tls_server(alpn=("h2", "http/1.1")) as server:

        def send_and_close() -> None:
            send_records_at_once(server.port, "h2", [b"last", b"words"]).close()

        await asyncio.to_thread(send_and_close)
        protocol = await server.protocol()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert bytes(protocol.data) == b"lastwords"
        assert protocol.events == ["made", "eof", "lost"]


async def test_writelines_joins_small_pieces_and_keeps_views() -> None:
    big = pattern(3 * MiB)

    def send(p: Recorder) -> None:
        assert p.transport is not None
        p.transport.writelines([b"a", b"b", memoryview(b"xcx")[1:2]])
        p.transport.writelines([b"head:", memoryview(big)])

    async with tls_server(send) as server:
        reader, writer = await connect(server.port)
        assert await read_all(reader, 3 + 5 + len(big)) == b"abc" + b"head:" + big
        writer.close()


async def test_a_burst_of_records_is_corked_until_its_last_record() -> None:
    """A write of more than one record sets TCP_CORK and clears it once written, so the
    records leave as full segments and nothing waits for the kernel's 200 ms cork cap."""
    big = pattern(40 * 1024)
    corks: list[int] = []
    after_small: list[int] = []
    left_corked: list[int] = []

    def send(p: Recorder) -> None:
        transport = p.transport
        assert transport is not None
        sock = transport.sock
        real = sock.setsockopt

        def spy(level: int, option: int, value: Any) -> None:
            if option == socket.TCP_CORK:
                corks.append(value)
            real(level, option, value)

        sock.setsockopt = spy  # type: ignore[method-assign]
        transport.write(b"one record")
        transport.writelines([b"head:", b"more:"])
        after_small.extend(corks)
        transport.writelines([b"head:", memoryview(big)])
        transport.write(big)
        left_corked.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))

    async with tls_server(send) as server:
        reader, writer = await connect(server.port)
        size = 10 + 10 + 5 + 2 * len(big)
        got = await read_all(reader, size)
        assert got == b"one recordhead:more:head:" + big + big
        writer.close()
    assert after_small == []  # a single record goes out as it is
    assert left_corked == [0]
    assert len(corks) >= 4 and corks[:2] == [1, 0]
    assert corks == [1, 0] * (len(corks) // 2)


async def test_a_slow_reader_pauses_the_writer_and_gets_every_byte() -> None:
    """The protocol writes whenever it may; a client not reading makes the transport pause it
    near the high-water mark, and every byte arrives in order once the client reads."""
    total = 48 * MiB
    piece = pattern(256 * 1024)
    state = {"sent": 0, "max_buffered": 0}

    def produce(p: Recorder) -> None:
        transport = p.transport
        assert transport is not None
        p.on_resume = produce
        while state["sent"] < total and not p.write_paused:
            transport.write(piece)
            state["sent"] += len(piece)
            state["max_buffered"] = max(state["max_buffered"], transport.get_write_buffer_size())

    async with tls_server(produce) as server:
        reader, writer = await connect(server.port)
        protocol = await server.protocol()
        await asyncio.sleep(0.3)  # not reading: socket buffers fill, then the transport's
        assert protocol.write_paused and protocol.pauses >= 1
        assert state["sent"] < total
        digest = hashlib.sha256()
        got = 0
        while got < total:
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert data
            digest.update(data)
            got += len(data)
        assert got == total
        assert digest.digest() == hashlib.sha256(piece * (total // len(piece))).digest()
        # A write that would not go through is kept whole (OpenSSL must see it again), plus
        # at most what the protocol wrote before it was paused.
        assert state["max_buffered"] <= HIGH_WATER + 2 * len(piece)
        writer.close()


def unread_bytes(sock: socket.socket) -> int:
    """Bytes in a socket's kernel receive queue (FIONREAD), not yet read by anyone."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


async def test_pause_reading_holds_bytes_back_until_resumed() -> None:
    def pause(p: Recorder) -> None:
        assert p.transport is not None
        p.transport.pause_reading()

    async with tls_server(pause) as server:
        _, writer = await connect(server.port)
        protocol = await server.protocol()
        body = pattern(4 * MiB)
        writer.write(body)
        # The positive first: the bytes have reached the server's socket (its receive queue is
        # not empty); only then does "nothing read" say that pause_reading held them back.
        assert protocol.transport is not None
        server_socket = protocol.transport.get_extra_info("ssl_object")
        async with asyncio.timeout(10):
            while unread_bytes(server_socket) == 0:
                await asyncio.sleep(0.01)
        assert len(protocol.data) == 0
        assert protocol.transport is not None and not protocol.transport.is_reading()
        protocol.transport.resume_reading()
        for _ in range(500):
            if len(protocol.data) == len(body):
                break
            await asyncio.sleep(0.01)
        assert bytes(protocol.data) == body
        writer.close()


def _read_until_close(port: int, request: bytes) -> tuple[bytes, str]:
    """Blocking client that tells a close_notify (clean EOF) from a bare TCP close."""
    context = client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(request)
        data = b""
        try:
            while chunk := tls.recv(65536):
                data += chunk
        except ssl.SSLEOFError:
            return data, "ragged"
        return data, "close_notify"


async def test_close_writes_what_is_buffered_then_close_notify() -> None:
    big = pattern(8 * MiB)

    def reply_and_close(p: Recorder) -> None:
        assert p.transport is not None
        p.transport.write(big)
        p.transport.close()
        assert p.transport.is_closing()
        p.transport.write(b"ignored after close")

    async with tls_server(reply_and_close) as server:
        data, how = await asyncio.to_thread(_read_until_close, server.port, b"x")
        assert data == big
        assert how == "close_notify"
        protocol = await server.protocol()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.events == ["made", "lost"]


async def test_client_close_gives_eof_then_one_connection_lost() -> None:
    async with tls_server() as server:
        _, writer = await connect(server.port)
        protocol = await server.protocol()
        writer.write(b"last words")
        writer.close()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        await asyncio.sleep(0.05)
        assert bytes(protocol.data) == b"last words"
        assert protocol.events == ["made", "eof", "lost"]


async def test_abort_drops_the_buffer_and_closes_at_once() -> None:
    def flood_then_abort(p: Recorder) -> None:
        assert p.transport is not None
        p.transport.write(pattern(16 * MiB))
        assert p.transport.get_write_buffer_size() > 0
        p.transport.abort()
        assert p.transport.get_write_buffer_size() == 0

    async with tls_server(flood_then_abort) as server:
        reader, writer = await connect(server.port)
        protocol = await server.protocol()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        got = 0
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await asyncio.wait_for(reader.read(1 << 20), 5):
                got += len(data)
        assert got < 16 * MiB
        assert protocol.events == ["made", "lost"]
        writer.close()


async def test_a_protocol_error_closes_that_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Exception):
        pass

    def explode_on_data(p: Recorder) -> None:
        def data_received(data: bytes) -> None:
            raise Broken("bug")

        p.data_received = data_received  # type: ignore[method-assign]

    async with tls_server(explode_on_data) as server:
        reader, writer = await connect(server.port)
        protocol = await server.protocol()
        writer.write(b"boom")
        assert isinstance(await asyncio.wait_for(protocol.lost, 5), Broken)
        assert any(r.getMessage() == "tls.protocol_error" for r in caplog.records)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # Other connections are served.
        reader, writer = await connect(server.port)
        assert (await server.protocol(1)).events == ["made"]
        writer.close()


async def test_a_silent_connection_is_dropped_after_the_handshake_timeout() -> None:
    async with tls_server(handshake_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        assert len(server.listener.handshaking) == 1
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        assert server.listener.handshaking == set()
        assert server.protocols[0].events == []  # the protocol never saw a connection
        writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP on the HTTPS port
        b"\x16\x03\x01\x00\x05hello",  # a broken ClientHello
        b"\x00" * 2048,
    ],
    ids=["plain-http", "broken-hello", "zeros"],
)
async def test_a_failed_handshake_closes_that_connection_only(garbage: bytes) -> None:
    async with tls_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(garbage)
        try:
            data = await asyncio.wait_for(reader.read(), 3)
        except ConnectionResetError:  # closed with the garbage unread
            data = b""
        assert b"HTTP" not in data  # at most a TLS alert
        writer.close()
        assert server.protocols[0].events == []
        assert server.listener.handshaking == set()
        # The listener goes on accepting.
        reader, writer = await connect(server.port)
        protocol = await server.protocol(1)
        assert protocol.events == ["made"]
        writer.close()


async def test_closing_the_listener_keeps_open_connections() -> None:
    async with tls_server(greeting(b"hi")) as server:
        reader, writer = await connect(server.port)
        assert await reader.readexactly(2) == b"hi"
        protocol = await server.protocol()
        server.listener.close()
        await server.listener.wait_closed()
        with pytest.raises(OSError):
            await connect(server.port)
        writer.write(b"still here")
        await asyncio.wait_for(protocol.received.wait(), 5)
        assert bytes(protocol.data) == b"still here"
        writer.close()


# ---- the proxy's HTTPS path --------------------------------------------------------------------


@pytest.fixture
async def https_stack() -> AsyncIterator[tuple[ProxyServer, Pod]]:
    pod = await Pod("127.0.0.2").start()
    proxy = ProxyServer(ProxySettings(access_log=False, max_body_bytes=0))  # 32 MiB uploads
    proxy.apply(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    await proxy.start(host="127.0.0.1", http=False, https_port=0)
    yield proxy, pod
    await proxy.shutdown(0.5)
    await pod.stop()


def client_buffered(proxy: ProxyServer) -> int:
    return sum(c.transport.get_write_buffer_size() for c in proxy.clients)


async def test_https_download_to_a_slow_reader_stays_bounded(
    https_stack: tuple[ProxyServer, Pod],
) -> None:
    proxy, _ = https_stack
    size = 64 * MiB
    reader, writer = await connect(proxy.https_port)
    writer.write(render_request("GET", f"/stream?n={size}"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.3)  # not reading: the pod must be paused, not buffered
    upstream = next(iter(proxy.pool.conns))
    assert upstream.transport is not None and upstream.transport.is_reading() is False
    most = client_buffered(proxy)
    assert most < 2 * MiB
    digest = hashlib.sha256()
    got = 0
    while got < size:
        data = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert data
        digest.update(data)
        got += len(data)
        most = max(most, client_buffered(proxy))
    assert got == size
    assert digest.digest() == hashlib.sha256(pattern(size)).digest()
    assert most < 2 * MiB, most
    writer.close()


async def test_https_upload_and_keep_alive(https_stack: tuple[ProxyServer, Pod]) -> None:
    proxy, _ = https_stack
    reader, writer = await connect(proxy.https_port)
    client = Client(reader, writer)
    size = 32 * MiB
    block = pattern(MiB)
    writer.write(render_request("POST", "/sink", [("Content-Length", str(size))]))
    for _ in range(size // MiB):
        writer.write(block)
        await writer.drain()
    resp = await client.response(timeout=30)
    assert resp.status == 200 and resp.json()["length"] == size
    # The same TLS connection serves the next requests (pipelined too).
    writer.write(render_request("GET", "/echo") + render_request("GET", "/echo?second=1"))
    first, second = await client.response(), await client.response()
    assert first.status == second.status == 200
    assert second.json()["target"] == "/echo?second=1"
    headers: dict[str, Any] = {k.lower(): v for k, v in second.json()["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    await client.close()
