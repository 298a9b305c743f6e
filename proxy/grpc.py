"""gRPC calls to pods, and Portico's own answers in gRPC form.

A request on an HTTP/2 stream whose route says `backend-protocol: GRPC` / `GRPCS` is opened by
`Routing.open_exchange` as any other (routing, the policy steps, local answers); when it is to
be forwarded, the stream (proxy/h2server.py) hands it to a `GrpcCall` instead of the exchange's
HTTP/1.1 upstream path. The call is a stream of an HTTP/2 connection to the pod
(proxy/h2upstream.py): the request's fields (as `headers.parse_request` shaped them for the pod:
X-Forwarded-*, the request id, the route's header steps) go out as HTTP/2 fields with
`te: trailers`, DATA is relayed both ways as it arrives (no message is buffered whole), the
pod's trailers (or trailers-only response) are relayed as trailers, a reset either way is
relayed as a reset (CANCEL from the client reaches the pod, the pod's reaches the client).

Flow control: what the client sends is acknowledged to it only while the pod's side has room
(request data queued for the pod below HIGH); what the pod sends is acknowledged to the pod only
as the client's side takes it. Deadlines: the request's `grpc-timeout` (RFC-less, the gRPC
HTTP/2 protocol's) and the route's read timeout (proxy-read-timeout, nginx's grpc_read_timeout:
the longest silence of the pod while the call waits for it) end the call with DEADLINE_EXCEEDED
(4) and reset the pod's stream (CANCEL).

Portico's own answers to a gRPC request (content-type application/grpc*) are trailers-only
responses, HTTP status 200 with `grpc-status` and `grpc-message` (`grpc_status`): no route 12
(UNIMPLEMENTED), no endpoints or an unreachable pod 14 (UNAVAILABLE), a timeout 4.

A route with external auth (auth-url) has the exchange ask first: the call is made but begins
only once the check lets the request in (`Exchange.admitted` holds `begin`), its request data
waiting in it meanwhile; a refusal is the exchange's answer (401 -> 16, 403 -> 7) and the call
is dropped unbegun (`drop`).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from mypy_extensions import trait

from proxy import h2codec
from proxy.config import Endpoint
from proxy.h2codec import Headers
from proxy.h2upstream import H2Pool, H2Upstream, UpstreamStream
from proxy.headers import RequestHead
from proxy.route import Route

logger = logging.getLogger("portico.proxy")

# Request data queued for the pod (its window shut) past which the client's data is no longer
# acknowledged; response data queued for the client past which the pod's is not.
HIGH = 64 * 1024
# Request data kept for a resend to another pod (as proxy/exchange.py's REPLAY_LIMIT).
REPLAY_LIMIT = 64 * 1024

OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# Portico's local HTTP statuses as gRPC status codes: the gRPC project's HTTP-to-gRPC mapping
# (doc/http-grpc-status-mapping.md), with Portico's timeouts as DEADLINE_EXCEEDED.
_STATUS = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: UNAVAILABLE,
    431: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

_MESSAGES = {
    "NoRoute": "no route for this request",
    "NoEndpoints": "no endpoints available for this service",
    "BackendNotFound": "no endpoints available for this service",
    "UpstreamConnectFailed": "the service cannot be reached",
    "UpstreamNotHTTP2": "the service does not speak HTTP/2 (check backend-protocol)",
    "UpstreamClosed": "the service closed the connection",
    "UpstreamReset": "the service reset the stream",
    "GrpcTimeout": "deadline exceeded",
    "UpstreamTimeout": "the service did not answer in time",
    "BodyTooLarge": "request larger than the route's body size limit (proxy-body-size)",
}

# Fields of the HTTP/1.1 head the pod is not sent over HTTP/2 (RFC 9113 §8.2.2; the request's
# framing is HTTP/2's own).
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"host",
    }
)
_RESPONSE_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def is_grpc(content_type: bytes) -> bool:
    """Whether a request's content-type says gRPC (application/grpc, application/grpc+proto,
    application/grpc-web is not: it is HTTP/1.1-friendly and answered as HTTP)."""
    lowered = content_type.lower()
    return lowered.startswith(b"application/grpc") and not lowered.startswith(
        b"application/grpc-web"
    )


def grpc_status(status: int, reason: str | None) -> list[tuple[bytes, bytes]]:
    """A trailers-only gRPC answer for a local HTTP `status` (HEADERS with END_STREAM)."""
    code = _STATUS.get(status, UNKNOWN)
    if reason == "GrpcTimeout":
        code = DEADLINE_EXCEEDED
    message = _MESSAGES.get(reason or "", reason or f"HTTP status {status}")
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", _percent(message)),
    ]


def _percent(message: str) -> bytes:
    # grpc-message is percent-encoded (the gRPC HTTP/2 protocol).
    return quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode("ascii")


_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout ("1-8 digits" + unit H M S m u n) in seconds; None when malformed."""
    if len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or unit not in _UNITS:
        return None
    return int(digits) * _UNITS[unit]


def request_fields(head: RequestHead, scheme: bytes) -> list[tuple[bytes, bytes]]:
    """The request as the pod gets it, in HTTP/2 fields: from the head rendered for HTTP/1.1
    (so every rule shaping what the pod sees applies), `te: trailers` as gRPC requires."""
    rendered = head.render(b"")
    lines = rendered.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" ")[0]
    authority = b""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        lname = name.lower()
        value = value.strip(b" \t")
        if lname == b"host":
            authority = value
        elif lname not in _NOT_FORWARDED:
            fields.append((lname, value))
    return [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", target),
        (b"te", b"trailers"),
        *fields,
    ]


def response_fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n not in _RESPONSE_NOT_FORWARDED]


# A trait: H2Stream, compiled with mypyc, is a ClientSide too (one non-trait base only).
@trait
class GrpcClient:
    """What a gRPC call needs from the client stream (proxy/h2server.py `H2Stream`)."""

    def grpc_headers(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        raise NotImplementedError

    def grpc_data(self, data: bytes, end_stream: bool) -> bool:
        """Relay response data; whether the client's side has room for more now."""
        raise NotImplementedError

    def grpc_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def grpc_reset(self, code: int) -> None:
        raise NotImplementedError

    def grpc_consume(self, size: int) -> None:
        """`size` bytes of the request were taken by the pod's side: acknowledge them."""
        raise NotImplementedError

    def grpc_done(self, call: GrpcCall, status: int, reason: str | None) -> None:
        """The call is over (for the access log and metrics: `status` is the client's,
        `call` tells the pod's side)."""
        raise NotImplementedError


class GrpcCall(UpstreamStream):
    """One gRPC call: a client's HTTP/2 stream relayed to a stream of a pod's connection."""

    def __init__(
        self,
        client: GrpcClient,
        route: Route,
        head: RequestHead,
        pool: H2Pool,
        end_stream: bool,
        timeout: float | None,
        max_body: int = 0,
    ) -> None:
        self.client = client
        self.route = route
        self.head = head
        self.pool = pool
        self.loop = pool.loop
        self.request_ended = end_stream
        # proxy-body-size (0: none) over the whole request stream, as nginx's
        # client_max_body_size counts a gRPC stream's DATA: a long client stream past it fails.
        self.max_body = max_body
        self.body_received = 0
        self.pending: list[bytes] = []  # request data before the pod's stream exists
        # The request data sent, for a resend when the pod refuses the stream (REFUSED_STREAM:
        # not processed); None once past REPLAY_LIMIT.
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0
        self.pending_bytes = 0
        self.unacked_request = 0  # client data held back while the pod's side is full
        self.unacked_response = 0  # pod data held back while the client's side is full
        self.conn: H2Upstream | None = None
        self.stream_id = 0
        self.endpoint: Endpoint | None = None
        self.tried: list[Endpoint] = []
        self.attempts_left = route.max_attempts
        self.responded = False  # the response head went to the client
        self.sent_at = 0.0  # loop time the pod's stream was opened (last attempt)
        self.head_at = 0.0  # loop time the pod's response head came; 0.0: none
        # The endpoint whose in-flight count this call holds (least-request balancer).
        self.counted: Endpoint | None = None
        self.finished = False
        self.status = 0
        now = self.loop.time()
        self.deadline = now + timeout if timeout is not None else 0.0
        self.read_timeout = route.read_timeout
        self.active_at = now
        self.timer: asyncio.TimerHandle | None = self.loop.call_at(self._next_due(), self._timed)
        self.scheme = b"https" if route.upstream_tls is not None else b"http"

    # ---- start -------------------------------------------------------------------------------

    def drop(self) -> None:
        """The request was answered before this call began (its external auth said no): no
        pod was asked; the request data held for it is let go."""
        if self._stop():
            self.pending = []

    def _stop(self) -> bool:
        """The call is over: its timer stops, the client data it held back is acknowledged.
        False when it was over already."""
        if self.finished:
            return False
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.unacked_request:
            self.client.grpc_consume(self.unacked_request)
            self.unacked_request = 0
        return True

    def begin(self) -> None:
        if self.finished:
            return
        cluster = self.route.cluster
        if cluster is None:
            self._answer(503, self.route.unavailable or "NoEndpoints")
            return
        tried = self.tried
        endpoint = (
            cluster.pick(self.route.balancer, tried) if tried else cluster.pick(self.route.balancer)
        )
        if endpoint is None:
            self._answer(502 if tried else 503, "UpstreamConnectFailed" if tried else "NoEndpoints")
            return
        tried.append(endpoint)
        self.attempts_left -= 1
        self.endpoint = endpoint
        self.pool.carry(self, endpoint, self.route.upstream_tls, self.route.connect_timeout)

    def attached(self, conn: H2Upstream) -> None:
        if self.finished:
            conn.schedule_idle_check()
            return
        end = self.request_ended and not self.pending
        stream_id = conn.open_stream(self, request_fields(self.head, self.scheme), end)
        if not stream_id:
            self.failed("UpstreamClosed")
            return
        self.conn = conn
        self.stream_id = stream_id
        self.sent_at = self.loop.time()
        route = self.route
        if route.cluster is not None and self.endpoint is not None:
            route.cluster.connect_succeeded(self.endpoint)
            if route.track:
                route.cluster.request_started(self.endpoint)
                self.counted = self.endpoint
        pending = self.pending
        if pending:
            self.pending = []
            for i, piece in enumerate(pending):
                last = self.request_ended and i == len(pending) - 1
                conn.codec.send_data(stream_id, piece, last)
            self.pending_bytes = 0
        self._check_request_room()

    def failed(self, reason: str) -> None:
        if self.finished:
            return
        self._uncount()
        self.conn = None
        self.stream_id = 0
        route = self.route
        if reason == "UpstreamConnectFailed" and route.cluster is not None:
            if self.endpoint is not None:
                route.cluster.connect_failed(self.endpoint)
            if self.attempts_left > 0 and not self.responded:
                self.begin()
                return
        if self.responded:
            self._reset_client(h2codec.INTERNAL_ERROR, reason)
        else:
            self._answer(502, reason)

    # ---- from the client ---------------------------------------------------------------------

    def request_data(self, data: bytes, end_stream: bool) -> None:
        if self.finished:
            self.client.grpc_consume(len(data))
            return
        self.body_received += len(data)
        if self.replay is not None:
            self.replay_bytes += len(data)
            if self.replay_bytes > REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)
        if self.max_body and self.body_received > self.max_body:
            self.client.grpc_consume(len(data))
            if self.responded:
                self._reset_pod(h2codec.CANCEL)
                self._reset_client(h2codec.CANCEL, "BodyTooLarge")
            else:
                self._answer(413, "BodyTooLarge")
            return
        self.request_ended = end_stream
        conn = self.conn
        if conn is None:
            if data or end_stream:
                self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes <= HIGH:
                self.client.grpc_consume(len(data))
            else:
                self.unacked_request += len(data)
            return
        conn.codec.send_data(self.stream_id, data, end_stream)
        conn.schedule_flush()
        if conn.codec.queued(self.stream_id) <= HIGH:
            self.client.grpc_consume(len(data))
        else:
            self.unacked_request += len(data)
            conn.blocked.add(self)

    def request_end(self) -> None:
        if self.finished or self.request_ended:
            return
        self.request_ended = True
        conn = self.conn
        if conn is None:
            self.pending.append(b"")
            return
        conn.codec.end_stream(self.stream_id)
        conn.schedule_flush()

    def writable(self) -> None:
        self._check_request_room()

    def _check_request_room(self) -> None:
        conn = self.conn
        if conn is None or not self.unacked_request:
            return
        if conn.codec.queued(self.stream_id) <= HIGH:
            size = self.unacked_request
            self.unacked_request = 0
            conn.blocked.discard(self)
            self.client.grpc_consume(size)
        else:
            conn.blocked.add(self)  # `writable` once the pod's window lets it out

    def client_drained(self) -> None:
        """The client's side took the response data queued: the pod may send more."""
        conn = self.conn
        if self.unacked_response and conn is not None:
            size = self.unacked_response
            self.unacked_response = 0
            conn.consume(self.stream_id, size)

    def cancel(self) -> None:
        """The client reset its stream (or went away): the pod's stream is reset too."""
        if self.finished:
            return
        self._reset_pod(h2codec.CANCEL)
        self._end(499 if not self.status else self.status, "ClientClosed")

    # ---- from the pod ------------------------------------------------------------------------

    def response(self, headers: Headers, end_stream: bool) -> None:
        if self.finished:
            return
        self.active_at = self.head_at = self.loop.time()
        status = 0
        for name, value in headers:
            if name == b":status":
                status = int(value) if value.isdigit() else 0
                break
        self.status = status
        self.responded = True
        self.client.grpc_headers(response_fields(headers), end_stream)
        if end_stream:
            self._end(status, None)

    def data(self, data: bytes, end_stream: bool) -> None:
        if self.finished:
            if self.conn is not None:
                self.conn.consume(self.stream_id, len(data))
            return
        self.active_at = self.loop.time()
        room = self.client.grpc_data(data, end_stream)
        conn = self.conn
        if conn is not None:
            if room:
                conn.consume(self.stream_id, len(data))
            else:
                self.unacked_response += len(data)
        if end_stream:
            self._end(self.status, None)

    def trailers(self, headers: Headers) -> None:
        if self.finished:
            return
        self.client.grpc_trailers(response_fields(headers))
        self._end(self.status, None)

    def reset(self, code: int) -> None:
        if self.finished:
            return
        self._uncount()
        self.conn = None
        if not self.responded:
            replay = self.replay
            if code == h2codec.REFUSED_STREAM and self.attempts_left > 0 and replay is not None:
                # Not processed by the pod (RFC 9113 §8.7): resent elsewhere, with the request
                # data kept for that.
                self.pending = list(replay)
                self.pending_bytes = self.replay_bytes
                self.begin()
                return
            if code == h2codec.REFUSED_STREAM:
                # Passed on as such: the client knows the call was not processed (gRPC
                # clients retry it transparently).
                self._reset_client(code, "UpstreamRefused")
                return
            self._answer(502, "UpstreamReset")
        else:
            self._reset_client(code, "UpstreamReset")

    # ---- deadlines ---------------------------------------------------------------------------

    def _next_due(self) -> float:
        due = self.active_at + self.read_timeout
        if self.deadline and self.deadline < due:
            due = self.deadline
        return due

    def _timed(self) -> None:
        self.timer = None
        if self.finished:
            return
        now = self.loop.time()
        if self.deadline and now >= self.deadline:
            self._timeout("GrpcTimeout")
            return
        if now >= self.active_at + self.read_timeout:
            self._timeout("UpstreamTimeout")
            return
        self.timer = self.loop.call_at(self._next_due(), self._timed)

    def _timeout(self, reason: str) -> None:
        self._reset_pod(h2codec.CANCEL)
        if self.responded:
            self.client.grpc_trailers(grpc_status(504, reason)[2:])
            self._end(self.status, reason)
        else:
            self._answer(504, reason)

    # ---- ends --------------------------------------------------------------------------------

    def _uncount(self) -> None:
        """The pod's stream is over: its endpoint's in-flight count and latency, as an
        exchange's (proxy/exchange.py)."""
        endpoint = self.counted
        cluster = self.route.cluster
        if endpoint is not None and cluster is not None:
            self.counted = None
            cluster.request_finished(endpoint, self.loop.time() - self.sent_at)

    def _reset_pod(self, code: int) -> None:
        conn = self.conn
        if conn is not None and self.stream_id:
            conn.blocked.discard(self)
            conn.codec.reset_stream(self.stream_id, code)
            conn.schedule_flush()
        self.conn = None

    def _reset_client(self, code: int, reason: str) -> None:
        self.client.grpc_reset(code)
        self._end(self.status, reason)

    def _answer(self, status: int, reason: str) -> None:
        """Portico's own trailers-only answer."""
        self._reset_pod(h2codec.CANCEL)
        self.client.grpc_headers(grpc_status(status, reason), True)
        self._end(status, reason)

    def _end(self, status: int, reason: str | None) -> None:
        if not self._stop():
            return
        self._uncount()
        conn = self.conn
        if conn is not None:
            conn.blocked.discard(self)
            if self.unacked_response:
                conn.consume(self.stream_id, self.unacked_response)
                self.unacked_response = 0
        self.client.grpc_done(self, status, reason)
