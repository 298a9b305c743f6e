"""Upstream TLS (`backend-protocol: HTTPS`): SNI, verification against `proxy-ssl-secret`.

The "pod" is the test Pod served over TLS on 127.0.0.5 with a certificate from a trustme CA for
the Service's DNS name. The CA reaches the compiler as a Secret's `ca.crt`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from backends import Client, Pod
from tls_env import compiled, issued_context, running

from controller.compiler.problems import SECRET_INVALID
from tests.kube_factory import Raw, ca_secret, ingress, rule

A = "a.example.com"
N = "nginx.ingress.kubernetes.io/"
SERVICE_NAME = "web.default.svc"

pytestmark = pytest.mark.timeout(30)


class TLSPod(Pod):
    """The test Pod behind TLS; records the SNI name each handshake asked for."""

    def __init__(self, host: str, context: ssl.SSLContext) -> None:
        super().__init__(host)
        self.context = context
        self.server_names: list[str | None] = []

        def record(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            self.server_names.append(name)

        context.sni_callback = record

    async def start(self) -> TLSPod:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._factory, self.host, 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_pod(ca: trustme.CA) -> AsyncIterator[TLSPod]:
    pod = await TLSPod("127.0.0.5", issued_context(ca, SERVICE_NAME, "custom.internal")).start()
    yield pod
    await pod.stop()


async def get(port: int) -> int:
    client = await Client.connect(port)
    try:
        resp = await client.request("GET", "/echo", host=A)
        if resp.status == 200:
            assert resp.json()["pod"] == "127.0.0.5"
        return resp.status
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("annotations", "objects", "status", "sni"),
    [
        pytest.param({}, [], 200, SERVICE_NAME, id="no-verification"),
        pytest.param({N + "proxy-ssl-secret": "default/ca"}, ["ca"], 200, SERVICE_NAME, id="ca"),
        pytest.param(
            {N + "proxy-ssl-secret": "default/ca", N + "proxy-ssl-name": "custom.internal"},
            ["ca"],
            200,
            "custom.internal",
            id="ca-and-name",
        ),
        pytest.param(
            {N + "proxy-ssl-secret": "default/other-ca"},
            ["other-ca"],
            502,
            SERVICE_NAME,
            id="wrong-ca",
        ),
        pytest.param(
            {N + "proxy-ssl-secret": "default/ca", N + "proxy-ssl-name": "wrong.internal"},
            ["ca"],
            502,
            "wrong.internal",
            id="name-mismatch",
        ),
        pytest.param(
            {N + "proxy-ssl-secret": "default/other-ca", N + "proxy-ssl-verify": "off"},
            ["other-ca"],
            200,
            SERVICE_NAME,
            id="verify-off",
        ),
    ],
)
async def test_upstream_tls(
    ca: trustme.CA,
    tls_pod: TLSPod,
    *,
    annotations: dict[str, str],
    objects: list[str],
    status: int,
    sni: str,
) -> None:
    secrets = {"ca": ca.cert_pem.bytes(), "other-ca": trustme.CA().cert_pem.bytes()}
    result = compiled(
        ingress(rules=[rule(A)], annotations={N + "backend-protocol": "HTTPS", **annotations}),
        *(ca_secret(name, secrets[name]) for name in objects),
        pod=(tls_pod.host, tls_pod.port),
    )
    assert result.problems == ()
    async with running(result.snapshot) as proxy:
        assert await get(proxy.http_port) == status
        assert tls_pod.server_names[:1] == [sni]
        if status == 200:
            # Kept alive and reused, under a pool key of its own.
            assert await get(proxy.http_port) == 200
            assert tls_pod.connections == 1
            keys = [k for k, idle in proxy.pool.idle.items() if idle]
            assert len(keys) == 1 and len(keys[0]) == 3


async def test_plain_and_tls_routes_to_one_pod_never_share_connections(
    tls_pod: TLSPod,
) -> None:
    """Two routes to the same pod, one HTTPS one plain: the plain one never gets a TLS conn."""
    result = compiled(
        ingress("tls", rules=[rule(A)], annotations={N + "backend-protocol": "HTTPS"}),
        ingress("plain", rules=[rule("plain.example.com")]),
        pod=(tls_pod.host, tls_pod.port),
    )
    async with running(result.snapshot) as proxy:
        assert await get(proxy.http_port) == 200
        client = await Client.connect(proxy.http_port)
        try:
            # Plain HTTP to a TLS port: the pod's TLS stack refuses it, so no valid response.
            resp = await client.request("GET", "/echo", host="plain.example.com")
            assert resp.status == 502
        finally:
            await client.close()
        assert await get(proxy.http_port) == 200


@pytest.mark.parametrize(
    ("objects", "reason"),
    [
        pytest.param([], "not found", id="missing"),
        pytest.param([ca_secret("ca", b"not a certificate")], "ca.crt", id="malformed"),
    ],
)
async def test_invalid_ca_secret_fails_closed(
    tls_pod: TLSPod, objects: list[Raw], reason: str
) -> None:
    result = compiled(
        ingress(
            rules=[rule(A)],
            annotations={N + "backend-protocol": "HTTPS", N + "proxy-ssl-secret": "default/ca"},
        ),
        *objects,
        pod=(tls_pod.host, tls_pod.port),
    )
    assert [(p.ref, p.reason) for p in result.problems] == [("default/web", SECRET_INVALID)]
    assert reason in result.problems[0].message and "default/ca" in result.problems[0].message
    async with running(result.snapshot) as proxy:
        assert await get(proxy.http_port) == 503
        assert tls_pod.connections == 0
