"""HTTPS listener: SNI certificates, default certificate, Secret fallbacks, redirects, HSTS.

Real TLS clients (`ssl` module) against a proxy in the test's loop; snapshots come from the
real compiler, so every path from a Secret to the certificate a client sees is exercised.
"""

from __future__ import annotations

import logging
import ssl

import pytest
from backends import Client, Pod
from tls_env import (
    client_context,
    compiled,
    der,
    header_map,
    peer_der,
    running,
    served_certificate,
    tls_client,
)

from controller.compiler import CompileSettings
from proxy.config import Snapshot
from proxy.tls import TICKET_KEY_LIFETIME, TLSTerminator, ticket_keys
from tests.kube_factory import (
    KeyKind,
    Raw,
    ingress,
    make_cert,
    opaque_secret,
    rule,
    tls_entry,
    tls_secret,
)

A, B = "a.example.com", "b.example.com"
WILD, UNDER = "*.w.example.com", "x.w.example.com"

pytestmark = pytest.mark.timeout(30)


def default_subject(der_cert: bytes) -> str:
    from cryptography import x509

    return x509.load_der_x509_certificate(der_cert).subject.rfc4514_string()


async def test_sni_picks_exact_wildcard_and_default(pod: Pod) -> None:
    cert_a, key_a = make_cert(A, key="rsa-pkcs1")
    cert_b, key_b = make_cert(B, key="rsa-pkcs8", key_index=1)
    cert_w, key_w = make_cert(WILD, key="ec")
    result = compiled(
        ingress(
            rules=[rule(A), rule(B), rule(UNDER), rule(WILD)],
            tls=[
                tls_entry("a-tls", A),
                tls_entry("b-tls", B),
                tls_entry("w-tls", WILD),
            ],
        ),
        tls_secret("a-tls", cert_pem=cert_a, key_pem=key_a),
        tls_secret("b-tls", cert_pem=cert_b, key_pem=key_b),
        tls_secret("w-tls", cert_pem=cert_w, key_pem=key_w),
        pod=(pod.host, pod.port),
    )
    assert result.problems == ()
    async with running(result.snapshot) as proxy:
        port = proxy.https_port
        assert await served_certificate(port, A) == der(cert_a)
        assert await served_certificate(port, "A.Example.COM") == der(cert_a)
        assert await served_certificate(port, B) == der(cert_b)
        # The wildcard covers both the rule host it lists and a rule host it covers.
        assert await served_certificate(port, UNDER) == der(cert_w)
        assert await served_certificate(port, "y.w.example.com") == der(cert_w)
        # Two labels under the wildcard, an unknown name, no SNI: the default certificate.
        for name in ("a.x.w.example.com", "unknown.example.org", None):
            presented = await served_certificate(port, name)
            assert presented not in (der(cert_a), der(cert_b), der(cert_w)), name
            assert "CN=Portico Default Certificate" in default_subject(presented)


@pytest.mark.parametrize("key", ["rsa-pkcs1", "rsa-pkcs8", "ec", "ec-pkcs8"])
async def test_key_formats_serve_requests(pod: Pod, key: KeyKind) -> None:
    cert, pem_key = make_cert(A, key=key)
    result = compiled(
        ingress(rules=[rule(A)], tls=[tls_entry("a-tls", A)]),
        tls_secret("a-tls", cert_pem=cert, key_pem=pem_key),
        pod=(pod.host, pod.port),
    )
    async with running(result.snapshot) as proxy:
        client = await tls_client(proxy.https_port, A)
        try:
            assert peer_der(client) == der(cert)
            obj = client.writer.get_extra_info("ssl_object")
            assert obj.selected_alpn_protocol() in (None, "http/1.1")
            assert obj.version() in ("TLSv1.2", "TLSv1.3")
            resp = await client.request("GET", "/echo?x=1", host=A)
            assert resp.status == 200
            headers = header_map(resp.json()["headers"])
            assert headers["x-forwarded-proto"] == "https"
            assert headers["x-forwarded-port"] == str(proxy.https_port)
            assert resp.header("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
            # Keep-alive over TLS: a second request on the same connection.
            again = await client.request("GET", "/echo?x=2", host=A)
            assert again.status == 200 and pod.connections == 1
        finally:
            await client.close()


_GOOD_CERT, _GOOD_KEY = make_cert(A)
_OTHER_CERT, _OTHER_KEY = make_cert(A, key="ec", key_index=3)
_EXPIRED = make_cert(A, expired=True)
_FUTURE = make_cert(A, not_yet_valid=True)

INVALID: list[tuple[str, list[Raw], str]] = [
    ("missing", [], "not found"),
    ("wrong-type", [opaque_secret("a-tls", crt="x")], "has type 'Opaque'"),
    (
        "malformed-cert",
        [tls_secret("a-tls", cert_pem=b"-----BEGIN CERTIFICATE-----\nno\n", key_pem=_GOOD_KEY)],
        "tls.crt is not a PEM certificate",
    ),
    (
        "malformed-key",
        [tls_secret("a-tls", cert_pem=_GOOD_CERT, key_pem=_GOOD_KEY[:60])],
        "tls.key is not an unencrypted PEM private key",
    ),
    (
        "mismatched-key",
        [tls_secret("a-tls", cert_pem=_GOOD_CERT, key_pem=_OTHER_KEY)],
        "does not match the certificate",
    ),
    ("expired", [tls_secret("a-tls", cert_pem=_EXPIRED[0], key_pem=_EXPIRED[1])], "expired"),
    (
        "not-yet-valid",
        [tls_secret("a-tls", cert_pem=_FUTURE[0], key_pem=_FUTURE[1])],
        "not valid before",
    ),
    ("not-covering", [tls_secret("a-tls", hosts=[B])], f'does not cover host "{A}"'),
]


@pytest.mark.parametrize(
    ("objects", "reason"), [pytest.param(*row[1:], id=row[0]) for row in INVALID]
)
async def test_invalid_secret_falls_back_to_default(
    pod: Pod, objects: list[Raw], reason: str
) -> None:
    valid_b, valid_b_key = make_cert(B, key_index=1)
    result = compiled(
        ingress(rules=[rule(A), rule(B)], tls=[tls_entry("a-tls", A), tls_entry("b-tls", B)]),
        tls_secret("b-tls", cert_pem=valid_b, key_pem=valid_b_key),
        *objects,
        pod=(pod.host, pod.port),
    )
    assert [(p.kind, p.ref, p.reason) for p in result.problems] == [
        ("Ingress", "default/web", "SecretInvalid")
    ]
    message = result.problems[0].message
    assert '"default/a-tls"' in message and reason in message
    async with running(result.snapshot) as proxy:
        presented = await served_certificate(proxy.https_port, A)
        assert "CN=Portico Default Certificate" in default_subject(presented)
        # The other host keeps its own certificate; the broken one is still served over HTTPS.
        assert await served_certificate(proxy.https_port, B) == der(valid_b)
        client = await tls_client(proxy.https_port, A)
        try:
            assert (await client.request("GET", "/echo", host=A)).status == 200
        finally:
            await client.close()


async def test_configured_default_certificate(pod: Pod) -> None:
    fallback, fallback_key = make_cert("fallback.example.com", key="ec")
    cert_a, key_a = make_cert(A)
    result = compiled(
        ingress(rules=[rule(A)], tls=[tls_entry("a-tls", A)]),
        tls_secret("a-tls", cert_pem=cert_a, key_pem=key_a),
        tls_secret("fallback", "portico", cert_pem=fallback, key_pem=fallback_key),
        pod=(pod.host, pod.port),
        settings=CompileSettings(default_certificate="portico/fallback"),
    )
    assert result.problems == ()
    async with running(result.snapshot) as proxy:
        assert await served_certificate(proxy.https_port, None) == der(fallback)
        assert await served_certificate(proxy.https_port, "nope.example.com") == der(fallback)
        assert await served_certificate(proxy.https_port, A) == der(cert_a)


@pytest.mark.parametrize(
    ("annotations", "with_tls", "redirected"),
    [
        pytest.param({}, True, True, id="tls-host"),
        pytest.param({}, False, False, id="no-tls"),
        pytest.param(
            {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}, True, False, id="opt-out"
        ),
        pytest.param(
            {"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}, False, True, id="forced"
        ),
        pytest.param(
            {
                "nginx.ingress.kubernetes.io/ssl-redirect": "false",
                "nginx.ingress.kubernetes.io/force-ssl-redirect": "true",
            },
            True,
            True,
            id="forced-wins",
        ),
    ],
)
async def test_redirects(
    pod: Pod, annotations: dict[str, str], with_tls: bool, redirected: bool
) -> None:
    result = compiled(
        ingress(
            rules=[rule(A)],
            tls=[tls_entry(None, A)] if with_tls else None,
            annotations=annotations,
        ),
        pod=(pod.host, pod.port),
    )
    async with running(result.snapshot) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            resp = await client.request("GET", "/some/path?q=1&r=2", host=f"{A}:8080")
            if redirected:
                assert resp.status == 308
                assert resp.header("Location") == f"https://{A}/some/path?q=1&r=2"
                assert resp.header("Strict-Transport-Security") is None
                assert pod.requests == 0
                # POST keeps its method and body across a 308; the connection stays usable.
                post = await client.request("POST", "/form", body=b"x=1", host=A)
                assert post.status == 308 and post.header("Location") == f"https://{A}/form"
            else:
                assert resp.status == 200 and pod.requests == 1
        finally:
            await client.close()
        # Never redirected over HTTPS.
        tls = await tls_client(proxy.https_port, A)
        try:
            assert (await tls.request("GET", "/echo", host=A)).status == 200
        finally:
            await tls.close()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({"hsts": False}, None, id="off"),
        pytest.param(
            {"hsts_max_age": 600, "hsts_include_subdomains": False}, "max-age=600", id="custom"
        ),
    ],
)
async def test_hsts_settings(pod: Pod, settings: dict[str, object], expected: str | None) -> None:
    result = compiled(ingress(rules=[rule(A)]), pod=(pod.host, pod.port))
    async with running(result.snapshot, **settings) as proxy:
        client = await tls_client(proxy.https_port, A)
        try:
            resp = await client.request("GET", "/echo", host=A)
            assert resp.status == 200
            assert resp.header("Strict-Transport-Security") == expected
            # Local replies over HTTPS carry it as well.
            missing = await client.request("GET", "/", host="nowhere.example.com")
            assert missing.status == 404
            assert missing.header("Strict-Transport-Security") == expected
        finally:
            await client.close()
        plain = await Client.connect(proxy.http_port)
        try:
            resp = await plain.request("GET", "/echo", host=A)
            assert resp.status == 200 and resp.header("Strict-Transport-Security") is None
        finally:
            await plain.close()


@pytest.mark.parametrize(
    ("settings", "https_expected"),
    [
        pytest.param({}, ["max-age=31536000; includeSubDomains"], id="ours-replaces-the-pods"),
        pytest.param({"hsts": False}, ["max-age=5"], id="off-the-pods-passes"),
    ],
)
async def test_pod_hsts_header(
    pod: Pod, settings: dict[str, object], https_expected: list[str]
) -> None:
    """One policy reaches the client: Portico's replaces a pod's own (as ingress-nginx's
    more_set_headers does); with HSTS off, and over plain HTTP, the pod's passes unchanged."""
    result = compiled(ingress(rules=[rule(A)]), pod=(pod.host, pod.port))
    async with running(result.snapshot, **settings) as proxy:
        client = await tls_client(proxy.https_port, A)
        try:
            resp = await client.request("GET", "/hsts", host=A)
            assert resp.status == 200 and resp.body == b"ok"
            assert resp.header_all("Strict-Transport-Security") == https_expected
        finally:
            await client.close()
        plain = await Client.connect(proxy.http_port)
        try:
            resp = await plain.request("GET", "/hsts", host=A)
            assert resp.header_all("Strict-Transport-Security") == ["max-age=5"]
        finally:
            await plain.close()


async def test_old_protocol_versions_refused(pod: Pod) -> None:
    result = compiled(ingress(rules=[rule(A)]), pod=(pod.host, pod.port))
    legacy = client_context(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    only_12 = client_context(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    async with running(result.snapshot) as proxy:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_client(proxy.https_port, A, legacy)
        client = await tls_client(proxy.https_port, A, only_12)
        assert client.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        await client.close()
    async with running(result.snapshot, tls_min_version="1.3") as proxy:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_client(proxy.https_port, A, only_12)
        client = await tls_client(proxy.https_port, A)
        assert client.writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        await client.close()


async def test_legacy_client_is_real() -> None:
    """Control for the test above: the legacy client does speak TLS 1.1 to a server allowing it."""
    import asyncio
    import tempfile
    import warnings
    from pathlib import Path

    cert, key = make_cert(A)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.pem").write_bytes(cert)
        (Path(tmp) / "k.pem").write_bytes(key)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
        server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        legacy = client_context(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
        client = await tls_client(port, A, legacy)
        assert client.writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        await client.close()
    finally:
        server.close()


async def test_renewed_certificate_for_new_handshakes_only(pod: Pod) -> None:
    old_cert, old_key = make_cert(A)
    new_cert, new_key = make_cert(A, key="ec", key_index=2)

    def snapshot_with(cert: bytes, key: bytes, version: int) -> Snapshot:
        snap = compiled(
            ingress(rules=[rule(A)], tls=[tls_entry("a-tls", A)]),
            tls_secret("a-tls", cert_pem=cert, key_pem=key),
            pod=(pod.host, pod.port),
        ).snapshot
        return snap

    async with running(snapshot_with(old_cert, old_key, 1)) as proxy:
        tls = proxy.tls
        assert tls is not None
        opened = await tls_client(proxy.https_port, A)
        try:
            assert (await opened.request("GET", "/echo", host=A)).status == 200
            builds = tls.rebuilds
            # The same certificates again (an endpoints change, say): nothing is rebuilt.
            proxy.apply(snapshot_with(old_cert, old_key, 2))
            assert tls.rebuilds == builds
            proxy.apply(snapshot_with(new_cert, new_key, 3))
            assert tls.rebuilds == builds + 1
            assert await served_certificate(proxy.https_port, A) == der(new_cert)
            # The connection opened before keeps its certificate and keeps working.
            assert peer_der(opened) == der(old_cert)
            assert (await opened.request("GET", "/echo", host=A)).status == 200
        finally:
            await opened.close()


async def test_ticket_keys_rotate_in_memory(pod: Pod) -> None:
    result = compiled(ingress(rules=[rule(A)]), pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:
        tls = proxy.tls
        assert tls is not None
        listener = tls.listener_context()
        before = ticket_keys(listener)
        assert before is not None and len(before) == 80
        assert not tls.maybe_rotate()  # not yet due
        import time

        assert tls.maybe_rotate(time.monotonic() + TICKET_KEY_LIFETIME + 1)
        after = ticket_keys(listener)
        assert after is not None and after != before
        client = await tls_client(proxy.https_port, A)
        assert (await client.request("GET", "/echo", host=A)).status == 200
        await client.close()


def test_keys_never_in_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    cert, key = make_cert(A)
    result = compiled(
        ingress(rules=[rule(A)], tls=[tls_entry("a-tls", A)]),
        tls_secret("a-tls", cert_pem=cert, key_pem=key),
        pod=("127.0.0.2", 9),
    )
    secret_body = key.decode().splitlines()[1]
    caplog.set_level(logging.DEBUG)
    terminator = TLSTerminator()
    terminator.update(result.snapshot)
    texts = [
        repr(result.snapshot),
        repr(result.snapshot.certificates),
        str(result.snapshot.certificates[0]),
        repr(terminator.current),
        repr(terminator.fallback),
        caplog.text,
        " ".join(str(r.__dict__) for r in caplog.records),
    ]
    fallback_body = terminator.fallback.key_pem.splitlines()[1]
    for text in texts:
        assert secret_body not in text and fallback_body not in text
        assert "PRIVATE KEY" not in text
