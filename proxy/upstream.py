"""Pod-facing HTTP/1.1 protocol: one TCP connection to one endpoint, reused through the pool.

While an exchange is attached (`start`), the httptools response parser's callbacks go straight
to it through `Receiver` (status, headers, body pieces, end of message); between exchanges the
connection idles in the `Pool` (`park`). Bytes from an idle connection mean the peer is broken,
so it is closed. The connection keeps its own deadline: the read timeout while it waits for the
pod, the send timeout while the pod does not take the request body, the keep-alive timeout
while it idles; none while the client is not reading (proxy/flow.py decides when to pause).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Protocol, cast

import httptools
from mypy_extensions import mypyc_attr

from proxy.config import Endpoint
from proxy.headers import RESPONSE_NAMES, ResponseHead

_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 12)
# Smallest rest of a Content-Length body worth reading past the parser (a new parser per
# response costs about what copying this much does).
_PAST_PARSER_MIN = 8192
# Smallest read worth splitting at the end of a response head (see data_received).
_SPLIT_MIN = 16384
# Portico's bound on a response head without proxy-buffer-size: a head still unfinished past
# it is a 502 (httptools itself keeps any length). Checked only when a head spans reads, so a
# head that comes whole in one read costs nothing to check.
HEAD_BOUND = 64 * 1024
_HEAD_END = b"\r\n\r\n"


@mypyc_attr(allow_interpreted_subclasses=True)
class Receiver:
    """What a connection reports to while it carries an exchange (proxy/exchange.py's
    `Exchange` implements it). A base class, not a typing.Protocol, for the same reason as
    proxy/clientside.py's `ClientSide`: these calls run several times per request."""

    __slots__ = ("response", "sent")

    # The final response head as relayed to the client, once it arrived (None before).
    response: ResponseHead | None
    # Body bytes of the response relayed so far.
    sent: int

    def response_head(
        self,
        conn: UpstreamProtocol,
        status: int,
        parts: list[bytes],
        special: list[tuple[bytes, bytes, bytes]],
    ) -> None:
        raise NotImplementedError

    def response_body(self, body: bytes | memoryview) -> None:
        raise NotImplementedError

    def response_done(self, conn: UpstreamProtocol, upstream_keep_alive: bool, now: float) -> None:
        raise NotImplementedError

    def upstream_upgraded(self, conn: UpstreamProtocol, rest: bytes) -> None:
        raise NotImplementedError

    def upstream_lost(self, conn: UpstreamProtocol) -> None:
        raise NotImplementedError

    def upstream_timeout(self, conn: UpstreamProtocol) -> None:
        raise NotImplementedError

    def upstream_failed(self, conn: UpstreamProtocol, status: int, reason: str) -> None:
        raise NotImplementedError

    def upstream_write_paused(self) -> None:
        raise NotImplementedError

    def upstream_write_resumed(self) -> None:
        raise NotImplementedError


class Owner(Protocol):
    """Who keeps track of the open connections (the `Pool`)."""

    def track(self, conn: UpstreamProtocol) -> None: ...

    def forget(self, conn: UpstreamProtocol) -> None: ...


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "answered",
        "authority",
        "born",
        "closed",
        "deadline",
        "endpoint",
        "exchange",
        "head_limit",
        "head_read",
        "head_tail",
        "in_head",
        "key",
        "loop",
        "owner",
        "parser",
        "parts",
        "pool_key",
        "read_at",
        "read_timeout",
        "remaining",
        "requests",
        "send_timeout",
        "sock",
        "special",
        "transport",
    )

    def __init__(
        self,
        owner: Owner,
        loop: asyncio.AbstractEventLoop,
        endpoint: Endpoint,
        key: tuple[str, int],
        pool_key: tuple[object, ...],
    ) -> None:
        self.owner = owner
        self.endpoint = endpoint
        # The pool's keys (see Pool.key): the endpoint's (ip, port), and the idle list this
        # connection returns to (TLS ones apart from plain ones).
        self.key = key
        self.pool_key = pool_key
        self.authority = endpoint.authority  # a property: computed once here, not per request
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Receiver | None = None
        self.deadline = 0.0
        self.closed = False
        self.requests = 0  # exchanges served; > 1 means the connection came from the pool
        # Any byte from the pod since the current exchange started (a stale pooled connection
        # closes before any).
        self.answered = False
        # The timeouts of the current exchange's route.
        self.read_timeout = 60.0
        self.send_timeout = 60.0
        self.born = loop.time()  # for upstream_keepalive_time
        # Loop time of the latest read: what finishing a response within it uses as "now".
        self.read_at = self.born
        # The head being read, classified as it arrives: end-to-end fields already rendered
        # (parts[0] is left for the status line), the fields that need a decision apart.
        self.parts: list[bytes] = [b""]
        self.special: list[tuple[bytes, bytes, bytes]] = []  # (lower-case name, name, value)
        self.in_head = True
        self.loop = loop
        self.sock: socket.socket | None = None
        # Body bytes still due from the pod, read past the parser (0: the parser reads).
        self.remaining = 0
        # The route's limit on the response head (proxy-buffer-size; 0: HEAD_BOUND), the bytes
        # of an unfinished head read so far and the last 3 of them (its end may straddle reads).
        self.head_limit = 0
        self.head_read = 0
        self.head_tail = b""

    # ---- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Not TCP (a Unix socket) or already closed: nothing to tune.
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # uvloop's transport socket builds a socket object for every call (2 us,
                # 9 % of a 64 KiB response's time): the per-response TCP_QUICKACK goes through
                # a duplicate descriptor of our own instead, closed with the connection.
                self.sock = socket.socket(
                    sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno())
                )
        self.owner.track(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Unsolicited bytes (or an early close notice) on an idle connection: unusable.
            self.close()
            return
        self.answered = True
        self.read_at = now = self.loop.time()
        self.deadline = now + self.read_timeout
        remaining = self.remaining
        if remaining:
            self._body_past_parser(exchange, data, remaining)
            return
        had_head = exchange.response is not None
        if not had_head and self.head_limit and self._head_too_large(data):
            exchange.upstream_failed(self, 502, "UpstreamHeadTooLarge")
            return
        rest: memoryview | None = None
        if not had_head and len(data) > _SPLIT_MIN:
            # A whole head and a large piece of body in one read (a pod on the same node sends
            # a 64 KiB response in one): the parser reads the head only, the body goes out as
            # a view of this read instead of the parser's copy of it.
            end = data.find(b"\r\n\r\n") + 4
            if end >= 4 and len(data) - end >= _PAST_PARSER_MIN:
                rest = memoryview(data)[end:]
                data = data[:end]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.exchange is exchange:
                tail = data[upgrade.args[0] :]
                exchange.upstream_upgraded(self, tail if rest is None else tail + rest)
            return
        except httptools.HttpParserError:
            if self.exchange is exchange:
                exchange.upstream_failed(self, 502, "BadUpstreamResponse")
            else:
                self.close()
            return
        head_completed = False
        if self.exchange is exchange and not had_head:
            response = exchange.response
            if response is None:
                if rest is not None:
                    self.data_received(bytes(rest))  # a 1xx head, then the next one
                elif self._head_unfinished(data):
                    exchange.upstream_failed(self, 502, "UpstreamHeadTooLarge")
                return  # the head is not complete yet
            # This read completed the head; the body follows in `rest` or in later reads.
            head_completed = True
            if response.length >= 0:
                left = response.length - exchange.sent
                if left >= _PAST_PARSER_MIN or (rest is not None and left > 0):
                    # The rest of a Content-Length body is counted here and forwarded as read,
                    # without the parser's copy of every piece (see _body_past_parser).
                    self.remaining = left
        if rest is not None:
            if self.remaining and self.exchange is exchange:
                self._body_past_parser(exchange, rest, self.remaining)
            else:
                self.data_received(bytes(rest))  # not a Content-Length body: the parser's
        # Only a body still unfinished after the read that completed its head needs the early
        # ACK (one that came whole with it does not: the setsockopt was 4 % of a 64 KiB
        # response's time).
        if head_completed and self.exchange is exchange:
            self._quickack()

    def _head_too_large(self, data: bytes) -> bool:
        """With a route's head limit, before the parser sees `data`: whether the head being
        read (ending in `data`, or not yet) is larger than the limit, as nginx's
        proxy_buffer_size refuses a head that does not fit ("upstream sent too big header")."""
        seen = self.head_read
        tail = self.head_tail if seen else b""
        end = (tail + data).find(_HEAD_END) if tail else data.find(_HEAD_END)
        size = seen + len(data) if end < 0 else seen + end + 4 - len(tail)
        return size > self.head_limit

    def _head_unfinished(self, data: bytes) -> bool:
        """`data` ended inside a response head: count it; whether the head passed its bound."""
        read = self.head_read + len(data)
        self.head_read = read
        self.head_tail = (self.head_tail + data)[-3:]
        return read > (self.head_limit or HEAD_BOUND)

    def _body_past_parser(
        self, exchange: Receiver, data: bytes | memoryview, remaining: int
    ) -> None:
        """Forward the rest of a Content-Length body; a fresh parser reads the next response."""
        size = len(data)
        if size < remaining:
            self.remaining = remaining - size
            exchange.response_body(data)
            return
        self.remaining = 0
        # The old parser knows the response's framing flags (Connection: close, HTTP/1.0);
        # it is mid-body, so the next response needs a new one.
        keep = bool(self.parser.should_keep_alive())
        self.parser = httptools.HttpResponseParser(self)
        self.in_head = True
        exchange.response_body(data if size == remaining else data[:remaining])
        if self.exchange is exchange:
            exchange.response_done(self, keep, self.read_at)
        if size > remaining:
            self.data_received(bytes(data[remaining:]))  # bytes past the response: closes

    def _quickack(self) -> None:
        # A pod writes a body in pieces; one that holds its last small piece (Nagle) until our
        # delayed ACK (40 ms) would stall the response. Once per response, after the read that
        # held its head, leave delayed-ACK mode for the rest of the body. Measured with wrk
        # -c50: p99 of 64 KiB responses 37 -> 4.5 ms; chunked responses 44 -> 6 ms (p50).
        # (After every read instead: the same p99, 10% fewer 64 KiB responses per second.)
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sock = self.sock
        if sock is not None:
            self.sock = None
            sock.close()  # the duplicate descriptor (see connection_made)
        self.owner.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            # The pod does not take the request body: timed as a send now.
            self.deadline = self.loop.time() + self.send_timeout
            exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            if exchange.response is None:
                self.deadline = self.loop.time() + self.read_timeout
            exchange.upstream_write_resumed()

    # ---- parser callbacks --------------------------------------------------------------------

    # No on_message_begin/on_status: every callback costs a Python call per response, the
    # header list is replaced once used, and the reason phrase is the standard one (RFC 9112
    # §4: clients ignore it).

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # trailers are dropped
            lname = RESPONSE_NAMES.special_name(name)
            if lname:
                self.special.append((lname, name, value))
            else:
                parts = self.parts
                parts.append(name)
                parts.append(b": ")
                parts.append(value)
                parts.append(b"\r\n")

    def on_headers_complete(self) -> None:
        parts = self.parts
        special = self.special
        self.parts = [b""]
        self.special = []
        status = self.parser.get_status_code()
        # After a 1xx head another head follows; anything after a final head is trailers.
        self.in_head = status < 200 and status != 101
        exchange = self.exchange
        if exchange is not None:
            exchange.response_head(self, status, parts, special)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.response is not None:
            exchange.response_done(self, self.parser.should_keep_alive(), self.read_at)

    # ---- used by the exchange, the pool and proxy/flow.py --------------------------------------

    def start(
        self,
        exchange: Receiver,
        read_timeout: float,
        send_timeout: float,
        now: float,
        head_limit: int = 0,
    ) -> None:
        """Carry `exchange` (its request head is written next): a new response head is due
        within `read_timeout`, at most `head_limit` bytes long (0: HEAD_BOUND)."""
        self.exchange = exchange
        self.head_limit = head_limit
        self.head_read = 0
        self.requests += 1
        self.in_head = True  # the next bytes start a response head
        self.remaining = 0
        self.parts = [b""]
        self.special = []
        self.answered = False
        self.read_timeout = read_timeout
        self.send_timeout = send_timeout
        self.deadline = now + read_timeout

    def park(self, now: float, keepalive_timeout: float) -> None:
        """Idle in the pool from `now` (the pool closes it after `keepalive_timeout`)."""
        self.exchange = None
        transport = self.transport
        if transport is not None:
            transport.resume_reading()  # may have been paused by a slow client
        self.deadline = now + keepalive_timeout

    def unpark(self) -> None:
        """Taken from the pool: no deadline until `start`."""
        self.deadline = 0.0

    def pause_reading(self) -> None:
        """The client is not reading: leave the response in the socket, untimed."""
        transport = self.transport
        if transport is not None:
            transport.pause_reading()
            self.deadline = 0.0

    def resume_reading(self, now: float) -> None:
        transport = self.transport
        if transport is not None:
            transport.resume_reading()
            self.deadline = now + self.read_timeout

    def finish_head_response(self) -> bool:
        """A response to HEAD ends with its head; httptools cannot be told, so start afresh."""
        keep = bool(self.parser.should_keep_alive())
        self.parser = httptools.HttpResponseParser(self)
        self.in_head = True
        return keep

    def hand_over(self) -> None:
        """The transport now belongs to a tunnel (its protocol replaced): let go of it."""
        self.closed = True
        self.exchange = None
        self.deadline = 0.0
        self.owner.forget(self)
        sock = self.sock
        if sock is not None:
            self.sock = None
            sock.close()  # our duplicate descriptor only: the tunnel's stays open

    def timeout(self) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # idle too long in the pool
        else:
            exchange.upstream_timeout(self)

    def close(self) -> None:
        self.exchange = None
        self.deadline = 0.0
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.exchange = None
        self.deadline = 0.0
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
