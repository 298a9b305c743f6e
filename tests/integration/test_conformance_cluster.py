"""`python -m conformance --kubeconfig ...` (cluster mode) against the API simulator.

The simulator runs in the test's event loop with a `portico controller` subprocess watching all
namespaces (a cluster-wide install) and publishing 127.0.0.1 as its Ingress status address; a
stand-in kubelet runs every echo Pod the runner creates: it parses the Pod's arguments with
`portico echo`'s own parser, serves it on 127.0.0.x (HTTPS from the Secret the Pod mounts) and
marks it Ready with that IP. The runner itself runs as a user runs it -- `main([...])` in a
thread of its own, through kubernetes_asyncio -- and finds Portico's address in the Ingress
status. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conformance.__main__ import EXIT_CANNOT_RUN, SCENARIOS, main
from conformance.client import ClientError, send
from conformance.cluster import TLS_MOUNT
from conformance.local import INGRESS_CLASS, controller_args, free_port, start_controller
from conformance.scenario import load_scenarios
from controller.cli import build_parser
from controller.echo import server_context, start_echo
from tests.kubesim import KubeSim

pytestmark = pytest.mark.timeout(150)
NAMESPACE = "conformance-cluster"
FIRST_POD = ipaddress.IPv4Address("127.0.0.40")


class Kubelet:
    """Runs the echo Pods of one namespace: each new Pod gets the next loopback address, an
    echo backend started from its container's arguments, and a Ready status with that IP."""

    def __init__(self, sim: KubeSim, namespace: str, workdir: Path) -> None:
        self.sim = sim
        self.namespace = namespace
        self.workdir = workdir
        self.started: dict[str, list[str]] = {}  # Pod name -> the container's args
        self._runners: list[web.AppRunner] = []
        self._next = FIRST_POD
        self._task: asyncio.Task[None] | None = None

    def _mount(self, pod: dict[str, Any], name: str) -> Path:
        """The files of the TLS Secret volume the Pod mounts at TLS_MOUNT."""
        (volume,) = pod["spec"]["volumes"]
        secret = self.sim.get("secrets", self.namespace, volume["secret"]["secretName"])
        assert secret is not None, f"Pod {name} mounts a Secret that does not exist"
        directory = self.workdir / name
        directory.mkdir()
        for key, value in secret["data"].items():
            (directory / key).write_bytes(base64.b64decode(value))
        return directory

    async def _run(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["portico"]
        args = build_parser().parse_args(container["args"])
        assert args.command == "echo"
        port = int(args.listen.rpartition(":")[2])
        context = None
        if args.tls_cert is not None:
            mounted = self._mount(pod, name)
            cert = str(args.tls_cert).replace(TLS_MOUNT, str(mounted))
            key = str(args.tls_key).replace(TLS_MOUNT, str(mounted))
            context = server_context(cert, key)
        ip = str(self._next)
        self._next += 1
        self._runners.append(
            await start_echo(
                ip, port, args.service, args.pod, delay_ms=args.delay_ms, ssl_context=context
            )
        )
        self.started[name] = container["args"]
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        self.sim.update_status(pod)

    async def _loop(self) -> None:
        while True:
            for pod in self.sim.list("pods", self.namespace):
                if pod["metadata"]["name"] not in self.started:
                    await self._run(pod)
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for runner in self._runners:
            await runner.cleanup()


class Portico:
    """A cluster-wide `portico controller` against the simulator, on free loopback ports."""

    def __init__(self, sim: KubeSim, workdir: Path) -> None:
        self.http_port = free_port()
        self.https_port = free_port()
        self.admin_port = free_port()
        self.log = workdir / "controller.log"
        self.args = controller_args(
            sim.write_kubeconfig(workdir / "controller.kubeconfig"),
            http_port=self.http_port,
            https_port=self.https_port,
            admin_port=self.admin_port,
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await start_controller(self.args, self.log)
        async with asyncio.timeout(30):
            while True:
                assert self.process.returncode is None, self.log.read_text()
                with contextlib.suppress(ClientError):
                    answer = await send("127.0.0.1", self.admin_port, path="/readyz", limit=2)
                    if answer.status == 200:
                        return
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """`python -m conformance ARGV` as a user runs it, in a thread with its own event loop
    (the simulator keeps serving in ours)."""
    out = io.StringIO()
    code = await asyncio.to_thread(main, argv, out)
    return code, out.getvalue().splitlines()


async def test_cluster_mode_runs_every_scenario(sim: KubeSim, tmp_path: Path) -> None:
    sim.create(dict(INGRESS_CLASS))
    portico = Portico(sim, tmp_path)
    kubelet = Kubelet(sim, NAMESPACE, tmp_path)
    kubelet.start()
    try:
        await portico.start()
        code, lines = await run_cli(
            [
                f"--kubeconfig={sim.write_kubeconfig(tmp_path / 'user.kubeconfig')}",
                f"--namespace={NAMESPACE}",
                "--image=portico/portico:test",
                f"--echo-port={free_port(str(FIRST_POD))}",
                f"--http-port={portico.http_port}",
                f"--https-port={portico.https_port}",
                "--one-worker",
            ]
        )
    finally:
        await kubelet.stop()
        await portico.stop()
    scenarios = load_scenarios(SCENARIOS)
    # A cluster-wide install offers no unwatched namespace: those scenarios are skipped, and
    # say why; every other one runs and passes.
    skipped = [s.full_name for s in scenarios if "unwatched-namespace" in s.requires]
    assert skipped, "the shipped scenarios include a namespaced-install one"
    expected = [
        f"SKIP {s.full_name}: needs a namespace Portico does not watch (a namespaced install)"
        if s.full_name in skipped
        else f"PASS {s.full_name}"
        for s in scenarios
    ]
    assert lines[:-1] == expected, portico.log.read_text()[-3000:]
    passed = len(scenarios) - len(skipped)
    assert lines[-1] == f"{passed} passed, 0 failed, {len(skipped)} skipped"
    assert code == 0
    # The HTTPS and slow pods were started with the options the scenarios asked for.
    started = " ".join(" ".join(args) for args in kubelet.started.values())
    assert f"--tls-cert={TLS_MOUNT}/tls.crt" in started
    assert "--delay-ms=150" in started
    # Everything the runner created is gone but the namespace (and its pods, deleted with
    # grace period 0 -- the simulator deletes at once).
    for kind in ("ingresses", "services", "endpointslices", "secrets", "pods"):
        assert sim.list(kind, NAMESPACE) == [], kind
    assert [c["metadata"]["name"] for c in sim.list("ingressclasses")] == ["portico"]


async def test_cluster_mode_says_portico_is_not_installed(sim: KubeSim, tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, lines = await run_cli(
            [f"--kubeconfig={sim.write_kubeconfig(tmp_path / 'kubeconfig')}", "-k", "hosts/"]
        )
    assert code == EXIT_CANNOT_RUN
    assert lines == []
    assert "no IngressClass 'portico' in the cluster: install Portico first" in err.getvalue()
    assert "Traceback" not in err.getvalue()
