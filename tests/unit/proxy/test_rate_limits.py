"""The rate-limit counters and step: nginx's leaky bucket, requests in progress, the bounded
shared table, and which address is counted.

The e2e behaviour (two workers, statuses from the ConfigMap, 20 slow requests) is in
tests/integration/test_rate_limits.py; here the clock is the test's, so the drain is exact.
Rows cite nginx's ngx_http_limit_req_module (the bucket ingress-nginx configures with
`limit_req zone=... burst=B nodelay`: ratelimit/main.go, template.go buildRateLimit).
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from proxy import ratelimit
from proxy.headers import ClientContext, RequestHead
from proxy.ratelimit import SLOTS, WINDOW, Counters, LimitRequests, create_segment, key_of
from proxy.sourceranges import Ranges


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms * 1_000_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic_ns", fake)
    return fake


# (rate in requests/s as nginx stores it x 1000, burst, [(ms since start, passes)], source)
BUCKET = [
    (1000, 5, [(0, True)] * 6 + [(0, False)], "nodelay: a fresh client gets 1 + burst at once"),
    (1000, 0, [(0, True), (0, False), (999, False), (1000, True)], "burst 0: one per 1/rate"),
    (
        1000,
        1,
        [(0, True), (0, True), (0, False), (500, False), (1000, True), (1000, False)],
        "1 r/s: a request drained after a second",
    ),
    (
        1000,
        1,
        [(0, True), (0, True), (400, False), (400, False), (1000, True)],
        "a refused request stores nothing (the drain counts from the last accepted one)",
    ),
    (
        1000 // 60,
        1,
        [(0, True), (0, True), (60_000, False), (63_000, True)],
        "rate=1r/m is 16 milli-requests a second in nginx (1000 / 60, truncated)",
    ),
    (5000, 5, [(0, True)] * 6 + [(200, True), (200, False)], "5 r/s: one more each 200 ms"),
]


@pytest.mark.parametrize(("rate", "burst", "steps", "source"), BUCKET, ids=[b[3] for b in BUCKET])
def test_leaky_bucket(
    clock: Clock, rate: int, burst: int, steps: list[tuple[int, bool]], source: str
) -> None:
    counters = Counters()
    start = clock.ms
    got = []
    for at, _ in steps:
        clock.ms = start + at
        got.append(counters.take([7], (rate,), (burst * 1000,)))
    assert got == [passes for _, passes in steps]


def test_several_limits_are_stored_only_if_all_pass(clock: Clock) -> None:
    # nginx: the limits of a location are checked, and accounted only when none refuses.
    counters = Counters()
    assert counters.take([1, 2], (1000, 1000), (5000, 0))
    assert not counters.take([1, 2], (1000, 1000), (5000, 0))  # the second has no burst
    # The first bucket was not charged by the refused request: 5 more pass on it alone.
    assert [counters.take([1], (1000,), (5000,)) for _ in range(6)] == [True] * 5 + [False]


def test_requests_in_progress() -> None:
    counters = Counters()
    assert [counters.acquire(9, 2) for _ in range(3)] == [True, True, False]
    counters.release(9)
    assert counters.count(9) == 1
    assert counters.acquire(9, 2)
    counters.release(9)
    counters.release(9)
    counters.release(9)  # never below 0
    assert counters.count(9) == 0


def test_one_segment_seen_by_every_mapping() -> None:
    # Workers map the controller's memfd: a count taken through one mapping holds in another.
    fd = create_segment()
    try:
        first, second = Counters(fd), Counters(fd)
        assert first.acquire(5, 1)
        assert not second.acquire(5, 1)
        second.release(5)
        assert first.acquire(5, 1)
    finally:
        os.close(fd)


def test_counts_are_forgotten_when_a_worker_dies() -> None:
    # The controller's answer to a worker that died with requests in progress (workers.py).
    fd = create_segment()
    try:
        worker, controller = Counters(fd), Counters(fd)
        assert worker.acquire(5, 1) and worker.take([6], (1000,), (0,))
        controller.forget_in_progress()
        assert worker.count(5) == 0
        assert worker.acquire(5, 1)
        assert not worker.take([6], (1000,), (0,))  # request rates are kept
    finally:
        os.close(fd)


def test_a_full_window_evicts_the_oldest_idle_state(clock: Clock) -> None:
    counters = Counters()
    colliding = [3 + i * SLOTS for i in range(WINDOW + 1)]  # same place in the table
    for i, key in enumerate(colliding[:WINDOW]):
        clock.ms += 1
        assert counters.take([key], (1000,), (0,)), i
    clock.ms += 1
    assert counters.take([colliding[WINDOW]], (1000,), (0,))  # took the oldest's slot
    assert counters.take([colliding[0]], (1000,), (0,))  # the oldest starts over


def test_a_window_of_requests_in_progress_refuses() -> None:
    # nginx refuses when its zone cannot store a state; never an unlimited pass.
    counters = Counters()
    colliding = [3 + i * SLOTS for i in range(WINDOW + 1)]
    for key in colliding[:WINDOW]:
        assert counters.acquire(key, 1)
    assert not counters.acquire(colliding[WINDOW], 1)
    assert not counters.take([colliding[WINDOW]], (1000,), (5000,))


def _head(xff: bytes | None = None) -> RequestHead:
    head = RequestHead()
    head.forwarded_for = xff
    return head


TRUSTED = (ipaddress.ip_network("127.0.0.10/32"),)


def _step(**kw: object) -> LimitRequests:
    values: dict[str, object] = {
        "zone": "ns/ing",
        "rps": 0,
        "rpm": 1,
        "burst_multiplier": 0,
        "connections": 0,
        "allow": (),
        "status": 429,
        "connection_status": 503,
    }
    values.update(kw)
    return LimitRequests(Counters(), trusted=Ranges(TRUSTED), **values)  # type: ignore[arg-type]


def test_the_step_counts_the_real_client_address(clock: Clock) -> None:
    # annotations.md: the client address from the PROXY protocol or trusted X-Forwarded-For.
    step = _step()
    proxy_peer = ClientContext("127.0.0.10", "http", 80, TRUSTED)
    assert step.request(_head(b"192.0.2.1"), proxy_peer) is None
    refused = step.request(_head(b"192.0.2.1"), proxy_peer)
    assert refused is not None and (refused.status, refused.reason) == (429, "RateLimited")
    assert step.request(_head(b"192.0.2.2"), proxy_peer) is None  # another client
    # An untrusted peer's X-Forwarded-For is not read: it cannot dodge its own limit.
    peer = ClientContext("127.0.0.5", "http", 80, TRUSTED)
    assert step.request(_head(b"192.0.2.3"), peer) is None
    assert step.request(_head(b"192.0.2.4"), peer) is not None


def test_the_allowlist_is_not_limited(clock: Clock) -> None:
    step = _step(allow=("127.0.0.0/24",), connections=1)
    peer = ClientContext("127.0.0.5", "http", 80, ())
    assert [step.request(_head(), peer) for _ in range(3)] == [None] * 3
    assert step.take_held() == 0  # nothing counted in progress


def test_a_connection_counted_is_handed_to_the_exchange(clock: Clock) -> None:
    step = _step(rpm=0, connections=1)
    peer = ClientContext("127.0.0.5", "http", 80, ())
    assert step.request(_head(), peer) is None
    held = step.take_held()
    assert held == key_of(
        ratelimit.zone_id("ns/ing", "conn"), 4, int(ipaddress.ip_address("127.0.0.5"))
    )
    assert step.take_held() == 0
    refused = step.request(_head(), peer)
    assert refused is not None and (refused.status, refused.reason) == (503, "ConnectionLimited")
    step.counters.release(held)
    assert step.request(_head(), peer) is None
