"""Live changes under load: `portico serve --workers 2` keeps answering while everything moves.

Continuous keep-alive GET traffic goes through the two workers to three routes while the manifest
directory changes under it: 200 Ingress edits (paths added and removed, annotations changed,
extra hosts added and removed; the routes the clients use always stay) and 200 EndpointSlice
changes (endpoints removed and added back, ready conditions flipped; always one ready endpoint),
interleaved, including a rolling replacement of every pod of one Service: new pods on new
addresses join the slice, old ones turn terminating, leave the slice, and only then stop.

Every answer must be a 200 from a pod that was a ready endpoint of its route at some time during
the request's lifetime: each written endpoint set counts from the moment it was written until
/debug/snapshot shows the next one applied by every worker. Each round of edits is designed so
that the summary on /debug/snapshot (rules per host, endpoints per backend) differs from the
previous round's for every file edited, so "applied" is checked, not assumed. The pods are echo
servers answering with their own `ip:port`; which worker owns each client connection is read
from /proc, so both workers are seen serving. Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import pytest
import yaml
from aiohttp import web

from controller.echo import start_echo
from tests.integration.manifests import ingress_class, service
from tests.integration.serving import children, free_port, start_serve, stop_serve

pytestmark = pytest.mark.timeout(120)

NAMESPACE: Final = "default"
ROUNDS: Final = 50  # each round edits every Ingress file and every EndpointSlice file once
ROLLING_AT: Final = 20  # the round where web's rolling replacement starts (it takes 6 rounds)
CLIENTS: Final = 8  # keep-alive connections (more are opened if all land on one worker)
ROUND_BOUND: Final = 20.0  # seconds for one round of edits to show on /debug/snapshot
SERVICES: Final = ("web", "api", "shop")

State = Literal["ready", "unready", "terminating"]
Slice = tuple[tuple[str, State], ...]  # (pod ip, condition), in slice order


# ---- the objects and how they change ---------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What one client request asks for and which Service must answer it."""

    host: str
    path: str
    service: str

    @property
    def request(self) -> bytes:
        return f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()


ROUTES: Final = (
    Route("a.test", "/hello", "web"),
    Route("a.test", "/api/items", "api"),
    Route("b.test", "/", "shop"),
)


@dataclass(frozen=True)
class IngressFile:
    """One Ingress in its own file: fixed paths (some used by clients) plus churn."""

    name: str
    host: str
    paths: tuple[tuple[str, str], ...]  # (Prefix path, service), present in every round

    def document(self, round_: int) -> dict[str, Any]:
        # Extra paths cycle 0, 1, 2: the host's rule count differs from the previous round's in
        # every round, which makes each edit visible on /debug/snapshot.
        extra = [
            (f"/churn-{self.name}-{j}", SERVICES[j % len(SERVICES)]) for j in range(round_ % 3)
        ]
        rules = [{"host": self.host, "http": {"paths": _paths([*self.paths, *extra])}}]
        extra_host = self.extra_host(round_)
        if extra_host is not None:
            rules.append({"host": extra_host, "http": {"paths": _paths([("/", "shop")])}})
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": self.name,
                "namespace": NAMESPACE,
                "annotations": {
                    "nginx.ingress.kubernetes.io/proxy-read-timeout": str(30 + round_),
                    "nginx.ingress.kubernetes.io/load-balance": (
                        "ewma" if (round_ // 5) % 2 else "round_robin"
                    ),
                },
            },
            "spec": {"ingressClassName": "portico", "rules": rules},
        }

    def extra_host(self, round_: int) -> str | None:
        return f"{self.name}-extra.test" if (round_ // 3) % 2 else None

    def hosts(self, round_: int) -> dict[str, int]:
        """Rules per host this Ingress contributes, as /debug/snapshot counts them."""
        hosts = {self.host: len(self.paths) + round_ % 3}
        extra = self.extra_host(round_)
        if extra is not None:
            hosts[extra] = 1
        return hosts


def _paths(paths: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "path": path,
            "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"name": "http"}}},
        }
        for path, service in paths
    ]


INGRESSES: Final = (
    IngressFile("main", "a.test", (("/", "web"), ("/api", "api"))),
    IngressFile("shop", "b.test", (("/", "shop"),)),
    IngressFile("edge", "e.test", (("/", "web"),)),
    IngressFile("side", "s.test", (("/", "api"), ("/v2", "shop"))),
)


def churn(ips: Sequence[str], step: int) -> Slice:
    """Even steps: every pod ready. Odd steps: one pod out, removed or unready in turn."""
    if step % 2 == 0:
        return tuple((ip, "ready") for ip in ips)
    out = (step // 2) % len(ips)
    if (step // 2) % 2:
        return tuple((ip, "unready" if i == out else "ready") for i, ip in enumerate(ips))
    return tuple((ip, "ready") for i, ip in enumerate(ips) if i != out)


@dataclass
class SliceFile:
    """One EndpointSlice in its own file, with its state for every round (0: the initial one)."""

    name: str
    service: str
    port: int
    states: list[Slice]
    starts: dict[int, list[str]] = field(default_factory=dict)  # round -> pod ips to start first
    stops: dict[int, list[str]] = field(default_factory=dict)  # round -> pod ips to stop after

    def document(self, round_: int) -> dict[str, Any]:
        conditions: dict[State, dict[str, bool]] = {
            "ready": {"ready": True},
            "unready": {"ready": False},
            "terminating": {"ready": False, "serving": True, "terminating": True},
        }
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.name,
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": self.service},
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [ip], "conditions": conditions[state]}
                for ip, state in self.states[round_]
            ],
            "ports": [{"name": "http", "port": self.port, "protocol": "TCP"}],
        }

    def ready(self, round_: int) -> set[str]:
        return {f"{ip}:{self.port}" for ip, state in self.states[round_] if state == "ready"}

    def listed(self, round_: int) -> int:
        """Endpoints the snapshot lists: ready ones plus serving-but-terminating ones."""
        return sum(1 for _, state in self.states[round_] if state != "unready")


def churned(name: str, service: str, port: int, ips: Sequence[str]) -> SliceFile:
    return SliceFile(name, service, port, [churn(ips, k) for k in range(ROUNDS + 1)])


def rolling(
    name: str, service: str, port: int, old: Sequence[str], new: Sequence[str]
) -> SliceFile:
    """Churn on the old pods, then replace them one by one, then churn on the new pods.

    Each step: a new pod joins ready and the oldest turns terminating (ready false, serving
    true, terminating true); next step it leaves the slice, and its server stops only after
    /debug/snapshot shows that step applied by every worker.
    """
    states = [churn(old, k) for k in range(ROLLING_AT)]
    starts: dict[int, list[str]] = {}
    stops: dict[int, list[str]] = {}
    for i, (going, coming) in enumerate(zip(old, new, strict=True)):
        kept: list[tuple[str, State]] = [(ip, "ready") for ip in old[i + 1 :]]
        joined: list[tuple[str, State]] = [(ip, "ready") for ip in new[: i + 1]]
        round_ = ROLLING_AT + 2 * i
        starts[round_] = [coming]
        states.append(((going, "terminating"), *kept, *joined))
        states.append((*kept, *joined))
        stops[round_ + 1] = [going]
    done = len(states) - 1
    states.extend(churn(new, k - done) for k in range(done + 1, ROUNDS + 1))
    return SliceFile(name, service, port, states, starts, stops)


def write_atomically(path: Path, docs: Sequence[dict[str, Any]]) -> None:
    # A hidden temporary name (the watcher skips dot-files), then a rename: never half a file.
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(yaml.safe_dump_all(docs))
    os.replace(temp, path)


# ---- what was valid when ---------------------------------------------------------------------


class Timeline:
    """The ready endpoint sets of one Service, each valid from when it was written until every
    worker was seen holding the next one."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, set[str], list[float]]] = []

    def written(self, when: float, ready: set[str]) -> None:
        self.entries.append((when, ready, [math.inf]))

    def confirmed(self, when: float) -> None:
        if len(self.entries) >= 2:
            self.entries[-2][2][0] = when

    def valid(self, sent: float, done: float) -> set[str]:
        return {
            pod
            for written, ready, until in self.entries
            if written <= done and until[0] >= sent
            for pod in ready
        }


@dataclass
class Answer:
    client: int
    route: Route
    sent: float
    done: float = 0.0
    status: int = 0
    service: str = ""
    pod: str = ""
    error: str = ""


# ---- clients ---------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: (status, body), Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size)
            await reader.readuntil(b"\r\n")
            if size == 0:
                return status, bytes(body)
    raise ValueError(f"response without a length: {head!r}")


def worker_of(client_port: int, server_port: int, workers: Sequence[int]) -> int | None:
    """The worker process holding the accepted end of a loopback client connection."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in workers:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


@dataclass
class Traffic:
    http: int
    workers: Sequence[int]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    answers: list[Answer] = field(default_factory=list)
    owners: dict[int, int | None] = field(default_factory=dict)  # client -> worker pid
    first: dict[int, asyncio.Event] = field(default_factory=dict)  # client -> first answer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> int:
        index = len(self.tasks)
        self.first[index] = asyncio.Event()
        self.tasks.append(asyncio.create_task(self.client(index)))
        return index

    async def client(self, index: int) -> None:
        """GETs back to back on one keep-alive connection, cycling through the routes.

        GET only: a pod may still vanish while some worker routes to it (in a cluster, kubelet
        does not wait for proxies), and Portico covers that race by retrying idempotent requests
        on connect failure. Raw streams, so no client library retry hides a failure; the first
        failure ends the client (the test fails anyway).
        """
        reader, writer = await asyncio.open_connection("127.0.0.1", self.http)
        own_port = writer.get_extra_info("sockname")[1]
        n = index
        try:
            while not self.stop.is_set():
                route = ROUTES[n % len(ROUTES)]
                n += 1
                answer = Answer(index, route, time.monotonic())
                try:
                    async with asyncio.timeout(15):
                        writer.write(route.request)
                        answer.status, body = await read_response(reader)
                    doc = json.loads(body)
                    answer.service, answer.pod = doc["service"], doc["pod"]
                except (OSError, EOFError, TimeoutError, ValueError, KeyError) as exc:
                    answer.error = repr(exc)
                answer.done = time.monotonic()
                self.answers.append(answer)
                if answer.error:
                    return
                if not self.first[index].is_set():
                    self.owners[index] = worker_of(own_port, self.http, self.workers)
                    self.first[index].set()
        finally:
            self.first[index].set()
            writer.close()


# ---- the test --------------------------------------------------------------------------------


async def test_edits_and_a_rolling_replacement_under_keepalive_traffic(tmp_path: Path) -> None:
    ports: set[int] = set()
    while len(ports) < 4:  # distinct: several Services' pods share addresses
        ports.add(free_port("127.0.0.2"))
    web_port, api_port, api_alt_port, shop_port = sorted(ports)
    slices = (
        rolling(
            "web-1",
            "web",
            web_port,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
            ["127.0.0.7", "127.0.0.8", "127.0.0.9"],
        ),
        churned("api-1", "api", api_port, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
        # A second slice of the same Service, on another port: several slices per Service.
        churned("api-2", "api", api_alt_port, ["127.0.0.5", "127.0.0.6"]),
        churned("shop-1", "shop", shop_port, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]),
    )
    for s in slices:  # the design promises: a visible change every round, one pod always ready
        assert all(s.listed(k) != s.listed(k - 1) for k in range(1, ROUNDS + 1)), s.name
        assert all(s.ready(k) for k in range(ROUNDS + 1)), s.name

    def expected(round_: int) -> tuple[dict[str, int], dict[str, int]]:
        hosts = {h: n for ing in INGRESSES for h, n in ing.hosts(round_).items()}
        backends = {f"{NAMESPACE}/{svc}/http": 0 for svc in SERVICES}
        for s in slices:
            backends[f"{NAMESPACE}/{s.service}/http"] += s.listed(round_)
        return hosts, backends

    def write_round(round_: int) -> None:
        # Interleaved: an Ingress file, then a slice file, and so on.
        for ing, s in zip(INGRESSES, slices, strict=True):
            write_atomically(tmp_path / f"ingress-{ing.name}.yaml", [ing.document(round_)])
            write_atomically(tmp_path / f"slice-{s.name}.yaml", [s.document(round_)])

    pods: dict[tuple[str, int], web.AppRunner] = {}

    async def start_pod(s: SliceFile, ip: str) -> None:
        pods[(ip, s.port)] = await start_echo(ip, s.port, s.service, f"{ip}:{s.port}")

    for s in slices:
        for ip, _ in s.states[0]:
            await start_pod(s, ip)

    base = [ingress_class(), *(service(svc, namespace=NAMESPACE) for svc in SERVICES)]
    write_atomically(tmp_path / "base.yaml", base)
    timelines = {svc: Timeline() for svc in SERVICES}

    def record_written(round_: int) -> None:
        now = time.monotonic()
        for svc in SERVICES:
            ready = set().union(*(s.ready(round_) for s in slices if s.service == svc))
            timelines[svc].written(now, ready)

    record_written(0)
    write_round(0)

    http, admin = free_port(), free_port()
    process = await start_serve(
        tmp_path,
        http=http,
        admin=admin,
        workers=2,
        shutdown_delay=0.5,
        drain_timeout=10,
        extra=("--no-access-log",),
    )
    stopping: list[asyncio.Task[None]] = []
    traffic: Traffic | None = None
    try:
        async with aiohttp.ClientSession() as session:
            last: dict[str, Any] = {}

            async def applied(round_: int) -> float:
                """Poll /debug/snapshot until round `round_` is what every worker serves."""
                hosts, backends = expected(round_)
                try:
                    async with asyncio.timeout(ROUND_BOUND if round_ else 60):
                        while True:
                            try:
                                url = f"http://127.0.0.1:{admin}/debug/snapshot"
                                async with session.get(url) as resp:
                                    last.clear()
                                    last.update(await resp.json())
                            except aiohttp.ClientError:
                                pass  # the admin port opens a moment after start
                            else:
                                if _serving(last, hosts, backends):
                                    return time.monotonic()
                            await asyncio.sleep(0.02)
                except TimeoutError:
                    pytest.fail(f"round {round_} not applied: want {hosts} {backends}, have {last}")

            await applied(0)
            workers = children(process.pid)
            assert len(workers) == 2
            traffic = Traffic(http, workers)
            for _ in range(CLIENTS):
                traffic.start()
            async with asyncio.timeout(30):
                # SO_REUSEPORT spreads connections by hash: open more until both workers hold one.
                for _ in range(64):
                    await asyncio.gather(*(e.wait() for e in traffic.first.values()))
                    if len(set(traffic.owners.values()) - {None}) == 2:
                        break
                    traffic.start()
            assert set(traffic.owners.values()) == set(workers), traffic.owners

            for round_ in range(1, ROUNDS + 1):
                for s in slices:
                    for ip in s.starts.get(round_, ()):
                        await start_pod(s, ip)
                record_written(round_)
                write_round(round_)
                confirmed = await applied(round_)
                assert last["problems"] == [], last["problems"]
                for timeline in timelines.values():
                    timeline.confirmed(confirmed)
                for s in slices:
                    for ip in s.stops.get(round_, ()):
                        # Out of the slice and out of every worker's snapshot: the pod may go.
                        stopping.append(asyncio.create_task(pods.pop((ip, s.port)).cleanup()))

            await asyncio.sleep(0.3)  # a last stretch of traffic on the final configuration
            traffic.stop.set()
            async with asyncio.timeout(30):
                await asyncio.gather(*traffic.tasks)
            assert sorted(children(process.pid)) == sorted(workers), "a worker was replaced"

        answers = traffic.answers
        failures = [
            a
            for a in answers
            if a.error
            or a.status != 200
            or a.service != a.route.service
            or a.pod not in timelines[a.route.service].valid(a.sent, a.done)
        ]
        assert not failures, (
            f"{len(failures)} of {len(answers)} failed",
            [_describe(a, timelines[a.route.service]) for a in failures[:10]],
        )
        # Not vacuous: every route answered throughout, both workers served, and the rolling
        # replacement's new pods took over web.
        assert len(answers) >= 20 * ROUNDS, len(answers)
        by_route = Counter(a.route.service for a in answers)
        assert all(by_route[svc] >= 5 * ROUNDS for svc in SERVICES), by_route
        by_worker = Counter(traffic.owners.get(a.client) for a in answers)
        assert all(by_worker[pid] > 0 for pid in workers), by_worker
        web_pods = {a.pod for a in answers if a.route.service == "web"}
        assert {f"{ip}:{web_port}" for ip in ("127.0.0.7", "127.0.0.8", "127.0.0.9")} <= web_pods

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if traffic is not None:
            traffic.stop.set()
            for task in traffic.tasks:
                task.cancel()
        await stop_serve(process, grace=5)
        await asyncio.gather(*stopping, return_exceptions=True)
        for runner in pods.values():
            await runner.cleanup()


def _serving(summary: dict[str, Any], hosts: dict[str, int], backends: dict[str, int]) -> bool:
    """The summary shows exactly these hosts and backends, acknowledged by both workers."""
    have_hosts = {vh["host"]: vh["rules"] for vh in summary.get("virtual_hosts", [])}
    have_backends = {k: b["endpoints"] for k, b in summary.get("backends", {}).items()}
    workers = summary.get("workers", [])
    return (
        have_hosts == hosts
        and have_backends == backends
        and len(workers) == 2
        and all(
            w["alive"] and w["listening"] and w["acked_version"] >= summary["version"]
            for w in workers
        )
    )


def _describe(answer: Answer, timeline: Timeline) -> str:
    valid = sorted(timeline.valid(answer.sent, answer.done))
    return (
        f"client {answer.client} {answer.route.host}{answer.route.path}: {answer.status} "
        f"{answer.service} {answer.pod} {answer.error} (valid: {valid})"
    )
