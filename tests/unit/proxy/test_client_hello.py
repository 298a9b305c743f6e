"""The ClientHello SNI parser of TLS passthrough (proxy/clienthello.py): one row per rule.

Valid hellos come from OpenSSL itself (the `ssl` module's client over memory BIOs), so the
parser is checked against what real clients send; the malformed ones are built field by field
(RFC 8446 4.1.2 for the ClientHello, RFC 6066 3 for server_name).
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from typing import NamedTuple

import pytest

from proxy.clienthello import MAX_HELLO, HelloError, Incomplete, server_name


def openssl_hello(name: str | None, maximum: ssl.TLSVersion | None = None) -> bytes:
    """The ClientHello OpenSSL sends for `name` (None: no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def vec(size: int, data: bytes) -> bytes:
    return len(data).to_bytes(size, "big") + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + vec(2, n) for n in names)
    return struct.pack("!H", 0) + vec(2, vec(2, entries))


def hello_body(
    extensions: bytes | None = b"",
    *,
    version: bytes = b"\x03\x03",
    session: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    trailer: bytes = b"",
) -> bytes:
    body = version + bytes(32) + vec(1, session) + vec(2, suites) + vec(1, compression)
    if extensions is not None:
        body += vec(2, extensions)
    return body + trailer


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, *, split: int = 0, content_type: int = 22) -> bytes:
    """`message` in one handshake record, or two when `split` > 0 (cut at `split`)."""
    pieces = [message[:split], message[split:]] if split else [message]
    return b"".join(bytes([content_type, 3, 1]) + vec(2, p) for p in pieces)


def hello(*names: bytes, **kwargs: object) -> bytes:
    extensions = b"".join(sni_ext(n) for n in names) if names else b""
    return records(handshake(hello_body(extensions)), **kwargs)  # type: ignore[arg-type]


class Row(NamedTuple):
    data: bytes
    expected: str | type[Exception] | None  # the name, None (no SNI), or the exception
    needed: int = 0  # for Incomplete: the bytes asked for


_OPENSSL = openssl_hello("pass.example.com")
_ALPN = struct.pack("!H", 16) + vec(2, vec(1, b"h2"))

ROWS: dict[str, Row] = {
    # RFC 6066 3: the host_name the client asks for.
    "openssl-tls13": Row(_OPENSSL, "pass.example.com"),
    "openssl-tls12-only": Row(
        openssl_hello("pass.example.com", ssl.TLSVersion.TLSv1_2), "pass.example.com"
    ),
    "openssl-no-sni": Row(openssl_hello(None), None),
    "built": Row(hello(b"a.test"), "a.test"),
    # DNS names are case-insensitive: compared lower-cased with the Ingress hosts.
    "upper-case": Row(hello(b"A.Test"), "a.test"),
    "sni-after-other-extension": Row(
        records(handshake(hello_body(_ALPN + sni_ext(b"b.test")))), "b.test"
    ),
    # A ClientHello fragmented over two records (RFC 8446 5.1 allows it).
    "two-records": Row(hello(b"c.test", split=10), "c.test"),
    # TLS 1.2 clients may send no extensions at all: no SNI, terminated by Portico.
    "no-extensions": Row(records(handshake(hello_body(None))), None),
    "empty-extensions": Row(records(handshake(hello_body(b""))), None),
    # Truncated: the bytes needed before the answer can change.
    "empty": Row(b"", Incomplete, 5),
    "record-header-only": Row(_OPENSSL[:5], Incomplete, len(_OPENSSL)),
    "half": Row(_OPENSSL[:100], Incomplete, len(_OPENSSL)),
    "first-of-two-records": Row(hello(b"c.test", split=10)[:15], Incomplete, 20),
    # Garbage and other protocols: refused at once.
    "plain-http": Row(b"GET / HTTP/1.1\r\n", HelloError),
    "garbage-first-byte": Row(b"\x00", HelloError),
    "alert-record": Row(records(handshake(hello_body()), content_type=21), HelloError),
    "not-tls-major": Row(b"\x16\x04\x01\x00\x10", HelloError),
    "zero-length-record": Row(b"\x16\x03\x01\x00\x00", HelloError),
    "record-too-long": Row(b"\x16\x03\x01\x40\x01", HelloError),
    "server-hello": Row(records(handshake(hello_body(), kind=2)), HelloError),
    "bad-version": Row(records(handshake(hello_body(version=b"\x02\x00"))), HelloError),
    "long-session-id": Row(records(handshake(hello_body(session=bytes(33)))), HelloError),
    "odd-cipher-suites": Row(records(handshake(hello_body(suites=b"\x13"))), HelloError),
    "no-compression": Row(records(handshake(hello_body(compression=b""))), HelloError),
    "bytes-after-extensions": Row(records(handshake(hello_body(b"", trailer=b"x"))), HelloError),
    "extension-overruns": Row(
        records(handshake(hello_body(struct.pack("!HH", 0, 40)))), HelloError
    ),
    "duplicate-extension": Row(
        records(handshake(hello_body(sni_ext(b"a.test") + sni_ext(b"b.test")))), HelloError
    ),
    # RFC 6066 3 / OpenSSL: exactly one name, of type host_name, a visible ASCII DNS name.
    "two-names": Row(records(handshake(hello_body(sni_ext(b"a.test", b"b.test")))), HelloError),
    "name-type-not-host": Row(
        records(handshake(hello_body(sni_ext(b"a.test", name_type=1)))), HelloError
    ),
    "empty-name": Row(hello(b""), HelloError),
    "name-with-nul": Row(hello(b"a.test\x00.evil"), HelloError),
    "name-not-ascii": Row(hello("é.test".encode()), HelloError),
    "name-too-long": Row(hello(b"a" * 254), HelloError),
    "empty-server-name-list": Row(
        records(handshake(hello_body(struct.pack("!H", 0) + vec(2, vec(2, b""))))), HelloError
    ),
    # Bounded: a hello longer than one full record's worth (MAX_HELLO) is refused, whether
    # its header says so at once or its records add up past the bound.
    "declared-too-long": Row(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00", HelloError),
    "records-past-bound": Row(
        records(handshake(hello_body(_ALPN * 2400)), split=16384)[:MAX_HELLO], HelloError
    ),
}


@pytest.mark.parametrize("row", [pytest.param(r, id=k) for k, r in ROWS.items()])
def test_server_name(row: Row) -> None:
    expected = row.expected
    if isinstance(expected, type):
        with pytest.raises(expected) as caught:
            server_name(row.data)
        if expected is Incomplete:
            assert isinstance(caught.value, Incomplete)
            assert caught.value.needed == row.needed
    else:
        assert server_name(row.data) == expected


def test_every_prefix_of_a_hello_is_incomplete_never_an_error() -> None:
    # The listener peeks as segments arrive: no prefix may be refused, and the bytes asked
    # for always lie ahead.
    data = hello(b"prefix.test", split=40)
    for n in range(len(data)):
        with pytest.raises(Incomplete) as caught:
            server_name(data[:n])
        assert n < caught.value.needed <= len(data)
    assert server_name(data) == "prefix.test"


def test_bytes_after_the_hello_are_ignored() -> None:
    # Whatever follows the hello (early data, a second record) is the pod's business.
    assert server_name(_OPENSSL + b"\x17\x03\x03\x00\x05hello") == "pass.example.com"
