"""The STATS message (`proxy.channel.WorkerStats`): one typed contract from worker to /metrics."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from controller.admin import WORKER_METRICS
from proxy.channel import STATS_COUNTERS, STATS_LEVELS, RequestCounts, WorkerStats
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

SERIES = {
    ("default/a", "default/s", "a.test", "/", 2, "GET", "HTTP/1.1"): (0.25, 0.0, 12.0, 1e12, 3.0),
    ("", "", "", "", 4, "OTHER", "HTTP/2.0"): (0.0, 0.0, 0.0, 0.0, 1.0),
}


def sample() -> WorkerStats:
    """Every field set, each to a different value."""
    counters = {name: i + 1 for i, name in enumerate(STATS_COUNTERS)}
    requests = RequestCounts(SERIES, True, {"NoRoute": 3, "UpstreamConnectFailed": 1}, 4, 2)
    return WorkerStats(**counters, request_metrics=requests)


def test_round_trip() -> None:
    stats = sample()
    assert WorkerStats.decode(stats.encode()) == stats
    assert WorkerStats.decode(WorkerStats().encode()) == WorkerStats()
    # Whole numbers go out as integers (a second's worth of series stays small).
    (row, _) = json.loads(stats.encode())["metrics"]["series"]
    assert row == [
        "default/a",
        "default/s",
        "a.test",
        "/",
        2,
        "GET",
        "HTTP/1.1",
        0.25,
        0,
        12,
        10**12,
        3,
    ]


def _without(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    inner = doc
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return doc


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: _without(d, "requests"),
        lambda d: _without(d, "metrics"),
        lambda d: _without(d, "metrics", "retries"),
        lambda d: d | {"connections_open": "many"},
        lambda d: d | {"metrics": d["metrics"] | {"series": [["only", "labels"]]}},
        lambda d: d | {"metrics": d["metrics"] | {"local_replies": ["NoRoute"]}},
    ],
    ids=["counter", "metrics", "retries", "not-a-number", "short-row", "replies-not-a-map"],
)
def test_malformed_payloads_are_refused(spoil: Any) -> None:
    doc = json.loads(sample().encode())
    with pytest.raises((ValueError, KeyError, TypeError, IndexError, AttributeError)):
        WorkerStats.decode(json.dumps(spoil(doc)).encode())


def test_every_counter_reaches_metrics() -> None:
    # requests and local_replies have labelled families, from the per-request series.
    assert set(WORKER_METRICS) | {"requests", "local_replies"} == set(STATS_COUNTERS)
    assert set(STATS_COUNTERS) >= STATS_LEVELS
    names = {f.name for f in dataclasses.fields(WorkerStats)}
    assert names == {*STATS_COUNTERS, "request_metrics"}


async def test_the_worker_server_builds_the_message() -> None:
    server = ProxyServer(ProxySettings())
    stats = server.worker_stats()
    assert stats == WorkerStats(request_metrics=RequestCounts(local_replies={}))
    assert WorkerStats.decode(stats.encode()) == stats
