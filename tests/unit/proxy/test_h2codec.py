"""proxy/h2codec.py against a raw HTTP/2 client (hyper-h2, hyperframe): no sockets.

What the codec promises the connection protocol: a request's head, body and end reported in
order; responses with data and trailers as a client reads them; the settings Portico announces;
flow control left to the consumer (no window update until `consume`); and libnghttp2's
protections, on: each malformed request is a stream error before it is reported (RFC 9113
§8.2, §8.3), each flood ends the connection with GOAWAY (or `CodecError`).
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)

from proxy import h2codec
from proxy.h2codec import CodecError, Handler, Headers, ServerCodec

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")]
POST = [(b":method", b"POST"), *BASE[1:]]


class Recorder(Handler):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.events.append(("request", stream_id, headers, end_stream))

    def data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", stream_id, data, end_stream))

    def trailers(self, stream_id: int, headers: Headers) -> None:
        self.events.append(("trailers", stream_id, headers))

    def reset(self, stream_id: int, code: int) -> None:
        self.events.append(("reset", stream_id, code))

    def closed(self, stream_id: int, code: int) -> None:
        self.events.append(("closed", stream_id, code))

    def window_opened(self, stream_id: int) -> None:
        self.events.append(("window", stream_id))

    def goaway(self, last_stream_id: int, code: int) -> None:
        self.events.append(("goaway", last_stream_id, code))

    def kinds(self) -> list[object]:
        return [e[0] for e in self.events]


def raw_client() -> h2.connection.H2Connection:
    """A client that sends what it is told, invalid fields included."""
    return h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )


def connected(**limits: int) -> tuple[h2.connection.H2Connection, ServerCodec, Recorder]:
    client = raw_client()
    client.initiate_connection()
    recorder = Recorder()
    codec = ServerCodec(recorder, h2codec.Limits(**limits))
    codec.feed(client.data_to_send())
    client.receive_data(codec.output())
    codec.feed(client.data_to_send())  # the SETTINGS ACK
    return client, codec, recorder


def to_client(client: h2.connection.H2Connection, codec: ServerCodec) -> list[h2.events.Event]:
    return client.receive_data(codec.output())


def test_settings_announced() -> None:
    """Issue 19 item 3: 128 concurrent streams, header list 32 KiB; no server push."""
    client = raw_client()
    client.initiate_connection()
    codec = ServerCodec(Recorder())
    codec.feed(client.data_to_send())
    events = client.receive_data(codec.output())
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
    settings = {k: v.new_value for k, v in changed.changed_settings.items()}
    assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 128
    assert settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 32 * 1024
    assert settings[h2.settings.SettingCodes.ENABLE_PUSH] == 0


def test_exchange_with_body_and_trailers() -> None:
    """A request with a body, a response with data and trailers (gRPC's shape)."""
    client, codec, rec = connected()
    client.send_headers(1, [*POST, (b"te", b"trailers")])
    client.send_data(1, b"ping", end_stream=True)
    codec.feed(client.data_to_send())
    assert rec.events[0] == ("request", 1, (*POST, (b"te", b"trailers")), False)
    assert rec.events[1] == ("data", 1, b"ping", True)
    codec.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    codec.send_data(1, b"pong", False)
    codec.send_trailers(1, [(b"grpc-status", b"0")])
    events = to_client(client, codec)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[2].headers == [(b"grpc-status", b"0")]
    codec.feed(client.data_to_send())
    assert ("closed", 1, h2codec.NO_ERROR) in rec.events


def test_request_trailers_end_the_request() -> None:
    client, codec, rec = connected()
    client.send_headers(1, POST)
    client.send_data(1, b"x")
    client.send_headers(1, [(b"x-checksum", b"1")], end_stream=True)
    codec.feed(client.data_to_send())
    assert rec.kinds() == ["request", "data", "trailers"]


# RFC 9113 §8.2.1-§8.3.1 malformed requests: a stream error (RST_STREAM PROTOCOL_ERROR) and
# never a request event, so nothing of them can reach a pod (issue 19, item 3).
MALFORMED = [
    ("connection", [*BASE, (b"connection", b"close")]),  # §8.2.2
    ("keep-alive", [*BASE, (b"keep-alive", b"timeout=5")]),  # §8.2.2
    ("proxy-connection", [*BASE, (b"proxy-connection", b"keep-alive")]),  # §8.2.2
    ("transfer-encoding", [*BASE, (b"transfer-encoding", b"chunked")]),  # §8.2.2
    ("upgrade", [*BASE, (b"upgrade", b"websocket")]),  # §8.2.2
    ("te other than trailers", [*BASE, (b"te", b"gzip")]),  # §8.2.2
    ("CR in a value", [*BASE, (b"x-a", b"a\rb")]),  # §8.2.1
    ("LF in a value", [*BASE, (b"x-a", b"a\nb")]),  # §8.2.1
    ("NUL in a value", [*BASE, (b"x-a", b"a\x00b")]),  # §8.2.1
    ("leading space in a value", [*BASE, (b"x-a", b" a")]),  # §8.2.1
    ("upper-case name", [*BASE, (b"X-A", b"1")]),  # §8.2.1
    ("no :path", BASE[:3]),  # §8.3.1
    ("empty :path", [*BASE[:3], (b":path", b"")]),  # §8.3.1
    ("duplicate :method", [*BASE, (b":method", b"POST")]),  # §8.3
    ("pseudo-header after a field", [BASE[0], (b"x-a", b"1"), *BASE[1:]]),  # §8.3
    ("unknown pseudo-header", [*BASE, (b":protocol-x", b"1")]),  # §8.3
    ("response pseudo-header", [*BASE, (b":status", b"200")]),  # §8.3.1
    ("content-length not a number", [*POST, (b"content-length", b"1x")]),  # §8.1.1
    ("two content-lengths", [*POST, (b"content-length", b"3"), (b"content-length", b"4")]),
]


@pytest.mark.parametrize(("case", "headers"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_malformed_request_is_a_stream_error(case: str, headers: list[tuple[bytes, bytes]]) -> None:
    client, codec, rec = connected()
    client.send_headers(1, headers, end_stream=True)
    codec.feed(client.data_to_send())
    assert "request" not in rec.kinds(), case
    resets = [e for e in to_client(client, codec) if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, h2codec.PROTOCOL_ERROR)]
    # The connection itself goes on.
    client.send_headers(3, BASE, end_stream=True)
    codec.feed(client.data_to_send())
    assert rec.kinds().count("request") == 1


@pytest.mark.parametrize(("sent", "declared"), [(b"abc", 5), (b"abcdef", 5)])
def test_content_length_mismatch_resets(sent: bytes, declared: int) -> None:
    """RFC 9113 §8.1.1: DATA not adding up to content-length is malformed; the stream is reset
    (the request was reported: the exchange is cut, the pod's connection not reused)."""
    client, codec, rec = connected()
    client.send_headers(1, [*POST, (b"content-length", str(declared).encode())])
    client.send_data(1, sent, end_stream=True)
    codec.feed(client.data_to_send())
    assert ("data", 1, sent, True) not in rec.events
    resets = [e for e in to_client(client, codec) if isinstance(e, h2.events.StreamReset)]
    assert ("closed", 1, h2codec.PROTOCOL_ERROR) in rec.events
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, h2codec.PROTOCOL_ERROR)]


def test_request_body_window_waits_for_consume() -> None:
    """Issue 19 item 2: DATA is acknowledged only as the consumer takes it."""
    client, codec, _rec = connected()
    client.send_headers(1, POST)
    for size in (16_384, 16_384, 16_384, 16_383):
        client.send_data(1, b"x" * size)
    codec.feed(client.data_to_send())
    to_client(client, codec)
    assert client.local_flow_control_window(1) == 0
    codec.consume(1, 40_000)
    events = to_client(client, codec)
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1 for e in events)
    assert client.local_flow_control_window(1) == 40_000


def test_response_data_waits_for_the_clients_window() -> None:
    client, codec, rec = connected()
    client.send_headers(1, BASE, end_stream=True)
    codec.feed(client.data_to_send())
    codec.send_headers(1, [(b":status", b"200")], False)
    codec.send_data(1, b"y" * 100_000, True)
    received = sum(len(e.data) for e in to_client(client, codec) if hasattr(e, "data"))
    assert received == 65_535
    assert codec.queued(1) == 100_000 - 65_535
    client.acknowledge_received_data(65_535, 1)
    codec.feed(client.data_to_send())
    assert ("window", 1) in rec.events
    events = to_client(client, codec)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 34_465
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_concurrent_streams_limited() -> None:
    """Issue 19 item 3: past 128 open streams a new one is not served; once the client has
    acknowledged the setting, libnghttp2 treats the excess as a connection error (RFC 9113
    §5.1.2 allows it): GOAWAY PROTOCOL_ERROR naming the last stream it took."""
    _client, codec, rec = connected()
    encoder = hpack.Encoder()  # hyper-h2 itself would not exceed the limit
    for i in range(129):
        frame = HeadersFrame(1 + 2 * i, data=encoder.encode(POST), flags=["END_HEADERS"])
        codec.feed(frame.serialize())
    assert rec.kinds().count("request") == 128
    goaway = [f for f in frames(codec) if isinstance(f, GoAwayFrame)]
    assert [(f.last_stream_id, f.error_code) for f in goaway] == [(255, h2codec.PROTOCOL_ERROR)]
    assert not codec.open


def parse_frames(data: bytes) -> list[Frame]:
    found = []
    offset = 0
    while offset + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[offset : offset + 9]))
        frame.parse_body(memoryview(data[offset + 9 : offset + 9 + length]))
        found.append(frame)
        offset += 9 + length
    return found


def frames(codec: ServerCodec) -> list[Frame]:
    return parse_frames(codec.output())


def goaway_code(data: bytes) -> int | None:
    for frame in parse_frames(data):
        if isinstance(frame, GoAwayFrame):
            return int(frame.error_code)
    return None


def flood(codec: ServerCodec, frames: list[bytes], read: bool) -> tuple[int | None, int]:
    """Feed frames one read at a time; `read`: the client reads what the server writes. The
    GOAWAY's error code (None: none) and how many frames went in before it."""
    written = b""
    for i, frame in enumerate(frames):
        try:
            codec.feed(frame)
        except CodecError as exc:
            return goaway_code(written + exc.goaway), i
        if read:
            written += codec.output()
        if not codec.open:
            return goaway_code(written + codec.output()), i
    return goaway_code(written + codec.output()), len(frames)


def rapid_resets(client: h2.connection.H2Connection, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        client.send_headers(1 + 2 * i, BASE, end_stream=True)
        client.reset_stream(1 + 2 * i)
        out.append(client.data_to_send())
    return out


# Each flood ends in GOAWAY ENHANCE_YOUR_CALM within a bounded number of frames (issue 19,
# item 3; the CVE or the frame type each row guards against).
def test_rapid_reset_ends_the_connection() -> None:
    """CVE-2023-44487: streams opened and reset at once, the server answering each
    (libnghttp2's GOAWAY for it says INTERNAL_ERROR)."""
    client, codec, _ = connected()
    code, count = flood(codec, rapid_resets(client, 5000), read=True)
    assert code == h2codec.INTERNAL_ERROR
    assert count < 1100


def test_continuation_flood_ends_the_connection() -> None:
    """CVE-2024-27316: a header block that never ends."""
    _, codec, _ = connected()
    head = HeadersFrame(1, data=b"")
    frames = [head.serialize()] + [ContinuationFrame(1, data=b"").serialize()] * 100
    code, count = flood(codec, frames, read=True)
    assert code == h2codec.ENHANCE_YOUR_CALM
    assert count <= 10


@pytest.mark.parametrize(
    ("case", "frame"),
    [
        ("SETTINGS", SettingsFrame(0, settings={4: 65_535}).serialize()),
        ("PING", PingFrame(0, opaque_data=b"12345678").serialize()),
    ],
)
def test_ack_flood_from_a_client_that_does_not_read(case: str, frame: bytes) -> None:
    """SETTINGS/PING floods: the acknowledgements queue while the client does not read."""
    _, codec, _ = connected()
    code, count = flood(codec, [frame] * 5000, read=False)
    assert code == h2codec.ENHANCE_YOUR_CALM, case
    assert count <= 1000


def test_empty_data_flood_ends_the_connection() -> None:
    """Empty DATA frames without END_STREAM (a glitch each, CVE-2019-9518)."""
    client, codec, _ = connected()
    client.send_headers(1, POST)
    frames = [client.data_to_send()] + [DataFrame(1, data=b"").serialize()] * 20_000
    code, count = flood(codec, frames, read=True)
    assert code == h2codec.ENHANCE_YOUR_CALM
    assert count <= 10_100


@pytest.mark.parametrize(
    ("case", "fields"),
    [
        ("list over 64 KiB", [(b"x-big-%d" % i, b"v" * 1000) for i in range(70)]),
        ("over 200 fields", [(b"x-%d" % i, b"1") for i in range(201)]),
    ],
)
def test_hard_header_list_limits(case: str, fields: list[tuple[bytes, bytes]]) -> None:
    """The codec keeps at most twice the announced list (64 KiB / 200 fields): beyond, the
    connection ends and no request is reported (HPACK bombs decode into nothing kept)."""
    client, codec, rec = connected()
    client.send_headers(1, [*BASE, *fields], end_stream=True)
    with pytest.raises(CodecError) as caught:
        codec.feed(client.data_to_send())
    assert "request" not in rec.kinds(), case
    assert goaway_code(caught.value.goaway) is not None


def test_header_list_past_the_announced_size_is_reported() -> None:
    """Between the announced 32 KiB / 100 fields and the hard limits the request is reported:
    the connection answers it 431 (proxy/h2server.py), the connection goes on."""
    client, codec, rec = connected()
    fields = [(b"x-%d" % i, b"v" * 400) for i in range(101)]  # 101 fields, about 44 KiB
    client.send_headers(1, [*BASE, *fields], end_stream=True)
    codec.feed(client.data_to_send())
    assert rec.kinds() == ["request"]


def test_graceful_goaway_lets_open_streams_finish() -> None:
    client, codec, _rec = connected()
    client.send_headers(1, BASE, end_stream=True)
    codec.feed(client.data_to_send())
    codec.goaway()
    events = to_client(client, codec)
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert (goaway.error_code, goaway.last_stream_id) == (0, 1)
    assert codec.open  # stream 1 is still to be answered
    codec.send_headers(1, [(b":status", b"204")], True)
    assert [(type(f).__name__, f.stream_id, "END_STREAM" in f.flags) for f in frames(codec)] == [
        ("HeadersFrame", 1, True)
    ]
    assert not codec.open


def _raw(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as bytes, whatever it says (hyperframe refuses to build invalid ones)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def _headers(stream_id: int) -> bytes:
    block = hpack.Encoder().encode(BASE)
    return HeadersFrame(stream_id, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()


# h2spec's connection-level cases (its section numbers, RFC 9113's): each is a GOAWAY with the
# error code the RFC names, and the connection is over.
CONNECTION_ERRORS = [
    ("6.1 DATA on stream 0", _raw(0x0, 0, 0, b"x"), h2codec.PROTOCOL_ERROR),
    ("5.1.1 even stream id from a client", _headers(2), h2codec.PROTOCOL_ERROR),
    ("6.9 WINDOW_UPDATE of 0", _raw(0x8, 0, 0, struct.pack(">I", 0)), h2codec.PROTOCOL_ERROR),
    ("4.3 invalid HPACK block", _raw(0x1, 0x5, 1, b"\xff" * 5), 0x9),  # COMPRESSION_ERROR
    (
        "6.5.2 SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        _raw(0x4, 0, 0, struct.pack(">HI", 4, 2**31)),
        h2codec.FLOW_CONTROL_ERROR,
    ),
    ("4.2 frame above SETTINGS_MAX_FRAME_SIZE", _raw(0x0, 0, 1, b"x" * 20_000), 0x6),
    ("6.5 SETTINGS length not a multiple of 6", _raw(0x4, 0, 0, b"\x00\x04\x00"), 0x6),
    ("6.7 PING length not 8", _raw(0x6, 0, 0, b"1234567"), 0x6),
    (
        "6.9.1 connection window above 2^31-1",
        _raw(0x8, 0, 0, struct.pack(">I", 2**31 - 1)),
        h2codec.FLOW_CONTROL_ERROR,
    ),
    ("6.10 CONTINUATION without HEADERS", _raw(0x9, 0x4, 1, b""), h2codec.PROTOCOL_ERROR),
    ("5.1 DATA on an idle stream", DataFrame(1, data=b"x").serialize(), h2codec.PROTOCOL_ERROR),
    ("5.1 RST_STREAM on an idle stream", _raw(0x3, 0, 1, struct.pack(">I", 8)), 0x1),
    (
        "5.3.1 a stream depending on itself",
        _raw(0x1, 0x25, 1, struct.pack(">IB", 1, 16) + hpack.Encoder().encode(BASE)),
        h2codec.PROTOCOL_ERROR,
    ),
]


@pytest.mark.parametrize(
    ("case", "data", "code"), CONNECTION_ERRORS, ids=[c for c, _, _ in CONNECTION_ERRORS]
)
def test_connection_errors(case: str, data: bytes, code: int) -> None:
    _, codec, rec = connected()
    try:
        codec.feed(data)
        written = codec.output()
    except CodecError as exc:
        written = exc.goaway
    assert goaway_code(written) == code, case
    assert not codec.open
    assert "request" not in rec.kinds()


def test_bad_preface_ends_the_connection() -> None:
    """h2spec 3.5: a connection that does not begin with the preface."""
    codec = ServerCodec(Recorder())
    with pytest.raises(CodecError) as caught:
        codec.feed(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert goaway_code(caught.value.goaway) == h2codec.PROTOCOL_ERROR


def test_unknown_frame_types_are_ignored() -> None:
    """h2spec 5.5: extension frames of unknown type are ignored."""
    _, codec, _ = connected()
    codec.feed(_raw(0x42, 0, 0, b"abc"))
    assert codec.open and goaway_code(codec.output()) is None
