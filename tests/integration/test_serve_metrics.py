"""/metrics end to end: `portico serve` with 2 workers, traffic of every kind, a strict parse.

Echo pods listen on 127.0.0.2 (web) and 127.0.0.3 (api); 127.0.0.4 is an endpoint nobody
listens on. Requests produce 2xx (GET and an upload), 404 (unknown host), 503 (a Service without
endpoints), 502 (only a dead endpoint) and retries with ejections (web has a dead endpoint next
to a live one). Workers report every second, so counts are polled until they are exact; then
every family the issue lists must be present and have moved, under Portico's names and, with
--metrics-ingress-nginx-names, under ingress-nginx's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.manifests import ingress, ingress_class, service_with_pods, tls_secret
from tests.integration.serving import eventually, free_port, start_serve, stop_serve
from tests.kube_factory import make_cert

pytestmark = pytest.mark.timeout(90)

HOST = "svc.test"
DEAD = "127.0.0.4"


def manifests(port: int, cert: bytes, key: bytes) -> str:
    paths = {"/web": "web", "/api": "api", "/dead": "dead", "/empty": "empty", "/nope": "nope"}
    docs = [
        ingress_class(),
        *service_with_pods("web", ["127.0.0.2", DEAD], port),
        *service_with_pods("api", ["127.0.0.3"], port),
        *service_with_pods("dead", [DEAD], port),
        *service_with_pods("empty", [], port),
        tls_secret("svc-tls", cert, key),
        ingress(
            "svc",
            HOST,
            paths,
            tls_secret="svc-tls",
            # Plain HTTP stays plain: the certificate is only here for its metric.
            annotations={"portico.dev/ssl-redirect": "false"},
        ),
    ]
    return yaml.safe_dump_all(docs)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """Family names and samples; the parser raises on anything that is not valid text format."""
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def test_every_metric_moves(tmp_path: Path, pods_port: int) -> None:
    cert, key = make_cert(HOST, key="ec")
    not_after = x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
    (tmp_path / "app.yaml").write_text(manifests(pods_port, cert, key))
    http, admin = free_port(), free_port()
    process = await start_serve(
        tmp_path,
        http=http,
        admin=admin,
        workers=2,
        extra=("--metrics-ingress-nginx-names",),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    access: list[dict[str, Any]] = []

    async def read_access_log() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            with contextlib.suppress(ValueError):
                access.append(json.loads(line))

    reader = asyncio.create_task(read_access_log())
    base = f"http://127.0.0.1:{http}"
    metrics_url = f"http://127.0.0.1:{admin}/metrics"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, 20, interval=0.1)

            async def status(path: str, host: str = HOST, **kw: Any) -> int:
                method = "POST" if "data" in kw else "GET"
                headers = {"Host": host, **kw.pop("headers", {})}
                async with session.request(method, base + path, headers=headers, **kw) as resp:
                    await resp.read()
                    return resp.status

            counts = {"web": 12, "api": 5, "dead": 3, "empty": 4, "404": 6}
            upload = 300_000
            for _ in range(counts["web"]):
                assert await status("/web", headers={"X-Forwarded-For": "198.51.100.7"}) == 200
            for _ in range(counts["api"]):
                assert await status("/api") == 200
            assert await status("/api/upload", data=b"u" * upload) == 200
            for _ in range(counts["dead"]):
                assert await status("/dead") == 502
            for _ in range(counts["empty"]):
                assert await status("/empty") == 503
            for _ in range(counts["404"]):
                assert await status("/", host="unknown.test") == 404

            samples: Samples = {}
            families: set[str] = set()
            total = sum(counts.values()) + 1

            async def all_counted() -> bool:
                nonlocal samples, families
                async with session.get(metrics_url) as resp:
                    families, samples = parse(await resp.text())
                return value(samples, "portico_requests_total") >= total

            await eventually(all_counted, 10, interval=0.1)

            # Exact counts per label set: every request once, in the right series.
            def requests(**labels: str) -> float:
                return value(samples, "portico_requests_total", **labels)

            svc = {"namespace": "default", "ingress": "svc"}
            assert requests() == total
            assert requests(**svc, service="web", status="2xx", method="GET") == counts["web"]
            assert requests(**svc, service="api", status="2xx", method="GET") == counts["api"]
            assert requests(**svc, service="api", status="2xx", method="POST") == 1
            assert requests(**svc, service="dead", status="5xx") == counts["dead"]
            assert requests(**svc, service="empty", status="5xx") == counts["empty"]
            assert requests(ingress="", service="", status="4xx") == counts["404"]

            web = {**svc, "service": "web"}
            duration = "portico_request_duration_seconds"
            upstream = "portico_upstream_response_duration_seconds"
            assert value(samples, duration + "_count", **web) == counts["web"]
            # (Sums of durations are not asserted: with the loop's millisecond clock they may
            # well be 0 on a fast machine.)
            assert value(samples, duration + "_bucket", **web, le="+Inf") == counts["web"]
            assert value(samples, upstream + "_count", **web) == counts["web"]
            assert value(samples, upstream + "_count", **svc, service="dead") == 0
            api = {**svc, "service": "api"}
            assert value(samples, "portico_request_body_bytes_total", **api) == upload
            assert value(samples, "portico_response_body_bytes_total", **web) > 0
            replies = "portico_local_replies_total"
            assert value(samples, replies, reason="NoRoute") == counts["404"]
            assert value(samples, replies, reason="UpstreamConnectFailed") == counts["dead"]
            assert value(samples, replies) == counts["404"] + counts["dead"] + counts["empty"]
            # web's dead endpoint: a failed connect, an ejection and a retry on the live pod.
            assert value(samples, "portico_upstream_retries_total") > 0
            assert value(samples, "portico_upstream_ejections_total") > 0
            assert value(samples, "portico_upstream_connect_errors_total") > 0
            assert value(samples, "portico_connections_open") > 0  # the session's keep-alive
            assert value(samples, "portico_snapshot_version") >= 1
            apply = "portico_config_apply_duration_seconds"
            assert value(samples, apply + "_count") >= 1
            assert value(samples, apply + "_sum") > 0
            assert value(samples, "portico_config_last_apply_successful") == 1
            assert value(samples, "portico_config_last_apply_successful_timestamp_seconds") > 0
            assert value(samples, "portico_problems", reason="ServiceNotFound") >= 1
            ready = "portico_backend_endpoints_ready"
            assert value(samples, ready, backend="default/web/http") == 2
            assert value(samples, ready, backend="default/dead/http") == 1
            assert (
                "portico_backend_endpoints_ready",
                frozenset({("backend", "default/empty/http")}),
            ) in samples
            cert_labels = {"namespace": "default", "secret": "svc-tls"}
            assert value(samples, "portico_certificate_not_after_seconds", **cert_labels) == (
                not_after
            )

            # The same data under ingress-nginx's names and labels.
            nginx = "nginx_ingress_controller_"
            route = {"namespace": "default", "ingress": "svc", "host": HOST}
            assert value(samples, nginx + "requests_total") == total  # parser-side name
            assert (
                value(samples, nginx + "requests_total", **route, service="web", path="/web")
                == counts["web"]
            )
            for family in ("request_duration_seconds", "header_duration_seconds"):
                assert (
                    value(samples, nginx + family + "_count", **route, service="web")
                    == (counts["web"])
                )
            for family in ("request_size", "response_size", "bytes_sent"):
                assert value(samples, nginx + family + "_count") == total
            assert value(samples, nginx + "request_size_sum", service="api") == upload
            assert value(samples, nginx + "response_size_sum", service="web") > 0
            assert value(samples, nginx + "config_last_reload_successful") == 1
            reload_time = nginx + "config_last_reload_successful_timestamp_seconds"
            assert value(samples, reload_time) > 0
            assert value(samples, nginx + "ssl_expire_time_seconds", host=HOST) == not_after
            assert value(samples, nginx + "nginx_process_connections", state="active") > 0
            assert value(samples, nginx + "nginx_process_requests_total") == total
            assert value(samples, nginx + "success_total") >= 1
            async with session.get(metrics_url) as resp:
                text = await resp.text()
            # ingress-nginx's counters carry no _total suffix in the text itself.
            assert "\nnginx_ingress_controller_requests{" in text

        # The access log line of a forwarded request has every field the issue lists.
        await stop_serve(process)
        async with asyncio.timeout(5):
            await reader
        line = next(a for a in access if a.get("event") == "access" and a.get("target") == "/web")
        assert line["forwarded_for"] == "198.51.100.7"
        assert line["status"] == 200 and line["upstream_status"] == 200
        assert line["upstream_ms"] >= 0 and line["ms"] >= line["upstream_ms"]
        assert line["upstream"] == f"127.0.0.2:{pods_port}"
        assert (line["ingress"], line["service"]) == ("default/svc", "default/web")
        assert line["request_id"] and line["client"] == "127.0.0.1"
        refused = next(a for a in access if a.get("host") == "unknown.test")
        assert refused["reason"] == "NoRoute" and refused["ingress"] is None
        assert refused["upstream_status"] is None
    finally:
        reader.cancel()
        await stop_serve(process, grace=1)
