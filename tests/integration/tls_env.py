"""Shared pieces of the TLS integration tests: compile objects, run a proxy, handshake.

Objects are compiled with the real compiler (so Secret validation is part of the path), the
proxy runs in the test's loop with an HTTP and an HTTPS listener on 127.0.0.1, and clients use
the `ssl` module without verification: tests compare the certificate the server presented
(DER) with the one they expect instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trustme
from backends import Client

from controller.compiler import CompileResult, CompileSettings, compile_view
from proxy.config import Snapshot
from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from tests.kube_factory import (
    Raw,
    endpoint,
    endpoint_slice,
    ingress_class,
    service,
    service_port,
    store_of,
)


def compiled(
    *raws: Raw, pod: tuple[str, int], settings: CompileSettings | None = None
) -> CompileResult:
    """Compile an IngressClass, Service "web" (port 80 -> the pod) and `raws`."""
    address, port = pod
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", port)]),
        endpoint_slice("web", endpoints=[endpoint(address)], ports=[("http", port)]),
        *raws,
    ]
    return compile_view(store_of(*objects), settings or CompileSettings())


@contextlib.asynccontextmanager
async def running(snap: Snapshot, **settings: Any) -> AsyncIterator[ProxyServer]:
    settings.setdefault("access_log", False)
    proxy = ProxyServer(ProxySettings(**settings))
    proxy.apply(snap)
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    try:
        yield proxy
    finally:
        await proxy.shutdown(1.0)


def issued_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server's TLS context with a certificate for `names` that `ca` issued."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    return context


def client_context(
    minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if minimum is not None or maximum is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            if minimum is not None:
                context.minimum_version = minimum
            if maximum is not None:
                context.maximum_version = maximum
    return context


async def tls_client(
    port: int, server_name: str | None, context: ssl.SSLContext | None = None
) -> Client:
    """A raw HTTP client over TLS; `server_name` None sends no SNI."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=context or client_context(),
            server_hostname=server_name or "",
        ),
        5.0,
    )
    return Client(reader, writer)


def peer_der(client: Client) -> bytes:
    obj = client.writer.get_extra_info("ssl_object")
    assert obj is not None
    der: bytes | None = obj.getpeercert(binary_form=True)
    assert der is not None
    return der


async def served_certificate(port: int, server_name: str | None) -> bytes:
    """The DER certificate the server presents for this SNI name (None: no SNI)."""
    client = await tls_client(port, server_name)
    try:
        return peer_der(client)
    finally:
        await client.close()


def der(pem: bytes | str) -> bytes:
    text = pem.decode() if isinstance(pem, bytes) else pem
    return ssl.PEM_cert_to_DER_cert(text)


def header_map(pairs: Sequence[Sequence[str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs}
