"""The ingress-nginx controller ConfigMap in cluster mode (against the API simulator) and in
manifest mode.

`portico controller --nginx-configmap ingress-nginx/ingress-nginx-controller` reads the
ConfigMap before its workers start (their request body limit comes from it), then watches it
by name: a change of a compile setting (`ssl-redirect`) is served without a restart, a change of
a worker setting (`proxy-body-size`) is logged as waiting for one, and keys without effect are
problems (metrics, Events on the ConfigMap) that come and go with the ConfigMap's versions.
`portico serve --nginx-configmap` reads it from the manifest directory when it starts.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import manifests
from tests.integration.cluster import ControllerProcess
from tests.integration.serving import (
    echo_pods,
    eventually,
    free_port,
    start_serve,
    stop_serve,
)
from tests.kubesim import KubeSim

pytestmark = pytest.mark.timeout(90)

NS, NAME = "ingress-nginx", "ingress-nginx-controller"
TLS_HOST, PLAIN_HOST = "secure.test", "plain.test"


def configmap(data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": NS},
        "data": data,
    }


def tls_ingress() -> dict[str, Any]:
    # TLS without a secretName: served with the default certificate, redirected like any.
    doc = manifests.ingress("secure", TLS_HOST, {"/": "web"})
    doc["spec"]["tls"] = [{"hosts": [TLS_HOST]}]
    return doc


async def problems(session: aiohttp.ClientSession, admin: int) -> dict[str, float]:
    """portico_problems by reason, from /metrics."""
    async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
        text = await resp.text()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "portico_problems" and sample.value
    }


async def post(session: aiohttp.ClientSession, port: int, size: int) -> int:
    url = f"http://127.0.0.1:{port}/upload"
    async with session.post(url, data=b"x" * size, headers={"Host": PLAIN_HOST}) as resp:
        await resp.read()
        return resp.status


async def get(session: aiohttp.ClientSession, port: int, host: str) -> tuple[int, str]:
    """(status, pod) of GET / for `host`, redirects not followed."""
    url = f"http://127.0.0.1:{port}/"
    async with session.get(url, headers={"Host": host}, allow_redirects=False) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Echo-Pod", "")


def logged(controller: ControllerProcess, message: str) -> list[dict[str, Any]]:
    return [line for line in controller.logs() if line.get("event") == message]


def configmap_events(sim: KubeSim, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in sim.list("events", NS)
        if e.get("reason") == reason and e["involvedObject"].get("kind") == "ConfigMap"
    ]


async def test_configmap_applies_at_start_and_follows_changes(sim: KubeSim, tmp_path: Path) -> None:
    async with echo_pods(("127.0.0.2", "web", "pod-a")) as port:
        sim.create(manifests.ingress_class())
        for obj in manifests.service_with_pods("web", ["127.0.0.2"], port):
            sim.create(obj)
        sim.create(tls_ingress())
        sim.create(manifests.ingress("plain", PLAIN_HOST, {"/": "web"}))
        sim.create(configmap({"proxy-body-size": "16", "use-gzip": "true"}))

        controller = ControllerProcess("configmap", tmp_path)
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
        argv = [
            "-m",
            "controller",
            "controller",
            f"--kubeconfig={kubeconfig}",
            f"--nginx-configmap={NS}/{NAME}",
            f"--http-port={controller.http}",
            "--https-port=0",
            f"--admin-port={controller.admin}",
            "--bind-address=127.0.0.1",
            "--workers=1",
            "--shutdown-delay=0",
            "--drain-timeout=1",
            "--pod-name=configmap",
            "--election-namespace=default",
            "--lease-duration=2",
            "--renew-deadline=1.5",
            "--retry-period=0.3",
            "--max-backoff=0.5",
        ]
        await controller.spawn(argv, {"PATH": "/usr/bin:/bin"})
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                await check(sim, controller, session)
        except BaseException:
            sys.stderr.write(f"--- controller (last 60 log lines)\n{controller.tail(60)}\n")
            raise
        finally:
            await controller.stop(signal.SIGKILL)


async def check(
    sim: KubeSim, controller: ControllerProcess, session: aiohttp.ClientSession
) -> None:
    await eventually(lambda: controller.ready(session), 40)
    # The workers started with the ConfigMap's body limit (16 bytes; the default is unlimited).
    assert await post(session, controller.http, 17) == 413
    assert await post(session, controller.http, 16) == 200
    # ssl-redirect is not set: the TLS host redirects plain HTTP, as by default.
    assert (await get(session, controller.http, TLS_HOST))[0] == 308
    assert await problems(session, controller.admin) == {"UnsupportedConfigMapKey": 1.0}
    await eventually(
        lambda: asyncio.sleep(0, result=configmap_events(sim, "UnsupportedConfigMapKey")), 20
    )

    # A new version: ssl-redirect off (a compile setting: served at once), another body limit
    # (a worker setting: waits for a restart, as does use-proxy-protocol), use-gzip gone, a
    # misspelt key.
    sim.apply(
        configmap(
            {
                "proxy-body-size": "1m",
                "ssl-redirect": "false",
                "proxy-bodysize": "2",
                "use-proxy-protocol": "true",
            }
        )
    )

    async def not_redirected() -> bool:
        return await get(session, controller.http, TLS_HOST) == (200, "pod-a")

    await eventually(not_redirected, 10)

    async def problems_now() -> bool:
        return await problems(session, controller.admin) == {"UnknownConfigMapKey": 1.0}

    await eventually(problems_now, 10)
    (restart,) = logged(controller, "configmap.restart_required")
    assert sorted(restart["settings"]) == ["max_body_bytes", "proxy_protocol"]
    # Still the limit the workers took, and still no PROXY header expected.
    assert await post(session, controller.http, 17) == 413
    # The leader turns the ConfigMap's problems into Events on it, and resolves the old one.
    await eventually(lambda: asyncio.sleep(0, result=configmap_events(sim, "Resolved")), 20)
    (unknown,) = await eventually(
        lambda: asyncio.sleep(0, result=configmap_events(sim, "UnknownConfigMapKey")), 20
    )
    assert 'did you mean "proxy-body-size"' in unknown["message"]

    # Gone: every setting is back to its default (redirects again), and that is a problem.
    sim.delete("configmaps", NS, NAME)

    async def redirected() -> bool:
        return (await get(session, controller.http, TLS_HOST))[0] == 308

    await eventually(redirected, 10)

    async def missing() -> bool:
        return await problems(session, controller.admin) == {"ConfigMapNotFound": 1.0}

    await eventually(missing, 10)


async def test_serve_reads_the_configmap_from_the_manifests(tmp_path: Path) -> None:
    async with echo_pods(("127.0.0.2", "web", "pod-a")) as port:
        docs = [
            manifests.ingress_class(),
            *manifests.service_with_pods("web", ["127.0.0.2"], port),
            tls_ingress(),
            manifests.ingress("plain", PLAIN_HOST, {"/": "web"}),
            configmap({"proxy-body-size": "16", "ssl-redirect": "false", "use-gzip": "true"}),
        ]
        (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(docs))
        http, admin = free_port(), free_port()
        process = await start_serve(
            tmp_path, http=http, admin=admin, extra=("--nginx-configmap", f"{NS}/{NAME}")
        )
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

                async def ready() -> bool:
                    try:
                        async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(ready, 30)
                assert await post(session, http, 17) == 413
                assert await post(session, http, 16) == 200
                assert await get(session, http, TLS_HOST) == (200, "pod-a")
                assert await problems(session, admin) == {"UnsupportedConfigMapKey": 1.0}
        finally:
            await stop_serve(process, grace=5)
