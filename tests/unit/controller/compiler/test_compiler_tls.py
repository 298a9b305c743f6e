"""Compiler tables: TLS Secret validation, certificate attachment and HTTPS redirects."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.tls import covers
from proxy.config import HTTPSRedirect
from tests.kube_factory import (
    KeyKind,
    Raw,
    endpoint_slice,
    ingress,
    ingress_class,
    make_cert,
    opaque_secret,
    rule,
    service,
    store_of,
    tls_entry,
    tls_secret,
)

A = "a.example.com"


def run(
    *raws: Raw, hosts: tuple[str, ...] = (A,), tls_hosts: tuple[str, ...] = (A,)
) -> CompileResult:
    ing = ingress(rules=[rule(h) for h in hosts], tls=[tls_entry("web-tls", *tls_hosts)])
    return compile_view(
        store_of(ingress_class(), service("web"), endpoint_slice(), ing, *raws), CompileSettings()
    )


def cert_of(result: CompileResult, host: str) -> str | None:
    for vh in result.snapshot.routes.virtual_hosts:
        if vh.host == host:
            return vh.tls_certificate
    raise AssertionError(f"no virtual host {host}")


@pytest.mark.parametrize("key", ["rsa-pkcs1", "rsa-pkcs8", "ec", "ec-pkcs8"])
def test_valid_certificate_key_formats(key: KeyKind) -> None:
    cert, pem_key = make_cert(A, key=key)
    result = run(tls_secret(cert_pem=cert, key_pem=pem_key))
    assert result.problems == ()
    assert [c.name for c in result.snapshot.certificates] == ["default/web-tls"]
    certificate = result.snapshot.certificates[0]
    assert certificate.hosts == (A,)
    assert certificate.cert_pem == cert.decode() and certificate.key_pem == pem_key.decode()
    assert certificate.not_after > dt.datetime.now(dt.UTC).timestamp()
    assert cert_of(result, A) == "default/web-tls"


def _corrupt(pem: bytes) -> bytes:
    return pem.replace(b"\n", b"\n!", 3)


GOOD_CERT, GOOD_KEY = make_cert(A)
OTHER_CERT, OTHER_KEY = make_cert(A, key="ec")

INVALID_ROWS: list[tuple[str, list[Raw], str]] = [
    # (id, objects, substring of the SecretInvalid message)
    ("missing", [], 'secret "default/web-tls" not found'),
    ("other-namespace", [tls_secret(namespace="other")], "not found"),
    ("wrong-type", [opaque_secret("web-tls", crt="x")], "has type 'Opaque'"),
    (
        "bad-cert-pem",
        [tls_secret(cert_pem=b"-----BEGIN CERTIFICATE-----\nnope\n", key_pem=GOOD_KEY)],
        "tls.crt is not a PEM certificate",
    ),
    (
        "bad-key-pem",
        [tls_secret(cert_pem=GOOD_CERT, key_pem=_corrupt(GOOD_KEY))],
        "tls.key is not an unencrypted PEM private key",
    ),
    (
        "key-mismatch",
        [tls_secret(cert_pem=GOOD_CERT, key_pem=OTHER_KEY)],
        "tls.key does not match the certificate",
    ),
    (
        "expired",
        [tls_secret(cert_pem=(c := make_cert(A, expired=True))[0], key_pem=c[1])],
        "expired",
    ),
    (
        "not-yet-valid",
        [tls_secret(cert_pem=(n := make_cert(A, not_yet_valid=True))[0], key_pem=n[1])],
        "not valid before",
    ),
    ("not-covering", [tls_secret(hosts=["b.example.com"])], 'does not cover host "a.example.com"'),
    (
        "cn-ignored-when-san",
        [tls_secret(cert_pem=(s := make_cert("b.example.com", common_name=A))[0], key_pem=s[1])],
        "does not cover host",
    ),
]


@pytest.mark.parametrize(
    ("objects", "message"), [pytest.param(*row[1:], id=row[0]) for row in INVALID_ROWS]
)
def test_invalid_secret(objects: list[Raw], message: str) -> None:
    result = run(*objects)
    assert [(p.ref, p.reason) for p in result.problems] == [("default/web", "SecretInvalid")]
    assert message in result.problems[0].message
    assert "web-tls" in result.problems[0].message
    assert cert_of(result, A) is None
    assert result.snapshot.certificates == ()
    # The host is still served (with the proxy's default certificate) and still redirected.
    rules = result.snapshot.routes.virtual_hosts[0].rules
    assert rules and all(r.options.step(HTTPSRedirect) for r in rules)


def test_secret_without_data_keys() -> None:
    secret = tls_secret()
    del secret["data"]["tls.key"]
    result = run(secret)
    assert "has no tls.key" in result.problems[0].message


def test_cn_used_when_no_san() -> None:
    cert, key = make_cert(A, san=False)
    result = run(tls_secret(cert_pem=cert, key_pem=key))
    assert result.problems == ()
    assert cert_of(result, A) == "default/web-tls"


def test_only_covered_hosts_get_the_certificate() -> None:
    result = run(
        tls_secret(hosts=[A]),
        hosts=(A, "b.example.com"),
        tls_hosts=(A, "b.example.com"),
    )
    assert [p.message for p in result.problems] == [
        'secret "default/web-tls": certificate does not cover host "b.example.com"'
    ]
    assert cert_of(result, A) == "default/web-tls"
    assert cert_of(result, "b.example.com") is None


def test_wildcard_certificate() -> None:
    result = run(
        tls_secret(hosts=["*.example.com"]),
        hosts=(A, "*.example.com"),
        tls_hosts=(A, "*.example.com"),
    )
    assert result.problems == ()
    assert cert_of(result, A) == "default/web-tls"
    assert cert_of(result, "*.example.com") == "default/web-tls"


@pytest.mark.parametrize(
    ("names", "host", "expected"),
    [
        (("a.example.com",), "a.example.com", True),
        (("*.example.com",), "a.example.com", True),
        (("*.example.com",), "x.a.example.com", False),
        (("*.example.com",), "example.com", False),
        (("*.example.com",), "*.example.com", True),
        (("a.example.com",), "*.example.com", False),
        ((), "a.example.com", False),
    ],
)
def test_covers(names: tuple[str, ...], host: str, expected: bool) -> None:
    assert covers(names, host) is expected


def test_yaml_form_secret_string_data() -> None:
    secret = tls_secret()
    data = secret.pop("data")
    secret["stringData"] = {k: base64.b64decode(v).decode() for k, v in data.items()}
    assert run(secret).problems == ()


# ---- HTTPS redirects -------------------------------------------------------------------------

SSL = "nginx.ingress.kubernetes.io/ssl-redirect"
FORCE = "nginx.ingress.kubernetes.io/force-ssl-redirect"

REDIRECT_ROWS: list[tuple[str, dict[str, str], bool, bool, bool]] = [
    # (id, annotations, host in tls?, host a redirected?, host-less redirected?)
    ("tls-host", {}, True, True, False),
    ("no-tls", {}, False, False, False),
    ("tls-disabled", {SSL: "false"}, True, False, False),
    ("tls-ssl-redirect-true", {SSL: "true"}, True, True, False),
    ("no-tls-ssl-redirect-true", {SSL: "true"}, False, False, False),
    ("force-without-tls", {FORCE: "true"}, False, True, True),
    ("force-and-disabled", {FORCE: "true", SSL: "false"}, True, True, True),
    ("portico-prefix", {"portico.dev/ssl-redirect": "false"}, True, False, False),
]


@pytest.mark.parametrize(
    ("annotations", "in_tls", "redirect_a", "redirect_any"),
    [pytest.param(*row[1:], id=row[0]) for row in REDIRECT_ROWS],
)
def test_ssl_redirect(
    annotations: dict[str, str], in_tls: bool, redirect_a: bool, redirect_any: bool
) -> None:
    ing = ingress(
        rules=[rule(A), rule(None)],
        annotations=annotations,
        tls=[tls_entry(None, A)] if in_tls else None,
    )
    result = compile_view(store_of(ingress_class(), service("web"), ing), CompileSettings())
    by_host = {vh.host: vh for vh in result.snapshot.routes.virtual_hosts}
    assert (by_host[A].rules[0].options.step(HTTPSRedirect) is not None) is redirect_a
    assert (by_host[""].rules[0].options.step(HTTPSRedirect) is not None) is redirect_any


def test_tls_entry_without_secret_only_redirects() -> None:
    ing = ingress(rules=[rule(A)], tls=[tls_entry(None, A)])
    result = compile_view(store_of(ingress_class(), service("web"), ing), CompileSettings())
    assert result.problems == () and result.snapshot.certificates == ()


def test_default_certificate_setting() -> None:
    store = store_of(
        ingress_class(), service("web"), tls_secret("fallback", "portico", hosts=["x.org"])
    )
    result = compile_view(store, CompileSettings(default_certificate="portico/fallback"))
    assert result.snapshot.default_certificate == "portico/fallback"
    assert [c.name for c in result.snapshot.certificates] == ["portico/fallback"]
    bad = compile_view(store, CompileSettings(default_certificate="portico/missing"))
    assert bad.snapshot.default_certificate is None
    assert [(p.kind, p.ref, p.reason) for p in bad.problems] == [
        ("Secret", "portico/missing", "SecretInvalid")
    ]
