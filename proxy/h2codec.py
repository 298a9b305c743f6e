"""The HTTP/2 codec of a client connection: the one module that touches the binding.

libnghttp2 (through the PyPI binding `ngh2`, pinned in pyproject.toml; ARCHITECTURE.md, "HTTP/2
codec", says why) does the framing, HPACK, stream states, flow-control accounting and the
protocol's own checks; this module drives it in Portico's terms, so that replacing the binding
(a cffi or C binding of our own) changes this file and nothing else (`lint-imports` keeps every
other module of proxy/ from importing it).

The connection protocol (proxy/h2server.py) feeds the bytes it reads (`feed`); the codec
reports what they meant to its `Handler` (a request's head, body data, trailers, a reset, a
closed stream, a window update, a GOAWAY), one call per event, in order. The protocol submits
responses (`send_headers`, `send_data`, `send_trailers`, `end_stream`), resets, GOAWAYs, and
takes the bytes to write (`output`) when its transport takes writes: while a client does not
read, its SETTINGS and PING acknowledgements queue inside the codec, where libnghttp2's limit
on queued acknowledgements ends the connection (proxy/h2server.py also stops reading such a
client). A GOAWAY libnghttp2 decides on by itself (rapid reset, glitches) is in `output`; until
it is taken, the codec still reports what the client sends.

Flow control: window updates are never automatic. The protocol calls `consume(stream_id, n)`
when the pod side has taken `n` bytes of a stream's request body, so a client can send at most
a window ahead of what the pod took. Response data the client's windows do not admit yet stays
queued in the codec (`queued(stream_id)`); the protocol stops reading the pod past a bound and
resumes on the client's window updates.

The protections, all on here and tested (tests/unit/proxy/test_h2codec.py): HTTP messaging
rules checked before a request is reported (pseudo-header fields, connection-specific fields,
`te` other than `trailers`, `content-length` against the DATA received, CR/LF/NUL and upper case
in fields: RST_STREAM PROTOCOL_ERROR), the RST_STREAM rate limit (rapid reset, CVE-2023-44487),
the glitch limiter (empty DATA and other useless frames), the CONTINUATION limit
(CVE-2024-27316), the queued-acknowledgements limit (SETTINGS and PING floods), at most
`max_settings` entries per SETTINGS frame, the hard header list limits (size and field count:
past them the connection ends; the announced, smaller ones are the protocol's to answer). A
connection-level failure raises `CodecError`, whose `goaway` is the frame to write before
closing.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import ngh2
from mypy_extensions import mypyc_attr

# RFC 9113 §7 error codes, as Portico uses them.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
ENHANCE_YOUR_CALM: Final = 0xB

# The client connection preface (RFC 9113 §3.4): how a cleartext connection is told to be HTTP/2.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a server connection announces and enforces."""

    max_concurrent_streams: int = 128
    # Decoded header list, RFC 9113's size (name + value + 32 per field), as announced
    # (SETTINGS_MAX_HEADER_LIST_SIZE): the connection answers a request past it (431).
    max_header_list_bytes: int = 32 * 1024
    # What the codec keeps of one header block at most, size and field count: past either the
    # connection ends (a block is decoded whole to keep HPACK's state, so it is bounded here).
    hard_header_list_bytes: int = 64 * 1024
    hard_header_fields: int = 200
    # The window each request body stream starts with (SETTINGS_INITIAL_WINDOW_SIZE).
    initial_window: int = 65_535
    # RST_STREAM frames from the client: a burst, then so many per second (libnghttp2's
    # defaults; rapid reset trips past them).
    reset_burst: int = 1000
    reset_rate: int = 33
    # Useless frames (empty DATA without END_STREAM, ...): a burst, then so many per second.
    glitch_burst: int = 10_000
    glitch_rate: int = 330
    # CONTINUATION frames after one HEADERS frame.
    max_continuations: int = 8
    # SETTINGS/PING acknowledgements queued while the client does not read.
    max_queued_acks: int = 1000
    # Entries in one SETTINGS frame.
    max_settings: int = 32


DEFAULT_LIMITS: Final = Limits()


class CodecError(Exception):
    """The connection is over (a protocol violation, a flood, a limit): write `goaway`, close.
    `reason` is a short name for the logs and metrics."""

    def __init__(self, reason: str, code: int, goaway: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.goaway = goaway


@mypyc_attr(allow_interpreted_subclasses=True)
class StreamEvents:
    """What a codec reports of its peer's streams, on either side; called from within `feed`
    (and `output`, for the streams an output closes). The peer is a client sending requests on
    the server side (`Handler`), a pod sending responses on the client side (`UpstreamHandler`)."""

    def data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """A piece of the peer's body (to `consume` once the other side took it)."""
        raise NotImplementedError

    def trailers(self, stream_id: int, headers: Headers) -> None:
        """The peer's trailer fields; its message is complete."""
        raise NotImplementedError

    def reset(self, stream_id: int, code: int) -> None:
        """The peer reset the stream."""
        raise NotImplementedError

    def closed(self, stream_id: int, code: int) -> None:
        """The stream is closed (after a complete exchange, a reset either way, or a stream
        error the codec found: then `code` is not NO_ERROR); the codec forgets it."""
        raise NotImplementedError

    def window_opened(self, stream_id: int) -> None:
        """The peer opened a window (0: the connection's): queued data may leave."""
        raise NotImplementedError

    def goaway(self, last_stream_id: int, code: int) -> None:
        """The peer is going away; streams above `last_stream_id` were not processed."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class Handler(StreamEvents):
    """What a server-side codec reports to (proxy/h2server.py): a client's streams."""

    def request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """A request's head (validated by the codec's HTTP messaging rules)."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamHandler(StreamEvents):
    """What a client-side codec reports to (proxy/h2upstream.py): a pod's streams."""

    def response(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """A final response head (a trailers-only response has `end_stream`)."""
        raise NotImplementedError


def _frame_goaway(last_stream_id: int, code: int) -> bytes:
    """A GOAWAY frame built here, for when the binding refuses to produce more output."""
    return (
        struct.pack(">I", 8)[1:]
        + b"\x07\x00\x00\x00\x00\x00"
        + struct.pack(">II", last_stream_id & 0x7FFFFFFF, code)
    )


class _Codec:
    """What both sides' codecs share: one ngh2 connection, its events reported to a
    `StreamEvents`, the output, and per-stream resets, consumption and queued data."""

    __slots__ = ("_conn", "_dispatch", "_events")

    def __init__(
        self, conn: Any, events: StreamEvents, head: type, on_head: Callable[[Any], None]
    ) -> None:
        self._conn = conn
        self._events = events
        # The binding's event types, each to its report; `head` is the side's message head
        # (a request on the server side, a response on the client side).
        self._dispatch: dict[type, Callable[[Any], None]] = {
            head: on_head,
            ngh2.DataReceived: self._data,
            ngh2.TrailersReceived: self._trailers,
            ngh2.StreamReset: self._reset,
            ngh2.StreamClosed: self._closed,
            ngh2.WindowUpdated: self._window,
            ngh2.GoAwayReceived: self._goaway,
        }

    def _dispatch_events(self) -> None:
        dispatch = self._dispatch
        for event in self._conn.events():
            handle = dispatch.get(type(event))
            if handle is not None:
                handle(event)

    def _data(self, event: Any) -> None:
        self._events.data(event.stream_id, event.data, event.end_stream)

    def _trailers(self, event: Any) -> None:
        self._events.trailers(event.stream_id, event.headers)

    def _reset(self, event: Any) -> None:
        self._events.reset(event.stream_id, event.error_code)

    def _closed(self, event: Any) -> None:
        self._events.closed(event.stream_id, event.error_code)

    def _window(self, event: Any) -> None:
        self._events.window_opened(event.stream_id)

    def _goaway(self, event: Any) -> None:
        self._events.goaway(event.last_stream_id, event.error_code)

    def output(self) -> bytes:
        """The bytes to write now (b"" when nothing is due or the peer's windows are shut).
        Streams this output closes (a message's end, a reset) are reported (`closed`) before
        it returns."""
        try:
            data: bytes = self._conn.data_to_send()
        except ngh2.NGH2Error:
            return b""
        self._dispatch_events()
        return data

    @property
    def open(self) -> bool:
        """False once both directions are over (after a GOAWAY and its streams): close."""
        conn = self._conn
        reading: bool = conn.want_read
        writing: bool = conn.want_write
        return reading or writing

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM; a stream already gone is not an error."""
        with contextlib.suppress(ngh2.NGH2Error):
            self._conn.reset_stream(stream_id, code)

    def consume(self, stream_id: int, size: int) -> None:
        """`size` bytes of the stream's incoming body were taken: the peer may send as many
        more."""
        if size:
            # A stream closed meanwhile raises: the connection's window is updated anyway.
            with contextlib.suppress(ngh2.NGH2Error):
                self._conn.acknowledge_received_data(size, stream_id)

    def queued(self, stream_id: int) -> int:
        """Outgoing body bytes of the stream waiting for the peer's windows."""
        try:
            size: int = self._conn.queued_body_size(stream_id)
            return size
        except ngh2.NGH2Error:
            return 0


class ServerCodec(_Codec):
    """One server-side HTTP/2 connection's protocol state (no I/O)."""

    __slots__ = ("handler", "last_stream_id")

    def __init__(self, handler: Handler, limits: Limits = DEFAULT_LIMITS) -> None:
        self.handler = handler
        self.last_stream_id = 0  # the highest stream the client opened, for our GOAWAY
        conn = ngh2.Connection(
            ngh2.Role.SERVER,
            ngh2.Configuration(
                auto_window_update=False,
                max_outbound_ack=limits.max_queued_acks,
                max_settings=limits.max_settings,
                stream_reset_rate_limit=(limits.reset_burst, limits.reset_rate),
                max_continuations=limits.max_continuations,
                glitch_rate_limit=(limits.glitch_burst, limits.glitch_rate),
                max_inbound_header_list_size=limits.hard_header_list_bytes,
                max_inbound_header_count=limits.hard_header_fields,
            ),
        )
        conn.initiate_connection(
            {
                ngh2.Setting.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                ngh2.Setting.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                ngh2.Setting.INITIAL_WINDOW_SIZE: limits.initial_window,
                ngh2.Setting.ENABLE_PUSH: 0,
            }
        )
        super().__init__(conn, handler, ngh2.RequestReceived, self._request)

    # ---- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes read from the client; the handler hears what they meant. Raises CodecError
        when the connection must end (its `goaway` is what to write before closing)."""
        conn = self._conn
        try:
            conn.receive_data(data)
        except ngh2.DenialOfServiceError as exc:
            raise self._failed("Flood", ENHANCE_YOUR_CALM, exc) from exc
        except ngh2.ProtocolError as exc:
            raise self._failed("ProtocolError", PROTOCOL_ERROR, exc) from exc
        except ngh2.ConnectionStateError as exc:
            # libnghttp2 already decided to end the connection (its GOAWAY, a rapid-reset or
            # glitch limit's, is in the output taken before).
            raise self._failed("Terminated", ENHANCE_YOUR_CALM, exc) from exc
        except ngh2.NGH2Error as exc:
            raise self._failed("CodecError", INTERNAL_ERROR, exc) from exc
        self._dispatch_events()

    def _failed(self, reason: str, code: int, exc: Exception) -> CodecError:
        try:
            self._conn.terminate_connection(code, last_stream_id=self.last_stream_id)
            goaway = self._conn.data_to_send()
        except ngh2.NGH2Error:
            goaway = b""
        if not goaway:
            goaway = _frame_goaway(self.last_stream_id, code)
        error = CodecError(f"{reason}: {exc}", code, goaway)
        error.reason = reason
        return error

    def _request(self, event: Any) -> None:
        stream_id: int = event.stream_id
        self.last_stream_id = max(self.last_stream_id, stream_id)
        self.handler.request(stream_id, event.headers, event.end_stream)

    # ---- output ------------------------------------------------------------------------------

    @property
    def wants_write(self) -> bool:
        want: bool = self._conn.want_write
        return want

    def send_headers(
        self, stream_id: int, headers: Iterable[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        """The response head (":status" first, lower-case names, no connection-specific
        fields: the caller renders them so)."""
        self._conn.send_response(stream_id, headers, end_stream=end_stream)

    def send_informational(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self._conn.send_informational_response(stream_id, headers)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        """Response body data, queued until the client's windows admit it."""
        self._conn.send_data(stream_id, data, end_stream=end_stream)

    def send_trailers(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Trailer fields; they end the stream."""
        self._conn.send_trailers(stream_id, headers)

    def end_stream(self, stream_id: int) -> None:
        """End the response (after the data queued before)."""
        self._conn.end_stream(stream_id)

    def shutdown_notice(self) -> None:
        """The graceful GOAWAY's first step (last stream id 2^31-1: finish what is in flight);
        `goaway` follows with the real last stream id."""
        self._conn.send_shutdown_notice()

    def goaway(self, code: int = NO_ERROR) -> None:
        """GOAWAY with the last stream the client opened: no new stream is accepted; the ones
        open finish (NO_ERROR), or are cut (another code)."""
        with contextlib.suppress(ngh2.NGH2Error):
            self._conn.send_goaway(code, last_stream_id=self.last_stream_id)


# ---- the client side: HTTP/2 to pods (gRPC) ------------------------------------------------------


# The window a pod's response stream starts with, and the connection's: a pod may send this much
# of one response ahead of what the client took (acknowledged as the client side takes it).
UPSTREAM_STREAM_WINDOW: Final = 1 << 20
UPSTREAM_CONNECTION_WINDOW: Final = 16 << 20


class ClientCodec(_Codec):
    """One client-side HTTP/2 connection to a pod (no I/O): requests out, responses in."""

    __slots__ = ("handler",)

    def __init__(self, handler: UpstreamHandler) -> None:
        self.handler = handler
        conn = ngh2.Connection(
            ngh2.Role.CLIENT,
            ngh2.Configuration(
                auto_window_update=False,
                # Until the pod's SETTINGS say otherwise (RFC 9113's initial value is unlimited;
                # grpc-go and grpc-c++ announce 100 or more).
                peer_max_concurrent_streams=100,
                max_inbound_header_list_size=DEFAULT_LIMITS.hard_header_list_bytes,
                max_inbound_header_count=DEFAULT_LIMITS.hard_header_fields,
            ),
        )
        conn.initiate_connection(
            {
                ngh2.Setting.ENABLE_PUSH: 0,
                ngh2.Setting.INITIAL_WINDOW_SIZE: UPSTREAM_STREAM_WINDOW,
                ngh2.Setting.MAX_HEADER_LIST_SIZE: DEFAULT_LIMITS.hard_header_list_bytes,
            }
        )
        with contextlib.suppress(ngh2.NGH2Error):
            conn.set_local_window_size(UPSTREAM_CONNECTION_WINDOW)
        super().__init__(conn, handler, ngh2.ResponseReceived, self._response)

    def feed(self, data: bytes) -> None:
        """Bytes read from the pod. Raises CodecError when the connection must end."""
        try:
            self._conn.receive_data(data)
        except ngh2.NGH2Error as exc:
            try:
                self._conn.terminate_connection(PROTOCOL_ERROR)
                goaway = self._conn.data_to_send()
            except ngh2.NGH2Error:
                goaway = b""
            raise CodecError(f"{type(exc).__name__}: {exc}", PROTOCOL_ERROR, goaway) from exc
        self._dispatch_events()

    def _response(self, event: Any) -> None:
        self.handler.response(event.stream_id, event.headers, event.end_stream)

    @property
    def can_open(self) -> bool:
        """Whether a new stream fits the pod's SETTINGS_MAX_CONCURRENT_STREAMS (and no GOAWAY)."""
        can: bool = self._conn.can_send_request
        return can

    def send_request(self, headers: Iterable[tuple[bytes, bytes]], end_stream: bool) -> int:
        """A request head (pseudo-header fields first); its stream id. Raises CodecError
        when no stream can be opened (ids exhausted, the connection going away)."""
        try:
            stream_id: int = self._conn.send_request(headers, end_stream=end_stream)
            return stream_id
        except ngh2.NGH2Error as exc:
            raise CodecError(f"{type(exc).__name__}: {exc}", REFUSED_STREAM, b"") from exc

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        """Request body data, queued until the pod's windows admit it."""
        with contextlib.suppress(ngh2.NGH2Error):
            self._conn.send_data(stream_id, data, end_stream=end_stream)

    def end_stream(self, stream_id: int) -> None:
        with contextlib.suppress(ngh2.NGH2Error):
            self._conn.end_stream(stream_id)

    def goaway(self, code: int = NO_ERROR) -> None:
        with contextlib.suppress(ngh2.NGH2Error):
            self._conn.send_goaway(code)
