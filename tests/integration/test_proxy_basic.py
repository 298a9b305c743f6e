"""Smoke: keep-alive forwarding through the proxy to a test pod."""

from __future__ import annotations

from backends import Client, Pod, snapshot, start_proxy


async def test_get_and_keepalive() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        for i in range(3):
            resp = await client.request("GET", f"/echo?i={i}")
            assert resp.status == 200, resp.body
            doc = resp.json()
            assert doc["target"] == f"/echo?i={i}"
        assert pod.connections == 1
        await client.close()
    finally:
        await proxy.shutdown(1.0)
        await pod.stop()
