"""The publisher: versioning, skipping unchanged snapshots, endpoints-only updates, ACK/NACK."""

from __future__ import annotations

import asyncio

from controller.publisher import Publisher, WorkerLink, changed_backends
from proxy.channel import Message, MessageType, WorkerStats, send_message
from proxy.config import (
    Backend,
    Endpoint,
    Snapshot,
    apply_endpoints_update,
    decode_endpoints_update,
    decode_snapshot,
)
from tests.unit.controller.publishing import connect, make_snapshot, wait_for


async def test_versions_full_then_endpoints_update_then_skip() -> None:
    publisher = Publisher()
    link, worker = await connect(publisher)
    assert await publisher.publish(make_snapshot("127.0.0.2")) == 1
    await wait_for(lambda: link.acked_version == 1)
    assert publisher.ready()
    # Same content again: nothing is sent.
    assert await publisher.publish(make_snapshot("127.0.0.2")) is None
    # Endpoint change only: a small update, which applies on top of version 1.
    assert await publisher.publish(make_snapshot("127.0.0.2", "127.0.0.3")) == 2
    await wait_for(lambda: link.acked_version == 2)
    kinds = [m.type for m in worker.messages]
    assert kinds == [MessageType.SETTINGS, MessageType.SNAPSHOT, MessageType.ENDPOINTS]
    update = decode_endpoints_update(worker.messages[2].payload)
    first = decode_snapshot(worker.messages[1].payload)
    rebuilt = apply_endpoints_update(first, update)
    assert rebuilt == publisher.current
    # A route change is a whole snapshot.
    assert await publisher.publish(make_snapshot("127.0.0.2", host="b.example")) == 3
    await wait_for(lambda: link.acked_version == 3)
    assert worker.messages[-1].type is MessageType.SNAPSHOT
    worker.task.cancel()


async def test_nack_of_update_resends_whole_snapshot() -> None:
    publisher = Publisher()
    link, worker = await connect(publisher)
    await publisher.publish(make_snapshot("127.0.0.2"))
    await wait_for(lambda: link.acked_version == 1)
    worker.refuse.add(2)
    await publisher.publish(make_snapshot("127.0.0.3"))
    # The refused update is followed by the whole snapshot of version 2 (refused again here, so
    # the worker keeps version 1 and the publisher does not loop).
    await wait_for(lambda: len(worker.messages) >= 4)
    await asyncio.sleep(0.05)
    assert [m.type for m in worker.messages[2:]] == [MessageType.ENDPOINTS, MessageType.SNAPSHOT]
    assert link.acked_version == 1 and link.needs_full
    worker.refuse.clear()
    await publisher.publish(make_snapshot("127.0.0.4"))
    await wait_for(lambda: link.acked_version == 3)
    assert worker.messages[-1].type is MessageType.SNAPSHOT
    worker.task.cancel()


async def test_late_worker_gets_current_snapshot() -> None:
    publisher = Publisher()
    await publisher.publish(make_snapshot("127.0.0.2"))
    link, worker = await connect(publisher)
    await wait_for(lambda: link.acked_version == 1)
    assert [m.type for m in worker.messages] == [MessageType.SETTINGS, MessageType.SNAPSHOT]
    worker.task.cancel()


def test_changed_backends() -> None:
    old = make_snapshot("127.0.0.2")
    new = Snapshot(
        routes=old.routes,
        backends=(old.backends[0], Backend("default/api/80", (Endpoint("127.0.0.9", 80),))),
    )
    assert changed_backends(old, new) == (("default/api/80",), ())
    assert changed_backends(new, old) == ((), ("default/api/80",))


class StatsRecorder:
    """A StatsSink that records what the publisher hands it."""

    def __init__(self) -> None:
        self.updates: list[tuple[WorkerLink, WorkerStats]] = []
        self.retired: list[WorkerLink] = []

    def update(self, link: WorkerLink, stats: WorkerStats) -> None:
        self.updates.append((link, stats))

    def retire(self, link: WorkerLink) -> None:
        self.retired.append(link)


async def test_stats_go_to_the_sink_until_detached_and_stalls_are_seen() -> None:
    sink = StatsRecorder()
    publisher = Publisher(sink)
    link, worker = await connect(publisher)
    await publisher.publish(make_snapshot("127.0.0.2"))
    await wait_for(lambda: link.listening)
    stats = WorkerStats(requests=5, connections_open=2)
    await send_message(worker.writer, Message(MessageType.STATS, stats.encode()))
    await wait_for(lambda: bool(sink.updates))
    assert sink.updates == [(link, stats)]
    assert publisher.stalled(10.0) == []
    link.last_seen -= 11.0
    assert publisher.stalled(10.0) == [0]
    publisher.detach(link)
    assert sink.retired == [link]
    worker.task.cancel()
