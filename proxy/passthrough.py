"""TLS passthrough: HTTPS connections for a passthrough host go to a pod unterminated.

Data flow: with `--enable-ssl-passthrough` and passthrough hosts in the snapshot
(`config.PassthroughHost`, from ingress-nginx's `ssl-passthrough` annotation), the HTTPS
listener (proxy/tlsserver.py) peeks at each new connection's ClientHello (after its PROXY
protocol header, if any) and hands the server name to `Passthrough.take`. A host that is not
passthrough (or no SNI) is terminated by Portico as always. For a passthrough host the
connection is checked against the host's access rules (a refusal, source ranges: on the peer's
address, or the PROXY header's), an endpoint of its backend is dialled (the balancer's
round robin, ejection on connect failure, up to `upstream_max_attempts` endpoints), and the two
sockets are joined by a `Splice`: every byte one side sends goes to the other, the ClientHello
included (it was only peeked), so the client's TLS session is with the pod and the pod's
certificate is the one the client verifies. Nothing of the HTTP layer applies to such a
connection (no routes, no headers, no per-request log), as with ingress-nginx.

Connections that cannot be served are closed without an answer (TLS has none to give before a
handshake): no endpoint, every dial failed, refused by the host's rules, the worker draining.
Each passthrough connection, served or not, is one JSON line on the access log's stream
(`"event":"passthrough"`: client, host, upstream, bytes each way, duration, reason), and is
counted among the worker's tunnels while open (shutdown waits for it, the idle timeout is
`tunnel_idle_timeout`).

The pump: a pair of asyncio protocols over the event loop's own TCP transports, not splice(2).
`os.splice` through a pipe pair (zero copy) was measured against it with
tests/bench/passthrough_pump.py (loopback, uvloop, 512 MiB per round, 3 interleaved rounds on
a shared 2-CPU machine); see the figures in ARCHITECTURE.md's decisions. The transport pump
costs two file descriptors per connection where splice needs six (two pipes per connection,
which also count against the kernel's per-user pipe buffer budget, past which pipes shrink to
one page), and it keeps flow control, half-close and the idle timeout in the same tested shape
as proxy/tunnel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Final, cast

from proxy.cluster import Cluster
from proxy.config import Endpoint, PassthroughHost, Snapshot
from proxy.connections import Connections
from proxy.proxyprotocol import Source
from proxy.settings import ProxySettings
from proxy.sourceranges import Ranges

logger = logging.getLogger("portico.passthrough")

READ_SIZE: Final = 256 * 1024

# Why a passthrough connection ended without reaching a pod (the log line's reason).
NO_ENDPOINTS: Final = "NoEndpoints"
CONNECT_FAILED: Final = "UpstreamConnectFailed"
SOURCE_RANGE_DENIED: Final = "SourceRangeDenied"
DRAINING: Final = "Draining"
TIMED_OUT: Final = "Timeout"

# Called once per connection when it ends: (bytes client -> pod, bytes pod -> client).
Ended = Callable[[int, int], None]


class Target:
    """One passthrough host as the worker uses it: its backend and access rules, built once
    per snapshot."""

    __slots__ = ("allow", "backend", "deny", "host", "ingress", "refuse", "service")

    def __init__(self, host: PassthroughHost) -> None:
        self.host = host.host
        self.backend = host.backend
        self.ingress = host.ingress
        self.service = host.service
        self.refuse = host.refuse
        nets = ipaddress.ip_network
        self.allow = Ranges(nets(c) for c in host.allow) if host.allow else None
        self.deny = Ranges(nets(c) for c in host.deny) if host.deny else None

    def refusal(self, client: str) -> str | None:
        """Why a connection from `client` (an address) is refused, or None."""
        if self.refuse:
            return self.refuse
        if self.allow is None and self.deny is None:
            return None
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return SOURCE_RANGE_DENIED  # not an IP address (a UNIX socket): no rule can pass it
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        family, address = ip.version, int(ip)
        if self.deny is not None and self.deny.contains(family, address):
            return SOURCE_RANGE_DENIED
        if self.allow is not None and not self.allow.contains(family, address):
            return SOURCE_RANGE_DENIED
        return None


class Passthrough:
    """The passthrough hosts of the worker's current snapshot and the connections taken."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ProxySettings,
        connections: Connections,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.connections = connections
        self.targets: dict[str, Target] = {}
        self.clusters: dict[str, Cluster] = {}
        self._hosts: tuple[PassthroughHost, ...] = ()
        self.log = settings.access_log

    @property
    def active(self) -> bool:
        """Whether the HTTPS listener must peek at ClientHellos at all."""
        return bool(self.targets)

    def install(self, snapshot: Snapshot, clusters: dict[str, Cluster]) -> None:
        """Take the passthrough hosts of a new snapshot (and the clusters of its backends)."""
        self.clusters = clusters
        if not self.settings.enable_ssl_passthrough:
            return  # the compiler emits none then; a snapshot that does anyway is not obeyed
        if snapshot.passthrough != self._hosts:
            self.targets = {h.host: Target(h) for h in snapshot.passthrough}
            self._hosts = snapshot.passthrough

    def take(self, conn: socket.socket, source: Source, sni: str | None) -> bool:
        """Take the connection if `sni` is a passthrough host (True: it is ours now)."""
        if sni is None:
            return False
        target = self.targets.get(sni)
        if target is None:
            return False
        client = _client_address(conn, source)
        link = Link(self, target, conn, client)
        reason = DRAINING if self.connections.draining else target.refusal(client)
        if reason is not None:
            link.end(reason)
            return True
        link.start()
        return True


def _client_address(conn: socket.socket, source: Source) -> str:
    if source is not None:
        return source[0]
    try:
        peer = conn.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""


class Link:
    """One passthrough connection: dial a pod, then splice; logs itself when it ends."""

    __slots__ = (
        "client",
        "conn",
        "dial_deadline",
        "ended",
        "passthrough",
        "splice",
        "started",
        "target",
        "task",
        "upstream",
    )

    def __init__(
        self, passthrough: Passthrough, target: Target, conn: socket.socket, client: str
    ) -> None:
        self.passthrough = passthrough
        self.target = target
        self.conn = conn
        self.client = client
        self.started = time.monotonic()
        self.upstream: str | None = None
        self.splice: Splice | None = None
        self.task: asyncio.Task[None] | None = None
        self.ended = False
        self.dial_deadline = 0.0

    @property
    def deadline(self) -> float:
        """The dial's deadline, then the splice's idle deadline (0.0: none)."""
        if self.ended:
            return 0.0
        splice = self.splice
        return splice.deadline if splice is not None else self.dial_deadline

    def start(self) -> None:
        pt = self.passthrough
        settings = pt.settings
        # Until the splice runs its own idle deadline, the dial is timed as a whole.
        attempts = max(1, settings.upstream_max_attempts)
        self.dial_deadline = pt.loop.time() + settings.upstream_connect_timeout * attempts + 1.0
        pt.connections.tunnel_opened(self)
        self.task = pt.loop.create_task(self._connect())

    async def _connect(self) -> None:
        pt = self.passthrough
        settings = pt.settings
        cluster = pt.clusters.get(self.target.backend)
        tried: list[Endpoint] = []
        while cluster is not None and len(tried) < max(1, settings.upstream_max_attempts):
            endpoint = cluster.pick("round_robin", tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            pod = _Side()
            try:
                transport, _ = await asyncio.wait_for(
                    pt.loop.create_connection(pod.itself, endpoint.address, endpoint.port),
                    settings.upstream_connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                cluster.connect_failed(endpoint)
                logger.debug(
                    "passthrough.connect_failed",
                    extra={"endpoint": endpoint.authority, "error": str(exc) or type(exc).__name__},
                )
                continue
            cluster.connect_succeeded(endpoint)
            self.upstream = endpoint.authority
            transport.pause_reading()  # until the client side is there to take what it sends
            try:
                await self._splice(transport, pod)
            finally:
                if self.splice is None:  # cancelled (shutdown, timeout) or failed
                    transport.close()
            return
        self.end(NO_ENDPOINTS if not tried else CONNECT_FAILED)

    async def _splice(self, pod_transport: asyncio.BaseTransport, pod: _Side) -> None:
        client = _Side()
        try:
            client_transport, _ = await self.passthrough.loop.connect_accepted_socket(
                lambda: client, sock=self.conn
            )
        except OSError:
            self.end(CONNECT_FAILED)
            return
        if self.ended:
            client_transport.close()
            return
        self.splice = Splice(
            self.passthrough.loop,
            self.passthrough.settings.tunnel_idle_timeout,
            client_transport,
            client,
            pod_transport,
            pod,
            self._spliced_ended,
        )

    def _spliced_ended(self, sent: int, received: int) -> None:
        self.end(None, sent, received)

    # ---- what the worker's sweep and shutdown call (connections.Pipe) -------------------------

    def timeout(self) -> None:
        if self.splice is not None:
            self.splice.close()  # idle: ends through _spliced_ended
        else:
            self.end(TIMED_OUT)

    def close(self) -> None:
        if self.splice is not None:
            self.splice.close()
        else:
            self.end(DRAINING)

    def end(self, reason: str | None, sent: int = 0, received: int = 0) -> None:
        if self.ended:
            return
        self.ended = True
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self.splice is None:
            with contextlib.suppress(OSError):
                self.conn.close()
        pt = self.passthrough
        pt.connections.tunnel_closed(self)
        if pt.log:
            _log_line(self, reason, sent, received)


def _log_line(link: Link, reason: str | None, sent: int, received: int) -> None:
    target = link.target
    now = time.time()
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now * 1000) % 1000:03d}Z",
        "event": "passthrough",
        "client": link.client,
        "host": target.host,
        "upstream": link.upstream,
        "ingress": target.ingress,
        "service": target.service,
        "bytes_sent": sent,
        "bytes_received": received,
        "ms": round((time.monotonic() - link.started) * 1000, 3),
    }
    if reason is not None:
        entry["reason"] = reason
    try:
        stream = sys.stdout.buffer
        stream.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # a closed or broken stdout must not take the data path down


class _Side(asyncio.Protocol):
    """One socket of a splice: what it reads is written to the other side."""

    __slots__ = ("count", "early", "eof", "peer", "splice", "transport")

    def __init__(self) -> None:
        self.splice: Splice | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.count = 0  # bytes read from this socket
        # Read before the other side was there (the client's socket already holds its
        # ClientHello, and uvloop starts reading even when connection_made pauses): kept for
        # the Splice to pass on, with reading paused meanwhile.
        self.early: list[bytes] = []

    def itself(self) -> _Side:
        """The protocol factory of a transport made for this side."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        if self.splice is None:
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)
        splice = self.splice
        if splice is not None:
            splice.touch()

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        splice = self.splice
        if peer is None or peer.transport is None or splice is None:
            return False
        if peer.eof or not peer.transport.can_write_eof():
            splice.close()
            return False
        peer.transport.write_eof()
        return True  # the other direction stays open (TCP half close, as the client chose)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splice is not None:
            self.splice.close()


class Splice:
    """Two connected transports joined both ways, with flow control, half close and an idle
    deadline; `ended(client bytes, pod bytes)` is called once, when both are closed."""

    __slots__ = ("client", "closed", "deadline", "ended", "idle_timeout", "loop", "pod")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        client_transport: asyncio.BaseTransport,
        client: _Side,
        pod_transport: asyncio.BaseTransport,
        pod: _Side,
        ended: Ended,
    ) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.ended = ended
        self.closed = False
        self.deadline = 0.0
        self.client = client
        self.pod = pod
        client.transport = cast(asyncio.Transport, client_transport)
        pod.transport = cast(asyncio.Transport, pod_transport)
        client.peer, pod.peer = pod, client
        client.splice = pod.splice = self
        self.touch()
        if client_transport.is_closing() or pod_transport.is_closing():
            self.close()
            return
        for side in (client, pod):
            if side.early:
                pod_or_client = side.peer
                assert pod_or_client is not None and pod_or_client.transport is not None
                pod_or_client.transport.writelines(side.early)
                side.early = []
        client.transport.resume_reading()
        pod.transport.resume_reading()

    def touch(self) -> None:
        self.deadline = self.loop.time() + self.idle_timeout

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = 0.0
        for side in (self.client, self.pod):
            if side.transport is not None:
                side.transport.close()
        self.ended(self.client.count, self.pod.count)


async def splice_sockets(
    loop: asyncio.AbstractEventLoop,
    client_sock: socket.socket,
    pod_sock: socket.socket,
    idle_timeout: float,
    ended: Ended,
) -> Splice:
    """Join two connected sockets (the pump on its own, for tests/bench/passthrough_pump.py)."""
    pod = _Side()
    pod_transport, _ = await loop.connect_accepted_socket(lambda: pod, sock=pod_sock)
    pod_transport.pause_reading()
    client = _Side()
    client_transport, _ = await loop.connect_accepted_socket(lambda: client, sock=client_sock)
    return Splice(loop, idle_timeout, client_transport, client, pod_transport, pod, ended)
