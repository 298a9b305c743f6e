"""`portico serve` over HTTPS end to end: real controller, real (uvloop) worker, manifest mode.

A renewed Secret (the file rewritten, as cert-manager renews) must be served to new handshakes
within 1 s while a TLS connection opened before keeps working; plain HTTP is redirected;
`/debug/snapshot` never shows key material. A certificate that expires while nothing is edited
stops being served right after its notAfter, with a `SecretInvalid` problem on show.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from backends import Client
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from tls_env import der, peer_der, served_certificate, tls_client

from controller.reconciler import REFRESH_MARGIN
from tests.integration.manifests import ingress, ingress_class, service_with_pods, tls_secret
from tests.integration.serving import eventually, free_port, start_serve, stop_serve
from tests.kube_factory import make_cert

pytestmark = pytest.mark.timeout(60)

HOST = "secure.test"
ROTATION_BOUND = 1.0  # seconds: the promise for a renewed Secret in manifest mode
LIFETIME = 5.0  # seconds a short-lived certificate is valid once written
SLACK = 3.0  # seconds beyond a due moment, for a loaded 2-core machine


def app_manifests(pod_port: int) -> str:
    docs = [
        ingress_class(),
        *service_with_pods("web", ["127.0.0.2"], pod_port),
        ingress("secure", HOST, {"/": "web"}, tls_secret="secure-tls", service_port={"number": 80}),
    ]
    return yaml.safe_dump_all(docs)


def secret_manifest(cert: bytes, key: bytes) -> str:
    return yaml.safe_dump(tls_secret("secure-tls", cert, key))


class Serve:
    def __init__(self, process: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.process = process
        self.http, self.https, self.admin = ports["http"], ports["https"], ports["admin"]


@pytest.fixture
async def serve(tmp_path: Path, pod_port: int) -> AsyncIterator[Serve]:
    (tmp_path / "app.yaml").write_text(app_manifests(pod_port))
    ports = {"http": free_port(), "https": free_port(), "admin": free_port()}
    process = await start_serve(
        tmp_path,
        http=ports["http"],
        https=ports["https"],
        admin=ports["admin"],
        drain_timeout=2,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    instance = Serve(process, ports)
    yield instance
    await stop_serve(process, grace=10)


async def ready(session: aiohttp.ClientSession, serve: Serve) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{serve.admin}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_renewal_redirects_and_no_keys(serve: Serve, tmp_path: Path, pod_port: int) -> None:
    old_cert, old_key = make_cert(HOST)
    new_cert, new_key = make_cert(HOST, key="ec", key_index=4)
    (tmp_path / "secret.yaml").write_text(secret_manifest(old_cert, old_key))
    async with aiohttp.ClientSession() as session:
        await eventually(lambda: ready(session, serve), 20, interval=0.02)

        async def serves(cert: bytes) -> bool:
            client = await tls_client(serve.https, HOST)
            try:
                return peer_der(client) == der(cert)
            finally:
                await client.close()

        await eventually(lambda: serves(old_cert), 5, interval=0.02)
        opened = await tls_client(serve.https, HOST)
        try:
            resp = await opened.request("GET", "/hello", host=HOST)
            assert resp.status == 200
            assert resp.header("Strict-Transport-Security") is not None

            # Plain HTTP on the TLS host: 308 to the same host and path, no port.
            plain = await Client.connect(serve.http)
            redirect = await plain.request("GET", "/a/b?c=d", host=f"{HOST}:{serve.http}")
            await plain.close()
            assert redirect.status == 308
            assert redirect.header("Location") == f"https://{HOST}/a/b?c=d"

            # Renewal: new handshakes get the new certificate within the bound ...
            (tmp_path / "secret.yaml").write_text(secret_manifest(new_cert, new_key))
            await eventually(lambda: serves(new_cert), ROTATION_BOUND, interval=0.02)
            # ... and the connection opened before is still up, with its certificate.
            assert peer_der(opened) == der(old_cert)
            assert (await opened.request("GET", "/again", host=HOST)).status == 200
        finally:
            await opened.close()

        async with session.get(f"http://127.0.0.1:{serve.admin}/debug/snapshot") as resp:
            text = await resp.text()
        summary = json.loads(text)
        assert "default/secure-tls" in text
        assert summary["certificates"]
        for key in (old_key, new_key):
            assert key.decode().splitlines()[1] not in text
        assert "PRIVATE KEY" not in text

    serve.process.terminate()
    async with asyncio.timeout(15):
        await serve.process.wait()
    assert serve.process.stderr is not None
    logs = (await serve.process.stderr.read()).decode()
    assert "tls.certificates" in logs
    for key in (old_key, new_key):
        assert key.decode().splitlines()[1] not in logs
    assert "PRIVATE KEY" not in logs


async def test_certificate_expiring_while_served_falls_back_to_the_default(
    serve: Serve, tmp_path: Path
) -> None:
    """Nothing is edited once the certificate is served: after its notAfter new handshakes get
    the default certificate (within REFRESH_MARGIN plus slack), and `/debug/snapshot` and
    `/metrics` show the SecretInvalid problem."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await eventually(lambda: ready(session, serve), 20, interval=0.02)
        cert, key = make_cert(HOST, lifetime=dt.timedelta(seconds=LIFETIME))
        not_after = x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
        (tmp_path / "secret.yaml").write_text(secret_manifest(cert, key))

        async def presents(expected: bool) -> bool:
            return (await served_certificate(serve.https, HOST) == der(cert)) is expected

        # Served by SNI first (proved before it can have expired) ...
        await eventually(lambda: presents(True), not_after - time.time(), interval=0.02)
        # ... then, with no edit, the default certificate once it has expired.
        await eventually(
            lambda: presents(False), not_after - time.time() + REFRESH_MARGIN + SLACK, 0.05
        )
        assert time.time() > not_after, "the certificate was dropped before it expired"
        presented = await served_certificate(serve.https, HOST)
        subject = x509.load_der_x509_certificate(presented).subject.rfc4514_string()
        assert "CN=Portico Default Certificate" in subject

        async with session.get(f"http://127.0.0.1:{serve.admin}/debug/snapshot") as resp:
            summary = json.loads(await resp.text())
        assert summary["certificates"] == []
        assert summary["virtual_hosts"] == [{"host": HOST, "rules": 1, "tls": None}]
        (problem,) = [p for p in summary["problems"] if p["reason"] == "SecretInvalid"]
        assert problem["ref"] == "default/secure"
        assert 'secret "default/secure-tls": certificate expired at' in problem["message"]

        async with session.get(f"http://127.0.0.1:{serve.admin}/metrics") as resp:
            text = await resp.text()
        problems = {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "portico_problems"
            for sample in family.samples
        }
        assert problems == {"SecretInvalid": 1.0}
