"""Cluster mode end to end: the controller as a subprocess against the API simulator.

KubeSim runs in the test's event loop and speaks the real API protocol, so the controller's
kubernetes-asyncio client does real list/watch/patch requests; echo pods listen on 127.0.0.2
and 127.0.0.3; requests go through the controller's worker on a free port. Every wait is
bounded. Lease timings are short (2 s) so leader changes happen within a test.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.cluster import LEASE, Controller
from tests.integration.manifests import (
    endpoint_slice,
    ingress,
    ingress_class,
    service,
)
from tests.integration.serving import echo_pods, eventually
from tests.kubesim import KubeSim

pytestmark = pytest.mark.timeout(90)
PUBLISHED = "203.0.113.10"
OUTAGE_SECONDS = 30.0
# "Traffic follows within 1 s" is the goal; the bound leaves room for a loaded 2-core CI box.
FOLLOW = 3.0


def lb_ips(sim: KubeSim, name: str) -> list[str]:
    obj = sim.get("ingresses", "default", name) or {}
    entries = (obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return [e.get("ip") or e.get("hostname") for e in entries]


# ---- fixtures -----------------------------------------------------------------------------------


class Cluster:
    """The simulator with `seed`'s objects (the Ingress `web` routed to echo pod pod-a), and
    the controllers a test launches against it."""

    def __init__(self, sim: KubeSim, port: int, tmp: Path) -> None:
        self.sim = sim
        self.port = port  # of the echo pods
        self.tmp = tmp
        self.controllers: list[Controller] = []

    async def launch(self, identity: str, **cluster: Any) -> Controller:
        controller = Controller(identity, self.sim, self.tmp, **cluster)
        await controller.start()
        self.controllers.append(controller)
        return controller


@pytest.fixture
async def cluster(sim: KubeSim, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two echo pods of Service "web" on 127.0.0.2 (pod-a) and 127.0.0.3 (pod-b), same port;
    the controllers launched are killed at the end, their last log lines shown on a failure."""
    async with echo_pods(("127.0.0.2", "web", "pod-a"), ("127.0.0.3", "web", "pod-b")) as port:
        seed(sim, port)
        harness = Cluster(sim, port, tmp_path)
        try:
            yield harness
        finally:
            for controller in harness.controllers:
                await controller.stop(signal.SIGKILL)
            for controller in harness.controllers:
                # Captured by pytest and shown only when the test fails.
                sys.stderr.write(f"--- {controller.identity} (last 40 log lines)\n")
                sys.stderr.write(controller.tail() + "\n")


def seed(sim: KubeSim, port: int) -> None:
    sim.create(ingress_class())
    sim.create(service("web", 8080))
    sim.create(endpoint_slice("web", [("127.0.0.2", True, False)], port))
    sim.create(ingress("web", "web.test", {"/": "web"}))


def status_writes(sim: KubeSim, user_agent: str | None = None) -> list[str]:
    return [
        f"{e.namespace}/{e.name}"
        for e in sim.audit
        if e.resource == "ingresses/status"
        and e.verb in ("patch", "update")
        and (user_agent is None or e.user_agent == user_agent)
    ]


async def lease_holder(sim: KubeSim) -> str:
    lease = sim.get("leases", "default", "portico-leader") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


# ---- tests --------------------------------------------------------------------------------------


async def test_routes_status_and_endpoint_changes(
    sim: KubeSim, session: aiohttp.ClientSession, cluster: Cluster
) -> None:
    port = cluster.port
    sim.create(service("other", 8080))
    sim.create(endpoint_slice("other", [("127.0.0.3", True, False)], port))
    sim.create(ingress("foreign", "foreign.test", {"/": "other"}, class_name="nginx"))
    controller = await cluster.launch("solo", publish_status_address=[PUBLISHED])

    # Status appears only once the route answers: whenever we see it, the route must work.
    async def status_then_route() -> bool:
        if not lb_ips(sim, "web"):
            return False
        assert await controller.get(session, "web.test") == (200, "pod-a")
        return True

    await eventually(status_then_route, 30)
    assert lb_ips(sim, "web") == [PUBLISHED]
    assert await controller.ready(session)

    # The Ingress of another class: no route, no status, never a status write.
    assert (await controller.get(session, "foreign.test"))[0] == 404
    assert lb_ips(sim, "foreign") == []
    assert "default/foreign" not in status_writes(sim)

    # Scale up: pod-b joins.
    sim.apply(endpoint_slice("web", [("127.0.0.2", True, False), ("127.0.0.3", True, False)], port))

    async def both_pods() -> bool:
        seen = {(await controller.get(session, "web.test"))[1] for _ in range(6)}
        return seen == {"pod-a", "pod-b"}

    await eventually(both_pods, FOLLOW)

    # pod-a terminating (not ready): traffic only to pod-b.
    sim.apply(endpoint_slice("web", [("127.0.0.2", False, True), ("127.0.0.3", True, False)], port))

    async def only_b() -> bool:
        seen = {(await controller.get(session, "web.test"))[1] for _ in range(6)}
        return seen == {"pod-b"}

    await eventually(only_b, FOLLOW)

    # The slice goes away: no endpoints, 503.
    sim.delete("endpointslices", "default", "web-1")

    async def unavailable() -> bool:
        return (await controller.get(session, "web.test"))[0] == 503

    await eventually(unavailable, FOLLOW)
    # Exactly one status write for our Ingress (only when it differed).
    assert status_writes(sim) == ["default/web"]


async def test_compaction_and_outage_lose_nothing(
    sim: KubeSim, session: aiohttp.ClientSession, cluster: Cluster
) -> None:
    sim.create(ingress("old", "old.test", {"/": "web"}))
    controller = await cluster.launch("solo", publish_status_address=[PUBLISHED])

    async def answers(host: str) -> bool:
        return (await controller.get(session, host))[0] == 200

    await eventually(lambda: answers("web.test"), 30)
    await eventually(lambda: answers("old.test"))
    await sim.wait_for_watch("ingresses")

    # The API server goes away; while it is down, objects change and history is compacted.
    sim.set_down(True)
    sim.create(ingress("new", "new.test", {"/": "web"}))
    sim.delete("ingresses", "default", "old")
    sim.compact()
    # Traffic is untouched meanwhile, through 30 s of outage (the figure).
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < outage_ends:
        assert await controller.get(session, "web.test") == (200, "pod-a")
        await asyncio.sleep(0.2)
    assert await controller.ready(session)
    relists_before = sum(1 for e in controller.logs() if e.get("event") == "watch.expired")

    sim.set_down(False)
    # Resuming from the old resourceVersion gets 410: the re-list must bring both changes.
    await eventually(lambda: answers("new.test"), 20)

    async def old_gone() -> bool:
        return (await controller.get(session, "old.test"))[0] == 404

    await eventually(old_gone)
    assert sum(1 for e in controller.logs() if e.get("event") == "watch.expired") > relists_before

    # Compaction plus dropped watches while up: nothing lost either.
    sim.pause_events()
    sim.create(ingress("late", "late.test", {"/": "web"}))
    sim.compact()
    sim.drop_watches()
    sim.resume_events()
    await eventually(lambda: answers("late.test"), 20)
    assert await controller.get(session, "web.test") == (200, "pod-a")


async def test_only_the_leader_writes_and_leadership_moves(
    sim: KubeSim, session: aiohttp.ClientSession, cluster: Cluster
) -> None:
    a = await cluster.launch("replica-a", publish_status_address=[PUBLISHED])
    b = await cluster.launch("replica-b", publish_status_address=[PUBLISHED])
    by_name = {"replica-a": a, "replica-b": b}

    first = await eventually(lambda: lease_holder(sim), 30)
    await eventually(lambda: asyncio.sleep(0, result=lb_ips(sim, "web") == [PUBLISHED]), 30)
    # Both replicas serve traffic, leader or not.
    for replica in (a, b):
        await eventually(lambda r=replica: _answers(r, session, "web.test"), 30)
    leader, follower = by_name[first], by_name[next(n for n in by_name if n != first)]
    assert status_writes(sim, follower.user_agent) == []
    assert status_writes(sim, leader.user_agent) == ["default/web"]

    # SIGTERM: the leader releases the Lease; the follower takes over at once.
    stopped_at = time.monotonic()
    await leader.stop(signal.SIGTERM)
    holder = await eventually(lambda: asyncio.sleep(0, result=_other_holder(sim, first)), 10)
    assert holder == follower.identity
    assert any(e.get("event") == "leader.released" for e in leader.logs())
    takeover = time.monotonic() - stopped_at
    sim.create(ingress("second", "second.test", {"/": "web"}))
    await eventually(lambda: asyncio.sleep(0, result=lb_ips(sim, "second") == [PUBLISHED]), 15)
    assert "default/second" in status_writes(sim, follower.user_agent)
    assert "default/second" not in status_writes(sim, leader.user_agent)

    # A new replica joins as a follower; SIGKILL the leader: no release, the Lease must expire.
    c = await cluster.launch("replica-c", publish_status_address=[PUBLISHED])
    await eventually(lambda: _answers(c, session, "web.test"), 30)
    assert await lease_holder(sim) == follower.identity
    killed_at = time.monotonic()
    await follower.stop(signal.SIGKILL)
    await eventually(
        lambda: asyncio.sleep(0, result=_other_holder(sim, follower.identity) == "replica-c"),
        LEASE["lease_duration"] + LEASE["retry_period"] + 5,
    )
    moved = time.monotonic() - killed_at
    sim.create(ingress("third", "third.test", {"/": "web"}))
    await eventually(lambda: asyncio.sleep(0, result=lb_ips(sim, "third") == [PUBLISHED]), 15)
    assert "default/third" in status_writes(sim, c.user_agent)
    # Informational: how long the hand-overs took (not asserted beyond the bounds above).
    print(f"takeover after SIGTERM {takeover:.2f}s, after SIGKILL {moved:.2f}s")


async def _answers(controller: Controller, session: aiohttp.ClientSession, host: str) -> bool:
    return (await controller.get(session, host))[0] == 200


def _other_holder(sim: KubeSim, previous: str) -> str:
    lease = sim.get("leases", "default", "portico-leader") or {}
    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
    return holder if holder and holder != previous else ""


async def test_missing_permission_is_reported_and_recovers(
    sim: KubeSim, session: aiohttp.ClientSession, cluster: Cluster
) -> None:
    sim.forbid("list", "secrets")
    controller = await cluster.launch("solo", publish_status_address=[PUBLISHED])

    def forbidden_logged() -> list[dict[str, Any]]:
        return [e for e in controller.logs() if e.get("event") == "watch.forbidden"]

    found = await eventually(lambda: asyncio.sleep(0, result=forbidden_logged()), 30)
    assert found[0]["missing"] == "cannot list secrets in all namespaces"

    # Without Secrets the initial sync is incomplete: nothing is published, not ready. The
    # positive first: every other kind has listed, and the Secrets list was refused again, so
    # the controller had all it needs but Secrets when it is found not ready.
    def listed() -> set[str]:
        return {e["resource"] for e in controller.logs() if e.get("event") == "watch.listed"}

    others = {"ingresses", "ingressclasses", "services", "endpointslices"}
    await eventually(lambda: asyncio.sleep(0, result=others <= listed()), 30)
    refused = sim.refused_count("list", "secrets")
    await eventually(
        lambda: asyncio.sleep(0, result=sim.refused_count("list", "secrets") > refused)
    )
    assert "secrets" not in listed()
    assert not await controller.ready(session)
    assert (await controller.get(session, "web.test"))[0] == 0
    assert len(forbidden_logged()) == 1  # logged once, retried quietly

    sim.allow("list", "secrets")
    await eventually(lambda: _answers(controller, session, "web.test"), 20)
    await eventually(lambda: controller.ready(session), 10)
    assert any(e.get("event") == "watch.allowed" for e in controller.logs())


async def test_problems_become_events(
    sim: KubeSim, session: aiohttp.ClientSession, cluster: Cluster
) -> None:
    sim.create(ingress("broken", "broken.test", {"/": "missing"}))
    controller = await cluster.launch("solo", publish_status_address=[PUBLISHED])
    await eventually(lambda: _answers(controller, session, "web.test"), 30)

    def events(reason: str) -> list[dict[str, Any]]:
        return [
            e
            for e in sim.list("events", "default")
            if e.get("reason") == reason and e["involvedObject"].get("name") == "broken"
        ]

    warning = (await eventually(lambda: asyncio.sleep(0, result=events("ServiceNotFound"))))[0]
    assert warning["type"] == "Warning"
    assert warning["involvedObject"]["kind"] == "Ingress"
    assert (
        warning["involvedObject"]["uid"]
        == sim.get("ingresses", "default", "broken")["metadata"]["uid"]
    )
    # Fixed: one Normal event.
    sim.create(service("missing", 8080))
    resolved = await eventually(lambda: asyncio.sleep(0, result=events("Resolved")))
    assert resolved[0]["type"] == "Normal"
    assert len(events("ServiceNotFound")) == 1


async def test_status_follows_the_publish_service_and_is_cleared_when_not_ours(
    sim: KubeSim, session: aiohttp.ClientSession, cluster: Cluster
) -> None:
    front = service("portico", 8080)
    sim.create(front)
    # The Ingress still carries the address another controller wrote before the move.
    web = sim.get("ingresses", "default", "web")
    assert web is not None
    web["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}}
    sim.update_status(web)
    controller = await cluster.launch("solo", publish_service="default/portico")
    await eventually(lambda: _answers(controller, session, "web.test"), 30)

    def set_lb(address: str) -> None:
        current = sim.get("services", "default", "portico")
        assert current is not None
        current["status"] = {"loadBalancer": {"ingress": [{"ip": address}]}}
        sim.update_status(current)

    set_lb("198.51.100.5")
    await eventually(lambda: asyncio.sleep(0, result=lb_ips(sim, "web") == ["198.51.100.5"]), 15)
    # While the Service had no load-balancer address, status was left alone, not blanked: the
    # write that the address caused (proving the writer ran) is the only one so far.
    assert status_writes(sim) == ["default/web"]
    set_lb("198.51.100.6")
    await eventually(lambda: asyncio.sleep(0, result=lb_ips(sim, "web") == ["198.51.100.6"]), 15)
    # The Ingress moves to another class: its route goes and our address is taken back.
    moved = sim.get("ingresses", "default", "web")
    assert moved is not None
    moved["spec"]["ingressClassName"] = "nginx"
    sim.update(moved)
    await eventually(lambda: asyncio.sleep(0, result=lb_ips(sim, "web") == []), 15)
    assert (await controller.get(session, "web.test"))[0] == 404
