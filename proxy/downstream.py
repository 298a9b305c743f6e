"""Client-facing HTTP/1.1 protocol: parses requests, orders and frames responses.

One instance per client connection (plain TCP, or TLS through proxy/tlsserver.py: only the
asyncio transport API is used). httptools' parser calls back with the request line and header
tuples; when a head is complete, `Routing.open_exchange` validates and routes it against the
generation current at that moment and returns an `Exchange`. Exchanges are answered strictly in
order: a pipelined request waits (and the connection stops reading) until the one before it is
finished. The connection is the `ClientSide` of the exchange it answers: it renders the
response head for HTTP/1.1, frames the body (Content-Length, chunked, or until close), decides
keep-alive, and turns into a `Tunnel` after a 101.

Reading stops for several independent reasons (pipelining, request body backpressure,
an upgrade awaiting its answer), kept as bits so one reason's resume never cancels another's
pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from proxy import flow
from proxy import headers as hdr
from proxy.clientside import ClientSide
from proxy.connections import Connections
from proxy.exchange import Exchange
from proxy.headers import REQUEST_NAMES, ClientContexts, RequestHead, ResponseHead
from proxy.metrics import HTTP1
from proxy.replies import CONTINUE, local_reply
from proxy.routing import Routing
from proxy.settings import ProxySettings
from proxy.telemetry import Telemetry
from proxy.tunnel import Tunnel

logger = logging.getLogger("portico.proxy")

_PAUSE_PIPELINE = 1
_PAUSE_BODY = 2
_PAUSE_UPGRADE = 4


class _Inert:
    """A parser owner without callbacks (see _SPENT_PARSER)."""


# What a closed connection's `parser` points at: nothing is fed to it (a closing connection
# ignores reads).
_SPENT_PARSER = httptools.HttpRequestParser(_Inert())


class _Reject(Exception):
    """Raised from a parser callback to stop parsing a request we refuse."""


class DownstreamProtocol(ClientSide, asyncio.Protocol):
    __slots__ = (
        "active",
        "closing",
        "connections",
        "contexts",
        "current",
        "deadline",
        "eof",
        "framing",
        "head_limit",
        "head_raw",
        "in_head",
        "keep",
        "last",
        "loop",
        "parser",
        "parts",
        "paused",
        "pending_head",
        "port",
        "queue",
        "read_size",
        "rejected",
        "routing",
        "scheme",
        "settings",
        "special",
        "starting",
        "telemetry",
        "transport",
        "tunnel_rest",
        "url",
    )

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
        self.head_limit = settings.max_header_bytes
        self.routing = routing
        self.connections = connections
        self.telemetry = telemetry
        self.contexts = contexts
        self.scheme = scheme
        self.port = port
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.parser = self._new_parser()
        self.ctx = None
        self.url = b""
        # The head being read: end-to-end fields rendered for the upstream after four slots
        # for the request line, the fields parse_request decides about apart (see headers.py).
        self.parts: list[bytes] = []
        self.special: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.head_raw = 0  # bytes read while in a head, to bound memory across many reads
        self.read_size = 0
        self.read_at = 0.0  # loop time of the latest read (parser callbacks run within it)
        self.current: Exchange | None = None  # the exchange whose request is being read
        self.last: Exchange | None = None  # the exchange whose request was read last
        self.active: Exchange | None = None  # the exchange being answered
        self.queue: deque[Exchange] = deque()  # pipelined exchanges waiting for their turn
        # The active exchange, begun only once the read that completed its head is parsed:
        # a malformed body in the same read is then refused before a byte goes upstream, and
        # the head goes out with the body bytes of that read in one write.
        self.starting: Exchange | None = None
        self.paused = 0
        self.write_paused = False
        self.metrics_protocol = HTTP1
        # The response being sent: how its body is framed, its head while it waits for the
        # first body piece, and whether the connection may stay open after it.
        self.framing = hdr.FRAME_NONE
        self.pending_head: bytes | None = None
        self.keep = True
        # Bytes read after an upgrade request: the tunnel's, if the pod agrees to switch.
        self.tunnel_rest = b""
        self.closing = False
        self.rejected = False
        self.eof = False
        self.deadline = 0.0

    # ---- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.accepted(transport, peer[0] if isinstance(peer, tuple) else "127.0.0.1")

    def accepted(self, transport: asyncio.BaseTransport, client_ip: str) -> None:
        """The connection starts, from `client_ip` (the peer's, or the PROXY protocol's)."""
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.ctx = self.contexts.get(client_ip, self.scheme, self.port)
        # Only a TLS connection to a host asking for client certificates has one (tlsserver.py).
        certificate = transport.get_extra_info("client_certificate")
        if certificate is not None:
            self.ctx = self.ctx.with_certificate(certificate)
        if not self.connections.admit(self):
            self.closing = True
            self.transport.abort()
            return
        self.deadline = self.loop.time() + self.settings.client_header_timeout

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.read_size = len(data)
        self.read_at = now = self.loop.time()
        if self.in_head:
            # Everything read before this, since the read the head began in, was head: too
            # much of it is a 431 even though the head is unfinished (bounds memory).
            if self.head_raw > self.head_limit:
                self._reject(431, "HeadTooLarge")
                return
            self.head_raw += len(data)
        elif self.current is not None:
            self.deadline = now + self.settings.client_body_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data, upgrade.args[0])
        except httptools.HttpParserError as exc:
            if not self.rejected:
                status = 400
                reason = "MalformedRequest"
                if isinstance(exc, httptools.HttpParserInvalidMethodError):
                    reason = "InvalidMethod"
                elif isinstance(exc, httptools.HttpParserInvalidURLError):
                    reason = "InvalidTarget"
                elif "HTTP version" in str(exc):
                    status, reason = 505, "VersionNotSupported"
                self._reject(status, reason, detail=str(exc))
        starting = self.starting
        if starting is not None:
            self.starting = None
            if not starting.finished and not self.closing:
                starting.begin()

    def eof_received(self) -> bool | None:
        # A client half-closing after its request still gets its answer; an idle one is done,
        # and one in the middle of a request can never finish it (connection_lost cleans up,
        # closing any upstream connection that carries the partial request).
        if self.current is not None or self.in_head:
            return False
        self.eof = True  # close once the answers still owed are written
        return self.active is not None or bool(self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline = 0.0
        # The parser holds this protocol's bound callbacks, the last exchange points back
        # here: without these cycles a closed connection is freed by reference counting, not
        # left for the garbage collector (a connection per request makes that measurable).
        self.parser = _SPENT_PARSER
        self.last = None
        self.connections.release(self)
        active = self.active
        self.active = None
        if active is not None:
            active.client_lost()
        current = self.current
        if current is not None and current is not active:
            current.client_lost()
        while self.queue:
            self.queue.popleft().client_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self.active
        if active is not None:
            flow.client_stalled(active.conn)
        # A client that stops reading is timed like one that stops sending.
        self.deadline = self.loop.time() + self.settings.client_body_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.active
        if active is not None:
            flow.client_drained(active.conn, self.loop.time(), active.pacer)
        if self.current is None and not self.in_head:
            self.deadline = 0.0 if active is not None else self._idle_deadline()

    # ---- parser callbacks --------------------------------------------------------------------

    # No on_message_begin: a message's first on_url starts it (one Python call less per
    # request). Until its method is read, a new head is timed by the keep-alive deadline.

    def on_url(self, url: bytes) -> None:
        if not self.in_head:
            self.in_head = True
            self.url = url
            self.parts = [b"", b" ", b"", b""]
            self.special = []
            self.head_raw = 0
            if self.active is None:
                self.deadline = self.read_at + self.settings.client_header_timeout
        else:
            self.url += url
        if len(self.url) > self.head_limit:
            self._reject(414, "TargetTooLong")
            raise _Reject

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # else a trailer field: dropped
            lname = REQUEST_NAMES.special_name(name)
            if lname:
                self.special.append((lname, value))
            else:
                parts = self.parts  # four appends: no tuple to build and free per field
                parts.append(name)
                parts.append(b": ")
                parts.append(value)
                parts.append(b"\r\n")

    def on_headers_complete(self) -> None:
        self.in_head = False
        parts = self.parts
        special = self.special
        if (len(parts) >> 2) - 1 + len(special) > self.settings.max_headers:
            self._reject(431, "TooManyHeaders")
            raise _Reject
        if self.head_raw + self.read_size > self.head_limit:
            # Possibly too large (a head within a smaller read cannot be): measure exactly.
            size = (
                len(self.url) + sum(map(len, parts)) + sum(len(n) + len(v) + 4 for n, v in special)
            )
            if size > self.head_limit:
                self._reject(431, "HeadTooLarge")
                raise _Reject
        parser = self.parser
        exchange = self.routing.open_exchange(
            self, parser.get_method(), self.url, parser.get_http_version(), parts, special
        )
        answer = exchange.answer
        if answer is not None and answer.close:
            # A request we refuse outright: answer in turn, read nothing more.
            self.rejected = True
        self.current = exchange
        self.last = exchange
        if not exchange.request_done:
            self.deadline = self.loop.time() + self.settings.client_body_timeout
        if self.active is None:
            self.active = exchange
            self.starting = exchange
        else:
            self.queue.append(exchange)
        if self.rejected:
            self._stop_reading()
            raise _Reject

    def on_body(self, body: bytes) -> None:
        current = self.current
        if current is not None:
            current.request_body(body)

    def on_message_complete(self) -> None:
        current = self.current
        if current is None:
            return
        self.current = None
        if not current.request_done:  # else request_end has nothing to do: save the call
            current.request_end()
        if self.closing:
            return
        if self.active is not None:
            self.deadline = 0.0  # the upstream's timers run now
            if self.queue or self.active is not current:
                self._pause(_PAUSE_PIPELINE)
        elif not self.in_head:
            self.deadline = self._idle_deadline()

    # ---- the client side of the active exchange (see proxy/clientside.py) -------------------

    def send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not headers and status == 100:
            self.write(CONTINUE)
            return
        parts = [hdr.status_line(status)]
        for name, value in headers:
            parts.extend((name, b": ", value, b"\r\n"))
        parts.append(b"\r\n")
        self.write(b"".join(parts))

    def send_head(
        self,
        status: int,
        parts: list[bytes],
        special: list[tuple[bytes, bytes, bytes]],
        head: RequestHead,
        added: bytes,
        replaced: frozenset[bytes],
    ) -> ResponseHead:
        keep_alive = head.keep_alive and head.upgrade is None and not self.connections.draining
        response = hdr.render_response(
            status,
            parts,
            special,
            head.method == b"HEAD",
            head.version_11,
            keep_alive,
            added,
            replaced,
        )
        self.framing = framing = response.framing
        self.keep = response.keep_alive
        if framing == hdr.FRAME_NONE:
            self.pending_head = None
            self.write(response.data)
        else:
            # Sent with the first body piece: one write instead of two for small responses.
            self.pending_head = response.data
        return response

    def send_body(self, piece: bytes | memoryview) -> None:
        if self.closing:
            return
        size = len(piece)
        pending_head = self.pending_head
        if size <= 16384:
            # Small: copying is cheaper than a second buffer; one write.
            if self.framing == hdr.FRAME_CHUNKED:
                piece = b"%x\r\n%s\r\n" % (size, piece)
            if pending_head is not None:
                self.pending_head = None
                piece = pending_head + piece
            self.transport.write(piece)
            return
        # Large: never copy the piece; head, framing and piece go out in one writev.
        chunked = self.framing == hdr.FRAME_CHUNKED
        parts = [b"%x\r\n" % size, piece, b"\r\n"] if chunked else [piece]
        if pending_head is not None:
            self.pending_head = None
            parts.insert(0, pending_head)
        self.transport.writelines(parts)

    def send_answer(self, status: int, fields: bytes, close: bool, head_only: bool) -> bool:
        close = close or self.connections.draining
        data = local_reply(status, close=close, head_only=head_only)
        if fields:
            data = data.replace(b"\r\n", b"\r\n" + fields, 1)
        self.framing = hdr.FRAME_NONE
        self.pending_head = None
        self.keep = not close
        self.write(data)
        return not close

    def finish(self, exchange: object, reusable: bool, now: float) -> None:
        tail = hdr.LAST_CHUNK if self.framing == hdr.FRAME_CHUNKED else b""
        pending_head = self.pending_head
        if pending_head is not None:
            tail = pending_head + tail
            self.pending_head = None
        if tail:
            self.write(tail)
        self.exchange_done(exchange, reusable and self.keep, now)

    def upgrade(
        self,
        exchange: object,
        headers: list[tuple[bytes, bytes]],
        rest: bytes,
        upstream: asyncio.Transport,
    ) -> None:
        self.write(hdr.render_switching(headers))
        if rest:
            self.write(rest)
        Tunnel(
            self.loop,
            self.settings.tunnel_idle_timeout,
            self.connections,
            self.transport,
            upstream,
        )
        # The connection now belongs to the tunnel: this protocol is out of the picture.
        self.closing = True
        self.deadline = 0.0
        self.active = None
        self.current = None
        self.connections.release(self)
        if self.tunnel_rest:
            upstream.write(self.tunnel_rest)

    def pause_reading(self) -> None:
        self._pause(_PAUSE_BODY)

    def resume_reading(self) -> None:
        self._resume(_PAUSE_BODY)

    # ---- exchanges in turn -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.transport.write(data)

    def exchange_done(self, exchange: object, keep_alive: bool, now: float = 0.0) -> None:
        if self.active is exchange:
            self.active = None
        self.telemetry.stats.requests += 1
        if self.closing:
            return
        if (
            not keep_alive
            or self.connections.draining
            or ((self.rejected or self.eof) and not self.queue)
        ):
            self.close()
            return
        if self.queue:
            # Start the next pipelined exchange from a fresh stack frame: the upstream that
            # finished this one may still be inside its parser callback.
            self.loop.call_soon(self._next)
            return
        if self.paused:
            self._resume(_PAUSE_PIPELINE)
        if self.current is None and not self.in_head:
            if not now:
                now = self.loop.time()
            self.deadline = now + self.settings.keepalive_timeout

    def _next(self) -> None:
        if self.closing or self.active is not None or not self.queue:
            return
        exchange = self.queue.popleft()
        self.active = exchange
        exchange.begin()
        if not self.queue and not self.closing:
            self._resume(_PAUSE_PIPELINE)

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

    def timeout(self) -> None:
        """Called by the server's sweep when `deadline` passed."""
        self.deadline = 0.0
        if self.closing:
            return
        if self.in_head:
            if self.active is None:
                self._reject(408, "HeaderTimeout")
            else:
                self.abort()
        elif self.current is not None and not self.paused:
            self.current.client_timeout()
        elif self.active is None and not self.queue:
            self.close()  # idle keep-alive connection
        elif self.write_paused:
            self.telemetry.reject(self.ctx, 0, "ClientNotReading")
            self.abort()

    def drain(self) -> None:
        """Shutdown: close at once when idle, else after the response in progress."""
        if self.active is None and self.current is None and not self.in_head and not self.queue:
            self.close()

    # ---- internals ---------------------------------------------------------------------------

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # llhttp refuses versions other than 0.9/1.0/1.1/2.0; parse_request decides instead
        # (1.x as 1.1, 2 and above 505), which is RFC 9110 §2.5's advice.
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def _idle_deadline(self) -> float:
        return self.loop.time() + self.settings.keepalive_timeout

    def _pause(self, bit: int) -> None:
        if not self.paused and not self.closing:
            self.transport.pause_reading()
        self.paused |= bit

    def _resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and not self.closing:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self._pause(_PAUSE_UPGRADE)

    def _upgraded(self, data: bytes, offset: int) -> None:
        last = self.last
        if self.rejected or self.closing:
            return
        if last is not None and last.head is not None and last.head.upgrade is not None:
            # The bytes after the upgrade request belong to the tunnel, if the upstream agrees;
            # the connection is not read again until then. A refused upgrade closes it.
            self.tunnel_rest += data[offset:]
            self.rejected = True
            self._pause(_PAUSE_UPGRADE)
            return
        # An upgrade we do not tunnel (h2c, CONNECT was refused before): continue as HTTP/1.1.
        self.parser = self._new_parser()
        rest = data[offset:]
        if rest:
            self.data_received(rest)

    def _reject(self, status: int, reason: str, detail: str | None = None) -> None:
        """Refuse the request being read: answer in turn (if we still can) and close."""
        if self.rejected or self.closing:
            return
        self.rejected = True
        self.in_head = False
        self._stop_reading()
        self.telemetry.reject(self.ctx, status, reason, detail)
        starting = self.starting
        if starting is not None and starting is self.active and starting is self.current:
            # The request that is not right is the one about to start: it never leaves.
            self.starting = None
            self.active = None
            self.current = None
            starting.discard()
        if self.active is None:
            self.closing = True
            self.deadline = 0.0
            self.transport.write(local_reply(status, close=True))
            self.transport.close()
            self.telemetry.refused(self.ctx, self.url, status, reason)
        else:
            # Answer after the responses still owed, then close.
            self.queue.append(self.routing.local_exchange(self, status, reason, self.url))
