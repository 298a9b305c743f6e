"""Unit tests of proxy.cluster: candidate tiers, ejection backoff, round robin and P2C."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from proxy.cluster import EWMA_ALPHA, Cluster
from proxy.config import Backend, BalancerKind, Endpoint
from proxy.settings import ProxySettings
from tests.fakes import FakeClock

A = Endpoint("127.0.0.2", 8080)
B = Endpoint("127.0.0.3", 8080)
C = Endpoint("127.0.0.4", 8080)
TA = Endpoint("127.0.0.5", 8080, ready=False)
TB = Endpoint("127.0.0.6", 8080, ready=False)

BALANCERS: tuple[BalancerKind, ...] = ("round_robin", "least_request")


def make(
    *endpoints: Endpoint,
    clock: FakeClock | None = None,
    seed: int = 7,
    base: float = 1.0,
    cap: float = 30.0,
) -> Cluster:
    settings = ProxySettings(ejection_base=base, ejection_max=cap)
    return Cluster(
        Backend("ns/svc/80", tuple(endpoints)),
        settings,
        clock=clock or FakeClock(),
        rng=random.Random(seed),
    )


def picks(
    cluster: Cluster, balancer: BalancerKind, n: int, exclude: tuple[Endpoint, ...] = ()
) -> Counter[Endpoint]:
    out: Counter[Endpoint] = Counter()
    for _ in range(n):
        e = cluster.pick(balancer, exclude)
        assert e is not None
        out[e] += 1
    return out


def fail_repeatedly(cluster: Cluster, clock: FakeClock, endpoint: Endpoint, n: int) -> None:
    """n consecutive failures, each one after the previous ejection ran out (a failed probe)."""
    for i in range(n):
        if i:
            while cluster.is_ejected(endpoint):
                clock.now += 0.25
        cluster.connect_failed(endpoint)


# ---- which endpoints are candidates ----------------------------------------------------------


@dataclass(frozen=True)
class TierCase:
    name: str
    endpoints: tuple[Endpoint, ...]
    ejected: tuple[Endpoint, ...]
    exclude: tuple[Endpoint, ...]
    allowed: frozenset[Endpoint]  # empty: pick must return None
    every: bool = True  # every allowed endpoint gets picked, not merely some of them


TIER_CASES = [
    TierCase("ready only", (A, B, TA), (), (), frozenset({A, B})),
    TierCase("terminating fallback", (TA, TB), (), (), frozenset({TA, TB})),
    TierCase("one ready beats terminating", (TA, B, TB), (), (), frozenset({B})),
    TierCase("skip ejected", (A, B, C), (B,), (), frozenset({A, C})),
    TierCase("skip excluded", (A, B, C), (), (A, C), frozenset({B})),
    TierCase("skip ejected and excluded", (A, B, C), (A,), (B,), frozenset({C})),
    TierCase("all ejected: try anyway", (A, B), (A, B), (), frozenset({A, B}), every=False),
    TierCase("all ejected, one excluded", (A, B), (A, B), (A,), frozenset({B})),
    TierCase("everything excluded", (A, B), (), (A, B), frozenset()),
    TierCase("ejected ones excluded too", (A, B), (A,), (B, A), frozenset()),
    # Terminating endpoints stay unused while some endpoint is ready, even if it is ejected.
    TierCase("ready ejected still beats terminating", (A, TA), (A,), (), frozenset({A})),
    TierCase("no endpoints", (), (), (), frozenset()),
    TierCase("terminating, one ejected", (TA, TB), (TA,), (), frozenset({TB})),
]


@pytest.mark.parametrize("balancer", BALANCERS)
@pytest.mark.parametrize("case", TIER_CASES, ids=lambda c: c.name)
def test_candidate_tiers(case: TierCase, balancer: BalancerKind) -> None:
    cluster = make(*case.endpoints)
    for e in case.ejected:
        cluster.connect_failed(e)
    seen = {cluster.pick(balancer, case.exclude) for _ in range(40)}
    if not case.allowed:
        assert seen == {None}
    elif case.every:
        assert seen == set(case.allowed)
    else:
        assert seen and seen <= case.allowed


def test_all_ejected_picks_the_one_closest_to_recovery() -> None:
    clock = FakeClock()
    cluster = make(A, B, clock=clock)
    fail_repeatedly(cluster, clock, A, 2)  # ejected for 2 s from now
    cluster.connect_failed(B)  # ejected for 1 s from now
    assert {cluster.pick("round_robin") for _ in range(5)} == {B}


# ---- ejection backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cap", "failures", "ejected_for"),
    [
        (1.0, 30.0, 1, 1.0),
        (1.0, 30.0, 2, 2.0),
        (1.0, 30.0, 3, 4.0),
        (1.0, 30.0, 5, 16.0),
        (1.0, 30.0, 6, 30.0),  # 32 capped
        (1.0, 30.0, 200, 30.0),  # no overflow after long runs
        (0.5, 3.0, 3, 2.0),
        (0.5, 3.0, 4, 3.0),
    ],
)
def test_backoff_doubles_and_caps(
    base: float, cap: float, failures: int, ejected_for: float
) -> None:
    clock = FakeClock()
    cluster = make(A, B, clock=clock, base=base, cap=cap)
    fail_repeatedly(cluster, clock, A, failures)
    start = clock.now
    clock.now = start + ejected_for - 0.01
    assert cluster.is_ejected(A)
    assert {cluster.pick("round_robin") for _ in range(6)} == {B}
    clock.now = start + ejected_for + 0.01
    assert not cluster.is_ejected(A)
    assert {cluster.pick("round_robin") for _ in range(6)} == {A, B}


def test_recovery_after_backoff_keeps_failure_count_until_success() -> None:
    clock = FakeClock()
    cluster = make(A, B, clock=clock)
    cluster.connect_failed(A)  # 1 s
    clock.now += 1.5
    assert A in {cluster.pick("round_robin") for _ in range(4)}
    # Probe failed again: the consecutive count continues, so 2 s this time.
    cluster.connect_failed(A)
    clock.now += 1.5
    assert cluster.is_ejected(A)
    clock.now += 1.0
    assert not cluster.is_ejected(A)


def test_failures_while_ejected_do_not_escalate() -> None:
    clock = FakeClock()
    cluster = make(A, B, clock=clock)
    for _ in range(5):  # five connects that were in flight together all fail
        cluster.connect_failed(A)
    clock.now += 1.01
    assert not cluster.is_ejected(A)  # ejected once, for the base duration


def test_success_resets_and_unejects() -> None:
    clock = FakeClock()
    cluster = make(A, B, clock=clock)
    fail_repeatedly(cluster, clock, A, 4)
    assert cluster.is_ejected(A)
    cluster.connect_succeeded(A)
    assert not cluster.is_ejected(A)
    assert {cluster.pick("round_robin") for _ in range(4)} == {A, B}
    cluster.connect_failed(A)  # back to the base duration
    clock.now += 1.01
    assert not cluster.is_ejected(A)


def test_reports_for_unknown_endpoints_are_ignored() -> None:
    cluster = make(A)
    stranger = Endpoint("127.0.0.9", 1)
    cluster.connect_failed(stranger)
    cluster.connect_succeeded(stranger)
    cluster.request_started(stranger)
    cluster.request_finished(stranger, 0.1)
    assert cluster.pick("round_robin") == A
    assert cluster.active_requests(stranger) == 0


# ---- round robin -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_round_robin_is_even(count: int) -> None:
    endpoints = [Endpoint(f"127.0.0.{i + 2}", 80) for i in range(count)]
    cluster = make(*endpoints)
    seen = picks(cluster, "round_robin", count * 10)
    assert seen == dict.fromkeys(endpoints, 10)


def test_round_robin_rotates_in_order() -> None:
    cluster = make(A, B, C)
    first = cluster.pick("round_robin")
    assert first is not None
    order = (A, B, C)
    i = order.index(first)
    assert [cluster.pick("round_robin") for _ in range(4)] == [
        order[(i + k) % 3] for k in range(1, 5)
    ]


def test_round_robin_start_is_random() -> None:
    starts = {make(A, B, C, seed=s).pick("round_robin") for s in range(40)}
    assert starts == {A, B, C}


def test_round_robin_even_while_one_is_ejected() -> None:
    cluster = make(A, B, C)
    cluster.connect_failed(B)
    seen = picks(cluster, "round_robin", 40)
    assert seen == {A: 20, C: 20}


def test_round_robin_with_exclude_still_rotates() -> None:
    cluster = make(A, B, C)
    seen = picks(cluster, "round_robin", 20, exclude=(A,))
    assert seen == {B: 10, C: 10}


# ---- least request (power of two choices) ----------------------------------------------------


def test_p2c_prefers_fewer_active_requests() -> None:
    cluster = make(A, B)
    for _ in range(3):
        cluster.request_started(A)
    cluster.request_started(B)
    # With two endpoints P2C always compares both.
    assert picks(cluster, "least_request", 30) == {B: 30}


def test_p2c_never_picks_the_busiest_of_three() -> None:
    cluster = make(A, B, C)
    for e, n in ((A, 5), (B, 1), (C, 2)):
        for _ in range(n):
            cluster.request_started(e)
    seen = picks(cluster, "least_request", 300)
    assert A not in seen
    # B wins every pair it is drawn in (two pairs out of three), C only against A.
    assert seen[B] > seen[C] > 0


def test_p2c_active_count_follows_started_and_finished() -> None:
    cluster = make(A, B)
    cluster.request_started(A)
    cluster.request_started(A)
    cluster.request_started(B)
    cluster.request_finished(A, 0.01)
    cluster.request_finished(A, 0.01)
    assert cluster.active_requests(A) == 0
    assert cluster.pick("least_request") == A
    cluster.request_finished(A, 0.01)  # extra finish never goes negative
    assert cluster.active_requests(A) == 0


def test_p2c_ewma_breaks_ties() -> None:
    cluster = make(A, B)
    cluster.request_finished(A, 0.5)
    cluster.request_finished(B, 0.05)
    assert picks(cluster, "least_request", 20) == {B: 20}
    # A gets fast, B slow: the EWMA follows and the preference flips.
    for _ in range(20):
        cluster.request_finished(A, 0.01)
        cluster.request_finished(B, 1.0)
    assert picks(cluster, "least_request", 20) == {A: 20}


def test_p2c_active_beats_ewma() -> None:
    cluster = make(A, B)
    cluster.request_finished(A, 0.01)
    cluster.request_finished(B, 5.0)
    cluster.request_started(A)
    assert picks(cluster, "least_request", 10) == {B: 10}


def test_ewma_formula() -> None:
    cluster = make(A, B)
    cluster.request_finished(A, 1.0)
    cluster.request_finished(A, 2.0)
    expected = 1.0 + EWMA_ALPHA * (2.0 - 1.0)
    # B at exactly the expected EWMA ties A; slightly below wins, slightly above loses.
    cluster.request_finished(B, expected - 1e-6)
    assert picks(cluster, "least_request", 10) == {B: 10}
    cluster2 = make(A, B)
    cluster2.request_finished(A, 1.0)
    cluster2.request_finished(A, 2.0)
    cluster2.request_finished(B, expected + 1e-6)
    assert picks(cluster2, "least_request", 10) == {A: 10}


def test_p2c_spreads_over_idle_endpoints() -> None:
    cluster = make(A, B, C)
    seen = picks(cluster, "least_request", 300)
    assert set(seen) == {A, B, C}


# ---- update ------------------------------------------------------------------------------------


def test_update_keeps_state_of_endpoints_that_stay() -> None:
    clock = FakeClock()
    cluster = make(A, B, C, clock=clock)
    fail_repeatedly(cluster, clock, A, 2)
    cluster.request_started(B)
    cluster.request_started(B)
    cluster.request_finished(C, 0.7)
    D = Endpoint("127.0.0.7", 8080)
    cluster.update(Backend("ns/svc/80", (A, B, C, D)))
    assert cluster.endpoints == (A, B, C, D)
    assert cluster.is_ejected(A)
    assert cluster.active_requests(B) == 2
    # The failure count survived too: the next failed probe ejects for 4 s.
    clock.now += 2.01
    assert not cluster.is_ejected(A)
    cluster.connect_failed(A)
    clock.now += 3.9
    assert cluster.is_ejected(A)
    # D is fresh: idle, no latency, so least-request prefers it over busy B and slow C.
    assert D in set(picks(cluster, "least_request", 30))


def test_update_drops_state_of_removed_endpoints() -> None:
    cluster = make(A, B)
    cluster.connect_failed(A)
    cluster.update(Backend("ns/svc/80", (B,)))
    cluster.update(Backend("ns/svc/80", (A, B)))
    # Once removed, an address is forgotten: coming back (a new pod reusing the IP) starts fresh.
    assert not cluster.is_ejected(A)
    assert picks(cluster, "round_robin", 4) == {A: 2, B: 2}


def test_update_readiness_change_keeps_state() -> None:
    cluster = make(A, B)
    cluster.request_started(A)
    terminating_a = Endpoint(A.address, A.port, ready=False)
    cluster.update(Backend("ns/svc/80", (terminating_a, B)))
    assert picks(cluster, "round_robin", 6) == {B: 6}
    # A report for the Endpoint picked before the update still lands on the same state.
    assert cluster.active_requests(A) == 1
    cluster.request_finished(A, 0.1)
    assert cluster.active_requests(terminating_a) == 0


def test_update_shrinking_keeps_round_robin_sane() -> None:
    endpoints = [Endpoint(f"127.0.0.{i + 2}", 80) for i in range(5)]
    cluster = make(*endpoints)
    for _ in range(4):
        cluster.pick("round_robin")
    cluster.update(Backend("ns/svc/80", tuple(endpoints[:2])))
    assert picks(cluster, "round_robin", 10) == {endpoints[0]: 5, endpoints[1]: 5}
    cluster.update(Backend("ns/svc/80", ()))
    assert cluster.pick("round_robin") is None
    cluster.update(Backend("ns/svc/80", (A,)))
    assert cluster.pick("round_robin") == A


def test_duplicate_addresses_count_once_and_ready_wins() -> None:
    cluster = make(A, Endpoint(A.address, A.port, ready=False), B, B)
    assert picks(cluster, "round_robin", 10) == {A: 5, B: 5}
