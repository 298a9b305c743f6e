"""Nothing silently ignored: unsupported, unknown, snippet and access-control annotations.

Each Ingress is compiled next to a plain one ("other", host other.test) that must keep serving,
so a rule that drops too much is caught as well as one that drops too little.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controller.compiler import Compiler, CompileResult, CompileSettings, compile_view
from controller.explain import explain
from controller.files import read_manifests
from proxy.config import Refuse, SourceRanges
from tests.kube_factory import ingress, ingress_class, path, rule, service, store_of, tls_entry
from tests.unenforced import make_unenforced, unenforced  # noqa: F401 (a fixture)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
HOST = "app.test"
ROOT = Path(__file__).resolve().parents[4]
CORPUS = ROOT / "tests" / "data" / "corpus" / "ingress-nginx" / "nginx"


def run(annotations: dict[str, str], settings: CompileSettings | None = None) -> CompileResult:
    app = ingress("app", annotations=annotations, rules=[rule(HOST, path("/", "web"))], created=1)
    other = ingress("other", rules=[rule("other.test", path("/", "web"))], created=2)
    store = store_of(ingress_class(), service("web"), app, other)
    return compile_view(store, settings or CompileSettings())


def hosts(result: CompileResult) -> list[str]:
    return [vh.host for vh in result.snapshot.routes.virtual_hosts]


def reasons(result: CompileResult) -> list[str]:
    assert all(p.ref == "default/app" for p in result.problems), result.problems
    return sorted(p.reason for p in result.problems)


def test_unsupported_annotation_is_a_problem_and_the_rest_is_served() -> None:
    result = run({N + "mirror-target": "http://mirror/", N + "proxy-read-timeout": "7"})
    assert reasons(result) == ["UnsupportedAnnotation"]
    message = result.problems[0].message
    assert N + "mirror-target" in message and "not in Portico" in message
    assert hosts(result) == [HOST, "other.test"]
    app_rule = result.snapshot.routes.virtual_hosts[0].rules[0]
    assert app_rule.options.read_timeout == 7.0


UNKNOWN_ROWS = [
    # (annotation, what the problem says)
    (N + "rewite-target", f"did you mean {N}rewrite-target?"),
    (N + "server-snippets", f"did you mean {N}server-snippet?"),
    (P + "proxy-body-sise", f"did you mean {P}proxy-body-size?"),
    (N + "session-cookie-hash", "removed from ingress-nginx in 0.24"),
    (N + "secure-backends", 'use backend-protocol: "HTTPS"'),
    (N + "forwarded-for-header", "ConfigMap"),
    (N + "limit-enable", "not an ingress-nginx or Portico annotation"),
]


@pytest.mark.parametrize(("name", "says"), UNKNOWN_ROWS)
def test_unknown_annotation_names_the_nearest(name: str, says: str) -> None:
    result = run({name: "x"})
    assert reasons(result) == ["UnknownAnnotation"]
    assert name in result.problems[0].message and says in result.problems[0].message
    assert hosts(result) == [HOST, "other.test"]  # ingress-nginx ignores it too: served


def test_other_prefixes_are_not_screened() -> None:
    result = run({"cert-manager.io/cluster-issuer": "le", "kubernetes.io/tls-acme": "true"})
    assert result.problems == () and hosts(result) == [HOST, "other.test"]


def test_supported_and_different_annotations_raise_nothing() -> None:
    result = run({N + "load-balance": "ewma", P + "ssl-redirect": "false", N + "ssl-redirect": "1"})
    # "1" under the nginx prefix is overridden by portico.dev/ but still invalid.
    assert reasons(result) == ["InvalidAnnotation"]


def test_invalid_value_is_reported_once() -> None:
    result = run({N + "backend-protocol": "FCGI"})
    assert reasons(result) == ["InvalidAnnotation"]


SNIPPETS = ["configuration-snippet", "server-snippet", "stream-snippet", "auth-snippet"]


@pytest.mark.parametrize("name", [*SNIPPETS, "modsecurity-snippet"])
def test_snippet_refuses_the_whole_ingress(name: str) -> None:
    result = run({N + name: "deny all;", N + "proxy-read-timeout": "7"})
    assert reasons(result) == ["SnippetRefused"]
    assert N + name in result.problems[0].message and "deny all" in result.problems[0].message
    assert hosts(result) == ["other.test"]


def test_snippet_refusal_even_with_serve_without_access_control() -> None:
    settings = CompileSettings(serve_without_access_control=True)
    result = run({N + "configuration-snippet": "deny all;"}, settings)
    assert hosts(result) == ["other.test"]


# Every access-control annotation is enforced now (issue 18: basic auth, external auth, satisfy,
# client certificates): the rule is shown with a stand-in (tests/unenforced.py).
FAIL_CLOSED_ROWS: list[dict[str, str]] = [
    {N + "auth-tls-match-cn": "CN=client"},
    {P + "auth-tls-match-cn": "CN=client"},  # the Portico prefix means the same
    {N + "auth-tls-match-cn": "CN=client", N + "whitelist-source-range": "10.0.0.0/8"},
]


def _id(annotations: dict[str, str]) -> str:
    return ";".join(f"{k.rsplit('/', 1)[1]}={v}" for k, v in annotations.items())


@pytest.mark.parametrize("annotations", FAIL_CLOSED_ROWS, ids=_id)
@pytest.mark.usefixtures("unenforced")
def test_unenforced_access_control_fails_closed(annotations: dict[str, str]) -> None:
    result = run(annotations)
    not_enforced = [n for n in annotations if "source-range" not in n]
    assert reasons(result) == sorted(
        ["AccessControlNotEnforced", *["UnsupportedAnnotation"] * len(not_enforced)]
    )
    closed = next(p for p in result.problems if p.reason == "AccessControlNotEnforced")
    assert all(name in closed.message for name in not_enforced)
    assert "fail closed" in closed.message and "403" in closed.message
    # Its routes stay, answered 403 by the proxy before anything else (tests/integration/
    # test_access_control.py sends the requests).
    assert hosts(result) == [HOST, "other.test"]
    app, other = (vh.rules[0].options.policy for vh in result.snapshot.routes.virtual_hosts)
    assert app[:1] == (Refuse(403, "AccessControlNotEnforced"),) and other == ()
    # The operator's choice serves it, and says so.
    served = run(annotations, CompileSettings(serve_without_access_control=True))
    assert hosts(served) == [HOST, "other.test"]
    assert served.snapshot.routes.virtual_hosts[0].rules[0].options.step(Refuse) is None
    warned = next(p for p in served.problems if p.reason == "AccessControlNotEnforced")
    assert "WITHOUT" in warned.message


def test_enable_global_auth_false_is_served() -> None:
    # Supported now (issue 18): nothing to report, nothing added without a global-auth-url.
    result = run({N + "enable-global-auth": "false"})
    assert reasons(result) == []
    assert hosts(result) == [HOST, "other.test"]
    assert result.snapshot.routes.virtual_hosts[0].rules[0].options.policy == ()


# (annotations, the SourceRanges step's allow and deny) with ingress-nginx's rules: the allowlist
# spelling wins over the whitelist one (parser.checkAnnotation's aliases), a bare address is one
# host, host bits are cleared (Go's net.ParseCIDR), portico.dev/ wins over nginx.ingress...
SOURCE_RANGE_ROWS = [
    ({N + "whitelist-source-range": "10.0.0.0/8"}, ("10.0.0.0/8",), ()),
    ({N + "allowlist-source-range": " 10.1.2.3/8 , 192.0.2.7"}, ("10.0.0.0/8", "192.0.2.7/32"), ()),
    (
        {N + "whitelist-source-range": "2001:db8::1, 10.0.0.0/8"},
        ("10.0.0.0/8", "2001:db8::1/128"),
        (),
    ),
    ({N + "whitelist-source-range": "0.0.0.0/0"}, ("0.0.0.0/0",), ()),  # cert-manager's solver
    (
        {N + "allowlist-source-range": "10.0.0.0/8", N + "whitelist-source-range": "192.0.2.0/24"},
        ("10.0.0.0/8",),
        (),
    ),
    ({N + "denylist-source-range": "192.0.2.1, ::/0"}, (), ("192.0.2.1/32", "::/0")),
    (
        {N + "whitelist-source-range": "10.0.0.0/8", N + "denylist-source-range": "10.1.0.0/16"},
        ("10.0.0.0/8",),
        ("10.1.0.0/16",),
    ),
    (
        {N + "whitelist-source-range": "10.0.0.0/8", P + "whitelist-source-range": "127.0.0.1"},
        ("127.0.0.1/32",),
        (),
    ),
]


@pytest.mark.parametrize(("annotations", "allow", "deny"), SOURCE_RANGE_ROWS)
def test_source_ranges_become_a_step(
    annotations: dict[str, str], allow: tuple[str, ...], deny: tuple[str, ...]
) -> None:
    result = run(annotations)
    assert result.problems == ()
    app = result.snapshot.routes.virtual_hosts[0].rules[0].options
    assert app.policy == (SourceRanges(allow, deny),)


INVALID_SOURCE_RANGE_ROWS = [
    {N + "whitelist-source-range": "10.0.0.0/8,"},  # ingress-nginx refuses the empty entry
    {N + "whitelist-source-range": ""},
    {N + "allowlist-source-range": "10.0.0.0/33"},
    {N + "denylist-source-range": "10.0.0.0/8, example.com"},
    {N + "denylist-source-range": "10.0.0.0/255.0.0.0"},  # Go's ParseCIDR takes no netmask
    {N + "allowlist-source-range": "fe80::1%eth0"},
    # The valid allowlist spelling does not hide an invalid one: it fails closed.
    {N + "allowlist-source-range": "10.0.0.0/8", N + "whitelist-source-range": "nonsense"},
]


@pytest.mark.parametrize("annotations", INVALID_SOURCE_RANGE_ROWS, ids=_id)
def test_an_unreadable_source_range_fails_closed_with_503(annotations: dict[str, str]) -> None:
    for settings in (CompileSettings(), CompileSettings(serve_without_access_control=True)):
        result = run(annotations, settings)
        assert reasons(result) == ["InvalidAnnotation"]
        assert hosts(result) == [HOST, "other.test"]
        app = result.snapshot.routes.virtual_hosts[0].rules[0].options
        assert app.policy == (Refuse(503, "InvalidSourceRange"),)


def test_global_source_ranges_apply_where_an_ingress_has_none() -> None:
    settings = CompileSettings(allow_source_ranges=("10.0.0.0/8",), deny_source_ranges=("::/0",))
    own = run({N + "whitelist-source-range": "192.0.2.0/24"}, settings)
    policies = [vh.rules[0].options.policy for vh in own.snapshot.routes.virtual_hosts]
    assert policies == [
        (SourceRanges(("192.0.2.0/24",), ("::/0",)),),
        (SourceRanges(("10.0.0.0/8",), ("::/0",)),),
    ]


@pytest.mark.usefixtures("unenforced")
def test_a_fail_closed_host_is_answered_403_not_passed_to_what_else_matches() -> None:
    app = ingress(
        "app",
        annotations={N + "auth-tls-match-cn": "CN=client"},
        rules=[rule(HOST, path("/", "web"))],
        tls=[tls_entry(None, HOST)],
    )
    catch_all = ingress("catch-all", rules=[rule(None, path("/", "fallback"))], created=2)
    store = store_of(ingress_class(), service("web"), service("fallback"), app, catch_all)
    result = compile_view(store, CompileSettings())
    answer = explain(result, store, f"https://{HOST}/private", {})
    assert answer["ingress"] == "default/app", answer
    assert (answer["status"], answer["reason"]) == (403, "AccessControlNotEnforced")
    # Plain HTTP is redirected first, as ingress-nginx redirects before its access checks.
    assert explain(result, store, f"http://{HOST}/private", {})["status"] == 308


@pytest.mark.usefixtures("unenforced")
def test_served_without_access_control_logs_a_warning_per_compile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = ingress("app", annotations={N + "auth-tls-match-cn": "CN=client"})
    store = store_of(ingress_class(), service("web"), app)
    with caplog.at_level(logging.WARNING, logger="controller.compiler"):
        Compiler(CompileSettings(serve_without_access_control=True)).compile(store)
    records = [r for r in caplog.records if r.msg == "compiler.access_control_not_enforced"]
    assert len(records) == 1
    assert records[0].__dict__["ingress"] == "default/app"
    assert records[0].__dict__["annotations"] == [N + "auth-tls-match-cn"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="controller.compiler"):
        Compiler(CompileSettings()).compile(store)
    assert not [r for r in caplog.records if r.msg == "compiler.access_control_not_enforced"]


def test_cert_manager_http01_solver_ingress_keeps_working() -> None:
    # cert-manager's solver Ingress (tests/data corpus, from cert-manager's ingress.go) carries
    # whitelist-source-range: 0.0.0.0/0; the ACME server must reach the solver pod.
    store, source = read_manifests(CORPUS)
    assert source.problems == ()
    result = compile_view(store, CompileSettings(ingress_classes=("nginx",)))
    solver = "shop/cm-acme-http-solver-x7k2p"
    assert solver in result.owned
    assert [p.reason for p in result.problems if p.ref == solver] == []
    token = "Zb2Kc1pQ9xR0aLw4T7mYv3NfH8sDgJ6eUoB5iWqXrCt"
    url = f"http://shop.example.com/.well-known/acme-challenge/{token}"
    answer = explain(result, store, url, {})
    assert answer["ingress"] == solver, answer
    assert answer["service"] == "shop/cm-acme-http-solver-4bq9d"


@pytest.mark.usefixtures("cli_logging_off")
def test_check_prints_the_new_problems_and_takes_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from controller.cli import main

    def check(*flags: str) -> str:
        out = io.StringIO()
        assert main(["check", "--ingress-class", "nginx", str(CORPUS), *flags], out) == 1
        return out.getvalue()

    # Every access-control annotation is enforced now (issue 18): my-ingress's auth-tls-secret
    # stands in for one that is not.
    make_unenforced(monkeypatch, "auth-tls-secret")
    out = check()
    assert "Ingress default/my-ingress: AccessControlNotEnforced: routes answered 403" in out
    # External auth is enforced (issue 18): that Ingress is served.
    assert "Ingress default/external-auth: AccessControlNotEnforced" not in out
    assert "Ingress notes/custom-404: SnippetRefused: " in out
    assert f"Ingress jumpserver/jms-jumpserver-ingress: UnknownAnnotation: annotation {N}" in out
    # Its host is routed, to a 403; the setting (flag or variable) lifts the 403.
    assert "external-auth-01.sample.com" in out.splitlines()[-1]
    served = check("--serve-without-access-control")
    assert "routes answered 403" not in served and "WITHOUT its access control" in served
    monkeypatch.setenv("PORTICO_SERVE_WITHOUT_ACCESS_CONTROL", "true")
    assert "routes answered 403" not in check()
