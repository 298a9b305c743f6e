"""Retries and buffering on the wire: proxy-next-upstream (+ -tries, -timeout),
proxy-request-buffering and proxy-buffer-size, against pods that fail in controlled ways.

Each `ScriptedPod` answers every request the same way (its `mode`): a status, closing without
an answer, never answering, a malformed head, a head of a given size, a response cut short.
A row says which pods a backend has, the route's options (what the compiler makes of the
annotations), the request, and what must happen: the status the client saw, how many attempts
each kind of pod got. Rows cite nginx's proxy_next_upstream documentation
(https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_next_upstream) or
ingress-nginx's test/e2e/annotations/proxy.go, whose "should build proxy next upstream" only
checks the nginx configuration: the behaviour asserted here is nginx's.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from backends import Client, render_request, snapshot, start_proxy

from proxy.config import BodyLimit, RouteOptions
from tests.integration.serving import free_port

pytestmark = [pytest.mark.timeout(60), pytest.mark.uvloop]


class ScriptedPod:
    """A pod answering every request per `mode`: "ok" (200, body sha256), "status:N", "close"
    (closes once the request is read), "hang" (never answers), "bad" (a malformed head),
    "head:N" (200 with a head of about N bytes), "cut" (200 head, part of the body, close).
    `requests` lists (method, body length) of the requests it read whole or in part."""

    def __init__(self, host: str, mode: str) -> None:
        self.host = host
        self.mode = mode
        self.port = 0
        self.requests: list[tuple[str, int]] = []
        self.heads = 0  # request heads read (a request may not have arrived whole)
        self.server: asyncio.Server | None = None

    async def start(self) -> ScriptedPod:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads += 1
                lines = head.split(b"\r\n")
                method = lines[0].split()[0].decode()
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.requests.append((method, len(body)))
                if not await self._answer(writer, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, body: bytes) -> bool:
        mode, _, arg = self.mode.partition(":")
        pod = f"X-Pod: {self.host}\r\n".encode()
        if mode == "close":
            return False
        if mode == "hang":
            await asyncio.sleep(30)
            return False
        if mode == "bad":
            writer.write(b"HTTP/1.1 2OO OK\r\n\r\n")
            return False
        if mode == "cut":
            writer.write(b"HTTP/1.1 200 OK\r\n" + pod + b"Content-Length: 100\r\n\r\npart")
            await writer.drain()
            return False
        if mode == "status":
            writer.write(
                b"HTTP/1.1 %s Status\r\n%sContent-Length: 2\r\n\r\nno" % (arg.encode(), pod)
            )
            return True
        if mode == "head":
            size = int(arg)
            filler = b"X-Fill: " + b"f" * (size - 60) + b"\r\n"
            reply = b"HTTP/1.1 200 OK\r\n" + pod + filler + b"Content-Length: 2\r\n\r\nok"
            if len(reply) > 1000:  # the head in pieces: it spans reads
                for piece in (reply[:500], reply[500:-30], reply[-30:]):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.02)
            else:
                writer.write(reply)
            return True
        digest = hashlib.sha256(body).hexdigest().encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (pod, len(digest), digest)
        )
        return True


@dataclass
class Row:
    id: str
    source: str  # where the rule comes from
    modes: list[str]  # the pods of the backend ("dead": an address nothing listens on)
    options: dict[str, Any]  # RouteOptions fields
    expect: int  # status the client sees, for every request
    attempts: dict[str, int]  # mode -> requests its pods got in all (exact)
    method: str = "GET"
    body: bytes = b""
    requests: int = 1
    served_by: str | None = None  # mode of the pod whose answer the client got
    settings: dict[str, Any] = field(default_factory=dict)


NGINX = "nginx proxy_next_upstream"
E2E = 'proxy.go "should build proxy next upstream"'
ROWS = [
    Row(
        "http_503-goes-to-the-other-pod",
        f"{NGINX}: http_503; {E2E}",
        ["status:503", "ok"],
        {"next_upstream": ("error", "timeout", "http_503")},
        200,
        {"ok": 2},
        requests=2,
        served_by="ok",
    ),
    Row(
        "http_503-last-attempt-passed-as-it-is",
        f"{NGINX}: the last server's response is returned",
        ["status:503", "status:503"],
        {"next_upstream": ("http_503",)},
        503,
        {"status:503": 2},
        served_by="status:503",
    ),
    Row(
        "default-conditions-pass-503",
        'ingress-nginx default proxy-next-upstream "error timeout"',
        ["status:503"],
        {"next_upstream": ("error", "timeout")},
        503,
        {"status:503": 1},
        served_by="status:503",
    ),
    Row(
        "post-sent-not-resent",
        f"{NGINX}: non_idempotent (POST, LOCK, PATCH not passed on once sent)",
        ["status:503", "status:503"],
        {"next_upstream": ("http_503",)},
        503,
        {"status:503": 1},
        method="POST",
        body=b"payload",
        served_by="status:503",
    ),
    Row(
        "patch-resent-with-non_idempotent",
        f"{NGINX}: non_idempotent",
        ["status:503", "status:503"],
        {"next_upstream": ("http_503", "non_idempotent")},
        503,
        {"status:503": 2},
        method="PATCH",
        body=b"payload",
        served_by="status:503",
    ),
    Row(
        "put-is-idempotent-for-nginx",
        f"{NGINX}: only POST, LOCK, PATCH are non-idempotent",
        ["close", "close"],
        {"next_upstream": ("error",)},
        502,
        {"close": 2},
        method="PUT",
        body=b"payload",
    ),
    Row(
        "post-closed-after-sending-not-resent",
        f"{NGINX}: error while sending / reading the header; non_idempotent",
        ["close", "close"],
        {"next_upstream": ("error",)},
        502,
        {"close": 1},
        method="POST",
        body=b"payload",
    ),
    Row(
        "post-connect-failure-resent",
        f"{NGINX}: error establishing a connection (nothing sent)",
        ["dead", "ok"],
        {"next_upstream": ("error",)},
        200,
        {"ok": 2},
        method="POST",
        body=b"payload",
        requests=2,
        served_by="ok",
    ),
    Row(
        "off-not-even-connect-failures",
        f"{NGINX}: off",
        ["dead", "dead"],
        {"next_upstream": ()},
        502,
        {},
    ),
    Row(
        "tries-2-of-3-pods",
        f"{NGINX}_tries; {E2E}",
        ["status:503", "status:503", "status:503"],
        {"next_upstream": ("http_503",), "next_upstream_tries": 2},
        503,
        {"status:503": 2},
        served_by="status:503",
    ),
    Row(
        "tries-0-no-limit-but-the-pods",
        f"{NGINX}_tries: 0 turns off this limitation",
        ["status:503"] * 4,
        {"next_upstream": ("http_503",), "next_upstream_tries": 0},
        503,
        {"status:503": 4},
        served_by="status:503",
    ),
    Row(
        "tries-default-is-the-flag",
        "ingress-nginx default proxy-next-upstream-tries 3 (--upstream-max-attempts 3)",
        ["status:503"] * 4,
        {"next_upstream": ("http_503",)},
        503,
        {"status:503": 3},
        served_by="status:503",
    ),
    Row(
        "timeout-goes-to-the-other-pod",
        f"{NGINX}: timeout while reading the response header",
        ["hang", "ok"],
        {"next_upstream": ("timeout",), "read_timeout": 0.3},
        200,
        {"ok": 2},
        requests=2,
        served_by="ok",
    ),
    Row(
        "timeout-not-listed-504",
        f"{NGINX}: conditions not listed end the request",
        ["hang", "hang"],
        {"next_upstream": ("error",), "read_timeout": 0.3},
        504,
        {"hang": 1},
    ),
    Row(
        "timeout-all-tried-504",
        f"{NGINX}: timeout; nginx answers 504 for a timeout",
        ["hang", "hang"],
        {"next_upstream": ("timeout",), "read_timeout": 0.3},
        504,
        {"hang": 2},
    ),
    Row(
        "invalid_header-goes-to-the-other-pod",
        f"{NGINX}: invalid_header",
        ["bad", "ok"],
        {"next_upstream": ("invalid_header",)},
        200,
        {"ok": 2},
        requests=2,
        served_by="ok",
    ),
    Row(
        "invalid_header-not-listed-502",
        f"{NGINX}: conditions not listed end the request",
        ["bad", "bad"],
        {"next_upstream": ("error", "timeout")},
        502,
        {"bad": 1},
    ),
    Row(
        "head-too-large-is-invalid_header",
        "nginx proxy_buffer_size: 'upstream sent too big header' is invalid_header",
        ["head:6000", "ok"],
        {"next_upstream": ("invalid_header",), "response_head_limit": 4096},
        200,
        {"ok": 2},
        requests=2,
        served_by="ok",
    ),
    Row(
        "tries-and-timeout-alone-take-error-timeout",
        'ingress-nginx default proxy-next-upstream "error timeout"',
        ["close", "ok"],
        {"next_upstream": ("error", "timeout"), "next_upstream_tries": 2},
        200,
        {"ok": 2},
        requests=2,
        served_by="ok",
    ),
]


async def _pods(modes: list[str]) -> list[Any]:
    pods: list[Any] = []
    for i, mode in enumerate(modes):
        host = f"127.0.0.{20 + i}"
        if mode == "dead":
            pods.append((mode, host, free_port(host)))
        else:
            pods.append(await ScriptedPod(host, mode).start())
    return pods


def _endpoints(pods: list[Any]) -> list[tuple[str, int]]:
    return [(p[1], p[2]) if isinstance(p, tuple) else (p.host, p.port) for p in pods]


async def _stop(pods: list[Any]) -> None:
    for pod in pods:
        if isinstance(pod, ScriptedPod):
            await pod.stop()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_next_upstream(row: Row) -> None:
    pods = await _pods(row.modes)
    options = RouteOptions(**row.options)
    proxy = await start_proxy(
        snapshot({"ns/svc/80": _endpoints(pods)}, options=options), **row.settings
    )
    try:
        for _ in range(row.requests):
            client = await Client.connect(proxy.http_port)
            try:
                resp = await client.request(row.method, "/", body=row.body)
            finally:
                await client.close()
            assert resp.status == row.expect, resp.body
            if row.served_by is not None:
                by = [p for p in pods if isinstance(p, ScriptedPod) and p.mode == row.served_by]
                assert resp.header("X-Pod") in {p.host for p in by}
            else:
                assert resp.header("Server") == "portico"  # a local answer
        got: dict[str, int] = {}
        for pod in pods:
            if isinstance(pod, ScriptedPod):
                got[pod.mode] = got.get(pod.mode, 0) + len(pod.requests)
        assert {mode: got.get(mode, 0) for mode in row.attempts} == row.attempts
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


async def test_mixed_pods_every_request_served_and_the_failing_pod_tried() -> None:
    """nginx proxy_next_upstream http_503 with round robin: over four requests the failing
    pod is tried (and skipped) while every client gets the good pod's answer, each retry on a
    pod not tried yet (it never returns to the failing pod within one request)."""
    pods = await _pods(["status:503", "ok"])
    options = RouteOptions(next_upstream=("http_503",))
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        for _ in range(4):
            client = await Client.connect(proxy.http_port)
            try:
                assert (await client.request("GET", "/")).status == 200
            finally:
                await client.close()
        failing, good = pods
        assert len(good.requests) == 4
        assert 1 <= len(failing.requests) <= 4
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


async def test_next_upstream_timeout_stops_new_attempts() -> None:
    """nginx proxy_next_upstream_timeout (ingress-nginx e2e "should build proxy next
    upstream"): with pods that never answer (0.6 s response-head timeout) and no limit on
    tries, a 1 s budget allows the second attempt (at ~0.6 s) but not a third (~1.2 s)."""
    pods = await _pods(["hang"] * 4)
    options = RouteOptions(
        next_upstream=("timeout",),
        next_upstream_tries=0,
        next_upstream_timeout=1.0,
        read_timeout=0.6,
    )
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        client = await Client.connect(proxy.http_port)
        resp = await client.request("GET", "/")
        await client.close()
        assert resp.status == 504
        assert sum(len(p.requests) for p in pods) == 2
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


async def test_nothing_resent_once_the_response_started() -> None:
    """nginx: a request is never passed on once anything was sent to the client: a pod that
    sends a head and part of the body then closes cuts the client off, one attempt only."""
    pods = await _pods(["cut", "cut"])
    options = RouteOptions(next_upstream=("error", "timeout", "invalid_header"))
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(render_request("GET", "/"))
        data = await asyncio.wait_for(client.reader.read(), 5)  # EOF: the proxy closed
        await client.close()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"part")
        assert sum(len(p.requests) for p in pods) == 1
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


BIG = bytes(range(256)) * 400  # 100 KiB: more than the 64 KiB kept for a resend when streamed


@pytest.mark.parametrize(
    ("buffering", "expect"),
    [
        # nginx proxy_request_buffering off: "the request cannot be passed to the next server
        # if nginx already started sending the request body".
        (False, 502),
        # nginx proxy_request_buffering on (ingress-nginx's default): the body is read whole
        # first, and can be sent again.
        (True, 200),
    ],
    ids=["streamed-100k-not-resent", "buffered-100k-resent"],
)
async def test_request_body_resent_only_when_held(buffering: bool, expect: int) -> None:
    pods = await _pods(["close", "ok"])
    options = RouteOptions(next_upstream=("error", "non_idempotent"), request_buffering=buffering)
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    closing, good = pods
    try:
        # Round robin: one of two requests starts on the pod that closes.
        statuses = []
        for _ in range(2):
            client = await Client.connect(proxy.http_port)
            resp = await client.request("POST", "/", body=BIG)
            await client.close()
            statuses.append(resp.status)
            if resp.status == 200:
                assert resp.body == hashlib.sha256(BIG).hexdigest().encode()
        # Every request met the closing pod once at most, and went no further unless resent.
        assert 1 <= len(closing.requests) <= 2
        assert len(good.requests) == statuses.count(200)
        assert sorted(statuses) == sorted([200, expect])
        assert all(n == len(BIG) for _, n in good.requests + closing.requests)
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


async def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("buffering", [False, True], ids=["streamed", "buffered"])
async def test_request_buffering_reads_the_body_before_choosing_a_pod(buffering: bool) -> None:
    """ingress-nginx proxy.go "should turn off proxy-request-buffering" / nginx
    proxy_request_buffering: streamed, the pod has the head while the body is still on its
    way; buffered, no pod sees anything until the body is whole, then it gets all of it."""
    pods = await _pods(["ok"])
    (pod,) = pods
    options = RouteOptions(request_buffering=buffering)
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(render_request("POST", "/", {"Content-Length": str(len(BIG))}) + BIG[:1000])
        if buffering:
            # Another request on the route is answered meanwhile: the proxy is not idle, and
            # still the first request has reached no pod.
            other = await Client.connect(proxy.http_port)
            assert (await other.request("GET", "/")).status == 200
            await other.close()
            assert pod.heads == 1
        else:
            await _wait_for(lambda: pod.heads == 1)
        client.send(BIG[1000:])
        resp = await client.response()
        assert resp.status == 200
        assert resp.body == hashlib.sha256(BIG).hexdigest().encode()
        await client.close()
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


async def test_buffered_body_bounded_by_the_body_limit() -> None:
    """proxy-request-buffering with proxy-body-size: a larger body is refused with 413 before
    any pod is chosen (nginx client_max_body_size)."""
    pods = await _pods(["ok"])
    options = RouteOptions(request_buffering=True, policy=(BodyLimit(50_000),))
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(render_request("POST", "/", {"Transfer-Encoding": "chunked"}))
        client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(BIG), BIG))
        resp = await client.response()
        await client.close()
        assert resp.status == 413
        assert pods[0].heads == 0
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


@pytest.mark.parametrize(
    ("limit", "head", "expect"),
    [
        # nginx proxy_buffer_size (ingress-nginx proxy.go "should turn on proxy-buffering"
        # sets it): a head that does not fit is "upstream sent too big header", 502.
        (4096, 3000, 200),
        (4096, 6000, 502),
        (8192, 6000, 200),
        (1024, 900, 200),  # one read
        (512, 900, 502),  # one read, larger than the limit
        # Without proxy-buffer-size: Portico's 64 KiB bound on a head spanning reads.
        (None, 60_000, 200),
        (None, 70_000, 502),
    ],
)
async def test_response_head_limit(limit: int | None, head: int, expect: int) -> None:
    pods = await _pods([f"head:{head}"])
    options = RouteOptions(response_head_limit=limit)
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        client = await Client.connect(proxy.http_port)
        resp = await client.request("GET", "/")
        await client.close()
        assert resp.status == expect
        if expect == 502:
            assert resp.header("Server") == "portico"
        else:
            assert resp.body == b"ok"
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


async def test_body_past_64k_read_before_the_connection_is_ready_reaches_the_pod() -> None:
    """A body larger than the 64 KiB kept while dialling, read whole before the pod's
    connection is up (no annotation): it all goes out once connected (it used to be dropped
    when the body ended before the connection, and the pod waited for it)."""
    pods = await _pods(["ok"])
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}))
    try:
        client = await Client.connect(proxy.http_port)
        resp = await client.request("POST", "/", body=BIG)
        await client.close()
        assert resp.status == 200
        assert resp.body == hashlib.sha256(BIG).hexdigest().encode()
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)


@pytest.mark.parametrize(
    ("size", "policy"),
    [
        # Read by the proxy in several pieces, some before the exchange begins.
        (256 * 1024, ()),
        # No body limit on the route: past 1 MiB held, the rest is streamed (and still whole).
        (3 * 1024 * 1024 // 2, (BodyLimit(0),)),
    ],
    ids=["256k", "1.5m-unlimited-route"],
)
async def test_buffered_bodies_arrive_whole(size: int, policy: Any) -> None:
    """proxy-request-buffering "on" (ingress-nginx's default): whatever the size and however
    the body arrives, the pod gets all of it."""
    pods = await _pods(["ok"])
    body = bytes(range(256)) * (size // 256)
    options = RouteOptions(request_buffering=True, policy=policy)
    proxy = await start_proxy(snapshot({"ns/svc/80": _endpoints(pods)}, options=options))
    try:
        client = await Client.connect(proxy.http_port)
        resp = await client.request("POST", "/", body=body)
        await client.close()
        assert resp.status == 200
        assert resp.body == hashlib.sha256(body).hexdigest().encode()
    finally:
        await proxy.shutdown(0.5)
        await _stop(pods)
