"""Client certificates (auth-tls-*) through real TLS: the proxy's HTTPS listener asks the
client for a certificate, verifies it against the Secret's ca.crt, answers as ingress-nginx
does, and tells the echo pod what it found in the ssl-client-* fields.

Rows cite ingress-nginx's test/e2e/annotations/authtls.go (`authtls.go "<test name>"`) or its
annotations documentation / nginx.tmpl where no e2e test covers the case.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import string
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from backends import Pod, Response
from tls_env import client_context, compiled, header_map, running, tls_client

from controller.compiler.problems import SECRET_INVALID
from tests.kube_factory import ca_secret, ingress, rule, tls_entry, tls_secret

A = "a.example.com"
B = "b.example.com"
C = "c.example.com"
N = "nginx.ingress.kubernetes.io/"
ERROR_PAGE = "http://errors.example.com/error"

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    started = await Pod("127.0.0.2").start()
    yield started
    await started.stop()


def client_with(cert: trustme.LeafCert | None) -> ssl.SSLContext:
    context = client_context()
    if cert is not None:
        cert.configure_cert(context)
    return context


async def request(
    port: int,
    host: str,
    cert: trustme.LeafCert | None = None,
    *,
    sni: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    client = await tls_client(port, sni or host, client_with(cert))
    try:
        return await client.request("GET", "/echo", headers=headers, host=host)
    finally:
        await client.close()


def seen(resp: Response) -> dict[str, str]:
    """The fields the pod received."""
    doc: dict[str, Any] = resp.json()
    return header_map(doc["headers"])


def objects(annotations: dict[str, str], ca_pem: bytes, *extra: Any) -> list[Any]:
    return [
        ingress("a", rules=[rule(A)], tls=[tls_entry("a-tls", A)], annotations=annotations),
        tls_secret("a-tls", hosts=(A,)),
        ca_secret("ca", ca_pem),
        *extra,
    ]


SECRET = {N + "auth-tls-secret": "default/ca"}

# (id, annotations, which client certificate, status, ssl-client-verify at the pod, source)
ROWS = [
    ("on-valid", {}, "valid", 200, "SUCCESS", 'authtls.go "should set sslClientCertificate..."'),
    ("on-none", {}, None, 400, None, 'authtls.go "should set sslClientCertificate..."'),
    ("on-other-ca", {}, "other", 400, None, "nginx ssl_verify_client on (495 -> 400)"),
    (
        "off-none",
        {N + "auth-tls-verify-client": "off", N + "auth-tls-verify-depth": "2"},
        None,
        200,
        "NONE",
        'authtls.go "should set valid auth-tls-secret, sslVerify to off, and sslVerifyDepth to 2"',
    ),
    ("optional-none", {N + "auth-tls-verify-client": "optional"}, None, 200, "NONE", "docs"),
    ("optional-valid", {N + "auth-tls-verify-client": "optional"}, "valid", 200, "SUCCESS", "docs"),
    ("optional-other-ca", {N + "auth-tls-verify-client": "optional"}, "other", 400, None, "docs"),
    (
        "optional_no_ca-other-ca",
        {N + "auth-tls-verify-client": "optional_no_ca"},
        "other",
        200,
        "FAILED:",
        "docs: optional_no_ca does not require the CA",
    ),
    ("depth-1-intermediate", {}, "chained", 400, None, "docs: auth-tls-verify-depth (default 1)"),
    (
        "depth-2-intermediate",
        {N + "auth-tls-verify-depth": "2"},
        "chained",
        200,
        "SUCCESS",
        "docs: auth-tls-verify-depth",
    ),
    (
        "match-cn-no-match",
        {N + "auth-tls-match-cn": "CN=notgonnamatch"},
        "valid",
        403,
        None,
        'authtls.go "should return 403 using auth-tls-match-cn with no matching CN from client"',
    ),
    (
        "match-cn-match",
        {N + "auth-tls-match-cn": "CN=authtls"},
        "valid",
        200,
        "SUCCESS",
        'authtls.go "should return 200 using auth-tls-match-cn with matching CN from client"',
    ),
    (
        "match-cn-alternatives",
        {N + "auth-tls-match-cn": "CN=(itwillmatch|withthenextoption|authtls)"},
        "valid",
        200,
        "SUCCESS",
        'authtls.go "should return 200 using auth-tls-match-cn where atleast one of the regex '
        'options matches CN from client"',
    ),
    (
        "error-page-none",
        {N + "auth-tls-error-page": ERROR_PAGE},
        None,
        302,
        None,
        'authtls.go "should 302 redirect to error page instead of 400 when auth-tls-error-page '
        'is set"',
    ),
    (
        "error-page-valid",
        {N + "auth-tls-error-page": ERROR_PAGE},
        "valid",
        200,
        "SUCCESS",
        'authtls.go "should 302 redirect to error page instead of 400 when auth-tls-error-page '
        'is set"',
    ),
]


@pytest.mark.parametrize(
    ("annotations", "which", "status", "verify"),
    [pytest.param(a, w, s, v, id=i) for i, a, w, s, v, _source in ROWS],
)
async def test_client_certificate_rows(
    ca: trustme.CA,
    other_ca: trustme.CA,
    pod: Pod,
    *,
    annotations: dict[str, str],
    which: str | None,
    status: int,
    verify: str | None,
) -> None:
    certs = {
        "valid": ca.issue_cert("authtls@example.com", common_name="authtls"),
        "other": other_ca.issue_cert("authtls@example.com", common_name="authtls"),
        # Two intermediates: OpenSSL's depth 1 allows the leaf, one intermediate and the root.
        "chained": ca.create_child_ca()
        .create_child_ca()
        .issue_cert("authtls@example.com", common_name="authtls"),
    }
    result = compiled(
        *objects({**SECRET, **annotations}, ca.cert_pem.bytes()), pod=(pod.host, pod.port)
    )
    assert result.problems == ()
    async with running(result.snapshot) as proxy:
        resp = await request(proxy.https_port, A, certs[which] if which else None)
        assert resp.status == status
        if status == 302:
            assert resp.header("Location") == ERROR_PAGE
        if status != 200:
            assert pod.requests == 0
            return
        fields = seen(resp)
        assert verify is not None and fields["ssl-client-verify"].startswith(verify)
        if which is None:
            assert "ssl-client-subject-dn" not in fields
        else:
            assert "CN=authtls" in fields["ssl-client-subject-dn"]
            assert fields["ssl-client-issuer-dn"]
        assert "ssl-client-cert" not in fields  # only with pass-certificate-to-upstream


async def test_pass_certificate_to_upstream(ca: trustme.CA, pod: Pod) -> None:
    """authtls.go "should pass URL-encoded certificate to upstream"."""
    cert = ca.issue_cert("authtls@example.com", common_name="authtls")
    annotations = {**SECRET, N + "auth-tls-pass-certificate-to-upstream": "true"}
    result = compiled(*objects(annotations, ca.cert_pem.bytes()), pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:
        assert (await request(proxy.https_port, A)).status == 400
        resp = await request(proxy.https_port, A, cert)
        assert resp.status == 200
        sent = seen(resp)["ssl-client-cert"]
        assert sent.startswith("-----BEGIN%20CERTIFICATE-----%0A")
        leaf = cert.cert_chain_pems[0].bytes().decode()
        assert urllib.parse.unquote(sent) == leaf  # the whole PEM, nothing else escaped away
        assert not set(sent) - set(string.ascii_letters + string.digits + "%-._~")


async def test_client_fields_are_replaced(ca: trustme.CA, pod: Pod) -> None:
    """nginx.tmpl: proxy_set_header ssl-client-verify ... replaces what the client sent."""
    forged = {"ssl-client-verify": "SUCCESS", "ssl-client-cert": "x", "SSL-Client-Subject-DN": "y"}
    annotations = {**SECRET, N + "auth-tls-verify-client": "optional"}
    result = compiled(*objects(annotations, ca.cert_pem.bytes()), pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:
        resp = await request(proxy.https_port, A, headers=forged)
        assert resp.status == 200
        pairs = [(k.lower(), v) for k, v in resp.json()["headers"]]
        assert [v for k, v in pairs if k == "ssl-client-verify"] == ["NONE"]
        assert not [k for k, _ in pairs if k in ("ssl-client-cert", "ssl-client-subject-dn")]


async def test_other_hosts_do_not_ask_and_sni_cannot_borrow(
    ca: trustme.CA, other_ca: trustme.CA, pod: Pod
) -> None:
    """Per host (nginx's server block): B on the same listener serves without a certificate
    and its pod gets no ssl-client-* field; a connection whose handshake named B cannot reach
    A's routes unverified (400), and one verified for C's CA is misdirected for A (421, nginx's
    check of the SNI against Host for hosts with ssl_verify_client)."""
    cert = ca.issue_cert("authtls@example.com", common_name="authtls")
    c_cert = other_ca.issue_cert("authtls@example.com", common_name="authtls")
    result = compiled(
        *objects(SECRET, ca.cert_pem.bytes()),
        ingress("b", rules=[rule(B)], tls=[tls_entry("b-tls", B)]),
        tls_secret("b-tls", hosts=(B,)),
        ingress(
            "c",
            rules=[rule(C)],
            tls=[tls_entry("c-tls", C)],
            annotations={N + "auth-tls-secret": "default/c-ca"},
        ),
        tls_secret("c-tls", hosts=(C,)),
        ca_secret("c-ca", other_ca.cert_pem.bytes()),
        pod=(pod.host, pod.port),
    )
    assert result.problems == ()
    async with running(result.snapshot) as proxy:
        port = proxy.https_port
        resp = await request(port, B, cert)
        assert resp.status == 200
        assert not [k for k in seen(resp) if k.startswith("ssl-client")]
        assert (await request(port, A, cert, sni=B)).status == 400
        assert (await request(port, A, c_cert, sni=C)).status == 421
        assert (await request(port, C, c_cert)).status == 200
        assert (await request(port, A, cert)).status == 200


async def test_plain_http_is_redirected_then_refused_without_certificate(
    ca: trustme.CA, pod: Pod
) -> None:
    """ingress-nginx redirects a TLS host's plain HTTP first; with ssl-redirect off it would
    serve it unchecked, Portico answers 400 (no certificate on plain HTTP)."""
    from backends import Client

    for redirect, status in (({}, 308), ({N + "ssl-redirect": "false"}, 400)):
        result = compiled(
            *objects({**SECRET, **redirect}, ca.cert_pem.bytes()), pod=(pod.host, pod.port)
        )
        async with running(result.snapshot) as proxy:
            client = await Client.connect(proxy.http_port)
            try:
                assert (await client.request("GET", "/echo", host=A)).status == status
            finally:
                await client.close()


@pytest.mark.parametrize(
    ("annotations", "extra", "status", "reason"),
    [
        pytest.param({N + "auth-tls-secret": "default/missing"}, False, 403, SECRET_INVALID),
        pytest.param({N + "auth-tls-secret": "other/ca"}, False, 403, SECRET_INVALID),
        pytest.param(
            {**SECRET, N + "auth-tls-verify-client": "sometimes"}, True, 503, "InvalidAnnotation"
        ),
        pytest.param(
            {**SECRET, N + "auth-tls-match-cn": "CN=(a)\\1"}, True, 503, "InvalidAnnotation"
        ),
        pytest.param(
            {**SECRET, N + "auth-tls-error-page": "/error"}, True, 503, "InvalidAnnotation"
        ),
    ],
)
async def test_unusable_values_fail_closed(
    ca: trustme.CA, pod: Pod, *, annotations: dict[str, str], extra: bool, status: int, reason: str
) -> None:
    """ingress-nginx denies the host (403) for a Secret it cannot use; a value Portico cannot
    honour never serves the host without verification."""
    cert = ca.issue_cert("authtls@example.com", common_name="authtls")
    result = compiled(*objects(annotations, ca.cert_pem.bytes()), pod=(pod.host, pod.port))
    assert reason in [p.reason for p in result.problems]
    async with running(result.snapshot) as proxy:
        assert (await request(proxy.https_port, A, cert)).status == status
        assert (await request(proxy.https_port, A)).status == status


def _fetch(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> Any:
    """One request on a new blocking TLS connection: (its session, whether it was resumed)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=A, session=session) as tls,
    ):
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: " + A.encode() + b"\r\nConnection: close\r\n\r\n")
        while tls.recv(65536):
            pass
        return tls.session, tls.session_reused


@pytest.mark.parametrize("client_auth", [False, True])
async def test_no_session_resumption_while_a_host_verifies(
    ca: trustme.CA, pod: Pod, *, client_auth: bool
) -> None:
    """A resumed session carries the certificate of the handshake that made it (perhaps on
    another host, with another CA): while a host asks for certificates, none is resumed."""
    annotations = SECRET if client_auth else {}
    result = compiled(*objects(annotations, ca.cert_pem.bytes()), pod=(pod.host, pod.port))
    context = client_with(ca.issue_cert("authtls@example.com", common_name="authtls"))
    async with running(result.snapshot) as proxy:
        session, _ = await asyncio.to_thread(_fetch, proxy.https_port, context, None)
        _, reused = await asyncio.to_thread(_fetch, proxy.https_port, context, session)
        assert reused is not client_auth
