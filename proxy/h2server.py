"""Client-facing HTTP/2: one connection, many streams, each stream one exchange.

An `H2Connection` is the protocol of a client connection that speaks HTTP/2: ALPN `h2` on the
HTTPS listener (`AlpnSwitch` picks it after the handshake), or the connection preface on the
plain listener with `--h2c` (`PrefaceSniffer` tells it from HTTP/1.1 by the first bytes). The
codec (proxy/h2codec.py, libnghttp2) reads the frames and checks the protocol's rules; each
request it reports becomes an `H2Stream`, which is the `ClientSide` (proxy/clientside.py) of an
`Exchange` opened by `Routing.open_exchange`, exactly as an HTTP/1.1 request head is: same
validation, routing, policy steps, balancing, pool, retries, metrics and access log. The
request's HTTP/2 fields are rendered into the HTTP/1.1 head the pod gets (`:authority` as Host,
cookies joined, a body without `content-length` sent chunked).

Exchanges begin once the read that opened them is processed, so a stream opened and reset (or
found malformed) in the same read never reaches a pod. Output is taken from the codec once per
loop iteration (`_flush`, scheduled by whatever queued a frame) and only while the transport
takes writes. A client that does not read (the transport's buffer full) is not read either
until it does: whatever it sends meanwhile (requests, resets, pings) waits in TCP, not in
Portico, and a client that never reads is cut after `client_body_timeout`. This matters for
libnghttp2's own limits: a GOAWAY it decides on (rapid reset) only takes effect once written, and
until then it keeps reporting the client's requests.

Flow control end to end (issue 19 item 2): a stream's request DATA is acknowledged to the
client (`consume`) when the exchange has taken it, unless the exchange paused reading
(proxy/flow.py: the pod does not take the body, or no connection is attached and 64 KiB are
buffered); the acknowledgement then waits for `resume_reading`. Response data beyond what the
client's windows admit queues in the codec, up to STREAM_HIGH per stream; past it the pod's
connection stops being read until the client opens its window again.

Timeouts per connection and per stream (issue 19 item 3): a connection with no stream open is
closed (graceful GOAWAY) `keepalive_timeout` after its last read; a stream that owes request body
is answered 408 after `client_body_timeout` without any; and a header block (the preface, a frame
header, a HEADERS frame and its CONTINUATIONs) must arrive whole within `client_header_timeout`
of its start, as nginx times a partial frame with `client_header_timeout`. The codec reports a
request only once its block is whole, so `HeaderClock` follows the frame boundaries of the bytes
read (nine bytes of each frame header, the rest skipped) to know when a block is pending. A block
cannot be dropped alone (the HPACK context would be lost): past the timeout the connection ends
with GOAWAY (PROTOCOL_ERROR, nginx's code for a client timing out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from proxy import flow, h2codec
from proxy import headers as hdr
from proxy.clientside import ClientSide
from proxy.connections import Connections
from proxy.exchange import Exchange
from proxy.grpc import GrpcCall, GrpcClient, grpc_status, is_grpc, parse_timeout
from proxy.h2codec import CodecError, Handler, Headers, ServerCodec
from proxy.h2upstream import pool_for
from proxy.headers import REQUEST_NAMES, ClientContexts, RequestHead, ResponseHead
from proxy.metrics import HTTP2
from proxy.replies import local_reply
from proxy.routing import Routing
from proxy.settings import ProxySettings
from proxy.telemetry import Telemetry

logger = logging.getLogger("portico.proxy")

# Response bytes queued in the codec for one stream (the client's window is shut) beyond which
# the pod's connection is no longer read; it is read again below STREAM_LOW.
STREAM_HIGH = 64 * 1024
STREAM_LOW = 16 * 1024

# Fields HTTP/2 forbids (RFC 9113 §8.2.2); render_response may add the framing ones.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def _h2_fields(status: int, rendered: bytes) -> list[tuple[bytes, bytes]]:
    """A response head rendered for HTTP/1.1 (status line, then "Name: value" lines) as
    HTTP/2 fields: `:status` first, names in lower case, connection-specific fields left out."""
    fields = [(b":status", b"%d" % status)]
    for line in rendered.split(b"\r\n")[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        lname = name.lower()
        if lname not in _CONNECTION_SPECIFIC:
            fields.append((lname, value.strip(b" \t")))
    return fields


def _limits(settings: ProxySettings) -> h2codec.Limits:
    """The codec's limits for the worker's settings: the streams open at once are
    `--http2-max-concurrent-streams`; the header list announced is
    `--max-header-bytes` (a request past it, or past `--max-headers` fields, is answered 431 as
    in HTTP/1.1); the codec keeps twice that at most before it ends the connection."""
    found = _LIMITS.get(settings)
    if found is None:
        found = _LIMITS[settings] = h2codec.Limits(
            max_concurrent_streams=settings.http2_max_concurrent_streams,
            max_header_list_bytes=settings.max_header_bytes,
            hard_header_list_bytes=2 * settings.max_header_bytes,
            hard_header_fields=2 * settings.max_headers,
        )
    return found


_LIMITS: dict[ProxySettings, h2codec.Limits] = {}


# Frame types that carry a header block, and the flag that ends one (RFC 9113 §6.2, §6.10).
_BLOCK_FRAMES = frozenset((0x1, 0x5, 0x9))  # HEADERS, PUSH_PROMISE, CONTINUATION
_END_HEADERS = 0x4


class HeaderClock:
    """Since when the client owes the rest of a header block (0.0: it does not), from the
    frame boundaries of the bytes it sent (see the module docstring)."""

    __slots__ = ("in_block", "partial", "since", "skip", "skipping_block")

    def __init__(self, now: float) -> None:
        self.skip = len(h2codec.PREFACE)  # payload bytes of the current frame still to come
        self.skipping_block = True  # the bytes being skipped are the preface or a header block
        self.partial = b""  # the start of a frame header split across reads
        self.in_block = False  # a header block is open: CONTINUATION must follow
        self.since = now  # the preface is owed from the start

    def read(self, data: bytes, now: float) -> None:
        """Bytes read from the client, before the codec takes them."""
        size = len(data)
        pos = 0
        if self.skip:
            pos = min(self.skip, size)
            self.skip -= pos
        if self.partial:
            data = self.partial + data[pos:]
            size = len(data)
            pos = 0
            self.partial = b""
        while pos < size:
            if size - pos < 9:
                self.partial = data[pos:]
                break
            kind = data[pos + 3]
            if kind in _BLOCK_FRAMES:
                self.in_block = not data[pos + 4] & _END_HEADERS
                self.skipping_block = True
            else:
                self.skipping_block = False
            pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
        if pos > size:
            self.skip = pos - size
        pending = self.in_block or bool(self.partial) or (self.skip > 0 and self.skipping_block)
        if not pending:
            self.since = 0.0
        elif not self.since:
            self.since = now


class H2Stream(ClientSide, GrpcClient):
    """One request/response of an HTTP/2 connection, the `ClientSide` of its exchange (or the
    client of its gRPC call, proxy/grpc.py)."""

    __slots__ = (
        "body_deadline",
        "call",
        "client_reset",
        "conn",
        "discarding",
        "ended",
        "exchange",
        "grpc",
        "grpc_timeout",
        "paused",
        "stream_id",
        "unacked",
    )

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.ctx = conn.ctx
        self.read_at = conn.read_at
        self.write_paused = False
        self.metrics_protocol = HTTP2
        self.exchange: Exchange | None = None
        self.ended = False  # the response's end (or a reset) is submitted
        self.paused = False  # the exchange does not take more body now
        self.unacked = 0  # body bytes taken while paused, acknowledged on resume
        # The exchange is over but the client still sends its body: dropped until the reset.
        self.discarding = False
        # Loop time by which the client must send more of the request body (0.0: none due).
        self.body_deadline = 0.0
        self.client_reset = False  # the client reset it (counted as a reset received)
        # A gRPC request (content-type application/grpc*): Portico's answers in gRPC form.
        self.grpc = False
        self.grpc_timeout: bytes | None = None  # its grpc-timeout field, as sent
        self.call: GrpcCall | None = None  # the call to a pod on a GRPC/GRPCS route

    # ---- the client side of the exchange (see proxy/clientside.py) -------------------------

    def send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.ended:
            return
        fields = [(b":status", b"%d" % status)]
        fields += [(n.lower(), v) for n, v in headers if n.lower() not in _CONNECTION_SPECIFIC]
        self.conn.codec.send_informational(self.stream_id, fields)
        self.conn.schedule_flush()

    def send_head(
        self,
        status: int,
        parts: list[bytes],
        special: list[tuple[bytes, bytes, bytes]],
        head: RequestHead,
        added: bytes,
        replaced: frozenset[bytes],
    ) -> ResponseHead:
        fields, response = hdr.response_fields(
            status, parts, special, head.method == b"HEAD", added, replaced
        )
        if not self.ended:
            end = response.framing == hdr.FRAME_NONE
            self.conn.codec.send_headers(self.stream_id, fields, end)
            self.ended = end
            self.conn.schedule_flush()
        return response

    def send_body(self, piece: bytes | memoryview) -> None:
        if self.ended or not piece:
            return
        conn = self.conn
        codec = conn.codec
        codec.send_data(self.stream_id, piece, False)
        conn.schedule_flush()
        if not self.write_paused and codec.queued(self.stream_id) > STREAM_HIGH:
            self.write_paused = True
            conn.stalled.append(self)
            exchange = self.exchange
            if exchange is not None:
                flow.client_stalled(exchange.conn)

    def send_answer(self, status: int, fields: bytes, close: bool, head_only: bool) -> bool:
        if self.ended:
            return False
        if self.grpc:
            # Trailers-only, HTTP 200 with grpc-status (no route 12, unavailable 14, timeout 4).
            exchange = self.exchange
            reason = exchange.reason if exchange is not None else None
            self.conn.codec.send_headers(self.stream_id, grpc_status(status, reason), True)
            self.ended = True
            self.conn.schedule_flush()
            return not close
        data = local_reply(status, close=False, head_only=head_only)
        head, _, body = data.partition(b"\r\n\r\n")
        response = _h2_fields(status, head + b"\r\n" + fields)
        codec = self.conn.codec
        codec.send_headers(self.stream_id, response, not body)
        if body:
            codec.send_data(self.stream_id, body, True)
        self.ended = True
        self.conn.schedule_flush()
        # `close`: the request is not read whole (a body still coming): `finish` then resets
        # the stream once the answer is out; the connection itself stays.
        return not close

    def finish(self, exchange: object, reusable: bool, now: float) -> None:
        conn = self.conn
        call = self.call
        if call is not None:
            # Answered before its gRPC call began (external auth said no): no pod was asked.
            self.call = None
            call.drop()
        if not self.ended:
            self.ended = True
            conn.codec.end_stream(self.stream_id)
            conn.schedule_flush()
        self.exchange = None
        if not reusable:
            # The client may still be sending the body: what arrives is dropped, and once the
            # response is out the client is told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
            self.discarding = True
            self.paused = False
            if self.unacked:
                conn.codec.consume(self.stream_id, self.unacked)
                self.unacked = 0
            conn.cutting.append(self)
        conn.exchange_done(now)

    def upgrade(
        self,
        exchange: object,
        headers: list[tuple[bytes, bytes]],
        rest: bytes,
        upstream: asyncio.Transport,
    ) -> None:
        # HTTP/2 has no Upgrade (the codec refuses the field): a pod's 101 cannot be relayed.
        upstream.abort()
        self.abort()

    def abort(self) -> None:
        self.exchange = None
        if not self.ended:
            self.ended = True
            self.conn.codec.reset_stream(self.stream_id, h2codec.INTERNAL_ERROR)
            self.conn.schedule_flush()

    def protocol(self, head: RequestHead | None) -> bytes:
        return b"HTTP/2.0"

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.unacked:
                self.conn.codec.consume(self.stream_id, self.unacked)
                self.unacked = 0
                self.conn.schedule_flush()

    # ---- the client of a gRPC call (see proxy/grpc.py) ---------------------------------------

    def grpc_headers(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self.ended:
            return
        self.conn.codec.send_headers(self.stream_id, headers, end_stream)
        self.ended = end_stream
        self.conn.schedule_flush()

    def grpc_data(self, data: bytes, end_stream: bool) -> bool:
        if self.ended:
            return True
        codec = self.conn.codec
        codec.send_data(self.stream_id, data, end_stream)
        self.ended = end_stream
        self.conn.schedule_flush()
        if codec.queued(self.stream_id) > STREAM_HIGH:
            if not self.write_paused:
                self.write_paused = True
                self.conn.stalled.append(self)
            return False
        return True

    def grpc_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.ended:
            return
        self.conn.codec.send_trailers(self.stream_id, headers)
        self.ended = True
        self.conn.schedule_flush()

    def grpc_reset(self, code: int) -> None:
        if self.ended and code == h2codec.NO_ERROR:
            return
        self.ended = True
        self.conn.codec.reset_stream(self.stream_id, code)
        self.conn.schedule_flush()

    def grpc_consume(self, size: int) -> None:
        if size:
            self.conn.codec.consume(self.stream_id, size)
            self.conn.schedule_flush()

    def grpc_done(self, call: GrpcCall, status: int, reason: str | None) -> None:
        self.call = None
        if not call.request_ended and not self.client_reset:
            # Answered before the client ended its request stream: what it still sends is
            # dropped. A gRPC client ends the stream itself once it has the status (an
            # RST_STREAM of ours meanwhile fails its pending write: grpcio reports INTERNAL
            # instead of the status); one that does not is reset after client_body_timeout.
            self.discarding = True
            self.body_deadline = self.conn.loop.time() + self.conn.settings.client_body_timeout
        exchange = self.exchange
        self.exchange = None
        now = self.conn.loop.time()
        if exchange is not None:
            endpoint = call.endpoint
            exchange.ended_elsewhere(
                status,
                reason,
                endpoint.authority if endpoint is not None else None,
                now,
                call.status if call.responded else 0,
                call.sent_at,
                call.head_at,
            )
        if not self.ended:
            # The call ended before the client's response did (its stream reset meanwhile).
            self.ended = True
            self.conn.codec.reset_stream(self.stream_id, h2codec.CANCEL)
            self.conn.schedule_flush()
        self.conn.exchange_done(now)

    # ---- from the connection ----------------------------------------------------------------

    def drained(self, now: float) -> bool:
        """Whether the response data queued for the client fell below STREAM_LOW (then the
        pod's connection is read again)."""
        if self.ended or self.conn.codec.queued(self.stream_id) < STREAM_LOW:
            self.write_paused = False
            if self.call is not None:
                self.call.client_drained()
            exchange = self.exchange
            if exchange is not None and not self.conn.write_paused:
                flow.client_drained(exchange.conn, now, exchange.pacer)
            return True
        return False

    def lost(self) -> None:
        """The stream is gone (reset by the client, or the connection closed)."""
        call = self.call
        if call is not None:
            self.call = None
            call.cancel()
        exchange = self.exchange
        self.exchange = None
        self.ended = True
        if exchange is not None:
            exchange.client_lost()


class H2Connection(asyncio.Protocol, Handler):
    """The protocol of one client connection speaking HTTP/2."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ProxySettings,
        routing: Routing,
        connections: Connections,
        telemetry: Telemetry,
        contexts: ClientContexts,
        scheme: str,
        port: int,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.routing = routing
        self.connections = connections
        self.telemetry = telemetry
        self.contexts = contexts
        self.scheme = scheme
        self.port = port
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.ctx: hdr.ClientContext | None = None
        self.codec = ServerCodec(self, _limits(settings))
        self.streams: dict[int, H2Stream] = {}
        self.starting: list[Exchange | GrpcCall] = []
        # Streams whose pod connection is paused because the client's window is shut.
        self.stalled: list[H2Stream] = []
        # Streams answered before their request body ended: reset (NO_ERROR) once the
        # response is written.
        self.cutting: list[H2Stream] = []
        self.read_at = 0.0
        self.deadline = 0.0
        self.headers_owed = HeaderClock(0.0)  # reset when the connection starts
        self.closing = False
        self.write_paused = False
        self.flush_scheduled = False
        self.requests = 0  # streams opened, for --http2-max-requests
        self.going_away = False  # a GOAWAY either way: no new stream
        self.goaway_sent = False  # ours (counted once)
        self.peer_goaway = False  # the client's

    # ---- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.accepted(transport, peer[0] if isinstance(peer, tuple) else "127.0.0.1")

    def accepted(self, transport: asyncio.BaseTransport, client_ip: str) -> None:
        """The connection starts, from `client_ip` (the peer's, or the PROXY protocol's)."""
        self.transport = cast(asyncio.Transport, transport)
        self.ctx = self.contexts.get(client_ip, self.scheme, self.port)
        if not self.connections.admit(self):
            self.closing = True
            self.transport.abort()
            return
        self.read_at = now = self.loop.time()
        self.headers_owed = HeaderClock(now)
        self.deadline = now + self.settings.client_header_timeout
        self._flush()  # our SETTINGS

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.read_at = now = self.loop.time()
        self.headers_owed.read(data, now)
        # Whatever the events below queue is written once, at the end of this read.
        self.flush_scheduled = True
        try:
            self.codec.feed(data)
        except CodecError as exc:
            self.telemetry.reject(self.ctx, 0, "HTTP2" + exc.reason, str(exc))
            self._fail(exc.goaway)
            return
        starting = self.starting
        if starting:
            self.starting = []
            for exchange in starting:
                if not exchange.finished:
                    exchange.begin()
        self._flush()
        self._set_deadline()

    def eof_received(self) -> bool | None:
        return False  # a half-closed HTTP/2 connection cannot go on: close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline = 0.0
        self.connections.release(self)
        streams = list(self.streams.values())
        self.streams.clear()
        self.starting = []
        for stream in streams:
            stream.lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.closing:
            self.transport.pause_reading()  # nothing more is taken from a client not reading
        for stream in self.streams.values():
            exchange = stream.exchange
            if exchange is not None:
                flow.client_stalled(exchange.conn)
        self.deadline = self.loop.time() + self.settings.client_body_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.closing:
            self.transport.resume_reading()
        now = self.loop.time()
        self._flush()
        for stream in self.streams.values():
            exchange = stream.exchange
            if exchange is not None and not stream.write_paused:
                flow.client_drained(exchange.conn, now, exchange.pacer)
        self._set_deadline()

    # ---- codec events (proxy/h2codec.py Handler) ----------------------------------------------

    def request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream  # until the codec says it is closed
        if self.going_away:
            stream.ended = True
            self.codec.reset_stream(stream_id, h2codec.REFUSED_STREAM)
            return
        self.requests += 1
        self.telemetry.stats.http2_streams += 1
        method = path = authority = None
        parts = [b"", b" ", b"", b""]
        special: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] | None = None
        has_length = False
        host: bytes | None = None
        # RFC 9113 §6.5.2's size of the header list, and its fields (pseudo-header ones apart).
        size = 0
        fields = 0
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue  # :scheme is the listener's (X-Forwarded-Proto says it)
            fields += 1
            if name == b"content-type" and is_grpc(value):
                stream.grpc = True
            elif name == b"grpc-timeout":
                stream.grpc_timeout = value
            if name == b"cookie":
                # RFC 9113 §8.2.3: cookie crumbs are one field again for HTTP/1.1.
                cookies = [value] if cookies is None else [*cookies, value]
                continue
            lname = REQUEST_NAMES.special_name(name)
            if lname:
                if lname == b"host":
                    host = value
                    continue
                if lname == b"content-length":
                    has_length = True
                special.append((lname, value))
            else:
                parts += (name, b": ", value, b"\r\n")
        if authority is not None:
            if host is not None and host != authority:
                # RFC 9113 §8.3.1: Host naming another entity than :authority is malformed.
                self._refuse(stream, "HostMismatch")
                return
            host = authority
        if host is not None:
            special.insert(0, (b"host", host))
        if cookies is not None:
            parts += (b"cookie: ", b"; ".join(cookies), b"\r\n")
        if not end_stream and not has_length:
            # A body of unknown length: chunked to the pod (HTTP/1.1's framing for it).
            special.append((b"transfer-encoding", b"chunked"))
        assert method is not None  # the codec checked the pseudo-header fields
        url = path if path is not None else (authority or b"")
        settings = self.settings
        if fields > settings.max_headers or size > settings.max_header_bytes:
            # As HTTP/1.1 answers it (431), on this stream alone.
            reason = "TooManyHeaders" if fields > settings.max_headers else "HeadTooLarge"
            self.telemetry.reject(self.ctx, 431, reason)
            exchange = self.routing.local_exchange(stream, 431, reason, url)
            stream.exchange = exchange
            self.starting.append(exchange)
            return
        exchange = self.routing.open_exchange(stream, method, url, "1.1", parts, special)
        stream.exchange = exchange
        route = exchange.route
        if route is not None and route.grpc and exchange.answer is None:
            self._call(stream, exchange, end_stream)
            return
        if not end_stream:
            stream.body_deadline = self.read_at + self.settings.client_body_timeout
        self.starting.append(exchange)

    def _call(self, stream: H2Stream, exchange: Exchange, end_stream: bool) -> None:
        """A request to a GRPC/GRPCS route: a gRPC call to the pod (proxy/grpc.py), which
        begins with the exchanges of this read."""
        route = exchange.route
        head = exchange.head
        assert route is not None and head is not None
        timeout = None
        if stream.grpc_timeout is not None:
            timeout = parse_timeout(stream.grpc_timeout)
        pool = pool_for(self.loop, self.settings.upstream_keepalive_timeout)
        call = GrpcCall(stream, route, head, pool, end_stream, timeout, exchange.policy.max_body)
        stream.call = call
        if exchange.checking >= 0:
            # An external-auth step first: the exchange runs it (and the steps after it) as for
            # any request, and the call begins only once they let the request in; meanwhile
            # the request data waits in the call, with its backpressure.
            exchange.admitted = call.begin
            self.starting.append(exchange)
            return
        self.starting.append(call)

    def data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        size = len(data)
        if stream is not None and stream.call is not None:
            stream.call.request_data(data, end_stream)
            return
        exchange = stream.exchange if stream is not None else None
        if stream is None or exchange is None or stream.discarding:
            self.codec.consume(stream_id, size)
            return
        if size:
            exchange.request_body(data)
            if stream.paused:
                stream.unacked += size
            else:
                self.codec.consume(stream_id, size)
        if end_stream:
            stream.body_deadline = 0.0
            exchange.request_end()
        else:
            stream.body_deadline = self.read_at + self.settings.client_body_timeout

    def trailers(self, stream_id: int, headers: Headers) -> None:
        # Request trailers are not forwarded to an HTTP/1.1 pod (nginx drops them too); they
        # end the request.
        stream = self.streams.get(stream_id)
        if stream is not None and stream.call is not None:
            stream.call.request_end()  # (request trailers are not relayed: gRPC has none)
            return
        if stream is not None:
            stream.body_deadline = 0.0
            if stream.exchange is not None:
                stream.exchange.request_end()

    def reset(self, stream_id: int, code: int) -> None:
        self.telemetry.stats.http2_resets_received += 1
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.client_reset = True
            stream.lost()

    def closed(self, stream_id: int, code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if code != h2codec.NO_ERROR and (stream is None or not stream.client_reset):
            # Reset by Portico (refused, aborted, timed out) or by the codec (a malformed
            # request, a content-length mismatch).
            self.telemetry.stats.http2_resets_sent += 1
        if stream is not None and (code != h2codec.NO_ERROR or not stream.ended):
            # Closed before our response ended (a stream error the codec found): cut the
            # exchange. A stream whose response ended may still have its exchange finishing.
            stream.lost()
        if not self.streams:
            self._set_deadline()
            if self.going_away:
                self.schedule_flush()  # (called from within _flush: never flush here)

    def window_opened(self, stream_id: int) -> None:
        # Queued data may leave now; stalled streams are checked once it has (_flush).
        self.schedule_flush()

    def goaway(self, last_stream_id: int, code: int) -> None:
        self.going_away = True
        self.peer_goaway = True

    # ---- output ------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if not self.flush_scheduled and not self.closing:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.closing or self.write_paused:
            return
        codec = self.codec
        data = codec.output()
        if data:
            self.transport.write(data)
            if self.stalled:
                now = self.loop.time()
                self.stalled = [s for s in self.stalled if not s.drained(now)]
        if self.cutting:
            self._cut()
        if not codec.open:
            if not self.goaway_sent and not self.peer_goaway:
                # The codec ended the connection by itself (its rapid-reset or glitch limit,
                # a protocol error): its GOAWAY was in the output just written.
                stats = self.telemetry.stats
                stats.http2_goaways_sent += 1
                stats.http2_flood_trips += 1
                self.goaway_sent = True
            self.close()
        elif self.going_away and not self.streams and not codec.wants_write:
            self.close()

    def _cut(self) -> None:
        """Reset the answered streams whose response is written whole (their request body is
        not wanted any more); the reset goes out with the next flush."""
        waiting = []
        for stream in self.cutting:
            if stream.stream_id not in self.streams:
                continue  # closed meanwhile (the client ended its body, or reset)
            if self.codec.queued(stream.stream_id):
                waiting.append(stream)
            else:
                self.codec.reset_stream(stream.stream_id, h2codec.NO_ERROR)
                self.telemetry.stats.http2_resets_sent += 1  # (closed() sees NO_ERROR)
                self.schedule_flush()
        self.cutting = waiting

    def exchange_done(self, now: float) -> None:
        self.telemetry.stats.requests += 1
        if self.connections.draining or self.requests >= self.settings.http2_max_requests:
            self._go_away()

    # ---- ends --------------------------------------------------------------------------------

    def _go_away(self) -> None:
        """Graceful GOAWAY: the streams open finish, then the connection closes."""
        if not self.going_away:
            self.going_away = True
            self.goaway_sent = True
            self.telemetry.stats.http2_goaways_sent += 1
            self.codec.goaway(h2codec.NO_ERROR)
            self.schedule_flush()

    def _refuse(self, stream: H2Stream, reason: str) -> None:
        self.telemetry.reject(self.ctx, 0, reason)
        stream.ended = True
        self.codec.reset_stream(stream.stream_id, h2codec.PROTOCOL_ERROR)

    def _fail(self, goaway: bytes) -> None:
        stats = self.telemetry.stats
        stats.http2_flood_trips += 1
        if not self.closing:
            stats.http2_goaways_sent += 1
            self.goaway_sent = True
            self.transport.write(goaway)
            self.close()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.deadline = 0.0
            self.transport.close()

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            self.deadline = 0.0
            self.transport.abort()

    def _set_deadline(self) -> None:
        if self.closing:
            return
        if self.write_paused:
            return  # set by pause_writing: a client not reading is timed
        if self.streams:
            # Each exchange's upstream timers run; the client is timed only while it owes a
            # request body (the earliest of those deadlines).
            due = [s.body_deadline for s in self.streams.values() if s.body_deadline]
            self.deadline = min(due) if due else 0.0
        else:
            self.deadline = self.read_at + self.settings.keepalive_timeout
        since = self.headers_owed.since
        if since:
            header_due = since + self.settings.client_header_timeout
            if not self.deadline or header_due < self.deadline:
                self.deadline = header_due

    def timeout(self) -> None:
        """Called by the server's sweep when `deadline` passed."""
        self.deadline = 0.0
        if self.closing:
            return
        if self.write_paused:
            self.telemetry.reject(self.ctx, 0, "ClientNotReading")
            self.abort()
            return
        now = self.loop.time()
        since = self.headers_owed.since
        if since and since + self.settings.client_header_timeout <= now:
            # A header block that does not come whole (slowloris over HTTP/2): the streams
            # open are cut with the connection.
            self.telemetry.reject(self.ctx, 408, "HTTP2HeaderTimeout")
            self.going_away = self.goaway_sent = True
            self.telemetry.stats.http2_goaways_sent += 1
            self.codec.goaway(h2codec.PROTOCOL_ERROR)
            self._flush()
            self.close()
            return
        if not self.streams:
            self._go_away()
            self._flush()
            self.close()
            return
        for stream in list(self.streams.values()):
            if 0.0 < stream.body_deadline <= now:
                exchange = stream.exchange
                if exchange is None:
                    # Answered already; the rest of its body is not worth waiting for.
                    stream.body_deadline = 0.0
                    self.codec.reset_stream(stream.stream_id, h2codec.CANCEL)
                elif stream.paused:
                    # The pod is not taking the body: its send timeout runs, not ours.
                    stream.body_deadline = now + self.settings.client_body_timeout
                else:
                    stream.body_deadline = 0.0
                    exchange.client_timeout()  # 408 on this stream alone
        self._flush()
        self._set_deadline()

    def drain(self) -> None:
        """Shutdown: GOAWAY; close once the streams open are answered."""
        self._go_away()
        if not self.streams:
            self._flush()
            self.close()


class PrefaceSniffer(asyncio.Protocol):
    """The first bytes of a plain-HTTP connection with `--h2c`: the HTTP/2 connection preface
    (prior knowledge, RFC 9113 §3.3) hands it to HTTP/2, anything else to HTTP/1.1. Until it
    can tell (24 bytes at most), it is timed by the header timeout."""

    __slots__ = ("buffer", "choose", "client_ip", "timer", "transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        choose: Callable[[bool], asyncio.Protocol],
        client_ip: str | None = None,
    ) -> None:
        self.choose = choose
        self.client_ip = client_ip
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._timed_out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        preface = h2codec.PREFACE
        if len(buffer) < len(preface) and preface.startswith(buffer):
            self.buffer = buffer
            return
        self._hand_over(buffer[: len(preface)] == preface, buffer)

    def _hand_over(self, http2: bool, data: bytes) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        assert transport is not None
        protocol = self.choose(http2)
        transport.set_protocol(protocol)
        accepted = getattr(protocol, "accepted", None)
        if self.client_ip is not None and accepted is not None:
            accepted(transport, self.client_ip)
        else:
            protocol.connection_made(transport)
        if data and not transport.is_closing():
            protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.close()


class AlpnSwitch(asyncio.Protocol):
    """The HTTPS connection's protocol until its handshake is done: then the one ALPN chose
    (`h2`, else HTTP/1.1), which takes the transport over."""

    __slots__ = ("choose",)

    def __init__(self, choose: Callable[[bool], asyncio.Protocol]) -> None:
        self.choose = choose

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        chosen = tls.selected_alpn_protocol() if tls is not None else None
        protocol = self.choose(chosen == "h2")
        cast(asyncio.Transport, transport).set_protocol(protocol)
        protocol.connection_made(transport)
