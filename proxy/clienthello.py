"""The server name (SNI) of a TLS ClientHello, read before any TLS is done: strict and bounded.

With `--enable-ssl-passthrough` and a passthrough host in the snapshot, the HTTPS listener
(proxy/tlsserver.py) peeks at the first bytes of each new connection and asks `server_name`
which host the client wants; proxy/passthrough.py then splices the connection to a pod of that
host unterminated, or the listener terminates TLS as usual. The bytes are only peeked: OpenSSL,
or the pod, reads the very same ClientHello afterwards.

What is read (RFC 8446 5.1 and 4.1.2, RFC 6066 3): TLS records of type handshake (22), each
at most 2^14 bytes of payload, whose payloads together hold one handshake message of type
ClientHello; its legacy version, random, session id, cipher suites, compression methods, and
extensions, each length checked against what holds it. The server_name extension must hold
exactly one name, of type host_name (as OpenSSL requires); it is returned lower-cased (DNS
names are case-insensitive). Anything else is a `HelloError`, and the connection is closed: a
hello that cannot be read must not be forwarded on a guess. `MAX_HELLO` bounds the bytes looked
at; `Incomplete` says how many bytes are needed before the answer can change, so the caller
waits for exactly that many (SO_RCVLOWAT) instead of peeking again at every segment.
"""

from __future__ import annotations

from typing import Final

RECORD_HEADER: Final = 5
MAX_RECORD: Final = 16384  # payload of one TLS record (2^14), RFC 8446 5.1
# The most bytes peeked for a ClientHello, record headers included: one full record's worth.
# Real hellos take 200 bytes to 2 KiB (with a post-quantum key share); a longer one is refused.
MAX_HELLO: Final = RECORD_HEADER + MAX_RECORD

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_SERVER_NAME: Final = 0
_HOST_NAME: Final = 0
_MAX_NAME: Final = 253  # the longest DNS name (RFC 1035) in dotted form


class HelloError(ValueError):
    """The bytes are not (the beginning of) a ClientHello this parser accepts."""


class Incomplete(Exception):  # noqa: N818: a state, not an error
    """A valid beginning: `needed` bytes in all are required before parsing can go further."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


def server_name(data: bytes) -> str | None:
    """The host name the ClientHello at the start of `data` asks for (None: no SNI).

    Raises Incomplete (more bytes needed) or HelloError (never a valid ClientHello, or one
    larger than MAX_HELLO)."""
    return _parse_hello(_handshake_message(data))


def _handshake_message(data: bytes) -> bytes:
    """The ClientHello body, gathered from the handshake records `data` begins with."""
    payload = b""
    offset = 0
    needed_body = -1  # the ClientHello body length, once its header is read
    while True:
        if len(data) > offset and data[offset] != _HANDSHAKE:
            # Said at the first byte: plain HTTP on the HTTPS port, or a scanner's garbage.
            raise HelloError("not a TLS handshake record")
        if offset + RECORD_HEADER > MAX_HELLO:
            raise HelloError(f"ClientHello longer than {MAX_HELLO} bytes")
        if len(data) < offset + RECORD_HEADER:
            raise Incomplete(offset + RECORD_HEADER)
        content_type = data[offset]
        major = data[offset + 1]
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if content_type != _HANDSHAKE:
            raise HelloError("not a TLS handshake record")
        if major != 3:
            raise HelloError("not a TLS record version")
        if length == 0 or length > MAX_RECORD:
            raise HelloError(f"TLS record of {length} bytes")
        end = offset + RECORD_HEADER + length
        if end > MAX_HELLO:
            raise HelloError(f"ClientHello longer than {MAX_HELLO} bytes")
        if needed_body < 0:
            # The handshake header, checked as soon as it is there (before its record is whole).
            start = payload + data[offset + RECORD_HEADER : min(end, offset + RECORD_HEADER + 4)]
            if len(start) >= 4:
                if start[0] != _CLIENT_HELLO:
                    raise HelloError("first handshake message is not a ClientHello")
                needed_body = int.from_bytes(start[1:4], "big")
                # Every record adds a header: the body cannot fit if even its bytes do not.
                if RECORD_HEADER + 4 + needed_body > MAX_HELLO:
                    raise HelloError(f"ClientHello longer than {MAX_HELLO} bytes")
        if len(data) < end:
            raise Incomplete(end)
        payload += data[offset + RECORD_HEADER : end]
        offset = end
        if needed_body >= 0 and len(payload) >= 4 + needed_body:
            # Bytes after the hello in the same record (another handshake message) are left
            # alone: a client sends nothing else before the server answers.
            return payload[4 : 4 + needed_body]


class _Reader:
    """Reads length-prefixed fields of a bytes object; any overrun is a HelloError."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise HelloError(f"ClientHello truncated in its {what}")
        piece = self.data[self.offset : end]
        self.offset = end
        return piece

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> bytes:
        return self.take(self.number(size, what), what)

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


def _parse_hello(body: bytes) -> str | None:
    hello = _Reader(body)
    if hello.take(2, "version")[0] != 3:
        raise HelloError("ClientHello with a version that is not TLS")
    hello.take(32, "random")
    if len(hello.vector(1, "session id")) > 32:
        raise HelloError("ClientHello session id longer than 32 bytes")
    suites = hello.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise HelloError("ClientHello cipher suites of odd or zero length")
    if not hello.vector(1, "compression methods"):
        raise HelloError("ClientHello without compression methods")
    if hello.left == 0:
        return None  # no extensions at all (an old TLS 1.2 client): no SNI
    extensions = _Reader(hello.vector(2, "extensions"))
    if hello.left:
        raise HelloError("bytes after the ClientHello extensions")
    seen: set[int] = set()
    name: str | None = None
    while extensions.left:
        kind = extensions.number(2, "extensions")
        data = extensions.vector(2, "extensions")
        if kind in seen:
            raise HelloError(f"ClientHello extension {kind} twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(data: bytes) -> str:
    outer = _Reader(data)
    names = _Reader(outer.vector(2, "server name list"))
    if outer.left:
        raise HelloError("bytes after the server name list")
    if names.number(1, "server name list") != _HOST_NAME:
        raise HelloError("server name of a type other than host_name")
    raw = names.vector(2, "server name list")
    if names.left:
        raise HelloError("more than one server name")
    if not 0 < len(raw) <= _MAX_NAME:
        raise HelloError(f"server name of {len(raw)} bytes")
    if not raw.isascii() or not all(0x21 <= b < 0x7F for b in raw):
        raise HelloError("server name with a byte that is not a visible ASCII character")
    return raw.decode("ascii").lower()
