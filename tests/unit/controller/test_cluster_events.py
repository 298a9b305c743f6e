"""Events: dedup by deterministic name, count patches, Resolved once, rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.compiler.problems import Problem
from controller.events import (
    EventRecorder,
    Occurrence,
    TokenBucket,
    event_body,
    event_name,
    plan_events,
)
from controller.kube import ApiError
from tests.fakes import FakeClock

P1 = Problem("Ingress", "a/web", "ServiceNotFound", 'service "a/api" not found')
P2 = Problem("Ingress", "a/web", "PathConflict", "/x is already claimed by a/old")
REF = {
    "kind": "Ingress",
    "apiVersion": "networking.k8s.io/v1",
    "namespace": "a",
    "name": "web",
    "uid": "u1",
}
NOW = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)


class FakeApi:
    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        self.calls.append("create")
        if key in self.events:
            raise ApiError(409, "AlreadyExists", "exists")
        self.events[key] = dict(body)
        return dict(body)

    async def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.calls.append("patch")
        if (namespace, name) not in self.events:
            raise ApiError(404, "NotFound", "gone")
        self.events[(namespace, name)].update(patch)
        return self.events[(namespace, name)]

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read")
        return self.events.get((namespace, name))


def recorder(api: FakeApi, clock: FakeClock, **kwargs: Any) -> EventRecorder:
    refs = {("Ingress", "a/web"): REF}
    rec = EventRecorder(
        api,
        lambda kind, ref: refs.get((kind, ref)),
        instance="pod-1",
        wall=lambda: NOW,
        monotonic=clock,
        **kwargs,
    )
    rec.set_leader(True)
    return rec


def by_reason(api: FakeApi) -> dict[str, dict[str, Any]]:
    return {e["reason"]: e for e in api.events.values()}


def test_plan_events() -> None:
    send, gone = plan_events([P1, P2], {P1: 0.0}, now=10.0, refresh=100.0)
    assert send == [Occurrence("Warning", P2)]
    assert gone == []
    send, gone = plan_events([P2], {P1: 0.0, P2: 0.0}, now=150.0, refresh=100.0)
    assert send == [Occurrence("Warning", P2), Occurrence("Normal", P1)]
    assert gone == [P1]


def test_event_body_and_name() -> None:
    body = event_body(REF, "Warning", P1.reason, P1.message, instance="pod-1", now=NOW)
    assert body["involvedObject"] == REF
    assert body["metadata"]["namespace"] == "a"
    assert body["type"] == "Warning"
    assert body["reason"] == "ServiceNotFound"
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2025-05-06T07:08:09Z"
    assert body["count"] == 1
    # Same occurrence, same name; another UID (object recreated) or message, another Event.
    assert event_name(REF, "Warning", "R", "m") == event_name(dict(REF), "Warning", "R", "m")
    assert event_name(REF, "Warning", "R", "m") != event_name(
        {**REF, "uid": "u2"}, "Warning", "R", "m"
    )
    assert event_name(REF, "Warning", "R", "m") != event_name(REF, "Warning", "R", "m2")
    cluster_scoped = {"kind": "IngressClass", "name": "portico"}
    assert (
        event_body(cluster_scoped, "Warning", "R", "m", instance="p", now=NOW)["metadata"][
            "namespace"
        ]
        == "default"
    )


def test_token_bucket() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(2, 0.5, clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 2.0
    assert bucket.take()
    assert not bucket.take()


async def test_warning_once_then_count_on_repeat_then_resolved() -> None:
    api, clock = FakeApi(), FakeClock(100.0)
    rec = recorder(api, clock, refresh=1000.0)
    rec.observe([P1])
    await rec.step()
    await rec.step()  # still present: no new event
    assert api.calls == ["create"]
    assert by_reason(api)["ServiceNotFound"]["count"] == 1

    rec.observe([])
    await rec.step()
    resolved = by_reason(api)["Resolved"]
    assert resolved["type"] == "Normal"
    assert "ServiceNotFound" in resolved["message"]
    await rec.step()
    assert list(by_reason(api)) == ["ServiceNotFound", "Resolved"]

    rec.observe([P1])  # it came back: same Event, count 2
    await rec.step()
    assert by_reason(api)["ServiceNotFound"]["count"] == 2
    assert len(api.events) == 2


async def test_persisting_problem_is_refreshed() -> None:
    api, clock = FakeApi(), FakeClock(100.0)
    rec = recorder(api, clock, refresh=60.0)
    rec.observe([P1])
    await rec.step()
    clock.now += 61
    await rec.step()
    assert by_reason(api)["ServiceNotFound"]["count"] == 2


async def test_new_leader_counts_on_from_the_existing_event() -> None:
    api, clock = FakeApi(), FakeClock(100.0)
    first = recorder(api, clock)
    first.observe([P1])
    await first.step()
    second = recorder(api, clock)
    second.observe([P1])
    await second.step()
    assert api.calls == ["create", "create", "read", "patch"]
    assert by_reason(api)["ServiceNotFound"]["count"] == 2


async def test_not_leading_sends_nothing_and_unknown_objects_are_skipped() -> None:
    api, clock = FakeApi(), FakeClock(100.0)
    rec = recorder(api, clock)
    rec.set_leader(False)
    task = asyncio.create_task(rec.run())
    try:
        rec.observe([P1])
        for _ in range(20):
            await asyncio.sleep(0)
        assert api.events == {}
        rec.observe([Problem("Service", "a/unknown", "X", "y")])
        rec.set_leader(True)
        for _ in range(20):
            await asyncio.sleep(0)
        assert api.events == {}
        rec.observe([P1])
        async with asyncio.timeout(5):
            while not api.events:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_rate_limit_per_object() -> None:
    api, clock = FakeApi(), FakeClock(100.0)
    rec = recorder(api, clock, per_object_burst=2, per_object_rate=0.0, retry=5.0)
    problems = [Problem("Ingress", "a/web", "R", f"m{i}") for i in range(5)]
    rec.observe(problems)
    await rec.step()
    assert len(api.events) == 2
    assert rec.dropped == 3
