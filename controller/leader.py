"""Leader election on a coordination.k8s.io/v1 Lease: who writes Ingress status and Events.

Every replica serves traffic from its own watches; only the leader reports back. The elector
follows client-go's rules: a follower takes the Lease over once it has seen no change of the
record for `leaseDurationSeconds` (measured on its own monotonic clock, so clock skew between
nodes does not matter), or at once when the holder released it (empty holder); the leader
renews every `retry_period` and steps down when it could not renew for `renew_deadline`
(shorter than the lease duration, so two leaders never overlap). Writes are compare-and-swap
PUTs on the Lease's resourceVersion: a 409 means someone else wrote first, and we simply retry
later. Lease times are written as UTC MicroTime (`...ffffffZ`) from an aware clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from controller.kube import ApiError

logger = logging.getLogger(__name__)


class LeaseApi(Protocol):
    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_micro_time(moment: datetime) -> str:
    """MicroTime as the API writes it: UTC, microseconds, `Z`."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: lease times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 (Micro)Time as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease spec fields election uses."""

    holder: str = ""
    duration: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, raw: Mapping[str, Any]) -> LeaseRecord:
        spec = raw.get("spec")
        if not isinstance(spec, Mapping):
            return cls()
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=holder if isinstance(holder, str) else "",
            duration=duration
            if isinstance(duration, int) and not isinstance(duration, bool)
            else 0,
            acquire_time=parse_time(spec.get("acquireTime")),
            renew_time=parse_time(spec.get("renewTime")),
            transitions=transitions
            if isinstance(transitions, int) and not isinstance(transitions, bool)
            else 0,
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = format_micro_time(self.acquire_time)
        if self.renew_time is not None:
            spec["renewTime"] = format_micro_time(self.renew_time)
        return spec


def next_record(
    current: LeaseRecord | None, identity: str, duration: int, now: datetime
) -> LeaseRecord:
    """The record we write to take or renew the Lease."""
    if current is None:
        return LeaseRecord(identity, duration, now, now, 0)
    if current.holder == identity:
        return LeaseRecord(
            identity, duration, current.acquire_time or now, now, current.transitions
        )
    return LeaseRecord(identity, duration, now, now, current.transitions + 1)


def held_by_other(record: LeaseRecord, identity: str, observed_at: float, now: float) -> bool:
    """True while someone else's lease is valid: held, and changed within its duration.

    `observed_at` and `now` are our own monotonic clock: when we last saw the record change,
    and now. The record's own timestamps are not compared with our clock.
    """
    if not record.holder or record.holder == identity:
        return False
    return now < observed_at + max(record.duration, 1)


class LeaderElector:
    """Campaigns for one Lease; `leading` tells whether we hold it; callbacks on changes."""

    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        wall: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._wall = wall
        self._monotonic = monotonic
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._raw: dict[str, Any] | None = None  # the Lease as last read or written
        self._callbacks: list[Callable[[bool], None]] = []
        self.leading = False
        self.last_renewed = 0.0  # monotonic time of our last successful write

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        logger.info(
            "leader.started" if leading else "leader.stopped",
            extra={"identity": self.identity, "lease": f"{self.namespace}/{self.name}"},
        )
        for callback in self._callbacks:
            callback(leading)

    def _observe(self, raw: Mapping[str, Any]) -> LeaseRecord:
        record = LeaseRecord.from_lease(raw)
        if record != self._observed:
            self._observed = record
            self._observed_at = self._monotonic()
        self._raw = dict(raw)
        return record

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when we hold the Lease afterwards. Raises ApiError on failures
        other than losing a race (409)."""
        now = self._wall()
        raw = await self.api.read_lease(self.namespace, self.name)
        if raw is None:
            record = next_record(None, self.identity, self.lease_duration, now)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": record.to_spec(),
            }
            try:
                written = await self.api.create_lease(self.namespace, body)
            except ApiError as exc:
                if exc.status == 409:
                    return False  # another replica created it first
                raise
            self._observe(written)
            self.last_renewed = self._monotonic()
            return True
        current = self._observe(raw)
        if held_by_other(current, self.identity, self._observed_at, self._monotonic()):
            return False
        record = next_record(current, self.identity, self.lease_duration, now)
        body = dict(raw)
        body["spec"] = {**(raw.get("spec") or {}), **record.to_spec()}
        try:
            written = await self.api.replace_lease(self.namespace, self.name, body)
        except ApiError as exc:
            if exc.status == 409:
                return False  # the record changed since we read it
            raise
        self._observe(written)
        self.last_renewed = self._monotonic()
        return True

    async def _attempt(self, budget: float) -> bool:
        try:
            async with asyncio.timeout(max(budget, 0.1)):
                return await self.try_acquire_or_renew()
        except (ApiError, TimeoutError) as exc:
            logger.debug("leader.attempt_failed", extra={"reason": str(exc) or repr(exc)})
            return False

    async def run(self) -> None:
        """Campaign and renew until cancelled (then call `release`)."""
        rng = random.Random()
        while True:
            if not self.leading:
                if await self._attempt(self.retry_period):
                    self._set_leading(True)
                    continue
                await asyncio.sleep(self.retry_period * rng.uniform(0.9, 1.1))
                continue
            await asyncio.sleep(self.retry_period)
            # Renew, retrying until the deadline counted from the last successful renewal.
            while self.leading:
                remaining = self.last_renewed + self.renew_deadline - self._monotonic()
                if remaining <= 0:
                    logger.warning("leader.renew_failed", extra={"identity": self.identity})
                    self._set_leading(False)
                    break
                if await self._attempt(min(remaining, self.retry_period)):
                    break
                observed = self._observed
                if observed is not None and observed.holder not in ("", self.identity):
                    self._set_leading(False)  # someone else holds it now
                    break
                await asyncio.sleep(min(self.retry_period / 2, max(remaining, 0.0)))

    async def release(self, grace: float = 2.0) -> None:
        """Give the Lease up (best effort) so another replica takes over at once."""
        if not self.leading or self._raw is None:
            self._set_leading(False)
            return
        self._set_leading(False)
        current = LeaseRecord.from_lease(self._raw)
        released = LeaseRecord(
            holder="",
            duration=1,
            acquire_time=current.acquire_time,
            renew_time=self._wall(),
            transitions=current.transitions,
        )
        body = dict(self._raw)
        body["spec"] = {**(self._raw.get("spec") or {}), **released.to_spec()}
        with contextlib.suppress(ApiError, TimeoutError):
            async with asyncio.timeout(grace):
                await self.api.replace_lease(self.namespace, self.name, body)
                logger.info("leader.released", extra={"identity": self.identity})
