"""TLS passthrough (`ssl-passthrough`, `--enable-ssl-passthrough`) through real sockets.

The passthrough pod is a real TLS server with its own certificate, from a CA only the test
client trusts: a client that verifies it (hostname included) proves Portico did not terminate
the connection. On the same HTTPS listener another host is terminated by Portico (its Secret's
certificate, the plain echo pod behind). Connections Portico cannot serve are closed without
an answer, and the worker goes on serving. Rows cite ingress-nginx's
test/e2e/settings/ssl_passthrough.go or its docs (annotations.md, tls.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from backends import Client, Pod, render_request
from tls_env import der, peer_der, running, tls_client

from controller.compiler import CompileResult, CompileSettings, compile_view
from tests.kube_factory import (
    endpoint,
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
from tests.unit.proxy.test_client_hello import openssl_hello

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(60)]

N = "nginx.ingress.kubernetes.io/"
PASS = {N + "ssl-passthrough": "true"}
POD_HOST = "127.0.0.5"


class TLSPod:
    """An HTTPS server with its own certificate for pass.test: answers every request with
    `pod:<path>` and closes."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("pass.test").configure_cert(self.context)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> TLSPod:
        self.server = await asyncio.start_server(self._serve, POD_HOST, 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            body = b"pod:" + line.split()[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (ConnectionError, ssl.SSLError, IndexError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def pod_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_pod(pod_ca: trustme.CA) -> AsyncIterator[TLSPod]:
    started = await TLSPod(pod_ca).start()
    yield started
    await started.stop()


def compiled(pod: Pod, tls_pod_port: int, *, enabled: bool = True, **annotations: str) -> Any:
    """pass.test (annotated) -> Service secure (the TLS pod); term.test -> Service web (the
    echo pod), with TLS terminated by Portico."""
    cert = tls_secret("term-tls", hosts=("term.test",))
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", pod.port)]),
        endpoint_slice("web", endpoints=[endpoint(pod.host)], ports=[("http", pod.port)]),
        service("secure", ports=[service_port(443, "https", tls_pod_port)]),
        endpoint_slice(
            "secure-1", "secure", endpoints=[endpoint(POD_HOST)], ports=[("https", tls_pod_port)]
        ),
        cert,
        ingress(
            "pass",
            rules=[rule("pass.test", path("/", "secure", 443))],
            annotations={**PASS, **{N + k.replace("_", "-"): v for k, v in annotations.items()}},
        ),
        ingress("term", rules=[rule("term.test")], tls=[tls_entry("term-tls", "term.test")]),
    ]
    result: CompileResult = compile_view(
        store_of(*objects), CompileSettings(ssl_passthrough=enabled)
    )
    return result, cert


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)  # check_hostname and verification on
    return context


async def get(client: Client, host: str, target: str) -> tuple[int, bytes]:
    client.send(render_request("GET", target, {"Connection": "close"}, host=host))
    resp = await client.response()
    return resp.status, resp.body


def passthrough_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = capsys.readouterr().out.splitlines()
    return [json.loads(x) for x in out if '"event":"passthrough"' in x]


async def closed_without_answer(port: int, data: bytes, *, end: bool = False) -> float:
    """Send `data` raw; seconds until the proxy closed the connection (no byte back)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(data)
    if end:
        writer.write_eof()
    try:
        got = await asyncio.wait_for(reader.read(1), 10.0)
    except ConnectionResetError:
        got = b""
    writer.close()
    assert got == b""
    return time.monotonic() - start


async def test_passthrough_host_reaches_the_pod_unterminated(
    pod: Pod, tls_pod: TLSPod, pod_ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    # ssl_passthrough.go "should pass unknown traffic to default backend and handle known
    # traffic": the annotated host's TLS is the pod's, the other host's is the controller's.
    result, cert = compiled(pod, tls_pod.port)
    async with running(result.snapshot, enable_ssl_passthrough=True, access_log=True) as proxy:
        client = await tls_client(proxy.https_port, "pass.test", trusting(pod_ca))
        try:
            assert await get(client, "pass.test", "/secret") == (200, b"pod:/secret")
        finally:
            await client.close()
        client = await tls_client(proxy.https_port, "term.test")
        try:
            assert peer_der(client) == der(cert_pem(cert))
            status, _ = await get(client, "term.test", "/echo")
            assert status == 200 and pod.requests == 1
        finally:
            await client.close()
        assert tls_pod.connections == 1
        await wait_for(lambda: not proxy.connections.tunnels)
    (line,) = passthrough_lines(capsys)
    assert line["host"] == "pass.test" and line["upstream"] == f"{POD_HOST}:{tls_pod.port}"
    assert line["ingress"] == "default/pass" and line["service"] == "default/secure"
    assert line["bytes_sent"] > 200 and line["bytes_received"] > 500  # hello; certificate
    assert "reason" not in line


async def test_no_sni_and_other_hosts_are_terminated(
    pod: Pod, tls_pod: TLSPod, pod_ca: trustme.CA
) -> None:
    # tls.md: "If there is no hostname matching the requested host name, the request is
    # handed over to NGINX": without SNI too, Portico terminates (its default certificate).
    result, _ = compiled(pod, tls_pod.port)
    async with running(result.snapshot, enable_ssl_passthrough=True) as proxy:
        for name in (None, "other.test"):
            client = await tls_client(proxy.https_port, name)
            try:
                status, _ = await get(client, "term.test", "/echo")
                assert status == 200
            finally:
                await client.close()
    assert tls_pod.connections == 0 and pod.requests == 2


async def test_without_the_flag_the_host_is_terminated(
    pod: Pod, tls_pod: TLSPod, pod_ca: trustme.CA
) -> None:
    # annotations.md: "SSL Passthrough is disabled by default and requires starting the
    # controller with the --enable-ssl-passthrough flag".
    result, _ = compiled(pod, tls_pod.port, enabled=False)
    assert [p.reason for p in result.problems] == ["PassthroughNotApplied"]
    async with running(result.snapshot) as proxy:
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_client(proxy.https_port, "pass.test", trusting(pod_ca))
    assert tls_pod.connections == 0


# (raw bytes sent, end the stream after them): each is closed without an answer, at once.
REFUSED: dict[str, tuple[bytes, bool]] = {
    "plain-http": (b"GET / HTTP/1.1\r\nHost: pass.test\r\n\r\n", False),
    "garbage": (b"\x00" * 64, False),
    "oversized": (b"\x16\x03\x01\x40\x00\x01\x00\x40\x00" + bytes(64), False),
    "two-names": (b"", False),  # filled in below
    "truncated-then-eof": (openssl_hello("pass.test")[:60], True),
}


def _two_names() -> bytes:
    from tests.unit.proxy.test_client_hello import handshake, hello_body, records, sni_ext

    return records(handshake(hello_body(sni_ext(b"pass.test", b"term.test"))))


REFUSED["two-names"] = (_two_names(), False)


@pytest.mark.parametrize("case", list(REFUSED))
async def test_unreadable_hellos_are_closed_and_the_worker_serves_on(
    pod: Pod, tls_pod: TLSPod, pod_ca: trustme.CA, case: str
) -> None:
    data, end = REFUSED[case]
    result, _ = compiled(pod, tls_pod.port)
    async with running(
        result.snapshot, enable_ssl_passthrough=True, client_header_timeout=5.0
    ) as proxy:
        assert await closed_without_answer(proxy.https_port, data, end=end) < 4.0
        client = await tls_client(proxy.https_port, "pass.test", trusting(pod_ca))
        try:
            assert await get(client, "pass.test", "/after") == (200, b"pod:/after")
        finally:
            await client.close()
    assert tls_pod.connections == 1


async def test_a_slow_hello_is_cut_off_at_the_header_timeout(pod: Pod, tls_pod: TLSPod) -> None:
    result, _ = compiled(pod, tls_pod.port)
    async with running(
        result.snapshot, enable_ssl_passthrough=True, client_header_timeout=0.5
    ) as proxy:
        seconds = await closed_without_answer(proxy.https_port, openssl_hello("pass.test")[:60])
    assert 0.4 < seconds < 4.0 and tls_pod.connections == 0


async def test_a_hello_in_pieces_is_passed_through(
    pod: Pod, tls_pod: TLSPod, pod_ca: trustme.CA
) -> None:
    # The listener waits for the bytes the parser asks for (SO_RCVLOWAT), then passes the
    # whole hello on: the pod completes the handshake with what was only peeked.
    result, _ = compiled(pod, tls_pod.port)
    async with running(result.snapshot, enable_ssl_passthrough=True) as proxy:
        response = await asyncio.to_thread(_pieces, proxy.https_port, pod_ca)
    assert response.endswith(b"pod:/pieces")


def _pieces(port: int, ca: trustme.CA) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = trusting(ca).wrap_bio(incoming, outgoing, server_hostname="pass.test")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        for piece in (hello[:3], hello[3:9], hello[9:100], hello[100:]):
            sock.sendall(piece)
            time.sleep(0.02)  # separate segments; the proxy must not answer in between
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    return b"closed during the handshake"
                incoming.write(data)
        tls.write(render_request("GET", "/pieces", {"Connection": "close"}, host="pass.test"))
        sock.sendall(outgoing.read())
        raw = b""
        while True:
            try:
                piece = tls.read(65536)
                if not piece:
                    return raw
                raw += piece
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return raw
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return raw


async def test_pods_down_closes_the_connection(
    pod: Pod, pod_ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind((POD_HOST, 0))
        port = unused.getsockname()[1]
    result, _ = compiled(pod, port)
    async with running(result.snapshot, enable_ssl_passthrough=True, access_log=True) as proxy:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client = await tls_client(proxy.https_port, "pass.test", trusting(pod_ca))
            await get(client, "pass.test", "/")
        await wait_for(lambda: not proxy.connections.tunnels)
    (line,) = passthrough_lines(capsys)
    assert line["reason"] == "UpstreamConnectFailed" and line["bytes_received"] == 0


async def test_source_ranges_close_refused_clients(
    pod: Pod, tls_pod: TLSPod, pod_ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    # Portico's difference (catalogue): the host's allowlist applies to its connections.
    result, _ = compiled(pod, tls_pod.port, whitelist_source_range="192.0.2.0/24")
    async with running(result.snapshot, enable_ssl_passthrough=True, access_log=True) as proxy:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_client(proxy.https_port, "pass.test", trusting(pod_ca))
        await wait_for(lambda: not proxy.connections.tunnels)
    (line,) = passthrough_lines(capsys)
    assert line["reason"] == "SourceRangeDenied" and line["client"] == "127.0.0.1"
    assert tls_pod.connections == 0


def cert_pem(secret: Any) -> bytes:
    import base64

    return base64.b64decode(secret["data"]["tls.crt"])


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
