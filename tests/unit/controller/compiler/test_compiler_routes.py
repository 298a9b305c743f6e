"""Compiler tables: IngressClass selection, hosts, paths, defaultBackend, conflicts.

Each row is objects in -> requests routed through proxy.table.Router and problems out.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from proxy.table import Router
from tests.kube_factory import (
    CONTROLLER,
    Raw,
    backend,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    resource_backend,
    rule,
    service,
    store_of,
)

BASE = [ingress_class(), service("web"), service("api"), service("other"), endpoint_slice()]


def run(*raws: Raw, settings: CompileSettings | None = None) -> CompileResult:
    return compile_view(store_of(*BASE, *raws), settings or CompileSettings())


def routed(result: CompileResult, host: str, request_path: str) -> str | None:
    got = Router(result.snapshot.routes).route(host, request_path)
    return None if got is None else got.backend


def reasons(result: CompileResult) -> set[tuple[str, str]]:
    return {(p.ref, p.reason) for p in result.problems}


# ---- IngressClass selection -----------------------------------------------------------------

OTHER = "k8s.io/ingress-nginx"
LEGACY = "kubernetes.io/ingress.class"

CLASS_ROWS: list[tuple[str, list[Raw], dict[str, Any], bool, str]] = [
    # (id, objects, CompileSettings kwargs, ours?, substring of the ignored reason)
    ("class-name-ours", [ingress(class_name="portico")], {}, True, ""),
    (
        "class-name-any-name-our-controller",
        [ingress_class("edge"), ingress(class_name="edge")],
        {},
        True,
        "",
    ),
    (
        "class-name-other-controller",
        [ingress_class("nginx", OTHER), ingress(class_name="nginx")],
        {},
        False,
        "class 'nginx' is not ours",
    ),
    ("class-name-missing-class", [ingress(class_name="ghost")], {}, False, "not found"),
    (
        "class-name-beats-annotation",
        [
            ingress_class("nginx", OTHER),
            ingress(class_name="nginx", annotations={LEGACY: "portico"}),
        ],
        {},
        False,
        "not ours",
    ),
    ("annotation-ours", [ingress(class_name=None, annotations={LEGACY: "portico"})], {}, True, ""),
    (
        "annotation-other",
        [ingress(class_name=None, annotations={LEGACY: "nginx"})],
        {},
        False,
        "class 'nginx' is not ours",
    ),
    (
        "annotation-custom-class-setting",
        [ingress(class_name=None, annotations={LEGACY: "edge"})],
        {"ingress_classes": ("edge",)},
        True,
        "",
    ),
    (
        "no-class-our-default-class",
        [ingress_class("edge", default=True), ingress(class_name=None)],
        {},
        True,
        "",
    ),
    (
        "no-class-other-default-class",
        [ingress_class("nginx", OTHER, default=True), ingress(class_name=None)],
        {},
        False,
        "no ingress class",
    ),
    ("no-class-no-default", [ingress(class_name=None)], {}, False, "no ingress class"),
    (
        "no-class-setting-takes-it",
        [ingress(class_name=None)],
        {"watch_ingress_without_class": True},
        True,
        "",
    ),
    (
        "controller-name-setting",
        [ingress_class("x", "example.com/edge"), ingress(class_name="x")],
        {"controller_names": ("example.com/edge",)},
        True,
        "",
    ),
    # Class takeover (ingress-nginx's store.GetIngressClass, with lists): Portico claims
    # ingress-nginx's controller value and legacy class beside its own.
    (
        "takeover-class-name",
        [ingress_class("nginx", OTHER), ingress(class_name="nginx")],
        {"controller_names": (CONTROLLER, OTHER)},
        True,
        "",
    ),
    (
        "takeover-keeps-own-class",
        [ingress(class_name="portico")],
        {"controller_names": (CONTROLLER, OTHER)},
        True,
        "",
    ),
    (
        "takeover-annotation",
        [ingress(class_name=None, annotations={LEGACY: "nginx"})],
        {"ingress_classes": ("portico", "nginx")},
        True,
        "",
    ),
    (
        "takeover-annotation-not-listed",
        [ingress(class_name=None, annotations={LEGACY: "nginx-internal"})],
        {"ingress_classes": ("portico", "nginx")},
        False,
        "class 'nginx-internal' is not ours",
    ),
    (
        "takeover-default-class",
        [ingress_class("nginx", OTHER, default=True), ingress(class_name=None)],
        {"controller_names": (CONTROLLER, OTHER)},
        True,
        "",
    ),
    # The annotation value is compared as written, as ingress-nginx does: "" is no class.
    (
        "annotation-empty",
        [ingress(class_name=None, annotations={LEGACY: ""})],
        {"watch_ingress_without_class": True},
        False,
        "class '' is not ours",
    ),
]


@pytest.mark.parametrize(
    ("objects", "kwargs", "ours", "why"),
    [pytest.param(*row[1:], id=row[0]) for row in CLASS_ROWS],
)
def test_class_selection(objects: list[Raw], kwargs: dict[str, Any], ours: bool, why: str) -> None:
    result = run(*objects, settings=CompileSettings(**kwargs))
    if ours:
        assert result.owned == ("default/web",)
        assert routed(result, "x", "/") == "default/web/80"
    else:
        assert result.owned == ()
        assert why in result.ignored["default/web"]
        assert result.snapshot.routes.virtual_hosts == ()


def test_ignored_ingress_yields_no_problems() -> None:
    bad = ingress(class_name="nginx", rules=[rule("1.2.3.4", path("nope", "ghost"))])
    result = run(ingress_class("nginx", OTHER), bad)
    assert result.problems == ()
    assert "default/web" in result.ignored


# ---- hosts ------------------------------------------------------------------------------------

HOST_ROWS: list[tuple[str, str, list[tuple[str, str | None]], str | None]] = [
    # (id, rule host, [(request host, backend or None)], problem reason)
    (
        "exact",
        "a.example.com",
        [("a.example.com", "default/web/80"), ("b.example.com", None)],
        None,
    ),
    ("lower-cased", "A.Example.COM", [("a.example.com", "default/web/80")], None),
    (
        "wildcard-one-label",
        "*.example.com",
        [("a.example.com", "default/web/80"), ("x.a.example.com", None), ("example.com", None)],
        None,
    ),
    ("ip-v4", "1.2.3.4", [("1.2.3.4", None)], "InvalidHost"),
    ("ip-v6", "::1", [], "InvalidHost"),
    ("wildcard-not-first", "a.*.example.com", [], "InvalidHost"),
    ("wildcard-partial-label", "a*.example.com", [], "InvalidHost"),
    ("bare-wildcard", "*", [], "InvalidHost"),
    ("underscore", "foo_bar.example.com", [], "InvalidHost"),
    ("empty-label", "a..example.com", [], "InvalidHost"),
    ("leading-dash", "-a.example.com", [], "InvalidHost"),
    ("too-long-label", "a" * 64 + ".example.com", [], "InvalidHost"),
]


@pytest.mark.parametrize(
    ("host", "requests", "problem"), [pytest.param(*row[1:], id=row[0]) for row in HOST_ROWS]
)
def test_hosts(host: str, requests: list[tuple[str, str | None]], problem: str | None) -> None:
    result = run(ingress(rules=[rule(host)]))
    for request_host, expected in requests:
        assert routed(result, request_host, "/x") == expected
    if problem is None:
        assert result.problems == ()
        assert [v.host for v in result.snapshot.routes.virtual_hosts] == [host.lower()]
    else:
        assert reasons(result) == {("default/web", problem)}
        assert result.snapshot.routes.virtual_hosts == ()


def test_invalid_host_drops_only_that_rule() -> None:
    result = run(ingress(rules=[rule("bad_host"), rule("ok.example.com")]))
    assert reasons(result) == {("default/web", "InvalidHost")}
    assert routed(result, "ok.example.com", "/") == "default/web/80"


@pytest.mark.parametrize(
    ("request_host", "expected"),
    [
        ("a.example.com", "default/api/80"),  # exact beats wildcard and host-less
        ("b.example.com", "default/other/80"),  # wildcard beats host-less
        ("c.org", "default/web/80"),  # host-less
    ],
)
def test_host_precedence_across_ingresses(request_host: str, expected: str) -> None:
    result = run(
        ingress("any", rules=[rule(None, path("/", "web"))]),
        ingress("wild", rules=[rule("*.example.com", path("/", "other"))]),
        ingress("exact", rules=[rule("a.example.com", path("/", "api"))]),
    )
    assert routed(result, request_host, "/") == expected


def test_matched_host_does_not_fall_back_to_host_less_rules() -> None:
    result = run(
        ingress("any", rules=[rule(None, path("/", "web"))]),
        ingress("exact", rules=[rule("a.example.com", path("/api", "api"))]),
    )
    assert routed(result, "a.example.com", "/api") == "default/api/80"
    assert routed(result, "a.example.com", "/web") is None


# ---- paths ------------------------------------------------------------------------------------

PATH_ROWS: list[tuple[str, Raw, str | None, str | None, list[tuple[str, bool]]]] = [
    # (id, path raw, problem, stored (path, match), [(request path, routed?)])
    ("prefix", path("/foo", path_type="Prefix"), None, "/foo prefix", [("/foo/bar", True)]),
    (
        "prefix-trailing-slash",
        path("/foo/", path_type="Prefix"),
        None,
        "/foo prefix",
        [("/foo", True)],
    ),
    ("prefix-root", path("/", path_type="Prefix"), None, "/ prefix", [("/anything", True)]),
    (
        "exact",
        path("/foo", path_type="Exact"),
        None,
        "/foo exact",
        [("/foo", True), ("/foo/", False)],
    ),
    (
        "implementation-specific-is-prefix",
        path("/foo", path_type="ImplementationSpecific"),
        None,
        "/foo prefix",
        [("/foo/x", True), ("/foox", False)],
    ),
    (
        "implementation-specific-empty-path",
        path(None, path_type="ImplementationSpecific"),
        None,
        "/ prefix",
        [("/x", True)],
    ),
    ("missing-path-type", path("/foo", path_type=None), "InvalidPathType", None, []),
    ("unknown-path-type", path("/foo", path_type="Regex"), "InvalidPathType", None, []),
    ("relative", path("foo", path_type="Prefix"), "InvalidPath", None, []),
    ("missing-path-prefix", path(None, path_type="Prefix"), "InvalidPath", None, []),
    ("space", path("/a b", path_type="Prefix"), "InvalidPath", None, []),
    ("query", path("/a?b=1", path_type="Exact"), "InvalidPath", None, []),
    ("bad-percent", path("/a%zz", path_type="Prefix"), "InvalidPath", None, []),
    ("double-slash", path("/a//b", path_type="Prefix"), "InvalidPath", None, []),
    ("dot-dot", path("/a/../b", path_type="Exact"), "InvalidPath", None, []),
    ("regex-chars", path("/a{1,3}", path_type="Prefix"), "InvalidPath", None, []),
    ("percent-ok", path("/a%20b", path_type="Prefix"), None, "/a%20b prefix", [("/a%20b", True)]),
    (
        "resource-backend",
        path("/foo", backend_raw=resource_backend()),
        "UnsupportedBackend",
        None,
        [],
    ),
    ("no-backend", path("/foo", backend_raw={}), "InvalidBackend", None, []),
]


@pytest.mark.parametrize(
    ("raw_path", "problem", "stored", "requests"),
    [pytest.param(*row[1:], id=row[0]) for row in PATH_ROWS],
)
def test_paths(
    raw_path: Raw, problem: str | None, stored: str | None, requests: list[tuple[str, bool]]
) -> None:
    result = run(ingress(rules=[rule("a.example.com", raw_path)]))
    vhosts = result.snapshot.routes.virtual_hosts
    assert [v.host for v in vhosts] == ["a.example.com"]  # the host exists either way
    if problem is not None:
        assert reasons(result) == {("default/web", problem)}
        assert vhosts[0].rules == ()
        return
    assert result.problems == ()
    assert [f"{r.path} {r.match}" for r in vhosts[0].rules] == [stored]
    for request_path, ok in requests:
        assert (routed(result, "a.example.com", request_path) is not None) is ok


def test_invalid_path_drops_only_that_path() -> None:
    result = run(
        ingress(
            rules=[
                rule("a.example.com", path("bad"), path("/good", "api"), path("/x", path_type=None))
            ]
        )
    )
    assert sorted(p.reason for p in result.problems) == ["InvalidPath", "InvalidPathType"]
    assert routed(result, "a.example.com", "/good") == "default/api/80"


def test_rules_sorted_longest_first_exact_first() -> None:
    paths = [
        path("/", "web"),
        path("/api", "api", path_type="Prefix"),
        path("/api", "other", path_type="Exact"),
        path("/api/v1", "api"),
    ]
    result = run(ingress(rules=[rule("a.example.com", *paths)]))
    rules = result.snapshot.routes.virtual_hosts[0].rules
    assert [(r.path, r.match) for r in rules] == [
        ("/api/v1", "prefix"),
        ("/api", "exact"),
        ("/api", "prefix"),
        ("/", "prefix"),
    ]
    assert routed(result, "a.example.com", "/api") == "default/other/80"
    assert routed(result, "a.example.com", "/api/") == "default/api/80"


# ---- defaultBackend -------------------------------------------------------------------------


def test_default_backend_only_catches_everything_else() -> None:
    result = run(
        ingress("catch", rules=[], default_backend=backend("other")),
        ingress("site", rules=[rule("a.example.com", path("/api", "api"))]),
    )
    assert result.snapshot.routes.default is not None
    assert routed(result, "nowhere.org", "/x") == "default/other/80"
    assert routed(result, "a.example.com", "/api") == "default/api/80"
    # A matched host with no matching path also ends at the global default.
    assert routed(result, "a.example.com", "/web") == "default/other/80"


@pytest.mark.parametrize(
    ("a_created", "b_created", "winner", "loser"),
    [
        (10, 0, "default/b", "default/a"),  # oldest wins
        (0, 10, "default/a", "default/b"),
        (5, 5, "default/a", "default/b"),  # tie: namespace/name ascending
        (None, 5, "default/b", "default/a"),  # undated (manifest file) after dated
    ],
)
def test_default_backend_conflict(
    a_created: int | None, b_created: int | None, winner: str, loser: str
) -> None:
    result = run(
        ingress("a", rules=[], default_backend=backend("api"), created=a_created),
        ingress("b", rules=[], default_backend=backend("other"), created=b_created),
    )
    default = result.snapshot.routes.default
    assert default is not None and default.ingress == winner
    assert reasons(result) == {(loser, "DefaultBackendConflict")}


def test_default_backend_with_rules_is_the_host_fallback() -> None:
    result = run(
        ingress(
            rules=[
                rule("a.example.com", path("/api", "api")),
                rule("b.example.com", path("/b", "api")),
            ],
            default_backend=backend("other"),
        ),
        ingress("site2", rules=[rule("c.example.com", path("/c", "api"))]),
    )
    assert result.snapshot.routes.default is None
    assert routed(result, "a.example.com", "/api") == "default/api/80"
    assert routed(result, "a.example.com", "/else") == "default/other/80"
    assert routed(result, "b.example.com", "/else") == "default/other/80"
    assert routed(result, "c.example.com", "/else") is None  # another Ingress's host
    assert routed(result, "z.example.com", "/") is None


def test_host_fallback_conflict_between_ingresses() -> None:
    result = run(
        ingress(
            "a",
            rules=[rule("a.example.com", path("/a"))],
            default_backend=backend("api"),
            created=0,
        ),
        ingress(
            "b",
            rules=[rule("a.example.com", path("/b"))],
            default_backend=backend("other"),
            created=1,
        ),
    )
    assert routed(result, "a.example.com", "/zzz") == "default/api/80"
    assert reasons(result) == {("default/b", "DefaultBackendConflict")}


def test_default_backend_with_resource_is_unsupported() -> None:
    result = run(ingress(rules=[], default_backend=resource_backend()))
    assert reasons(result) == {("default/web", "UnsupportedBackend")}
    assert result.snapshot.routes.default is None


# ---- merging and conflicts ------------------------------------------------------------------


def test_ingresses_merge_into_one_host() -> None:
    result = run(
        ingress("a", rules=[rule("a.example.com", path("/api", "api"))]),
        ingress("b", "team", rules=[rule("a.example.com", path("/web", "web"))]),
        service("web", "team"),
    )
    assert [v.host for v in result.snapshot.routes.virtual_hosts] == ["a.example.com"]
    assert routed(result, "a.example.com", "/api") == "default/api/80"
    assert routed(result, "a.example.com", "/web") == "team/web/80"
    assert result.problems == ()


@pytest.mark.parametrize(
    ("a", "b", "winner", "loser"),
    [
        ((0, "default", "x"), (10, "default", "y"), "default/x", "default/y"),
        ((10, "default", "x"), (0, "default", "y"), "default/y", "default/x"),
        ((5, "b-ns", "x"), (5, "a-ns", "y"), "a-ns/y", "b-ns/x"),  # tie: ns/name
        ((5, "ns", "a"), (5, "ns", "b"), "ns/a", "ns/b"),
    ],
)
def test_path_conflict(
    a: tuple[int, str, str], b: tuple[int, str, str], winner: str, loser: str
) -> None:
    objs: list[Raw] = []
    for created, ns, name in (a, b):
        objs += [
            ingress(name, ns, rules=[rule("a.example.com", path("/api/", name))], created=created),
            service(name, ns),
        ]
    result = run(*objs)
    rules = result.snapshot.routes.virtual_hosts[0].rules
    assert [r.ingress for r in rules] == [winner]
    assert reasons(result) == {(loser, "PathConflict")}
    assert f"Ingress {winner}" in result.problems[0].message


def test_same_path_different_match_is_no_conflict() -> None:
    result = run(
        ingress("a", rules=[rule("a.example.com", path("/api", "api", path_type="Exact"))]),
        ingress("b", rules=[rule("a.example.com", path("/api", "other", path_type="Prefix"))]),
    )
    assert result.problems == ()
    assert routed(result, "a.example.com", "/api") == "default/api/80"
    assert routed(result, "a.example.com", "/api/x") == "default/other/80"


def test_prefix_with_and_without_trailing_slash_conflict() -> None:
    result = run(
        ingress("a", rules=[rule("a.example.com", path("/api", "api"))], created=0),
        ingress("b", rules=[rule("a.example.com", path("/api/", "other"))], created=1),
    )
    assert reasons(result) == {("default/b", "PathConflict")}
    assert routed(result, "a.example.com", "/api/") == "default/api/80"


def test_duplicate_path_within_one_ingress() -> None:
    result = run(ingress(rules=[rule("a.example.com", path("/x", "api"), path("/x", "other"))]))
    assert reasons(result) == {("default/web", "PathConflict")}
    assert routed(result, "a.example.com", "/x") == "default/api/80"


def test_loser_of_a_conflict_keeps_its_other_paths() -> None:
    result = run(
        ingress("a", rules=[rule("a.example.com", path("/x", "api"))], created=0),
        ingress(
            "b", rules=[rule("a.example.com", path("/x", "other"), path("/y", "other"))], created=1
        ),
    )
    assert routed(result, "a.example.com", "/x") == "default/api/80"
    assert routed(result, "a.example.com", "/y") == "default/other/80"


def test_output_is_deterministic_regardless_of_insertion_order() -> None:
    objs = [
        ingress("b", rules=[rule("b.example.com", path("/", "api"))], created=1),
        ingress("a", rules=[rule("a.example.com", path("/", "web")), rule("bad host")], created=1),
        ingress("c", rules=[rule("a.example.com", path("/", "ghost"))], created=1),
    ]
    first = run(*objs)
    second = run(*reversed(objs))
    assert first == second
    assert list(first.problems) == sorted(first.problems)
    assert [b.key for b in first.snapshot.backends] == sorted(
        b.key for b in first.snapshot.backends
    )
