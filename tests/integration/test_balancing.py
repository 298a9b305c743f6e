"""Load balancing through a real ProxyServer: spread, terminating fallback, ejection, retries.

"Pods" are tiny HTTP servers on 127.0.0.2, 127.0.0.3, ... that answer with their own name, so
a test sees where each request went. A dead pod is an address whose port nobody listens on
(connection refused). Every wait is bounded; no test asserts on durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httptools
import pytest
from backends import Client, Response

from proxy.config import (
    Backend,
    BalancerKind,
    Endpoint,
    PathRule,
    RouteOptions,
    RouteTable,
    Snapshot,
    VirtualHost,
)
from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from tests.integration.serving import free_port

pytestmark = pytest.mark.timeout(30)

REQUEST_BOUND = 5.0  # seconds one request may take through the proxy
KEY = "ns/pods/80"


# ---- pods ----------------------------------------------------------------------------------------


class _PodConnection(asyncio.Protocol):
    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pod.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        self.pod.served += 1
        if self.pod.hold is not None and not self.pod.hold.is_set():
            self.pod.held += 1
            asyncio.get_running_loop().create_task(self._answer_later())
        else:
            self._answer()

    async def _answer_later(self) -> None:
        assert self.pod.hold is not None
        await self.pod.hold.wait()
        self._answer()

    def _answer(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        body = self.pod.name.encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@dataclass
class Pod:
    name: str
    address: str
    port: int = 0
    served: int = 0  # complete requests received
    held: int = 0  # requests waiting for `hold`
    hold: asyncio.Event | None = None  # when set up and not yet set, answers wait for it
    server: asyncio.Server | None = None
    transports: list[asyncio.Transport] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.port, target=f"ns/{self.name}")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _PodConnection(self), self.address, self.port
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in self.transports:
                t.close()
            await self.server.wait_closed()
            self.server = None

    async def restart_at(self, endpoint: Endpoint) -> None:
        """Stop, then listen at the endpoint's address and port, counting from zero again."""
        await self.stop()
        self.address, self.port = endpoint.address, endpoint.port
        await self.start()
        self.served = 0


def dead_endpoint(address: str) -> Endpoint:
    """An address:port where nothing listens: connecting is refused at once."""
    return Endpoint(address, free_port(address), target="ns/dead")


# ---- proxy ---------------------------------------------------------------------------------------


def snapshot(
    endpoints: Iterable[Endpoint], balancer: BalancerKind = "round_robin", version: int = 1
) -> Snapshot:
    options = RouteOptions(balancer=balancer)
    rule = PathRule("/", "prefix", KEY, "ns/ing", "ns/pods", 80, "Prefix", options)
    return Snapshot(
        routes=RouteTable(virtual_hosts=(VirtualHost("", (rule,)),)),
        backends=(Backend(KEY, tuple(endpoints)),),
        version=version,
    )


@asynccontextmanager
async def running_proxy(snap: Snapshot, **overrides: float) -> AsyncIterator[ProxyServer]:
    settings = ProxySettings(
        bind_address="127.0.0.1",
        http_port=0,
        https_port=0,
        upstream_connect_timeout=2.0,
        access_log=False,
        **overrides,  # type: ignore[arg-type]
    )
    proxy = ProxyServer(settings)
    proxy.apply(snap)
    await proxy.start(host="127.0.0.1", http_port=0)
    try:
        yield proxy
    finally:
        await proxy.shutdown(drain_timeout=1.0)


@pytest.fixture
async def pods() -> AsyncIterator[list[Pod]]:
    started = [Pod(f"pod-{i}", f"127.0.0.{i + 2}") for i in range(3)]
    for pod in started:
        await pod.start()
    yield started
    for pod in started:
        await pod.stop()


# ---- client --------------------------------------------------------------------------------------


async def get(port: int, path: str = "/") -> Response:
    """One request on a connection of its own, bounded by REQUEST_BOUND."""
    async with asyncio.timeout(REQUEST_BOUND):
        client = await Client.connect(port)
        try:
            return await client.request(
                "GET", path, headers={"Connection": "close"}, host="app.example"
            )
        finally:
            await client.close()


async def spread(port: int, n: int) -> dict[str, int]:
    """Send n sequential requests; count answers per pod name (and per non-200 status)."""
    counts: dict[str, int] = {}
    for _ in range(n):
        r = await get(port)
        key = r.body.decode() if r.status == 200 else f"status {r.status}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# ---- tests ---------------------------------------------------------------------------------------


async def test_round_robin_is_even_over_three_pods(pods: list[Pod]) -> None:
    async with running_proxy(snapshot(p.endpoint for p in pods)) as proxy:
        counts = await spread(proxy.http_port, 30)
    assert counts == {p.name: 10 for p in pods}


async def test_least_request_spreads_when_all_are_idle(pods: list[Pod]) -> None:
    async with running_proxy(snapshot((p.endpoint for p in pods), "least_request")) as proxy:
        counts = await spread(proxy.http_port, 60)
    assert set(counts) == {p.name for p in pods}


async def test_terminating_endpoints_only_when_none_is_ready(pods: list[Pod]) -> None:
    ready, t1, t2 = pods
    terminating = [Endpoint(p.address, p.port, ready=False) for p in (t1, t2)]
    async with running_proxy(snapshot([ready.endpoint, *terminating])) as proxy:
        assert await spread(proxy.http_port, 12) == {ready.name: 12}
        # The ready pod goes away: the serving-but-terminating ones take over.
        proxy.apply(snapshot(terminating, version=2))
        assert await spread(proxy.http_port, 12) == {t1.name: 6, t2.name: 6}
        # A ready pod is back: terminating ones are dropped again.
        proxy.apply(snapshot([ready.endpoint, *terminating], version=3))
        assert await spread(proxy.http_port, 6) == {ready.name: 6}


async def test_dead_endpoint_is_retried_on_another(pods: list[Pod]) -> None:
    a, b, _ = pods
    dead = dead_endpoint("127.0.0.5")
    # An ejection far shorter than a request keeps the dead endpoint in the rotation, so
    # requests keep landing on it first and only the retry can save them.
    async with running_proxy(
        snapshot([a.endpoint, dead, b.endpoint]), ejection_base=0.001, ejection_max=0.001
    ) as proxy:
        counts = await spread(proxy.http_port, 24)
    assert counts.keys() <= {a.name, b.name}, counts
    assert sum(counts.values()) == 24


async def test_two_dead_of_three_still_served(pods: list[Pod]) -> None:
    a = pods[0]
    dead = [dead_endpoint("127.0.0.5"), dead_endpoint("127.0.0.6")]
    async with running_proxy(
        snapshot([dead[0], a.endpoint, dead[1]]), ejection_base=0.001, ejection_max=0.001
    ) as proxy:
        # upstream_max_attempts = 3 distinct endpoints: the live one is always among them.
        assert await spread(proxy.http_port, 12) == {a.name: 12}


async def test_all_dead_is_502() -> None:
    dead = [dead_endpoint(f"127.0.0.{i}") for i in (5, 6, 7)]
    async with running_proxy(snapshot(dead)) as proxy:
        first = await get(proxy.http_port)
        # Every endpoint is ejected now; the proxy still tries (better than failing fast).
        second = await get(proxy.http_port)
    assert (first.status, second.status) == (502, 502)


async def test_dead_endpoint_stays_ejected_during_backoff(pods: list[Pod]) -> None:
    a, b, revived = pods
    dead = dead_endpoint("127.0.0.5")
    async with running_proxy(
        snapshot([a.endpoint, dead, b.endpoint]), ejection_base=30.0, ejection_max=30.0
    ) as proxy:
        # Three requests: round robin reaches the dead endpoint once and ejects it.
        assert (await spread(proxy.http_port, 3)).keys() <= {a.name, b.name}
        # The address comes back to life, but its 30 s ejection has not elapsed.
        await revived.restart_at(dead)
        counts = await spread(proxy.http_port, 12)
    assert counts == {a.name: 6, b.name: 6}
    assert revived.served == 0


async def test_dead_endpoint_recovers_after_backoff(pods: list[Pod]) -> None:
    a, b, revived = pods
    dead = dead_endpoint("127.0.0.5")
    async with running_proxy(
        snapshot([a.endpoint, dead, b.endpoint]), ejection_base=0.2, ejection_max=0.2
    ) as proxy:
        assert (await spread(proxy.http_port, 3)).keys() <= {a.name, b.name}
        await revived.restart_at(dead)
        # Once the backoff elapses the endpoint is probed again and, answering, rejoins.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        seen: dict[str, int] = {}
        while revived.served == 0 and loop.time() < deadline:
            for name, n in (await spread(proxy.http_port, 3)).items():
                seen[name] = seen.get(name, 0) + n
            await asyncio.sleep(0.05)
        assert revived.served > 0, f"never picked again: {seen}"
        # Recovered means a full member again: an even share of the next rounds.
        counts = await spread(proxy.http_port, 30)
    assert counts == {a.name: 10, b.name: 10, revived.name: 10}


async def test_least_request_prefers_the_idle_pod(pods: list[Pod]) -> None:
    slow, fast, _ = pods
    slow.hold = asyncio.Event()
    async with running_proxy(snapshot([slow.endpoint, fast.endpoint], "least_request")) as proxy:
        held: list[asyncio.Task[Response]] = []
        # Send requests until one is stuck at the slow pod (those going to the fast one return).
        for _ in range(20):
            task = asyncio.create_task(get(proxy.http_port))
            while slow.held == len(held) and not task.done():
                await asyncio.sleep(0.01)
            if task.done():
                assert (await task).body == fast.name.encode()
            else:
                held.append(task)
                break
        assert len(held) == 1, "no request ever reached the slow pod"
        # One request in flight at the slow pod, none at the fast one: power of two choices over
        # two endpoints always compares both, so everything goes to the fast pod.
        counts = await spread(proxy.http_port, 20)
        assert counts == {fast.name: 20}
        assert slow.served == 1
        slow.hold.set()
        response = await held[0]
    assert (response.status, response.body) == (200, slow.name.encode())


async def test_round_robin_ignores_load(pods: list[Pod]) -> None:
    """Control for the least-request test: round robin keeps sending to the busy pod."""
    slow, fast, _ = pods
    slow.hold = asyncio.Event()
    async with running_proxy(snapshot([slow.endpoint, fast.endpoint])) as proxy:
        tasks = [asyncio.create_task(get(proxy.http_port)) for _ in range(4)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_BOUND
        while slow.held < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert slow.held == 2
        slow.hold.set()
        responses = await asyncio.gather(*tasks)
    assert sorted(r.body for r in responses) == sorted(
        [slow.name.encode()] * 2 + [fast.name.encode()] * 2
    )
