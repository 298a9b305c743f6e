"""Lease arithmetic and the elector against an in-memory, compare-and-swap Lease store."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from controller.kube import ApiError
from controller.leader import (
    LeaderElector,
    LeaseRecord,
    format_micro_time,
    held_by_other,
    next_record,
    parse_time,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


class LeaseStore:
    """One namespace of Leases with resourceVersion compare-and-swap, like the API server."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ApiError(0, "Unreachable", "down")

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        lease = self.leases.get(name)
        return copy.deepcopy(lease) if lease is not None else None

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        name = body["metadata"]["name"]
        if name in self.leases:
            raise ApiError(409, "AlreadyExists", "exists")
        self.rv += 1
        lease = copy.deepcopy(dict(body))
        lease["metadata"]["resourceVersion"] = str(self.rv)
        self.leases[name] = lease
        return copy.deepcopy(lease)

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._check()
        current = self.leases[name]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.rv += 1
        lease = copy.deepcopy(dict(body))
        lease["metadata"]["resourceVersion"] = str(self.rv)
        self.leases[name] = lease
        return copy.deepcopy(lease)


def elector(store: LeaseStore, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(
        store,
        "ns",
        "portico-leader",
        identity,
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        wall=lambda: clock.wall,
        monotonic=lambda: clock.mono,
    )


def test_micro_time_is_utc_with_microseconds() -> None:
    other_zone = T0.astimezone(timezone(timedelta(hours=-5)))
    assert format_micro_time(other_zone) == "2025-01-02T03:04:05.678901Z"
    assert parse_time("2025-01-02T03:04:05.678901Z") == T0
    assert parse_time("2025-01-02T03:04:05Z") == T0.replace(microsecond=0)
    assert parse_time("garbage") is None
    with pytest.raises(ValueError):
        format_micro_time(datetime(2025, 1, 1))  # naive: refused, never guessed


def test_next_record_keeps_acquire_time_when_renewing_and_counts_transitions() -> None:
    first = next_record(None, "a", 15, T0)
    assert first == LeaseRecord("a", 15, T0, T0, 0)
    later = T0 + timedelta(seconds=5)
    assert next_record(first, "a", 15, later) == LeaseRecord("a", 15, T0, later, 0)
    assert next_record(first, "b", 15, later) == LeaseRecord("b", 15, later, later, 1)


@pytest.mark.parametrize(
    ("holder", "elapsed", "expected"),
    [
        ("other", 0.0, True),
        ("other", 14.9, True),
        ("other", 15.0, False),
        ("", 0.0, False),  # released
        ("me", 0.0, False),
    ],
)
def test_held_by_other(holder: str, elapsed: float, expected: bool) -> None:
    record = LeaseRecord(holder, 15, T0, T0, 0)
    assert held_by_other(record, "me", 100.0, 100.0 + elapsed) is expected


def test_lease_round_trip() -> None:
    record = LeaseRecord("a", 15, T0, T0 + timedelta(seconds=1), 3)
    assert LeaseRecord.from_lease({"spec": record.to_spec()}) == record


async def test_one_leader_at_a_time_and_takeover_after_expiry() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    # a renews: b sees the record change and restarts its expiry clock.
    clock.advance(10)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.advance(14)
    assert not await b.try_acquire_or_renew()
    # a stops renewing: 15 s after b last saw a change, b takes over.
    clock.advance(1.5)
    assert await b.try_acquire_or_renew()
    spec = store.leases["portico-leader"]["spec"]
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    assert spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"].endswith("Z")
    # a comes back: it must not take the lease back while b renews.
    assert not await a.try_acquire_or_renew()


async def test_wall_clock_skew_does_not_matter() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "a")
    assert await a.try_acquire_or_renew()
    skewed = Clock()
    skewed.mono = clock.mono
    skewed.wall = clock.wall + timedelta(hours=3)  # b's wall clock is far ahead
    b = elector(store, skewed, "b")
    assert not await b.try_acquire_or_renew()


async def test_release_lets_another_replica_take_over_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    changes: list[bool] = []
    a.on_change(changes.append)
    assert await a.try_acquire_or_renew()
    a._set_leading(True)
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert changes == [True, False]
    assert store.leases["portico-leader"]["spec"]["holderIdentity"] == ""
    assert await b.try_acquire_or_renew()


async def test_conflicting_write_loses_the_race_quietly() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.advance(20)
    # b read the expired lease, then someone wrote it before b did: b's PUT carries a stale
    # resourceVersion and gets 409.
    original_read = store.read_lease
    writes: list[int] = []

    async def read_then_race(namespace: str, name: str) -> dict[str, Any] | None:
        seen = await original_read(namespace, name)
        store.rv += 1
        store.leases[name]["metadata"]["resourceVersion"] = str(store.rv)
        writes.append(store.rv)
        return seen

    store.read_lease = read_then_race  # type: ignore[method-assign]
    assert not await b.try_acquire_or_renew()
    assert writes
    assert store.leases["portico-leader"]["spec"]["holderIdentity"] == "a"


async def test_leader_steps_down_when_it_cannot_renew_before_the_deadline() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "a")
    a.retry_period = 0.01
    changes: list[bool] = []
    a.on_change(changes.append)
    task = asyncio.create_task(a.run())
    try:
        async with asyncio.timeout(5):
            while not a.leading:
                await asyncio.sleep(0.01)
            store.down = True
            clock.advance(10.5)  # past the renew deadline since the last renewal
            while a.leading:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert changes == [True, False]
