"""Request metrics: worker-side cells and export, controller-side sums, /metrics text.

The worker side runs a real ProxyServer on fake transports (tests/fakes.py, as the hot-path
benchmark does); the controller side goes through a real Publisher and channel with fake
workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controller.admin import AdminState
from controller.metrics import ApplyTracker, WorkerTotals
from controller.publisher import Publisher
from proxy.channel import (
    STATS_COUNTERS,
    Message,
    MessageType,
    RequestCounts,
    SeriesKey,
    WorkerStats,
    send_message,
)
from proxy.metrics import BYTES_OUT, DURATION, METHODS, RequestMetrics
from tests import fakes
from tests.unit.controller.publishing import connect, make_snapshot, wait_for

_COUNT = slice(DURATION, DURATION + 12)


def _rows(export: RequestCounts) -> dict[SeriesKey, tuple[float, ...]]:
    return dict(export.series)


async def test_worker_cells_and_export_of_moved_series_only() -> None:
    loop = asyncio.get_running_loop()
    down, up = fakes.build(loop)
    metrics = down.telemetry.metrics
    fakes.run(3, "small", down, up)
    # A method outside the fixed set is counted as OTHER; a request without a route (unknown
    # host) has empty labels.
    down.data_received(b"PURGE /x HTTP/1.1\r\nHost: bench.local\r\n\r\n")
    for p in fakes.response("small"):
        up.data_received(p)
    down.data_received(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")

    first = _rows(metrics.export())
    route = ("default/bench", "", "bench.local", "/")  # the rule names no Service
    get = first[(*route, 2, "GET", "HTTP/1.1")]
    assert sum(get[_COUNT]) == 3
    assert get[BYTES_OUT] == 3 * len(fakes.SMALL_BODY)
    assert sum(first[(*route, 2, "OTHER", "HTTP/1.1")][_COUNT]) == 1
    assert sum(first[("", "", "", "", 4, "GET", "HTTP/1.1")][_COUNT]) == 1
    assert metrics.export().local_replies == {"NoRoute": 1}

    # Nothing moved: nothing sent. Then only the cell that moved, with cumulative values.
    assert metrics.export().series == {}
    fakes.run(2, "small", down, up)
    again = _rows(metrics.export())
    assert list(again) == [(*route, 2, "GET", "HTTP/1.1")]
    assert sum(again[(*route, 2, "GET", "HTTP/1.1")][_COUNT]) == 5


async def test_unknown_methods_cannot_grow_the_label_set() -> None:
    loop = asyncio.get_running_loop()
    down, up = fakes.build(loop)
    for i in range(100):
        down.data_received(b"M%d /x HTTP/1.1\r\nHost: bench.local\r\n\r\n" % i)
        for p in fakes.response("small"):
            up.data_received(p)
    methods = {key[5] for key in down.telemetry.metrics.export().series}
    assert methods == {"OTHER"}
    assert set(METHODS) >= methods


def test_refusals_count_without_a_route() -> None:
    metrics = RequestMetrics(sizes=True)
    metrics.record_refusal(400, "MalformedRequest")
    (key,) = metrics.export().series
    assert key == ("", "", "", "", 4, "OTHER", "HTTP/1.1")
    assert metrics.local_replies == {"MalformedRequest": 1}


def _payload(count: int, reason_count: int, ejections: int) -> RequestCounts:
    cell = (0.5 * count, 0.0, 0.0, 10.0 * count, float(count)) + (0.0,) * 23
    return RequestCounts(
        series={("default/a", "default/s", "a.test", "/", 2, "GET", "HTTP/1.1"): cell},
        local_replies={"NoRoute": reason_count},
        retries=count,
        ejections=ejections,
    )


def _requests(totals: WorkerTotals) -> float:
    return sum(sum(v[_COUNT]) for v in totals.series().values())


async def test_totals_stay_monotonic_across_a_worker_restart() -> None:
    totals = WorkerTotals()
    publisher = Publisher(totals)
    link, worker = await connect(publisher)
    await publisher.publish(make_snapshot("127.0.0.2"))
    await wait_for(lambda: link.listening)

    async def stats(w: Any, payload: RequestCounts) -> None:
        body = WorkerStats(requests=1, connections_open=1, request_metrics=payload)
        await send_message(w.writer, Message(MessageType.STATS, body.encode()))

    await stats(worker, _payload(7, 2, 1))
    await wait_for(lambda: _requests(totals) == 7)
    counters = totals.counters()
    assert (counters["requests"], counters["connections_open"], counters["rejected"]) == (1, 1, 0)

    seen = [_requests(totals)]
    # The worker dies (channel closed, not yet detached): its counts still count, its open
    # connections no longer ...
    link.alive = False
    seen.append(_requests(totals))
    assert (totals.counters()["requests"], totals.counters()["connections_open"]) == (1, 0)
    # ... and once detached, as retired totals; its replacement starts from zero.
    publisher.detach(link)
    worker.task.cancel()
    seen.append(_requests(totals))
    assert totals.counters() == dict.fromkeys(STATS_COUNTERS, 0) | {"requests": 1}
    link2, worker2 = await connect(publisher)
    await wait_for(lambda: link2.acked_version == 1)
    await stats(worker2, _payload(3, 1, 0))
    await wait_for(lambda: _requests(totals) == 10)
    seen.append(_requests(totals))
    assert seen == sorted(seen) and seen[-1] == 10
    assert (totals.counters()["requests"], totals.counters()["connections_open"]) == (2, 1)
    assert totals.local_replies() == {"NoRoute": 3}
    assert totals.count("retries") == 10
    assert totals.count("ejections") == 1
    worker2.task.cancel()


async def test_apply_outcome_success_then_refusal() -> None:
    publisher = Publisher()
    link, worker = await connect(publisher)
    tracker = ApplyTracker()
    version = await publisher.publish(make_snapshot("127.0.0.2"))
    assert version is not None
    tracker.track(publisher, version, 0.0)
    await wait_for(lambda: tracker.successes == 1)
    assert tracker.last_success is True and tracker.last_success_time > 0
    worker.refuse.add(2)
    version = await publisher.publish(make_snapshot("127.0.0.3"))
    assert version == 2
    tracker.track(publisher, version, 0.0)
    await wait_for(lambda: tracker.failures == 1)
    assert tracker.last_success is False
    # A late outcome of an older version does not overwrite the newest one.
    tracker.observe(1, True, 0.01)
    assert tracker.last_success is False
    worker.task.cancel()
    publisher.detach(link)


async def test_metrics_text_parses_with_both_name_sets() -> None:
    totals = WorkerTotals()
    publisher = Publisher(totals)
    link, worker = await connect(publisher)
    await publisher.publish(make_snapshot("127.0.0.2"))
    await wait_for(lambda: link.listening)
    totals.update(link, WorkerStats(request_metrics=_payload(4, 1, 0)))
    for nginx in (False, True):
        state = AdminState(publisher, totals, ingress_nginx_names=nginx)
        text = state.metrics_text().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        duration = families["portico_request_duration_seconds"]
        buckets = [s.value for s in duration.samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == 4  # cumulative, +Inf == count
        assert ("nginx_ingress_controller_requests" in families) is nginx
    worker.task.cancel()
    publisher.detach(link)


async def test_the_protocol_is_a_label_of_portico_names_only() -> None:
    """Issue 19 item 7: portico_requests by client protocol (the access log's words);
    ingress-nginx's families have no such label, so their series are summed over it."""
    totals = WorkerTotals()
    publisher = Publisher(totals)
    link, worker = await connect(publisher)
    await publisher.publish(make_snapshot("127.0.0.2"))
    await wait_for(lambda: link.listening)
    cell = (0.5, 0.0, 0.0, 10.0, 1.0) + (0.0,) * 23
    series = {
        ("default/a", "default/s", "a.test", "/", 2, "GET", "HTTP/1.1"): cell,
        ("default/a", "default/s", "a.test", "/", 2, "GET", "HTTP/2.0"): cell,
    }
    totals.update(link, WorkerStats(request_metrics=RequestCounts(series=series)))
    for nginx in (False, True):
        text = AdminState(publisher, totals, ingress_nginx_names=nginx).metrics_text().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        portico = {s.labels["protocol"]: s.value for s in families["portico_requests"].samples}
        assert portico == {"HTTP/1.1": 1, "HTTP/2.0": 1}
        if nginx:
            (sample,) = families["nginx_ingress_controller_requests"].samples
            assert sample.value == 2 and "protocol" not in sample.labels
    worker.task.cancel()
    publisher.detach(link)


def test_access_log_off_spellings() -> None:
    import argparse

    from controller.settings import add_settings_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)

    def access_log(*argv: str) -> bool:
        return settings_from_args(parser.parse_args(list(argv)), {}).proxy_settings().access_log

    assert access_log("--access-log", "off") is False
    assert access_log("--no-access-log") is False
    assert access_log("--access-log") is True
    assert access_log("--access-log", "on") is True
    assert access_log() is True


async def test_requests_are_counted_with_the_access_log_off() -> None:
    down, up = fakes.build(asyncio.get_running_loop(), access_log=False)
    assert down.telemetry.access is None
    fakes.run(2, "small", down, up)
    down.data_received(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")  # a local reply
    cells = down.telemetry.metrics.export().series.values()
    assert sorted(sum(cell[_COUNT]) for cell in cells) == [1, 2]


async def test_a_head_on_the_clock_tick_of_the_send_counts_as_an_upstream_time() -> None:
    # uvloop's clock has millisecond ticks: the response head often arrives on the tick the
    # request left, and the time taken for it may come out below the send time (it was once
    # derived from the read deadline minus the timeout, which rounds). Such a response must
    # still count in the upstream histogram (it was once dropped from it as "no response
    # head", which made the metrics test flaky).
    loop = asyncio.get_running_loop()
    down, up = fakes.build(loop)
    metrics = down.telemetry.metrics
    down.data_received(fakes.REQUEST)
    exchange = up.exchange
    assert exchange is not None
    exchange.sent_at = loop.time() + 1.0  # the rounding, exaggerated
    for p in fakes.response("small"):
        up.data_received(p)
    (_, _, status, _, upstream, *_) = metrics.pending[-1]
    assert status == 200
    assert upstream == 0.0
