"""Ingress status: the pure plan and the writer loop (leader only, after routes are live)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from controller.compiler import CompileResult
from controller.kube import ApiError
from controller.status import (
    LbAddress,
    StatusWriter,
    parse_lb_status,
    plan_status,
    status_patch,
)
from proxy.config import Snapshot

OURS = (LbAddress(ip="203.0.113.7"),)
OTHER = (LbAddress(hostname="lb.other.example"),)


@pytest.mark.parametrize(
    ("owned", "current", "published", "written", "expected"),
    [
        # An owned Ingress without status gets ours; one already right is left alone.
        (["a/x", "a/y"], {"a/x": (), "a/y": OURS}, OURS, {}, {"a/x": OURS}),
        # Unknown or empty address: never blank an owned Ingress (restart, missing Service).
        (["a/x"], {"a/x": OTHER}, None, {}, {}),
        (["a/x"], {"a/x": OTHER}, (), {}, {}),
        # Owned but not known to the informer (deleted meanwhile): no write.
        (["a/gone"], {}, OURS, {}, {}),
        # No longer ours and showing our address: cleared.
        ([], {"a/x": OURS}, OURS, {}, {"a/x": ()}),
        # No longer ours and showing what we last wrote (the address changed since): cleared.
        ([], {"a/x": OTHER}, OURS, {"a/x": OTHER}, {"a/x": ()}),
        # Another controller's address on an Ingress that is not ours: untouched.
        ([], {"a/x": OTHER}, OURS, {}, {}),
        # Not ours, no status: nothing to do.
        ([], {"a/x": ()}, OURS, {}, {}),
    ],
)
def test_plan_status(
    owned: list[str],
    current: dict[str, tuple[LbAddress, ...]],
    published: tuple[LbAddress, ...] | None,
    written: dict[str, tuple[LbAddress, ...]],
    expected: dict[str, tuple[LbAddress, ...]],
) -> None:
    assert plan_status(owned, current, published, written) == expected


def test_parse_and_patch() -> None:
    raw = {
        "status": {
            "loadBalancer": {
                "ingress": [{"hostname": "b.example"}, {"ip": "10.0.0.1", "ports": []}, "junk"]
            }
        }
    }
    status = parse_lb_status(raw)
    assert status == (LbAddress(ip=None, hostname="b.example"), LbAddress(ip="10.0.0.1"))
    assert parse_lb_status({"status": None}) == ()
    assert status_patch(status) == {
        "status": {"loadBalancer": {"ingress": [{"hostname": "b.example"}, {"ip": "10.0.0.1"}]}}
    }
    assert status_patch(()) == {"status": {"loadBalancer": {"ingress": None}}}


class FakeApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, Mapping[str, Any]]] = []
        self.fail: ApiError | None = None

    async def patch_ingress_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        self.patches.append((namespace, name, patch))
        return {}


class FakePublisher:
    def __init__(self) -> None:
        self.version = 0
        self.applied = 0
        self.changed = asyncio.Event()

    async def wait_applied(self, version: int) -> None:
        while self.applied < version:
            self.changed.clear()
            await self.changed.wait()

    def apply(self, version: int) -> None:
        self.applied = version
        self.changed.set()


def ingress(ns: str, name: str, status: tuple[LbAddress, ...] = ()) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name},
        "status": {"loadBalancer": {"ingress": [a.to_json() for a in status]}},
    }


def result(*owned: str) -> CompileResult:
    return CompileResult(snapshot=Snapshot(), problems=(), owned=tuple(owned))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_writer_waits_for_leadership_and_applied_routes() -> None:
    api, publisher = FakeApi(), FakePublisher()
    writer = StatusWriter(api, static=OURS)
    task = asyncio.create_task(writer.run(publisher))
    try:
        writer.observe_ingress("Ingress", ("a", "x"), ingress("a", "x"))
        writer.observe_result(result("a/x"))
        publisher.version = 1
        await settle()
        assert api.patches == []  # not leading
        writer.set_leader(True)
        await settle()
        assert api.patches == []  # version 1 not applied by the workers yet
        publisher.apply(1)
        await settle()
        assert api.patches == [("a", "x", status_patch(OURS))]
        # The watch echoes our write back: nothing more to do.
        writer.observe_ingress("Ingress", ("a", "x"), ingress("a", "x", OURS))
        await settle()
        assert len(api.patches) == 1
        # It stops being ours: cleared at once.
        writer.observe_result(result())
        await settle()
        assert api.patches[-1] == ("a", "x", status_patch(()))
        # Leadership lost: no more writes.
        writer.set_leader(False)
        writer.observe_ingress("Ingress", ("a", "y"), ingress("a", "y"))
        writer.observe_result(result("a/y"))
        await settle()
        assert len(api.patches) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_writer_reports_a_missing_permission_and_retries() -> None:
    api, publisher = FakeApi(), FakePublisher()
    writer = StatusWriter(api, static=OURS, retry_delay=0.01)
    api.fail = ApiError(403, "Forbidden", "cannot patch ingresses/status")
    task = asyncio.create_task(writer.run(publisher))
    try:
        writer.observe_ingress("Ingress", ("team", "x"), ingress("team", "x"))
        writer.observe_result(result("team/x"))
        writer.set_leader(True)
        async with asyncio.timeout(5):
            while writer.blocked is None:
                await asyncio.sleep(0.01)
        assert writer.blocked == "cannot patch ingresses/status in namespace team"
        api.fail = None
        async with asyncio.timeout(5):
            while not api.patches:
                await asyncio.sleep(0.01)
        assert writer.blocked is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_published_service_address_is_ignored_when_static_is_set() -> None:
    writer = StatusWriter(FakeApi(), static=OURS)
    writer.set_published(OTHER)
    assert writer.published == OURS
    dynamic = StatusWriter(FakeApi())
    assert dynamic.published is None
    dynamic.set_published(OTHER)
    assert dynamic.published == OTHER
