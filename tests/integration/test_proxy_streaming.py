"""Bodies stream through with bounded memory, whatever their size or the peers' speed.

A sampler watches the proxy's own buffers (client and upstream transport write buffers plus
request bytes held for replay or before a connection is ready) while 256 MiB go through each
way, and the process RSS growth; slow readers and writers must pause the other side instead
of piling bytes up in the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from backends import Client, Pod, pattern, render_request, snapshot, start_proxy

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.uvloop,
]

MiB = 1 << 20
BIG = 256 * MiB
# Proxy-side bytes in flight: a few reads (uvloop reads up to 256 KiB) plus one write-buffer
# high-water mark per transport. Nothing proportional to the body size.
BUFFER_BOUND = 2 * MiB
RSS_BOUND = 64 * MiB


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Largest number of bytes the proxy held at any sample, and the RSS peak."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.max_buffered = 0
        self.max_rss = rss()
        self.task: asyncio.Task[None] | None = None

    def buffered(self) -> int:
        total = 0
        for client in self.proxy.clients:
            total += client.transport.get_write_buffer_size()
            for ex in (client.active, *client.queue):
                if ex is not None:
                    total += ex.pending_bytes if ex.pending is not None else 0
        for conn in self.proxy.pool.conns:
            if conn.transport is not None:
                total += conn.transport.get_write_buffer_size()
        return total

    async def run(self) -> None:
        while True:
            self.max_buffered = max(self.max_buffered, self.buffered())
            self.max_rss = max(self.max_rss, rss())
            await asyncio.sleep(0.005)

    def __enter__(self) -> Sampler:
        self.base_rss = rss()
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


@pytest.fixture
async def stack(pod: Pod) -> AsyncIterator[tuple[Any, Pod]]:
    # Bodies far beyond the default 1 MiB limit: lifted, as a proxy-body-size "0" does.
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}), max_body_bytes=0)
    yield proxy, pod
    await proxy.shutdown(0.5)


async def test_256_mib_upload_streams_with_bounded_memory(stack: tuple[Any, Pod]) -> None:
    proxy, _ = stack
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    block = pattern(MiB)
    with Sampler(proxy) as sampler:
        writer.write(render_request("POST", "/sink", [("Content-Length", str(BIG))]))
        for _ in range(BIG // MiB):
            writer.write(block)
            await writer.drain()
        client = Client(reader, writer)
        resp = await client.response(timeout=30)
    assert resp.status == 200
    assert resp.json()["length"] == BIG
    assert sampler.max_buffered < BUFFER_BOUND, sampler.max_buffered
    assert sampler.max_rss - sampler.base_rss < RSS_BOUND
    writer.close()


async def test_256_mib_chunked_upload(stack: tuple[Any, Pod]) -> None:
    proxy, _ = stack
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    block = pattern(MiB)
    frame = b"%x\r\n%s\r\n" % (len(block), block)
    with Sampler(proxy) as sampler:
        writer.write(render_request("PUT", "/sink", [("Transfer-Encoding", "chunked")]))
        for _ in range(BIG // MiB):
            writer.write(frame)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        resp = await Client(reader, writer).response(timeout=30)
    assert resp.json()["length"] == BIG
    assert sampler.max_buffered < BUFFER_BOUND, sampler.max_buffered
    writer.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_256_mib_download_streams_with_bounded_memory(
    stack: tuple[Any, Pod], chunked: bool
) -> None:
    proxy, _ = stack
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    target = f"/stream?n={BIG}" + ("&chunked=1" if chunked else "")
    with Sampler(proxy) as sampler:
        writer.write(render_request("GET", target))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = 0
        tail = b""
        if chunked:
            assert b"transfer-encoding: chunked" in head.lower()
            # Count payload bytes by parsing chunk frames as they come.
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(size + 2)
                received += size
                tail = (tail + data[:-2])[-16:]
        else:
            while received < BIG:
                data = await reader.read(1 << 20)
                assert data
                received += len(data)
                tail = (tail + data)[-16:]
    assert received == BIG
    assert tail == pattern(BIG)[-16:]
    assert sampler.max_buffered < BUFFER_BOUND, sampler.max_buffered
    assert sampler.max_rss - sampler.base_rss < RSS_BOUND
    writer.close()


async def test_slow_reader_pauses_the_upstream(stack: tuple[Any, Pod]) -> None:
    """A client that stops reading: the pod is paused, the proxy does not buffer the rest."""
    proxy, pod = stack
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    writer.write(render_request("GET", f"/stream?n={BIG}"))
    await reader.readuntil(b"\r\n\r\n")
    with Sampler(proxy) as sampler:
        await asyncio.sleep(0.5)  # not reading at all
    assert sampler.max_buffered < BUFFER_BOUND, sampler.max_buffered
    upstream = next(iter(proxy.pool.conns))
    assert upstream.transport.is_reading() is False
    # Socket buffers hold some megabytes; nothing near the body size left the pod.
    pod_conn = next(iter(pod.open))
    assert pod_conn.transport.get_write_buffer_size() > 0
    # Reading slowly for a while keeps everything bounded and the stream intact.
    got = 0
    with Sampler(proxy) as sampler:
        for _ in range(40):
            data = await reader.read(64 * 1024)
            got += len(data)
            await asyncio.sleep(0.005)
    assert got > 0
    assert sampler.max_buffered < BUFFER_BOUND
    writer.close()


async def test_slow_upstream_reader_pauses_the_client(stack: tuple[Any, Pod]) -> None:
    """A pod reading a body slowly: the proxy stops reading the client instead of buffering."""
    proxy, pod = stack
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    size = 64 * MiB
    writer.write(render_request("POST", "/slow-read?delay=0.05", [("Content-Length", str(size))]))
    block = pattern(MiB)
    with Sampler(proxy) as sampler:
        sent = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while sent < size:
                    writer.write(block)
                    sent += len(block)
                    await writer.drain()
        # The client was throttled: its writes could not all go through in a second.
        assert sent < size
        assert sampler.max_buffered < BUFFER_BOUND, sampler.max_buffered
    for conn in pod.open:
        conn.slow_read = 0.0  # let the pod read at full speed
        conn._resume()
    while sent < size:
        writer.write(block)
        sent += len(block)
        await writer.drain()
    resp = await Client(reader, writer).response(timeout=30)
    assert resp.json()["length"] == size
    writer.close()


async def test_slow_writer_within_body_timeout(stack: tuple[Any, Pod]) -> None:
    proxy, _ = stack
    client = await Client.connect(proxy.http_port)
    body = pattern(5000)
    client.send(render_request("POST", "/sink", [("Content-Length", str(len(body)))]))
    for i in range(0, len(body), 500):
        client.send(body[i : i + 500])
        await asyncio.sleep(0.02)
    resp = await client.response()
    assert resp.json()["length"] == len(body)
    await client.close()
