"""Client certificates (auth-tls-*) in the compiler: the annotations' grammars, the
ClientCertificate step on every rule of the host (the first Ingress of a host gives it, as
ingress-nginx sets it on the server block), and fail-closed answers for what cannot be used.

Rows cite ingress-nginx's internal/ingress/annotations/authtls/main.go (grammar, defaults),
parser.CommonNameAnnotationValidator, nginx.tmpl (server-level ssl_verify_client) and the
e2e tests in test/e2e/annotations/authtls.go.
"""

from __future__ import annotations

from typing import Any

import pytest
import trustme

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.annotations import ClientAuth, parse_annotations
from proxy.config import ClientCertificate, HTTPSRedirect, Refuse, RouteOptions
from tests.kube_factory import (
    ca_secret,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    store_of,
    tls_entry,
    tls_secret,
)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
A = "a.example.com"
CA = trustme.CA().cert_pem.bytes().decode()

# (annotations besides auth-tls-secret, the ClientAuth expected; source)
VALID: list[tuple[dict[str, str], ClientAuth]] = [
    # main.go: defaultAuthVerifyClient "on", defaultAuthTLSDepth 1.
    ({}, ClientAuth("default/ca")),
    ({"auth-tls-verify-client": "optional"}, ClientAuth("default/ca", verify="optional")),
    (
        {"auth-tls-verify-client": "optional_no_ca"},
        ClientAuth("default/ca", verify="optional_no_ca"),
    ),
    ({"auth-tls-verify-client": "off"}, ClientAuth("default/ca", verify="off")),
    # main.go: a depth of 0 is the default, 1.
    ({"auth-tls-verify-depth": "0"}, ClientAuth("default/ca")),
    ({"auth-tls-verify-depth": "2"}, ClientAuth("default/ca", depth=2)),
    (
        {"auth-tls-error-page": "http://errors.example.com/error"},
        ClientAuth("default/ca", error_page="http://errors.example.com/error"),
    ),
    (
        {"auth-tls-pass-certificate-to-upstream": "true"},
        ClientAuth("default/ca", pass_certificate=True),
    ),
    # authtls.go "...where atleast one of the regex options matches CN from client"
    (
        {"auth-tls-match-cn": "CN=(itwillmatch|withthenextoption|authtls)"},
        ClientAuth("default/ca", match_cn="CN=(itwillmatch|withthenextoption|authtls)"),
    ),
]


@pytest.mark.parametrize(("annotations", "expected"), VALID)
@pytest.mark.parametrize("prefix", [N, P])
def test_valid(prefix: str, annotations: dict[str, str], expected: ClientAuth) -> None:
    given = {prefix + "auth-tls-secret": "default/ca"}
    given.update({prefix + k: v for k, v in annotations.items()})
    opts, errors = parse_annotations(given)
    assert errors == ()
    assert opts.client_auth == expected and not opts.invalid_client_auth


INVALID: list[tuple[str, str]] = [
    ("auth-tls-verify-client", "sometimes"),  # authVerifyClientRegex
    ("auth-tls-verify-client", "ON"),
    ("auth-tls-verify-depth", "-1"),
    ("auth-tls-verify-depth", "deep"),
    ("auth-tls-pass-certificate-to-upstream", "yes"),
    ("auth-tls-match-cn", "authtls"),  # CommonNameAnnotationValidator: missing "CN="
    ("auth-tls-match-cn", "CN=(a)\\1"),  # RE2: no backreferences
    ("auth-tls-error-page", "/error"),  # Portico: only URLs (nginx: an internal redirect)
    ("auth-tls-error-page", "@errors"),
    ("auth-tls-secret", "a/b/c"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_fails_closed(name: str, value: str) -> None:
    given = {N + "auth-tls-secret": "default/ca", N + name: value}
    opts, errors = parse_annotations(given)
    assert [e.annotation for e in errors] == [N + name]
    assert opts.client_auth is None and opts.invalid_client_auth


def test_nothing_without_a_secret() -> None:
    """main.go: without auth-tls-secret the other annotations do nothing."""
    opts, errors = parse_annotations({N + "auth-tls-match-cn": "CN=x"})
    assert errors == () and opts.client_auth is None and not opts.invalid_client_auth


def compiled(*raws: Any) -> CompileResult:
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", 8080)]),
        endpoint_slice("web"),
        tls_secret("a-tls", hosts=(A,)),
        ca_secret("ca", CA.encode()),
        *raws,
    ]
    return compile_view(store_of(*objects), CompileSettings())


def options_by_path(result: CompileResult, host: str = A) -> dict[str, RouteOptions]:
    (vhost,) = [v for v in result.snapshot.routes.virtual_hosts if v.host == host]
    return {r.path: r.options for r in vhost.rules}


def test_every_rule_of_the_host_gets_the_first_ingress_step() -> None:
    """nginx.tmpl: ssl_verify_client is set on the server: every location of the host is
    checked, whichever Ingress it comes from; the first Ingress with it gives it."""
    annotations = {N + "auth-tls-secret": "ca", N + "auth-tls-verify-client": "optional"}
    result = compiled(
        ingress("first", rules=[rule(A)], tls=[tls_entry("a-tls", A)], annotations=annotations),
        ingress(
            "second",
            rules=[rule(A, path("/other"))],
            annotations={N + "auth-tls-secret": "default/ca"},
            created=5,
        ),
    )
    assert result.problems == ()
    expected = ClientCertificate(CA, "optional")
    for options in options_by_path(result).values():
        assert options.step(ClientCertificate) == expected
        # First, after the HTTPS redirect of a TLS Ingress (the proxy runs it first on HTTPS).
        steps = [s for s in options.policy if not isinstance(s, HTTPSRedirect)]
        assert steps[0] == expected


@pytest.mark.parametrize(
    ("secret", "objects"),
    [
        pytest.param("default/missing", [], id="missing"),
        pytest.param("other/ca", [ca_secret("ca", CA.encode(), namespace="other")], id="other-ns"),
        pytest.param("default/bad", [ca_secret("bad", b"not a certificate")], id="no-pem"),
    ],
)
def test_unusable_secret_answers_403(secret: str, objects: list[Any]) -> None:
    """main.go: an error obtaining the certificate (or a cross-namespace Secret, not allowed
    by default) is an AuthTLSError: nginx.tmpl's server answers `return 403`."""
    result = compiled(
        ingress(
            "a",
            rules=[rule(A)],
            tls=[tls_entry("a-tls", A)],
            annotations={N + "auth-tls-secret": secret},
        ),
        *objects,
    )
    assert [p.reason for p in result.problems] == ["SecretInvalid"]
    (options,) = options_by_path(result).values()
    assert Refuse(403, "ClientCertificateSecretInvalid") in options.policy
    assert options.step(ClientCertificate) is None


def test_invalid_value_answers_503() -> None:
    result = compiled(
        ingress(
            "a",
            rules=[rule(A)],
            annotations={N + "auth-tls-secret": "ca", N + "auth-tls-verify-depth": "x"},
        )
    )
    assert [p.reason for p in result.problems] == ["InvalidAnnotation"]
    (options,) = options_by_path(result).values()
    assert options.policy[0] == Refuse(503, "InvalidClientCertificate")
