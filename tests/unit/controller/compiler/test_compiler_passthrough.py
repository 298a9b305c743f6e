"""ssl-passthrough in the compiler: which hosts become `Snapshot.passthrough`, with which backend.

Rows follow ingress-nginx's controller.go (getConfiguration / createServers): a host is
passthrough when any Ingress with a rule for it has the annotation; its connections go to the
backend of the host's "/" location (the Ingress's defaultBackend when no rule has "/"); the
TLS proxy matches server names exactly (pkg/tcpproxy/tcp.go `Get`), so wildcard and host-less
rules never match; without --enable-ssl-passthrough the annotation does nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from controller.compiler import Compiler, CompileResult, CompileSettings, compile_view
from controller.objects import parse_object
from controller.store import WatchEvent
from proxy.config import PassthroughHost
from tests.kube_factory import (
    Raw,
    backend,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    store_of,
)
from tests.unenforced import unenforced  # noqa: F401 (a fixture)

BASE = [ingress_class(), service("web"), service("api"), endpoint_slice()]
N = "nginx.ingress.kubernetes.io/"
PASS = {N + "ssl-passthrough": "true"}
ON = CompileSettings(ssl_passthrough=True)


def run(*raws: Raw, settings: CompileSettings = ON) -> CompileResult:
    return compile_view(store_of(*BASE, *raws), settings)


class Row(NamedTuple):
    objects: list[Raw]
    settings: CompileSettings
    passthrough: tuple[PassthroughHost, ...]
    problems: set[tuple[str, str]]  # (Ingress, reason)


NA = "PassthroughNotApplied"

ROWS: dict[str, Row] = {
    # ssl_passthrough.go "should pass unknown traffic to default backend and handle known
    # traffic": the annotated host passes through, the other one is terminated.
    "annotated-host": Row(
        [
            ingress("pass", rules=[rule("pass.test")], annotations=PASS),
            ingress("plain", rules=[rule("plain.test")]),
        ],
        ON,
        (PassthroughHost("pass.test", "default/web/80", "default/pass", "default/web"),),
        set(),
    ),
    # annotations.md: "requires starting the controller with --enable-ssl-passthrough".
    "flag-off": Row(
        [ingress("pass", rules=[rule("pass.test")], annotations=PASS)],
        CompileSettings(),
        (),
        {("default/pass", NA)},
    ),
    "annotation-false": Row(
        [ingress("pass", rules=[rule("pass.test")], annotations={N + "ssl-passthrough": "false"})],
        ON,
        (),
        set(),
    ),
    "portico-prefix-wins": Row(
        [
            ingress(
                "pass",
                rules=[rule("pass.test")],
                annotations={**PASS, "portico.dev/ssl-passthrough": "false"},
            )
        ],
        ON,
        (),
        set(),
    ),
    "invalid-value": Row(
        [ingress("pass", rules=[rule("pass.test")], annotations={N + "ssl-passthrough": "yes"})],
        ON,
        (),
        {("default/pass", "InvalidAnnotation")},
    ),
    # controller.go getConfiguration: the backend of the "/" location, whichever path the
    # annotated Ingress itself routes.
    "root-path-backend": Row(
        [
            ingress(
                "pass",
                rules=[rule("pass.test", path("/api", "api"), path("/", "web"))],
                annotations=PASS,
            )
        ],
        ON,
        (PassthroughHost("pass.test", "default/web/80", "default/pass", "default/web"),),
        set(),
    ),
    # createServers: any Ingress with the annotation marks the host; "/" may come from another.
    "root-from-other-ingress": Row(
        [
            ingress("a-root", rules=[rule("pass.test", path("/", "api"))], created=1),
            ingress(
                "b-pass", rules=[rule("pass.test", path("/x", "web"))], annotations=PASS, created=2
            ),
        ],
        ON,
        (PassthroughHost("pass.test", "default/api/80", "default/a-root", "default/api"),),
        set(),
    ),
    # createServers: an Ingress's defaultBackend is its hosts' "/" location without a "/" rule.
    "default-backend": Row(
        [
            ingress(
                "pass",
                rules=[rule("pass.test", path("/x", "web"))],
                default_backend=backend("api"),
                annotations=PASS,
            )
        ],
        ON,
        (PassthroughHost("pass.test", "default/api/80", "default/pass", "default/api"),),
        set(),
    ),
    # controller.go: "Server has no default backend, ignoring SSL Passthrough" (the TLS proxy
    # then dials nothing): closed, said in a problem.
    "no-root": Row(
        [ingress("pass", rules=[rule("pass.test", path("/x", "web"))], annotations=PASS)],
        ON,
        (PassthroughHost("pass.test", "", "default/pass"),),
        {("default/pass", NA)},
    ),
    "exact-root-is-not-the-root-location": Row(
        [
            ingress(
                "pass", rules=[rule("pass.test", path("/", "web", 80, "Exact"))], annotations=PASS
            )
        ],
        ON,
        (PassthroughHost("pass.test", "", "default/pass"),),
        {("default/pass", NA)},
    ),
    # tcp.go Get: `s.Hostname == host`, so a wildcard or "_" (host-less) server never matches.
    "wildcard": Row(
        [ingress("pass", rules=[rule("*.pass.test")], annotations=PASS)],
        ON,
        (),
        {("default/pass", NA)},
    ),
    "host-less": Row(
        [ingress("pass", rules=[rule()], annotations=PASS)], ON, (), {("default/pass", NA)}
    ),
    # Portico's difference: the rule's access rules go with its connections (fail closed).
    "source-ranges": Row(
        [
            ingress(
                "pass",
                rules=[rule("pass.test")],
                annotations={**PASS, N + "whitelist-source-range": "10.0.0.1/8"},
            )
        ],
        ON,
        (
            PassthroughHost(
                "pass.test", "default/web/80", "default/pass", "default/web", allow=("10.0.0.0/8",)
            ),
        ),
        set(),
    ),
    "access-control-not-enforced": Row(
        [
            ingress(
                "pass",
                rules=[rule("pass.test")],
                annotations={**PASS, N + "auth-tls-match-cn": "CN=client"},
            )
        ],
        ON,
        (
            PassthroughHost(
                "pass.test",
                "default/web/80",
                "default/pass",
                "default/web",
                refuse="AccessControlNotEnforced",
            ),
        ),
        {("default/pass", "AccessControlNotEnforced"), ("default/pass", "UnsupportedAnnotation")},
    ),
}


@pytest.mark.parametrize("row", [pytest.param(r, id=k) for k, r in ROWS.items()])
@pytest.mark.usefixtures("unenforced")
def test_passthrough_hosts(row: Row) -> None:
    result = run(*row.objects, settings=row.settings)
    assert result.snapshot.passthrough == row.passthrough
    assert {(p.ref, p.reason) for p in result.problems} == row.problems


def test_http_rules_of_a_passthrough_host_still_route() -> None:
    # Plain HTTP for the host is served by its rules (ingress-nginx keeps the server block).
    result = run(ingress("pass", rules=[rule("pass.test")], annotations=PASS))
    (vhost,) = result.snapshot.routes.virtual_hosts
    assert vhost.host == "pass.test" and vhost.rules[0].backend == "default/web/80"


def test_endpoints_only_update_keeps_passthrough() -> None:
    store = store_of(*BASE, ingress("pass", rules=[rule("pass.test")], annotations=PASS))
    compiler = Compiler(ON)
    first = compiler.compile(store)
    moved = parse_object(endpoint_slice(endpoints=["10.0.0.9"]))
    assert store.apply(WatchEvent("MODIFIED", moved))  # type: ignore[arg-type]
    second = compiler.compile(store)
    assert second.snapshot.routes is first.snapshot.routes
    assert second.snapshot.passthrough == first.snapshot.passthrough != ()
