"""Router.route_raw: same answers as route() for Host fields as sent, across its cache."""

from __future__ import annotations

import pytest

from proxy import table
from proxy.config import PathRule, RouteTable, VirtualHost
from proxy.table import Router


def _rule(path: str, backend: str) -> PathRule:
    return PathRule(path, "prefix", backend, "default/ing", None, 80, "Prefix")


ROUTER = Router(
    RouteTable(
        (
            VirtualHost("a.example", (_rule("/api", "a-api"), _rule("/", "a-root"))),
            VirtualHost("*.wild.example", (_rule("/", "wild"),)),
            VirtualHost("", (_rule("/", "any"),)),
        ),
        default=_rule("/", "default"),
    )
)

CASES = [
    (b"a.example", "/api/x"),
    (b"A.Example:8080", "/api"),
    (b"a.example.", "/other"),
    (b"x.wild.example", "/"),
    (b"wild.example", "/"),
    (b"unknown.example", "/z"),
    (b"", "/"),
    (b"[::1]:80", "/"),
]


@pytest.mark.parametrize(("host", "path"), CASES)
def test_route_raw_matches_route(host: bytes, path: str) -> None:
    want = ROUTER.route(host.decode("latin-1"), path)
    assert ROUTER.route_raw(host, path) is want
    assert ROUTER.route_raw(host, path) is want  # from the cache


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "_RAW_HOSTS_MAX", 4)
    router = Router(RouteTable((VirtualHost("a.example", (_rule("/", "a"),)),)))
    for i in range(20):
        assert router.route_raw(b"h%d.example" % i, "/") is None
    assert router.route_raw(b"a.example", "/") is not None
    assert len(router._by_raw) <= 4
