"""What the workers' request path runs, as they report it: the log, /metrics and /debug/snapshot.

Each case is a READY payload a worker could send (`proxy.native.report()`), sent over a real
channel to a real Publisher: compiled is said at INFO, plain Python at WARNING with the reason,
unless PORTICO_PURE_PYTHON asked for it (INFO); `portico_build_info` and the worker's entry in
/debug/snapshot show the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import NamedTuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.admin import AdminState
from controller.metrics import WorkerTotals
from controller.publisher import Publisher, WorkerLink
from proxy import native
from proxy.channel import Message, MessageType, send_message
from tests.unit.controller.publishing import wait_for


class Case(NamedTuple):
    report: dict[str, str]
    level: int
    event: str


def report(reason: str, state: str) -> dict[str, str]:
    path = "compiled" if state == "compiled" else "python"
    return {"request_path": path, "reason": reason, "state": state}


STALE = "pure: stale build (proxy.headers changed since it was compiled)"
CASES = {
    "compiled": Case(report("", "compiled"), logging.INFO, "worker.request_path"),
    "requested": Case(
        report(native.REQUESTED, "pure: PORTICO_PURE_PYTHON"), logging.INFO, "worker.request_path"
    ),
    "not compiled": Case(
        report(native.NO_BUILD, native.NOT_COMPILED),
        logging.WARNING,
        "worker.request_path_not_compiled",
    ),
    "stale": Case(report(native.STALE, STALE), logging.WARNING, "worker.request_path_not_compiled"),
    "import failed": Case(
        report(native.IMPORT_FAILED, "pure: import failed (invalid ELF header)"),
        logging.WARNING,
        "worker.request_path_not_compiled",
    ),
}


# The workers' ends of their channels, kept open for the test (a closed end is a dead worker).
Workers = list[tuple[WorkerLink, asyncio.StreamWriter]]


async def ready_workers(publisher: Publisher, payload: bytes, count: int) -> Workers:
    """`count` workers attached to `publisher`, each having sent READY with `payload`."""
    workers: Workers = []
    for index in range(count):
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        _, worker_writer = await asyncio.open_unix_connection(sock=theirs)
        link = WorkerLink(index=index, reader=reader, writer=writer)
        await publisher.attach(link, b"{}")
        await send_message(worker_writer, Message(MessageType.READY, payload))
        workers.append((link, worker_writer))
    await wait_for(lambda: all(link.listening for link, _ in workers))
    return workers


def stop(publisher: Publisher, workers: Workers) -> None:
    for link, end in workers:
        publisher.detach(link)
        end.close()


def build_info(state: AdminState) -> dict[tuple[str, str], float]:
    text = state.metrics_text().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "portico_build_info"]
    return {(s.labels["request_path"], s.labels["reason"]): s.value for s in family.samples}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_workers_build_is_logged_once_exported_and_shown(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = Publisher()
    with caplog.at_level(logging.INFO, logger="portico.publisher"):
        workers = await ready_workers(publisher, json.dumps(case.report).encode(), 2)
    said = [r for r in caplog.records if r.getMessage().startswith("worker.request_path")]
    # Once for the two workers in the same state, at the case's level, with the reason.
    assert [(r.levelno, r.getMessage()) for r in said] == [(case.level, case.event)]
    assert said[0].__dict__["reason"] == case.report["reason"]
    assert said[0].__dict__["state"] == case.report["state"]
    if case.level == logging.WARNING:
        assert said[0].__dict__["fix"] == native.ADVICE[case.report["reason"]]

    state = AdminState(publisher, WorkerTotals())
    assert build_info(state) == {(case.report["request_path"], case.report["reason"]): 1}
    summary = state.summary()
    assert [w["build"] for w in summary["workers"]] == [case.report, case.report]
    stop(publisher, workers)


async def test_workers_in_different_states_each_show() -> None:
    # A worker restarted after a source was edited runs the sources; the others stay compiled.
    publisher = Publisher()
    compiled = await ready_workers(publisher, json.dumps(CASES["compiled"].report).encode(), 1)
    stale = await ready_workers(publisher, json.dumps(CASES["stale"].report).encode(), 1)
    state = AdminState(publisher, WorkerTotals())
    assert build_info(state) == {("compiled", ""): 1, ("python", native.STALE): 1}
    stop(publisher, stale)  # gone: no longer reported
    assert build_info(state) == {("compiled", ""): 1}
    stop(publisher, compiled)


async def test_no_series_before_a_worker_said_what_it_runs() -> None:
    publisher = Publisher()
    workers = await ready_workers(publisher, b"", 1)  # an empty READY says nothing
    state = AdminState(publisher, WorkerTotals())
    assert build_info(state) == {}
    assert state.summary()["workers"][0]["build"] is None
    stop(publisher, workers)
