"""`portico explain` answers: one row per rule, objects (YAML) in, the JSON answer out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from controller.compiler import Compiler, CompileSettings, compile_view
from controller.explain import KEYS, RequestError, describe, explain
from controller.objects import READ_KINDS, parse_object
from controller.store import Store, WatchEvent

CLASS = """
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portico}
spec: {controller: portico.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
"""


def service(name: str, port: int = 80, port_name: str = "http") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: ns}}
spec:
  ports: [{{name: {port_name}, port: {port}, targetPort: 8081}}]
"""


def endpoints(svc: str, *addresses: str, ready: bool = True, terminating: bool = False) -> str:
    items = ", ".join(
        f"{{addresses: [{a}], conditions: {{ready: {str(ready).lower()}, serving: true, "
        f"terminating: {str(terminating).lower()}}}}}"
        for a in addresses
    )
    return f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-slice
  namespace: ns
  labels: {{kubernetes.io/service-name: {svc}}}
addressType: IPv4
ports: [{{name: http, port: 8081}}]
endpoints: [{items}]
"""


def ingress(
    name: str,
    rules: str = "",
    *,
    cls: str = "portico",
    default: str | None = None,
    tls: str | None = None,
) -> str:
    spec = [f"  ingressClassName: {cls}"]
    if default is not None:
        spec.append(f"  defaultBackend: {{service: {{name: {default}, port: {{number: 80}}}}}}")
    if tls is not None:
        spec.append(f"  tls: [{{hosts: [{tls}], secretName: {name}-tls}}]")
    if rules:
        spec.append("  rules:" + rules)
    body = "\n".join(spec)
    return f"""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: ns}}
spec:
{body}
"""


def rule(host: str | None, *paths: tuple[str, str, str, int | str]) -> str:
    head = "\n  - http:" if host is None else f"\n  - host: '{host}'\n    http:"
    lines = [head, "      paths:"]
    for path, path_type, svc, port in paths:
        port_ref = f"number: {port}" if isinstance(port, int) else f"name: {port}"
        lines.append(
            f"      - {{path: '{path}', pathType: {path_type}, "
            f"backend: {{service: {{name: {svc}, port: {{{port_ref}}}}}}}}}"
        )
    return "\n".join(lines)


WEB = service("web") + "---" + endpoints("web", "127.0.0.2", "127.0.0.3")
API = service("api") + "---" + endpoints("api", "127.0.0.4")
DEMO = ingress(
    "demo",
    rule("demo.local", ("/", "Prefix", "web", "http"), ("/api", "Prefix", "api", 80))
    + rule(None, ("/exact", "Exact", "web", 80)),
)


@dataclass(frozen=True)
class Case:
    name: str
    objects: list[str]
    url: str
    expected: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def routed(
    ingress: str,
    rule: tuple[str | None, str | None, str | None],
    backend: tuple[str, int | str],
    endpoints: list[str],
    match: str | None = None,
) -> dict[str, Any]:
    """The answer for a request routed by `rule` (host, path, pathType) to `backend`; `match`
    defaults to the pathType's."""
    host, path, path_type = rule
    service, port = backend
    return {
        "status": 200,
        "ingress": ingress,
        "host": host,
        "path": path,
        "pathType": path_type,
        "match": match if match is not None else _MATCHES.get(path_type),
        "service": service,
        "port": port,
        "endpoints": endpoints,
        "reason": None,
    }


_MATCHES = {"Exact": "exact", "Prefix": "prefix", "ImplementationSpecific": "prefix"}


def miss(
    status: int, reason: str, ingress: str | None = None, host: str | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "ingress": ingress,
        "host": host,
        "path": None,
        "pathType": None,
        "match": None,
        "service": None,
        "port": None,
        "endpoints": [],
        "reason": reason,
    }


WEB_PODS = ["127.0.0.2:8081", "127.0.0.3:8081"]

CASES = [
    Case(
        "prefix rule, port by name",
        [DEMO, WEB, API],
        "http://demo.local/",
        routed("ns/demo", ("demo.local", "/", "Prefix"), ("ns/web", "http"), WEB_PODS),
    ),
    Case(
        "longest prefix wins, element-wise",
        [DEMO, WEB, API],
        "http://demo.local/api/v1?x=1",
        routed("ns/demo", ("demo.local", "/api", "Prefix"), ("ns/api", 80), ["127.0.0.4:8081"]),
    ),
    Case(
        "/apix is not under /api",
        [DEMO, WEB, API],
        "http://demo.local/apix",
        routed("ns/demo", ("demo.local", "/", "Prefix"), ("ns/web", "http"), WEB_PODS),
    ),
    Case(
        "Host header wins over the URL, port ignored, case folded",
        [DEMO, WEB, API],
        "http://127.0.0.1:8080/api",
        routed("ns/demo", ("demo.local", "/api", "Prefix"), ("ns/api", 80), ["127.0.0.4:8081"]),
        headers={"host": "Demo.Local:8080"},
    ),
    Case(
        "host-less rule, Exact path",
        [DEMO, WEB, API],
        "http://elsewhere.local/exact",
        routed("ns/demo", (None, "/exact", "Exact"), ("ns/web", 80), WEB_PODS),
    ),
    Case(
        "no host matches and no default backend",
        [ingress("demo", rule("demo.local", ("/", "Prefix", "web", 80))), WEB],
        "http://other.local/",
        miss(404, "NoHostMatch"),
    ),
    Case(
        "host matches, no path does",
        [ingress("demo", rule("demo.local", ("/app", "Prefix", "web", 80))), WEB],
        "http://demo.local/other",
        miss(404, "NoPathMatch", host="demo.local"),
    ),
    Case(
        "Exact does not match a longer path",
        [ingress("demo", rule("demo.local", ("/exact", "Exact", "web", 80))), WEB],
        "http://demo.local/exact/more",
        miss(404, "NoPathMatch", host="demo.local"),
    ),
    Case(
        "Service missing",
        [ingress("demo", rule("demo.local", ("/", "Prefix", "gone", 80)))],
        "http://demo.local/",
        {
            **routed("ns/demo", ("demo.local", "/", "Prefix"), ("ns/gone", 80), []),
            "status": 503,
            "reason": "ServiceNotFound",
        },
    ),
    Case(
        "Service port missing",
        [ingress("demo", rule("demo.local", ("/", "Prefix", "web", 8443))), WEB],
        "http://demo.local/",
        {
            **routed("ns/demo", ("demo.local", "/", "Prefix"), ("ns/web", 8443), []),
            "status": 503,
            "reason": "ServicePortNotFound",
        },
    ),
    Case(
        "no endpoints",
        [ingress("demo", rule("demo.local", ("/", "Prefix", "web", 80))), service("web")],
        "http://demo.local/",
        {
            **routed("ns/demo", ("demo.local", "/", "Prefix"), ("ns/web", 80), []),
            "status": 503,
            "reason": "NoEndpoints",
        },
    ),
    Case(
        "only terminating endpoints: picked from them",
        [
            ingress("demo", rule("demo.local", ("/", "Prefix", "web", 80))),
            service("web"),
            endpoints("web", "127.0.0.6", ready=False, terminating=True),
        ],
        "http://demo.local/",
        routed("ns/demo", ("demo.local", "/", "Prefix"), ("ns/web", 80), ["127.0.0.6:8081"]),
    ),
    Case(
        "tls host over plain http: 308",
        [ingress("secure", rule("s.local", ("/", "Prefix", "web", 80)), tls="s.local"), WEB],
        "http://s.local/x",
        {
            **routed("ns/secure", ("s.local", "/", "Prefix"), ("ns/web", 80), []),
            "status": 308,
            "reason": "SSLRedirect",
        },
    ),
    Case(
        "tls host over https: routed",
        [ingress("secure", rule("s.local", ("/", "Prefix", "web", 80)), tls="s.local"), WEB],
        "https://s.local/x",
        routed("ns/secure", ("s.local", "/", "Prefix"), ("ns/web", 80), WEB_PODS),
    ),
    Case(
        "default backend catches an unknown host",
        [DEMO, WEB, API, ingress("fallback", default="api")],
        "http://unknown.local/whatever",
        routed("ns/fallback", (None, None, None), ("ns/api", 80), ["127.0.0.4:8081"]),
    ),
    Case(
        "default backend catches a path the host lacks",
        [
            ingress("demo", rule("demo.local", ("/app", "Prefix", "web", 80))),
            ingress("fallback", default="api"),
            WEB,
            API,
        ],
        "http://demo.local/other",
        routed("ns/fallback", (None, None, None), ("ns/api", 80), ["127.0.0.4:8081"]),
    ),
    Case(
        "wildcard host matches one label",
        [ingress("wild", rule("*.demo.local", ("/", "Prefix", "web", 80))), WEB],
        "http://a.demo.local/",
        routed("ns/wild", ("*.demo.local", "/", "Prefix"), ("ns/web", 80), WEB_PODS),
    ),
    Case(
        "wildcard host does not match two labels",
        [ingress("wild", rule("*.demo.local", ("/", "Prefix", "web", 80))), WEB],
        "http://a.b.demo.local/",
        miss(404, "NoHostMatch"),
    ),
    Case(
        "exact host beats wildcard",
        [
            ingress("wild", rule("*.demo.local", ("/", "Prefix", "web", 80))),
            ingress("exact", rule("a.demo.local", ("/", "Prefix", "api", 80))),
            WEB,
            API,
        ],
        "http://a.demo.local/",
        routed("ns/exact", ("a.demo.local", "/", "Prefix"), ("ns/api", 80), ["127.0.0.4:8081"]),
    ),
    Case(
        "the only matching Ingress is of another class",
        [ingress("theirs", rule("demo.local", ("/", "Prefix", "web", 80)), cls="nginx"), WEB],
        "http://demo.local/",
        miss(404, "IngressClassNotOurs", ingress="ns/theirs"),
    ),
    Case(
        "another class's Ingress for another host does not explain the miss",
        [ingress("theirs", rule("x.local", ("/", "Prefix", "web", 80)), cls="nginx"), WEB],
        "http://demo.local/",
        miss(404, "NoHostMatch"),
    ),
    Case(
        "an Ingress naming a class that does not exist is not ours either",
        [ingress("typo", rule("demo.local", ("/", "Prefix", "web", 80)), cls="portco"), WEB],
        "http://demo.local/",
        miss(404, "IngressClassNotOurs", ingress="ns/typo"),
    ),
]


def _store(documents: list[str]) -> Store:
    store = Store()
    for text in [CLASS, *documents]:
        for raw in yaml.safe_load_all(text):
            obj = parse_object(raw)
            assert obj is not None
            store.apply(WatchEvent("ADDED", obj))
    for kind in READ_KINDS:
        store.mark_listed(kind)
    return store


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explain(case: Case) -> None:
    store = _store(case.objects)
    result = compile_view(store, CompileSettings())
    answer = explain(result, store, case.url, case.headers)
    assert answer == case.expected
    assert list(answer) == [*KEYS, "reason"]
    text = "\n".join(describe(answer, result.ignored))
    assert f"status:    {case.expected['status']}" in text
    if case.expected["reason"] is not None:
        assert case.expected["reason"] in text


@pytest.mark.parametrize("url", ["ftp://demo.local/", "demo.local/path", "http:///x"])
def test_rejects_non_http_urls(url: str) -> None:
    store = _store([DEMO, WEB])
    with pytest.raises(RequestError):
        explain(compile_view(store, CompileSettings()), store, url, {})


# ---- the matched rule's path and pathType, as written --------------------------------------------


def one_path(path_type: str, path: str | None, *, other_host: str | None = None) -> str:
    """An Ingress with one path (None: omitted) on demo.local; with `other_host`, first the
    same matched rule on that host, spelled with the trailing "/" toggled where that is the same
    rule (Prefix-like paths other than "/")."""

    def host_rule(host: str, path: str | None) -> str:
        path_field = "" if path is None else f"path: '{path}', "
        backend = "backend: {service: {name: web, port: {number: 80}}}"
        return f"""
  - host: {host}
    http:
      paths:
      - {{{path_field}pathType: {path_type}, {backend}}}"""

    rules = host_rule("demo.local", path)
    if other_host is not None:
        other = path
        if path_type != "Exact" and path is not None and path != "/":
            other = path.rstrip("/") if path.endswith("/") else path + "/"
        rules = host_rule(other_host, other) + rules
    return ingress("written", rules)


IS = "ImplementationSpecific"
# (case, pathType, path as written (None: omitted), request path, path reported). The compiler
# matches a Prefix path without its trailing "/" and an omitted path as "/"; explain reports the
# path and pathType as the Ingress wrote them.
WRITTEN = [
    ("Exact", "Exact", "/foo", "/foo", "/foo"),
    ("Exact, trailing /", "Exact", "/foo/", "/foo/", "/foo/"),
    ("Exact root", "Exact", "/", "/", "/"),
    ("Prefix", "Prefix", "/foo", "/foo/x", "/foo"),
    ("Prefix, trailing /", "Prefix", "/foo/", "/foo/x", "/foo/"),
    ("Prefix, trailing /, request without it", "Prefix", "/foo/", "/foo", "/foo/"),
    ("Prefix root", "Prefix", "/", "/x", "/"),
    ("ImplementationSpecific", IS, "/foo", "/foo/x", "/foo"),
    ("ImplementationSpecific, trailing /", IS, "/foo/", "/foo/x", "/foo/"),
    ("ImplementationSpecific root", IS, "/", "/x", "/"),
    ("ImplementationSpecific, path omitted", IS, None, "/x", ""),
]


@pytest.mark.parametrize(
    ("path_type", "written", "target", "reported"),
    [row[1:] for row in WRITTEN],
    ids=[row[0] for row in WRITTEN],
)
@pytest.mark.parametrize("other_host", [None, "other.local"], ids=["one host", "two hosts"])
def test_reports_path_as_written(
    path_type: str, written: str | None, target: str, reported: str, other_host: str | None
) -> None:
    """With `other_host`, the same matched rule is first written without the trailing "/" on
    another host: each host keeps its own spelling."""
    store = _store([one_path(path_type, written, other_host=other_host), WEB])
    result = compile_view(store, CompileSettings())
    assert not result.problems
    answer = explain(result, store, f"http://demo.local{target}", {})
    expected = routed("ns/written", ("demo.local", reported, path_type), ("ns/web", 80), WEB_PODS)
    assert answer == expected
    shown = '""' if reported == "" else reported
    assert f"rule:      demo.local {shown} {path_type}" in describe(answer, result.ignored)


def test_path_as_written_survives_an_endpoints_only_compile() -> None:
    """The incremental compiler reuses the routes when only EndpointSlices change; the written
    paths must come along with them."""
    store = _store([ingress("written", rule("demo.local", ("/foo/", "Prefix", "web", 80))), WEB])
    compiler = Compiler(CompileSettings())
    first = compiler.compile(store)
    moved = parse_object(yaml.safe_load(endpoints("web", "127.0.0.7")))
    assert moved is not None
    store.apply(WatchEvent("MODIFIED", moved))
    second = compiler.compile(store)
    assert second.snapshot.routes is first.snapshot.routes  # the endpoints-only path was taken
    answer = explain(second, store, "http://demo.local/foo/x", {})
    assert (answer["path"], answer["endpoints"]) == ("/foo/", ["127.0.0.7:8081"])


REGEX_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: re
  namespace: ns
  annotations: {nginx.ingress.kubernetes.io/use-regex: "true"}
spec:
  ingressClassName: portico
  rules:
  - host: re.local
    http:
      paths:
      - path: '/api/(v[0-9])'
        pathType: ImplementationSpecific
        backend: {service: {name: api, port: {number: 80}}}
"""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # use-regex (annotations.md "Use Regex"): case-insensitive, anchored at the start only
        (
            "http://re.local/API/v1/x",
            routed(
                "ns/re",
                ("re.local", "/api/(v[0-9])", "ImplementationSpecific"),
                ("ns/api", 80),
                ["127.0.0.4:8081"],
                match="regex",
            ),
        ),
        # another Ingress's Prefix "/" on the host is a regex too (enforceRegexModifier)
        (
            "http://re.local/api/x",
            routed("ns/demo", ("re.local", "/", "Prefix"), ("ns/web", "http"), WEB_PODS, "regex"),
        ),
    ],
)
def test_explain_says_a_regex_matched(url: str, expected: dict[str, Any]) -> None:
    demo = ingress("demo", rule("re.local", ("/", "Prefix", "web", "http")))
    store = _store([REGEX_INGRESS, demo, WEB, API])
    result = compile_view(store, CompileSettings())
    answer = explain(result, store, url, {})
    assert answer == expected
    assert "matched as a regular expression" in "\n".join(describe(answer, result.ignored))
