"""`portico serve` end to end: a real controller process, real workers, real echo pods.

The controller runs as a subprocess on a temporary manifest directory; echo backends listen on
127.0.0.2/127.0.0.3; requests go through the worker's public port. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.manifests import app_yaml
from tests.integration.serving import children, eventually, free_port, start_serve, stop_serve

pytestmark = pytest.mark.timeout(90)


class Portico:
    def __init__(self, process: asyncio.subprocess.Process, http: int, admin: int) -> None:
        self.process, self.http, self.admin = process, http, admin

    async def get(self, session: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.http}{path}"
        async with session.get(url, headers={"Host": "svc.test"}) as resp:
            body = await resp.read()
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, {}

    async def admin_status(self, session: aiohttp.ClientSession, path: str) -> int:
        try:
            async with session.get(f"http://127.0.0.1:{self.admin}{path}") as resp:
                return resp.status
        except aiohttp.ClientError:
            return 0


@pytest.fixture
async def portico(tmp_path: Path, pods_port: int) -> AsyncIterator[Portico]:
    (tmp_path / "app.yaml").write_text(
        app_yaml({"web": ["127.0.0.2"], "api": ["127.0.0.3"]}, pods_port, {"/": "web"})
    )
    http, admin = free_port(), free_port()
    process = await start_serve(tmp_path, http=http, admin=admin, shutdown_delay=1)
    instance = Portico(process, http, admin)
    yield instance
    await stop_serve(process, grace=0.1)


async def test_serves_swaps_and_drains(portico: Portico, tmp_path: Path, pods_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 200), 20)
        assert await portico.admin_status(session, "/healthz") == 200
        status, body = await portico.get(session, "/hello")
        assert (status, body["service"], body["path"]) == (200, "web", "/hello")

        # A route edit takes effect without a restart.
        (tmp_path / "app.yaml").write_text(
            app_yaml(
                {"web": ["127.0.0.2"], "api": ["127.0.0.3"]},
                pods_port,
                {"/": "web", "/api": "api"},
            )
        )

        async def api_routed() -> bool:
            return (await portico.get(session, "/api/x"))[1].get("service") == "api"

        await eventually(api_routed, 5)

        # An endpoint-only change: web's pod moves to 127.0.0.3 (where the "api" echo answers).
        (tmp_path / "app.yaml").write_text(
            app_yaml(
                {"web": ["127.0.0.3"], "api": ["127.0.0.3"]},
                pods_port,
                {"/": "web", "/api": "api"},
            )
        )

        async def moved() -> bool:
            return (await portico.get(session, "/"))[1].get("pod") == "api-1"

        await eventually(moved, 5)

        async with session.get(f"http://127.0.0.1:{portico.admin}/debug/snapshot") as resp:
            summary = await resp.json()
        assert summary["version"] >= 3
        web = summary["backends"]["default/web/http"]
        assert web["endpoints"] == 1
        assert [a["address"] for a in web["addresses"]] == [f"127.0.0.3:{pods_port}"]
        assert web["addresses"][0]["ready"] is True

        # Workers report their counters every second; /metrics sums them (Prometheus text).
        async def counted() -> bool:
            async with session.get(f"http://127.0.0.1:{portico.admin}/metrics") as resp:
                text = await resp.text()
            samples = {
                sample.name: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            return samples.get("portico_requests_total", 0) >= 3 and (
                samples.get("portico_upstream_connects_total", 0) >= 1
            )

        await eventually(counted, 5)

        # SIGTERM: not ready at once, still serving during the shutdown delay, then exit 0.
        portico.process.send_signal(signal.SIGTERM)
        await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 503), 2)
        status, _ = await portico.get(session, "/")
        assert status == 200
        async with asyncio.timeout(20):
            assert await portico.process.wait() == 0


async def test_sigterm_to_the_whole_group_keeps_serving_through_the_delay(
    tmp_path: Path, pods_port: int
) -> None:
    """What a terminal, `timeout` or a group-signalling init does: every process gets the
    SIGTERM. The workers leave the shutdown to the supervisor: they serve through its delay,
    and none exits early or is started again."""
    (tmp_path / "app.yaml").write_text(app_yaml({"web": ["127.0.0.2"]}, pods_port, {"/": "web"}))
    http, admin = free_port(), free_port()
    log_path = tmp_path / "portico.log"
    with log_path.open("w") as log:
        process = await start_serve(
            tmp_path,
            http=http,
            admin=admin,
            shutdown_delay=1.5,
            stderr=log,
            start_new_session=True,
        )
    portico = Portico(process, http, admin)
    try:
        async with aiohttp.ClientSession() as session:
            await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 200), 20)
            os.killpg(process.pid, signal.SIGTERM)
            await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 503), 2)
            await asyncio.sleep(0.5)  # well inside the delay
            status, body = await portico.get(session, "/")
            assert (status, body["service"]) == (200, "web")
            async with asyncio.timeout(20):
                assert await process.wait() == 0
    finally:
        await stop_serve(process, grace=0.1)
    events = [json.loads(line).get("event") for line in log_path.read_text().splitlines()]
    assert events.count("worker.started") == 1
    assert "worker.exited" not in events
    assert "worker.sigterm_left_to_supervisor" in events


async def test_workers_stop_when_the_supervisor_dies(portico: Portico) -> None:
    """SIGKILL to the supervisor alone: PR_SET_PDEATHSIG's SIGTERM stops the orphaned workers
    (their parent is gone, so the signal is theirs to act on) and the port is released."""
    async with aiohttp.ClientSession() as session:
        await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 200), 20)
        worker_pids = children(portico.process.pid)
        portico.process.kill()
        await portico.process.wait()

        async def gone() -> bool:
            return not any(_alive(pid) for pid in worker_pids)

        await eventually(gone, 10)


async def test_killed_worker_is_replaced(portico: Portico) -> None:
    async with aiohttp.ClientSession() as session:
        await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 200), 20)
        async with session.get(f"http://127.0.0.1:{portico.admin}/debug/snapshot") as resp:
            summary = await resp.json()
        assert summary["workers"][0]["listening"]
        worker_pids = children(portico.process.pid)
        assert len(worker_pids) == 1
        os.kill(worker_pids[0], signal.SIGKILL)
        await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 503), 5)
        await eventually(lambda: _is(portico.admin_status(session, "/readyz"), 200), 10)
        new_pids = children(portico.process.pid)
        assert new_pids and new_pids != worker_pids
        status, body = await portico.get(session, "/")
        assert (status, body["service"]) == (200, "web")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _is(awaitable: Any, expected: int) -> bool:
    return bool(await awaitable == expected)
