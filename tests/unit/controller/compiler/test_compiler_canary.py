"""Compiler tables for canaries: the canary annotations parsed as ingress-nginx's canary parser
reads them, and canary Ingresses paired with the main Ingresses' rules.

Sources: internal/ingress/annotations/canary/main.go (validators: ValidateBool, ValidateInt,
BasicCharsRegex, IsValidRegex; "configured but not enabled"), internal/ingress/controller/
controller.go (mergeAlternativeBackends: same host, path and pathType; a canary Ingress makes
no servers; canMergeBackend: not into its own backend), rootfs/etc/nginx/lua/balancer.lua
(route_to_alternative_balancer: a weight total of 100 unless larger; one alternative backend),
test/e2e/annotations/canary.go, docs/user-guide/nginx-configuration/annotations.md#canary.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.annotations import CanaryRules, parse_annotations
from controller.compiler.catalogue import ANNOTATIONS
from proxy.affinity import HashChooser, StickyChooser, backend_tag
from proxy.config import Canary, HashBy, PathRule
from proxy.policy import Policies
from proxy.route import Route
from proxy.settings import ProxySettings
from tests.kube_factory import (
    backend,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    store_of,
)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
ON = {N + "canary": "true"}

PARSED: dict[str, tuple[dict[str, str], CanaryRules | None, int]] = {
    # id: (annotations, rules, number of InvalidAnnotation errors)
    "canary.go header with no value": (
        {**ON, N + "canary-by-header": "CanaryByHeader"},
        CanaryRules(header="canarybyheader"),
        0,
    ),
    "canary.go header with value": (
        {**ON, N + "canary-by-header": "CanaryByHeader", N + "canary-by-header-value": "DoCanary"},
        CanaryRules(header="canarybyheader", header_value="DoCanary"),
        0,
    ),
    "canary.go header with pattern": (
        {**ON, N + "canary-by-header": "H", N + "canary-by-header-pattern": "^Do[A-Z][a-z]+y$"},
        CanaryRules(header="h", header_pattern="^Do[A-Z][a-z]+y$"),
        0,
    ),
    # canary.go "should routes to mainline upstream when the given Regex causes error": the
    # pattern passes ingress-nginx's validator and fails in Lua: kept, marked invalid.
    "pattern that does not compile is kept as invalid": (
        {**ON, N + "canary-by-header": "H", N + "canary-by-header-pattern": "[][**da?$&*"},
        CanaryRules(header="h", header_pattern="[][**da?$&*", header_invalid=True),
        1,
    ),
    # IsValidRegex refuses other characters: the pattern is left out (ingress-nginx's default).
    "pattern with refused characters is left out": (
        {**ON, N + "canary-by-header": "H", N + "canary-by-header-pattern": "a\\sb#"},
        CanaryRules(header="h"),
        1,
    ),
    "canary.go cookie": (
        {**ON, N + "canary-by-cookie": "Canary-By-Cookie"},
        CanaryRules(cookie="Canary-By-Cookie"),
        0,
    ),
    "canary.go weight": ({**ON, N + "canary-weight": "50"}, CanaryRules(weight=50), 0),
    "canary.go weight total": (
        {**ON, N + "canary-weight": "100", N + "canary-weight-total": "200"},
        CanaryRules(weight=100, weight_total=200),
        0,
    ),
    # balancer.lua: weightTotal is used only when above 100.
    "weight total below 100 counts as 100": (
        {**ON, N + "canary-weight": "10", N + "canary-weight-total": "20"},
        CanaryRules(weight=10, weight_total=100),
        0,
    ),
    "negative weight never chooses": ({**ON, N + "canary-weight": "-5"}, CanaryRules(), 0),
    "weight not an integer: left out (main.go defaults to 0)": (
        {**ON, N + "canary-weight": "ten"},
        CanaryRules(),
        1,
    ),
    "header name outside BasicChars: left out": (
        {**ON, N + "canary-by-header": "X Canary;"},
        CanaryRules(),
        1,
    ),
    "canary false: an ordinary Ingress": ({N + "canary": "false"}, None, 0),
    # main.go: "configured but not enabled".
    "rules without canary true": ({N + "canary-weight": "50"}, None, 1),
    "rules with canary false": ({N + "canary": "false", N + "canary-by-cookie": "c"}, None, 1),
    "canary not a boolean (ParseBool)": ({N + "canary": "yes"}, None, 1),
    "portico prefix wins": (
        {**ON, N + "canary-weight": "10", P + "canary-weight": "30"},
        CanaryRules(weight=30),
        0,
    ),
    # affinity-canary-behavior (sessionaffinity/main.go: ValidateOptions(sticky, legacy),
    # case-sensitive, trimmed; an invalid value reads as "", which mergeAlternativeBackend
    # treats as sticky). canary.go "... affinitized to canary (explicit sticky behavior)".
    "affinity-canary-behavior sticky": (
        {**ON, N + "affinity-canary-behavior": "sticky"},
        CanaryRules(affinity_behavior="sticky"),
        0,
    ),
    # canary.go "routes traffic to either mainline or canary backend (legacy behavior)".
    "affinity-canary-behavior legacy": (
        {**ON, N + "affinity-canary-behavior": "legacy"},
        CanaryRules(affinity_behavior="legacy"),
        0,
    ),
    "affinity-canary-behavior trimmed": (
        {**ON, N + "affinity-canary-behavior": " legacy "},
        CanaryRules(affinity_behavior="legacy"),
        0,
    ),
    "affinity-canary-behavior case-sensitive: invalid, sticky applies": (
        {**ON, N + "affinity-canary-behavior": "Legacy"},
        CanaryRules(),
        1,
    ),
    "affinity-canary-behavior unknown: invalid, sticky applies": (
        {**ON, N + "affinity-canary-behavior": "none"},
        CanaryRules(),
        1,
    ),
    "affinity-canary-behavior portico prefix wins": (
        {**ON, N + "affinity-canary-behavior": "sticky", P + "affinity-canary-behavior": "legacy"},
        CanaryRules(affinity_behavior="legacy"),
        0,
    ),
    # annotations.md#canary: upstream-hash-by is not ignored on a canary (controller.go
    # createUpstreams sets it on the canary's backend).
    "the canary's own upstream-hash-by": (
        {
            **ON,
            N + "upstream-hash-by": "$request_uri",
            N + "upstream-hash-by-subset": "true",
            N + "upstream-hash-by-subset-size": "2",
        },
        CanaryRules(hash_by=HashBy("$request_uri", subset=True, subset_size=2)),
        0,
    ),
    "its upstream-hash-by beside its (ignored) affinity": (
        {**ON, N + "affinity": "cookie", N + "upstream-hash-by": "$remote_addr"},
        CanaryRules(hash_by=HashBy("$remote_addr")),
        0,
    ),
}


@pytest.mark.parametrize("case", PARSED.values(), ids=PARSED.keys())
def test_canary_annotations(case: tuple[dict[str, str], CanaryRules | None, int]) -> None:
    notes, expected, errors = case
    opts, problems = parse_annotations(notes)
    assert opts.canary == expected
    assert len(problems) == errors, problems


def _objects(*ingresses: dict[str, Any]) -> CompileResult:
    objects = [
        ingress_class(),
        service("main", ports=[service_port(80, "http", 8080)]),
        endpoint_slice("main", endpoints=["10.0.0.1"], ports=[("http", 8080)]),
        service("canary", ports=[service_port(80, "http", 8080)]),
        endpoint_slice("canary", endpoints=["10.0.0.2"], ports=[("http", 8080)]),
        service("other", ports=[service_port(80, "http", 8080)]),
        endpoint_slice("other", endpoints=["10.0.0.3"], ports=[("http", 8080)]),
        *ingresses,
    ]
    return compile_view(store_of(*objects), CompileSettings())


def _main(
    paths: tuple[dict[str, Any], ...] = (), name: str = "main", created: int = 10
) -> dict[str, Any]:
    return ingress(name, rules=[rule("foo", *(paths or (path("/info", "main"),)))], created=created)


def _canary(
    notes: dict[str, str] | None = None,
    paths: tuple[dict[str, Any], ...] = (),
    name: str = "main-canary",
    host: str = "foo",
    created: int = 20,
) -> dict[str, Any]:
    return ingress(
        name,
        annotations={**ON, N + "canary-by-header": "CanaryByHeader", **(notes or {})},
        rules=[rule(host, *(paths or (path("/info", "canary"),)))],
        created=created,
    )


def _rules(result: CompileResult, host: str = "foo") -> list[PathRule]:
    vhosts = {v.host: v for v in result.snapshot.routes.virtual_hosts}
    return list(vhosts[host].rules) if host in vhosts else []


def _reasons(result: CompileResult) -> list[tuple[str, str]]:
    return sorted((p.ref, p.reason) for p in result.problems)


def test_canary_pairs_with_the_main_rule() -> None:
    # canary.go "should route requests to the correct upstream if mainline ingress is created
    # before the canary ingress": no PathConflict, one rule carrying the canary.
    result = _objects(_main(), _canary({N + "canary-weight": "20"}))
    assert _reasons(result) == []
    (only,) = _rules(result)
    assert (only.backend, only.ingress) == ("default/main/80", "default/main")
    assert only.options.step(Canary) == Canary(
        "default/canary/80",
        "default/canary",
        "default/main-canary",
        "80",
        header="canarybyheader",
        weight=20,
    )
    assert "default/canary/80" in {b.key for b in result.snapshot.backends}


def test_canary_created_first_pairs_the_same() -> None:
    # canary.go "... if mainline ingress is created after the canary ingress".
    result = _objects(_canary(created=1), _main(created=10))
    assert _reasons(result) == []
    (only,) = _rules(result)
    assert only.ingress == "default/main"
    assert only.options.step(Canary) is not None


UNPAIRED: dict[str, tuple[dict[str, Any], ...]] = {
    # canary.go "should return 404 status for requests to the canary if no matching ingress is
    # found" / "should not use canary with domain as a server": no host made for it.
    "no main Ingress": (_canary(),),
    "another host": (_main(), _canary(host="bar")),
    "another path": (_main(), _canary(paths=(path("/other", "canary"),))),
    "another pathType": (_main(), _canary(paths=(path("/info", "canary", path_type="Exact"),))),
    "the path written otherwise": (_main(), _canary(paths=(path("/info/", "canary"),))),
    # canMergeBackend: never into its own backend.
    "the main rule's own backend": (_main(), _canary(paths=(path("/info", "main"),))),
    # "a maximum of one canary ingress can be applied per Ingress rule": the older wins.
    "a second canary": (_main(), _canary(), _canary(name="z-canary", created=30)),
}


@pytest.mark.parametrize("objects", UNPAIRED.values(), ids=UNPAIRED.keys())
def test_unpaired_canary_serves_nothing(objects: tuple[dict[str, Any], ...]) -> None:
    result = _objects(*objects)
    unpaired = [p for p in result.problems if p.reason == "CanaryUnpaired"]
    assert len(unpaired) == 1, result.problems
    assert unpaired[0].ref in ("default/main-canary", "default/z-canary")
    assert "PathConflict" not in {p.reason for p in result.problems}
    for host in ("foo", "bar"):
        for r in _rules(result, host):
            assert r.ingress == "default/main"
            step = r.options.step(Canary)
            assert step is None or step.ingress == "default/main-canary"
    assert "bar" not in {v.host for v in result.snapshot.routes.virtual_hosts}


def test_canary_annotations_other_than_canary_are_ignored() -> None:
    # annotations.md#canary: the canary Ingress's other annotations are ignored; its TLS too.
    notes = {N + "permanent-redirect": "https://elsewhere.example/", N + "proxy-body-size": "1"}
    result = _objects(_main(), _canary(notes))
    (only,) = _rules(result)
    assert [type(s).__name__ for s in only.options.policy] == ["Canary"]


def test_canary_rules_without_canary_true_compete_as_ordinary() -> None:
    # main.go "configured but not enabled": an ordinary Ingress, so the older one wins.
    plain = ingress(
        "main-canary",
        annotations={N + "canary-weight": "50"},
        rules=[rule("foo", path("/info", "canary"))],
        created=20,
    )
    result = _objects(_main(), plain)
    assert ("default/main-canary", "InvalidAnnotation") in _reasons(result)
    assert ("default/main-canary", "PathConflict") in _reasons(result)
    (only,) = _rules(result)
    assert only.options.step(Canary) is None


def test_canary_default_backend_pairs_with_the_global_default() -> None:
    # canary.go "should not use canary as a catch-all server": the main catch-all serves, the
    # canary is its alternative.
    main = ingress("main", rules=[], default_backend=backend("main", 80), created=10)
    canary = ingress(
        "main-canary", annotations=ON, rules=[], default_backend=backend("canary", 80), created=20
    )
    result = _objects(main, canary)
    assert _reasons(result) == []
    default = result.snapshot.routes.default
    assert default is not None and default.ingress == "default/main"
    step = default.options.step(Canary)
    assert step is not None and step.backend == "default/canary/80"


def test_canary_keeps_its_own_load_balance() -> None:
    # annotations.md#canary: load-balance is one of the canary Ingress's annotations not
    # ignored (its backend's balancer); the main rule keeps its own.
    result = _objects(_main(), _canary({N + "load-balance": "ewma"}))
    (only,) = _rules(result)
    assert only.options.balancer == "round_robin"
    step = only.options.step(Canary)
    assert step is not None and step.balancer == "least_request"
    route = Route(only, {}, ProxySettings(), Policies(ProxySettings()))
    assert route.canary_route is not None
    assert route.canary_route.balancer == "least_request"
    assert route.canary_route.rule.options.step(Canary) is None


def test_canary_with_unenforced_access_control_is_not_used() -> None:
    # Fail closed: the canary's own access control is ignored by ingress-nginx, but while
    # Portico does not enforce it the canary gets no request (the main rule serves them all).
    unenforced = sorted(e.name for e in ANNOTATIONS.values() if e.fails_closed)
    if not unenforced:
        pytest.skip("every access-control annotation is enforced")
    notes = {N + unenforced[0]: "on"}
    result = _objects(_main(), _canary(notes))
    reasons = _reasons(result)
    assert ("default/main-canary", "CanaryUnpaired") in reasons
    (only,) = _rules(result)
    assert only.options.step(Canary) is None
    assert only.options.policy == ()


# The canary backend's pod choice and the affinity cookie's hold (controller.go
# mergeAlternativeBackend: with a canary-behavior other than "legacy" the main backend's
# SessionAffinity is copied to the canary's; createServers never applies a canary's own
# affinity (its backend is NoServer); createUpstreams keeps its upstream-hash-by;
# balancer.lua get_implementation: sticky before chash).
AFFINITY = {N + "affinity": "cookie", N + "session-cookie-name": "aff"}
CANARY_CHOICE: dict[str, tuple[dict[str, str], dict[str, str], str, str | None, bool]] = {
    # id: (main notes, canary notes, canary chooser, its hash expression, canary held by tag)
    "sticky (default): the main's sessions, the canary's tag": (AFFINITY, {}, "sticky", None, True),
    "legacy: no affinity on the canary": (
        AFFINITY,
        {N + "affinity-canary-behavior": "legacy"},
        "none",
        None,
        False,
    ),
    "legacy: the canary's own hash": (
        AFFINITY,
        {N + "affinity-canary-behavior": "legacy", N + "upstream-hash-by": "$remote_addr"},
        "hash",
        "$remote_addr",
        False,
    ),
    "sticky wins over the canary's own hash": (
        AFFINITY,
        {N + "upstream-hash-by": "$remote_addr"},
        "sticky",
        None,
        True,
    ),
    "the main's hash is not the canary's": (
        {N + "upstream-hash-by": "$request_uri"},
        {},
        "none",
        None,
        False,
    ),
    "the canary's own hash": (
        {},
        {N + "upstream-hash-by": "$remote_addr"},
        "hash",
        "$remote_addr",
        False,
    ),
    "the canary's own affinity is ignored": ({}, AFFINITY, "none", None, False),
}


@pytest.mark.parametrize("case", CANARY_CHOICE.values(), ids=CANARY_CHOICE.keys())
def test_canary_backend_pod_choice(
    case: tuple[dict[str, str], dict[str, str], str, str | None, bool],
) -> None:
    main_notes, canary_notes, kind, expression, held = case
    main = ingress(
        "main", annotations=main_notes, rules=[rule("foo", path("/info", "main"))], created=10
    )
    result = _objects(main, _canary(canary_notes))
    assert [p for p in result.problems if p.reason != "UnsupportedAnnotation"] == []
    (only,) = _rules(result)
    route = Route(only, {}, ProxySettings(), Policies(ProxySettings()))
    canary = route.canary_route
    assert canary is not None
    chooser = canary.affinity
    if kind == "sticky":
        assert isinstance(chooser, StickyChooser)
        assert isinstance(route.affinity, StickyChooser)
        # The main rule's cookie and attributes, the canary's backend in it.
        assert chooser.spec == route.affinity.spec
        assert chooser.tag == backend_tag("default/canary/80").encode()
    elif kind == "hash":
        assert isinstance(chooser, HashChooser) and chooser.spec.expression == expression
    else:
        assert chooser is None
    sessions = route.canary_sessions
    if N + "affinity" not in main_notes:
        assert sessions is None
    else:
        assert sessions is not None and sessions.cookie_name == b"aff"
        assert sessions.main_tag == backend_tag("default/main/80").encode()
        assert sessions.canary_tag == (backend_tag("default/canary/80").encode() if held else b"")
