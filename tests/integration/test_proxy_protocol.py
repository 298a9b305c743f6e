"""The PROXY protocol on the HTTP and HTTPS listeners (`--proxy-protocol`), real sockets.

A load balancer's header (v1 or v2, tests/unit/test_proxy_protocol.py builds them) comes
first on the connection; its source address is then the client's for the forwarded headers
the pod sees, the access log and the source ranges. Over HTTPS it precedes the TLS handshake,
sent in the same segment as the ClientHello here, so reading it must not take a byte of TLS.
A connection without a valid header is closed without an answer and never reaches the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from typing import NamedTuple

import pytest
from backends import Client, Pod, Response, render_request
from tls_env import client_context, compiled, running

from proxy.server import ProxyServer
from tests.fakes import AWS_TLV
from tests.fakes import proxy_v2 as v2
from tests.kube_factory import ingress, rule

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
# ranged.test allows one IPv4 network and one IPv6 network; open.test anyone.
RANGES = "192.0.2.0/24, 2001:db8::/32"


def v1(source: str, family: str = "TCP4") -> bytes:
    destination = "198.51.100.1" if family == "TCP4" else "2001:db8::1"
    return f"PROXY {family} {source} {destination} 51234 443\r\n".encode()


class Case(NamedTuple):
    header: bytes
    host: str
    status: int | None  # None: closed without an answer
    client: str | None = None  # the client address the pod and the access log see
    request: bool = True  # False: the header alone, then the client ends its side (EOF)


CASES: dict[str, Case] = {
    "v1-allowed": Case(v1("192.0.2.1"), "ranged", 200, "192.0.2.1"),
    "v1-denied": Case(v1("198.51.100.7"), "ranged", 403, "198.51.100.7"),
    "v1-ipv6": Case(v1("2001:db8::7", "TCP6"), "ranged", 200, "2001:db8::7"),
    "v1-unknown-keeps-peer": Case(b"PROXY UNKNOWN\r\n", "open", 200, "127.0.0.1"),
    "v2-allowed": Case(v2(source="192.0.2.9"), "ranged", 200, "192.0.2.9"),
    "v2-with-tlvs": Case(v2(source="192.0.2.9", tlvs=AWS_TLV), "ranged", 200, "192.0.2.9"),
    "v2-ipv6-denied": Case(
        v2(family=0x21, source="2001:db9::1", destination="::1"), "ranged", 403, "2001:db9::1"
    ),
    "v2-local-keeps-peer": Case(v2(command=0), "open", 200, "127.0.0.1"),
    "v2-local-peer-not-allowed": Case(v2(command=0), "ranged", 403, "127.0.0.1"),
    "no-header": Case(b"", "open", None),
    "garbage": Case(b"HELLO\r\n", "open", None),
    # A truncated header then the end of the connection (what follows a truncated v2 header
    # would be read as its binary addresses: only its end tells).
    "v1-truncated": Case(v1("192.0.2.1")[:20], "open", None, request=False),
    "v2-truncated": Case(v2()[:20], "open", None, request=False),
    "v1-too-long": Case(b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n", "open", None),
    "v2-too-long": Case(v2(length=4096) + bytes(4096), "open", None),
}


def _request(host: str) -> bytes:
    return render_request("GET", "/echo", {"Connection": "close"}, host=f"{host}.test")


async def _plain(port: int, case: Case) -> Response | None:
    client = await Client.connect(port)
    try:
        if case.request:
            client.send(case.header + _request(case.host))
        else:
            client.send(case.header)
            client.writer.write_eof()
        try:
            return await client.response()
        except ConnectionError:
            return None
    finally:
        await client.close()


def _tls(port: int, case: Case) -> Response | None:
    """Header and ClientHello in one segment, then TLS over memory BIOs (blocking, in a thread)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname=f"{case.host}.test")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()  # the ClientHello, into `outgoing`
        if not case.request:
            sock.sendall(case.header)
            sock.shutdown(socket.SHUT_WR)
            return None if sock.recv(1) == b"" else Response()
        sock.sendall(case.header + outgoing.read())
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    if not data:
                        return None
                    incoming.write(data)
            tls.write(_request(case.host))
            sock.sendall(outgoing.read())
            raw = b""
            while True:
                try:
                    piece = tls.read(65536)
                except ssl.SSLWantReadError:
                    data = sock.recv(65536)
                    if not data:
                        break
                    incoming.write(data)
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
                if not piece:
                    break
                raw += piece
        except (ConnectionError, ssl.SSLError):
            return None
    head, _, body = raw.partition(b"\r\n\r\n")
    resp = Response()
    lines = head.split(b"\r\n")
    resp.status = int(lines[0].split()[1])
    resp.headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]  # type: ignore[misc]
    resp.body = body
    return resp


async def _exchange(proxy: ProxyServer, scheme: str, case: Case) -> Response | None:
    if scheme == "https":
        return await asyncio.to_thread(_tls, proxy.https_port, case)
    return await _plain(proxy.http_port, case)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_proxy_protocol(
    pod: Pod, capsys: pytest.CaptureFixture[str], case: Case, scheme: str
) -> None:
    result = compiled(
        ingress(
            "ranged",
            annotations={N + "whitelist-source-range": RANGES},
            rules=[rule("ranged.test")],
        ),
        ingress("open", rules=[rule("open.test")]),
        pod=(pod.host, pod.port),
    )
    async with running(result.snapshot, access_log=True, proxy_protocol=True) as proxy:
        resp = await _exchange(proxy, scheme, case)
        assert proxy.access is not None
        proxy.access.flush()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    if case.status is None:
        assert resp is None and pod.requests == 0 and lines == []
        return
    assert resp is not None and resp.status == case.status
    (line,) = lines
    assert line["client"] == case.client
    if case.status == 200:
        seen = dict((k.lower(), v) for k, v in resp.json()["headers"])
        assert (seen["x-forwarded-for"], seen["x-real-ip"]) == (case.client, case.client)
        assert pod.requests == 1
    else:
        assert pod.requests == 0 and line["reason"] == "SourceRangeDenied"


async def test_off_by_default_a_header_is_a_bad_request(pod: Pod) -> None:
    result = compiled(ingress("open", rules=[rule("open.test")]), pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:
        resp = await _plain(proxy.http_port, Case(v1("192.0.2.1"), "open", 400))
        assert resp is not None and resp.status == 400 and pod.requests == 0


async def test_header_in_pieces(pod: Pod) -> None:
    # A header split across reads, the request in the same read as its end.
    result = compiled(ingress("open", rules=[rule("open.test")]), pod=(pod.host, pod.port))
    header = v2(source="192.0.2.5")
    async with running(result.snapshot, proxy_protocol=True) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            for piece in (header[:3], header[3:14], header[14:20]):
                client.send(piece)
                await asyncio.sleep(0.01)
            client.send(header[20:] + _request("open"))
            resp = await client.response()
        finally:
            await client.close()
        assert resp.status == 200
        seen = dict((k.lower(), v) for k, v in resp.json()["headers"])
        assert seen["x-real-ip"] == "192.0.2.5"


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_header_that_never_completes_is_timed_out(pod: Pod, scheme: str) -> None:
    result = compiled(ingress("open", rules=[rule("open.test")]), pod=(pod.host, pod.port))
    async with running(result.snapshot, proxy_protocol=True, client_header_timeout=0.2) as proxy:
        port = proxy.https_port if scheme == "https" else proxy.http_port
        client = await Client.connect(port)
        try:
            client.send(v1("192.0.2.1")[:20])
            assert await client.closed(timeout=3.0)
        finally:
            await client.close()
