"""Cluster mode: a certificate that expires while nothing changes in the cluster.

The controller runs as a subprocess against the API simulator (`cluster.Controller`, as in
`test_cluster_e2e`). No object changes after the TLS Secret is created: once its certificate's
notAfter passes, the snapshot drops it, the leader records a `SecretInvalid` Warning Event on
the Ingress and `/metrics` counts the problem. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from controller.reconciler import REFRESH_MARGIN
from tests.integration.cluster import Controller
from tests.integration.manifests import endpoint_slice, ingress, ingress_class, service
from tests.integration.serving import eventually
from tests.kube_factory import make_cert, tls_secret
from tests.kubesim import KubeSim

pytestmark = pytest.mark.timeout(90)

HOST = "secure.test"
PUBLISHED = "203.0.113.10"
LIFETIME = 6.0  # seconds the certificate is valid once created
SLACK = 5.0  # seconds beyond a due moment, for a loaded 2-core machine


async def test_expired_certificate_becomes_an_event_and_a_metric(
    sim: KubeSim, tmp_path: Path
) -> None:
    sim.create(ingress_class())
    sim.create(service("web", 8080))
    sim.create(endpoint_slice("web", [("127.0.0.2", True, False)], 8080))
    sim.create(ingress("secure", HOST, {"/": "web"}, tls_secret="secure-tls"))
    controller = Controller("solo", sim, tmp_path, publish_status_address=[PUBLISHED])
    await controller.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def admin(path: str) -> str:
                async with session.get(f"http://127.0.0.1:{controller.admin}{path}") as resp:
                    return await resp.text()

            async def certificates() -> list[str]:
                summary = json.loads(await admin("/debug/snapshot"))
                return [c["name"] for c in summary.get("certificates", [])]

            await eventually(lambda: controller.ready(session), 30)
            # Created once the controller runs, so that it is seen well before it expires.
            cert, key = make_cert(HOST, lifetime=dt.timedelta(seconds=LIFETIME))
            not_after = x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
            sim.create(tls_secret("secure-tls", cert_pem=cert, key_pem=key))

            async def served() -> bool:
                return await certificates() == ["default/secure-tls"]

            await eventually(served, not_after - time.time())

            def expired_events() -> list[dict[str, Any]]:
                return [
                    e
                    for e in sim.list("events", "default")
                    if e.get("reason") == "SecretInvalid"
                    and e["involvedObject"].get("name") == "secure"
                    and "certificate expired at" in e.get("message", "")
                ]

            # Nothing changes in the cluster from here on.
            (event,) = await eventually(
                lambda: asyncio.sleep(0, result=expired_events()),
                not_after - time.time() + REFRESH_MARGIN + SLACK,
            )
            assert time.time() > not_after
            assert event["type"] == "Warning"
            assert event["involvedObject"]["kind"] == "Ingress"
            assert await certificates() == []
            problems = {
                sample.labels["reason"]: sample.value
                for family in text_string_to_metric_families(await admin("/metrics"))
                if family.name == "portico_problems"
                for sample in family.samples
            }
            assert problems == {"SecretInvalid": 1.0}
    finally:
        await controller.stop()
