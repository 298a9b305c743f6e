"""Rate limits through real sockets: `portico serve --workers 2` against an echo pod.

Each host is an Ingress with ingress-nginx's rate-limit annotations (docs: annotations.md
"Rate Limiting"; internal/ingress/annotations/ratelimit/main.go: burst = limit x
limit-burst-multiplier, default 5; the template's `limit_req ... burst=B nodelay` and
`limit_conn`; test/e2e/annotations/limitconnections.go). Every request goes on a fresh
connection, so the kernel spreads them over both workers (SO_REUSEPORT): the counts asserted
are the whole proxy's, which one limit per worker would exceed (the issue's requirement).
The ingress-nginx ConfigMap sets limit-req-status-code to 429; limit-conn-status-code keeps
its default, 503.

Timing: the request-rate rows use limit-rpm 1 (a bucket drains one request a minute, so the
counts are exact however slow the machine), and the limit-rps row allows for the bucket
draining during the test (1 request a second: at most ceil(elapsed) more). The connection row
holds requests open with the pod's `sleep_ms` (3 s) while 20 start at once, as
limitconnections.go does with its slow echo; a worker killed mid-request leaves no count
behind (the controller clears them when it replaces the worker).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import manifests
import pytest
import yaml
from serving import children, echo_pods, eventually, free_port, start_serve, stop_serve

pytestmark = [pytest.mark.timeout(90)]

N = "nginx.ingress.kubernetes.io/"
NS, NAME = "ingress-nginx", "ingress-nginx-controller"

HOSTS: dict[str, dict[str, str]] = {
    # annotations.md: burst = limit x multiplier; nginx: a fresh client gets 1 + burst at once.
    "rpm.test": {N + "limit-rpm": "1", N + "limit-burst-multiplier": "1"},
    "rps.test": {N + "limit-rps": "1"},  # default multiplier 5: 1 + 5 at once
    "allowlisted.test": {
        N + "limit-rpm": "1",
        N + "limit-burst-multiplier": "1",
        N + "limit-whitelist": "127.0.0.0/8",  # annotations.md: excluded from rate-limiting
    },
    "conn.test": {N + "limit-connections": "8"},  # limitconnections.go: 8 of 20 pass
    "invalid.test": {N + "limit-rps": "ten"},  # does not read: fail closed
    "open.test": {},
}


def configmap(data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": NS},
        "data": data,
    }


async def status_of(port: int, host: str, target: str = "/") -> int:
    """One GET on a fresh connection: its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 20)
        await asyncio.wait_for(reader.read(), 20)
        return int(line.split()[1])
    finally:
        writer.close()


async def statuses(port: int, host: str, n: int) -> list[int]:
    return [await status_of(port, host) for _ in range(n)]


@pytest.fixture
async def serving(tmp_path: Path) -> Any:
    async with echo_pods(("127.0.0.2", "web", "pod-a")) as pod_port:
        docs = [
            manifests.ingress_class(),
            *manifests.service_with_pods("web", ["127.0.0.2"], pod_port),
            *(
                manifests.ingress(host.split(".")[0], host, {"/": "web"}, annotations=ann)
                for host, ann in HOSTS.items()
            ),
            configmap({"limit-req-status-code": "429"}),
        ]
        (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(docs))
        http, admin = free_port(), free_port()
        process = await start_serve(
            tmp_path,
            http=http,
            admin=admin,
            workers=2,
            extra=("--nginx-configmap", f"{NS}/{NAME}"),
        )
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

                async def ready() -> bool:
                    try:
                        async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(ready, 40)
            yield http, process
        finally:
            await stop_serve(process, grace=5)


@pytest.fixture
async def proxy(serving: tuple[int, asyncio.subprocess.Process]) -> int:
    return serving[0]


async def test_request_limits_hold_for_the_whole_proxy(proxy: int) -> None:
    # limit-rpm 1, multiplier 1: 2 requests pass, then the ConfigMap's 429, across workers.
    assert await statuses(proxy, "rpm.test", 10) == [200, 200] + [429] * 8
    # An allowlisted client is not limited (the same limits otherwise).
    assert await statuses(proxy, "allowlisted.test", 10) == [200] * 10
    # No annotation: no limit.
    assert await statuses(proxy, "open.test", 10) == [200] * 10
    # A limit that does not read answers 503, never serves unlimited.
    assert await statuses(proxy, "invalid.test", 2) == [503, 503]


async def test_burst_is_the_limit_times_the_multiplier(proxy: int) -> None:
    # limit-rps 1 with the default multiplier 5: 1 + 5 at once, then 1 a second drains.
    started = time.monotonic()
    got = await statuses(proxy, "rps.test", 14)
    elapsed = time.monotonic() - started
    passed = got.count(200)
    assert got[:6] == [200] * 6, got
    assert 6 <= passed <= 6 + math.ceil(elapsed), (got, elapsed)
    assert set(got) <= {200, 429}, got


async def test_connections_in_progress_are_limited(proxy: int) -> None:
    # limitconnections.go "should limit-connections": 20 at once, limit 8: 8 x 200, 12 x 503.
    got = await asyncio.gather(
        *(status_of(proxy, "conn.test", "/?sleep_ms=3000") for _ in range(20))
    )
    assert sorted(got) == [200] * 8 + [503] * 12
    # Once they ended, the counts are given back (in every worker).
    assert await statuses(proxy, "conn.test", 10) == [200] * 10


async def test_a_dead_workers_requests_in_progress_are_forgotten(
    serving: tuple[int, asyncio.subprocess.Process],
) -> None:
    # Nine slow requests against conn.test's limit of 8: one is refused, eight are in progress
    # when both workers are killed. Their counts can never be given back: the controller
    # clears them, and the replacement workers serve the client again.
    http, process = serving
    slow = [asyncio.create_task(status_of(http, "conn.test", "/?sleep_ms=10000")) for _ in range(9)]
    done, _ = await asyncio.wait(slow, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result() for t in done] == [503]
    for pid in children(process.pid):
        os.kill(pid, signal.SIGKILL)
    for task in slow:
        if task not in done:
            with pytest.raises((ValueError, IndexError, ConnectionError)):
                await task

    async def served() -> bool:
        try:
            return await status_of(http, "conn.test") == 200
        except (OSError, ValueError, IndexError):
            return False  # no worker listening yet

    await eventually(served, 20)
