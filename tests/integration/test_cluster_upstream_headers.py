"""Header ConfigMaps in cluster mode (against the API simulator): a change is served without a
restart.

`portico controller` watches ConfigMaps in the namespaces it serves. An Ingress's
`custom-headers` ConfigMap (customheaders.go) and the ConfigMap `--proxy-set-headers` names (the
ingress-nginx ConfigMap's proxy-set-headers key) are read by the compiler: editing either
changes the response fields the client gets and the request fields the pod gets; deleting the
custom-headers one makes the Ingress answer 503 (customheaders.go "should return status code
503 when custom-headers is configured with an invalid secret"), creating it again serves it.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration import manifests
from tests.integration.cluster import ControllerProcess
from tests.integration.serving import echo_pods, eventually
from tests.kubesim import KubeSim

pytestmark = pytest.mark.timeout(90)

HOST = "headers.test"
N = "nginx.ingress.kubernetes.io/"


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data,
    }


async def fetch(session: aiohttp.ClientSession, port: int) -> tuple[int, str | None, Any]:
    """(status, X-Custom the client got, X-Sent the pod got) of GET / for HOST."""
    async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": HOST}) as resp:
        if resp.status != 200:
            await resp.read()
            return resp.status, None, None
        doc = await resp.json()
        return resp.status, resp.headers.get("X-Custom"), doc["headers"].get("X-Sent")


async def test_header_configmaps_follow_changes(sim: KubeSim, tmp_path: Path) -> None:
    async with echo_pods(("127.0.0.2", "web", "pod-a")) as port:
        sim.create(manifests.ingress_class())
        for obj in manifests.service_with_pods("web", ["127.0.0.2"], port):
            sim.create(obj)
        annotations = {N + "custom-headers": "default/response"}
        sim.create(manifests.ingress("web", HOST, {"/": "web"}, annotations=annotations))
        sim.create(configmap("response", {"X-Custom": "one"}))
        sim.create(configmap("request", {"X-Sent": "first"}))
        sim.create(configmap("unrelated", {"X-Custom": "never"}))

        controller = ControllerProcess("headers", tmp_path)
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
        argv = [
            "-m",
            "controller",
            "controller",
            f"--kubeconfig={kubeconfig}",
            "--proxy-set-headers=default/request",
            "--allowed-response-headers=X-Custom",
            f"--http-port={controller.http}",
            "--https-port=0",
            f"--admin-port={controller.admin}",
            "--bind-address=127.0.0.1",
            "--workers=1",
            "--shutdown-delay=0",
            "--drain-timeout=1",
            "--pod-name=headers",
            "--election-namespace=default",
            "--lease-duration=2",
            "--renew-deadline=1.5",
            "--retry-period=0.3",
            "--max-backoff=0.5",
        ]
        await controller.spawn(argv, {"PATH": "/usr/bin:/bin"})
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                await eventually(lambda: controller.ready(session), 40)

                async def serving(expected: tuple[int, str | None, Any]) -> bool:
                    return await fetch(session, controller.http) == expected

                await eventually(lambda: serving((200, "one", "first")), 10)
                sim.apply(configmap("response", {"X-Custom": "two"}))
                await eventually(lambda: serving((200, "two", "first")), 10)
                sim.apply(configmap("request", {"X-Sent": "second"}))
                await eventually(lambda: serving((200, "two", "second")), 10)
                sim.delete("configmaps", "default", "response")
                await eventually(lambda: serving((503, None, None)), 10)
                sim.create(configmap("response", {"X-Custom": "three"}))
                await eventually(lambda: serving((200, "three", "second")), 10)
        except BaseException:
            sys.stderr.write(f"--- controller (last 60 log lines)\n{controller.tail(60)}\n")
            raise
        finally:
            await controller.stop(signal.SIGKILL)
