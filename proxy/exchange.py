"""One request/response through the proxy: pick an endpoint, forward, relay, retry if safe.

The downstream protocol creates an `Exchange` when a request head is complete, with either a
local reply decided up front (404, 503, 413, ...) or a `Route` from the generation captured at
that moment. `begin` runs when the exchange reaches the head of the connection's pipeline:
it picks an endpoint from the route's cluster, takes a pooled connection or dials one, and
writes the request head. Body pieces flow client -> upstream as they arrive; response pieces
flow upstream -> client as they arrive. Nothing is awaited on this path: everything is driven
by protocol callbacks, except the connect itself (one task per new upstream connection).

Retries: a connect failure ejects the endpoint and moves on to another one (up to
`upstream_max_attempts` distinct endpoints; nothing was sent). A pooled connection that turns
out stale (closed before any response byte) is replaced by a fresh one once. A fresh connection
that fails before any response byte is retried elsewhere only for idempotent methods. Either
needs the whole request still at hand: body bytes are kept for replay up to REPLAY_LIMIT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from proxy import headers as hdr
from proxy.accesslog import BATCH as ACCESS_BATCH
from proxy.config import Endpoint
from proxy.connections import Connections
from proxy.headers import RequestHead, ResponseHead
from proxy.metrics import OTHER_METHOD
from proxy.pool import Pool
from proxy.replies import CONTINUE, local_reply
from proxy.route import Route
from proxy.settings import ProxySettings
from proxy.telemetry import Telemetry
from proxy.tunnel import Tunnel
from proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol

logger = logging.getLogger("portico.proxy")

# Request body kept for a retry; beyond it the request can no longer be replayed.
REPLAY_LIMIT = 64 * 1024
# Body bytes buffered while no upstream connection is ready; beyond it the client is paused.
BUFFER_LIMIT = 64 * 1024

_LAST_CHUNK = b"0\r\n\r\n"
# Framings render_response picks for a body without length (or chunked, told apart upstream).
_CLOSE_DELIMITED = (hdr.FRAME_CHUNKED, hdr.FRAME_CLOSE)


class Forwarding:
    """What the exchanges of one worker share: the loop, the upstream pool, telemetry, the
    connection registry (for draining and tunnels) and the limits they apply."""

    __slots__ = ("connections", "loop", "max_attempts", "pool", "telemetry", "tunnel_idle_timeout")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: Pool,
        telemetry: Telemetry,
        connections: Connections,
        settings: ProxySettings,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.telemetry = telemetry
        self.connections = connections
        self.max_attempts = settings.upstream_max_attempts
        self.tunnel_idle_timeout = settings.tunnel_idle_timeout


class Exchange:
    __slots__ = (
        "attempts_left",
        "body_received",
        "close_after",
        "conn",
        "connect_task",
        "down",
        "endpoint",
        "finished",
        "fwd",
        "head",
        "head_at",
        "pending",
        "pending_bytes",
        "pending_head",
        "read_timeout",
        "reason",
        "replayable",
        "reply",
        "request_done",
        "response",
        "response_bytes",
        "route",
        "sent",
        "sent_at",
        "started",
        "status",
        "switching",
        "tried",
        "tunnel_rest",
        "upstream",
    )

    def __init__(
        self,
        fwd: Forwarding,
        down: DownstreamProtocol,
        head: RequestHead | None,
        route: Route | None,
        *,
        reply: int = 0,
        reason: str | None = None,
        close_after: bool = False,
        started: float = 0.0,
    ) -> None:
        self.fwd = fwd
        self.down = down
        self.head = head
        self.route = route
        self.reply = reply  # a local reply status, 0 when forwarding
        self.reason = reason  # why a local reply (for the access log)
        self.close_after = close_after
        # A head parsed from a read is timed by that read (one clock call less per request).
        self.started = started if started else fwd.loop.time()
        self.read_timeout = route.read_timeout if route is not None else 60.0
        self.request_done = head is None or (head.content_length <= 0 and not head.chunked)
        self.body_received = 0
        # Request body pieces (framed for upstream) not yet sent, or kept for a replay.
        self.pending: list[bytes] | None = None
        self.pending_bytes = 0
        self.replayable = True
        self.conn: UpstreamProtocol | None = None
        self.connect_task: asyncio.Task[UpstreamProtocol] | None = None
        self.endpoint: Endpoint | None = None
        self.tried: list[Endpoint] = []
        self.attempts_left = fwd.max_attempts
        self.response: ResponseHead | None = None
        self.response_bytes = False  # any byte from the upstream for this attempt
        self.pending_head: bytes | None = None
        self.status = 0
        self.sent = 0
        self.finished = False
        self.switching: list[tuple[bytes, bytes]] | None = None
        self.tunnel_rest = b""
        self.upstream: str | None = None  # authority of the attached connection, for the log
        self.sent_at = 0.0  # loop time the request head went to the pod (last attempt)
        self.head_at = 0.0  # loop time the final response head arrived; 0.0: none

    # ---- start -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Run when this exchange is the oldest unanswered one on its connection."""
        if self.reply:
            self._local(self.reply, self.reason or "LocalReply", close=self.close_after)
            return
        route = self.route
        assert route is not None and self.head is not None
        if self.head.expect_continue and not self.request_done:
            self.down.write(CONTINUE)
        self._attempt()

    def _attempt(self) -> None:
        route = self.route
        assert route is not None
        cluster = route.cluster
        if cluster is None:
            self._local(503, route.unavailable or "NoEndpoints")
            return
        tried = self.tried
        endpoint = cluster.pick(route.balancer, tried) if tried else cluster.pick(route.balancer)
        if endpoint is None:
            if tried:
                self._local(502, "UpstreamConnectFailed")
            else:
                self._local(503, "NoEndpoints")
            return
        if tried:
            self.fwd.telemetry.metrics.retries += 1
        tried.append(endpoint)
        self.upstream = None
        self.attempts_left -= 1
        self.endpoint = endpoint
        # TLS and plain connections to one pod live under different pool keys.
        tls = route.upstream_tls
        key = (
            (endpoint.address, endpoint.port)
            if tls is None
            else (endpoint.address, endpoint.port, tls)
        )
        # Pool.acquire, inlined for the common case of a warm idle connection.
        idle = self.fwd.pool.idle.get(key)
        conn = idle.pop() if idle else None
        if conn is not None and (conn.closed or conn.transport is None):
            conn = self.fwd.pool.acquire(key)
        if conn is not None:
            self._attach(conn)
        else:
            self._dial(endpoint)

    def _dial(self, endpoint: Endpoint) -> None:
        route = self.route
        assert route is not None
        fwd = self.fwd
        task = fwd.loop.create_task(
            fwd.pool.connect(endpoint, route.connect_timeout, route.upstream_tls)
        )
        self.connect_task = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[UpstreamProtocol]) -> None:
        if self.connect_task is task:
            self.connect_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            conn = task.result()
            if self.finished:
                self.fwd.pool.release(conn)
                return
            route = self.route
            assert route is not None and route.cluster is not None
            assert self.endpoint is not None
            route.cluster.connect_succeeded(self.endpoint)
            self._attach(conn)
            return
        if self.finished:
            return
        route = self.route
        assert route is not None and route.cluster is not None and self.endpoint is not None
        telemetry = self.fwd.telemetry
        if route.cluster.connect_failed(self.endpoint):
            telemetry.metrics.ejections += 1
        telemetry.stats.upstream_connect_failures += 1
        logger.info(
            "upstream.connect_failed",
            extra={
                "endpoint": self.endpoint.authority,
                "backend": route.key,
                "error": type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc),
            },
        )
        if self.attempts_left > 0:
            self._attempt()
        else:
            self._local(502, "UpstreamConnectFailed")

    def _attach(self, conn: UpstreamProtocol) -> None:
        head = self.head
        route = self.route
        assert head is not None and route is not None and conn.transport is not None
        self.conn = conn
        self.upstream = conn.authority
        conn.exchange = self
        conn.requests += 1
        conn.in_head = True  # the next bytes start a response head
        conn.remaining = 0
        conn.parts = [b""]
        conn.special = []
        self.response_bytes = False
        transport = conn.transport
        data = head.upstream_head
        if data is None:
            data = head.render(conn.authority.encode())
        pending = self.pending
        if self.down.paused:
            self.down.resume_for_body()  # the buffered body goes out now
        if pending:
            transport.writelines([data, *pending])
        else:
            transport.write(data)
        if self.request_done and not self.replayable:
            self.pending = None
        self.sent_at = now = self.fwd.loop.time()
        conn.deadline = now + self.read_timeout
        if route.track and route.cluster is not None:
            route.cluster.request_started(conn.endpoint)
        if self.down.write_paused:
            transport.pause_reading()
            conn.deadline = 0.0

    # ---- request body (from the downstream protocol) -----------------------------------------

    def request_body(self, body: bytes) -> None:
        if self.finished:
            return
        size = len(body)
        received = self.body_received + size
        self.body_received = received
        route = self.route
        if route is not None and route.max_body and received > route.max_body:
            self.fwd.telemetry.reject(self.down.ctx, 413, "BodyTooLarge")
            self._fail(413, "BodyTooLarge", close=True)
            return
        if self.head is not None and self.head.chunked:
            body = b"%x\r\n%s\r\n" % (size, body)
        self._send_body(body)

    def request_end(self) -> None:
        if self.request_done:
            return
        self.request_done = True
        if self.finished:
            return
        if self.head is not None and self.head.chunked:
            self._send_body(_LAST_CHUNK)
        if not self.replayable:
            self.pending = None

    def _send_body(self, piece: bytes) -> None:
        conn = self.conn
        pending = self.pending
        if conn is not None and conn.transport is not None:
            conn.transport.write(piece)
            if self.replayable:
                self.pending_bytes += len(piece)
                if self.pending_bytes > REPLAY_LIMIT:
                    self.pending = None
                    self.replayable = False
                elif pending is None:
                    self.pending = [piece]
                else:
                    pending.append(piece)
            return
        # No connection yet (dialling, or between attempts): buffer, and stop reading the
        # client while the buffer is over its limit.
        if pending is None:
            if not self.replayable and self.tried:
                return  # a failed attempt of an unreplayable request: it is answered anyway
            pending = self.pending = []
        pending.append(piece)
        self.pending_bytes += len(piece)
        if self.pending_bytes > BUFFER_LIMIT:
            self.replayable = False
            self.down.pause_for_body()

    def upstream_write_paused(self) -> None:
        self.down.pause_for_body()
        conn = self.conn
        if conn is not None and self.route is not None:
            conn.deadline = self.fwd.loop.time() + self.route.send_timeout

    def upstream_write_resumed(self) -> None:
        self.down.resume_for_body()
        conn = self.conn
        if conn is not None and self.response is None:
            conn.deadline = self.fwd.loop.time() + self.read_timeout

    # ---- response (from the upstream protocol) -----------------------------------------------

    def response_head(
        self,
        conn: UpstreamProtocol,
        status: int,
        parts: list[bytes],
        special: list[tuple[bytes, bytes, bytes]],
    ) -> None:
        """A response head from the upstream: `parts` are its end-to-end fields rendered
        (parts[0] left for the status line), `special` the others (see headers.py)."""
        head = self.head
        assert head is not None
        if status < 200:
            # Rare: back to plain (name, value) pairs.
            headers = [(parts[i], parts[i + 2]) for i in range(1, len(parts), 4)]
            headers += [(name, value) for _, name, value in special]
            if status == 101:
                if head.upgrade is None:
                    self.upstream_failed(conn, 502, "UnexpectedSwitchingProtocols")
                else:
                    self.switching = headers
                return
            # 100 was answered by us already (Expect is not forwarded); others are relayed.
            if status != 100 and head.version_11:
                parts = [hdr.status_line(status)]
                for name, value in headers:
                    parts.extend((name, b": ", value, b"\r\n"))
                parts.append(b"\r\n")
                self.down.write(b"".join(parts))
            return
        down = self.down
        # The loop time of the read that holds the head (one clock call less per request).
        head_at = conn.read_at
        # Never before the request went out, whatever the clock's rounding.
        self.head_at = head_at if head_at > self.sent_at else self.sent_at
        keep_alive = head.keep_alive and head.upgrade is None and not self.fwd.connections.draining
        try:
            response = hdr.render_response(
                status,
                parts,
                special,
                head.method == b"HEAD",
                head.version_11,
                keep_alive,
                down.hsts,
            )
        except ValueError:
            self.upstream_failed(conn, 502, "BadUpstreamResponse")
            return
        self.response = response
        self.status = status
        if response.framing == hdr.FRAME_NONE:
            down.write(response.data)
            if head.method == b"HEAD" and status >= 200:
                keep = conn.finish_head_response()
                self.response_done(conn, keep, conn.read_at)
        else:
            # Sent with the first body piece: one write instead of two for small responses.
            self.pending_head = response.data

    def response_body(self, body: bytes | memoryview) -> None:
        response = self.response
        if response is None or self.finished:
            return
        size = len(body)
        self.sent += size
        down = self.down
        if down.closing:
            return
        pending_head = self.pending_head
        if size <= 16384:
            # Small: copying is cheaper than a second buffer; one write.
            if response.framing == hdr.FRAME_CHUNKED:
                body = b"%x\r\n%s\r\n" % (size, body)
            if pending_head is not None:
                self.pending_head = None
                body = pending_head + body
            down.transport.write(body)
            return
        # Large: never copy the piece; head, framing and piece go out in one writev.
        if response.framing == hdr.FRAME_CHUNKED:
            parts = [b"%x\r\n" % size, body, b"\r\n"]
        else:
            parts = [body]
        if pending_head is not None:
            self.pending_head = None
            parts.insert(0, pending_head)
        down.transport.writelines(parts)

    def response_done(self, conn: UpstreamProtocol, upstream_keep_alive: bool, now: float) -> None:
        """The response is complete; `now` is the loop time of the read that completed it."""
        response = self.response
        if self.finished or response is None:
            return
        tail = _LAST_CHUNK if response.framing == hdr.FRAME_CHUNKED else b""
        if self.pending_head is not None:
            tail = self.pending_head + tail
            self.pending_head = None
        down = self.down
        if tail:
            down.write(tail)
        # The common ending, inlined (_release + _finish): it runs once per request.
        self.finished = True
        self.pending = None
        self.conn = None
        if conn.exchange is self:
            conn.exchange = None
        endpoint = self.endpoint
        if endpoint is not None:
            self.endpoint = None
            route = self.route
            if route is not None and route.track and route.cluster is not None:
                route.cluster.request_finished(endpoint, now - self.started)
        request_done = self.request_done
        if upstream_keep_alive and request_done:
            self.fwd.pool.release(conn, now)
        else:
            conn.close()
        self._ended(self.reason, now)
        down.exchange_done(self, response.keep_alive and request_done, now)

    def upstream_upgraded(self, conn: UpstreamProtocol, rest: bytes) -> None:
        """The upstream switched protocols: from now on both connections are one byte pipe."""
        switching = self.switching
        if switching is None or self.finished or conn.transport is None:
            self.upstream_failed(conn, 502, "BadUpstreamResponse")
            return
        self.status = 101
        down = self.down
        fwd = self.fwd
        self.conn = None
        conn.exchange = None
        conn.deadline = 0.0
        fwd.pool.forget(conn)
        if self.route is not None and self.route.cluster is not None:
            self.route.cluster.request_finished(conn.endpoint, fwd.loop.time() - self.started)
        self.finished = True
        down.write(hdr.render_switching(switching))
        if rest:
            down.write(rest)
        tunnel = Tunnel(
            fwd.loop, fwd.tunnel_idle_timeout, fwd.connections, down.transport, conn.transport
        )
        conn.hand_over()  # the tunnel owns the transport now
        down.tunnel_started(self, tunnel)
        if self.tunnel_rest:
            conn.transport.write(self.tunnel_rest)
        self._ended(None, fwd.loop.time())

    # ---- failures ----------------------------------------------------------------------------

    def upstream_lost(self, conn: UpstreamProtocol) -> None:
        """The upstream connection closed while this exchange was using it."""
        if self.finished:
            return
        self.conn = None
        response = self.response
        if response is not None:
            if response.framing in _CLOSE_DELIMITED and not response.upstream_chunked:
                # A body without Content-Length or chunked framing ends with the connection.
                self.response_done(conn, False, self.fwd.loop.time())
            else:
                self._abort("UpstreamClosedEarly")
            return
        self._request_finished()
        if not self.response_bytes and self.replayable:
            if conn.requests > 1:
                # A pooled connection the upstream had closed: the classic keep-alive race.
                # Nothing of the response came back, so send it again on a fresh connection.
                self.fwd.telemetry.stats.upstream_stale_retries += 1
                self.endpoint = conn.endpoint
                self._dial(conn.endpoint)
                return
            head = self.head
            if (
                head is not None
                and head.method in hdr.IDEMPOTENT_METHODS
                and self.attempts_left > 0
            ):
                self._attempt()
                return
        self._fail(502, "UpstreamClosed")

    def upstream_timeout(self, conn: UpstreamProtocol) -> None:
        if self.finished:
            conn.close()
            return
        self._release(conn, False)
        if self.response is None:
            self._fail(504, "UpstreamTimeout")
        else:
            self._abort("UpstreamTimeout")

    def upstream_failed(self, conn: UpstreamProtocol, status: int, reason: str) -> None:
        if self.finished:
            conn.close()
            return
        self._release(conn, False)
        self._fail(status, reason)

    def client_lost(self) -> None:
        """The client went away: drop everything without an answer."""
        if self.finished:
            return
        self.finished = True
        task = self.connect_task
        if task is not None:
            task.cancel()
            self.connect_task = None
        conn = self.conn
        if conn is not None:
            self._release(conn, False)
        if self.status == 0:
            self.status = 499  # nginx's "client closed request", for the access log
        self._ended(self.reason or "ClientClosed", self.fwd.loop.time())

    def discard(self) -> None:
        """Dropped before it began (its request turned out malformed): nothing to undo."""
        self.finished = True
        self.pending = None

    def client_timeout(self) -> None:
        """The client stopped sending its request body."""
        if self.finished:
            return
        self.fwd.telemetry.reject(self.down.ctx, 408, "BodyTimeout")
        self._fail(408, "BodyTimeout", close=True)

    # ---- endings -----------------------------------------------------------------------------

    def _release(self, conn: UpstreamProtocol, reuse: bool) -> None:
        if self.conn is conn:
            self.conn = None
        if conn.exchange is self:
            conn.exchange = None
        self._request_finished()
        if reuse:
            self.fwd.pool.release(conn)
        else:
            conn.close()

    def _request_finished(self) -> None:
        endpoint = self.endpoint
        route = self.route
        if endpoint is not None and route is not None and route.cluster is not None:
            self.endpoint = None
            if route.track:
                route.cluster.request_finished(endpoint, self.fwd.loop.time() - self.started)

    def _fail(self, status: int, reason: str, *, close: bool = False) -> None:
        """Answer locally if nothing was sent yet, else cut the client connection."""
        if self.finished:
            return
        conn = self.conn
        if conn is not None:
            self._release(conn, False)
        if self.response is None:
            self._local(status, reason, close=close or not self.request_done)
        else:
            self._abort(reason)

    def _local(self, status: int, reason: str, *, close: bool = False) -> None:
        if self.finished:
            return
        head = self.head
        down = self.down
        # A request body still on its way would be read as the next request: close instead.
        close = close or not self.request_done or head is None or not head.keep_alive
        close = close or self.fwd.connections.draining
        self.reason = reason
        self.status = status
        self.fwd.telemetry.stats.local_replies += 1
        data = local_reply(
            status, close=close, head_only=head is not None and head.method == b"HEAD"
        )
        if down.hsts:
            data = data.replace(b"\r\n", b"\r\n" + down.hsts, 1)
        down.write(data)
        self._finish(not close)

    def _abort(self, reason: str) -> None:
        """The response head is out but its body cannot be completed: cut the connection."""
        if self.finished:
            return
        self.reason = reason
        self.finished = True
        conn = self.conn
        if conn is not None:
            self._release(conn, False)
        self._ended(reason, self.fwd.loop.time())
        self.down.abort()

    def _finish(self, keep_alive: bool) -> None:
        self.finished = True
        self.pending = None
        task = self.connect_task
        if task is not None:
            task.cancel()
            self.connect_task = None
        self._ended(self.reason, self.fwd.loop.time())
        self.down.exchange_done(self, keep_alive)

    def _ended(self, reason: str | None, now: float) -> None:
        """Every exchange ends here once: its request metrics and access-log entry."""
        route = self.route
        head = self.head
        down = self.down
        telemetry = self.fwd.telemetry
        head_at = self.head_at
        telemetry.metrics.record(
            telemetry.metrics.unrouted if route is None else route.series_in(telemetry.metrics),
            head.method if head is not None else OTHER_METHOD,
            self.status,
            now - self.started,
            head_at - self.sent_at if head_at else -1.0,
            self.body_received,
            self.sent,
            reason,
        )
        access = telemetry.access
        if access is None:
            return
        upstream = self.upstream
        if upstream is None:
            tried = self.tried
            upstream = tried[-1].authority if tried else None
        # AccessLog.record, inlined: this runs for every request.
        entries = access.entries
        entries.append(
            (
                time.time(),
                (
                    down.ctx.client_ip if down.ctx is not None else b"",
                    head.method if head is not None else b"",
                    head.host if head is not None else b"",
                    head.target if head is not None else down.url,
                    self.status,
                    self.sent,
                    now - self.started,
                    upstream,
                    head.request_id if head is not None else b"",
                    reason,
                    head.forwarded_for if head is not None else None,
                    self.status if self.response is not None else 0,
                    head_at - self.sent_at,
                    route.rule if route is not None else None,
                ),
            )
        )
        if len(entries) >= ACCESS_BATCH:
            access.flush()
