"""Access log lines: valid JSON, every field, escaping of client-controlled values."""

from __future__ import annotations

import io
import json

from proxy.accesslog import BATCH, XFF_LIMIT, AccessLog, Entry
from proxy.config import PathRule

_NO_UPSTREAM = (None, 0, 0.0, None, b"HTTP/1.1")  # xff, upstream status and time, rule, protocol


def _route(service: str | None) -> PathRule:
    return PathRule("/", "prefix", "default/web-svc/80", "default/web", service, 80, "Prefix")


def _lines(entries: list[Entry]) -> list[dict[str, object]]:
    stream = io.BytesIO()
    log = AccessLog(stream)
    for e in entries:
        log.record(e)
    log.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_fields_of_a_forwarded_request() -> None:
    (line,) = _lines(
        [
            (
                b"10.0.0.1",
                b"GET",
                b"a.example",
                b"/x?y=1",
                200,
                1234,
                0.0125,
                "10.1.0.2:8080",
                b"rid-1",
                None,
                b"203.0.113.9, 10.0.0.1",
                200,
                0.0105,
                _route("default/web-svc"),
                b"HTTP/2.0",
            )
        ]
    )
    assert line["event"] == "access"
    assert line["client"] == "10.0.0.1"
    assert line["method"] == "GET"
    assert line["protocol"] == "HTTP/2.0"
    assert line["host"] == "a.example"
    assert line["target"] == "/x?y=1"
    assert line["status"] == 200
    assert line["bytes"] == 1234
    assert line["ms"] == 12.5
    assert line["upstream"] == "10.1.0.2:8080"
    assert line["request_id"] == "rid-1"
    assert line["forwarded_for"] == "203.0.113.9, 10.0.0.1"
    assert line["upstream_status"] == 200
    assert line["upstream_ms"] == 10.5
    assert line["ingress"] == "default/web"
    assert line["service"] == "default/web-svc"
    assert "reason" not in line
    assert isinstance(line["time"], str) and line["time"].endswith("Z")


def test_local_reply_has_reason_and_null_upstream() -> None:
    (line,) = _lines(
        [(b"10.0.0.1", b"", b"", b"/", 404, 0, 0.0, None, b"", "NoRoute", *_NO_UPSTREAM)]
    )
    assert line["upstream"] is None
    assert line["upstream_status"] is None and line["upstream_ms"] is None
    assert line["ingress"] is None and line["service"] is None
    assert line["forwarded_for"] is None
    assert line["reason"] == "NoRoute"
    assert line["status"] == 404


def test_client_controlled_values_are_escaped() -> None:
    host = b'h"o\\st'
    target = b'/p\xe9\t"x'
    rid = b'id"\\'
    xff = b'1.2.3.4"\\' + b"x" * 1000
    entry: Entry = (
        b"10.0.0.1",
        b"GET",
        host,
        target,
        200,
        1,
        0.001,
        None,
        rid,
        None,
        xff,
        0,
        0.0,
        _route(None),
        b"HTTP/1.1",
    )
    (line,) = _lines([entry])
    assert line["forwarded_for"] == xff[:XFF_LIMIT].decode("latin-1")
    assert (line["ingress"], line["service"]) == ("default/web", None)  # a rule without Service
    assert line["host"] == host.decode("latin-1")
    assert line["target"] == target.decode("latin-1")
    assert line["request_id"] == rid.decode("latin-1")


def test_a_full_batch_is_written_without_a_flush() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)
    for i in range(BATCH):
        log.record((b"c", b"GET", b"h", b"/%d" % i, 200, i, 0.0, None, b"r", None, *_NO_UPSTREAM))
    lines = stream.getvalue().splitlines()
    assert [json.loads(x)["bytes"] for x in lines] == list(range(BATCH))
