"""Running `portico serve` as a subprocess for end-to-end tests (ports, start, stop, workers).

Also what every end-to-end test waits with and talks to: `free_port`, `eventually` (a bounded
poll) and `echo_pods` (`portico echo` backends on loopback addresses, one port for all).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from controller.echo import start_echo


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at `host` now (the socket that found it is closed): free to
    listen on, and refused at once when connected to."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def echo_pods(
    *pods: tuple[str, str, str], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """`portico echo` pods, each (address, service, pod name), all on one free port (an
    EndpointSlice has one port for all its endpoints), HTTPS with `ssl_context`; yields the
    port."""
    port = free_port(pods[0][0])
    runners = []
    try:
        for address, service, pod in pods:
            runners.append(await start_echo(address, port, service, pod, ssl_context=ssl_context))
        yield port
    finally:
        for runner in runners:
            await runner.cleanup()


async def start_serve(
    manifests: Path,
    *,
    http: int,
    admin: int,
    https: int = 0,
    workers: int = 1,
    shutdown_delay: float = 0.0,
    drain_timeout: float = 5.0,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    **popen: Any,
) -> asyncio.subprocess.Process:
    """`portico serve` on 127.0.0.1 with these ports (https 0: no HTTPS listener); `env` is
    added to this process's environment."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "serve",
        "--manifests",
        str(manifests),
        "--http-port",
        str(http),
        "--https-port",
        str(https),
        "--admin-port",
        str(admin),
        "--workers",
        str(workers),
        "--shutdown-delay",
        str(shutdown_delay),
        "--drain-timeout",
        str(drain_timeout),
        "--bind-address",
        "127.0.0.1",
        *extra,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        **popen,
    )


async def eventually(
    check: Callable[[], Awaitable[Any]], limit: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll until `check()` returns something truthy and return it; at most `limit` seconds."""
    async with asyncio.timeout(limit):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(interval)


async def stop_serve(process: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `grace` seconds."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


def children(pid: int) -> list[int]:
    """PIDs of a process's children (the workers of a `portico serve`)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
