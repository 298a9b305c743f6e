"""Running `portico controller` as a subprocess against KubeSim, for cluster end-to-end tests.

A `ControllerProcess` owns its ports (HTTP, HTTPS, admin on 127.0.0.1), its log file (JSON
lines) and its process group, so that workers die with it whatever signal ends it; the command
line and environment are the caller's. A `Controller` is one with test settings given as
flags. Waits are bounded by `serving.eventually`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.serving import free_port
from tests.kubesim import KubeSim

ROOT = Path(__file__).resolve().parents[2]
# Lease timings of a test: leader changes happen within seconds.
LEASE = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.3}


class ControllerProcess:
    """One controller process; `spawn` takes its command line and environment."""

    def __init__(self, identity: str, tmp: Path) -> None:
        self.identity = identity
        self.http = free_port()
        self.https = free_port()
        self.admin = free_port()
        self.log = tmp / f"{identity}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def user_agent(self) -> str:
        return f"portico ({self.identity})"

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Run `python ARGV...` from the repository root, logging to `self.log`."""
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                cwd=ROOT,
                env={**env, "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: workers die with it
            )

    def kill_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    async def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        if signum == signal.SIGTERM:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)  # the controller drains its own workers
        else:
            self.kill_group(signum)
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            self.kill_group(signal.SIGKILL)
            await self.process.wait()
        # Whatever is left in the group (workers of a killed controller) goes too.
        self.kill_group(signal.SIGKILL)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def tail(self, lines: int = 40) -> str:
        """The last log lines, for a failing test's report."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def get(
        self, session: aiohttp.ClientSession, host: str, path: str = "/"
    ) -> tuple[int, str]:
        """(status, pod) of one request for `host`; (0, "") when the proxy is not up."""
        try:
            async with session.get(
                f"http://127.0.0.1:{self.http}{path}", headers={"Host": host}
            ) as resp:
                await resp.read()
                return resp.status, resp.headers.get("X-Echo-Pod", "")
        except aiohttp.ClientError:
            return 0, ""

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{self.admin}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False


def flags(settings: Mapping[str, Any]) -> list[str]:
    """Command-line flags for settings (field name -> value): lists comma-separated, switches
    on/off."""
    argv = []
    for name, value in settings.items():
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, list | tuple):
            text = ",".join(value)
        else:
            text = str(value)
        argv.append(f"--{name.replace('_', '-')}={text}")
    return argv


class Controller(ControllerProcess):
    """`portico controller` against a KubeSim (test timings, one worker, no HTTPS); `cluster`
    adds or overrides settings (field names)."""

    def __init__(self, identity: str, sim: KubeSim, tmp: Path, **cluster: Any) -> None:
        super().__init__(identity, tmp)
        kubeconfig = sim.write_kubeconfig(tmp / f"{identity}.kubeconfig")
        self.settings = {
            "http_port": self.http,
            "https_port": 0,
            "admin_port": self.admin,
            "bind_address": "127.0.0.1",
            "workers": 1,
            "shutdown_delay": 0,
            "drain_timeout": 1,
            "access_log": False,
            "kubeconfig": str(kubeconfig),
            "pod_name": identity,
            "election_namespace": "default",
            "watch_timeout": 30,
            "max_backoff": 0.5,
            **LEASE,
            **cluster,
        }

    async def start(self) -> None:
        await self.spawn(["-m", "controller", "controller", *flags(self.settings)], os.environ)
