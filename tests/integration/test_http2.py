"""HTTP/2 to clients (issue 19 items 1-3), through real sockets to test pods.

`curl --http2` (ALPN h2 on the HTTPS listener) and `curl --http2-prior-knowledge` (`--h2c` on
the plain one) as real clients; hyper-h2 over a socket as a raw client where the test must send
what curl would not (malformed requests, several streams at once, floods). Each stream is an
HTTP/1.1 exchange to the pod: what the pod saw is asserted as well as what the client got.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from backends import Pod, snapshot
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)
from serving import eventually

from proxy import h2codec
from proxy.config import DEFAULT_OPTIONS, HTTPSRedirect
from proxy.h2server import STREAM_HIGH, H2Connection
from proxy.metrics import DURATION
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

pytestmark = pytest.mark.timeout(60)

HOST = "h2.test"


async def start(pod: Pod, **settings: Any) -> ProxyServer:
    """A proxy with an HTTP and an HTTPS listener (the fallback certificate) to `pod`."""
    settings.setdefault("access_log", False)
    proxy = ProxyServer(ProxySettings(**settings))
    proxy.apply(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    return proxy


async def curl(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of curl with `args`."""
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def seen(doc: dict[str, Any]) -> dict[str, str]:
    """The pod's echo document's header fields, by lower-case name."""
    return {name.lower(): value for name, value in doc["headers"]}


class RawClient:
    """hyper-h2 over a TCP connection: sends what it is told, collects events by stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.ack = True  # acknowledge response data as it is read (opening the windows)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.h2.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)

    async def read(self) -> bool:
        """One read; False at the end of the connection (closed or reset)."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived) and self.ack:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        return True

    def request(
        self,
        path: str,
        method: str = "GET",
        *,
        body: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        authority: str = HOST,
        end: bool = True,
    ) -> int:
        stream_id: int = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *(extra or []),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=body is None and end)
        if body is not None and end:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """A request body as the windows admit it (read while they are shut)."""
        view = memoryview(body)
        while view:
            window = min(self.h2.local_flow_control_window(stream_id), 16_384)
            if window <= 0:
                assert await self.read(), "connection closed during the upload"
                continue
            self.h2.send_data(stream_id, bytes(view[:window]), end_stream=len(view) <= window)
            view = view[window:]
            self.flush()

    async def response(self, stream_id: int) -> tuple[dict[bytes, bytes], bytes, int | None]:
        """(fields, body, reset code or None) of a stream, once it ended."""
        while not self._done(stream_id):
            if not await self.read():
                break
        fields: dict[bytes, bytes] = {}
        body = b""
        reset = None
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                fields = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
            elif isinstance(event, h2.events.StreamReset):
                reset = event.error_code
        return fields, body, reset

    def _done(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
            and e.stream_id == stream_id
            for e in self.events
        )

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def h2c(pod: Pod) -> AsyncIterator[ProxyServer]:
    proxy = await start(pod, h2c=True, http2_max_requests=1000, max_body_bytes=0)
    yield proxy
    await proxy.shutdown(1.0)


# ---- real clients -------------------------------------------------------------------------


async def test_curl_http2_over_tls_alpn(pod: Pod) -> None:
    """Issue 19 item 1: ALPN h2 on the HTTPS listener, on by default; the pod gets HTTP/1.1
    with the forwarded fields of an HTTPS request."""
    proxy = await start(pod)
    try:
        url = f"https://{HOST}:{proxy.https_port}/echo?via=h2"
        resolve = f"{HOST}:{proxy.https_port}:127.0.0.1"
        code, out, err = await curl(
            "-k", "--http2", "--resolve", resolve, "-w", "\n%{http_version}", url
        )
        assert code == 0, err
        body, version = out.rsplit("\n", 1)
        assert version == "2"
        doc = json.loads(body)
        assert doc["version"] == "1.1" and doc["target"] == "/echo?via=h2"
        fields = seen(doc)
        assert fields["host"] == f"{HOST}:{proxy.https_port}"
        assert fields["x-forwarded-proto"] == "https"
    finally:
        await proxy.shutdown(1.0)


async def test_no_http2_offers_only_http11(pod: Pod) -> None:
    """`--no-http2`: ALPN offers http/1.1 alone; curl --http2 falls back to it."""
    proxy = await start(pod, http2=False)
    try:
        url = f"https://127.0.0.1:{proxy.https_port}/echo"
        code, out, err = await curl(
            "-k", "--http2", "-o", "/dev/null", "-w", "%{http_version}", url
        )
        assert (code, out) == (0, "1.1"), err
    finally:
        await proxy.shutdown(1.0)


async def test_curl_prior_knowledge_h2c(pod: Pod, h2c: ProxyServer) -> None:
    """Issue 19 item 1: `--h2c` takes HTTP/2 with prior knowledge on the plain listener, and
    HTTP/1.1 on the same port still works (told apart by the preface)."""
    url = f"http://127.0.0.1:{h2c.http_port}/echo"
    code, out, err = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}", url)
    assert code == 0, err
    body, version = out.rsplit("\n", 1)
    assert version == "2"
    assert seen(json.loads(body))["x-forwarded-proto"] == "http"
    code, out, err = await curl("-o", "/dev/null", "-w", "%{http_version}", url)
    assert (code, out) == (0, "1.1"), err


async def test_h2c_off_by_default(pod: Pod) -> None:
    """Without `--h2c` the plain listener is HTTP/1.1 only: the preface is refused."""
    proxy = await start(pod)
    try:
        url = f"http://127.0.0.1:{proxy.http_port}/echo"
        code, _, _ = await curl("--http2-prior-knowledge", url)
        assert code != 0
        assert pod.requests == 0
    finally:
        await proxy.shutdown(1.0)


@pytest.mark.parametrize("size", [0, 1000, 70_000, 1_000_000])
async def test_response_bodies_through_the_windows(pod: Pod, h2c: ProxyServer, size: int) -> None:
    """Response bodies larger than the client's windows arrive whole (issue 19 item 2)."""
    url = f"http://127.0.0.1:{h2c.http_port}/stream?n={size}"
    code, out, err = await curl(
        "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url
    )
    assert (code, out) == (0, f"200 {size}"), err


# ---- what the pod is sent -----------------------------------------------------------------


async def test_body_without_length_is_chunked_to_the_pod(pod: Pod, h2c: ProxyServer) -> None:
    """A request body of unknown length (no content-length, as gRPC sends) reaches the HTTP/1.1
    pod whole, chunked; uploads past the stream window flow as the pod takes them."""
    client = await RawClient.connect(h2c.http_port)
    try:
        body = bytes(range(256)) * 4096  # 1 MiB, 16 times the initial window
        stream = client.request("/sink", "POST", body=b"", end=False)
        await client.send_body(stream, body)
        fields, answer, reset = await client.response(stream)
        assert reset is None and fields[b":status"] == b"200"
        doc = json.loads(answer)
        assert doc == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    finally:
        await client.close()


async def test_request_fields_for_http11(pod: Pod, h2c: ProxyServer) -> None:
    """RFC 9113 §8.2.3 cookie crumbs become one field; :authority is the Host."""
    client = await RawClient.connect(h2c.http_port)
    try:
        stream = client.request(
            "/echo",
            extra=[(b"cookie", b"a=1"), (b"x-app", b"yes"), (b"cookie", b"b=2")],
        )
        fields, body, _ = await client.response(stream)
        assert fields[b":status"] == b"200"
        doc = json.loads(body)
        headers = seen(doc)
        assert headers["cookie"] == "a=1; b=2"
        assert headers["host"] == HOST
        assert headers["x-app"] == "yes"
    finally:
        await client.close()


# Malformed requests (issue 19 item 3): a stream error, never forwarded; RFC 9113 sections.
MALFORMED = [
    ("connection field (§8.2.2)", [(b"connection", b"close")]),
    ("transfer-encoding (§8.2.2)", [(b"transfer-encoding", b"chunked")]),
    ("te other than trailers (§8.2.2)", [(b"te", b"gzip")]),
    ("CR in a value (§8.2.1)", [(b"x-a", b"a\rb")]),
    ("LF in a value (§8.2.1)", [(b"x-a", b"a\nb")]),
    ("NUL in a value (§8.2.1)", [(b"x-a", b"a\x00b")]),
    ("Host other than :authority (§8.3.1)", [(b"host", b"other.test")]),
]


@pytest.mark.parametrize(("case", "extra"), MALFORMED, ids=[c for c, _ in MALFORMED])
async def test_malformed_requests_never_reach_the_pod(
    pod: Pod, h2c: ProxyServer, case: str, extra: list[tuple[bytes, bytes]]
) -> None:
    client = await RawClient.connect(h2c.http_port)
    try:
        stream = client.request("/echo", extra=extra)
        _, _, reset = await client.response(stream)
        assert reset == 1, case  # PROTOCOL_ERROR
        # The connection goes on, and the next request is served.
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
        assert pod.requests == 1
        # Issue 19 item 7: the reset sent is counted (the codec's or Portico's alike).
        assert h2c.stats.http2_resets_sent == 1
        assert h2c.stats.http2_resets_received == 0
    finally:
        await client.close()


async def test_content_length_mismatch_is_not_forwarded_whole(pod: Pod, h2c: ProxyServer) -> None:
    """More DATA than content-length: the stream is reset; the pod never gets a complete
    request (its connection is closed, not reused)."""
    client = await RawClient.connect(h2c.http_port)
    try:
        stream = client.request("/sink", "POST", body=b"x" * 20, extra=[(b"content-length", b"10")])
        _, _, reset = await client.response(stream)
        assert reset == 1
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
    finally:
        await client.close()


# ---- streams and the connection -----------------------------------------------------------


async def test_concurrent_streams_on_one_connection(pod: Pod, h2c: ProxyServer) -> None:
    client = await RawClient.connect(h2c.http_port)
    try:
        streams = [client.request(f"/slow?delay=0.2&i={i}") for i in range(20)]
        ids = set()
        for stream in streams:
            fields, body, reset = await client.response(stream)
            assert reset is None and fields[b":status"] == b"200"
            ids.add(seen(json.loads(body))["x-request-id"])
        assert len(ids) == 20
    finally:
        await client.close()


async def test_local_answers_in_http2(pod: Pod, h2c: ProxyServer) -> None:
    """Portico's own answers (here a 405 for CONNECT) are HTTP/2 responses on their stream."""
    client = await RawClient.connect(h2c.http_port)
    try:
        stream = client.request("/", method="OPTIONS", extra=[])
        fields, _, _ = await client.response(stream)
        assert fields[b":status"] == b"200"
        client.h2.send_headers(
            3, [(b":method", b"CONNECT"), (b":authority", b"x.test:443")], end_stream=True
        )
        client.flush()
        fields, body, reset = await client.response(3)
        assert reset is None
        assert fields[b":status"] == b"405" and body.startswith(b"405")
        assert fields[b"server"] == b"portico"
    finally:
        await client.close()


async def test_graceful_goaway_after_max_requests(pod: Pod) -> None:
    """`--http2-max-requests N`: after N streams a graceful GOAWAY; curl finishes what it
    sent and opens a new connection for the rest (ingress-nginx's http2-max-requests). Over
    TLS: Debian's curl 7.88.1 cannot reuse an h2c prior-knowledge connection (curl#10634)."""
    proxy = await start(pod, http2_max_requests=3)
    try:
        url = f"https://127.0.0.1:{proxy.https_port}/echo"
        code, out, err = await curl(
            "-k",
            "--http2",
            "-w",
            "%{http_version} %{http_code} %{num_connects}\n",
            *["-o", "/dev/null", url] * 5,
        )
        assert code == 0, err
        assert out.split("\n")[:5] == ["2 200 1", "2 200 0", "2 200 0", "2 200 1", "2 200 0"]
    finally:
        await proxy.shutdown(1.0)


async def test_rapid_reset_ends_the_connection(pod: Pod, h2c: ProxyServer) -> None:
    """CVE-2023-44487 through a socket: streams opened and reset at once end the connection
    (GOAWAY, then close); the proxy serves the next client."""
    client = await RawClient.connect(h2c.http_port)
    reading = asyncio.create_task(_read_to_end(client))
    sent = 0
    try:
        for i in range(5000):
            if reading.done():
                break
            stream = client.request(f"/echo?i={i}")
            client.h2.reset_stream(stream)
            client.flush()
            sent += 1
            if i % 50 == 0:
                await client.writer.drain()
    except ConnectionError:
        pass
    finally:
        await asyncio.wait_for(reading, 10)
        await client.close()
    # libnghttp2's limit: a burst of 1000 resets, then 33 a second; its GOAWAY says
    # INTERNAL_ERROR. A stream opened and reset in one read never reaches the pod.
    goaway = client.goaway()
    assert client.closed
    assert goaway is not None and goaway.error_code == 2
    assert goaway.last_stream_id < 2 * 1100
    assert pod.requests <= 10
    stats = h2c.stats
    assert stats.http2_resets_received >= 1000
    assert (stats.http2_flood_trips, stats.http2_goaways_sent) == (1, 1)
    again = await RawClient.connect(h2c.http_port)
    try:
        fields, _, _ = await again.response(again.request("/echo"))
        assert fields[b":status"] == b"200"
    finally:
        await again.close()


async def _read_to_end(client: RawClient) -> None:
    try:
        while await client.read():
            pass
    except (h2.exceptions.ProtocolError, TimeoutError):
        client.closed = True


# ---- flow control end to end, timeouts, drain (issue 19 items 2, 3, 6) ---------------------


def only_stream(proxy: ProxyServer) -> tuple[H2Connection, Any] | None:
    """The proxy's one HTTP/2 client connection and its one open stream, if there is one."""
    for conn in proxy.connections.clients:
        if isinstance(conn, H2Connection) and len(conn.streams) == 1:
            return conn, next(iter(conn.streams.values()))
    return None


async def test_client_not_reading_pauses_the_pod(pod: Pod, h2c: ProxyServer) -> None:
    """A client whose windows stay shut: Portico queues at most STREAM_HIGH plus one read of
    the response and stops reading the pod; the rest flows once the client reads."""
    client = await RawClient.connect(h2c.http_port)
    client.ack = False
    try:
        size = 8 * 1024 * 1024
        stream = client.request(f"/stream?n={size}")

        async def paused() -> H2Connection | None:
            await asyncio.sleep(0)
            found = only_stream(h2c)
            exchange = found[1].exchange if found is not None else None
            upstream = exchange.conn if exchange is not None else None
            if upstream is None or upstream.transport is None:
                return None
            return None if upstream.transport.is_reading() else found[0]

        reading = asyncio.create_task(_read_to_end(client))
        conn = await eventually(paused, limit=10)
        assert conn.codec.queued(stream) <= STREAM_HIGH + 256 * 1024
        assert h2c.worker_stats().http2_streams_open == 1
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        client.ack = True
        client.h2.acknowledge_received_data(
            sum(
                e.flow_controlled_length
                for e in client.events
                if isinstance(e, h2.events.DataReceived)
            ),
            stream,
        )
        client.flush()
        _, body, reset = await client.response(stream)
        assert reset is None and len(body) == size
    finally:
        await client.close()


async def test_pod_not_reading_shuts_the_clients_window(pod: Pod, h2c: ProxyServer) -> None:
    """A pod that takes the body slowly: the client's window is reopened only as the pod takes
    the body, so what Portico holds for the pod stays bounded (a window and a transport
    buffer, not the upload); the whole body still arrives."""
    client = await RawClient.connect(h2c.http_port)
    try:
        body = bytes(range(256)) * (64 * 1024)  # 16 MiB
        stream = client.request("/slow-read?delay=0.02", "POST", body=b"", end=False)
        held = 0
        view = memoryview(body)
        while view:
            window = min(client.h2.local_flow_control_window(stream), 16_384)
            if window <= 0:
                assert await client.read()
                found = only_stream(h2c)
                exchange = found[1].exchange if found is not None else None
                if exchange is not None and exchange.conn is not None:
                    held = max(held, exchange.conn.transport.get_write_buffer_size())
                continue
            client.h2.send_data(stream, bytes(view[:window]), end_stream=len(view) <= window)
            view = view[window:]
            client.flush()
            await client.writer.drain()
        fields, answer, _ = await client.response(stream)
        assert fields[b":status"] == b"200"
        assert json.loads(answer)["sha256"] == hashlib.sha256(body).hexdigest()
        assert held <= 512 * 1024
    finally:
        await client.close()


async def test_client_body_timeout_answers_408_on_the_stream(pod: Pod) -> None:
    """A client that stops sending a request body gets 408 on that stream; the connection and
    its other streams go on (nginx's client_body_timeout)."""
    proxy = await start(pod, h2c=True, client_body_timeout=0.3)
    client = await RawClient.connect(proxy.http_port)
    try:
        stream = client.request("/sink", "POST", body=b"", end=False)
        client.h2.send_data(stream, b"partial")
        client.flush()
        fields, _, reset = await client.response(stream)
        assert reset in (None, 0) and fields[b":status"] == b"408"
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
    finally:
        await client.close()
        await proxy.shutdown(1.0)


async def _dribble(client: RawClient, frames: bytes) -> None:
    """Send `frames` a byte every 50 ms (a slowloris), until the connection ends."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(frames)):
            client.writer.write(frames[i : i + 1])
            await client.writer.drain()
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "other_stream",
    [
        pytest.param(False, id="alone"),
        pytest.param(True, id="beside-a-stream-owing-its-body"),
    ],
)
async def test_header_block_dribbled_ends_at_the_header_timeout(
    pod: Pod, other_stream: bool
) -> None:
    """Issue 19 item 3, nginx's client_header_timeout on a partial frame: a HEADERS frame
    whose CONTINUATION comes a byte at a time is cut at the header timeout, each byte notwith-
    standing (it would otherwise hold the connection for as long as it dribbles), with GOAWAY
    PROTOCOL_ERROR; the request never reaches the pod."""
    proxy = await start(
        pod, h2c=True, client_header_timeout=0.4, keepalive_timeout=30, client_body_timeout=30
    )
    client = await RawClient.connect(proxy.http_port)
    dribbling: asyncio.Task[None] | None = None
    try:
        # A first exchange settles the SETTINGS (an ACK amid the block would be a protocol
        # error of the test's own).
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
        stream = 3
        if other_stream:
            stream = client.request("/sink", "POST", body=b"", end=False) + 2

            async def pod_saw_it() -> bool:
                return pod.requests == 2

            await eventually(pod_saw_it)
        block = hpack.Encoder().encode(
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", HOST.encode()),
                (b":path", b"/echo?slow"),
                (b"x-pad", b"p" * 400),
            ]
        )
        headers = HeadersFrame(stream, flags=["END_STREAM"], data=block[:10])
        continuation = ContinuationFrame(stream, flags=["END_HEADERS"], data=block[10:])
        client.writer.write(headers.serialize())
        dribbling = asyncio.create_task(_dribble(client, continuation.serialize()))
        await asyncio.wait_for(_read_to_end(client), 5)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == h2codec.PROTOCOL_ERROR
        assert not dribbling.done()  # cut while the block was still coming
        assert pod.requests == (2 if other_stream else 1)
        assert proxy.stats.http2_goaways_sent == 1
    finally:
        if dribbling is not None:
            dribbling.cancel()
        await client.close()
        await proxy.shutdown(1.0)


async def test_idle_connection_closes_after_keepalive_timeout(pod: Pod) -> None:
    """Issue 19 item 3: a connection with no stream open is closed keepalive_timeout after
    its last read (nginx's keepalive_timeout for HTTP/2), with a graceful GOAWAY."""
    proxy = await start(pod, h2c=True, keepalive_timeout=0.4, client_header_timeout=30)
    client = await RawClient.connect(proxy.http_port)
    try:
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
        await asyncio.wait_for(_read_to_end(client), 5)
        goaway = client.goaway()
        assert client.closed and goaway is not None
        assert (goaway.error_code, goaway.last_stream_id) == (h2codec.NO_ERROR, 1)
    finally:
        await client.close()
        await proxy.shutdown(1.0)


async def test_drain_finishes_streams_in_flight(pod: Pod) -> None:
    """Shutdown: GOAWAY at once, the stream in flight answered, then the connection closes
    (issue 19 item 6)."""
    proxy = await start(pod)
    url = f"https://127.0.0.1:{proxy.https_port}/slow?delay=0.5"
    request = asyncio.create_task(
        curl("-k", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
    )
    await eventually(lambda: _has_stream(proxy), limit=10)
    await proxy.shutdown(5.0)
    code, out, err = await request
    assert (code, out) == (0, "2 200"), err
    assert not proxy.connections.clients
    assert proxy.stats.http2_goaways_sent == 1 and proxy.stats.http2_flood_trips == 0


async def _has_stream(proxy: ProxyServer) -> bool:
    return any(isinstance(c, H2Connection) and c.streams for c in proxy.connections.clients)


# ---- floods through real sockets (issue 19 item 3): each ends the connection --------------


def _ping() -> bytes:
    return PingFrame(0, opaque_data=b"12345678").serialize()


def _settings() -> bytes:
    return SettingsFrame(0, settings={4: 65_535}).serialize()


@pytest.mark.parametrize(("case", "frame"), [("PING", _ping), ("SETTINGS", _settings)])
async def test_ack_flood_ends_the_connection(pod: Pod, case: str, frame: Any) -> None:
    """A PING or SETTINGS flood from a client that never reads ends the connection: more than
    1000 acknowledgements queued in the codec (libnghttp2's limit), or, once Portico's buffer
    for the client is full and it stops reading the client, `client_body_timeout`. What
    Portico holds for the client stays bounded all along."""
    proxy = await start(pod, h2c=True, client_body_timeout=0.5)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.http_port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(h2codec.PREFACE + SettingsFrame(0).serialize())
    batch = frame() * 1000

    async def flood() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(batch)
                await writer.drain()

    conn = await eventually(lambda: _h2_connection(proxy), limit=10)
    flooding = asyncio.create_task(flood())
    held = 0
    try:

        async def over() -> bool:
            nonlocal held
            held = max(held, conn.transport.get_write_buffer_size())
            return conn.closing

        await eventually(over, limit=20, interval=0.01)
        assert held <= 256 * 1024, case
        assert pod.requests == 0
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
        writer.close()
        await proxy.shutdown(1.0)


async def _h2_connection(proxy: ProxyServer) -> H2Connection | None:
    for conn in proxy.connections.clients:
        if isinstance(conn, H2Connection):
            return conn
    return None


async def test_access_log_and_metrics_name_the_protocol(pod: Pod) -> None:
    """Issue 19 items 1 and 7: the access log and the request metrics say which protocol the
    client spoke, in the same words."""
    proxy = await start(pod, h2c=True, access_log=True)
    access = proxy.access
    assert access is not None
    access.stream = io.BytesIO()
    client = await RawClient.connect(proxy.http_port)
    try:
        fields, _, _ = await client.response(client.request("/echo?h2"))
        assert fields[b":status"] == b"200"
        code, _, err = await curl("-o", "/dev/null", f"http://127.0.0.1:{proxy.http_port}/echo?h1")
        assert code == 0, err
        access.flush()
        lines = [json.loads(line) for line in access.stream.getvalue().splitlines()]
        by_target = {line["target"]: line["protocol"] for line in lines}
        assert by_target == {"/echo?h2": "HTTP/2.0", "/echo?h1": "HTTP/1.1"}
        series = proxy.telemetry.metrics.export().series
        by_protocol = {key[6]: sum(cell[DURATION : DURATION + 12]) for key, cell in series.items()}
        assert by_protocol == {"HTTP/2.0": 1, "HTTP/1.1": 1}
    finally:
        await client.close()
        await proxy.shutdown(1.0)


async def test_client_not_reading_is_not_read(pod: Pod) -> None:
    """Once Portico's buffer for a client is full, the client is not read any more (what it
    sends waits in TCP: libnghttp2's GOAWAY for a flood only acts once written), and a client
    that never reads is cut after `client_body_timeout`."""
    proxy = await start(pod, h2c=True, client_body_timeout=0.5)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.http_port))
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(h2codec.PREFACE + SettingsFrame(0).serialize())
        conn = await eventually(lambda: _h2_connection(proxy), limit=10)
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        ping = PingFrame(0, opaque_data=b"12345678").serialize()
        async with asyncio.timeout(20):
            while not conn.write_paused and not conn.closing:
                # Small and spaced: no read holds the 1000 pings that trip the codec's limit.
                writer.write(ping * 50)
                await asyncio.sleep(0.005)
        assert conn.write_paused and not conn.closing
        assert not conn.transport.is_reading()
        await eventually(lambda: _closing(conn), limit=10)
    finally:
        writer.close()
        await proxy.shutdown(1.0)


async def _closing(conn: H2Connection) -> bool:
    return conn.closing


async def test_h2c_after_a_proxy_protocol_header(pod: Pod) -> None:
    """`--h2c --proxy-protocol`: the preface is looked for after the PROXY header, whose
    source address is the client's for the pod (X-Forwarded-For, X-Real-IP)."""
    proxy = await start(pod, h2c=True, proxy_protocol=True, trusted_proxies=())
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    writer.write(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n")
    client = RawClient(reader, writer)
    client.h2.initiate_connection()
    client.flush()
    try:
        fields, body, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
        assert seen(json.loads(body))["x-real-ip"] == "198.51.100.7"
    finally:
        await client.close()
        await proxy.shutdown(1.0)


async def test_hsts_and_route_fields_over_http2(pod: Pod) -> None:
    """The route's response steps apply to HTTP/2 responses too (HSTS over HTTPS)."""
    proxy = await start(pod)
    try:
        url = f"https://127.0.0.1:{proxy.https_port}/echo"
        code, out, err = await curl("-k", "--http2", "-o", "/dev/null", "-D", "-", url)
        assert code == 0, err
        lines = out.lower().splitlines()
        assert lines[0].startswith("http/2 200")
        assert "strict-transport-security: max-age=31536000; includesubdomains" in lines
    finally:
        await proxy.shutdown(1.0)


async def test_policy_answer_over_http2(pod: Pod) -> None:
    """A policy step's answer (an HTTPS redirect, with its Location) is an HTTP/2 response on
    its stream; the pod is not asked."""
    options = dataclasses.replace(DEFAULT_OPTIONS, policy=(HTTPSRedirect(),))
    proxy = ProxyServer(ProxySettings(access_log=False, h2c=True))
    proxy.apply(snapshot({"ns/svc/80": [(pod.host, pod.port)]}, options=options))
    await proxy.start(host="127.0.0.1", http_port=0)
    client = await RawClient.connect(proxy.http_port)
    try:
        fields, _, reset = await client.response(client.request("/a/b?c=1"))
        assert reset is None
        assert fields[b":status"] == b"308"
        assert fields[b"location"] == f"https://{HOST}/a/b?c=1".encode()
        assert pod.requests == 0
    finally:
        await client.close()
        await proxy.shutdown(1.0)


async def test_answer_before_the_body_ends_resets_the_stream(pod: Pod) -> None:
    """A request answered before its body ended (413 past the body limit): the whole answer,
    then RST_STREAM NO_ERROR telling the client to stop sending (RFC 9113 §8.1); the
    connection goes on."""
    proxy = await start(pod, h2c=True, max_body_bytes=1000)
    client = await RawClient.connect(proxy.http_port)
    try:
        stream = client.request("/sink", "POST", body=b"", end=False)
        client.h2.send_data(stream, b"x" * 4000)
        client.flush()
        while not any(
            isinstance(e, h2.events.StreamReset) and e.stream_id == stream for e in client.events
        ):
            assert await client.read()
        fields, body, reset = await client.response(stream)
        assert fields[b":status"] == b"413" and body.startswith(b"413")
        assert any(isinstance(e, h2.events.StreamEnded) for e in client.events)
        assert reset == 0
        assert pod.requests == 0
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
    finally:
        await client.close()
        await proxy.shutdown(1.0)


@pytest.mark.parametrize("piece", [1, 5, 23])
async def test_preface_in_pieces(pod: Pod, h2c: ProxyServer, piece: int) -> None:
    """The preface told apart however it is split; an HTTP/1.1 request that begins like it
    ("P" of POST, "PRI" of a made-up method) stays HTTP/1.1."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h2c.http_port)
    client = RawClient(reader, writer)
    client.h2.initiate_connection()
    data = client.h2.data_to_send()
    try:
        for i in range(0, len(data), piece):
            writer.write(data[i : i + piece])
            await writer.drain()
            await asyncio.sleep(0.001)
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
    finally:
        await client.close()
    for request in (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", b"PRIX"):
        reader, writer = await asyncio.open_connection("127.0.0.1", h2c.http_port)
        try:
            writer.write(request[:1])
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(request[1:] + (b"" if request != b"PRIX" else b" / HTTP/1.1\r\n\r\n"))
            status_line = await asyncio.wait_for(reader.readline(), 5)
            assert status_line.startswith(b"HTTP/1.1 "), status_line
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("101 fields", [(b"x-%d" % i, b"1") for i in range(101)]),
        ("over 32 KiB", [(b"x-%d" % i, b"v" * 1000) for i in range(40)]),
    ],
)
async def test_header_limits_answer_431(
    pod: Pod, h2c: ProxyServer, case: str, extra: list[tuple[bytes, bytes]]
) -> None:
    """Issue 19 item 3: header list 32 KiB / 100 fields (`--max-header-bytes`,
    `--max-headers`, as HTTP/1.1): 431 on that stream, the pod not asked, the connection goes
    on."""
    client = await RawClient.connect(h2c.http_port)
    try:
        fields, _, _ = await client.response(client.request("/echo", extra=extra))
        assert fields[b":status"] == b"431", case
        assert pod.requests == 0
        fields, _, _ = await client.response(client.request("/echo"))
        assert fields[b":status"] == b"200"
    finally:
        await client.close()


def _continuation_flood() -> list[bytes]:
    """CVE-2024-27316: a header block that never ends."""
    head = HeadersFrame(1, data=b"").serialize()
    return [head] + [ContinuationFrame(1, data=b"x").serialize() for _ in range(100)]


def _empty_data_flood() -> list[bytes]:
    """Empty DATA frames on an open stream (CVE-2019-9518)."""
    block = hpack.Encoder().encode([*_BASE, (b":method", b"POST")])
    head = HeadersFrame(1, data=block, flags=["END_HEADERS"]).serialize()
    return [head] + [DataFrame(1, data=b"").serialize() * 1000 for _ in range(30)]


def _stream_flood() -> list[bytes]:
    """More streams than the 128 announced, none of them ever ending."""
    encoder = hpack.Encoder()
    block = [*_BASE, (b":method", b"POST")]
    return [
        HeadersFrame(1 + 2 * i, data=encoder.encode(block), flags=["END_HEADERS"]).serialize()
        for i in range(300)
    ]


_BASE = [(b":scheme", b"http"), (b":authority", HOST.encode()), (b":path", b"/sink")]


@pytest.mark.parametrize(
    "frames",
    [_continuation_flood, _empty_data_flood, _stream_flood],
    ids=["CONTINUATION", "empty DATA", "streams past 128"],
)
async def test_floods_end_the_connection(pod: Pod, h2c: ProxyServer, frames: Any) -> None:
    """Issue 19 item 3 through a socket: each ends in GOAWAY and a closed connection (the 128
    streams allowed are requests like any; their bodies never end, so no pod gets one
    whole)."""
    client = await RawClient.connect(h2c.http_port)
    try:
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in client.events):
            assert await client.read()
        client.writer.write(client.h2.data_to_send())  # the SETTINGS ACK
        with contextlib.suppress(ConnectionError):
            for frame in frames():
                client.writer.write(frame)
                await client.writer.drain()
        data = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(client.reader.read(65536), 10):
                data += chunk
        goaway = [f for f in parse_frames(data) if isinstance(f, GoAwayFrame)]
        assert goaway and goaway[-1].error_code != 0
        assert pod.requests == 0
    finally:
        await client.close()


def parse_frames(data: bytes) -> list[Any]:
    found = []
    offset = 0
    while offset + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[offset : offset + 9]))
        frame.parse_body(memoryview(data[offset + 9 : offset + 9 + length]))
        found.append(frame)
        offset += 9 + length
    return found


async def test_expect_100_continue_and_interim_responses(pod: Pod, h2c: ProxyServer) -> None:
    """`expect: 100-continue` gets a 100 before the body is sent (RFC 9110 §10.1.1, over
    HTTP/2 an informational HEADERS); a pod's 103 Early Hints is relayed as one too."""
    client = await RawClient.connect(h2c.http_port)
    try:
        stream = client.request(
            "/sink",
            "POST",
            extra=[(b"expect", b"100-continue"), (b"content-length", b"5")],
            end=False,
        )
        while not any(
            isinstance(e, h2.events.InformationalResponseReceived) for e in client.events
        ):
            assert await client.read()
        client.h2.send_data(stream, b"hello", end_stream=True)
        client.flush()
        fields, body, _ = await client.response(stream)
        assert fields[b":status"] == b"200" and json.loads(body)["length"] == 5
        client.events.clear()
        stream = client.request("/early-hints")
        fields, body, _ = await client.response(stream)
        hints = [e for e in client.events if isinstance(e, h2.events.InformationalResponseReceived)]
        assert [dict(e.headers)[b":status"] for e in hints] == [b"103"]
        assert dict(hints[0].headers)[b"link"] == b"</s.css>; rel=preload"
        assert fields[b":status"] == b"200" and body == b"after hints"
    finally:
        await client.close()


async def test_snapshot_swap_applies_to_new_streams_only(pods: list[Pod]) -> None:
    """Issue 19 item 6: a snapshot swapped while a stream is in flight leaves that stream on
    the pod it was routed to; the next stream of the same connection follows the new one."""
    old, new = pods
    proxy = ProxyServer(ProxySettings(access_log=False, h2c=True))
    proxy.apply(snapshot({"ns/old/80": [(old.host, old.port)]}, version=1))
    await proxy.start(host="127.0.0.1", http_port=0)
    client = await RawClient.connect(proxy.http_port)
    try:
        slow = client.request("/slow?delay=0.5")
        for _ in range(200):  # the slow request reached the old pod
            if old.requests:
                break
            await asyncio.sleep(0.01)
        assert old.requests == 1
        proxy.apply(snapshot({"ns/new/80": [(new.host, new.port)]}, version=2))
        fresh = client.request("/echo")
        fields, body, reset = await client.response(slow)
        assert (fields[b":status"], reset) == (b"200", None)
        assert json.loads(body)["pod"] == old.host
        fields, body, reset = await client.response(fresh)
        assert (fields[b":status"], reset) == (b"200", None)
        assert json.loads(body)["pod"] == new.host
        assert client.goaway() is None  # the same connection carried both
    finally:
        await client.close()
        await proxy.shutdown(1.0)


async def test_max_concurrent_streams_is_announced_and_kept(pod: Pod) -> None:
    """`--http2-max-concurrent-streams` (ingress-nginx's http2-max-concurrent-streams) is the
    SETTINGS_MAX_CONCURRENT_STREAMS the client is told; as many streams are served at once,
    and a client that opens more once the setting is acknowledged breaks the protocol
    (RFC 9113 §5.1.2): libnghttp2 ends the connection (GOAWAY PROTOCOL_ERROR) and the stream
    past the limit never reaches the pod."""
    proxy = await start(pod, h2c=True, http2_max_concurrent_streams=2)
    limit = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
    try:
        for streams, served in ((2, 2), (3, 2)):
            client = await RawClient.connect(proxy.http_port)
            try:
                while client.h2.remote_settings.max_concurrent_streams != 2:
                    assert await client.read(), "no SETTINGS from the proxy"
                # The h2 package would not open a third stream: its copy of the proxy's
                # setting is raised behind its back.
                client.h2.remote_settings._settings[limit] = deque([10])
                before = pod.requests
                ids = [client.request("/slow?delay=0.2") for _ in range(streams)]
                results = [await client.response(stream_id) for stream_id in ids]
                statuses = [fields.get(b":status") for fields, _, _ in results]
                goaway = client.goaway()
                if streams == served:
                    assert statuses == [b"200"] * served and goaway is None
                    assert pod.requests - before == served
                else:
                    assert goaway is not None and goaway.error_code == h2codec.PROTOCOL_ERROR
                    assert pod.requests - before <= served
            finally:
                await client.close()
    finally:
        await proxy.shutdown(1.0)
