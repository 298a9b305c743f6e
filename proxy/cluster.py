"""The endpoints of one backend and the balancer that picks among them.

A worker builds one `Cluster` per `proxy.config.Backend` when it applies a snapshot and calls
`update` when an `EndpointsUpdate` (or a new snapshot) changes that backend's endpoints. The
exchange calls `pick` once per attempt, then reports the outcome: `connect_failed` /
`connect_succeeded` drive passive health checking (ejection with a doubling backoff), and
`request_started` / `request_finished` feed the least-request balancer (active request count and
an EWMA of latency).

`pick` is on the hot path of every request, so candidate tuples are precomputed by `update`, the
clock is read only while some endpoint is ejected, and the common round-robin case is O(1) with
no allocation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection

from proxy.config import Backend, BalancerKind, Endpoint
from proxy.settings import ProxySettings

logger = logging.getLogger(__name__)

# Weight of the newest sample in the latency EWMA: recent enough to follow a pod that slows down,
# smooth enough that one slow request does not flip the choice.
EWMA_ALPHA = 0.3

# 2**62 seconds is far beyond any ejection_max; capping the exponent avoids float overflow after
# a very long run of failures.
_MAX_BACKOFF_EXPONENT = 62

_Key = tuple[str, int]


class _EndpointState:
    """Balancer and health state of one endpoint, kept across endpoint-set updates."""

    __slots__ = ("active", "ejected_until", "ewma", "failures")

    def __init__(self) -> None:
        self.active = 0  # requests in flight
        self.ewma = 0.0  # seconds; 0 until the first sample
        self.failures = 0  # consecutive connect failures
        self.ejected_until = 0.0  # clock time; 0.0 means not ejected


class Cluster:
    """The endpoints of one backend plus balancer state (round robin, least-request P2C)."""

    __slots__ = (
        "_by_address",
        "_candidates",
        "_clock",
        "_ejected",
        "_ejection_base",
        "_ejection_max",
        "_rng",
        "_rr",
        "_states",
        "backend",
    )

    def __init__(
        self,
        backend: Backend,
        settings: ProxySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        # The module-level generator is reseeded in every forked child, which gives each worker
        # process its own round-robin start, as wanted.
        self._rng: random.Random = rng if rng is not None else random.Random()
        self._ejection_base = settings.ejection_base
        self._ejection_max = settings.ejection_max
        self._states: dict[Endpoint, _EndpointState] = {}
        self._by_address: dict[_Key, _EndpointState] = {}
        # Typed through the backend's tuple: a literal () would be narrowed to tuple[()], which
        # compiled code (mypyc) then enforces on the next read.
        self._candidates: tuple[Endpoint, ...] = backend.endpoints[:0]
        self._ejected = 0  # how many states have ejected_until != 0.0
        self._rr = 0
        self.backend = backend
        self._rebuild(backend)
        if self._candidates:
            self._rr = self._rng.randrange(len(self._candidates))

    # ---- endpoint set ------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.backend.endpoints

    @property
    def candidates(self) -> tuple[Endpoint, ...]:
        """The endpoints a request may go to (ready ones, else terminating ones); a new tuple
        after each change, so proxy/affinity.py rebuilds its rings only then."""
        return self._candidates

    def update(self, backend: Backend) -> None:
        """Take a new endpoint set, keeping the state of endpoints (ip, port) that stay."""
        self.backend = backend
        self._rebuild(backend)

    def _rebuild(self, backend: Backend) -> None:
        old = self._by_address
        states: dict[Endpoint, _EndpointState] = {}
        by_address: dict[_Key, _EndpointState] = {}
        ready: list[Endpoint] = []
        terminating: list[Endpoint] = []
        # Ready entries first, so that an address listed twice (one slice says ready, another
        # says terminating) counts as ready and appears once among the candidates.
        for endpoint in sorted(backend.endpoints, key=lambda e: not e.ready):
            key = (endpoint.address, endpoint.port)
            state = by_address.get(key)
            if state is None:
                state = old.get(key) or _EndpointState()
                by_address[key] = state
                (ready if endpoint.ready else terminating).append(endpoint)
            states[endpoint] = state
        self._states = states
        self._by_address = by_address
        # Terminating (serving) endpoints are used only when no endpoint is ready, as kube-proxy.
        self._candidates = tuple(ready) if ready else tuple(terminating)
        self._ejected = sum(1 for s in by_address.values() if s.ejected_until != 0.0)
        n = len(self._candidates)
        self._rr = self._rr % n if n else 0

    def _state(self, endpoint: Endpoint) -> _EndpointState | None:
        state = self._states.get(endpoint)
        if state is None:
            # An endpoint picked before an update may since have changed readiness or target.
            state = self._by_address.get((endpoint.address, endpoint.port))
        return state

    # ---- picking -----------------------------------------------------------------------------

    def pick(self, balancer: BalancerKind, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """An endpoint for the next attempt, or None when every candidate is excluded."""
        candidates = self._candidates
        n = len(candidates)
        if n == 0:
            return None
        if not self._ejected and not exclude:
            if balancer == "least_request":
                return self._two_choices(candidates)
            i = self._rr
            self._rr = i + 1 if i + 1 < n else 0
            return candidates[i]
        return self._pick_slow(balancer, candidates, exclude)

    def _pick_slow(
        self,
        balancer: BalancerKind,
        candidates: tuple[Endpoint, ...],
        exclude: Collection[Endpoint],
    ) -> Endpoint | None:
        now = self._clock() if self._ejected else 0.0
        states = self._states
        usable: list[Endpoint] = []
        ejected: list[Endpoint] = []
        for endpoint in candidates:
            if exclude and endpoint in exclude:
                continue
            state = states[endpoint]
            until = state.ejected_until
            if until != 0.0:
                if until > now:
                    ejected.append(endpoint)
                    continue
                # The backoff has elapsed: let traffic probe it again. The failure count stays,
                # so another failure ejects it for twice as long.
                state.ejected_until = 0.0
                self._ejected -= 1
            usable.append(endpoint)
        if not usable:
            if not ejected:
                return None
            # Everything is ejected: trying the endpoint closest to recovery beats failing fast.
            return min(ejected, key=lambda e: states[e].ejected_until)
        if balancer == "least_request":
            return self._two_choices(usable)
        # Rotate through the full candidate tuple so skipping one endpoint does not shift the
        # share of the others.
        n = len(candidates)
        allowed = set(usable) if len(usable) < n else None
        for step in range(n):
            i = (self._rr + step) % n
            endpoint = candidates[i]
            if allowed is None or endpoint in allowed:
                self._rr = (i + 1) % n
                return endpoint
        return usable[0]  # unreachable: usable is a non-empty subset of candidates

    def _two_choices(self, candidates: tuple[Endpoint, ...] | list[Endpoint]) -> Endpoint:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1  # two distinct indices, uniformly
        a, b = candidates[i], candidates[j]
        sa, sb = self._states[a], self._states[b]
        if sa.active != sb.active:
            return a if sa.active < sb.active else b
        return a if sa.ewma <= sb.ewma else b

    # ---- outcome reports ---------------------------------------------------------------------

    def connect_failed(self, endpoint: Endpoint) -> bool:
        """Eject for ejection_base * 2**(n-1) seconds (capped), n = consecutive failures.
        True if this failure ejected (or re-ejected) the endpoint."""
        state = self._state(endpoint)
        if state is None:
            return False  # no longer part of this backend
        now = self._clock()
        if state.ejected_until > now:
            # Connects that were already under way when the endpoint got ejected fail together;
            # they say nothing new, so they must not escalate the backoff.
            return False
        state.failures += 1
        exponent = min(state.failures - 1, _MAX_BACKOFF_EXPONENT)
        duration = min(self._ejection_base * 2.0**exponent, self._ejection_max)
        if state.ejected_until == 0.0:
            self._ejected += 1
        # Never 0.0, which means "not ejected", even with a clock that starts at zero.
        state.ejected_until = max(now + duration, 1e-9)
        logger.info(
            "cluster.endpoint_ejected",
            extra={
                "backend": self.backend.key,
                "endpoint": endpoint.authority,
                "failures": state.failures,
                "seconds": duration,
            },
        )
        return True

    def connect_succeeded(self, endpoint: Endpoint) -> None:
        state = self._state(endpoint)
        if state is None:
            return
        if state.failures:
            logger.info(
                "cluster.endpoint_recovered",
                extra={"backend": self.backend.key, "endpoint": endpoint.authority},
            )
        state.failures = 0
        if state.ejected_until != 0.0:
            state.ejected_until = 0.0
            self._ejected -= 1

    def request_started(self, endpoint: Endpoint) -> None:
        state = self._state(endpoint)
        if state is not None:
            state.active += 1

    def request_finished(self, endpoint: Endpoint, latency: float) -> None:
        state = self._state(endpoint)
        if state is None:
            return
        if state.active > 0:
            state.active -= 1
        if state.ewma == 0.0:
            state.ewma = latency
        else:
            state.ewma += EWMA_ALPHA * (latency - state.ewma)

    # ---- introspection (tests, explain, metrics) ---------------------------------------------

    def is_ejected(self, endpoint: Endpoint) -> bool:
        state = self._state(endpoint)
        return state is not None and state.ejected_until > self._clock()

    def active_requests(self, endpoint: Endpoint) -> int:
        state = self._state(endpoint)
        return 0 if state is None else state.active
