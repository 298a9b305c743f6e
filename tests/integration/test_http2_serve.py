"""`portico serve` with HTTP/2 end to end: the flags through the CLI, a real (uvloop) worker.

`--h2c` takes `curl --http2-prior-knowledge` on the plain listener; the HTTPS listener offers
`h2` by default (ALPN) and only `http/1.1` with `--no-http2`; `portico echo` pods behind.
`nghttp` (nghttp2-client), when on PATH, as a second real client both ways.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.integration.manifests import ingress, ingress_class, service_with_pods
from tests.integration.serving import eventually, free_port, start_serve, stop_serve

pytestmark = pytest.mark.timeout(90)

HOST = "h2.test"


async def curl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("flags", "tls_version"),
    [((), "2"), (("--h2c", "--http2-max-requests", "5"), "2"), (("--no-http2",), "1.1")],
)
async def test_serve_http2_flags(
    tmp_path: Path, pod_port: int, flags: tuple[str, ...], tls_version: str
) -> None:
    docs = [
        ingress_class(),
        *service_with_pods("web", ["127.0.0.2"], pod_port),
        ingress("web", HOST, {"/": "web"}, service_port={"number": 80}),
    ]
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all(docs))
    http, https, admin = free_port(), free_port(), free_port()
    process = await start_serve(
        tmp_path,
        http=http,
        https=https,
        admin=admin,
        extra=flags,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, limit=30)
        resolve = [
            "--resolve",
            f"{HOST}:{https}:127.0.0.1",
            "--resolve",
            f"{HOST}:{http}:127.0.0.1",
        ]
        code, out, err = await curl(
            "-k", "--http2", *resolve, "-w", "\n%{http_version}", f"https://{HOST}:{https}/"
        )
        assert code == 0, err
        body, version = out.rsplit("\n", 1)
        assert version == tls_version
        assert json.loads(body)["service"] == "web"
        code, out, err = await curl(
            "--http2-prior-knowledge",
            *resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            f"http://{HOST}:{http}/",
        )
        if "--h2c" in flags:
            assert (code, out) == (0, "2"), err
        else:
            assert code != 0  # the plain listener speaks HTTP/1.1 only
    finally:
        await stop_serve(process, grace=10)


async def nghttp(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "nghttp", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) not on PATH")
async def test_serve_answers_nghttp(tmp_path: Path, pod_port: int) -> None:
    """Issue 19 "done when": nghttp (libnghttp2's own client, with its PRIORITY frames) over
    h2c with prior knowledge (`--h2c`) and over TLS (ALPN h2). It names the host with
    `:authority`: a `host` field differing from `:authority` is refused (RFC 9113 §8.3.1)."""
    docs = [
        ingress_class(),
        *service_with_pods("web", ["127.0.0.2"], pod_port),
        ingress("web", HOST, {"/": "web"}, service_port={"number": 80}),
    ]
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all(docs))
    http, https, admin = free_port(), free_port(), free_port()
    process = await start_serve(
        tmp_path,
        http=http,
        https=https,
        admin=admin,
        extra=("--h2c",),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, limit=30)
        for url in (f"http://127.0.0.1:{http}/nghttp?h2c", f"https://127.0.0.1:{https}/nghttp"):
            code, out, err = await nghttp("-H", f":authority: {HOST}", url)
            assert code == 0, err
            echo = json.loads(out)
            assert (echo["service"], echo["host"]) == ("web", HOST)
            assert echo["path"] == "/nghttp"
        code, out, err = await nghttp("-v", "-H", f"host: {HOST}", f"http://127.0.0.1:{http}/")
        assert "recv RST_STREAM" in out and "PROTOCOL_ERROR" in out, out + err
    finally:
        await stop_serve(process, grace=10)
