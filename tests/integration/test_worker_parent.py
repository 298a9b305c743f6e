"""A worker process and the supervisor it was started for (`--parent-pid`), without a controller.

The kernel's death signal (PR_SET_PDEATHSIG) only covers a parent that dies after the worker
armed it. A worker that finds its parent already gone must exit on its own: otherwise it would
go on serving with SIGTERM left to a supervisor that no longer exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from proxy.worker import command as worker_command

pytestmark = pytest.mark.timeout(60)


async def start_worker(parent_pid: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """A worker on one end of a socketpair; the caller holds the other end (kept open)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = await asyncio.create_subprocess_exec(
            *worker_command(theirs.fileno(), parent_pid),
            pass_fds=(theirs.fileno(),),
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        theirs.close()
    return process, ours


def loaded(pid: int, library: str) -> bool:
    """Whether a shared object whose path names `library` is mapped into process `pid`."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(library in line for line in maps)
    except FileNotFoundError:
        return False


def gone_pid() -> int:
    """The pid of a process that has already exited."""
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return probe.pid


async def test_worker_whose_parent_is_already_gone_exits() -> None:
    process, channel = await start_worker(gone_pid())
    try:
        async with asyncio.timeout(30):
            code = await process.wait()
        assert process.stderr is not None
        events = [json.loads(line) for line in (await process.stderr.read()).splitlines()]
    finally:
        channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0
    orphaned = [e for e in events if e.get("event") == "worker.orphaned"]
    assert orphaned and orphaned[0]["parent"] != os.getpid()


async def test_worker_of_a_living_parent_waits_for_its_settings() -> None:
    process, channel = await start_worker(os.getpid())
    try:
        # The positive first: the worker got past its parent check into its event loop (it
        # imports uvloop only then), so the wait below watches a worker that is really waiting.
        async with asyncio.timeout(30):
            while not loaded(process.pid, "uvloop"):
                assert process.returncode is None, "the worker exited before its event loop"
                await asyncio.sleep(0.05)
        # Still waiting for SETTINGS on the open channel.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await process.wait()
        channel.close()  # never configured: the closed channel ends it
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
