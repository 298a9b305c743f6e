"""An exchange does not care what its client speaks, and backpressure follows proxy/flow.py.

The exchange is driven here through a `ClientSide` that is not HTTP/1.1 (as an HTTP/2 stream
will be): it must relay the pod's response as a head, body pieces without any HTTP/1.1 framing
and an end, answer locally through the same interface, and pause or resume the client's body
through it. The flow rules are checked on a real upstream connection with a recording
transport.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy import flow
from proxy.clientside import ClientSide
from proxy.config import Backend, Endpoint, PathRule, RouteTable, Snapshot, VirtualHost
from proxy.exchange import Exchange
from proxy.headers import ClientContext, RequestHead, ResponseHead, render_response
from proxy.pacing import Pacer
from proxy.policy import Policy
from proxy.pool import Pool
from proxy.replies import Answer
from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from proxy.steps import ResponseStep
from proxy.upstream import UpstreamProtocol
from tests.fakes import RecordingTransport

HOST = b"stream.test"
POD = Endpoint("127.0.0.2", 18081)


class StreamClient(ClientSide):
    """A client side that records what the exchange asks of it, framing nothing."""

    def __init__(self) -> None:
        self.ctx = ClientContext("127.0.0.1", "https", 443, ())
        self.read_at = 0.0
        self.write_paused = False
        self.metrics_protocol = "HTTP/2.0"  # as an HTTP/2 stream's
        self.events: list[tuple[str, object]] = []
        self.reading_paused = False

    def send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("interim", status))

    def send_head(  # noqa: PLR0917 (the interface's signature)
        self,
        status: int,
        parts: list[bytes],
        special: list[tuple[bytes, bytes, bytes]],
        head: RequestHead,
        added: bytes,
        replaced: frozenset[bytes],
    ) -> ResponseHead:
        self.events.append(("head", status))
        head_only = head.method == b"HEAD"
        return render_response(status, parts, special, head_only, True, True, added, replaced)

    def send_body(self, piece: bytes | memoryview) -> None:
        self.events.append(("body", bytes(piece)))

    def send_answer(self, status: int, fields: bytes, close: bool, head_only: bool) -> bool:
        self.events.append(("answer", status))
        return not close

    def finish(self, exchange: object, reusable: bool, now: float) -> None:
        self.events.append(("finish", reusable))

    def upgrade(
        self,
        exchange: object,
        headers: list[tuple[bytes, bytes]],
        rest: bytes,
        upstream: asyncio.Transport,
    ) -> None:
        self.events.append(("upgrade", rest))

    def abort(self) -> None:
        self.events.append(("abort", None))

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False


def _proxy(
    loop: asyncio.AbstractEventLoop,
) -> tuple[ProxyServer, UpstreamProtocol, RecordingTransport]:
    rule = PathRule("/", "prefix", "ns/pod/80", "ns/stream", "ns/pod", 80, "Prefix")
    snapshot = Snapshot(
        RouteTable((VirtualHost(HOST.decode(), (rule,)),)),
        (Backend("ns/pod/80", (POD,)),),
        version=1,
    )
    server = ProxyServer(ProxySettings(access_log=False))
    server.use_loop(loop)
    server.apply(snapshot)
    conn = UpstreamProtocol(server.pool, loop, POD, (POD.address, POD.port), Pool.key(POD, None))
    transport = RecordingTransport((POD.address, POD.port))
    conn.connection_made(transport)  # type: ignore[arg-type]
    server.pool.release(conn)
    return server, conn, transport


def _open(
    server: ProxyServer, client: ClientSide, method: bytes = b"GET", fields: bytes = b""
) -> Exchange:
    parts = [b"", b" ", b"", b""]
    special = [(b"host", HOST)]
    for line in fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            special.append((name.lower(), value))
    return server.routing.open_exchange(client, method, b"/x", "1.1", parts, special)


@pytest.mark.parametrize(
    ("response", "events"),
    [
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
            [("head", 200), ("body", b"hello"), ("finish", True)],
            id="content-length",
        ),
        pytest.param(
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                b"2\r\nde\r\n0\r\n\r\n",
            ],
            [("head", 200), ("body", b"abc"), ("body", b"de"), ("finish", True)],
            id="chunked-from-the-pod-unframed",
        ),
        pytest.param(
            [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
            [("interim", 103), ("head", 204), ("finish", True)],
            id="interim-then-no-body",
        ),
    ],
)
async def test_the_response_reaches_any_client_side(
    response: list[bytes], events: list[tuple[str, object]]
) -> None:
    server, conn, pod = _proxy(asyncio.get_running_loop())
    client = StreamClient()
    exchange = _open(server, client)
    exchange.begin()
    assert pod.data.startswith(b"GET /x HTTP/1.1\r\nHost: stream.test\r\n")
    for piece in response:
        conn.data_received(piece)
    assert client.events == events
    assert exchange.finished and server.pool.idle_count() == 1  # the connection is pooled again
    # The request metrics are labelled with the client side's protocol (issue 19 item 7).
    protocols = {key[6] for key in server.telemetry.metrics.export().series}
    assert protocols == {"HTTP/2.0"}


async def test_local_answers_go_through_the_client_side() -> None:
    server, _, _ = _proxy(asyncio.get_running_loop())
    client = StreamClient()
    parts = [b"", b" ", b"", b""]
    exchange = server.routing.open_exchange(
        client, b"GET", b"/", "1.1", parts, [(b"host", b"elsewhere.test")]
    )
    exchange.begin()
    assert client.events == [("answer", 404), ("finish", True)]


async def test_backpressure_rules() -> None:
    """proxy/flow.py, rule by rule, on a real upstream connection."""
    loop = asyncio.get_running_loop()
    server, conn, pod = _proxy(loop)
    client = StreamClient()
    # A client that does not read when the connection is attached: the response waits, untimed.
    client.write_paused = True
    exchange = _open(server, client, b"POST", b"Content-Length: 10\r\n")
    exchange.begin()
    assert not pod.reading and conn.deadline == 0.0
    # It reads again: so does the connection, with a fresh read deadline.
    client.write_paused = False
    flow.client_drained(conn, 100.0, None)
    assert pod.reading and conn.deadline == 100.0 + server.settings.upstream_read_timeout
    flow.client_stalled(conn)
    assert not pod.reading and conn.deadline == 0.0
    # A response paced by limit-rate and ahead of its schedule stays paused when the client
    # drains: the pacer's timer resumes it.
    pacer = Pacer(loop, client, conn, 1024, 0, loop.time())
    pacer.body(b"x" * 4096)
    assert pacer.holding
    flow.client_drained(conn, 100.0, pacer)
    assert not pod.reading
    pacer.stop()
    flow.client_drained(conn, 100.0, pacer)
    # The pod does not take the body: the client's body waits, the pod is timed as a send.
    conn.pause_writing()
    assert client.reading_paused
    assert conn.deadline == pytest.approx(loop.time() + server.settings.upstream_send_timeout)
    conn.resume_writing()
    assert not client.reading_paused
    assert conn.deadline == pytest.approx(loop.time() + server.settings.upstream_read_timeout)


async def test_a_body_waiting_for_a_connection_pauses_the_client_past_the_limit() -> None:
    server, _, _ = _proxy(asyncio.get_running_loop())
    server.pool.close()  # no idle connection: the exchange dials, the body waits meanwhile
    client = StreamClient()
    exchange = _open(server, client, b"POST", b"Content-Length: %d\r\n" % (2 * flow.BUFFER_LIMIT))
    exchange.begin()
    assert exchange.conn is None and exchange.connect_task is not None
    exchange.request_body(b"x" * flow.BUFFER_LIMIT)
    assert not client.reading_paused and exchange.replayable
    exchange.request_body(b"x")
    assert client.reading_paused and not exchange.replayable
    exchange.client_lost()


class EchoOrigin(ResponseStep):
    """A response step whose field depends on the request (as CORS's will)."""

    def __init__(self) -> None:
        super().__init__(dynamic=True)

    def response(self, head: RequestHead | None, status: int) -> bytes:
        return b"X-Echo: %s %d\r\n" % (head.target if head is not None else b"-", status)


async def test_response_steps_run_for_pod_responses_and_local_answers() -> None:
    server, conn, _ = _proxy(asyncio.get_running_loop())
    fixed = ResponseStep(b"X-Fixed: 1\r\n")
    policy = Policy(response=(fixed, EchoOrigin()))
    assert policy.added == b"X-Fixed: 1\r\n" and len(policy.response) == 1
    heads: list[bytes] = []
    answers: list[bytes] = []

    class Recording(StreamClient):
        def send_head(  # noqa: PLR0917 (the interface's signature)
            self,
            status: int,
            parts: list[bytes],
            special: list[tuple[bytes, bytes, bytes]],
            head: RequestHead,
            added: bytes,
            replaced: frozenset[bytes],
        ) -> ResponseHead:
            response = super().send_head(status, parts, special, head, added, replaced)
            heads.append(response.data)
            return response

        def send_answer(self, status: int, fields: bytes, close: bool, head_only: bool) -> bool:
            answers.append(fields)
            return super().send_answer(status, fields, close, head_only)

    forwarded = _open(server, Recording())
    forwarded.policy = policy
    forwarded.begin()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert b"X-Fixed: 1\r\nX-Echo: /x 200\r\n" in heads[0]
    answered = _open(server, Recording())
    answered.policy = policy
    answered.answer = Answer(403, "Denied", b"X-Own: 1\r\n")
    answered.begin()
    assert answers == [b"X-Own: 1\r\nX-Fixed: 1\r\nX-Echo: /x 403\r\n"]


def test_a_response_step_replaces_only_fields_it_can() -> None:
    with pytest.raises(ValueError, match="can only replace"):
        Policy(response=(ResponseStep(b"Connection: x\r\n", frozenset((b"connection",))),))
