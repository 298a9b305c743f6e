"""Compiler tables: annotations parsed into RouteOptions and policy steps; invalid values become
problems."""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import CompileSettings, compile_view
from controller.compiler.annotations import parse_annotations
from proxy.config import (
    DEFAULT_OPTIONS,
    BodyLimit,
    HTTPSRedirect,
    RewriteCookies,
    RewriteRedirects,
)
from tests.kube_factory import ingress, ingress_class, rule, service, store_of, tls_entry

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"

VALID_ROWS: list[tuple[str, str, str, dict[str, Any]]] = [
    # (prefix, name, value, expected RouteOptions fields)
    (N, "load-balance", "round_robin", {"balancer": "round_robin"}),
    (N, "load-balance", "ewma", {"balancer": "least_request"}),
    (P, "load-balance", "least_request", {"balancer": "least_request"}),
    (N, "backend-protocol", "HTTPS", {"upstream_protocol": "HTTPS"}),
    (N, "backend-protocol", "http", {"upstream_protocol": "HTTP"}),
    # backendprotocol.go "should set backend protocol to grpc:// and use grpc_pass" / "grpcs://"
    (N, "backend-protocol", "GRPC", {"upstream_protocol": "GRPC"}),
    (N, "backend-protocol", "grpcs", {"upstream_protocol": "GRPCS"}),
    (N, "proxy-ssl-name", "Internal.Example.com", {"upstream_server_name": "internal.example.com"}),
    (N, "proxy-connect-timeout", "10", {"connect_timeout": 10.0}),
    (P, "proxy-read-timeout", "30", {"read_timeout": 30.0}),
    # proxy.go "should set valid proxy timeouts"; strconv.Atoi takes a sign.
    (N, "proxy-send-timeout", "20", {"send_timeout": 20.0}),
    (N, "proxy-connect-timeout", "+50", {"connect_timeout": 50.0}),
    (N, "proxy-body-size", "0", {"policy": (BodyLimit(0),)}),
    (N, "proxy-body-size", "512k", {"policy": (BodyLimit(512 * 1024),)}),
    (N, "proxy-body-size", "1m", {"policy": (BodyLimit(1024 * 1024),)}),
    (P, "proxy-body-size", "2G", {"policy": (BodyLimit(2 * 1024**3),)}),
    (N, "proxy-body-size", "100", {"policy": (BodyLimit(100),)}),
    # proxy.go "should set proxy client-max-body-size to 8m"
    (N, "proxy-body-size", "8m", {"policy": (BodyLimit(8 * 1024 * 1024),)}),
    # log.go "set access_log off"; booleans as strconv.ParseBool reads them.
    (N, "enable-access-log", "false", {"access_log": False}),
    (N, "enable-access-log", "0", {"access_log": False}),
    (P, "enable-access-log", "True", {"access_log": True}),
    # proxy.go "should setup proxy cookies": one cookie rewrite step holding both rules.
    (
        N,
        "proxy-cookie-domain",
        "localhost example.org",
        {"policy": (RewriteCookies("localhost", "example.org"),)},
    ),
    (
        N,
        "proxy-cookie-path",
        "/one/ /",
        {"policy": (RewriteCookies(path="/one/", path_replacement="/"),)},
    ),
    # nginx proxy_cookie_domain: "a dot at the beginning ... is ignored".
    (
        N,
        "proxy-cookie-domain",
        ".Pod.Local  .example.org",
        {"policy": (RewriteCookies("Pod.Local", "example.org"),)},
    ),
    # The default, "off": no step.
    (N, "proxy-cookie-domain", "off", {"policy": ()}),
    (N, "proxy-cookie-path", "off", {"policy": ()}),
]


@pytest.mark.parametrize(("prefix", "name", "value", "fields"), VALID_ROWS)
def test_valid_annotation(prefix: str, name: str, value: str, fields: dict[str, Any]) -> None:
    opts, errors = parse_annotations({prefix + name: value})
    assert errors == ()
    for field, expected in fields.items():
        assert getattr(opts.route, field) == expected


INVALID_ROWS: list[tuple[str, str]] = [
    ("ssl-redirect", "yes"),
    ("force-ssl-redirect", "1"),
    ("load-balance", "random"),
    ("backend-protocol", "FCGI"),
    ("backend-protocol", "AUTO_HTTP"),
    ("proxy-ssl-name", "not a name"),
    ("proxy-connect-timeout", "0"),
    ("proxy-connect-timeout", "-5"),
    ("proxy-read-timeout", "1m"),
    ("proxy-send-timeout", "abc"),
    ("proxy-body-size", "1t"),
    ("proxy-body-size", "-1"),
    ("proxy-body-size", "1.5m"),
    # proxy.go "should not set proxy client-max-body-size to incorrect value"
    ("proxy-body-size", "15r"),
    # proxy.go "should not set invalid proxy timeouts"
    ("proxy-connect-timeout", "50k"),
    ("proxy-send-timeout", "20k"),
    # strconv.Atoi refuses a unit: ingress-nginx uses its default for "10s"
    ("proxy-read-timeout", "10s"),
    ("enable-access-log", "no"),
    # annotations.md "Proxy cookie domain": "off" or two tokens (cookieDomainRegex)
    ("proxy-cookie-domain", "example.org"),
    ("proxy-cookie-domain", "a b c"),
    ("proxy-cookie-domain", "a.com b;c"),
    ("proxy-cookie-domain", ". example.org"),
    ("proxy-cookie-domain", "~.*\\.local example.org"),
    # nginx takes proxy_cookie_path "off" or two arguments
    ("proxy-cookie-path", "/one/"),
    ("proxy-cookie-path", "~^/one /"),
    ("proxy-cookie-path", "/one/ /two/ /three/"),
    # annotations.md "Proxy redirect": each annotation is one word without spaces
    ("proxy-redirect-from", "http://a /b"),
    ("proxy-redirect-from", "~^http://pod"),
    ("proxy-redirect-to", "/a b"),
]


@pytest.mark.parametrize(("name", "value"), INVALID_ROWS)
def test_invalid_annotation_is_a_problem_and_ignored(name: str, value: str) -> None:
    # A valid sibling annotation (never the one under test) must still apply.
    sibling = "proxy-send-timeout" if name != "proxy-send-timeout" else "proxy-read-timeout"
    annotations = {N + name: value, N + sibling: "7"}
    ing = ingress(annotations=annotations)
    result = compile_view(store_of(ingress_class(), service("web"), ing), CompileSettings())
    assert [(p.ref, p.reason) for p in result.problems] == [("default/web", "InvalidAnnotation")]
    assert N + name in result.problems[0].message and repr(value) in result.problems[0].message
    # The rest of the Ingress is served, with its other annotations.
    rule = result.snapshot.routes.virtual_hosts[0].rules[0]
    assert getattr(rule.options, sibling.removeprefix("proxy-").replace("-", "_")) == 7.0


def test_portico_prefix_wins_over_nginx_prefix() -> None:
    opts, _ = parse_annotations({N + "proxy-read-timeout": "10", P + "proxy-read-timeout": "20"})
    assert opts.route.read_timeout == 20.0


def test_unknown_annotations_are_ignored() -> None:
    opts, errors = parse_annotations(
        {N + "configuration-snippet": "evil;", P + "nope": "x", "other.io/x": "y"}
    )
    assert errors == () and opts.route == DEFAULT_OPTIONS


def test_options_reach_every_rule_of_the_ingress() -> None:
    ing = ingress(annotations={N + "load-balance": "ewma", N + "backend-protocol": "HTTPS"})
    result = compile_view(store_of(ingress_class(), service("web"), ing), CompileSettings())
    options = result.snapshot.routes.virtual_hosts[0].rules[0].options
    assert options.balancer == "least_request" and options.upstream_protocol == "HTTPS"


A = "a.example.com"
POLICY_ROWS: list[tuple[str, dict[str, str], bool, tuple[object, ...]]] = [
    # (id, annotations, host in tls?, the policy of the host's rules, in order)
    ("nothing", {}, False, ()),
    ("tls-host", {}, True, (HTTPSRedirect(),)),
    ("body-limit", {N + "proxy-body-size": "1m"}, False, (BodyLimit(1024 * 1024),)),
    # The redirect goes first: a plain-HTTP request is redirected before its body is limited.
    (
        "tls-host-and-body-limit",
        {N + "proxy-body-size": "1m"},
        True,
        (HTTPSRedirect(), BodyLimit(1024 * 1024)),
    ),
    ("no-limit", {P + "proxy-body-size": "0"}, True, (HTTPSRedirect(), BodyLimit(0))),
    (
        "redirect-off",
        {N + "ssl-redirect": "false", N + "proxy-body-size": "2k"},
        True,
        (BodyLimit(2048),),
    ),
    ("forced", {N + "force-ssl-redirect": "true"}, False, (HTTPSRedirect(),)),
]


@pytest.mark.parametrize(
    ("annotations", "in_tls", "policy"), [pytest.param(*row[1:], id=row[0]) for row in POLICY_ROWS]
)
def test_policy_steps_of_a_rule(
    annotations: dict[str, str], in_tls: bool, policy: tuple[object, ...]
) -> None:
    ing = ingress(
        rules=[rule(A)], annotations=annotations, tls=[tls_entry(None, A)] if in_tls else None
    )
    result = compile_view(store_of(ingress_class(), service("web"), ing), CompileSettings())
    (vhost,) = result.snapshot.routes.virtual_hosts
    assert vhost.rules and all(r.options.policy == policy for r in vhost.rules)


REDIRECT_ROWS: list[tuple[str, dict[str, str], tuple[object, ...], list[str]]] = [
    # (id, annotations, the policy, annotations reported), rows from proxy.go and
    # annotations.md "Proxy redirect" ("off" or "default" in -from disables -to)
    (
        "from-and-to",  # proxy.go "should set proxy_redirect to hello.com goodbye.com"
        {N + "proxy-redirect-from": "hello.com", N + "proxy-redirect-to": "goodbye.com"},
        (RewriteRedirects("hello.com", "goodbye.com"),),
        [],
    ),
    (
        "off",  # proxy.go "should set proxy_redirect to off"
        {N + "proxy-redirect-from": "off", N + "proxy-redirect-to": "goodbye.com"},
        (),
        [],
    ),
    (
        "default",  # proxy.go "should set proxy_redirect to default"
        {N + "proxy-redirect-from": "default", N + "proxy-redirect-to": "goodbye.com"},
        (),
        [],
    ),
    # The template writes no proxy_redirect when -to is "off": nothing is rewritten.
    (
        "to-off",
        {N + "proxy-redirect-from": "http://pod/", N + "proxy-redirect-to": "off"},
        (),
        [],
    ),
    # One half alone rewrites nothing on ingress-nginx either: reported.
    ("from-alone", {N + "proxy-redirect-from": "http://pod/"}, (), ["proxy-redirect-from"]),
    ("to-alone", {N + "proxy-redirect-to": "/app/"}, (), ["proxy-redirect-to"]),
    (
        "portico-prefix-wins",
        {
            N + "proxy-redirect-from": "http://a/",
            P + "proxy-redirect-from": "http://b/",
            N + "proxy-redirect-to": "/x/",
        },
        (RewriteRedirects("http://b/", "/x/"),),
        [],
    ),
    (
        "with-cookies-and-limit",
        {
            N + "proxy-body-size": "1k",
            N + "proxy-redirect-from": "http://pod:8080/",
            N + "proxy-redirect-to": "/",
            N + "proxy-cookie-path": "/ /app/",
        },
        (
            BodyLimit(1024),
            RewriteRedirects("http://pod:8080/", "/"),
            RewriteCookies(path="/", path_replacement="/app/"),
        ),
        [],
    ),
]


@pytest.mark.parametrize(
    ("annotations", "policy", "reported"),
    [pytest.param(*row[1:], id=row[0]) for row in REDIRECT_ROWS],
)
def test_rewrite_steps(
    annotations: dict[str, str], policy: tuple[object, ...], reported: list[str]
) -> None:
    opts, errors = parse_annotations(annotations)
    assert opts.route.policy == policy
    assert [e.annotation.removeprefix(N) for e in errors] == reported
