"""Rate limits: per-client counters shared by all worker processes, and the policy step.

`config.RateLimit` (ingress-nginx's limit-connections, limit-rpm, limit-rps) becomes a
`LimitRequests` step. ingress-nginx's limits hold per replica across all its nginx workers
(shared-memory zones), so Portico's hold across its worker processes: the counters live in one
shared memory segment, `Counters`, that the controller creates (a memfd, proxy/worker.py's
`--limits-fd`, inherited by every worker it starts) and each worker maps. A process run without
one (tests that build a ProxyServer in-process) keeps a private table.

The table is a fixed array of 32-byte slots (key, excess, last, count), open addressing over a
window of `WINDOW` slots from the key's hash: bounded size whatever the number of clients. A
key not in its window takes a free slot, else the slot of the window last used longest ago
(nginx's zones evict their least recently used states the same way when full); a window whose
slots all hold requests in progress has no room, and the request is refused (fail closed, as
nginx refuses when its zone cannot store a state). A key is a 63-bit hash of (zone, kind,
address family, address): the hash of a tuple of integers is the same in every process
(unlike that of a string), so all workers find the same slot.

Every access holds a POSIX record lock on the segment (`fcntl.lockf`: per process, released if
the process dies), two system calls per limited request; only routes with a limit pay it.

The request limits are nginx's `limit_req zone=... burst=B nodelay` (ngx_http_limit_req_module):
a leaky bucket in milli-requests per key. A request adds 1000 to the key's `excess` after the
time since the last accepted request drained `rate` milli-requests per second from it (not
below 0); when the result is above `burst` x 1000 the request is refused and nothing is stored.
A first request always passes (a new state starts at 0), so a fresh client gets 1 + burst
requests at once, then `rate` per second. Several limits of one step are checked first and
stored only if all pass, as nginx does. The connection limit is nginx's `limit_conn`: the
requests of a key in progress (not finished) at once, across workers; the count is taken when
the request passes and given back when its exchange ends (proxy/exchange.py). A worker that
dies cannot give its counts back: the controller then sets every count to 0
(`forget_in_progress`): briefly too lenient rather than refusing those clients for good.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
import time
from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.sourceranges import Ranges, client_address
from proxy.steps import BOTH, RequestStep

SLOT: Final = struct.Struct("<qqqq")  # key, excess (milli-requests), last (ms), count
SLOTS: Final = 1 << 17  # 4 MiB: ingress-nginx gives each zone 5 MB
WINDOW: Final = 16  # slots probed from a key's place
SIZE: Final = SLOTS * SLOT.size
_MASK: Final = SLOTS - 1
_KEY_BITS: Final = (1 << 63) - 1
# The excess a new state starts with: its first request adds 1000 and leaves 0, as nginx
# stores a new state with excess 0.
_NEW: Final = -1000


class Counters:
    """The shared table (see the module docstring). `fd` -1: a private one."""

    __slots__ = ("fd", "map")

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd
        if fd < 0:
            self.map = mmap.mmap(-1, SIZE)
        else:
            if os.fstat(fd).st_size < SIZE:
                os.ftruncate(fd, SIZE)
            self.map = mmap.mmap(fd, SIZE)

    def _lock(self) -> None:
        if self.fd >= 0:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self.fd >= 0:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _find(self, key: int, now: int) -> int:
        """The offset of the key's slot (claimed and zeroed when new), or -1: no room."""
        data = self.map
        start = key & _MASK
        victim = -1
        oldest = 0
        for i in range(WINDOW):
            offset = ((start + i) & _MASK) * 32
            slot_key, _excess, last, count = SLOT.unpack_from(data, offset)
            if slot_key == key:
                return offset
            if slot_key == 0:
                SLOT.pack_into(data, offset, key, _NEW, now, 0)
                return offset
            if count == 0 and (victim < 0 or last < oldest):
                victim = offset
                oldest = last
        if victim >= 0:
            SLOT.pack_into(data, victim, key, _NEW, now, 0)
        return victim

    def take(self, keys: list[int], rates: tuple[int, ...], bursts: tuple[int, ...]) -> bool:
        """One request against each (key, rate in milli-requests/s, burst in milli-requests):
        True and stored if every bucket has room, else False and nothing stored."""
        now = time.monotonic_ns() // 1_000_000
        data = self.map
        offsets: list[int] = []
        excesses: list[int] = []
        self._lock()
        try:
            for i in range(len(keys)):
                offset = self._find(keys[i], now)
                if offset < 0:
                    return False
                _key, excess, last, _count = SLOT.unpack_from(data, offset)
                elapsed = now - last
                if elapsed < -60000:
                    elapsed = 1
                excess = excess - rates[i] * abs(elapsed) // 1000 + 1000
                excess = max(excess, 0)
                if excess > bursts[i]:
                    return False
                offsets.append(offset)
                excesses.append(excess)
            for i in range(len(offsets)):
                offset = offsets[i]
                _key, _excess, last, count = SLOT.unpack_from(data, offset)
                SLOT.pack_into(
                    data, offset, keys[i], excesses[i], now if now != last else last, count
                )
            return True
        finally:
            self._unlock()

    def acquire(self, key: int, limit: int) -> bool:
        """One more request in progress for `key`, if fewer than `limit` are."""
        now = time.monotonic_ns() // 1_000_000
        data = self.map
        self._lock()
        try:
            offset = self._find(key, now)
            if offset < 0:
                return False
            _key, excess, _last, count = SLOT.unpack_from(data, offset)
            if count >= limit:
                return False
            SLOT.pack_into(data, offset, key, excess, now, count + 1)
            return True
        finally:
            self._unlock()

    def release(self, key: int) -> None:
        """A request `acquire` counted has ended."""
        data = self.map
        self._lock()
        try:
            start = key & _MASK
            for i in range(WINDOW):
                offset = ((start + i) & _MASK) * 32
                slot_key, excess, last, count = SLOT.unpack_from(data, offset)
                if slot_key == key:
                    if count > 0:
                        SLOT.pack_into(data, offset, key, excess, last, count - 1)
                    return
        finally:
            self._unlock()

    def forget_in_progress(self) -> None:
        """Every request-in-progress count back to 0: a worker died, and the counts of its
        requests would otherwise lock their clients out until the controller restarts. The
        other workers' requests in progress go uncounted until they end (release stops at 0):
        briefly too lenient rather than refusing for good."""
        self._lock()
        try:
            counts = memoryview(self.map).cast("q")
            try:
                counts[3::4] = memoryview(bytes(SIZE // 4)).cast("q")
            finally:
                counts.release()
        finally:
            self._unlock()

    def count(self, key: int) -> int:
        """Requests in progress for `key` (for tests and debugging)."""
        start = key & _MASK
        for i in range(WINDOW):
            slot_key, _excess, _last, count = SLOT.unpack_from(self.map, ((start + i) & _MASK) * 32)
            if slot_key == key:
                return int(count)
        return 0


# The worker's table: attached to the controller's segment at start (`attach`), else private.
_counters: list[Counters] = []


def attach(fd: int) -> None:
    """Use the shared segment `fd` (the worker does this before building anything)."""
    _counters[:] = [Counters(fd)]


def counters() -> Counters:
    if not _counters:
        _counters.append(Counters())
    return _counters[0]


def create_segment() -> int:
    """A new shared segment for the workers of one controller (a memfd: nothing on disk to
    clean up; inherited by the workers, see controller/workers.py)."""
    fd = os.memfd_create("portico-rate-limits", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    return fd


def release(key: int) -> None:
    """The exchange that `LimitRequests.take_held` gave `key` to has ended."""
    counters().release(key)


def zone_id(zone: str, kind: str) -> int:
    """A zone's integer, the same in every process (the key hash mixes it with addresses)."""
    return int.from_bytes(hashlib.blake2b(f"{kind}:{zone}".encode(), digest_size=8).digest())


def key_of(zone: int, family: int, address: int) -> int:
    key = hash((zone, family, address)) & _KEY_BITS
    return key if key else 1


class LimitRequests(RequestStep):
    """config.RateLimit: limit-connections, then limit-rpm, then limit-rps (the order
    ingress-nginx documents); a client in the allowlist is not limited."""

    __slots__ = (
        "allow",
        "bursts",
        "conn_answer",
        "conn_zone",
        "connections",
        "counters",
        "exempt",
        "held",
        "rates",
        "req_answer",
        "trusted",
        "zones",
    )

    def __init__(
        self,
        counters: Counters,
        zone: str,
        rps: int,
        rpm: int,
        burst_multiplier: int,
        connections: int,
        allow: tuple[str, ...],
        status: int,
        connection_status: int,
        trusted: Ranges,
    ) -> None:
        super().__init__(BOTH)
        self.counters = counters
        self.trusted = trusted
        self.allow = Ranges(ipaddress.ip_network(c) for c in allow)
        self.exempt = bool(allow)
        self.connections = connections
        self.conn_zone = zone_id(zone, "conn")
        zones: list[int] = []
        rates: list[int] = []
        bursts: list[int] = []
        # nginx: rate=Nr/m is N * 1000 / 60 milli-requests a second; burst=B is B * 1000.
        if rpm:
            zones.append(zone_id(zone, "rpm"))
            rates.append(rpm * 1000 // 60)
            bursts.append(rpm * burst_multiplier * 1000)
        if rps:
            zones.append(zone_id(zone, "rps"))
            rates.append(rps * 1000)
            bursts.append(rps * burst_multiplier * 1000)
        self.zones = tuple(zones)
        self.rates = tuple(rates)
        self.bursts = tuple(bursts)
        self.req_answer = Answer(status, "RateLimited")
        self.conn_answer = Answer(connection_status, "ConnectionLimited")
        # The key of the request in progress counted by the last `request`, until routing
        # takes it for its exchange (`take_held`): requests are routed one at a time.
        self.held = 0

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        if client.trusted and head.forwarded_for is not None:
            family, address = client_address(head, client, self.trusted)
        else:
            family = client.family
            address = client.address
        if self.exempt and self.allow.contains(family, address):
            return None
        if self.connections:
            key = key_of(self.conn_zone, family, address)
            if not self.counters.acquire(key, self.connections):
                return self.conn_answer
            self.held = key
        zones = self.zones
        if zones:
            keys = [key_of(z, family, address) for z in zones]
            if not self.counters.take(keys, self.rates, self.bursts):
                return self.req_answer
        return None

    def take_held(self) -> int:
        """The key counted for the request just routed (0: none); its exchange releases it."""
        held = self.held
        self.held = 0
        return held
