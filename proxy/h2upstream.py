"""HTTP/2 connections to pods (gRPC routes), multiplexed and pooled per endpoint.

A route with `backend-protocol: GRPC` (cleartext HTTP/2 with prior knowledge) or `GRPCS` (TLS,
ALPN `h2`) forwards each gRPC call (proxy/grpc.py) as one stream of an `H2Upstream`: a
connection to one endpoint carrying the streams of many client requests at once, up to the
pod's SETTINGS_MAX_CONCURRENT_STREAMS. `H2Pool` keeps them per endpoint and TLS identity (as
proxy/pool.py keys its HTTP/1.1 connections): a call goes on the first connection with room,
else on one being dialled with room, else on a new one; a connection without streams is closed
after `upstream_keepalive_timeout`.

The codec is h2codec's `ClientCodec` (libnghttp2): framing, HPACK, the pod's flow-control
windows. Flow control of our own side: a response's DATA is acknowledged to the pod (window
update) only as the client's side takes it (`UpstreamStream.consume` from the call), so a slow
client stops the pod rather than filling Portico. Output is taken from the codec once per loop
iteration and only while the socket takes writes.

A pod that answers cleartext HTTP/2 with HTTP/1.1 (a GRPC route to a pod that is not a gRPC
server) is told apart by its first bytes: a clear log line, and the calls fail (14).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from proxy import h2codec
from proxy.config import Endpoint
from proxy.h2codec import ClientCodec, CodecError, Headers, UpstreamHandler
from proxy.tls import UpstreamTLS

logger = logging.getLogger("portico.proxy")

_PoolKey = tuple[object, ...]


class UpstreamStream:
    """What an upstream connection reports a stream's events to (a gRPC call)."""

    def attached(self, conn: H2Upstream) -> None:
        """The connection is ready for the call: send its request (`conn.open_stream`)."""
        raise NotImplementedError

    def failed(self, reason: str) -> None:
        """No stream could be opened (connect failure, a pod not speaking HTTP/2)."""
        raise NotImplementedError

    def response(self, headers: Headers, end_stream: bool) -> None:
        raise NotImplementedError

    def data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def trailers(self, headers: Headers) -> None:
        raise NotImplementedError

    def reset(self, code: int) -> None:
        """The pod reset the stream, or the connection is gone (INTERNAL_ERROR / REFUSED)."""
        raise NotImplementedError

    def writable(self) -> None:
        """Request data queued for the pod left: the client's window may open again."""
        raise NotImplementedError


class H2Upstream(asyncio.Protocol, UpstreamHandler):
    """One HTTP/2 connection to a pod."""

    def __init__(self, pool: H2Pool, key: _PoolKey, endpoint: Endpoint) -> None:
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.authority = endpoint.authority
        self.loop = pool.loop
        self.codec = ClientCodec(self)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpstreamStream] = {}
        self.waiting: list[UpstreamStream] = []  # calls for this connection while it dials
        self.ready = False
        self.dead = False
        self.going_away = False
        self.first_read = True
        self.write_paused = False
        self.flush_scheduled = False
        self.idle_timer: asyncio.TimerHandle | None = None
        # Streams whose request data waits for the pod's windows (their client is paused).
        self.blocked: set[UpstreamStream] = set()

    # ---- room --------------------------------------------------------------------------------

    def has_room(self) -> bool:
        if self.dead or self.going_away:
            return False
        if not self.ready:
            return len(self.waiting) < 100
        return self.codec.can_open

    def take(self, call: UpstreamStream) -> None:
        """Carry `call` (now, or once connected)."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.ready:
            call.attached(self)
        else:
            self.waiting.append(call)

    def open_stream(
        self, call: UpstreamStream, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> int:
        """Send a request head; the stream id (0: the connection cannot take it)."""
        try:
            stream_id = self.codec.send_request(headers, end_stream)
        except CodecError:
            return 0
        self.streams[stream_id] = call
        self.schedule_flush()
        return stream_id

    # ---- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool.conns.add(self)
        self._flush()  # the preface and our SETTINGS

    def connected(self) -> None:
        """The dial (and TLS handshake) succeeded: the waiting calls go."""
        if self.dead:
            return
        self.ready = True
        waiting = self.waiting
        self.waiting = []
        for call in waiting:
            call.attached(self)
        self._idle_check()

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        if self.first_read:
            self.first_read = False
            if data[:5] == b"HTTP/":
                logger.warning(
                    "grpc.upstream_not_http2",
                    extra={
                        "endpoint": self.authority,
                        "error": "the pod answered HTTP/1.x on a GRPC route: it does not speak "
                        "HTTP/2 (check backend-protocol and the service port)",
                    },
                )
                self._lost("UpstreamNotHTTP2")
                return
        self.flush_scheduled = True
        try:
            self.codec.feed(data)
        except CodecError as exc:
            logger.info(
                "grpc.upstream_protocol_error",
                extra={"endpoint": self.authority, "error": str(exc)},
            )
            if self.transport is not None and exc.goaway:
                self.transport.write(exc.goaway)
            self._lost("UpstreamProtocolError")
            return
        self._flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("UpstreamClosed")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flush()

    # ---- codec events ------------------------------------------------------------------------

    def response(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        call = self.streams.get(stream_id)
        if call is not None:
            call.response(headers, end_stream)

    def data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        call = self.streams.get(stream_id)
        if call is None:
            self.codec.consume(stream_id, len(data))
            return
        call.data(data, end_stream)

    def trailers(self, stream_id: int, headers: Headers) -> None:
        call = self.streams.get(stream_id)
        if call is not None:
            call.trailers(headers)

    def reset(self, stream_id: int, code: int) -> None:
        call = self.streams.pop(stream_id, None)
        if call is not None:
            self.blocked.discard(call)
            call.reset(code)

    def closed(self, stream_id: int, code: int) -> None:
        call = self.streams.pop(stream_id, None)
        if call is not None:
            self.blocked.discard(call)
            if code != h2codec.NO_ERROR:
                call.reset(code)
        if not self.streams:
            self.schedule_idle_check()

    def window_opened(self, stream_id: int) -> None:
        self.schedule_flush()

    def goaway(self, last_stream_id: int, code: int) -> None:
        # Streams above last_stream_id were not processed: nghttp2 closes them (REFUSED_STREAM),
        # the calls report 14; no new stream goes here.
        self.going_away = True

    # ---- output ------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if not self.flush_scheduled and not self.dead:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.dead or self.write_paused or self.transport is None:
            return
        data = self.codec.output()
        if data:
            self.transport.write(data)
            if self.blocked:
                for call in list(self.blocked):
                    call.writable()
        if not self.codec.open:
            self._lost("UpstreamGoaway")
        elif self.going_away and not self.streams:
            self.close()

    def consume(self, stream_id: int, size: int) -> None:
        self.codec.consume(stream_id, size)
        self.schedule_flush()

    # ---- ends --------------------------------------------------------------------------------

    def schedule_idle_check(self) -> None:
        if not self.dead:
            self.loop.call_soon(self._idle_check)

    def _idle_check(self) -> None:
        if self.dead or self.streams or self.waiting or self.idle_timer is not None:
            return
        if self.going_away:
            self.close()
            return
        self.idle_timer = self.loop.call_later(self.pool.idle_timeout, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.idle_timer = None
        if not self.streams and not self.waiting:
            self.codec.goaway()
            self._flush()
            self.close()

    def close(self) -> None:
        if not self.dead:
            self._lost("Closed")

    def _lost(self, reason: str) -> None:
        if self.dead:
            return
        self.dead = True
        self.pool.forget(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.transport is not None:
            if reason in ("Closed", "UpstreamGoaway"):
                self.transport.close()
            else:
                self.transport.abort()
        waiting = self.waiting
        self.waiting = []
        for call in waiting:
            call.failed(reason)
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for call in streams:
            if reason == "UpstreamNotHTTP2":
                call.failed(reason)
            else:
                call.reset(h2codec.INTERNAL_ERROR)

    def abort(self) -> None:
        self._lost("Aborted")


class H2Pool:
    """A worker's HTTP/2 connections to pods, per endpoint and TLS identity."""

    __slots__ = ("by_key", "conns", "idle_timeout", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.by_key: dict[_PoolKey, list[H2Upstream]] = {}
        self.conns: set[H2Upstream] = set()

    @staticmethod
    def key(endpoint: Endpoint, tls: UpstreamTLS | None) -> _PoolKey:
        if tls is None:
            return (endpoint.address, endpoint.port)
        return (endpoint.address, endpoint.port, tls)

    def carry(
        self,
        call: UpstreamStream,
        endpoint: Endpoint,
        tls: UpstreamTLS | None,
        connect_timeout: float,
    ) -> None:
        """Put `call` on a connection to `endpoint` with room, dialling one if none has."""
        key = H2Pool.key(endpoint, tls)
        conns = self.by_key.get(key)
        if conns is None:
            conns = self.by_key[key] = []
        for conn in conns:
            if conn.has_room():
                conn.take(call)
                return
        conn = H2Upstream(self, key, endpoint)
        conns.append(conn)
        conn.waiting.append(call)
        self.loop.create_task(self._dial(conn, tls, connect_timeout))

    async def _dial(self, conn: H2Upstream, tls: UpstreamTLS | None, limit: float) -> None:
        endpoint = conn.endpoint
        try:
            if tls is None:
                await asyncio.wait_for(
                    self.loop.create_connection(lambda: conn, endpoint.address, endpoint.port),
                    limit,
                )
            else:
                await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: conn,
                        endpoint.address,
                        endpoint.port,
                        ssl=tls.context,
                        server_hostname=tls.server_name or None,
                    ),
                    limit,
                )
        except (OSError, TimeoutError) as exc:
            logger.info(
                "upstream.connect_failed",
                extra={
                    "endpoint": endpoint.authority,
                    "error": type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc),
                },
            )
            conn._lost("UpstreamConnectFailed")
            return
        if tls is not None and conn.transport is not None:
            tls_object = conn.transport.get_extra_info("ssl_object")
            chosen = tls_object.selected_alpn_protocol() if tls_object is not None else None
            if chosen != "h2":
                logger.warning(
                    "grpc.upstream_not_http2",
                    extra={
                        "endpoint": endpoint.authority,
                        "error": f"the pod did not choose h2 in ALPN ({chosen!r}) on a GRPCS "
                        "route: it does not speak HTTP/2",
                    },
                )
                conn._lost("UpstreamNotHTTP2")
                return
        conn.connected()

    def forget(self, conn: H2Upstream) -> None:
        self.conns.discard(conn)
        conns = self.by_key.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.by_key[conn.key]

    def close(self) -> None:
        for conn in list(self.conns):
            conn.abort()


_POOLS: dict[asyncio.AbstractEventLoop, H2Pool] = {}


def close_pool(loop: asyncio.AbstractEventLoop) -> None:
    """Shutdown: the worker's HTTP/2 connections to pods go (their calls were drained)."""
    pool = _POOLS.pop(loop, None)
    if pool is not None:
        pool.close()


def pool_for(loop: asyncio.AbstractEventLoop, idle_timeout: float) -> H2Pool:
    """The worker's pool (one loop per worker process)."""
    pool = _POOLS.get(loop)
    if pool is None:
        pool = _POOLS[loop] = H2Pool(loop, idle_timeout)
    return pool
