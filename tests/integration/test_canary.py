"""Canaries through real sockets: which pod serves each request, as ingress-nginx decides it.

Each host below has a main Ingress (Service main: the pod on 127.0.0.2) and a canary Ingress
(Service canary: the pod on 127.0.0.3) for the same host and path, compiled by the real compiler
from ingress-nginx's annotations; every row checks which pod answered (or the status when none
should). The model is test/e2e/annotations/canary.go (its test names are cited per row) with
the docs (annotations.md#canary: precedence header, cookie, weight) and balancer.lua's
route_to_alternative_balancer. The last test runs `portico serve` on a manifest directory and
edits the canary Ingress live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import yaml
from backends import Client, Pod
from tls_env import running

from controller.compiler import CompileResult, CompileSettings, compile_view
from proxy.affinity import backend_tag
from tests.integration.manifests import ingress as manifest_ingress
from tests.integration.manifests import ingress_class, service_with_pods
from tests.integration.serving import echo_pods, eventually, free_port, start_serve, stop_serve
from tests.kube_factory import (
    endpoint,
    endpoint_slice,
    ingress,
    path,
    rule,
    service,
    service_port,
    store_of,
)
from tests.kube_factory import ingress_class as kube_ingress_class

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(60)]

N = "nginx.ingress.kubernetes.io/"
ON = {N + "canary": "true"}
BY_HEADER = {**ON, N + "canary-by-header": "CanaryByHeader"}
PATTERN = "^Do[A-Z][a-z]+y$"

# host -> the canary Ingress's annotations (None: no canary Ingress; the main Ingress of each
# host routes Prefix /info to Service main).
HOSTS: dict[str, dict[str, str] | None] = {
    "header": BY_HEADER,
    "header-value": {**BY_HEADER, N + "canary-by-header-value": "DoCanary"},
    "header-pattern": {**BY_HEADER, N + "canary-by-header-pattern": PATTERN},
    "value-and-pattern": {
        **BY_HEADER,
        N + "canary-by-header-value": "DoCanary",
        N + "canary-by-header-pattern": PATTERN,
    },
    "bad-pattern": {
        **BY_HEADER,
        N + "canary-by-header-pattern": "[][**da?$&*",
        N + "canary-by-cookie": "CanaryByCookie",
    },
    "value-and-cookie": {
        **BY_HEADER,
        N + "canary-by-header-value": "DoCanary",
        N + "canary-by-cookie": "CanaryByCookie",
    },
    "cookie": {**ON, N + "canary-by-cookie": "Canary-By-Cookie"},
    "weight-0": {**ON, N + "canary-weight": "0"},
    "weight-100": {**ON, N + "canary-weight": "100"},
    "weight-total": {**ON, N + "canary-weight": "1000", N + "canary-weight-total": "1000"},
    "precedence": {
        **BY_HEADER,
        N + "canary-by-cookie": "CanaryByCookie",
        N + "canary-weight": "100",
    },
    # The canary's other annotations are ignored (annotations.md#canary): no redirect.
    "ignored": {
        **BY_HEADER,
        N + "permanent-redirect": "https://elsewhere.example/",
        N + "proxy-body-size": "1",
    },
    # The main Ingress's policy applies to the canary's requests (its location is the main's).
    "guarded": BY_HEADER,
    "no-canary": None,
    # The canary's Service without endpoints, or missing (see CANARY_SERVICES).
    "empty-canary": BY_HEADER,
    "missing-canary": BY_HEADER,
}
# The canary Ingress's Service per host (default: canary).
CANARY_SERVICES: dict[str, str] = {"empty-canary": "empty", "missing-canary": "ghost"}
# The main Ingress's annotations per host (default: none).
MAIN_NOTES: dict[str, dict[str, str]] = {
    "guarded": {N + "whitelist-source-range": "10.0.0.0/8"},
}


class Case(NamedTuple):
    host: str
    expect: str | int  # "main" or "canary" (the pod that answers), or a status
    headers: dict[str, str] | None = None
    target: str = "/info"


CASES: dict[str, Case] = {
    # canary.go "when canaried by header with no value / should route requests to the correct
    # upstream".
    "header-always": Case("header", "canary", {"CanaryByHeader": "always"}),
    "header-never": Case("header", "main", {"CanaryByHeader": "never"}),
    "header-other-value": Case("header", "main", {"CanaryByHeader": "badheadervalue"}),
    "header-absent": Case("header", "main"),
    # nginx's $http_ variables: the field name is case-insensitive.
    "header-name-any-case": Case("header", "canary", {"canarybyheader": "always"}),
    # Exact values: "Always" is not "always" (balancer.lua compares bytes).
    "header-value-case-matters": Case("header", "main", {"CanaryByHeader": "Always"}),
    # canary.go "when canaried by header with value".
    "value-match": Case("header-value", "canary", {"CanaryByHeader": "DoCanary"}),
    "value-always-is-not-special": Case("header-value", "main", {"CanaryByHeader": "always"}),
    "value-never": Case("header-value", "main", {"CanaryByHeader": "never"}),
    "value-other": Case("header-value", "main", {"CanaryByHeader": "otherheadervalue"}),
    # canary.go "when canaried by header with value and pattern".
    "pattern-match": Case("header-pattern", "canary", {"CanaryByHeader": "DoCanary"}),
    "pattern-no-match": Case("header-pattern", "main", {"CanaryByHeader": "Docanary"}),
    "pattern-ignored-when-value-set": Case(
        "value-and-pattern", "main", {"CanaryByHeader": "DoCananry"}
    ),
    # canary.go "should routes to mainline upstream when the given Regex causes error".
    "bad-pattern-stays-main": Case(
        "bad-pattern", "main", {"CanaryByHeader": "DoCanary", "Cookie": "CanaryByCookie=always"}
    ),
    "bad-pattern-without-header-cookie-applies": Case(
        "bad-pattern", "canary", {"Cookie": "CanaryByCookie=always"}
    ),
    # canary.go "when canaried by header with value and cookie".
    "value-mismatch-then-cookie": Case(
        "value-and-cookie",
        "canary",
        {"CanaryByHeader": "otherheadervalue", "Cookie": "CanaryByCookie=always"},
    ),
    # canary.go "when canaried by cookie / respects always and never values".
    "cookie-always": Case("cookie", "canary", {"Cookie": "Canary-By-Cookie=always"}),
    "cookie-never": Case("cookie", "main", {"Cookie": "Canary-By-Cookie=never"}),
    "cookie-other-value": Case("cookie", "main", {"Cookie": "Canary-By-Cookie=badcookievalue"}),
    "cookie-among-others": Case(
        "cookie", "canary", {"Cookie": "a=1; Canary-By-Cookie=always; b=2"}
    ),
    "cookie-absent": Case("cookie", "main", {"Cookie": "other=always"}),
    # canary.go "when canaried by weight".
    "weight-0-only-main": Case("weight-0", "main"),
    "weight-100-only-canary": Case("weight-100", "canary"),
    "weight-equal-to-total": Case("weight-total", "canary"),
    # Precedence (annotations.md#canary): header, then cookie, then weight.
    "header-never-beats-weight": Case("precedence", "main", {"CanaryByHeader": "never"}),
    "header-never-beats-cookie": Case(
        "precedence", "main", {"CanaryByHeader": "never", "Cookie": "CanaryByCookie=always"}
    ),
    "cookie-never-beats-weight": Case("precedence", "main", {"Cookie": "CanaryByCookie=never"}),
    "unknown-header-then-weight": Case("precedence", "canary", {"CanaryByHeader": "maybe"}),
    "nothing-then-weight": Case("precedence", "canary"),
    # Only the canary's rule pairs: another path of the host is the main Ingress's alone.
    "other-path-not-canaried": Case("header", 404, {"CanaryByHeader": "always"}, "/other"),
    "canary-annotations-ignored": Case("ignored", "canary", {"CanaryByHeader": "always"}),
    "main-policy-guards-the-canary": Case("guarded", 403, {"CanaryByHeader": "always"}),
    "no-canary-ingress": Case("no-canary", "main", {"CanaryByHeader": "always"}),
    # balancer.lua: a canary backend without endpoints has no balancer, and
    # route_to_alternative_balancer keeps the main one (a canary scaled to zero).
    "canary-without-endpoints-stays-main": Case(
        "empty-canary", "main", {"CanaryByHeader": "always"}
    ),
    "canary-service-missing-stays-main": Case(
        "missing-canary", "main", {"CanaryByHeader": "always"}
    ),
    # canary.go "should return 404 status for requests to the canary if no matching ingress
    # is found": a canary alone makes no host.
    "unpaired-canary-404": Case("lonely", 404, {"CanaryByHeader": "always"}),
}


def _compiled(main: Pod, canary: Pod, hosts: dict[str, dict[str, str] | None]) -> CompileResult:
    objects: list[dict[str, Any]] = [
        kube_ingress_class(),
        service("empty", ports=[service_port(80, "http", 80)]),
    ]
    for name, pod in (("main", main), ("canary", canary)):
        objects.append(service(name, ports=[service_port(80, "http", pod.port)]))
        objects.append(
            endpoint_slice(name, name, endpoints=[endpoint(pod.host)], ports=[("http", pod.port)])
        )
    for host, notes in hosts.items():
        main_rule = rule(f"{host}.test", path("/info", "main"))
        objects.append(
            ingress(host, annotations=MAIN_NOTES.get(host), rules=[main_rule], created=10)
        )
        if notes is not None:
            canary_rule = rule(f"{host}.test", path("/info", CANARY_SERVICES.get(host, "canary")))
            objects.append(
                ingress(f"{host}-canary", annotations=notes, rules=[canary_rule], created=20)
            )
    lonely = rule("lonely.test", path("/info", "canary"))
    objects.append(ingress("lonely-canary", annotations=BY_HEADER, rules=[lonely], created=20))
    return compile_view(store_of(*objects), CompileSettings())


@pytest.fixture
async def canary_pod() -> AsyncIterator[Pod]:
    started = await Pod("127.0.0.3").start()
    yield started
    await started.stop()


def _who(resp: Any, main: Pod, canary: Pod) -> str | int:
    if resp.status != 200:
        return int(resp.status)
    pod = resp.json()["pod"]
    return {main.host: "main", canary.host: "canary"}[pod]


def test_problems(pod: Pod) -> None:
    result = _compiled(pod, pod, HOSTS)
    reasons = sorted({(p.ref, p.reason) for p in result.problems})
    assert reasons == [
        ("default/bad-pattern-canary", "InvalidAnnotation"),
        ("default/lonely-canary", "CanaryUnpaired"),
        ("default/missing-canary-canary", "ServiceNotFound"),
    ], result.problems


async def test_canary(pod: Pod, canary_pod: Pod) -> None:
    # One proxy for every row (the rows are independent requests on one connection each).
    result = _compiled(pod, canary_pod, HOSTS)
    failures = []
    async with running(result.snapshot) as proxy:
        for name, case in CASES.items():
            client = await Client.connect(proxy.http_port)
            try:
                resp = await client.request(
                    "GET", case.target, case.headers, host=f"{case.host}.test"
                )
            finally:
                await client.close()
            got = _who(resp, pod, canary_pod)
            if got != case.expect:
                failures.append((name, case.expect, got))
    assert failures == []


async def _shares(proxy_port: int, host: str, n: int) -> float:
    """The share of `n` keep-alive requests the canary pod (127.0.0.3) answered."""
    client = await Client.connect(proxy_port)
    canary = 0
    try:
        for _ in range(n):
            resp = await client.request("GET", "/info", host=host)
            assert resp.status == 200
            canary += resp.json()["pod"] == "127.0.0.3"
    finally:
        await client.close()
    return canary / n


SPLITS: dict[str, tuple[dict[str, str], float]] = {
    # canary.go "should route requests split between mainline and canary if canary weight is
    # 50" (its TestMainlineCanaryDistribution: both get some; here the share is bounded).
    "weight-50": ({**ON, N + "canary-weight": "50"}, 0.5),
    # "... if canary weight is 100 and weight total is 200".
    "weight-100-of-200": (
        {**ON, N + "canary-weight": "100", N + "canary-weight-total": "200"},
        0.5,
    ),
    # balancer.lua: a total below 100 counts as 100 (ingress-nginx's trap, kept).
    "weight-20-of-50": ({**ON, N + "canary-weight": "20", N + "canary-weight-total": "50"}, 0.2),
}


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
async def test_weight_splits_at_random(
    pod: Pod, canary_pod: Pod, split: tuple[dict[str, str], float]
) -> None:
    notes, share = split
    result = _compiled(pod, canary_pod, {"split": notes})
    async with running(result.snapshot) as proxy:
        got = await _shares(proxy.http_port, "split.test", 600)
    # 600 draws: the standard deviation is at most 0.021; 0.1 is almost 5 of them.
    assert abs(got - share) < 0.1, got


# ---- live: the canary Ingress edited under `portico serve` ---------------------------------


def _write(directory: Path, name: str, doc: dict[str, Any] | None) -> None:
    target = directory / f"{name}.yaml"
    if doc is None:
        target.unlink(missing_ok=True)
        return
    target.write_text(yaml.safe_dump(doc))


async def _served_by(session: aiohttp.ClientSession, port: int, headers: dict[str, str]) -> str:
    async with session.get(
        f"http://127.0.0.1:{port}/info", headers={"Host": "foo.test", **headers}
    ) as resp:
        body = await resp.read()
    if resp.status != 200:
        return str(resp.status)
    return str(json.loads(body)["service"])


async def test_canary_ingress_changes_apply_live(tmp_path: Path) -> None:
    # canary.go "should route requests to the correct upstream if the canary ingress is
    # modified" and "... if the mainline ingress is modified".
    pods = (("127.0.0.2", "main", "main-1"), ("127.0.0.3", "canary", "canary-1"))
    async with echo_pods(*pods) as port:
        base = [
            ingress_class(),
            *service_with_pods("main", ["127.0.0.2"], port),
            *service_with_pods("canary", ["127.0.0.3"], port),
        ]
        (tmp_path / "base.yaml").write_text(yaml.safe_dump_all(base))
        main = manifest_ingress("foo", "foo.test", {"/info": "main"})
        _write(tmp_path, "main", main)
        canary = manifest_ingress(
            "foo-canary", "foo.test", {"/info": "canary"}, annotations=BY_HEADER
        )
        _write(tmp_path, "canary", canary)
        http, admin = free_port(), free_port()
        process = await start_serve(tmp_path, http=http, admin=admin)
        always = {"CanaryByHeader": "always"}
        try:
            async with aiohttp.ClientSession() as session:

                async def served(headers: dict[str, str], expected: str) -> bool:
                    try:
                        return await _served_by(session, http, headers) == expected
                    except aiohttp.ClientError:
                        return False

                await eventually(lambda: served(always, "canary"), 20)
                assert await _served_by(session, http, {}) == "main"
                # The canary Ingress modified: now by weight 100, no header.
                canary["metadata"]["annotations"] = {**ON, N + "canary-weight": "100"}
                _write(tmp_path, "canary", canary)
                await eventually(lambda: served({}, "canary"), 10)
                # The main Ingress modified (another path): the canary no longer pairs.
                main["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/"
                _write(tmp_path, "main", main)
                await eventually(lambda: served({}, "main"), 10)
                # Back, then the canary Ingress deleted: the main Ingress alone.
                main["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/info"
                _write(tmp_path, "main", main)
                await eventually(lambda: served({}, "canary"), 10)
                _write(tmp_path, "canary", None)
                await eventually(lambda: served({}, "main"), 10)
                assert await _served_by(session, http, always) == "main"
        finally:
            await stop_serve(process, grace=5)


# ---- affinity-canary-behavior: the affinity cookie and the canary ----------------------------

# The main Ingress of each host is sticky (affinity: cookie, session-cookie-name aff); its canary
# is forced by the header ForceCanary: yes, else weight 0, with this behaviour (None: not set).
STICKY_MAIN = {N + "affinity": "cookie", N + "session-cookie-name": "aff"}
FORCED = {**ON, N + "canary-by-header": "ForceCanary", N + "canary-by-header-value": "yes"}
BEHAVIORS: dict[str, dict[str, str]] = {
    "default": {**FORCED, N + "canary-weight": "0"},
    "sticky": {**FORCED, N + "canary-weight": "0", N + "affinity-canary-behavior": "sticky"},
    "legacy": {**FORCED, N + "canary-weight": "0", N + "affinity-canary-behavior": "legacy"},
    # Weight 100: every request without a hold goes to the canary.
    "sticky-100": {**FORCED, N + "canary-weight": "100"},
    "legacy-100": {**FORCED, N + "canary-weight": "100", N + "affinity-canary-behavior": "legacy"},
}


def _sticky_compiled(main: Pod, canary: Pod) -> CompileResult:
    objects: list[dict[str, Any]] = [kube_ingress_class()]
    for name, pod in (("main", main), ("canary", canary)):
        objects.append(service(name, ports=[service_port(80, "http", pod.port)]))
        objects.append(
            endpoint_slice(name, name, endpoints=[endpoint(pod.host)], ports=[("http", pod.port)])
        )
    for host, notes in BEHAVIORS.items():
        objects.append(
            ingress(
                host,
                annotations=STICKY_MAIN,
                rules=[rule(f"{host}.test", path("/info", "main"))],
                created=10,
            )
        )
        objects.append(
            ingress(
                f"{host}-canary",
                annotations=notes,
                rules=[rule(f"{host}.test", path("/info", "canary"))],
                created=20,
            )
        )
    return compile_view(store_of(*objects), CompileSettings())


class Visit(NamedTuple):
    pod: str  # "main" or "canary"
    cookie: str | None  # the Set-Cookie of the affinity cookie, None: none


async def _visit(port: int, host: str, headers: dict[str, str], main: Pod, canary: Pod) -> Visit:
    client = await Client.connect(port)
    try:
        resp = await client.request("GET", "/info", headers, host=f"{host}.test")
    finally:
        await client.close()
    got = _who(resp, main, canary)
    assert isinstance(got, str), got
    cookies = [c for c in resp.header_all("Set-Cookie") if c.startswith("aff=")]
    assert len(cookies) <= 1, cookies
    return Visit(got, cookies[0] if cookies else None)


def _value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].removeprefix("aff=")


MAIN_TAG = backend_tag("default/main/80")
CANARY_TAG = backend_tag("default/canary/80")


async def test_affinity_canary_behavior(pod: Pod, canary_pod: Pod) -> None:
    result = _sticky_compiled(pod, canary_pod)
    assert result.problems == ()
    force = {"ForceCanary": "yes"}
    async with running(result.snapshot) as proxy:
        port = proxy.http_port

        async def visits(host: str, headers: dict[str, str], n: int = 10) -> set[str]:
            return {(await _visit(port, host, headers, pod, canary_pod)).pod for _ in range(n)}

        # A main visit: the main backend's cookie, with the main rule's attributes.
        first_main = await _visit(port, "sticky", {}, pod, canary_pod)
        assert first_main.pod == "main" and first_main.cookie is not None
        assert _value(first_main.cookie).endswith("|" + MAIN_TAG)
        attributes = first_main.cookie.split(";", 1)[1]
        main_cookie = {"Cookie": "aff=" + _value(first_main.cookie)}

        for host in ("default", "sticky"):
            # canary.go "always routes traffic to canary if first request was affinitized to
            # canary (default behavior)" / "(explicit sticky behavior)": the forced visit
            # gets the cookie, naming the canary's backend, with the same attributes...
            first = await _visit(port, host, force, pod, canary_pod)
            assert first.pod == "canary" and first.cookie is not None, (host, first)
            assert _value(first.cookie).endswith("|" + CANARY_TAG), first.cookie
            assert first.cookie.split(";", 1)[1] == attributes
            # ...and keeps the client on the canary though the weight is 0 (no new cookie).
            held = {"Cookie": "aff=" + _value(first.cookie)}
            assert await visits(host, held) == {"canary"}, host
            again = await _visit(port, host, held, pod, canary_pod)
            assert again.cookie is None
            # Without the cookie, the weight (0) decides.
            assert await visits(host, {}) == {"main"}, host

        # canary.go "routes traffic to either mainline or canary backend (legacy behavior)":
        # no affinity cookie from the canary, and a cookie naming the canary holds nothing.
        first = await _visit(port, "legacy", force, pod, canary_pod)
        assert first == Visit("canary", None)
        forged = {"Cookie": f"aff=0123456789abcdef|{CANARY_TAG}"}
        assert await visits("legacy", forged) == {"main"}
        assert await visits("sticky", forged) == {"canary"}

        # balancer.lua route_to_alternative_balancer: a cookie naming the main backend keeps
        # the request there before any canary rule (weight 100, or the header), both ways;
        # without it weight 100 goes to the canary.
        for host in ("sticky-100", "legacy-100"):
            assert await visits(host, main_cookie) == {"main"}, host
            assert await visits(host, {**main_cookie, **force}) == {"main"}, host
            assert await visits(host, {}) == {"canary"}, host
        # A cookie naming neither backend (another Service's) holds nothing.
        other = {"Cookie": f"aff=0123456789abcdef|{backend_tag('default/other/80')}"}
        assert await visits("sticky-100", other) == {"canary"}
        assert await visits("sticky", other) == {"main"}
