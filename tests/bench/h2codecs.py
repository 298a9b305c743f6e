"""Micro-benchmark of the HTTP/2 codec candidates: the server side of one exchange, no sockets.

Issue 19's codec decision, measured. One client (hyper-h2) prepares N `GET` requests as the
bytes a real client would send (HPACK state carried from one to the next, the windows opened
once); each candidate is a server that, per exchange, reads one request's bytes, turns them into
events, answers `200` with a 13-byte body and end-of-stream, and takes the bytes to write. That
is the codec's share of serving one HTTP/2 request, what Portico pays on top of its data path.

Candidates:
- `ngh2`: the PyPI binding (a Cython extension with libnghttp2 built in), the one behind
  `proxy/h2codec.py`;
- `cffi`: a binding of our own as a prototype, cffi in ABI mode against Debian's
  `libnghttp2.so.14` (`libnghttp2-14`, no headers or compiler needed): nghttp2's callbacks
  (one per header field, per frame, per data chunk, per stream close, the data source) are
  Python functions, as they would be in any cffi binding that does not compile C of its own;
- `h2`: the pure-Python hyper-h2, for reference.

Run: `.venv/bin/python -m tests.bench.h2codecs [ngh2|cffi|h2 ...] [-n N]` (all three by
default; best of 5 rounds). Not a test: nothing here runs in CI.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events

BODY = b"hello, world\n"
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.test"),
    (b":path", b"/index.html"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")]
BIG_WINDOW = 2**31 - 1


def client_bytes(n: int) -> tuple[bytes, list[bytes]]:
    """The connection preface (with the windows opened) and then each request's bytes."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.local_settings.initial_window_size = BIG_WINDOW
    client.initiate_connection()
    client.increment_flow_control_window(BIG_WINDOW - 65535)
    preface = client.data_to_send()
    requests = []
    for _ in range(n):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, REQUEST, end_stream=True)
        requests.append(client.data_to_send())
    return preface, requests


Server = Callable[[bytes], bytes]


def ngh2_server() -> tuple[Server, Callable[[], None]]:
    import ngh2

    conn = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    conn.initiate_connection({ngh2.Setting.MAX_CONCURRENT_STREAMS: 128})
    request_received = ngh2.RequestReceived

    def serve(data: bytes) -> bytes:
        conn.receive_data(data)
        for event in conn.events():
            if type(event) is request_received:
                stream_id = event.stream_id
                conn.send_response(stream_id, RESPONSE)
                conn.send_data(stream_id, BODY, end_stream=True)
        return conn.data_to_send()

    return serve, lambda: None


CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;
typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags;
                 uint8_t reserved; } nghttp2_frame_hd;
typedef union { nghttp2_frame_hd hd; uint8_t opaque[256]; } nghttp2_frame;
typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen;
                 uint8_t flags; } nghttp2_nv;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
typedef union { int fd; void *ptr; } nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *, int32_t, uint8_t *,
    size_t, uint32_t *, nghttp2_data_source *, void *);
typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; }
    nghttp2_data_provider;
int nghttp2_session_callbacks_new(nghttp2_session_callbacks **);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *,
    int (*)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
            const uint8_t *, size_t, uint8_t, void *));
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *,
    int (*)(nghttp2_session *, const nghttp2_frame *, void *));
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
    int (*)(nghttp2_session *, int32_t, uint32_t, void *));
int nghttp2_session_server_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *,
    const nghttp2_option *);
int nghttp2_option_new(nghttp2_option **);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *, int);
int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t);
ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t);
ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **);
int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t,
    const nghttp2_data_provider *);
"""


def cffi_server() -> tuple[Server, Callable[[], None]]:
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CDEF)
    lib: Any = ffi.dlopen("libnghttp2.so.14")
    headers_frame, end_stream_flag, data_flag_eof = 0x01, 0x01, 0x01
    requests: dict[int, list[tuple[bytes, bytes]]] = {}
    ready: list[int] = []

    @ffi.callback(
        "int(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,"
        " const uint8_t *, size_t, uint8_t, void *)"
    )
    def on_header(  # noqa: PLR0917 (nghttp2 calls it with these arguments)
        session: Any,
        frame: Any,
        name: Any,
        namelen: int,
        value: Any,
        valuelen: int,
        flags: int,
        user: Any,
    ) -> int:
        fields = requests.setdefault(frame.hd.stream_id, [])
        fields.append((ffi.buffer(name, namelen)[:], ffi.buffer(value, valuelen)[:]))
        return 0

    @ffi.callback("int(nghttp2_session *, const nghttp2_frame *, void *)")
    def on_frame(session: Any, frame: Any, user: Any) -> int:
        hd = frame.hd
        if hd.type == headers_frame and hd.flags & end_stream_flag:
            ready.append(hd.stream_id)
        return 0

    @ffi.callback("int(nghttp2_session *, int32_t, uint32_t, void *)")
    def on_close(session: Any, stream_id: int, error_code: int, user: Any) -> int:
        requests.pop(stream_id, None)
        return 0

    @ffi.callback(
        "ssize_t(nghttp2_session *, int32_t, uint8_t *, size_t, uint32_t *,"
        " nghttp2_data_source *, void *)"
    )
    def read_body(  # noqa: PLR0917 (nghttp2 calls it with these arguments)
        session: Any, stream_id: int, buf: Any, length: int, flags: Any, source: Any, user: Any
    ) -> int:
        ffi.memmove(buf, BODY, len(BODY))
        flags[0] |= data_flag_eof
        return len(BODY)

    callbacks = ffi.new("nghttp2_session_callbacks **")
    lib.nghttp2_session_callbacks_new(callbacks)
    lib.nghttp2_session_callbacks_set_on_header_callback(callbacks[0], on_header)
    lib.nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks[0], on_frame)
    lib.nghttp2_session_callbacks_set_on_stream_close_callback(callbacks[0], on_close)
    option = ffi.new("nghttp2_option **")
    lib.nghttp2_option_new(option)
    lib.nghttp2_option_set_no_auto_window_update(option[0], 1)
    session_p = ffi.new("nghttp2_session **")
    lib.nghttp2_session_server_new2(session_p, callbacks[0], ffi.NULL, option[0])
    session = session_p[0]
    setting = ffi.new("nghttp2_settings_entry[1]", [(3, 128)])
    lib.nghttp2_submit_settings(session, 0, setting, 1)
    # The response fields as C memory, kept alive for the session's life.
    keep = [ffi.new("uint8_t[]", part) for field in RESPONSE for part in field]
    nva = ffi.new("nghttp2_nv[]", len(RESPONSE))
    for i, (name, value) in enumerate(RESPONSE):
        nva[i].name, nva[i].namelen = keep[2 * i], len(name)
        nva[i].value, nva[i].valuelen = keep[2 * i + 1], len(value)
    provider = ffi.new("nghttp2_data_provider *")
    provider.read_callback = read_body
    out = ffi.new("const uint8_t **")

    def serve(data: bytes) -> bytes:
        lib.nghttp2_session_mem_recv(session, data, len(data))
        while ready:
            lib.nghttp2_submit_response(session, ready.pop(), nva, len(RESPONSE), provider)
        pieces = []
        while (n := lib.nghttp2_session_mem_send(session, out)) > 0:
            pieces.append(ffi.buffer(out[0], n)[:])
        return b"".join(pieces)

    alive = (keep, callbacks, option, on_header, on_frame, on_close, read_body)
    return serve, lambda: alive and None


def h2_server() -> tuple[Server, Callable[[], None]]:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    request_received = h2.events.RequestReceived

    def serve(data: bytes) -> bytes:
        for event in conn.receive_data(data):
            if type(event) is request_received:
                conn.send_headers(event.stream_id, RESPONSE)
                conn.send_data(event.stream_id, BODY, end_stream=True)
        return conn.data_to_send()

    return serve, lambda: None


CANDIDATES = {"ngh2": ngh2_server, "cffi": cffi_server, "h2": h2_server}


def measure(name: str, n: int) -> float:
    best = 1e9
    for _ in range(5):
        preface, requests = client_bytes(n)
        serve, _keep = CANDIDATES[name]()
        first = serve(preface)
        assert first, f"{name}: no server preface"
        t0 = time.perf_counter()
        for data in requests:
            serve(data)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def check(name: str) -> None:
    """Each candidate answers correctly: a hyper-h2 client reads the response."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    serve, _keep = CANDIDATES[name]()
    client.receive_data(serve(client.data_to_send()))
    client.send_headers(1, REQUEST, end_stream=True)
    events = client.receive_data(serve(client.data_to_send()))
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == BODY, (name, events)
    assert any(isinstance(e, h2.events.StreamEnded) for e in events), (name, events)


def main() -> None:
    args = sys.argv[1:]
    n = int(args[args.index("-n") + 1]) if "-n" in args else 20000
    names = [a for a in args if a in CANDIDATES] or list(CANDIDATES)
    for name in names:
        check(name)
        print(f"{name}: {measure(name, n) * 1e6:.2f} us/exchange (server side)")


if __name__ == "__main__":
    main()
