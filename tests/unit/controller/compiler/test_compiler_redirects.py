"""Compiler tables for the redirect annotations: permanent-redirect, temporal-redirect (+ their
codes) parsed into a `Redirect` step placed first in a route's policy, and from-to-www-redirect
compiled into extra virtual hosts answering with a `HostRedirect`.

Rows cite ingress-nginx: internal/ingress/annotations/redirect/redirect.go (parsing, defaults,
precedence) and redirect_test.go, test/e2e/annotations/redirect.go and fromtowwwredirect.go, the
annotations page (docs/user-guide/nginx-configuration/annotations.md), and
pkg/util/ingress/ingress.go BuildRedirects (which other names get a redirect server).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.annotations import parse_annotations
from controller.compiler.ingress import INVALID_REDIRECT
from controller.explain import explain
from proxy.config import (
    BodyLimit,
    HostRedirect,
    HTTPSRedirect,
    PolicyStep,
    Redirect,
    Refuse,
    SourceRanges,
    VirtualHost,
)
from tests.kube_factory import (
    ingress,
    ingress_class,
    path,
    rule,
    service,
    store_of,
    tls_entry,
    tls_secret,
)
from tests.unenforced import unenforced  # noqa: F401 (a fixture)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
URL = "http://redirect.example.com"


class Parsed(NamedTuple):
    annotations: dict[str, str]
    redirect: Redirect | None  # the step the Ingress gets (None: none)
    invalid: bool  # the routes fail closed (503 InvalidRedirect)
    problems: frozenset[str]  # annotations reported InvalidAnnotation


def _row(
    redirect: Redirect | None, *problems: str, invalid: bool = False, **annotations: str
) -> Parsed:
    names = {k.replace("_", "-"): v for k, v in annotations.items()}
    return Parsed(
        {N + k: v for k, v in names.items()},
        redirect,
        invalid,
        frozenset(N + p for p in problems),
    )


PARSE_ROWS: dict[str, Parsed] = {
    # redirect.go "should respond with a standard redirect code"
    "permanent-default-301": _row(Redirect(URL, 301), permanent_redirect=URL),
    # redirect.go "should respond with a custom redirect code" (302)
    "permanent-custom-code": _row(
        Redirect(URL, 302), permanent_redirect=URL, permanent_redirect_code="302"
    ),
    # annotations.md "Permanent Redirect Code": '308' returns the permanent-redirect with a 308
    "permanent-308": _row(
        Redirect(URL, 308), permanent_redirect=URL, permanent_redirect_code="308"
    ),
    # redirect_test.go TestPermanentRedirectWithCustomCode "invalid code" (418 -> 301); Portico
    # also reports it
    "permanent-teapot-defaults": _row(
        Redirect(URL, 301),
        "permanent-redirect-code",
        permanent_redirect=URL,
        permanent_redirect_code="418",
    ),
    # redirect.go: ValidateInt refuses a code that is not a number (ingress-nginx drops the
    # Ingress); Portico reports it and uses the default code
    "permanent-code-not-a-number": _row(
        Redirect(URL, 301),
        "permanent-redirect-code",
        permanent_redirect=URL,
        permanent_redirect_code="moved",
    ),
    # nginx `return 300 URL` sends the URL as the body, no Location: not a redirect
    "permanent-300-not-a-redirect": _row(
        Redirect(URL, 301),
        "permanent-redirect-code",
        permanent_redirect=URL,
        permanent_redirect_code="300",
    ),
    # redirect_test.go TestTemporalRedirectWithDefaultCode
    "temporal-default-302": _row(Redirect(URL, 302), temporal_redirect=URL),
    # annotations.md "Temporal Redirect Code": '307'; redirect_test.go "valid code"
    "temporal-307": _row(Redirect(URL, 307), temporal_redirect=URL, temporal_redirect_code="307"),
    # redirect.go: the temporal range stops at 307 (StatusTemporaryRedirect): 308 gives 302
    "temporal-308-defaults": _row(
        Redirect(URL, 302),
        "temporal-redirect-code",
        temporal_redirect=URL,
        temporal_redirect_code="308",
    ),
    # redirect_test.go TestTemporalRedirectWithCustomCode "invalid code" (418 -> 302)
    "temporal-teapot-defaults": _row(
        Redirect(URL, 302),
        "temporal-redirect-code",
        temporal_redirect=URL,
        temporal_redirect_code="418",
    ),
    # redirect.go Parse: "If the Ingress contains both annotations the execution order is
    # temporal and then permanent"; each keeps its own code
    "temporal-wins": _row(
        Redirect("https://t.example", 302),
        temporal_redirect="https://t.example",
        permanent_redirect="https://p.example",
        permanent_redirect_code="308",
    ),
    # a code without its URL does nothing (redirect.go only returns a Config with a URL)
    "code-alone": _row(None, permanent_redirect_code="308"),
    # annotations.md "Permanent Redirect" example; query strings are in ingress-nginx's grammar
    "query-and-port-kept-as-written": _row(
        Redirect("HTTPS://www.google.com:8443/a/b?x=1&y=2", 301),
        permanent_redirect=" HTTPS://www.google.com:8443/a/b?x=1&y=2 ",
    ),
    # redirect_test.go TestIsValidURL: "ok.com" has no http(s) scheme
    "no-scheme-fails-closed": _row(
        None, "permanent-redirect", invalid=True, permanent_redirect="ok.com"
    ),
    "ftp-fails-closed": _row(
        None, "temporal-redirect", invalid=True, temporal_redirect="ftp://x.example"
    ),
    # parser.URLIsValidRegex: no spaces, "%", "#", quotes...; ingress-nginx drops the Ingress
    "characters-fail-closed": _row(
        None, "permanent-redirect", invalid=True, permanent_redirect="https://x.example/a b"
    ),
    "header-injection-fails-closed": _row(
        None,
        "permanent-redirect",
        invalid=True,
        permanent_redirect="https://x.example/\r\nSet-Cookie: a=b",
    ),
    "no-host-fails-closed": _row(
        None, "permanent-redirect", invalid=True, permanent_redirect="https://"
    ),
    # the winning annotation decides: an invalid temporal-redirect is not replaced by a valid
    # permanent-redirect (redirect.go returns the temporal error), an invalid permanent one
    # does not matter when a temporal one wins
    "invalid-temporal-wins": _row(
        None,
        "temporal-redirect",
        invalid=True,
        temporal_redirect="ok.com",
        permanent_redirect=URL,
    ),
    "invalid-permanent-loses": _row(
        Redirect(URL, 302), "permanent-redirect", temporal_redirect=URL, permanent_redirect="ok.com"
    ),
    # parser.parseString: an empty value is no redirect (ingress-nginx serves the Ingress)
    "empty-is-no-redirect": _row(None, permanent_redirect=""),
}


@pytest.mark.parametrize("row", [pytest.param(r, id=k) for k, r in PARSE_ROWS.items()])
def test_redirect_annotations(row: Parsed) -> None:
    opts, errors = parse_annotations(row.annotations)
    assert opts.url_redirect == row.redirect
    assert opts.invalid_redirect == row.invalid
    assert {e.annotation for e in errors} == row.problems


def test_portico_prefix_wins() -> None:
    opts, _ = parse_annotations(
        {N + "permanent-redirect": URL, P + "permanent-redirect": "https://p.example"}
    )
    assert opts.url_redirect == Redirect("https://p.example", 301)
    # An invalid Portico value is not replaced by the valid nginx one: it fails closed.
    opts, errors = parse_annotations({N + "permanent-redirect": URL, P + "permanent-redirect": "x"})
    assert opts.invalid_redirect and opts.url_redirect is None and len(errors) == 1


# ---- where the step goes in the policy ---------------------------------------------------------


def _compile(*raws: Any) -> CompileResult:
    return compile_view(store_of(ingress_class(), service("web"), *raws), CompileSettings())


def _policy(result: CompileResult, host: str, path_: str = "/") -> tuple[PolicyStep, ...]:
    (vhost,) = [vh for vh in result.snapshot.routes.virtual_hosts if vh.host == host]
    (found,) = [r for r in vhost.rules if r.path == path_]
    return found.options.policy


MOVED = Redirect(URL, 301)
DENIED = Refuse(403, "AccessControlNotEnforced")


class Placed(NamedTuple):
    annotations: dict[str, str]
    tls: bool
    policy: tuple[PolicyStep, ...]


PLACEMENT_ROWS: dict[str, Placed] = {
    # nginx runs `return` in the location's rewrite phase, before the Lua rewrite that makes the
    # HTTPS redirect (nginx.tmpl: `return {{ $location.Redirect.Code }}` in the location;
    # lua-nginx-module runs rewrite_by_lua after ngx_http_rewrite_module)
    "before-https-redirect": Placed({"permanent-redirect": URL}, True, (MOVED, HTTPSRedirect())),
    "no-tls": Placed({"permanent-redirect": URL}, False, (MOVED,)),
    # access checks (nginx's access phase: allow/deny, auth) come after the rewrite phase
    "before-source-ranges": Placed(
        {"permanent-redirect": URL, "whitelist-source-range": "10.0.0.0/8"},
        False,
        (MOVED, SourceRanges(("10.0.0.0/8",), ())),
    ),
    "before-unenforced-auth": Placed(
        {"permanent-redirect": URL, "auth-tls-match-cn": "CN=client"},
        False,
        (MOVED, DENIED),
    ),
    "before-body-limit": Placed(
        {"permanent-redirect": URL, "proxy-body-size": "1k"}, False, (MOVED, BodyLimit(1024))
    ),
    # nginx.tmpl: a denied location (`return 503`) has no redirect at all
    "not-for-a-denied-location": Placed(
        {"permanent-redirect": URL, "whitelist-source-range": "10.0.0.0/33"},
        False,
        (Refuse(503, "InvalidSourceRange"),),
    ),
    # fail closed: an unreadable URL answers 503 before anything else
    "invalid-url-first": Placed(
        {"permanent-redirect": "ok.com"}, True, (INVALID_REDIRECT, HTTPSRedirect())
    ),
}


@pytest.mark.parametrize("row", [pytest.param(r, id=k) for k, r in PLACEMENT_ROWS.items()])
@pytest.mark.usefixtures("unenforced")
def test_redirect_step_place(row: Placed) -> None:
    tls = [tls_entry(None, "r.example")] if row.tls else None
    ing = ingress(annotations={N + k: v for k, v in row.annotations.items()}, tls=tls)
    ing["spec"]["rules"] = [rule("r.example")]
    result = _compile(ing)
    assert _policy(result, "r.example") == row.policy


def test_every_route_of_the_ingress_redirects() -> None:
    # annotations.md "Permanent Redirect": everything is redirected; the ACME path too (nginx's
    # `return` has no exception for no-tls-redirect-locations), and the defaultBackend fallback.
    ing = ingress(
        annotations={N + "permanent-redirect": URL},
        rules=[
            rule(
                "r.example", path("/api"), path("/.well-known/acme-challenge/t", path_type="Exact")
            )
        ],
        default_backend={"service": {"name": "web", "port": {"number": 80}}},
    )
    result = _compile(ing)
    (vhost,) = result.snapshot.routes.virtual_hosts
    assert vhost.fallback is not None and vhost.fallback.options.policy == (MOVED,)
    assert [r.options.policy for r in vhost.rules] == [(MOVED,), (MOVED,)]
    assert result.problems == ()


# ---- from-to-www-redirect: the other names ------------------------------------------------------

WWW = {N + "from-to-www-redirect": "true"}


def _vhosts(result: CompileResult) -> dict[str, VirtualHost]:
    return {vh.host: vh for vh in result.snapshot.routes.virtual_hosts}


def _redirects_to(vhost: VirtualHost) -> str | None:
    (only,) = vhost.rules
    step = only.options.step(HostRedirect)
    assert step is None or (only.path, only.match, only.options.policy) == ("/", "prefix", (step,))
    return None if step is None else step.host


class Www(NamedTuple):
    ingresses: list[dict[str, Any]]
    redirects: dict[str, str]  # other name -> the host it redirects to


WWW_ROWS: dict[str, Www] = {
    # fromtowwwredirect.go "should redirect from www HTTP to HTTP"
    "bare-host-gets-www": Www(
        [ingress(annotations=WWW, rules=[rule("fromtowwwredirect.bar.com")])],
        {"www.fromtowwwredirect.bar.com": "fromtowwwredirect.bar.com"},
    ),
    # annotations.md "Redirect from/to www": a www. host gets its bare name redirected to it
    "www-host-gets-bare": Www(
        [ingress(annotations=WWW, rules=[rule("www.example.com")])],
        {"example.com": "www.example.com"},
    ),
    # BuildRedirects: one redirect per server; every host of the Ingress
    "each-host": Www(
        [ingress(annotations=WWW, rules=[rule("a.example"), rule("www.b.example")])],
        {"www.a.example": "a.example", "b.example": "www.b.example"},
    ),
    # annotations.md: "If at some point a new Ingress is created with a host equal to one of the
    # options (like domain.com) the annotation will be omitted" (BuildRedirects: "Already
    # exists an Ingress with ... hostname")
    "other-name-is-a-rule-host": Www(
        [
            ingress("a", annotations=WWW, rules=[rule("example.com")]),
            ingress("b", rules=[rule("www.example.com")], created=5),
        ],
        {},
    ),
    "both-names-in-one-ingress": Www(
        [ingress(annotations=WWW, rules=[rule("example.com"), rule("www.example.com")])], {}
    ),
    # the redirect belongs to the server: another Ingress of the same host does not stop it
    "host-shared-with-another-ingress": Www(
        [
            ingress("a", annotations=WWW, rules=[rule("example.com", path("/a"))]),
            ingress("b", rules=[rule("example.com", path("/b"))], created=5),
        ],
        {"www.example.com": "example.com"},
    ),
    "false-is-off": Www(
        [ingress(annotations={N + "from-to-www-redirect": "false"}, rules=[rule("a.example")])],
        {},
    ),
    # no other name for a wildcard or a host-less rule (nginx has no "www.*.example.com")
    "no-wildcard-or-host-less": Www(
        [ingress(annotations=WWW, rules=[rule("*.example.com"), rule()])], {}
    ),
}


@pytest.mark.parametrize("row", [pytest.param(r, id=k) for k, r in WWW_ROWS.items()])
def test_from_to_www_virtual_hosts(row: Www) -> None:
    result = _compile(*row.ingresses)
    added = {
        host: target
        for host, vh in _vhosts(result).items()
        if (target := _redirects_to(vh) if len(vh.rules) == 1 else None) is not None
    }
    assert added == row.redirects
    assert result.problems == ()


def test_www_redirect_and_the_hosts_own_redirect_are_independent() -> None:
    # The host keeps its own routes and policy (here a permanent-redirect); the other name only
    # sends clients to the host, with 308 (nginx.tmpl `return {{ $all.Cfg.HTTPRedirectCode }}`,
    # http-redirect-code defaults to 308) and no other step.
    ing = ingress(annotations={**WWW, N + "permanent-redirect": URL}, rules=[rule("example.com")])
    vhosts = _vhosts(_compile(ing))
    assert vhosts["example.com"].rules[0].options.policy == (MOVED,)
    assert vhosts["www.example.com"].rules[0].options.policy == (HostRedirect("example.com", 308),)


def _www_tls(cert_hosts: tuple[str, ...]) -> CompileResult:
    return _compile(
        tls_secret("site-tls", hosts=cert_hosts),
        ingress(
            annotations=WWW,
            rules=[rule("example.com")],
            tls=[tls_entry("site-tls", "example.com")],
        ),
    )


@pytest.mark.parametrize(
    ("cert_hosts", "served"),
    [
        # fromtowwwredirect.go "should redirect from www HTTPS to HTTPS": the certificate has
        # both names, so www. gets it (nginx.go configureCertificates: the redirect's SSLCert)
        pytest.param(("example.com", "www.example.com"), "default/site-tls", id="covered"),
        pytest.param(("example.com", "*.example.com"), "default/site-tls", id="wildcard-covers"),
        # BuildRedirects: "the SSL certificate does not contains a CN for ... Redirects will not
        # work for HTTPS to HTTPS": the default certificate then
        pytest.param(("example.com",), None, id="not-covered"),
    ],
)
def test_www_redirect_certificate(cert_hosts: tuple[str, ...], served: str | None) -> None:
    vhosts = _vhosts(_www_tls(cert_hosts))
    assert vhosts["example.com"].tls_certificate == "default/site-tls"
    assert vhosts["www.example.com"].tls_certificate == served
    assert _redirects_to(vhosts["www.example.com"]) == "example.com"


# ---- portico explain ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "reason", "ingress_ref"),
    [
        pytest.param("http://r.example/x", 301, "Redirect", "default/moved", id="url-redirect"),
        # before the HTTPS redirect of its TLS host, as the worker runs the steps
        pytest.param("http://t.example/x", 301, "Redirect", "default/tls-moved", id="before-ssl"),
        pytest.param("http://bad.example/", 503, "InvalidRedirect", "default/bad", id="invalid"),
        pytest.param(
            "https://www.r.example/a", 308, "FromToWWWRedirect", "default/moved", id="www"
        ),
        pytest.param("http://www.t.example/", None, None, None, id="no-www-without-annotation"),
    ],
)
def test_explain_says_who_redirects(
    url: str, status: int | None, reason: str | None, ingress_ref: str | None
) -> None:
    store = store_of(
        ingress_class(),
        service("web"),
        ingress(
            "moved", annotations={N + "permanent-redirect": URL, **WWW}, rules=[rule("r.example")]
        ),
        ingress(
            "tls-moved",
            annotations={N + "permanent-redirect": URL},
            rules=[rule("t.example")],
            tls=[tls_entry(None, "t.example")],
        ),
        ingress(
            "bad", annotations={N + "permanent-redirect": "ok.com"}, rules=[rule("bad.example")]
        ),
    )
    answer = explain(compile_view(store, CompileSettings()), store, url, {})
    if status is None:
        assert answer["status"] == 404
        return
    assert (answer["status"], answer["reason"], answer["ingress"]) == (status, reason, ingress_ref)
