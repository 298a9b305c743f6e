"""gRPC to pods (issue 19 items 4-5): grpcio clients through Portico to grpcio servers.

Stubs are generated in the test with grpc_tools.protoc (into a temporary directory). Each pod is
a grpcio asyncio server on its own 127.0.0.x address; the client is a grpcio channel to Portico
(h2c with --h2c, or TLS with ALPN h2). The route says `backend-protocol: GRPC` (or GRPCS with a
TLS pod), so each call is one stream of a multiplexed HTTP/2 connection to the pod.
Source of the rules: issue 19 ("Done when"), ingress-nginx docs/examples/grpc and
annotations.md "Backend Protocol", the gRPC HTTP/2 protocol (doc/PROTOCOL-HTTP2.md) for
trailers-only responses and grpc-timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from backends import snapshot

from proxy.config import DEFAULT_OPTIONS, ExternalAuth
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

pytestmark = pytest.mark.timeout(60)

PROTO = """
syntax = "proto3";
package porticotest;
message Msg {
  bytes data = 1;
  int32 count = 2;
  int32 code = 3;
  string details = 4;
  int32 sleep_ms = 5;
}
service Echo {
  rpc Unary(Msg) returns (Msg);
  rpc ServerStream(Msg) returns (stream Msg);
  rpc ClientStream(stream Msg) returns (Msg);
  rpc Bidi(stream Msg) returns (stream Msg);
}
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    """(messages, services) modules generated from PROTO."""
    out = tmp_path_factory.mktemp("grpc_stubs")
    (out / "porticotest.proto").write_text(PROTO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(out / "porticotest.proto"),
        ],
        check=True,
        timeout=60,
    )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("porticotest_pb2"), importlib.import_module(
            "porticotest_pb2_grpc"
        )
    finally:
        sys.path.remove(str(out))


@dataclasses.dataclass
class Pod:
    server: Any
    host: str
    port: int
    cancelled: asyncio.Event
    metadata: list[tuple[str, Any]]


async def start_pod(stubs: tuple[ModuleType, ModuleType], host: str = "127.0.0.2") -> Pod:
    pb, services = stubs
    cancelled = asyncio.Event()
    seen: list[tuple[str, Any]] = []

    class Echo(services.EchoServicer):  # type: ignore[name-defined,misc]
        async def Unary(self, request: Any, context: Any) -> Any:
            seen[:] = list(context.invocation_metadata())
            echoed = [(k, v) for k, v in seen if k.startswith("x-echo")]
            if echoed:
                context.set_trailing_metadata(echoed)
            if request.sleep_ms:
                try:
                    await asyncio.sleep(request.sleep_ms / 1000)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            if request.code:
                await context.abort(grpc.StatusCode(_code(request.code)), request.details)
            return pb.Msg(data=request.data, count=len(request.data))

        async def ServerStream(self, request: Any, context: Any) -> Any:
            try:
                for i in range(request.count):
                    yield pb.Msg(data=request.data, count=i)
                    if request.sleep_ms:
                        await asyncio.sleep(request.sleep_ms / 1000)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            if request.code:
                await context.abort(grpc.StatusCode(_code(request.code)), request.details)

        async def ClientStream(self, request_iterator: Any, context: Any) -> Any:
            seen[:] = list(context.invocation_metadata())
            total = 0
            count = 0
            async for msg in request_iterator:
                total += len(msg.data)
                count += 1
            return pb.Msg(count=count, data=str(total).encode())

        async def Bidi(self, request_iterator: Any, context: Any) -> None:
            # grpcio's asyncio server reports a reset of a bidi call as the end of the request
            # stream (EOF, the call not cancelled): the cancellation tests never end their
            # request stream, so an EOF there is the reset having reached the pod.
            try:
                while True:
                    msg = await context.read()
                    if msg is grpc.aio.EOF:
                        if not msg_done_writing(seen):
                            cancelled.set()
                        return
                    seen[:] = list(context.invocation_metadata())
                    await context.write(pb.Msg(data=msg.data, count=msg.count))
            except asyncio.CancelledError:
                cancelled.set()
                raise

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ]
    )
    services.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    return Pod(server, host, port, cancelled, seen)


def msg_done_writing(metadata: list[tuple[str, Any]]) -> bool:
    """Whether the client said it would end its request stream (x-done-writing)."""
    return any(k == "x-done-writing" for k, _ in metadata)


def _code(number: int) -> Any:
    return next(code.value for code in grpc.StatusCode if code.value[0] == number)


GRPC_OPTIONS = dataclasses.replace(DEFAULT_OPTIONS, upstream_protocol="GRPC")


async def start_proxy(pods: dict[str, list[tuple[str, int]] | str], **settings: Any) -> ProxyServer:
    settings.setdefault("access_log", False)
    settings.setdefault("h2c", True)
    proxy = ProxyServer(ProxySettings(**settings))
    proxy.apply(snapshot(pods, options=GRPC_OPTIONS))
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    return proxy


@pytest.fixture
async def pod(stubs: tuple[ModuleType, ModuleType]) -> AsyncIterator[Pod]:
    pod = await start_pod(stubs)
    yield pod
    await pod.server.stop(0)


@pytest.fixture
async def proxy(pod: Pod) -> AsyncIterator[ProxyServer]:
    # proxy-body-size counts a gRPC stream's whole request (as nginx does): 4 MiB messages need
    # more than the 1m default, as they do behind ingress-nginx.
    proxy = await start_proxy({"ns/svc/80": [(pod.host, pod.port)]}, max_body_bytes=64 << 20)
    yield proxy
    await proxy.shutdown(1.0)


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.enable_retries", 0),
]


def channel(port: int) -> Any:
    """A cleartext channel (h2c with prior knowledge, Portico's `--h2c`)."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


def tls_channel(proxy: ProxyServer) -> Any:
    """A channel to Portico's HTTPS listener (ALPN h2), trusting its fallback certificate."""
    assert proxy.tls is not None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=proxy.tls.fallback.cert_pem.encode()
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{proxy.https_port}",
        credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "portico.invalid")],
    )


@pytest.fixture(params=["h2c", "tls"])
def transport(request: pytest.FixtureRequest) -> str:
    """How the suite's client reaches Portico: cleartext HTTP/2, then TLS (ALPN h2)."""
    param: str = request.param
    return param


def client_channel(proxy: ProxyServer, transport: str) -> Any:
    return channel(proxy.http_port) if transport == "h2c" else tls_channel(proxy)


@pytest.fixture
async def stub(
    transport: str, proxy: ProxyServer, stubs: tuple[ModuleType, ModuleType]
) -> AsyncIterator[Any]:
    async with client_channel(proxy, transport) as ch:
        yield stubs[1].EchoStub(ch)


# ---- the four call types ---------------------------------------------------------------------


async def test_unary(stub: Any, stubs: Any) -> None:
    reply = await stub.Unary(stubs[0].Msg(data=b"hello"), timeout=10)
    assert reply.data == b"hello" and reply.count == 5


async def test_server_streaming(stub: Any, stubs: Any) -> None:
    got = [m async for m in stub.ServerStream(stubs[0].Msg(data=b"x" * 1000, count=50))]
    assert [m.count for m in got] == list(range(50))


async def test_client_streaming(stub: Any, stubs: Any) -> None:
    async def messages() -> AsyncIterator[Any]:
        for _ in range(40):
            yield stubs[0].Msg(data=b"y" * 5000)

    reply = await stub.ClientStream(messages(), timeout=10)
    assert reply.count == 40 and reply.data == b"200000"


async def test_bidi_streaming_interleaved(stub: Any, stubs: Any) -> None:
    """Each reply arrives before the next request is sent: nothing is buffered whole."""
    call = stub.Bidi(timeout=10, metadata=(("x-done-writing", "1"),))
    for i in range(20):
        await call.write(stubs[0].Msg(data=b"%d" % i, count=i))
        reply = await asyncio.wait_for(call.read(), 5)
        assert reply.count == i
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_large_messages_both_ways(stub: Any, stubs: Any) -> None:
    """4 MiB messages, past every flow-control window."""
    big = bytes(range(256)) * (4 * 4096)
    reply = await stub.Unary(stubs[0].Msg(data=big), timeout=20)
    assert reply.data == big


async def test_hundred_concurrent_calls_one_connection(stub: Any, stubs: Any) -> None:
    replies = await asyncio.gather(
        *(stub.Unary(stubs[0].Msg(data=b"%d" % i), timeout=20) for i in range(100))
    )
    assert [r.data for r in replies] == [b"%d" % i for i in range(100)]


# ---- status, details, metadata ----------------------------------------------------------------


async def test_status_and_details_trailers_only(stub: Any, stubs: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Unary(stubs[0].Msg(code=5, details="nothing here: ünïcode"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "nothing here: ünïcode"


async def test_status_after_messages(stub: Any, stubs: Any) -> None:
    call = stub.ServerStream(stubs[0].Msg(data=b"a", count=3, code=9, details="stop"))
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for m in call:
            got.append(m.count)
    assert got == [0, 1, 2]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "stop"


async def test_binary_metadata_both_ways(stub: Any, stubs: Any, pod: Pod) -> None:
    blob = bytes(range(256))
    call = stub.Unary(
        stubs[0].Msg(data=b"m"), metadata=(("x-echo-bin", blob), ("x-echo-text", "v")), timeout=10
    )
    await call
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-echo-bin"] == blob and trailing["x-echo-text"] == "v"
    seen = dict(pod.metadata)
    assert "x-forwarded-for" in seen and "x-request-id" in seen


# ---- deadlines and cancellation ---------------------------------------------------------------


async def test_grpc_timeout_honoured(stub: Any, stubs: Any, pod: Pod) -> None:
    """The client's deadline (grpc-timeout) ends the call with DEADLINE_EXCEEDED and the pod's
    stream is cancelled."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Unary(stubs[0].Msg(sleep_ms=5000), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(pod.cancelled.wait(), 5)


async def test_client_cancel_reaches_pod(stub: Any, stubs: Any, pod: Pod) -> None:
    call = stub.ServerStream(stubs[0].Msg(data=b"z", count=1000, sleep_ms=20))
    await asyncio.wait_for(call.read(), 5)
    call.cancel()
    await asyncio.wait_for(pod.cancelled.wait(), 5)


async def test_bidi_cancel_reaches_pod(stub: Any, stubs: Any, pod: Pod) -> None:
    call = stub.Bidi()
    await call.write(stubs[0].Msg(data=b"1"))
    await asyncio.wait_for(call.read(), 5)
    call.cancel()
    await asyncio.wait_for(pod.cancelled.wait(), 5)


async def test_proxy_read_timeout_deadline(stubs: Any, pod: Pod, transport: str) -> None:
    """proxy-read-timeout (nginx's grpc_read_timeout): a pod silent that long ends the call 4."""
    proxy = ProxyServer(ProxySettings(access_log=False, h2c=True))
    options = dataclasses.replace(GRPC_OPTIONS, read_timeout=0.3)
    proxy.apply(snapshot({"ns/svc/80": [(pod.host, pod.port)]}, options=options))
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    try:
        async with client_channel(proxy, transport) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stubs[1].EchoStub(ch).Unary(stubs[0].Msg(sleep_ms=3000), timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await proxy.shutdown(1.0)


# ---- Portico's own answers -----------------------------------------------------------------


async def _call_status(proxy: ProxyServer, transport: str, stubs: Any) -> Any:
    async with client_channel(proxy, transport) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs[1].EchoStub(ch).Unary(stubs[0].Msg(data=b"q"), timeout=10)
    return info.value


async def test_local_no_route_unimplemented(stubs: Any, pod: Pod, transport: str) -> None:
    proxy = ProxyServer(ProxySettings(access_log=False, h2c=True))
    proxy.apply(
        snapshot(
            {"ns/svc/80": [(pod.host, pod.port)]},
            routes=[("other.test", "/", "ns/svc/80")],
            options=GRPC_OPTIONS,
        )
    )
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    try:
        error = await _call_status(proxy, transport, stubs)
    finally:
        await proxy.shutdown(1.0)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_local_no_endpoints_unavailable(stubs: Any, transport: str) -> None:
    proxy = await start_proxy({"ns/svc/80": []})
    try:
        error = await _call_status(proxy, transport, stubs)
    finally:
        await proxy.shutdown(1.0)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "no endpoints" in error.details()


async def test_local_unreachable_unavailable(stubs: Any, transport: str) -> None:
    with socket_unused() as port:
        proxy = await start_proxy({"ns/svc/80": [("127.0.0.3", port)]})
    try:
        error = await _call_status(proxy, transport, stubs)
    finally:
        await proxy.shutdown(1.0)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot be reached" in error.details()


async def test_pod_speaking_http1_unavailable_and_logged(
    stubs: Any, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.4", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy({"ns/svc/80": [("127.0.0.4", port)]})
    try:
        with caplog.at_level("WARNING", logger="portico.proxy"):
            error = await _call_status(proxy, transport, stubs)
    finally:
        await proxy.shutdown(1.0)
        server.close()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert any(r.msg == "grpc.upstream_not_http2" for r in caplog.records)


class socket_unused:
    """A port nothing listens on (bound, not listening, for the test's length)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.3", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_generated_stub_path(stubs: Any) -> None:
    assert Path(stubs[0].__file__).name == "porticotest_pb2.py"


# ---- over TLS both ways (GRPCS) ----------------------------------------------------------------


async def start_grpcs_pod(stubs: tuple[ModuleType, ModuleType], ca: Any) -> tuple[Any, int]:
    """A grpcio pod on 127.0.0.5 speaking TLS with a certificate `ca` issued for
    pod.grpc.test: (its server, its port)."""
    issued = ca.issue_cert("pod.grpc.test")
    server = grpc.aio.server()
    stubs[1].add_EchoServicer_to_server(plain_echo(stubs), server)
    credentials = grpc.ssl_server_credentials(
        [(issued.private_key_pem.bytes(), issued.cert_chain_pems[0].bytes())]
    )
    port = server.add_secure_port("127.0.0.5:0", credentials)
    await server.start()
    return server, port


async def test_grpcs_over_tls_both_ways(stubs: Any) -> None:
    """The client speaks TLS (ALPN h2) to Portico, Portico TLS with ALPN h2 to the pod, verified
    against the route's CA (proxy-ssl-secret) and name (proxy-ssl-name): annotations.md
    "Backend Protocol" (GRPCS), backendprotocol.go "should set backend protocol to grpcs://"."""
    import trustme

    ca = trustme.CA()
    server, port = await start_grpcs_pod(stubs, ca)
    options = dataclasses.replace(
        DEFAULT_OPTIONS,
        upstream_protocol="GRPCS",
        upstream_server_name="pod.grpc.test",
        upstream_ca_pem=ca.cert_pem.bytes().decode(),
    )
    proxy = ProxyServer(ProxySettings(access_log=False))
    proxy.apply(snapshot({"ns/svc/80": [("127.0.0.5", port)]}, options=options))
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    try:
        async with tls_channel(proxy) as ch:
            reply = await stubs[1].EchoStub(ch).Unary(stubs[0].Msg(data=b"tls"), timeout=10)
            assert reply.data == b"tls"
            got = [
                m.count
                async for m in stubs[1]
                .EchoStub(ch)
                .ServerStream(stubs[0].Msg(data=b"s", count=5), timeout=10)
            ]
            assert got == [0, 1, 2, 3, 4]
    finally:
        await proxy.shutdown(1.0)
        await server.stop(0)


async def test_grpcs_unverified_pod_refused(stubs: Any, transport: str) -> None:
    """A GRPCS pod whose certificate the route's CA did not issue is never spoken to (14)."""
    import trustme

    server, port = await start_grpcs_pod(stubs, trustme.CA())
    options = dataclasses.replace(
        DEFAULT_OPTIONS,
        upstream_protocol="GRPCS",
        upstream_server_name="pod.grpc.test",
        upstream_ca_pem=trustme.CA().cert_pem.bytes().decode(),  # another CA
    )
    proxy = ProxyServer(ProxySettings(access_log=False, h2c=True))
    proxy.apply(snapshot({"ns/svc/80": [("127.0.0.5", port)]}, options=options))
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    try:
        error = await _call_status(proxy, transport, stubs)
    finally:
        await proxy.shutdown(1.0)
        await server.stop(0)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def plain_echo(stubs: tuple[ModuleType, ModuleType]) -> Any:
    """A unary and server-streaming echo for the pods built in a test."""
    echo = type("PlainEcho", (_PlainEcho, stubs[1].EchoServicer), {})
    return echo(stubs[0])


class _PlainEcho:
    def __init__(self, pb: ModuleType) -> None:
        self.pb = pb

    async def Unary(self, request: Any, context: Any) -> Any:
        return self.pb.Msg(data=request.data)

    async def ServerStream(self, request: Any, context: Any) -> Any:
        for i in range(request.count):
            yield self.pb.Msg(data=request.data, count=i)
            if request.sleep_ms:
                await asyncio.sleep(request.sleep_ms / 1000)


# ---- the pod resets, drain, HTTP/1.1 clients ---------------------------------------------------


async def test_pod_reset_reaches_client(stubs: Any) -> None:
    """A pod's RST_STREAM after its response began reaches the client as a reset (CANCEL ->
    CANCELLED), not as a clean end."""
    import h2.config
    import h2.connection
    import h2.events

    async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    sid = event.stream_id
                    conn.send_headers(
                        sid, [(":status", "200"), ("content-type", "application/grpc")]
                    )
                    conn.send_data(sid, b"\x00\x00\x00\x00\x00")  # one empty message
                    conn.reset_stream(sid, 0x8)
            writer.write(conn.data_to_send())
            await writer.drain()

    server = await asyncio.start_server(pod, "127.0.0.6", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy({"ns/svc/80": [("127.0.0.6", port)]})
    try:
        async with channel(proxy.http_port) as ch:
            call = stubs[1].EchoStub(ch).ServerStream(stubs[0].Msg(count=3), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
        assert info.value.code() == grpc.StatusCode.CANCELLED
    finally:
        await proxy.shutdown(1.0)
        server.close()


async def test_drain_finishes_a_stream_in_flight(stubs: Any, pod: Pod) -> None:
    """Shutdown during a server-streaming call: GOAWAY to the client, the call completes."""
    proxy = await start_proxy({"ns/svc/80": [(pod.host, pod.port)]})
    async with channel(proxy.http_port) as ch:
        call = (
            stubs[1]
            .EchoStub(ch)
            .ServerStream(stubs[0].Msg(data=b"d", count=10, sleep_ms=50), timeout=10)
        )
        first = await asyncio.wait_for(call.read(), 5)
        stopping = asyncio.create_task(proxy.shutdown(5.0))
        rest = []
        while (message := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
            rest.append(message.count)
        assert [first.count, *rest] == list(range(10))
        assert await call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 10)


async def test_http1_request_to_grpc_route_not_forwarded(pod: Pod) -> None:
    """gRPC needs HTTP/2 end to end: an HTTP/1.1 request to a GRPC route is answered 502 and
    never reaches the pod (a difference: nginx's grpc_pass would relay it)."""
    proxy = await start_proxy({"ns/svc/80": [(pod.host, pod.port)]})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
        writer.write(
            b"POST /porticotest.Echo/Unary HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"
        )
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    finally:
        await proxy.shutdown(1.0)
    assert status_line.startswith(b"HTTP/1.1 502")
    assert pod.metadata == []


# ---- portico serve --manifests -----------------------------------------------------------------


async def test_serve_manifests_grpc_h2c_and_tls(tmp_path: Path, stubs: Any, pod: Pod) -> None:
    """The annotation through the compiler, the CLI and a real worker: `backend-protocol: GRPC`
    on an Ingress, grpcio clients over h2c (--h2c) and over TLS (the Ingress's certificate)."""
    import trustme
    import yaml
    from serving import eventually, free_port, start_serve, stop_serve

    from tests.integration.manifests import (
        ingress,
        ingress_class,
        service_with_pods,
        tls_secret,
    )

    host = "grpc.test"
    ca = trustme.CA()
    issued = ca.issue_cert(host)
    docs = [
        ingress_class(),
        *service_with_pods("echo", [pod.host], pod.port),
        tls_secret("grpc-tls", issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()),
        ingress(
            "echo",
            host,
            {"/": "echo"},
            tls_secret="grpc-tls",
            annotations={
                "nginx.ingress.kubernetes.io/backend-protocol": "GRPC",
                # h2c on a TLS host: without this, plain requests are redirected (as nginx does).
                "nginx.ingress.kubernetes.io/ssl-redirect": "false",
            },
            service_port={"number": 80},
        ),
    ]
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all(docs))
    http, https, admin = free_port(), free_port(), free_port()
    process = await start_serve(
        tmp_path,
        http=http,
        https=https,
        admin=admin,
        extra=("--h2c",),
        stdout=open(tmp_path / "out.log", "wb"),  # noqa: SIM115
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        plain = grpc.aio.insecure_channel(
            f"127.0.0.1:{http}", options=[("grpc.default_authority", host)]
        )
        secure = grpc.aio.secure_channel(
            f"127.0.0.1:{https}",
            grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes()),
            options=[("grpc.ssl_target_name_override", host), ("grpc.default_authority", host)],
        )
        async with plain, secure:

            async def answers() -> bool:
                try:
                    await stubs[1].EchoStub(plain).Unary(stubs[0].Msg(data=b"up"), timeout=2)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(answers, limit=30)
            for ch in (plain, secure):
                stub = stubs[1].EchoStub(ch)
                reply = await stub.Unary(stubs[0].Msg(data=b"serve"), timeout=10)
                assert reply.data == b"serve"
                got = [m.count async for m in stub.ServerStream(stubs[0].Msg(count=3))]
                assert got == [0, 1, 2]
    finally:
        await stop_serve(process)


async def test_body_size_limit_over_the_stream(stubs: Any, pod: Pod) -> None:
    """proxy-body-size counts a gRPC request stream's DATA in total (nginx's
    client_max_body_size does, a known trap for long client streams, matched): past it the
    call fails with RESOURCE_EXHAUSTED."""
    proxy = await start_proxy({"ns/svc/80": [(pod.host, pod.port)]}, max_body_bytes=100_000)
    try:
        async with channel(proxy.http_port) as ch:
            stub = stubs[1].EchoStub(ch)
            reply = await stub.Unary(stubs[0].Msg(data=b"k" * 50_000), timeout=10)
            assert len(reply.data) == 50_000

            # Two messages (100,010 bytes framed) pass the limit with the last bytes of the
            # second, so the client has written everything before the status can come. More
            # writes would race it: grpcio reports INTERNAL ("Failed execute_batch") for a
            # write issued after the call ended, whatever status the call got.
            call = stub.ClientStream(timeout=10)
            for _ in range(2):
                await call.write(stubs[0].Msg(data=b"k" * 50_000))
            assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await proxy.shutdown(1.0)


async def test_pod_refusing_a_stream_is_retried(stubs: Any, pod: Pod) -> None:
    """A pod's REFUSED_STREAM before any response (not processed, RFC 9113 §8.7): the call is
    resent to another pod with its request data (up to 64 KiB kept), and succeeds."""
    import h2.config
    import h2.connection
    import h2.events

    refused = 0

    async def refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal refused
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    refused += 1
                    conn.reset_stream(event.stream_id, 0x7)
            writer.write(conn.data_to_send())
            await writer.drain()

    server = await asyncio.start_server(refusing, "127.0.0.7", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy({"ns/svc/80": [("127.0.0.7", port), (pod.host, pod.port)]})
    try:
        async with channel(proxy.http_port) as ch:
            stub = stubs[1].EchoStub(ch)
            for i in range(4):
                reply = await stub.Unary(stubs[0].Msg(data=b"%d" % i), timeout=10)
                assert reply.data == b"%d" % i
        assert refused >= 1
    finally:
        await proxy.shutdown(1.0)
        server.close()


async def test_access_log_upstream_status_and_least_request_in_flight(stubs: Any, pod: Pod) -> None:
    """A gRPC call's access-log entry names the pod's status and time like an exchange's
    (Portico's own answer: none), and the least-request balancer counts a call in flight on
    its endpoint until it ends (issue 19 items 4 and 7)."""
    proxy = ProxyServer(ProxySettings(access_log=True, h2c=True))
    options = dataclasses.replace(GRPC_OPTIONS, balancer="least_request")
    proxy.apply(
        snapshot(
            {"ns/svc/80": [(pod.host, pod.port)], "ns/none/80": []},
            [("", "/", "ns/svc/80"), ("none.test", "/", "ns/none/80")],
            options=options,
        )
    )
    await proxy.start(host="127.0.0.1", http_port=0)
    access = proxy.access
    assert access is not None
    access.stream = io.BytesIO()
    generation = proxy.routing.generation
    assert generation is not None
    cluster = generation.clusters["ns/svc/80"]
    (endpoint,) = cluster.endpoints
    try:
        async with channel(proxy.http_port) as ch:
            stub = stubs[1].EchoStub(ch)
            call = stub.Bidi()
            await call.write(stubs[0].Msg(data=b"1"))
            await asyncio.wait_for(call.read(), 5)
            assert cluster.active_requests(endpoint) == 1
            await call.done_writing()
            while await asyncio.wait_for(call.read(), 5) != grpc.aio.EOF:
                pass
            assert await call.code() == grpc.StatusCode.OK
            assert cluster.active_requests(endpoint) == 0
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{proxy.http_port}", options=[("grpc.default_authority", "none.test")]
        ) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await stubs[1].EchoStub(ch).Unary(stubs[0].Msg(data=b"x"))
        access.flush()
        lines = [json.loads(line) for line in access.stream.getvalue().splitlines()]
        by_host = {line["host"]: line for line in lines}
        assert set(by_host) == {f"127.0.0.1:{proxy.http_port}", "none.test"}
        answered = by_host[f"127.0.0.1:{proxy.http_port}"]
        assert answered["upstream_status"] == 200 and answered["upstream_ms"] is not None
        assert answered["upstream"] == f"{pod.host}:{pod.port}"
        local = by_host["none.test"]
        assert local["upstream_status"] is None and local["status"] == 503
    finally:
        await proxy.shutdown(1.0)


# ---- external auth (auth-url) in front of a gRPC route -------------------------------------------


class AuthService:
    """An auth service on 127.0.0.30: /allow answers 200 with an identity field (/slow too,
    after 2 s), /deny 401 and /forbid 403 (after 0.2 s); it records the requests it gets."""

    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> AuthService:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.30", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def _answer(self, request: web.Request) -> web.Response:
        self.asked.append({k.lower(): v for k, v in request.headers.items()})
        if request.path == "/slow":
            await asyncio.sleep(2)
        if request.path in ("/allow", "/slow"):
            return web.Response(status=200, headers={"X-Auth-Request-User": "alice"})
        # Refusals take a moment, so a client's first message is written before them (a
        # write racing the status makes grpcio report INTERNAL instead of the status).
        await asyncio.sleep(0.2)
        return web.Response(status=401 if request.path == "/deny" else 403)

    def url(self, path: str) -> str:
        return f"http://127.0.0.30:{self.port}{path}"


@pytest.fixture
async def auth() -> AsyncIterator[AuthService]:
    service = await AuthService().start()
    yield service
    assert service.runner is not None
    await service.runner.cleanup()


async def authed_proxy(pod: Pod, auth: AuthService, path: str) -> ProxyServer:
    """A GRPC route behind auth-url `path`, passing X-Auth-Request-User on to the pod
    (auth-response-headers)."""
    step = ExternalAuth(url=auth.url(path), response_headers=("X-Auth-Request-User",))
    options = dataclasses.replace(GRPC_OPTIONS, policy=(step,))
    proxy = ProxyServer(ProxySettings(access_log=False, h2c=True))
    proxy.apply(snapshot({"ns/svc/80": [(pod.host, pod.port)]}, options=options))
    await proxy.start(host="127.0.0.1", http_port=0, https_port=0)
    return proxy


async def test_external_auth_lets_the_call_through_with_its_fields(
    stubs: Any, pod: Pod, auth: AuthService, transport: str
) -> None:
    """auth-url on a GRPC route: the auth service is asked first (the call's path as
    X-Original-URL, as ingress-nginx's auth subrequest carries it); on 2xx the call goes to the
    pod with the auth-response-headers as metadata, the client's forged copy replaced."""
    proxy = await authed_proxy(pod, auth, "/allow")
    try:
        async with client_channel(proxy, transport) as ch:
            reply = (
                await stubs[1]
                .EchoStub(ch)
                .Unary(
                    stubs[0].Msg(data=b"in"),
                    metadata=(("x-auth-request-user", "mallory"),),
                    timeout=10,
                )
            )
        assert reply.data == b"in"
        assert len(auth.asked) == 1
        assert auth.asked[0]["x-original-url"].endswith("/porticotest.Echo/Unary")
        assert dict(pod.metadata)["x-auth-request-user"] == "alice"
    finally:
        await proxy.shutdown(1.0)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/deny", grpc.StatusCode.UNAUTHENTICATED),  # 401 -> 16 (HTTP-to-gRPC mapping)
        ("/forbid", grpc.StatusCode.PERMISSION_DENIED),  # 403 -> 7
    ],
)
async def test_external_auth_refusal_never_reaches_the_pod(
    stubs: Any, pod: Pod, auth: AuthService, transport: str, *, path: str, code: Any
) -> None:
    """An auth service's 401/403 ends the call with the gRPC status of that HTTP status; the
    pod is never asked, even for a client stream whose messages were already sent."""
    proxy = await authed_proxy(pod, auth, path)
    try:
        async with client_channel(proxy, transport) as ch:
            stub = stubs[1].EchoStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(stubs[0].Msg(data=b"no"), timeout=10)
            assert info.value.code() == code
            call = stub.ClientStream(timeout=10)
            await call.write(stubs[0].Msg(data=b"k" * 10_000))  # held by Portico meanwhile
            assert await call.code() == code
        assert len(auth.asked) == 2
        assert pod.metadata == []  # the pod never got a call
    finally:
        await proxy.shutdown(1.0)


async def test_deadline_while_external_auth_is_asked(
    stubs: Any, pod: Pod, auth: AuthService, transport: str
) -> None:
    """The client's deadline passing while the auth service thinks ends the call (4) without
    the pod; the connection serves the next call."""
    proxy = await authed_proxy(pod, auth, "/slow")
    try:
        async with client_channel(proxy, transport) as ch:
            stub = stubs[1].EchoStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(stubs[0].Msg(data=b"late"), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert pod.metadata == []
            reply = await stub.Unary(stubs[0].Msg(data=b"next"), timeout=10)
            assert reply.data == b"next"
    finally:
        await proxy.shutdown(1.0)
