"""Cluster mode at scale: time to first ready, memory, and endpoint-change latency (a benchmark).

    .venv/bin/python tests/bench/cluster_scale.py [--changes 20] [--workers 2]

Loads the API-server simulator with the compiler benchmark's objects (10,000 Ingresses with two
paths each, 5,000 Services with ten endpoints each, one IngressClass), starts `portico controller`
(one worker unless told) against it, and reports: the time from process start to `/readyz` 200, the
controller's and the workers' RSS once ready, and how long an EndpointSlice change takes to reach
the data path (a probe Service whose pod moves from 127.0.0.2 to 127.0.0.3, observed by requests
through the proxy). With several workers a change counts as arrived once eight consecutive
requests, each on a new connection (spread over the workers by SO_REUSEPORT), all see it. Figures
are printed, never asserted. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

# Run as a script: the repository root makes `controller`, `proxy` and `tests` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from controller.echo import start_echo
from tests.bench.test_compile_bench import scale_objects
from tests.integration.serving import free_port
from tests.kube_factory import endpoint_slice, ingress, path, rule, service, service_port
from tests.kubesim import KubeSim


def probe_slice(address: str, port: int) -> dict[str, Any]:
    return endpoint_slice(
        "probe-1", "probe", "default", endpoints=[address], ports=[("http", port)]
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def pod_of(session: aiohttp.ClientSession, http_port: int, fresh: bool = False) -> str | None:
    headers = {"Host": "probe.example.com"}
    if fresh:
        headers["Connection"] = "close"  # the next request opens a new connection
    try:
        async with session.get(f"http://127.0.0.1:{http_port}/", headers=headers) as resp:
            return resp.headers.get("X-Echo-Pod")
    except aiohttp.ClientError:
        return None


async def arrived(
    session: aiohttp.ClientSession, http_port: int, target: str, workers: int
) -> bool:
    if workers == 1:
        return await pod_of(session, http_port) == target
    for _ in range(8):
        if await pod_of(session, http_port, fresh=True) != target:
            return False
    return True


async def main(changes: int, workers: int) -> None:
    echo_port = free_port()
    pods = [
        await start_echo("127.0.0.2", echo_port, "probe", "pod-a"),
        await start_echo("127.0.0.3", echo_port, "probe", "pod-b"),
    ]
    async with KubeSim(bookmark_interval=30.0) as sim:
        started = time.perf_counter()
        for raw in scale_objects():
            sim.create(raw)
        sim.create(service("probe", "default", ports=[service_port(80, "http")]))
        sim.create(probe_slice("127.0.0.2", echo_port))
        sim.create(
            ingress("probe", "default", rules=[rule("probe.example.com", path("/", "probe", 80))])
        )
        print(f"simulator loaded in {time.perf_counter() - started:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = sim.write_kubeconfig(Path(tmp) / "kubeconfig")
            http_port, admin_port = free_port(), free_port()
            t0 = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "controller",
                "controller",
                "--kubeconfig",
                str(kubeconfig),
                "--http-port",
                str(http_port),
                "--https-port",
                "0",
                "--admin-port",
                str(admin_port),
                "--workers",
                str(workers),
                "--pod-name",
                "bench",
                "--no-events",
                "--no-access-log",
                "--log-level",
                "warning",
                env={**os.environ, "POD_NAMESPACE": "default"},
            )
            try:
                async with aiohttp.ClientSession() as session:
                    async with asyncio.timeout(300):
                        while True:
                            try:
                                async with session.get(
                                    f"http://127.0.0.1:{admin_port}/readyz"
                                ) as resp:
                                    if resp.status == 200:
                                        break
                            except aiohttp.ClientError:
                                pass
                            await asyncio.sleep(0.05)
                    ready = time.perf_counter() - t0
                    workers = children(process.pid)
                    print(f"time to first ready: {ready:.2f} s")
                    print(f"controller RSS: {rss_mib(process.pid):.0f} MiB")
                    for pid in workers:
                        print(f"worker RSS: {rss_mib(pid):.0f} MiB")
                    latencies = []
                    for n in range(changes):
                        target_ip, target_pod = (
                            ("127.0.0.3", "pod-b") if n % 2 == 0 else ("127.0.0.2", "pod-a")
                        )
                        current = sim.get("EndpointSlice", "default", "probe-1")
                        assert current is not None
                        changed = probe_slice(target_ip, echo_port)
                        changed["metadata"]["resourceVersion"] = current["metadata"][
                            "resourceVersion"
                        ]
                        t1 = time.perf_counter()
                        sim.update(changed)
                        async with asyncio.timeout(10):
                            while not await arrived(session, http_port, target_pod, workers):
                                await asyncio.sleep(0.002)
                        latencies.append((time.perf_counter() - t1) * 1000)
                    print(
                        f"EndpointSlice change to traffic, {changes} changes: "
                        f"median {statistics.median(latencies):.1f} ms, "
                        f"max {max(latencies):.1f} ms"
                    )
            finally:
                process.terminate()
                await process.wait()
    for pod in pods:
        await pod.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.changes, args.workers))
