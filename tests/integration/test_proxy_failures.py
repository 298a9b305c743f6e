"""Failures map to clean local answers; retries go where they are safe; limits hold.

404 (no route), 503 (ServiceNotFound / ServicePortNotFound / ExternalNameNotAllowed / no
endpoints), 502 (connect failures on up to 3 distinct endpoints, bad or vanished upstream),
504 (upstream response-head timeout), 408/413/414/431 (client limits), stale pooled
connections retried on a fresh one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from backends import Client, Pod, render_request, snapshot, start_proxy

from proxy import pool as pool_module
from proxy.config import BodyLimit, RouteOptions
from tests.integration.serving import free_port

pytestmark = [pytest.mark.timeout(30), pytest.mark.uvloop]


async def answer(proxy: Any, method: str, target: str, host: str = "svc.test", **kw: Any) -> Any:
    client = await Client.connect(proxy.http_port)
    try:
        return await client.request(method, target, host=host, **kw)
    finally:
        await client.close()


def assert_local(resp: Any, status: int) -> None:
    assert resp.status == status
    assert resp.header("Server") == "portico"
    assert (resp.header("Content-Type") or "").startswith("text/plain")
    assert len(resp.body) < 64
    for internal in (b"NotFound", b"NotAllowed", b"Endpoints", b"127.0.0", b"ns/svc"):
        assert internal not in resp.body


async def test_no_route_404(pods: list[Pod]) -> None:
    snap = snapshot(
        {"ns/svc/80": [(pods[0].host, pods[0].port)]}, [("svc.test", "/api", "ns/svc/80")]
    )
    proxy = await start_proxy(snap)
    try:
        assert_local(await answer(proxy, "GET", "/other"), 404)
        assert_local(await answer(proxy, "GET", "/api", host="unknown.test"), 404)
        # Host matching ignores the port and the case.
        assert (await answer(proxy, "GET", "/api/x", host="SVC.test:8080")).status == 200
        # A 404 keeps the connection usable.
        client = await Client.connect(proxy.http_port)
        assert (await client.request("GET", "/nope")).status == 404
        assert (await client.request("GET", "/api")).status == 200
        await client.close()
    finally:
        await proxy.shutdown(0.5)


@pytest.mark.parametrize(
    "reason", ["ServiceNotFound", "ServicePortNotFound", "ExternalNameNotAllowed"]
)
async def test_unavailable_backend_503(reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = await start_proxy(snapshot({"ns/svc/80": reason}), access_log=True)
    try:
        resp = await answer(proxy, "GET", "/")
        assert_local(resp, 503)
        assert reason.encode() not in resp.body
        proxy.access.flush()
    finally:
        await proxy.shutdown(0.5)
    assert f'"reason":"{reason}"' in capsys.readouterr().out


async def test_no_endpoints_503() -> None:
    proxy = await start_proxy(snapshot({"ns/svc/80": []}))
    try:
        assert_local(await answer(proxy, "GET", "/"), 503)
    finally:
        await proxy.shutdown(0.5)


async def test_connect_failures_try_three_distinct_endpoints_then_502() -> None:
    endpoints = [(f"127.0.0.{i}", free_port(f"127.0.0.{i}")) for i in (5, 6, 7, 8)]
    proxy = await start_proxy(snapshot({"ns/svc/80": endpoints}))
    try:
        resp = await answer(proxy, "POST", "/", body=b"data")
        assert_local(resp, 502)
        assert proxy.stats.upstream_connect_failures == 3
        cluster = proxy.generation.clusters["ns/svc/80"]
        ejected = [e for e in cluster.endpoints if cluster.is_ejected(e)]
        assert len(ejected) == 3
    finally:
        await proxy.shutdown(0.5)


async def test_connect_failure_retried_on_another_endpoint(pods: list[Pod]) -> None:
    dead = ("127.0.0.5", free_port("127.0.0.5"))
    snap = snapshot({"ns/svc/80": [dead, (pods[0].host, pods[0].port)]})
    proxy = await start_proxy(snap)
    try:
        for _ in range(4):  # whichever the balancer picks first, all succeed
            resp = await answer(proxy, "POST", "/echo", body=b"payload")
            assert resp.status == 200
            assert resp.json()["length"] == 7
        assert pods[0].requests == 4
        assert proxy.stats.upstream_connect_failures >= 1
    finally:
        await proxy.shutdown(0.5)


async def test_idempotent_request_retried_elsewhere_after_upstream_closed(
    pods: list[Pod],
) -> None:
    """/close makes a pod close without answering: a GET goes to the other pod, a POST 502s."""
    snap = snapshot({"ns/svc/80": [(p.host, p.port) for p in pods]})
    proxy = await start_proxy(snap)
    try:
        resp = await answer(proxy, "GET", "/close")
        # Both pods close on /close: after trying both, a clean 502.
        assert_local(resp, 502)
        assert pods[0].requests == 1 and pods[1].requests == 1
        resp = await answer(proxy, "POST", "/close", body=b"x")
        assert_local(resp, 502)
        assert pods[0].requests + pods[1].requests == 3
    finally:
        await proxy.shutdown(0.5)


async def test_stale_pooled_connection_retried_on_fresh_one(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        assert (await client.request("GET", "/echo")).status == 200
        assert proxy.pool.idle_count() == 1
        # The pod drops its idle keep-alive connection; the proxy may not have noticed yet
        # when the next request comes (the classic race): it must resend on a fresh one.
        assert pod.close_idle() == 1
        for method in ("GET", "POST"):
            resp = await client.request(method, "/echo", body=b"abc" if method == "POST" else b"")
            assert resp.status == 200, resp.body
            pod.close_idle()
        assert pod.connections == 3
        await client.close()
    finally:
        await proxy.shutdown(0.5)


async def test_stale_connection_detected_in_the_pool_before_use(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        assert (await answer(proxy, "GET", "/echo")).status == 200
        pod.close_idle()
        await asyncio.sleep(0.05)  # the proxy sees the close while the connection idles
        assert proxy.pool.idle_count() == 0
        assert (await answer(proxy, "GET", "/echo")).status == 200
        assert proxy.stats.upstream_stale_retries == 0
    finally:
        await proxy.shutdown(0.5)


async def test_upstream_header_timeout_504(pods: list[Pod]) -> None:
    pod = pods[0]
    opts = RouteOptions(read_timeout=0.3)
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}, options=opts))
    try:
        resp = await answer(proxy, "GET", "/slow?delay=3")
        assert_local(resp, 504)
        # Answers within the timeout are unaffected.
        assert (await answer(proxy, "GET", "/slow?delay=0.01")).status == 200
    finally:
        await proxy.shutdown(0.5)


async def test_bad_upstream_response_502(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        assert_local(await answer(proxy, "GET", "/bad"), 502)
        assert (await answer(proxy, "GET", "/echo")).status == 200
    finally:
        await proxy.shutdown(0.5)


async def test_upstream_closing_mid_body_cuts_the_client(pods: list[Pod]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.4", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy(snapshot({"ns/svc/80": [("127.0.0.4", port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(render_request("GET", "/"))
        data = await asyncio.wait_for(client.reader.read(), 5)  # EOF: the proxy closed
        assert data.startswith(b"HTTP/1.1 200")
        assert data.endswith(b"x" * 10)
    finally:
        await proxy.shutdown(0.5)
        server.close()


async def test_body_limits_413(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}), max_body_bytes=1000)
    try:
        assert_local(await answer(proxy, "POST", "/sink", body=b"x" * 1001), 413)
        # Chunked bodies are counted while streaming.
        client = await Client.connect(proxy.http_port)
        client.send(render_request("POST", "/sink", [("Transfer-Encoding", "chunked")]))
        client.send(b"400\r\n" + b"y" * 1024 + b"\r\n")
        resp = await client.response()
        assert_local(resp, 413)
        assert await client.closed()
        assert (await answer(proxy, "POST", "/sink", body=b"x" * 1000)).status == 200
    finally:
        await proxy.shutdown(0.5)


async def test_route_max_body_size_overrides(pods: list[Pod]) -> None:
    pod = pods[0]
    opts = RouteOptions(policy=(BodyLimit(10),))
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}, options=opts))
    try:
        assert_local(await answer(proxy, "POST", "/sink", body=b"x" * 11), 413)
        assert (await answer(proxy, "POST", "/sink", body=b"x" * 10)).status == 200
    finally:
        await proxy.shutdown(0.5)


async def test_head_limits_414_431(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), max_header_bytes=2048, max_headers=20
    )
    try:
        assert_local(await answer(proxy, "GET", "/" + "a" * 3000), 414)
        many = [(f"X-H{i}", "v") for i in range(25)]
        assert_local(await answer(proxy, "GET", "/", headers=many), 431)
        big = [("X-Big", "v" * 3000)]
        assert_local(await answer(proxy, "GET", "/", headers=big), 431)
        # A head arriving in many small reads is measured as a whole.
        client = await Client.connect(proxy.http_port)
        client.send(b"GET / HTTP/1.1\r\nHost: svc.test\r\n")
        # Fields of ~164 bytes, one per read: once 13 of them (> 2048 bytes) have been read
        # after the first read, the next read is refused although the head is unfinished.
        for i in range(15):
            client.send(b"X-Piece-%02d: " % i + b"p" * 150 + b"\r\n")
            await asyncio.sleep(0.01)
        assert_local(await client.response(), 431)
        assert pod.requests == 0
    finally:
        await proxy.shutdown(0.5)


async def test_slowloris_head_timeout_408(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), client_header_timeout=0.3
    )
    try:
        client = await Client.connect(proxy.http_port)
        client.send(b"GET / HTTP/1.1\r\nHost: svc")
        for _ in range(3):
            await asyncio.sleep(0.1)
            client.send(b"x")  # trickling bytes does not extend the head deadline
        resp = await client.response(timeout=3)
        assert resp.status == 408
        assert await client.closed()
        # A connection that never sends anything is closed too.
        silent = await Client.connect(proxy.http_port)
        assert await silent.closed(timeout=3)
    finally:
        await proxy.shutdown(0.5)


async def test_client_body_timeout_408(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), client_body_timeout=0.3
    )
    try:
        client = await Client.connect(proxy.http_port)
        client.send(render_request("POST", "/sink", [("Content-Length", "100")]) + b"only-part")
        resp = await client.response(timeout=3)
        assert resp.status == 408
        assert await client.closed()
    finally:
        await proxy.shutdown(0.5)


async def test_keepalive_idle_timeout_closes(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), keepalive_timeout=0.3
    )
    try:
        client = await Client.connect(proxy.http_port)
        assert (await client.request("GET", "/echo")).status == 200
        assert await client.closed(timeout=3)
    finally:
        await proxy.shutdown(0.5)


async def test_upstream_pool_idle_timeout_and_cap(
    pods: list[Pod], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past upstream_keepalive_max, idle connections stay only SURPLUS_IDLE seconds (a burst of
    # HTTP/2 streams releases many at once, just before the client's next requests take them).
    monkeypatch.setattr(pool_module, "SURPLUS_IDLE", 0.2)
    pod = pods[0]
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}),
        upstream_keepalive_timeout=1.5,
        upstream_keepalive_max=2,
    )
    try:
        clients = [await Client.connect(proxy.http_port) for _ in range(4)]
        for c in clients:
            c.send(render_request("GET", "/slow?delay=0.1"))
        for c in clients:
            assert (await c.response()).status == 200
        assert proxy.pool.idle_count() == 4  # two within the cap, two surplus for a while
        assert await _idle_becomes(proxy, 2, within=1.0)  # the surplus expired: capped
        assert await _idle_becomes(proxy, 0, within=2.5)  # the rest after the keep-alive
        for c in clients:
            await c.close()
    finally:
        await proxy.shutdown(0.5)


async def _idle_becomes(proxy: Any, count: int, within: float) -> bool:
    """Whether the pool's idle connections come down to `count` within `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while proxy.pool.idle_count() != count:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_upstream_connection_renewed_after_keepalive_time(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), upstream_keepalive_time=0.3
    )
    try:
        client = await Client.connect(proxy.http_port)
        for _ in range(3):  # within the keep-alive time: one upstream connection
            assert (await client.request("GET", "/echo")).status == 200
        assert pod.connections == 1
        await asyncio.sleep(0.4)
        # Older than the keep-alive time: it serves the request it was taken for, then closes.
        assert (await client.request("GET", "/echo")).status == 200
        assert proxy.pool.idle_count() == 0
        assert (await client.request("GET", "/echo")).status == 200
        assert pod.connections == 2
        assert proxy.pool.idle_count() == 1
        await client.close()
    finally:
        await proxy.shutdown(0.5)


async def test_max_connections_per_worker(pods: list[Pod]) -> None:
    pod = pods[0]
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}), max_connections=2)
    try:
        a = await Client.connect(proxy.http_port)
        b = await Client.connect(proxy.http_port)
        assert (await a.request("GET", "/echo")).status == 200
        c = await Client.connect(proxy.http_port)
        assert await c.closed()
        assert proxy.stats.connections_refused == 1
        assert (await b.request("GET", "/echo")).status == 200
        await a.close()
        await b.close()
    finally:
        await proxy.shutdown(0.5)


async def test_connect_method_refused(pods: list[Pod]) -> None:
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pods[0].host, pods[0].port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(b"CONNECT svc.test:443 HTTP/1.1\r\nHost: svc.test:443\r\n\r\n")
        resp = await client.response()
        assert resp.status in (400, 405)
        assert await client.closed()
        assert pods[0].requests == 0
    finally:
        await proxy.shutdown(0.5)
