"""Request smuggling and malformed-input cases against a real ProxyServer over real sockets.

Every hostile case is a raw byte string sent on a fresh client connection. The proxy must answer
with the expected status, close the connection, and forward NOTHING: a recording backend on
127.0.0.2 keeps every byte it receives, and after each case a sentinel request proves the proxy
still works and that the sentinel is the only thing that ever reached the backend.

Positive controls check that well-formed bodies (Content-Length and chunked) arrive at the
backend byte-correct with a single framing.

References: RFC 9112 (HTTP/1.1 message syntax), RFC 9110 (semantics), and the published
request-smuggling research (Linhart et al. 2005; Kettle, "HTTP Desync Attacks" 2019).
Where the RFCs allow more than one behaviour, the case names the choice Portico makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from proxy.config import (
    Backend,
    Endpoint,
    PathRule,
    RouteTable,
    Snapshot,
    VirtualHost,
)
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

pytestmark = pytest.mark.timeout(30)

BACKEND_IP = "127.0.0.2"
HOST = b"Host: x.example\r\n"
CONVERSATION_TIMEOUT = 3.0


# ---- the recording backend ---------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header_values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


class _RecorderConnection(asyncio.Protocol):
    """Records every byte, parses requests leniently enough to answer well-formed ones."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.raw = bytearray()
        recorder.connections.append(self.raw)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: Request | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.recorder.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.current = Request(
            method=self.parser.get_method().decode(),
            target=self.url.decode("latin-1"),
            version=self.parser.get_http_version(),
            headers=self.headers,
        )

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None and self.transport is not None
        self.recorder.requests.append(self.current)
        reply = b"ok " + self.current.target.encode("latin-1")
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(reply), reply)
        )


class Recorder:
    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.requests: list[Request] = []
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def received(self) -> list[bytes]:
        return [bytes(c) for c in self.connections if c]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _RecorderConnection(self), BACKEND_IP, 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for transport in self.transports:
                transport.close()
            await self.server.wait_closed()


# ---- proxy set-up ------------------------------------------------------------------------------


def make_snapshot(backend_port: int) -> Snapshot:
    """Catch-all host to the recorder; other.example to a backend with no endpoints (503)."""
    pods = Backend("ns/pods/80", (Endpoint(BACKEND_IP, backend_port),))
    empty = Backend("ns/empty/80", ())

    def rule(key: str) -> PathRule:
        return PathRule("/", "prefix", key, "ns/ing", key.rsplit("/", 1)[0], 80, "Prefix")

    return Snapshot(
        routes=RouteTable(
            virtual_hosts=(
                VirtualHost("", (rule(pods.key),)),
                VirtualHost("other.example", (rule(empty.key),)),
            )
        ),
        backends=(empty, pods),
        version=1,
    )


DEFAULT_SETTINGS = ProxySettings(
    bind_address="127.0.0.1", http_port=0, https_port=0, access_log=False
)
LIMITS_SETTINGS = ProxySettings(
    bind_address="127.0.0.1",
    http_port=0,
    https_port=0,
    max_header_bytes=4096,
    max_headers=20,
    max_body_bytes=1024,
    access_log=False,
)


@dataclass
class Stack:
    recorder: Recorder
    proxy: ProxyServer

    @property
    def port(self) -> int:
        return self.proxy.http_port


async def start_stack(settings: ProxySettings) -> Stack:
    recorder = Recorder()
    await recorder.start()
    proxy = ProxyServer(settings)
    proxy.apply(make_snapshot(recorder.port))
    await proxy.start(host="127.0.0.1", http_port=0)
    return Stack(recorder, proxy)


async def stop_stack(stack: Stack) -> None:
    await stack.proxy.shutdown(drain_timeout=1.0)
    await stack.recorder.close()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await start_stack(DEFAULT_SETTINGS)
    yield s
    await stop_stack(s)


@pytest.fixture
async def limits_stack() -> AsyncIterator[Stack]:
    s = await start_stack(LIMITS_SETTINGS)
    yield s
    await stop_stack(s)


# ---- client side -------------------------------------------------------------------------------


@dataclass
class Conversation:
    raw: bytes = b""
    closed: bool = False  # the proxy closed (FIN or RST) within the bound
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    complete: int = 0  # responses read to their end


class _ResponseCollector:
    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.conversation.statuses.append(self.parser.get_status_code())
        self.conversation.bodies.append(b"")

    def on_body(self, body: bytes) -> None:
        self.conversation.bodies[-1] += body

    def on_message_complete(self) -> None:
        self.conversation.complete += 1


async def converse(
    port: int,
    data: bytes,
    *,
    responses: int | None = None,
    timeout: float = CONVERSATION_TIMEOUT,
    half_close: bool = False,
) -> Conversation:
    """Send `data` on a fresh connection (then half-close if asked); read until the proxy
    closes, `responses` complete responses have arrived, or `timeout` passes."""
    loop = asyncio.get_running_loop()
    conversation = Conversation()
    collector = _ResponseCollector(conversation)
    received = bytearray()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        # The proxy may reject early and close while we still send; its answer stays readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await loop.sock_sendall(sock, data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        deadline = loop.time() + timeout
        while responses is None or conversation.complete < responses:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), remaining)
            except TimeoutError:
                break
            except ConnectionResetError:
                conversation.closed = True
                break
            if not chunk:
                conversation.closed = True
                break
            received += chunk
            collector.parser.feed_data(chunk)
    finally:
        sock.close()
    conversation.raw = bytes(received)
    return conversation


SENTINEL = b"GET /__sentinel HTTP/1.1\r\nHost: x.example\r\n\r\n"


async def assert_only_sentinel_reaches_backend(stack: Stack) -> None:
    """The proxy still serves, and the sentinel is the only request the backend ever saw."""
    # One loop turn for anything the proxy might have forwarded before answering the client.
    await asyncio.sleep(0.05)
    conv = await converse(stack.port, SENTINEL, responses=1)
    assert conv.statuses[:1] == [200], f"proxy no longer serves: {conv.raw!r}"
    assert [r.target for r in stack.recorder.requests] == ["/__sentinel"]
    received = stack.recorder.received
    assert len(received) == 1, f"backend received extra bytes: {received!r}"
    assert received[0].startswith(b"GET /__sentinel ")
    assert received[0].count(b"\r\n\r\n") == 1 and received[0].endswith(b"\r\n\r\n"), received


# ---- cases the proxy gets wrong today ----------------------------------------------------------
# Never weaken a case to make it pass: list it here with what happens, so it gets fixed. The
# xfail is strict, so a fix turns the case into a failure until its entry is removed.

KNOWN_PROXY_BUGS: dict[str, str] = {}


def params(cases: list[Any]) -> list[Any]:
    """pytest params named after each case, marked xfail(strict) when listed as a known bug."""
    out = []
    for c in cases:
        marks = []
        if c.name in KNOWN_PROXY_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_PROXY_BUGS[c.name]))
        out.append(pytest.param(c, id=c.name, marks=marks))
    return out


# ---- hostile cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    # Acceptable status codes; one unless the RFCs leave a free choice. 0: closing without any
    # answer is acceptable.
    statuses: frozenset[int]
    why: str
    must_close: bool = True


def case(name: str, data: bytes, status: int | tuple[int, ...], why: str, **kw: bool) -> Case:
    statuses = frozenset(status if isinstance(status, tuple) else (status,))
    return Case(name, data, statuses, why, **kw)


def post(headers: bytes, body: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST / " + version + b"\r\n" + HOST + headers + b"\r\n" + body


SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: x.example\r\n\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"

FRAMING_CASES = [
    # -- CL.TE / TE.CL: both framings present (RFC 9112 §6.3 item 3: "ought to be handled as an
    # error"; a proxy forwarding it would desync a backend that prefers the other header).
    case(
        "cl_te",
        post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
        400,
        "RFC 9112 §6.3: CL and TE together",
    ),
    case(
        "te_cl",
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
        400,
        "RFC 9112 §6.3: TE and CL together",
    ),
    case(
        "cl_te_smuggled_request",
        post(
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(SMUGGLED)),
            b"0\r\n\r\n" + SMUGGLED,
        ),
        400,
        "CL.TE carrying a whole second request",
    ),
    # -- TE.TE obfuscation: one hop sees chunked, the other does not.
    case(
        "te_xchunked",
        post(b"Transfer-Encoding: xchunked\r\n", CHUNKED_HELLO),
        400,
        "RFC 9112 §6.3 item 4: chunked is not the final coding",
    ),
    case(
        "te_xchunked_with_cl",
        post(b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", b"hello"),
        400,
        "RFC 9112 §6.3 item 4, plus CL and TE together",
    ),
    case(
        "te_space_before_colon",
        post(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
        "RFC 9112 §5.1: whitespace between field name and colon MUST be rejected with 400",
    ),
    case(
        "te_chunked_identity",
        post(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_HELLO),
        400,
        "RFC 9112 §6.3 item 4: chunked is not the final coding",
    ),
    case(
        "te_identity_with_cl",
        post(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello"),
        400,
        "RFC 9112 §6.3 item 4: TE present and chunked not final",
    ),
    case(
        "te_vertical_tab",
        post(b"Transfer-Encoding:\x0bchunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
        "RFC 9110 §5.5: VT is a CTL, not allowed in a field value",
    ),
    case(
        "te_form_feed",
        post(b"Transfer-Encoding:\x0cchunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
        "RFC 9110 §5.5: FF is a CTL, not allowed in a field value",
    ),
    case(
        "te_tab_with_cl",
        post(b"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
        "HTAB is valid OWS, so this is chunked and CL together",
    ),
    case(
        "te_duplicate_chunked",
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO),
        400,
        "RFC 9112 §7: chunked MUST NOT be applied more than once",
    ),
    case(
        "te_duplicate_chunked_then_identity",
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", CHUNKED_HELLO),
        400,
        "RFC 9112 §6.3 item 4: combined value 'chunked, identity'",
    ),
    case(
        "te_quoted",
        post(b'Transfer-Encoding: "chunked"\r\n', CHUNKED_HELLO),
        400,
        "a quoted-string is not the chunked token",
    ),
    case(
        "te_nul",
        post(b"Transfer-Encoding: chunked\x00\r\n", CHUNKED_HELLO),
        400,
        "RFC 9110 §5.5: NUL MUST be rejected",
    ),
    case(
        "te_on_http10",
        post(b"Transfer-Encoding: chunked\r\n", CHUNKED_HELLO, b"HTTP/1.0"),
        400,
        "RFC 9112 §6.1: TE on HTTP/1.0 MUST be treated as faulty framing",
    ),
    case(
        "te_obs_fold_with_cl",
        post(b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
        400,
        "RFC 9112 §5.2: reject obs-fold, or unfold it into CL and TE together: 400 either way",
    ),
    case(
        "te_line_after_request_line",
        b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\n"
        + HOST
        + b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        "RFC 9112 §2.2: whitespace before the first field: Portico rejects (the other choice is "
        "to drop the line)",
    ),
    # -- Content-Length values (RFC 9110 §8.6: Content-Length = 1*DIGIT).
    case("cl_plus", post(b"Content-Length: +5\r\n", b"hello"), 400, "not 1*DIGIT"),
    case("cl_hex", post(b"Content-Length: 0x5\r\n", b"hello"), 400, "not 1*DIGIT"),
    case("cl_negative", post(b"Content-Length: -1\r\n", b"hello"), 400, "not 1*DIGIT"),
    case("cl_inner_space", post(b"Content-Length: 5 5\r\n", b"hello"), 400, "not 1*DIGIT"),
    case("cl_trailing_letter", post(b"Content-Length: 5a\r\n", b"hello"), 400, "not 1*DIGIT"),
    case("cl_empty", post(b"Content-Length: \r\n", b"hello"), 400, "not 1*DIGIT"),
    case(
        "cl_list_differing",
        post(b"Content-Length: 5, 6\r\n", b"hello!"),
        400,
        "RFC 9112 §6.3 item 5: differing list values MUST be rejected",
    ),
    case(
        "cl_two_differing",
        post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        400,
        "RFC 9112 §6.3 item 5: differing field lines MUST be rejected",
    ),
    case(
        "cl_overflow",
        post(b"Content-Length: 18446744073709551621\r\n", b"hello"),
        400,
        "2**64 + 5 wraps to 5 in a 64-bit parser",
    ),
    case(
        "cl_huge",
        post(b"Content-Length: " + b"9" * 60 + b"\r\n", b"hello"),
        400,
        "far beyond any integer type",
    ),
    # -- chunked framing (RFC 9112 §7.1: chunk-size = 1*HEXDIG, lines end with CRLF).
    case(
        "chunk_size_overflow",
        post(b"Transfer-Encoding: chunked\r\n", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        400,
        "2**64 + 5 wraps to 5 in a 64-bit parser",
    ),
    case(
        "chunk_size_0x",
        post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"),
        400,
        "not 1*HEXDIG",
    ),
    case(
        "chunk_size_non_hex",
        post(b"Transfer-Encoding: chunked\r\n", b"5g\r\nhello\r\n0\r\n\r\n"),
        400,
        "not 1*HEXDIG",
    ),
    case(
        "chunk_size_negative",
        post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
        400,
        "not 1*HEXDIG",
    ),
    case(
        "chunk_size_leading_space",
        post(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n"),
        400,
        "not 1*HEXDIG",
    ),
    case(
        "chunk_size_bare_lf",
        post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"),
        400,
        "chunk-size line must end in CRLF (Portico does not take bare LF in framing)",
    ),
    case(
        "chunk_ext_bare_lf",
        post(b"Transfer-Encoding: chunked\r\n", b"5;ext\nhello\r\n0\r\n\r\n"),
        400,
        "chunk-ext ended by a bare LF (TERM.EXT desync)",
    ),
    case(
        "chunk_ext_control_char",
        post(b"Transfer-Encoding: chunked\r\n", b"5;e\x01xt\r\nhello\r\n0\r\n\r\n"),
        400,
        "chunk-ext-name is a token",
    ),
    case(
        "chunk_ext_bare_cr",
        post(b"Transfer-Encoding: chunked\r\n", b"5;ext\rx\r\nhello\r\n0\r\n\r\n"),
        400,
        "bare CR inside chunk-ext",
    ),
    case(
        "chunk_missing_crlf_after_data",
        post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"),
        400,
        "chunk-data must be followed by CRLF",
    ),
    case(
        "chunk_data_longer_than_size",
        post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"),
        400,
        "chunk-data must be followed by CRLF",
    ),
    case(
        "chunk_data_bare_lf",
        post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n"),
        400,
        "chunk-data must be followed by CRLF, not LF",
    ),
    case(
        "chunk_smuggled_after_last_chunk_lf",
        post(b"Transfer-Encoding: chunked\r\n", b"0\n\r\n" + SMUGGLED),
        400,
        "last-chunk line ended by a bare LF",
    ),
]

SYNTAX_CASES = [
    # -- field syntax (RFC 9112 §5, RFC 9110 §5.5).
    case(
        "host_space_before_colon",
        b"GET / HTTP/1.1\r\nHost : x.example\r\n\r\n",
        400,
        "RFC 9112 §5.1: MUST reject with 400",
    ),
    case(
        "obs_fold",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-Folded: a\r\n b\r\n\r\n",
        400,
        "RFC 9112 §5.2: reject or unfold; Portico rejects",
    ),
    case(
        "nul_in_field_value",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n",
        400,
        "RFC 9110 §5.5: NUL MUST be rejected",
    ),
    case(
        "bare_cr_in_field_value",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n",
        400,
        "RFC 9112 §2.2: reject or replace by SP; Portico rejects",
    ),
    case(
        "bare_lf_ends_field_line",
        b"GET / HTTP/1.1\r\nX-A: a\n" + HOST + b"\r\n",
        400,
        "Portico does not take bare LF as a line end (RFC 9112 §2.2 MAY)",
    ),
    case(
        "field_name_space",
        b"GET / HTTP/1.1\r\n" + HOST + b"X Foo: a\r\n\r\n",
        400,
        "field-name is a token",
    ),
    case(
        "field_name_paren",
        b"GET / HTTP/1.1\r\n" + HOST + b"X(Foo): a\r\n\r\n",
        400,
        "field-name is a token",
    ),
    case(
        "field_name_del",
        b"GET / HTTP/1.1\r\n" + HOST + b"X\x7fFoo: a\r\n\r\n",
        400,
        "field-name is a token",
    ),
    case(
        "field_name_non_ascii",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-F\xc3\xb6o: a\r\n\r\n",
        400,
        "field-name is a token",
    ),
    case(
        "field_name_empty",
        b"GET / HTTP/1.1\r\n" + HOST + b": a\r\n\r\n",
        400,
        "field-name is 1*tchar",
    ),
    case(
        "field_line_without_colon",
        b"GET / HTTP/1.1\r\n" + HOST + b"XFoo\r\n\r\n",
        400,
        "field-line needs a colon",
    ),
    # -- request line (RFC 9112 §3).
    case(
        "nul_in_request_line",
        b"GET /a\x00b HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "NUL MUST be rejected",
    ),
    case(
        "bare_cr_in_request_line",
        b"GET /a\rb HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "bare CR in the request line",
    ),
    case(
        "bare_lf_ends_request_line",
        b"GET / HTTP/1.1\n" + HOST + b"\r\n",
        400,
        "Portico does not take bare LF as a line end (RFC 9112 §2.2 MAY)",
    ),
    case(
        "method_paren",
        b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "method is a token",
    ),
    case("method_at", b"G@T / HTTP/1.1\r\n" + HOST + b"\r\n", 400, "method is a token"),
    case("method_nul", b"GE\x00T / HTTP/1.1\r\n" + HOST + b"\r\n", 400, "method is a token"),
    case(
        "leading_space_before_method",
        b" GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "only empty lines may precede the request line",
    ),
    case(
        "connect",
        b"CONNECT x.example:443 HTTP/1.1\r\nHost: x.example:443\r\n\r\n",
        (400, 405, 501),
        "a reverse proxy opens no tunnels; RFC 9110 lets it say 405 or 501, parsers say 400",
    ),
    case(
        "target_with_space",
        b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "RFC 9112 §3.2: no whitespace in request-target",
    ),
    case(
        "target_with_fragment",
        b"GET /a#frag HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "RFC 9112 §3.2.1: origin-form has no fragment",
    ),
    case(
        "target_relative",
        b"GET a/b HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "RFC 9112 §3.2: origin-form starts with /",
    ),
    case(
        "target_asterisk_on_get",
        b"GET * HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "RFC 9112 §3.2.4: asterisk-form is only for OPTIONS",
    ),
    # -- Host (RFC 9112 §3.2: MUST respond 400 to a missing, repeated or invalid Host).
    case("host_missing", b"GET / HTTP/1.1\r\n\r\n", 400, "RFC 9112 §3.2"),
    case(
        "host_duplicate",
        b"GET / HTTP/1.1\r\nHost: x.example\r\nHost: other.example\r\n\r\n",
        400,
        "RFC 9112 §3.2",
    ),
    case(
        "host_duplicate_same_value",
        b"GET / HTTP/1.1\r\n" + HOST + HOST + b"\r\n",
        400,
        "RFC 9112 §3.2: more than one Host field line",
    ),
    case(
        "host_invalid",
        b"GET / HTTP/1.1\r\nHost: x.exa mple\r\n\r\n",
        400,
        "RFC 9112 §3.2: invalid field value",
    ),
    # -- absolute-form authority (RFC 9112 §3.2.2: it replaces Host, so it must be a valid
    # host[:port], RFC 3986 §3.2: host = IP-literal / IPv4address / reg-name, port = *DIGIT;
    # RFC 9110 §4.2.1: an http URI with an empty host MUST be rejected). The catch-all route
    # would forward every one of these.
    *(
        case(
            f"absolute_form_{name}",
            b"GET http://" + authority + b"/p HTTP/1.1\r\n" + HOST + b"\r\n",
            400,
            f"RFC 9112 §3.2.2, RFC 3986 §3.2: {why}",
        )
        for name, authority, why in [
            ("port_above_65535", b"x.example:65536", "a port is 0-65535 (TCP)"),
            ("port_huge", b"x.example:99999999999999999999", "a port is 0-65535 (TCP)"),
            ("port_4400_digits", b"x.example:" + b"9" * 4400, "a port is 0-65535 (TCP)"),
            ("port_not_numeric", b"x.example:http", "port = *DIGIT"),
            ("port_negative", b"x.example:-80", "port = *DIGIT"),
            ("port_hex", b"x.example:0x50", "port = *DIGIT"),
            ("two_ports", b"x.example:80:81", "one optional :port"),
            ("empty_host_with_port", b":80", "RFC 9110 §4.2.1: an empty host is invalid"),
            ("userinfo", b"user@x.example", "RFC 9110 §4.2.4: no userinfo in http URIs"),
            ("userinfo_password", b"user:pw@x.example", "RFC 9110 §4.2.4: no userinfo"),
            ("empty_userinfo", b"@x.example", "RFC 9110 §4.2.4: no userinfo in http URIs"),
            ("backslash", b"x.example\\y", "reg-name has no \\"),
            ("comma", b"x.example,y.example", "a list is never one host (as in Host)"),
            ("lone_percent", b"x%zz.example", "reg-name: % starts pct-encoded HEXDIG HEXDIG"),
            ("ipv6_unclosed", b"[::1", "IP-literal = [ IPv6address ]"),
            ("ipv6_not_an_address", b"[::g]", "IP-literal = [ IPv6address ]"),
            ("ipv6_empty", b"[]", "IP-literal = [ IPv6address ]"),
            ("ipv6_unbracketed", b"::1", "an IPv6 address only as IP-literal"),
            ("ipv6_junk_after", b"[::1]x", "IP-literal [ : port ]"),
            ("ipv6_zone", b"[fe80::1%25eth0]", "RFC 6874 zones are not for HTTP (RFC 9110)"),
        ]
    ),
    case(
        "absolute_form_empty_host",
        b"GET http:///p HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "RFC 9110 §4.2.1: an http URI with an empty host MUST be rejected",
    ),
    case(
        "absolute_form_empty_host_before_query",
        b"GET http://?q HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "RFC 9110 §4.2.1: an http URI with an empty host MUST be rejected",
    ),
    case(
        "absolute_form_without_host_field",
        b"GET http://x.example/p HTTP/1.1\r\n\r\n",
        400,
        "RFC 9112 §3.2: 400 for any HTTP/1.1 request without Host, absolute-form or not",
    ),
    case(
        "absolute_form_with_invalid_host_field",
        b"GET http://x.example/p HTTP/1.1\r\nHost: x.exa mple\r\n\r\n",
        400,
        "RFC 9112 §3.2: 400 for an invalid Host value, even though the authority wins",
    ),
    case(
        "absolute_form_other_host",
        b"GET http://other.example/ HTTP/1.1\r\nHost: x.example\r\n\r\n",
        (400, 503),
        "RFC 9112 §3.2.2: the target's authority wins over Host, so this routes to "
        "other.example (no endpoints: 503), never to the x.example backend; rejecting is fine",
        must_close=False,
    ),
    # -- versions (RFC 9112 §2.3; RFC 9110 §15.6.6: 505 for an unsupported major version).
    case(
        "http2_preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        (400, 505),
        "HTTP/2 prior knowledge on the HTTP/1 port",
    ),
    case(
        "http_0_9",
        b"GET /\r\n\r\n",
        (0, 400, 505),
        "HTTP/0.9 is not served (it could not carry a status line anyway)",
    ),
    case(
        "http_2_0_version",
        b"GET / HTTP/2.0\r\n" + HOST + b"\r\n",
        505,
        "major version 2 over HTTP/1 framing",
    ),
    case(
        "http_3_0_version",
        b"GET / HTTP/3.0\r\n" + HOST + b"\r\n",
        505,
        "major version 3 over HTTP/1 framing",
    ),
    case(
        "http_version_lowercase",
        b"GET / http/1.1\r\n" + HOST + b"\r\n",
        400,
        "HTTP-name is case-sensitive",
    ),
    case(
        "http_version_no_minor",
        b"GET / HTTP/1\r\n" + HOST + b"\r\n",
        400,
        "HTTP-version = HTTP-name / DIGIT . DIGIT",
    ),
    case(
        "http_version_letter",
        b"GET / HTTP/1.x\r\n" + HOST + b"\r\n",
        400,
        "HTTP-version = HTTP-name / DIGIT . DIGIT",
    ),
    case(
        "http_version_two_digits",
        b"GET / HTTP/11.1\r\n" + HOST + b"\r\n",
        400,
        "HTTP-version = HTTP-name / DIGIT . DIGIT",
    ),
    case(
        "http_version_trailing_garbage",
        b"GET / HTTP/1.1x\r\n" + HOST + b"\r\n",
        400,
        "HTTP-version = HTTP-name / DIGIT . DIGIT",
    ),
]


def _check_rejection(c: Case, conv: Conversation) -> None:
    expected = sorted(c.statuses)
    if conv.statuses:
        assert conv.statuses[0] in c.statuses, (
            f"{c.name}: expected {expected}, got {conv.statuses} ({conv.raw[:200]!r})"
        )
        assert len(conv.statuses) == 1, f"{c.name}: more than one response: {conv.statuses}"
    else:
        assert 0 in c.statuses, f"{c.name}: no response, expected {expected} ({conv.raw!r})"
    if c.must_close:
        assert conv.closed, f"{c.name}: the proxy kept the connection open ({conv.raw[:200]!r})"


@pytest.mark.parametrize("c", params(FRAMING_CASES + SYNTAX_CASES))
async def test_rejected_and_nothing_forwarded(stack: Stack, c: Case) -> None:
    conv = await converse(stack.port, c.data)
    _check_rejection(c, conv)
    await assert_only_sentinel_reaches_backend(stack)


async def test_pipelined_smuggling_after_a_good_request(stack: Stack) -> None:
    """A good request, then a CL.TE attempt on the same connection: 200, then 400 and close."""
    good = b"GET /first HTTP/1.1\r\n" + HOST + b"\r\n"
    attack = post(
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(SMUGGLED)),
        b"0\r\n\r\n" + SMUGGLED,
    )
    conv = await converse(stack.port, good + attack)
    assert conv.statuses == [200, 400], conv.raw
    assert conv.closed
    await asyncio.sleep(0.05)
    assert [r.target for r in stack.recorder.requests] == ["/first"]


@dataclass(frozen=True)
class Truncated:
    name: str
    data: bytes


TRUNCATED = [
    Truncated("head", b"GET / HTTP/1.1\r\nHost: x.exa"),
    Truncated("content_length_body", post(b"Content-Length: 10\r\n", b"hello")),
    Truncated("chunk_data", post(b"Transfer-Encoding: chunked\r\n", b"a\r\nhello")),
    Truncated("no_last_chunk", post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n")),
]


@pytest.mark.parametrize("t", params(TRUNCATED))
async def test_eof_mid_request_ends_the_exchange(stack: Stack, t: Truncated) -> None:
    """A client that half-closes before its request is complete can never complete it: the
    proxy closes at once (well before its 10 s / 60 s client timeouts) and the backend never
    sees a complete request."""
    conv = await converse(stack.port, t.data, half_close=True)
    assert conv.closed, f"still open after EOF: {conv.raw[:200]!r}"
    assert conv.statuses in ([], [400]), conv.raw[:200]
    await asyncio.sleep(0.05)
    assert stack.recorder.requests == []


# ---- limits (RFC 9110 §15.5.14/.15, RFC 6585 §5) -------------------------------------------------

LIMIT_CASES = [
    case(
        "request_line_too_long",
        b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
        "request line beyond max_header_bytes",
    ),
    case(
        "too_many_headers",
        b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-H%d: v\r\n" % i for i in range(30)) + b"\r\n",
        431,
        "more than max_headers fields",
    ),
    case(
        "header_too_large",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"v" * 5000 + b"\r\n\r\n",
        431,
        "head beyond max_header_bytes",
    ),
    case(
        "body_over_limit_content_length",
        post(b"Content-Length: 2000\r\n", b"x" * 2000),
        413,
        "Content-Length beyond max_body_bytes: refuse before forwarding anything",
    ),
]


@pytest.mark.parametrize("c", params(LIMIT_CASES))
async def test_limits(limits_stack: Stack, c: Case) -> None:
    conv = await converse(limits_stack.port, c.data)
    _check_rejection(c, conv)
    await assert_only_sentinel_reaches_backend(limits_stack)


async def test_chunked_body_over_limit(limits_stack: Stack) -> None:
    """A chunked body has no length up front: the proxy may have forwarded the head, but the
    backend must never see a complete request, and the client gets 413."""
    body = b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n"
    conv = await converse(limits_stack.port, post(b"Transfer-Encoding: chunked\r\n", body))
    assert conv.statuses == [413], conv.raw[:200]
    assert conv.closed
    await asyncio.sleep(0.05)
    assert limits_stack.recorder.requests == []


async def test_body_at_the_limit_passes(limits_stack: Stack) -> None:
    body = bytes(range(256)) * 4  # exactly max_body_bytes
    conv = await converse(
        limits_stack.port,
        post(b"Content-Length: 1024\r\nConnection: close\r\n", body),
    )
    assert conv.statuses == [200]
    [request] = limits_stack.recorder.requests
    assert request.body == body


# ---- positive controls ---------------------------------------------------------------------------


def assert_single_framing(request: Request) -> None:
    cl = request.header_values(b"content-length")
    te = request.header_values(b"transfer-encoding")
    assert len(cl) + len(te) == 1, f"forwarded with framing CL={cl} TE={te}"
    if cl:
        assert cl == [b"%d" % len(request.body)]
    else:
        assert [v.lower() for v in te] == [b"chunked"]


@dataclass(frozen=True)
class Good:
    name: str
    data: bytes
    target: str
    body: bytes
    why: str


GOOD_CASES = [
    Good(
        "content_length",
        b"POST /cl?q=1 HTTP/1.1\r\n" + HOST + b"Content-Length: 11\r\n\r\nhello world",
        "/cl?q=1",
        b"hello world",
        "plain Content-Length body",
    ),
    Good(
        "chunked_with_extensions_and_trailer",
        b"POST /chunked HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"5;name=value\r\nhello\r\n1\r\n \r\n"
        + b'5;quoted="a;b"\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n',
        "/chunked",
        b"hello world",
        "RFC 9112 §7.1.1 extensions, §7.1.2 trailer section",
    ),
    Good(
        "chunked_upper_case_hex",
        b"POST /hex HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"A\r\n0123456789\r\n0\r\n\r\n",
        "/hex",
        b"0123456789",
        "HEXDIG includes A-F",
    ),
    Good(
        "te_tab_ows",
        b"POST /tab HTTP/1.1\r\n" + HOST + b"Transfer-Encoding:\tchunked\r\n\r\n" + CHUNKED_HELLO,
        "/tab",
        b"hello",
        "HTAB is OWS",
    ),
    Good(
        "te_upper_case",
        b"POST /upper HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: CHUNKED\r\n\r\n" + CHUNKED_HELLO,
        "/upper",
        b"hello",
        "RFC 9112 §7: transfer-coding names are case-insensitive",
    ),
    Good(
        "cl_with_ows",
        b"POST /ows HTTP/1.1\r\n" + HOST + b"Content-Length:  5 \r\n\r\nhello",
        "/ows",
        b"hello",
        "RFC 9110 §5.5: OWS around a field value is not part of it",
    ),
    Good(
        "http_1_0_with_cl",
        b"POST /ten HTTP/1.0\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
        "/ten",
        b"hello",
        "HTTP/1.0 with Content-Length",
    ),
    Good(
        "http_1_2_as_1_1",
        b"POST /twelve HTTP/1.2\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
        "/twelve",
        b"hello",
        "RFC 9110 §2.5: a higher minor version SHOULD be processed as the highest one known",
    ),
    Good(
        "empty_line_before_request",
        b"\r\nGET /empty-line HTTP/1.1\r\n" + HOST + b"\r\n",
        "/empty-line",
        b"",
        "RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line",
    ),
    Good(
        "absolute_form_uses_its_authority",
        b"GET http://x.example/abs?a=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
        "/abs?a=1",
        b"",
        "RFC 9112 §3.2.2: the authority of an absolute-form target wins over Host",
    ),
]


@pytest.mark.parametrize("g", params(GOOD_CASES))
async def test_well_formed_request_arrives_byte_correct(stack: Stack, g: Good) -> None:
    conv = await converse(stack.port, g.data, responses=1)
    assert conv.statuses == [200], f"{g.name}: {conv.raw[:300]!r}"
    assert conv.bodies[0] == b"ok " + g.target.encode()
    [request] = stack.recorder.requests
    assert request.target == g.target
    assert request.body == g.body
    if g.body:
        assert_single_framing(request)
    else:
        # No body: nothing may suggest one (a stray "Content-Length: 0" is harmless).
        assert request.header_values(b"transfer-encoding") == []
        assert request.header_values(b"content-length") in ([], [b"0"])
    hosts = request.header_values(b"host")
    expected_host = b"x.example"
    assert hosts == [expected_host], f"forwarded Host {hosts}"


# (name, request target, target forwarded, Host forwarded, why): absolute-form targets that are
# valid host[:port] authorities (RFC 9112 §3.2.2, RFC 3986 §3.2) are served, and their authority
# is the Host the pod gets, whatever Host field came with them.
ABSOLUTE_GOOD = [
    ("port", b"http://x.example:8080/p", "/p", b"x.example:8080", "host:port"),
    ("port_65535", b"http://x.example:65535/p", "/p", b"x.example:65535", "the largest port"),
    ("empty_port", b"http://x.example:/p", "/p", b"x.example:", "RFC 3986 §3.2.3: port = *DIGIT"),
    ("ipv4", b"http://127.0.0.9:80/p", "/p", b"127.0.0.9:80", "IPv4address"),
    ("ipv6", b"http://[::1]:80/p", "/p", b"[::1]:80", "IP-literal"),
    ("https_upper_case", b"HTTPS://X.example/p", "/p", b"X.example", "RFC 3986 §3.1, §3.2.2"),
    ("query_only", b"http://x.example?a=1", "/?a=1", b"x.example", "RFC 9112 §3.2.1: path /"),
    ("no_path", b"http://x.example", "/", b"x.example", "RFC 9112 §3.2.1: an empty path is /"),
    ("sub_delims", b"http://a-b_c~d!$&'()*+;=.x/", "/", b"a-b_c~d!$&'()*+;=.x", "reg-name"),
    ("pct_encoded", b"http://x%2Dy.example/", "/", b"x%2Dy.example", "reg-name: pct-encoded"),
]


@pytest.mark.parametrize(
    ("target", "forwarded", "host"),
    [g[1:4] for g in ABSOLUTE_GOOD],
    ids=[g[0] for g in ABSOLUTE_GOOD],
)
async def test_valid_absolute_form_is_served_with_its_authority(
    stack: Stack, target: bytes, forwarded: str, host: bytes
) -> None:
    data = b"GET " + target + b" HTTP/1.1\r\nHost: other.example\r\n\r\n"
    conv = await converse(stack.port, data, responses=1)
    assert conv.statuses == [200], conv.raw[:300]
    [request] = stack.recorder.requests
    assert request.target == forwarded
    assert request.header_values(b"host") == [host]


async def test_large_chunked_body_is_byte_correct(stack: Stack) -> None:
    payload = bytes((i * 7 + i // 251) & 0xFF for i in range(200_000))
    chunks = b""
    for start in range(0, len(payload), 7_919):
        piece = payload[start : start + 7_919]
        chunks += b"%x\r\n" % len(piece) + piece + b"\r\n"
    data = b"PUT /big HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n" + chunks
    conv = await converse(stack.port, data + b"0\r\n\r\n", responses=1)
    assert conv.statuses == [200]
    [request] = stack.recorder.requests
    assert request.method == "PUT"
    assert request.body == payload
    assert_single_framing(request)


async def test_pipelined_requests_keep_their_order_and_framing(stack: Stack) -> None:
    data = (
        b"POST /one HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: 3\r\n\r\nabc"
        + b"POST /two HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\ndef\r\n0\r\n\r\n"
        + b"GET /three HTTP/1.1\r\n"
        + HOST
        + b"Connection: close\r\n\r\n"
    )
    conv = await converse(stack.port, data)
    assert conv.statuses == [200, 200, 200]
    assert conv.bodies == [b"ok /one", b"ok /two", b"ok /three"]
    assert conv.closed
    assert [(r.target, r.body) for r in stack.recorder.requests] == [
        ("/one", b"abc"),
        ("/two", b"def"),
        ("/three", b""),
    ]
    for r in stack.recorder.requests[:2]:
        assert_single_framing(r)
