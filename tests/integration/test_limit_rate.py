"""Response bandwidth through real sockets: `portico serve` against an echo pod's 256 KiB body.

Each host is an Ingress with ingress-nginx's limit-rate / limit-rate-after annotations. The
contract: annotations.md "Rate Limiting" (kilobytes per second to a connection; the initial
kilobytes after which the rate applies; 0 disables), ratelimit/main.go (strconv.Atoi: a value
that does not read is the ConfigMap's default, 0), template.go buildRateLimit (`limit_rate
{{ N }}k;`, `limit_rate_after {{ N }}k;`, each only above 0) and nginx's limit_rate (per request,
an allowance of rate x (seconds since the request + 1) + limit_rate_after: a body of B KiB at
R KiB/s after A KiB takes about (B - A) / R - 1 seconds). test/e2e/annotations/limitrate.go
"Check limit-rate annotation" checks the generated `limit_rate 1k;` / `90k;` with
proxy-buffering on; here the same values are timed on the wire instead.

Bounds are loose (a shared machine): a paced row asserts a lower bound from nginx's formula
(with a quarter of a second of slack) and a generous upper one; an unpaced row must be well
under the fastest paced one. All rows run at once, so the test takes as long as its slowest row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import aiohttp
import manifests
import pytest
import yaml
from serving import echo_pods, eventually, free_port, start_serve, stop_serve

pytestmark = [pytest.mark.timeout(60)]

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
SIZE = 256 * 1024  # the pod's body
KIB = 1024
DOC = 'annotations.md "Rate Limiting"'
E2E = 'limitrate.go "Check limit-rate annotation"'
MAIN = "ratelimit/main.go Parse (strconv.Atoi; invalid: the ConfigMap default, 0)"


class Row(NamedTuple):
    annotations: dict[str, str]
    at_least: float  # seconds the whole body takes at least (nginx's formula, minus slack)
    at_most: float  # seconds it takes at most
    early: int  # body bytes that must arrive within EARLY seconds (0: no check)
    source: str


EARLY = 1.0
FAST = 1.5  # an unpaced 256 KiB body on loopback: milliseconds, this on a loaded machine

ROWS: dict[str, Row] = {
    # 256 / 64 - 1 = 3 s.
    "paced": Row({N + "limit-rate": "64"}, 2.75, 8.0, 0, DOC + ": kilobytes per second"),
    # limitrate.go's second value, with proxy-buffering on as there: 256 / 90 - 1 = 1.84 s.
    "e2e-90k": Row({N + "proxy-buffering": "on", N + "limit-rate": "90"}, 1.6, 6.0, 0, E2E),
    # The first 128 KiB at full speed, then 32 KiB/s: (256 - 128) / 32 - 1 = 3 s; without
    # limit-rate-after the first 128 KiB alone would take 3 s.
    "after": Row(
        {N + "limit-rate": "32", N + "limit-rate-after": "128"},
        2.75,
        8.0,
        128 * KIB,
        DOC + ": limit-rate-after, initial kilobytes",
    ),
    "open": Row({}, 0.0, FAST, SIZE, "no annotation: no limit"),
    "zero": Row({N + "limit-rate": "0"}, 0.0, FAST, SIZE, DOC + ": the zero value disables"),
    "negative": Row({N + "limit-rate": "-5"}, 0.0, FAST, SIZE, "template.go: written if > 0"),
    "invalid": Row({N + "limit-rate": "64k"}, 0.0, FAST, SIZE, MAIN),
    "after-alone": Row(
        {N + "limit-rate-after": "1"}, 0.0, FAST, SIZE, "template.go: limit_rate_after alone"
    ),
    "portico-prefix": Row(
        {N + "limit-rate": "1", P + "limit-rate": "0"},
        0.0,
        FAST,
        SIZE,
        "portico.dev/ overrides nginx.ingress.kubernetes.io/",
    ),
}


class Download(NamedTuple):
    status: int
    body: bytes
    elapsed: float  # seconds from the request to the last body byte
    early: int  # body bytes received within EARLY seconds


async def download(port: int, host: str) -> Download:
    """GET ?bytes=SIZE on a fresh connection, timing the body as it arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        writer.write(
            f"GET /?bytes={SIZE} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        body = bytearray()
        early = 0
        while True:
            piece = await asyncio.wait_for(reader.read(65536), 20)
            if not piece:
                break
            body += piece
            if time.monotonic() - started <= EARLY:
                early = len(body)
        return Download(int(head.split()[1]), bytes(body), time.monotonic() - started, early)
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, hosts: dict[str, dict[str, str]], configmap: dict[str, str] | None = None
) -> AsyncIterator[int]:
    """`portico serve` with one Ingress per host (name -> annotations) and, with `configmap`,
    the ingress-nginx ConfigMap of that data; yields the HTTP port."""
    async with echo_pods(("127.0.0.2", "web", "pod-a")) as pod_port:
        docs = [
            manifests.ingress_class(),
            *manifests.service_with_pods("web", ["127.0.0.2"], pod_port),
            *(
                manifests.ingress(name, f"{name}.test", {"/": "web"}, annotations=annotations)
                for name, annotations in hosts.items()
            ),
        ]
        extra: tuple[str, ...] = ()
        if configmap is not None:
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "ingress-nginx-controller", "namespace": "ingress-nginx"},
                    "data": configmap,
                }
            )
            extra = ("--nginx-configmap", "ingress-nginx/ingress-nginx-controller")
        (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(docs))
        http, admin = free_port(), free_port()
        process = await start_serve(tmp_path, http=http, admin=admin, extra=extra)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

                async def ready() -> bool:
                    try:
                        async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(ready, 40)
            yield http
        finally:
            await stop_serve(process, grace=5)


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[int]:
    async with serving(tmp_path, {name: row.annotations for name, row in ROWS.items()}) as http:
        yield http


async def test_response_bandwidth(proxy: int) -> None:
    names = list(ROWS)
    results = await asyncio.gather(*(download(proxy, f"{name}.test") for name in names))
    failures = []
    for name, got in zip(names, results, strict=True):
        row = ROWS[name]
        if got.status != 200 or got.body != b"x" * SIZE:
            failures.append(f"{name}: status {got.status}, {len(got.body)} bytes ({row.source})")
        elif not row.at_least <= got.elapsed <= row.at_most:
            failures.append(
                f"{name}: {got.elapsed:.2f} s, not in [{row.at_least}, {row.at_most}] "
                f"({row.source})"
            )
        elif got.early < row.early:
            failures.append(
                f"{name}: {got.early} bytes in {EARLY} s, not {row.early} ({row.source})"
            )
    assert not failures, failures


async def test_each_request_of_a_connection_is_paced_on_its_own(proxy: int) -> None:
    # nginx's limit_rate is per request: on a keep-alive connection each response gets its own
    # allowance (160 / 64 - 1 = 1.5 s each), and a paced response's end (held until its last
    # share is sent) lets the next request be served.
    size = 160 * KIB
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    try:
        started = time.monotonic()
        for _ in range(2):
            writer.write(f"GET /?bytes={size} HTTP/1.1\r\nHost: paced.test\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            assert head.startswith(b"HTTP/1.1 200 ") and f"{size}".encode() in head
            body = await asyncio.wait_for(reader.readexactly(size), 20)
            assert body == b"x" * size
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert 2.75 <= elapsed <= 10.0, elapsed


CONFIGMAP_ROWS: dict[str, Row] = {
    # annotations.md: the ConfigMap's limit-rate applies to every Ingress; an annotation
    # overrides it (256 / 64 - 1 = 3 s without one).
    "default": Row({}, 2.75, 8.0, 0, DOC + ": the ConfigMap's limit-rate"),
    "override": Row({N + "limit-rate": "0"}, 0.0, FAST, SIZE, DOC + ": the annotation wins"),
    "invalid": Row({N + "limit-rate": "x"}, 2.75, 8.0, 0, MAIN),
}


async def test_the_configmap_limit_rate_applies_without_annotation(tmp_path: Path) -> None:
    hosts = {name: row.annotations for name, row in CONFIGMAP_ROWS.items()}
    async with serving(tmp_path, hosts, {"limit-rate": "64"}) as http:
        names = list(CONFIGMAP_ROWS)
        results = await asyncio.gather(*(download(http, f"{name}.test") for name in names))
    failures = []
    for name, got in zip(names, results, strict=True):
        row = CONFIGMAP_ROWS[name]
        if got.status != 200 or got.body != b"x" * SIZE:
            failures.append(f"{name}: status {got.status}, {len(got.body)} bytes ({row.source})")
        elif not row.at_least <= got.elapsed <= row.at_most:
            failures.append(f"{name}: {got.elapsed:.2f} s ({row.source})")
    assert not failures, failures
