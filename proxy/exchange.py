"""One request/response through the proxy: pick an endpoint, forward, relay, retry if safe.

`Routing.open_exchange` creates an `Exchange` when a request head is complete, with the `Route`
from the generation captured at that moment (if any) and the route's `Policy` for the listener
the request came on, and an `Answer` when it is answered locally (404, 503, a policy step's
redirect or refusal, ...). The exchange talks to the client through `ClientSide`
(proxy/clientside.py), whatever the client speaks, and to the pod through an
`UpstreamProtocol` taken from the `Pool`; proxy/flow.py couples their reading and writing.
`begin` runs when it is the exchange's turn to answer (the head of an HTTP/1.1 pipeline):
it picks an endpoint from the route's cluster, takes a pooled connection or dials one, and
writes the request head. Body pieces flow client -> upstream as they arrive; response pieces
flow upstream -> client as they arrive. Nothing is awaited on this path: everything is driven
by protocol callbacks, except the connect itself (one task per new upstream connection).

Retries: a connect failure ejects the endpoint and moves on to another one (up to
`upstream_max_attempts` distinct endpoints; nothing was sent). A pooled connection that turns
out stale (closed before any response byte) is replaced by a fresh one once. A fresh connection
that fails before any response byte is retried elsewhere only for idempotent methods. Either
needs the whole request still at hand: body bytes are kept for replay up to REPLAY_LIMIT.
A route with proxy-next-upstream replaces the last two rules by its own (proxy/retry.py: which
failures and statuses go to another pod, how many attempts, for how long); a route with
proxy-request-buffering reads the whole body (up to its body limit) before choosing a pod, and
keeps it for a resend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy import flow
from proxy import headers as hdr
from proxy.accesslog import BATCH as ACCESS_BATCH
from proxy.affinity import Chooser
from proxy.clientside import ClientSide
from proxy.cluster import Cluster
from proxy.config import Endpoint
from proxy.errorpages import serves
from proxy.headers import RequestHead, ResponseHead
from proxy.metrics import OTHER_METHOD
from proxy.pacing import Pacer
from proxy.policy import Policy
from proxy.pool import Pool
from proxy.ratelimit import release as release_limit
from proxy.replies import Answer
from proxy.retry import ERROR, INVALID_HEADER, TIMEOUT, NextUpstream
from proxy.route import Route
from proxy.settings import ProxySettings
from proxy.steps import COOKIE_STATUSES, Pass, WaitingStep
from proxy.telemetry import Telemetry
from proxy.upstream import Receiver, UpstreamProtocol

logger = logging.getLogger("portico.proxy")

# Request body kept for a retry; beyond it the request can no longer be replayed.
REPLAY_LIMIT = 64 * 1024
# A body held whole (proxy-request-buffering) on a route without a body limit: past this much
# it is streamed from there on, and the request can no longer be resent.
HELD_BODY_LIMIT = 1024 * 1024


class Forwarding:
    """What the exchanges of one worker share: the loop, the upstream pool, telemetry, and
    the number of endpoints a request may try."""

    __slots__ = ("loop", "max_attempts", "pool", "telemetry")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: Pool,
        telemetry: Telemetry,
        settings: ProxySettings,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.telemetry = telemetry
        self.max_attempts = settings.upstream_max_attempts


class Exchange(Receiver):
    __slots__ = (
        "admitted",
        "affinity_fields",
        "answer",
        "attempts_left",
        "body_received",
        "check_task",
        "checking",
        "client",
        "conn",
        "connect_task",
        "endpoint",
        "finished",
        "fwd",
        "granted",
        "head",
        "head_at",
        "held",
        "hold",
        "pacer",
        "pending",
        "pending_bytes",
        "policy",
        "reason",
        "replayable",
        "request_done",
        "route",
        "sent_at",
        "started",
        "status",
        "switching",
        "tried",
        "upstream",
        "url",
    )

    def __init__(
        self,
        fwd: Forwarding,
        client: ClientSide,
        head: RequestHead | None,
        route: Route | None,
        policy: Policy,
        answer: Answer | None = None,
        started: float = 0.0,
        url: bytes = b"",
    ) -> None:
        self.fwd = fwd
        self.client = client
        self.head = head
        self.route = route
        self.policy = policy
        self.answer = answer  # the local answer decided up front; None: forward
        self.reason = answer.reason if answer is not None else None  # why a local reply
        # A head parsed from a read is timed by that read (one clock call less per request).
        self.started = started if started else fwd.loop.time()
        self.url = url  # the request target as read, for the log of a request without a head
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
        self.attempts_left = route.max_attempts if route is not None else fwd.max_attempts
        # proxy-request-buffering: the body is read whole before a pod is chosen. 0: no (or no
        # longer); 1: holding it, `begin` not run yet; 2: `begin` ran, request_end goes on.
        self.hold = 0
        # The rate-limit key of this request in progress (limit-connections, counted across
        # workers by proxy/ratelimit.py), given back when it ends; 0: none.
        self.held = 0
        if not self.request_done and route is not None and route.request_buffering:
            self.hold = 1
        self.response: ResponseHead | None = None
        self.status = 0
        self.sent = 0
        self.finished = False
        self.switching: list[tuple[bytes, bytes]] | None = None
        self.upstream: str | None = None  # authority of the attached connection, for the log
        self.sent_at = 0.0  # loop time the request head went to the pod (last attempt)
        self.head_at = 0.0  # loop time the final response head arrived; 0.0: none
        # The pace of the response body (limit-rate, proxy/pacing.py); None: sent as read.
        self.pacer: Pacer | None = None
        # The Set-Cookie of a sticky session given by this request's attempt (proxy/affinity.py)
        self.affinity_fields = b""
        # The index of the route's waiting request step (external auth) to run before a pod is
        # chosen, the steps after it following; -1: none (routing ran them all).
        self.checking = -1
        self.check_task: asyncio.Task[Answer | Pass | None] | None = None
        # What a waiting step that let the request in adds to its response (auth Set-Cookie).
        self.granted: Pass | None = None
        # Run instead of forwarding once the waiting steps let the request in: the start of
        # the gRPC call that carries this request (proxy/h2server.py); None: forward it here.
        self.admitted: Callable[[], None] | None = None

    # ---- start -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Run when this exchange is the oldest unanswered one on its connection."""
        answer = self.answer
        if answer is not None:
            self._local(answer.status, answer.reason, answer.close, answer.fields)
            return
        if self.checking >= 0:
            self._check()
            return
        route = self.route
        assert route is not None and self.head is not None
        if not self.request_done:
            if self.head.expect_continue:
                self.client.send_interim(100, [])
            if self.hold:
                if route.cluster is not None:
                    self.hold = 2  # request_end (or a body past the limit) goes on
                    return
                self.hold = 0
        self._attempt()

    # ---- waiting request steps (external auth) -----------------------------------------------

    def _check(self) -> None:
        """Run the waiting step `checking`; the request body read meanwhile is buffered as
        while dialling (no connection is attached), the client paused past its limit."""
        head = self.head
        ctx = self.client.ctx
        assert head is not None and ctx is not None
        step = self.policy.request[self.checking]
        assert isinstance(step, WaitingStep)
        task = self.fwd.loop.create_task(step.check(head, ctx))
        self.check_task = task
        task.add_done_callback(self._checked)

    def _checked(self, task: asyncio.Task[Answer | Pass | None]) -> None:
        if self.check_task is task:
            self.check_task = None
        if self.finished or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A check that breaks never lets the request through.
            logger.error("auth.check_failed", extra={"error": repr(exc)})
            self._local(500, "AuthFailed")
            return
        verdict = task.result()
        if isinstance(verdict, Answer):
            if verdict.close:
                self.fwd.telemetry.reject(self.client.ctx, verdict.status, verdict.reason)
            self._local(verdict.status, verdict.reason, verdict.close, verdict.fields)
            return
        if verdict is not None:
            self.granted = verdict
        # The steps after it, as routing runs them.
        head = self.head
        ctx = self.client.ctx
        route = self.route
        assert head is not None and ctx is not None and route is not None
        steps = self.policy.request
        for i in range(self.checking + 1, len(steps)):
            step = steps[i]
            if step.waits:
                self.checking = i
                self._check()
                return
            answer = step.request(head, ctx)
            if answer is not None:
                if answer.close:
                    self.fwd.telemetry.reject(ctx, answer.status, answer.reason)
                self._local(answer.status, answer.reason, answer.close, answer.fields)
                return
        self.checking = -1
        admitted = self.admitted
        if admitted is not None:
            self.admitted = None
            admitted()
            return
        unavailable = route.unavailable_answer if route.cluster is None else None
        if unavailable is not None:
            self._local(unavailable.status, unavailable.reason, False, unavailable.fields)
            return
        # What begin does once the request may go on.
        if not self.request_done:
            if head.expect_continue:
                self.client.send_interim(100, [])
            if self.hold:
                if route.cluster is not None:
                    self.hold = 2
                    return
                self.hold = 0
        self._attempt()

    def _attempt(self, chosen: Endpoint | None = None) -> None:
        """Forward to `chosen`, or to the pod the balancer picks among those not tried."""
        route = self.route
        assert route is not None
        cluster = route.cluster
        if cluster is None:
            if route.errors is not None and route.errors.fallback:
                self._fall_back(route)
                return
            self._local(503, route.unavailable or "NoEndpoints")
            return
        if route.grpc:
            # gRPC needs HTTP/2 end to end (trailers): an HTTP/1.1 request to a GRPC route is
            # not forwarded (ingress-nginx's grpc_pass answers it 502 too, see ARCHITECTURE).
            self._local(502, "GrpcNeedsHTTP2")
            return
        tried = self.tried
        if chosen is not None:
            endpoint: Endpoint | None = chosen
        elif route.affinity is not None:
            endpoint = self._choose(route.affinity, cluster)
        elif tried:
            endpoint = cluster.pick(route.balancer, tried)
        else:
            endpoint = cluster.pick(route.balancer)
        if endpoint is None:
            if tried:
                self._local(502, "UpstreamConnectFailed")
            elif route.errors is not None and route.errors.fallback:
                self._fall_back(route)
            else:
                self._local(503, "NoEndpoints")
            return
        if tried:
            self.fwd.telemetry.metrics.retries += 1
        tried.append(endpoint)
        self.upstream = None
        self.attempts_left -= 1
        self.endpoint = endpoint
        # A copy of Pool.acquire inlined here measured no faster, compiled (hotpath, 6
        # interleaved runs, inlined / as here: small 6.65 / 6.67, 64k 8.94 / 8.95, chunked
        # 10.94 / 10.95 us).
        conn = self.fwd.pool.acquire(endpoint, route.upstream_tls)
        if conn is not None:
            self._attach(conn)
        else:
            self._dial(endpoint)

    def _choose(self, chooser: Chooser, cluster: Cluster) -> Endpoint | None:
        """The pod a route's sticky sessions or hashing choose (proxy/affinity.py), keeping the
        Set-Cookie that goes with it for the pod's response."""
        head = self.head
        assert head is not None
        endpoint, fields = chooser.choose(cluster, head, self.client.ctx, self.tried)
        if fields:
            self.affinity_fields = fields
        return endpoint

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
        next_upstream = route.next_upstream
        if next_upstream is not None:
            if isinstance(exc, TimeoutError):
                self._next(next_upstream, TIMEOUT, False, 504, "UpstreamConnectTimeout")
            else:
                self._next(next_upstream, ERROR, False, 502, "UpstreamConnectFailed")
        elif self.attempts_left > 0:
            self._attempt()
        else:
            self._local(502, "UpstreamConnectFailed")

    def _attach(self, conn: UpstreamProtocol) -> None:
        head = self.head
        route = self.route
        assert head is not None and route is not None and conn.transport is not None
        self.conn = conn
        self.upstream = conn.authority
        self.sent_at = now = self.fwd.loop.time()
        conn.start(self, route.read_timeout, route.send_timeout, now, route.head_limit)
        transport = conn.transport
        data = head.upstream_head
        if data is None:
            data = head.render(conn.authority.encode())
        pending = self.pending
        if pending:
            transport.writelines([data, *pending])
        else:
            transport.write(data)
        if self.request_done and not self.replayable:
            self.pending = None
        if route.track and route.cluster is not None:
            route.cluster.request_started(conn.endpoint)
        flow.attached(self.client, conn)

    # ---- request body (from the downstream protocol) -----------------------------------------

    def request_body(self, body: bytes) -> None:
        if self.finished:
            return
        size = len(body)
        received = self.body_received + size
        self.body_received = received
        max_body = self.policy.max_body
        if max_body and received > max_body:
            self.fwd.telemetry.reject(self.client.ctx, 413, "BodyTooLarge")
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
            self._send_body(hdr.LAST_CHUNK)
        if self.hold:
            began = self.hold == 2
            self.hold = 0
            if began:
                self._attempt()  # the whole body is here (and stays for a resend)
                return
        if not self.replayable and self.conn is not None:
            # Sent already (without a connection, what is pending still has to go out).
            self.pending = None

    def _send_body(self, piece: bytes) -> None:
        conn = self.conn
        pending = self.pending
        if conn is not None and conn.transport is not None:
            conn.transport.write(piece)
            if self.replayable:
                self.pending_bytes += len(piece)
                if self.pending_bytes > REPLAY_LIMIT and not self._held_whole():
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
        if self.hold:
            if self.body_received > (self.policy.max_body or HELD_BODY_LIMIT):
                # No body limit to bound it: stream the rest, this request cannot be resent.
                began = self.hold == 2
                self.hold = 0
                self.replayable = False
                flow.buffered(self.client, self.pending_bytes)
                if began:
                    self._attempt()
            return
        if flow.buffered(self.client, self.pending_bytes) and not self._held_whole():
            self.replayable = False

    def _held_whole(self) -> bool:
        """Whether this body is kept whole for a resend past REPLAY_LIMIT: a route with
        proxy-request-buffering, within its body limit (a larger body was refused already)."""
        route = self.route
        return (
            route is not None
            and route.request_buffering
            and self.body_received <= (self.policy.max_body or HELD_BODY_LIMIT)
        )

    def upstream_write_paused(self) -> None:
        flow.upstream_stalled(self.client)

    def upstream_write_resumed(self) -> None:
        flow.upstream_drained(self.client)

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
                self.client.send_interim(status, headers)
            return
        route = self.route
        assert route is not None
        next_upstream = route.next_upstream
        # As nginx: a status retried elsewhere first (proxy_next_upstream), then the last
        # attempt's answer may be replaced by an error page (proxy_intercept_errors).
        if (
            next_upstream is not None
            and status in next_upstream.statuses
            and self._resend_status(next_upstream, conn, status)
        ):
            return
        errors = route.errors
        if errors is not None and status in errors.codes and self._error_page(conn, status):
            return
        # The loop time of the read that holds the head (one clock call less per request).
        head_at = conn.read_at
        # Never before the request went out, whatever the clock's rounding.
        self.head_at = head_at if head_at > self.sent_at else self.sent_at
        policy = self.policy
        rewrite = policy.rewrite
        if rewrite is not None:
            rewrite.rewrite(parts, head, self.client.ctx)
        added = policy.added
        if policy.response:
            # Steps computing their fields per response (CORS) replace the pod's fields of
            # those names only on the responses they add fields to.
            for step in policy.response:
                fields = step.response(self.head, status)
                if fields:
                    added += fields
                    parts = hdr.drop_response_fields(parts, step.replaces)
        if self.affinity_fields:
            added += self.affinity_fields
        granted = self.granted
        if granted is not None and (granted.always or status in COOKIE_STATUSES):
            added += granted.fields
        if policy.dropped:
            # The pod's fields a step replaces (custom-headers); ordinary ones, so removed here.
            parts = hdr.drop_response_fields(parts, policy.dropped)
        try:
            response = self.client.send_head(status, parts, special, head, added, policy.replaced)
        except ValueError:
            self.upstream_failed(conn, 502, "BadUpstreamResponse")
            return
        self.response = response
        self.status = status
        if route.limit_rate:
            self.pacer = Pacer(
                self.fwd.loop,
                self.client,
                conn,
                route.limit_rate,
                route.limit_rate_after,
                self.started,
            )
        if response.framing == hdr.FRAME_NONE and head.method == b"HEAD":
            keep = conn.finish_head_response()
            self.response_done(conn, keep, conn.read_at)

    # ---- error pages (proxy/errorpages.py) ---------------------------------------------------

    def _error_page(self, conn: UpstreamProtocol | None, status: int) -> bool:
        """The pod answered (`conn`), or the proxy would answer (None: 502, 503, 504, a
        refusal, as nginx's error_page takes its own errors too), a status the route's default
        backend answers instead: drop that answer and ask the default backend. False: answer
        as planned (no default backend endpoint, or the request body is still on its way,
        which the default backend's answer would leave unread)."""
        route = self.route
        head = self.head
        assert route is not None and route.errors is not None and head is not None
        error_route = route.error_route
        if error_route is None or not self.request_done or not serves(error_route.cluster):
            return False
        if conn is not None:
            self._release(conn, False)  # the pod's body is not read: its connection goes
        self.pending = None  # the body kept for a replay: the error page is fetched without
        self.pending_bytes = 0
        self._divert(error_route, route.errors.error_request(head, status))
        return True

    def _fall_back(self, route: Route) -> None:
        """The route has no endpoint: its default backend gets the request (with X-Code)."""
        assert route.errors is not None and route.error_route is not None
        assert self.head is not None
        self._divert(route.error_route, route.errors.fallback_request(self.head))

    def _divert(self, route: Route, head: RequestHead) -> None:
        """Forward this exchange's request to another route's backend from the start."""
        self.route = route
        self.head = head
        self.tried = []
        self.attempts_left = self.fwd.max_attempts
        self._attempt()

    def _response_fields(self, status: int) -> bytes:
        """The fields the route's response steps add to this response."""
        policy = self.policy
        added = policy.added
        for step in policy.response:
            added += step.response(self.head, status)
        return added

    def response_body(self, body: bytes | memoryview) -> None:
        if self.response is None or self.finished:
            return
        self.sent += len(body)
        pacer = self.pacer
        if pacer is None:
            self.client.send_body(body)
        else:
            pacer.body(body)

    def response_done(self, conn: UpstreamProtocol, upstream_keep_alive: bool, now: float) -> None:
        """The response is complete; `now` is the loop time of the read that completed it."""
        if self.finished or self.response is None:
            return
        # Compiled, a copy of _release + _finish inlined here measured no faster (hotpath, 6
        # interleaved runs, inlined / as here: small 6.67 / 6.67, 64k 8.95 / 8.91, chunked
        # 10.95 / 10.97 us).
        request_done = self.request_done
        # A request that said `Connection: close` (connection-proxy-header) ends its connection.
        reuse = upstream_keep_alive and request_done and not self.policy.upstream_close
        self._release(conn, reuse, now)
        pacer = self.pacer
        if pacer is not None and pacer.end(lambda: self._finish(request_done)):
            return  # the pod's part is over; the client's ends with the last paced piece
        self._finish(request_done, now)

    def upstream_upgraded(self, conn: UpstreamProtocol, rest: bytes) -> None:
        """The upstream switched protocols: from now on both connections are one byte pipe."""
        switching = self.switching
        if switching is None or self.finished or conn.transport is None:
            self.upstream_failed(conn, 502, "BadUpstreamResponse")
            return
        self.status = 101
        now = self.fwd.loop.time()
        transport = conn.transport
        self.conn = None
        conn.hand_over()  # the client side's tunnel owns the transport now
        if self.route is not None and self.route.cluster is not None:
            self.route.cluster.request_finished(conn.endpoint, now - self.started)
        self.finished = True
        self.client.upgrade(self, switching, rest, transport)
        self._ended(None, now)

    # ---- failures ----------------------------------------------------------------------------

    def upstream_lost(self, conn: UpstreamProtocol) -> None:
        """The upstream connection closed while this exchange was using it."""
        if self.finished:
            return
        self.conn = None
        response = self.response
        if response is not None:
            if (
                response.framing != hdr.FRAME_NONE
                and response.length < 0
                and not response.upstream_chunked
            ):
                # A body without Content-Length or chunked framing ends with the connection.
                self.response_done(conn, False, self.fwd.loop.time())
            else:
                self._abort("UpstreamClosedEarly")
            return
        self._request_finished()
        if conn.requests > 1 and not conn.answered and self.replayable:
            # A pooled connection the upstream had closed: the classic keep-alive race.
            # Nothing of the response came back, so send it again on a fresh connection.
            self.fwd.telemetry.stats.upstream_stale_retries += 1
            self.endpoint = conn.endpoint
            self._dial(conn.endpoint)
            return
        route = self.route
        if route is not None and route.next_upstream is not None:
            self._next(route.next_upstream, ERROR, True, 502, "UpstreamClosed")
            return
        if not conn.answered and self.replayable:
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
            route = self.route
            if route is not None and route.next_upstream is not None:
                self._next(route.next_upstream, TIMEOUT, True, 504, "UpstreamTimeout")
            else:
                self._fail(504, "UpstreamTimeout")
        else:
            self._abort("UpstreamTimeout")

    def upstream_failed(self, conn: UpstreamProtocol, status: int, reason: str) -> None:
        if self.finished:
            conn.close()
            return
        self._release(conn, False)
        route = self.route
        if self.response is None and route is not None and route.next_upstream is not None:
            self._next(route.next_upstream, INVALID_HEADER, True, status, reason)
        else:
            self._fail(status, reason)

    # ---- proxy-next-upstream (proxy/retry.py) ------------------------------------------------

    def _next(
        self, rules: NextUpstream, condition: int, sent: bool, status: int, reason: str
    ) -> None:
        """An attempt failed before its response reached the client: another pod if the
        route's rules allow and one is left, else answer the failure (`status`)."""
        if self.finished:
            return
        head = self.head
        assert head is not None
        if rules.allows(condition, head.method, sent, self.fwd.loop.time() - self.started):
            endpoint = self._another()
            if endpoint is not None:
                self._attempt(endpoint)
                return
        self._fail(status, reason)

    def _another(self) -> Endpoint | None:
        """A pod for one more attempt of this request, if it may have one: attempts left, the
        whole request still held, a pod of the backend not tried yet."""
        route = self.route
        if self.attempts_left <= 0 or not self.replayable or route is None:
            return None
        cluster = route.cluster
        if cluster is None:
            return None
        if route.affinity is not None:
            return self._choose(route.affinity, cluster)
        return cluster.pick(route.balancer, self.tried)

    def _resend_status(self, rules: NextUpstream, conn: UpstreamProtocol, status: int) -> bool:
        """A response whose status the route retries (http_N): drop it for another pod when
        one more attempt is possible (it is then on its way); else the client gets it."""
        head = self.head
        assert head is not None
        if not rules.retries_status(status, head.method, self.fwd.loop.time() - self.started):
            return False
        endpoint = self._another()
        if endpoint is None:
            return False
        self._release(conn, False)  # its body is not wanted: the connection goes
        self._attempt(endpoint)
        return True

    def client_lost(self) -> None:
        """The client went away: drop everything without an answer."""
        if self.finished:
            return
        self.finished = True
        task = self.connect_task
        if task is not None:
            task.cancel()
            self.connect_task = None
        check = self.check_task
        if check is not None:
            check.cancel()
            self.check_task = None
        conn = self.conn
        if conn is not None:
            self._release(conn, False)
        if self.status == 0:
            self.status = 499  # nginx's "client closed request", for the access log
        self._ended(self.reason or "ClientClosed", self.fwd.loop.time())

    def discard(self) -> None:
        """Dropped before it began (its request turned out malformed): nothing to undo but a
        request counted in progress."""
        self.finished = True
        self.pending = None
        if self.held:
            release_limit(self.held)
            self.held = 0

    def client_timeout(self) -> None:
        """The client stopped sending its request body."""
        if self.finished:
            return
        self.fwd.telemetry.reject(self.client.ctx, 408, "BodyTimeout")
        self._fail(408, "BodyTimeout", close=True)

    # ---- endings -----------------------------------------------------------------------------

    def _release(self, conn: UpstreamProtocol, reuse: bool, now: float = 0.0) -> None:
        if self.conn is conn:
            self.conn = None
        self._request_finished(now)
        if reuse:
            self.fwd.pool.release(conn, now)
        else:
            conn.close()

    def _request_finished(self, now: float = 0.0) -> None:
        endpoint = self.endpoint
        route = self.route
        if endpoint is not None and route is not None and route.cluster is not None:
            self.endpoint = None
            if route.track:
                if not now:
                    now = self.fwd.loop.time()
                route.cluster.request_finished(endpoint, now - self.started)

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

    def _local(self, status: int, reason: str, close: bool = False, fields: bytes = b"") -> None:
        """Answer locally; `fields`: the answer's own extra header fields (the route's
        response steps add theirs)."""
        if self.finished:
            return
        route = self.route
        if (
            route is not None
            and route.errors is not None
            and status in route.errors.codes
            and not close
            and self._error_page(None, status)
        ):
            self.reason = reason  # what happened, though the default backend answers
            return
        head = self.head
        # A request body still on its way would be read as the next request: close instead.
        close = close or not self.request_done or head is None or not head.keep_alive
        self.reason = reason
        self.status = status
        self.fwd.telemetry.stats.local_replies += 1
        policy = self.policy
        added = policy.added if not policy.response else self._response_fields(status)
        granted = self.granted
        if granted is not None and (granted.always or status in COOKIE_STATUSES):
            added += granted.fields
        keep = self.client.send_answer(
            status, fields + added, close, head is not None and head.method == b"HEAD"
        )
        self._finish(keep)

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
        self.client.abort()

    def _finish(self, keep_alive: bool, now: float = 0.0) -> None:
        self.finished = True
        self.pending = None
        task = self.connect_task
        if task is not None:
            task.cancel()
            self.connect_task = None
        if not now:
            now = self.fwd.loop.time()
        self._ended(self.reason, now)
        self.client.finish(self, keep_alive, now)

    def ended_elsewhere(
        self,
        status: int,
        reason: str | None,
        upstream: str | None,
        now: float,
        upstream_status: int = 0,
        sent_at: float = 0.0,
        head_at: float = 0.0,
    ) -> None:
        """The request was answered by another path (a gRPC call, proxy/grpc.py): its metrics
        and access-log entry, as for any exchange. `upstream_status`: the pod's `:status` (0:
        none, Portico answered); `sent_at`, `head_at`: loop times the request went to the pod
        and its response head came back (0.0: none)."""
        if self.finished:
            return
        self.finished = True
        check = self.check_task
        if check is not None:  # (a call ended while its external auth was asked)
            check.cancel()
            self.check_task = None
        self.status = status
        self.upstream = upstream
        self.reason = reason
        self.sent_at = sent_at
        self.head_at = head_at
        self._ended(reason, now, upstream_status)

    def _ended(self, reason: str | None, now: float, upstream_status: int = -1) -> None:
        """Every exchange ends here once: its request metrics and access-log entry
        (`upstream_status` >= 0: the pod's status as another path saw it, see
        `ended_elsewhere`)."""
        if self.held:
            release_limit(self.held)
            self.held = 0
        pacer = self.pacer
        if pacer is not None:
            pacer.stop()
        route = self.route
        head = self.head
        ctx = self.client.ctx
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
            self.client.metrics_protocol,
        )
        access = telemetry.access
        if access is None or (route is not None and not route.access_log):
            return
        upstream = self.upstream
        if upstream is None:
            tried = self.tried
            upstream = tried[-1].authority if tried else None
        # AccessLog.record, inlined: it still pays, compiled (hotpath, 6 interleaved runs,
        # inlined / called: small 6.67 / 6.75, 64k 8.95 / 8.98, chunked 10.95 / 11.02 us).
        entries = access.entries
        entries.append(
            (
                time.time(),
                (
                    ctx.client_ip if ctx is not None else b"",
                    head.method if head is not None else b"",
                    head.host if head is not None else b"",
                    head.target if head is not None else self.url,
                    self.status,
                    self.sent,
                    now - self.started,
                    upstream,
                    head.request_id if head is not None else b"",
                    reason,
                    head.forwarded_for if head is not None else None,
                    upstream_status
                    if upstream_status >= 0
                    else (self.status if self.response is not None else 0),
                    head_at - self.sent_at,
                    route.rule if route is not None else None,
                    self.client.protocol(head),
                ),
            )
        )
        if len(entries) >= ACCESS_BATCH:
            access.flush()
