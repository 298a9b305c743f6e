"""Per-endpoint keep-alive pool of upstream connections, one per worker.

An exchange asks `acquire(endpoint, tls)` for an idle connection to an endpoint and, when there
is none, dials with `connect`. After a complete response on a reusable connection the exchange
hands it back with `release`; it then idles (LIFO, so the warmest connection is reused first and
the coldest ones expire) until `upstream_keepalive_timeout`, `upstream_keepalive_max` per
endpoint; past that number an idle connection is kept only SURPLUS_IDLE seconds. An HTTP/2
client's streams (500 in flight in proxy-bench --h2) each hold an upstream connection, and one
read that ends a burst of them releases far more at once than the cap, just before the client's
next requests take them again: closing the surplus made those connect anew (--h2c 0.29x nginx,
p99 7x with the cap of 64; with 320, still 0.53x, p99 4.3x). Kept briefly, they are reused, and
a load that falls leaves the cap's number within SURPLUS_IDLE. A connection older than
`upstream_keepalive_time` (default 5 s) is closed instead of pooled: measured with proxy-bench
--body 64k, connections reused for good ran ever slower (the pod's TCP left its startup phase
after spurious tail-loss probes while a busy worker read late, then paced every response: 22k ->
14k responses/s over five 5-second runs); renewed every 5 s they stayed at 22k, and 100-byte
responses lost nothing (a renewal per connection per 5 s). Renewal after a number of requests
instead (nginx's keepalive_requests) cost 12 % on those. When a snapshot drops an endpoint,
`retain` closes its idle connections and makes later releases to it close instead. The pool
alone builds connection keys (`key`) and moves connections in and out of its idle lists.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.config import Endpoint
from proxy.settings import ProxySettings
from proxy.tls import UpstreamTLS
from proxy.upstream import UpstreamProtocol

logger = logging.getLogger("portico.proxy")

_Key = tuple[str, int]
# (ip, port) for plain connections, (ip, port, UpstreamTLS) for TLS ones.
_PoolKey = tuple[object, ...]

# Seconds an idle connection beyond `upstream_keepalive_max` is kept for reuse (see above).
SURPLUS_IDLE = 1.0


class Pool:
    __slots__ = (
        "connects",
        "conns",
        "idle",
        "keepalive_max",
        "keepalive_time",
        "keepalive_timeout",
        "loop",
        "retained",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: ProxySettings) -> None:
        self.loop = loop
        self.keepalive_timeout = settings.upstream_keepalive_timeout
        self.keepalive_max = settings.upstream_keepalive_max
        self.keepalive_time = settings.upstream_keepalive_time
        self.idle: dict[_PoolKey, list[UpstreamProtocol]] = {}
        self.conns: set[UpstreamProtocol] = set()  # every open upstream connection
        self.retained: frozenset[_Key] | None = None  # None: every endpoint is current
        self.connects = 0

    def track(self, conn: UpstreamProtocol) -> None:
        self.conns.add(conn)

    def forget(self, conn: UpstreamProtocol) -> None:
        self.conns.discard(conn)
        idle = self.idle.get(conn.pool_key)
        if idle and conn in idle:
            idle.remove(conn)

    @staticmethod
    def key(endpoint: Endpoint, tls: UpstreamTLS | None) -> _PoolKey:
        """The idle list of connections to `endpoint`: TLS and plain connections to one pod
        live apart (and TLS ones per identity)."""
        if tls is None:
            return (endpoint.address, endpoint.port)
        return (endpoint.address, endpoint.port, tls)

    def acquire(self, endpoint: Endpoint, tls: UpstreamTLS | None) -> UpstreamProtocol | None:
        """The warmest idle connection to `endpoint` still open, taken out of the pool.

        A transport closing underneath (its connection_lost not run yet) is not asked about:
        that costs a call per request, and a request sent on it comes back through the
        exchange's stale-connection retry, as when a pod closes an idle connection."""
        idle = self.idle.get(Pool.key(endpoint, tls))
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None:
                conn.unpark()
                return conn
        return None

    def release(self, conn: UpstreamProtocol, now: float = 0.0) -> None:
        """Pool an idle connection (or close it); `now`: the caller's loop time, if it has it."""
        if conn.closed:
            conn.close()  # lets go of its exchange
            return
        key = conn.pool_key
        retained = self.retained
        idle = self.idle.get(key)
        if idle is None:
            idle = self.idle[key] = []
        if not now:
            now = self.loop.time()
        if (
            retained is not None and conn.key not in retained
        ) or now - conn.born > self.keepalive_time:
            conn.close()
            return
        if len(idle) >= self.keepalive_max:
            conn.park(now, min(SURPLUS_IDLE, self.keepalive_timeout))
        else:
            conn.park(now, self.keepalive_timeout)
        idle.append(conn)

    async def connect(
        self, endpoint: Endpoint, connect_timeout: float, tls: UpstreamTLS | None = None
    ) -> UpstreamProtocol:
        self.connects += 1
        loop = self.loop
        address = (endpoint.address, endpoint.port)
        pool_key = Pool.key(endpoint, tls)
        if tls is None:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamProtocol(self, loop, endpoint, address, pool_key),
                    endpoint.address,
                    endpoint.port,
                ),
                connect_timeout,
            )
        else:
            # The handshake is part of connecting: it counts against the connect timeout.
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamProtocol(self, loop, endpoint, address, pool_key),
                    endpoint.address,
                    endpoint.port,
                    ssl=tls.context,
                    server_hostname=tls.server_name or None,
                ),
                connect_timeout,
            )
        return conn

    def retain(self, keys: frozenset[_Key]) -> None:
        """Keep pooling only these endpoints; close idle connections to any other."""
        self.retained = keys
        for key in [k for k in self.idle if k[:2] not in keys]:
            for conn in self.idle.pop(key):
                conn.close()

    def idle_count(self) -> int:
        return sum(len(v) for v in self.idle.values())

    def close(self) -> None:
        for idle in list(self.idle.values()):
            for conn in list(idle):
                conn.close()
        self.idle.clear()

    def abort_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
