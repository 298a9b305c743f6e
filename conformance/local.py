"""Local mode: the whole cluster on loopback, for CI and for developers without a cluster.

KubeSim (the API-server simulator from tests/kubesim, so this mode needs a source checkout)
runs in the runner's event loop; echo backends listen on 127.0.0.2, 127.0.0.3, ... (one
address per pod placeholder, all on one port, since an EndpointSlice has one port for all its
endpoints); `portico controller` runs as a subprocess pointed at KubeSim with a kubeconfig,
publishing 127.0.0.1 as every owned Ingress's status address. It is a namespaced install
(`--watch-namespaces conformance`), so the scenarios needing a namespace Portico does not watch
run too. Objects are written straight into KubeSim's registry, which produces the same watch
events as API writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from conformance.client import ClientError, send
from conformance.scenario import CLUSTER_SCOPED, EchoPod
from controller.echo import server_context, start_echo

logger = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parents[1]
READY_WAIT: Final = 30.0  # seconds for the controller to sync, compile and serve
STOP_WAIT: Final = 10.0
FIRST_POD: Final = ipaddress.IPv4Address("127.0.0.2")
LAST_POD: Final = ipaddress.IPv4Address("127.0.0.254")
CONTROLLER: Final = "portico.dev/ingress-controller"
INGRESS_CLASS: Final = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "IngressClass",
    "metadata": {"name": "portico"},
    "spec": {"controller": CONTROLLER},
}
NAMESPACE: Final = "conformance"
UNWATCHED_NAMESPACE: Final = "conformance-unwatched"


class SetupError(RuntimeError):
    """The local environment could not be started; the message says why (with log lines)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def controller_args(
    kubeconfig: Path,
    *,
    http_port: int,
    https_port: int,
    admin_port: int,
    log_level: str = "warning",
    watch_namespaces: tuple[str, ...] = (),
) -> list[str]:
    """`portico controller` arguments for a controller on loopback that publishes 127.0.0.1
    as its Ingresses' status address (watching `watch_namespaces`, or all when empty)."""
    args = [
        "controller",
        f"--kubeconfig={kubeconfig}",
        "--publish-status-address=127.0.0.1",
        "--bind-address=127.0.0.1",
        f"--http-port={http_port}",
        f"--https-port={https_port}",
        f"--admin-port={admin_port}",
        "--workers=1",
        "--shutdown-delay=0",
        "--drain-timeout=1",
        "--no-access-log",
        f"--log-level={log_level}",
        "--pod-name=conformance",
        "--election-namespace=default",
    ]
    if watch_namespaces:
        args.append(f"--watch-namespaces={','.join(watch_namespaces)}")
    return args


async def start_controller(args: list[str], log_path: Path) -> asyncio.subprocess.Process:
    """`python -m controller ARGS` from this checkout, in its own process group (its workers
    go with it), logging to `log_path`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller",
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    logger.info("conformance.controller_started", extra={"pid": process.pid})
    return process


class LocalTarget:
    """A `Target` on loopback; use as `async with LocalTarget(workdir) as target:`."""

    namespace = NAMESPACE
    unwatched_namespace: str | None = UNWATCHED_NAMESPACE
    one_worker = True  # --workers=1, one controller
    controller = CONTROLLER

    def __init__(self, workdir: Path, *, log_level: str = "warning") -> None:
        # A checkout's root holds tests/kubesim; make it importable wherever we were started.
        if (ROOT / "tests" / "kubesim").is_dir() and str(ROOT) not in sys.path:
            sys.path.append(str(ROOT))
        try:
            from tests.kubesim import KubeSim
        except ImportError as exc:
            raise SetupError(
                "local mode needs tests/kubesim: run from a source checkout of Portico"
            ) from exc
        self.workdir = workdir
        self.log_level = log_level
        self.sim = KubeSim(bookmark_interval=1.0)
        self.http_port = free_port()
        self.https_port = free_port()
        self.admin_port = free_port()
        self.echo_port = free_port(str(FIRST_POD))
        self.log_path = workdir / "controller.log"
        self.process: asyncio.subprocess.Process | None = None
        self._pods: dict[tuple[str, EchoPod], str] = {}  # (placeholder, pod) -> IP
        self._runners: list[web.AppRunner] = []
        self._next = FIRST_POD

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> LocalTarget:
        try:
            await self.sim.start()
            self.sim.create(dict(INGRESS_CLASS))
            await self._start_controller()
            await self._wait_ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start_controller(self) -> None:
        args = controller_args(
            self.sim.write_kubeconfig(self.workdir / "kubeconfig"),
            http_port=self.http_port,
            https_port=self.https_port,
            admin_port=self.admin_port,
            log_level=self.log_level,
            watch_namespaces=(self.namespace,),
        )
        self.process = await start_controller(args, self.log_path)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.returncode is not None:
                raise SetupError(
                    f"the controller exited with {self.process.returncode}\n{self.log_tail()}"
                )
            with contextlib.suppress(ClientError):
                answer = await send("127.0.0.1", self.admin_port, path="/readyz", limit=2.0)
                if answer.status == 200:
                    return
            await asyncio.sleep(0.1)
        raise SetupError(f"the controller was not ready within {READY_WAIT:g} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no controller log)"
        return "\n".join(text.splitlines()[-lines:])

    def _kill_group(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)  # the controller drains its workers
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await self.process.wait()
            except TimeoutError:
                self._kill_group(signal.SIGKILL)
                await self.process.wait()
        # Workers of a controller that died on its own must not outlive the run.
        self._kill_group(signal.SIGKILL)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.sim.stop()

    # ---- Target -----------------------------------------------------------------------------

    def _tls_context(self, ip: str, pod: EchoPod) -> ssl.SSLContext | None:
        if pod.tls is None:
            return None
        directory = self.workdir / "pods"
        directory.mkdir(exist_ok=True)
        cert, key = directory / f"{ip}.crt", directory / f"{ip}.key"
        cert.write_bytes(pod.tls.cert_pem)
        key.write_bytes(pod.tls.key_pem)
        return server_context(str(cert), str(key))

    async def ensure_pods(self, pods: Mapping[str, EchoPod]) -> dict[str, str]:
        addresses: dict[str, str] = {}
        for name, pod in pods.items():
            key = (name, pod)
            if key not in self._pods:
                if self._next > LAST_POD:
                    raise SetupError("more echo pods than loopback addresses")
                ip = str(self._next)
                self._next += 1
                runner = await start_echo(
                    ip,
                    self.echo_port,
                    pod.service,
                    name,
                    delay_ms=pod.delay_ms,
                    ssl_context=self._tls_context(ip, pod),
                )
                self._runners.append(runner)
                self._pods[key] = ip
            addresses[name] = self._pods[key]
        return addresses

    async def apply(self, obj: dict[str, Any]) -> None:
        self.sim.apply(obj)

    async def delete(self, kind: str, name: str, namespace: str | None) -> None:
        from tests.kubesim import ApiError

        try:
            self.sim.delete(kind, None if kind in CLUSTER_SCOPED else namespace, name)
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def ingress_addresses(self, name: str, namespace: str | None = None) -> list[str]:
        # Polled while waiting for a status: a dead controller fails the scenario at once
        # instead of after the whole wait.
        if self.process is not None and self.process.returncode is not None:
            raise SetupError(f"the controller exited with {self.process.returncode}")
        obj = self.sim.get("ingresses", namespace or self.namespace, name) or {}
        entries = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return [str(e.get("ip") or e.get("hostname")) for e in entries if isinstance(e, dict)]

    def endpoint(self, scheme: str) -> tuple[str, int]:
        return "127.0.0.1", self.https_port if scheme == "https" else self.http_port
