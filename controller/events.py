"""Events: compiler problems become Kubernetes Events on the objects they concern (leader only).

Each problem that appears becomes a `Warning` Event (reason as the compiler names it, its
message) on the Ingress, Service, Secret or IngressClass it names; a problem that goes away gets
one `Normal` event `Resolved` while its object still exists. Events are deduplicated the way
`kubectl describe` expects: one Event object per (object UID, reason, message), named
deterministically, so a repeat (the problem came back, a new leader, a periodic refresh of a
problem that persists) patches `count` and `lastTimestamp` instead of creating another. Sending
is rate-limited by token buckets, one for all Events and one per object, so a flapping object
cannot flood the API server; a dropped Warning is retried later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from controller.compiler.problems import Problem
from controller.kube import ApiError

logger = logging.getLogger(__name__)

COMPONENT: Final = "portico"
RESOLVED: Final = "Resolved"
MAX_MESSAGE: Final = 1024

EventType = Literal["Warning", "Normal"]
# (kind, ref) -> the involvedObject reference (kind, apiVersion, namespace, name, uid) or None
# when the object is unknown (deleted, or not a kind we watch).
References = Callable[[str, str], dict[str, str] | None]


class EventApi(Protocol):
    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second."""

    def __init__(
        self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def event_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(reference: Mapping[str, str], event_type: str, reason: str, message: str) -> str:
    """Deterministic: the same occurrence on the same object always maps to one Event."""
    digest = hashlib.sha256(
        "\x00".join(
            (
                reference.get("uid", ""),
                reference["kind"],
                reference["name"],
                event_type,
                reason,
                message,
            )
        ).encode()
    ).hexdigest()[:16]
    # Object names may be up to 253 characters; keep room for the suffix.
    return f"{reference['name'][:200]}.{digest}"


def event_namespace(reference: Mapping[str, str]) -> str:
    # Events about cluster-scoped objects (IngressClass) live in "default", as client-go does.
    return reference.get("namespace") or "default"


def event_body(
    reference: Mapping[str, str],
    event_type: EventType,
    reason: str,
    message: str,
    *,
    instance: str,
    now: datetime,
) -> dict[str, Any]:
    stamp = event_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(reference, event_type, reason, message),
            "namespace": event_namespace(reference),
        },
        "involvedObject": dict(reference),
        "type": event_type,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


@dataclass(frozen=True)
class Occurrence:
    """One Event to send."""

    type: EventType
    problem: Problem

    @property
    def reason(self) -> str:
        return self.problem.reason if self.type == "Warning" else RESOLVED

    @property
    def message(self) -> str:
        if self.type == "Warning":
            return self.problem.message
        return f"{self.problem.reason} no longer applies: {self.problem.message}"


def plan_events(
    current: Iterable[Problem],
    emitted: Mapping[Problem, float],
    now: float,
    refresh: float,
) -> tuple[list[Occurrence], list[Problem]]:
    """(occurrences to send, problems no longer current). A problem is (re)sent when it is new
    or was last sent more than `refresh` seconds ago; a vanished one gets a Normal event."""
    current_set = set(current)
    send = [
        Occurrence("Warning", p)
        for p in sorted(current_set)
        if p not in emitted or now - emitted[p] >= refresh
    ]
    gone = sorted(p for p in emitted if p not in current_set)
    send.extend(Occurrence("Normal", p) for p in gone)
    return send, gone


class EventRecorder:
    """Turns the current problem set into Events while leading."""

    def __init__(
        self,
        api: EventApi,
        references: References,
        *,
        instance: str,
        refresh: float = 1800.0,
        burst: float = 25.0,
        rate: float = 0.5,
        per_object_burst: float = 10.0,
        per_object_rate: float = 1 / 30,
        retry: float = 30.0,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._references = references
        self._instance = instance
        self._refresh = refresh
        self._retry = retry
        self._wall = wall
        self._monotonic = monotonic
        self._bucket = TokenBucket(burst, rate, monotonic)
        self._per_object_burst = per_object_burst
        self._per_object_rate = per_object_rate
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._current: tuple[Problem, ...] = ()
        self._emitted: dict[Problem, float] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (namespace, event name) -> count sent
        self._leading = False
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def observe(self, problems: Iterable[Problem]) -> None:
        self._current = tuple(problems)
        self._wake.set()

    def set_leader(self, leading: bool) -> None:
        self._leading = leading
        if not leading:
            # A new term starts from scratch; deterministic names keep Events deduplicated.
            self._emitted.clear()
            self._counts.clear()
        self._wake.set()

    async def run(self) -> None:
        while True:
            timeout = self._next_due()
            try:
                if timeout is None:
                    await self._wake.wait()
                else:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._leading:
                await self.step()

    def _next_due(self) -> float | None:
        if not self._leading or not self._emitted:
            return None
        now = self._monotonic()
        due = min(self._emitted.values()) + self._refresh
        return max(0.05, due - now)

    async def step(self) -> None:
        """Send what the current problems call for (one pass; the caller checks leadership)."""
        now = self._monotonic()
        send, gone = plan_events(self._current, self._emitted, now, self._refresh)
        for problem in gone:
            del self._emitted[problem]
        for occurrence in send:
            if not self._leading:
                return
            reference = self._references(occurrence.problem.kind, occurrence.problem.ref)
            if reference is None:
                # Unknown or deleted object: nothing to attach to (and no "Resolved" for it).
                self._emitted.pop(occurrence.problem, None)
                continue
            if not self._allowed(reference):
                self.dropped += 1
                logger.debug(
                    "event.rate_limited",
                    extra={"ref": occurrence.problem.ref, "reason": occurrence.reason},
                )
                if occurrence.type == "Warning":
                    # Try again after `retry` seconds rather than a whole refresh period.
                    self._emitted[occurrence.problem] = now - self._refresh + self._retry
                continue
            ok = await self._send(reference, occurrence)
            if occurrence.type == "Warning":
                self._emitted[occurrence.problem] = now if ok else now - self._refresh + self._retry

    def _allowed(self, reference: Mapping[str, str]) -> bool:
        key = (reference["kind"], f"{reference.get('namespace', '')}/{reference['name']}")
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(
                self._per_object_burst, self._per_object_rate, self._monotonic
            )
        # Check the per-object bucket first so a noisy object does not drain the global one.
        return bucket.take() and self._bucket.take()

    async def _send(self, reference: Mapping[str, str], occurrence: Occurrence) -> bool:
        now = self._wall()
        body = event_body(
            reference,
            occurrence.type,
            occurrence.reason,
            occurrence.message,
            instance=self._instance,
            now=now,
        )
        namespace = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        try:
            count = self._counts.get((namespace, name))
            if count is None:
                try:
                    await self._api.create_event(namespace, body)
                    count = 1
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    # It exists (an earlier term or process): count on from its count.
                    existing = await self._api.read_event(namespace, name)
                    previous = existing.get("count") if existing else None
                    count = (previous if isinstance(previous, int) else 1) + 1
                    await self._patch(namespace, name, count, now)
            else:
                count += 1
                try:
                    await self._patch(namespace, name, count, now)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    # Expired (Events have a TTL): start over.
                    await self._api.create_event(namespace, body)
                    count = 1
        except ApiError as exc:
            logger.warning(
                "event.failed",
                extra={
                    "ref": occurrence.problem.ref,
                    "reason": occurrence.reason,
                    "error": str(exc),
                },
            )
            return False
        self._counts[(namespace, name)] = count
        self.sent += 1
        logger.debug(
            "event.sent",
            extra={
                "ref": occurrence.problem.ref,
                "type": occurrence.type,
                "reason": occurrence.reason,
                "count": count,
            },
        )
        return True

    async def _patch(self, namespace: str, name: str, count: int, now: datetime) -> None:
        await self._api.patch_event(
            namespace, name, {"count": count, "lastTimestamp": event_time(now)}
        )
