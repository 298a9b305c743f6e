"""Generation swaps and shutdown: no request lost, state of unchanged endpoints kept."""

from __future__ import annotations

import asyncio

import pytest
from backends import Client, Pod, render_request, snapshot, start_proxy

from proxy.config import Backend, Endpoint, EndpointsUpdate, SnapshotError
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.uvloop,
]


async def test_start_requires_a_snapshot() -> None:
    proxy = ProxyServer(ProxySettings(access_log=False))
    with pytest.raises(RuntimeError):
        await proxy.start(host="127.0.0.1", http_port=0)


async def test_swaps_during_a_stream_of_requests_lose_none(pods: list[Pod]) -> None:
    a, b = pods
    snaps = [
        snapshot({"ns/a/80": [(a.host, a.port)]}, version=v)
        if v % 2
        else snapshot(
            {"ns/b/80": [(b.host, b.port)], "ns/a/80": [(a.host, a.port)]},
            [("", "/", "ns/b/80")],
            version=v,
        )
        for v in range(1, 41)
    ]
    proxy = await start_proxy(snaps[0])
    statuses: list[int] = []
    stop = asyncio.Event()

    async def user(n: int) -> None:
        client = await Client.connect(proxy.http_port)
        i = 0
        while not stop.is_set():
            body = b"x" * (i % 3) * 1000
            resp = await client.request("POST" if body else "GET", f"/echo?u={n}&i={i}", body=body)
            statuses.append(resp.status)
            assert resp.json()["target"] == f"/echo?u={n}&i={i}"
            i += 1
        await client.close()

    users = [asyncio.create_task(user(n)) for n in range(8)]
    try:
        for snap in snaps[1:]:
            await asyncio.sleep(0.01)
            proxy.apply(snap)
        stop.set()
        await asyncio.gather(*users)
    finally:
        await proxy.shutdown(1.0)
    assert len(statuses) > 40
    assert set(statuses) == {200}
    assert a.requests > 0 and b.requests > 0


async def test_request_keeps_the_generation_it_started_with(pods: list[Pod]) -> None:
    a, _ = pods
    proxy = await start_proxy(snapshot({"ns/a/80": [(a.host, a.port)]}, [("", "/slow", "ns/a/80")]))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(render_request("GET", "/slow?delay=0.3"))
        await asyncio.sleep(0.1)
        proxy.apply(
            snapshot({"ns/a/80": [(a.host, a.port)]}, [("", "/other", "ns/a/80")], version=2)
        )
        resp = await client.response()
        assert resp.status == 200
        assert (await client.request("GET", "/slow?delay=0")).status == 404
        await client.close()
    finally:
        await proxy.shutdown(0.5)


async def test_swap_keeps_clusters_and_pooled_connections(pods: list[Pod]) -> None:
    a, b = pods
    both = {"ns/s/80": [(a.host, a.port), (b.host, b.port)]}
    proxy = await start_proxy(snapshot(both))
    try:
        client = await Client.connect(proxy.http_port)
        for _ in range(4):
            assert (await client.request("GET", "/echo")).status == 200
        cluster = proxy.generation.clusters["ns/s/80"]
        assert proxy.pool.idle_count() == 2
        connections = a.connections + b.connections
        proxy.apply(snapshot(both, version=2))
        assert proxy.generation.clusters["ns/s/80"] is cluster
        assert proxy.generation.snapshot.version == 2
        for _ in range(4):
            assert (await client.request("GET", "/echo")).status == 200
        assert a.connections + b.connections == connections  # pooled ones were reused
        # Dropping b: its idle pooled connection is closed, a's stays.
        proxy.apply(snapshot({"ns/s/80": [(a.host, a.port)]}, version=3))
        assert proxy.generation.clusters["ns/s/80"] is cluster
        assert [k for k, v in proxy.pool.idle.items() if v] == [(a.host, a.port)]
        await asyncio.sleep(0.05)
        assert not b.open
        for _ in range(3):
            assert (await client.request("GET", "/echo")).json()["pod"] == a.host
        await client.close()
    finally:
        await proxy.shutdown(0.5)


async def test_apply_endpoints_update(pods: list[Pod]) -> None:
    a, b = pods
    proxy = await start_proxy(snapshot({"ns/s/80": [(a.host, a.port)]}, version=5))
    try:
        cluster = proxy.generation.clusters["ns/s/80"]
        router = proxy.generation.router
        update = EndpointsUpdate(5, 6, (Backend("ns/s/80", (Endpoint(b.host, b.port),)),))
        proxy.apply_endpoints(update)
        assert proxy.generation.router is router  # routes untouched
        assert proxy.generation.clusters["ns/s/80"] is cluster
        resp = await Client.connect(proxy.http_port)
        assert (await resp.request("GET", "/echo")).json()["pod"] == b.host
        await resp.close()
        # An update for another base version is refused; the current generation stays.
        with pytest.raises(SnapshotError):
            proxy.apply_endpoints(EndpointsUpdate(5, 7, ()))
        assert proxy.generation.snapshot.version == 6
    finally:
        await proxy.shutdown(0.5)


async def test_shutdown_drains_in_flight_and_closes_idle(pods: list[Pod]) -> None:
    a, _ = pods
    proxy = await start_proxy(snapshot({"ns/a/80": [(a.host, a.port)]}))
    idle = await Client.connect(proxy.http_port)
    assert (await idle.request("GET", "/echo")).status == 200
    busy = await Client.connect(proxy.http_port)
    busy.send(render_request("GET", "/slow?delay=0.3"))
    await asyncio.sleep(0.05)
    shutdown = asyncio.create_task(proxy.shutdown(5.0))
    assert await idle.closed(timeout=2)
    resp = await busy.response()
    assert resp.status == 200
    assert resp.header("Connection") == "close"
    assert await busy.closed()
    await shutdown
    with pytest.raises(OSError):
        await Client.connect(proxy.http_port)


async def test_shutdown_gives_up_after_the_drain_timeout(pods: list[Pod]) -> None:
    a, _ = pods
    proxy = await start_proxy(snapshot({"ns/a/80": [(a.host, a.port)]}))
    busy = await Client.connect(proxy.http_port)
    busy.send(render_request("GET", "/slow?delay=10"))
    await asyncio.sleep(0.05)
    await proxy.shutdown(0.2)
    assert await busy.closed(timeout=2)
    assert not proxy.clients
