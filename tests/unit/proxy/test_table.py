"""Unit tests of proxy.table: the Kubernetes path-matching table, host precedence, fallbacks."""

from __future__ import annotations

import pytest

from proxy.config import MatchKind, PathRule, RouteTable, VirtualHost
from proxy.table import NO_HOST_MATCH, NO_PATH_MATCH, Router


def _rule(path: str, match: MatchKind = "prefix", backend: str = "") -> PathRule:
    # Prefix paths are stored as the compiler emits them: without their trailing "/".
    stored = path.rstrip("/") or "/" if match == "prefix" else path
    return PathRule(stored, match, backend or f"{match}:{path}", "default/web", None, 80)


def _sorted(rules: list[PathRule]) -> tuple[PathRule, ...]:
    return tuple(sorted(rules, key=lambda r: (-len(r.path), r.match != "exact", r.path)))


def _router(*vhosts: VirtualHost, default: PathRule | None = None) -> Router:
    return Router(RouteTable(virtual_hosts=vhosts, default=default))


# The table from https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
# (kind, rule paths, request path, the rule that must match or None).
K8S_TABLE: list[tuple[str, list[tuple[str, MatchKind]], str, str | None]] = [
    ("Prefix", [("/", "prefix")], "/", "/"),
    ("Prefix", [("/", "prefix")], "/anything/at/all", "/"),
    ("Exact", [("/foo", "exact")], "/foo", "exact:/foo"),
    ("Exact", [("/foo", "exact")], "/bar", None),
    ("Exact", [("/foo", "exact")], "/foo/", None),
    ("Exact", [("/foo/", "exact")], "/foo", None),
    ("Prefix", [("/foo", "prefix")], "/foo", "/foo"),
    ("Prefix", [("/foo", "prefix")], "/foo/", "/foo"),
    ("Prefix", [("/foo/", "prefix")], "/foo", "/foo/"),
    ("Prefix", [("/foo/", "prefix")], "/foo/", "/foo/"),
    ("Prefix", [("/aaa/bb", "prefix")], "/aaa/bbb", None),
    ("Prefix", [("/aaa/bbb", "prefix")], "/aaa/bbb", "/aaa/bbb"),
    ("Prefix", [("/aaa/bbb/", "prefix")], "/aaa/bbb", "/aaa/bbb/"),
    ("Prefix", [("/aaa/bbb", "prefix")], "/aaa/bbb/", "/aaa/bbb"),
    ("Prefix", [("/aaa/bbb", "prefix")], "/aaa/bbb/ccc", "/aaa/bbb"),
    ("Prefix", [("/aaa/bbb", "prefix")], "/aaa/bbbxyz", None),
    ("Prefix", [("/", "prefix"), ("/aaa", "prefix")], "/aaa/ccc", "/aaa"),
    (
        "Prefix",
        [("/", "prefix"), ("/aaa", "prefix"), ("/aaa/bbb", "prefix")],
        "/aaa/bbb",
        "/aaa/bbb",
    ),
    ("Prefix", [("/", "prefix"), ("/aaa", "prefix"), ("/aaa/bbb", "prefix")], "/ccc", "/"),
    ("Prefix", [("/aaa", "prefix")], "/ccc", None),
    ("Mixed", [("/foo", "prefix"), ("/foo", "exact")], "/foo", "exact:/foo"),
    # Beyond the documented table.
    ("Prefix", [("/foo", "prefix")], "/foobar", None),
    ("Mixed", [("/foo", "prefix"), ("/foo", "exact")], "/foo/", "/foo"),
    ("Mixed", [("/foo/bar", "exact"), ("/foo", "prefix")], "/foo/bar/", "/foo"),
    ("Exact", [("/", "exact")], "/", "exact:/"),
    ("Exact", [("/", "exact")], "/a", None),
    ("Prefix", [("/a%2Fb", "prefix")], "/a%2Fb/c", "/a%2Fb"),  # raw, no percent-decoding
    ("Prefix", [("/a/b", "prefix")], "/a%2Fb", None),
    ("Prefix", [("/", "prefix")], "", "/"),
]


@pytest.mark.parametrize(("kind", "rules", "request_path", "expected"), K8S_TABLE)
def test_kubernetes_path_table(
    kind: str, rules: list[tuple[str, MatchKind]], request_path: str, expected: str | None
) -> None:
    built = [_rule(p, m) for p, m in rules]
    router = _router(VirtualHost("a.example.com", _sorted(built)))
    got = router.route("a.example.com", request_path)
    if expected is None:
        assert got is None
        return
    assert got is not None
    want = expected if ":" in expected else f"prefix:{expected}"
    assert got.backend == want


HOSTS = VirtualHost("a.example.com", (_rule("/", backend="exact-host"),))
WILD = VirtualHost("*.example.com", (_rule("/", backend="wildcard"),))
ANY = VirtualHost("", (_rule("/", backend="host-less"),))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.example.com", "exact-host"),
        ("A.Example.COM", "exact-host"),
        ("a.example.com:8080", "exact-host"),
        ("a.example.com.", "exact-host"),
        ("b.example.com", "wildcard"),
        ("B.EXAMPLE.com:443", "wildcard"),
        ("x.b.example.com", "host-less"),  # a wildcard spans exactly one label
        ("example.com", "host-less"),
        (".example.com", "host-less"),
        ("other.org", "host-less"),
        ("", "host-less"),
        ("[::1]:80", "host-less"),
        ("[::1]", "host-less"),
        ("127.0.0.1:80", "host-less"),
    ],
)
def test_host_precedence(host: str, expected: str) -> None:
    rule = _router(HOSTS, WILD, ANY).route(host, "/x")
    assert rule is not None and rule.backend == expected


def test_matched_host_never_falls_back_to_host_less_rules() -> None:
    vhost = VirtualHost("a.example.com", (_rule("/api", backend="api"),))
    router = _router(vhost, ANY)
    assert router.route("a.example.com", "/other") is None
    match = router.explain("a.example.com", "/other")
    assert match.reason == NO_PATH_MATCH and match.virtual_host is vhost and match.rule is None


@pytest.mark.parametrize(
    ("vhost_fallback", "global_default", "host", "expected", "reason"),
    [
        ("fb", "gd", "a.example.com", "fb", NO_PATH_MATCH),
        (None, "gd", "a.example.com", "gd", NO_PATH_MATCH),
        (None, None, "a.example.com", None, NO_PATH_MATCH),
        ("fb", "gd", "nope.org", "gd", NO_HOST_MATCH),
        ("fb", None, "nope.org", None, NO_HOST_MATCH),
    ],
)
def test_fallbacks(
    vhost_fallback: str | None,
    global_default: str | None,
    host: str,
    expected: str | None,
    reason: str,
) -> None:
    fb = _rule("/", backend=vhost_fallback) if vhost_fallback else None
    gd = _rule("/", backend=global_default) if global_default else None
    router = _router(VirtualHost("a.example.com", (_rule("/api"),), fallback=fb), default=gd)
    got = router.route(host, "/other")
    assert (got.backend if got else None) == expected
    match = router.explain(host, "/other")
    assert match.reason == reason
    assert match.via_default is (expected is not None)
    assert (match.rule.backend if match.rule else None) == expected


def test_explain_of_a_matched_rule() -> None:
    router = _router(HOSTS, default=_rule("/", backend="gd"))
    match = router.explain("a.example.com", "/x")
    assert match.reason is None and not match.via_default
    assert match.rule is not None and match.rule.backend == "exact-host"
    assert match.virtual_host is HOSTS


def test_host_less_rules_then_global_default() -> None:
    router = _router(
        VirtualHost("", (_rule("/api", backend="api"),)), default=_rule("/", backend="gd")
    )
    assert router.route("whatever", "/api/v1").backend == "api"  # type: ignore[union-attr]
    assert router.route("whatever", "/web").backend == "gd"  # type: ignore[union-attr]
    assert router.explain("whatever", "/web").reason == NO_PATH_MATCH


def test_empty_table_routes_nothing() -> None:
    router = Router(RouteTable())
    assert router.route("a", "/") is None
    assert router.explain("a", "/").reason == NO_HOST_MATCH
