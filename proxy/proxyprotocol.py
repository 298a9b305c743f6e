"""The PROXY protocol (v1 and v2) on the listeners: the client address a load balancer passes on.

With `--proxy-protocol` (ingress-nginx's `use-proxy-protocol`) every connection on the HTTP and
HTTPS listeners must begin with a PROXY protocol header (haproxy's proxy-protocol.txt): v1, one
text line (`PROXY TCP4 192.0.2.1 198.51.100.1 51234 443\r\n`, at most 107 bytes), or v2, a
12-byte signature, version/command, family, length and the addresses in binary (plus TLVs,
skipped). The header's source address then stands for the peer everywhere: forwarded headers,
the access log, source ranges, trusted-proxy checks. A connection whose first bytes are not a
valid header (truncated at EOF, garbage, plain HTTP, too long) is closed without an answer, as
nginx does; a LOCAL (v2) or UNKNOWN (v1) header, which a load balancer sends for its own health
checks, keeps the connection's own peer address.

`parse` is strict and bounded: it never looks past `MAX_HEADER` bytes and says how long the
header is, so what follows (the HTTP request, or the TLS ClientHello) is left untouched.
`HeaderReader` reads it on a plain-HTTP connection before handing the transport to the HTTP
protocol; the HTTPS listener (proxy/tlsserver.py) reads it from the socket before the TLS
handshake, consuming exactly the header's bytes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Final, cast

logger = logging.getLogger("portico.proxy")

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest v1 line, CRLF included (the specification's bound)
# The longest v2 header accepted: the addresses take at most 216 bytes (AF_UNIX); load
# balancers' TLVs (AWS's VPC endpoint id, Azure's link id, ...) fit many times over.
V2_MAX_LENGTH: Final = 1024
MAX_HEADER: Final = 16 + V2_MAX_LENGTH

# The source (address, port) of the client, or None: use the connection's own peer.
Source = tuple[str, int] | None


class ProxyHeaderError(ValueError):
    """The connection does not begin with a valid PROXY protocol header (closed)."""


def parse(data: bytes) -> tuple[int, Source] | None:
    """(header length, source) of the header `data` begins with; None: a valid beginning,
    more bytes needed. Raises ProxyHeaderError when it cannot become a valid header."""
    if not data:
        return None
    if data[0] == 0x50:  # "P"
        return _parse_v1(data)
    if data[0] == 0x0D:  # "\r"
        return _parse_v2(data)
    raise ProxyHeaderError("not a PROXY protocol header")


def _port(text: bytes) -> int:
    # Decimal, no sign, no leading zero (as the specification writes them).
    if (
        not (text.isdigit() and text.isascii())
        or len(text) > 5
        or (text[:1] == b"0" and text != b"0")
    ):
        raise ProxyHeaderError("bad port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("bad port")
    return port


def _parse_v1(data: bytes) -> tuple[int, Source] | None:
    head = data[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyHeaderError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("v1 header too long")
        if b"\n" in data:
            raise ProxyHeaderError("v1 header ends without CRLF")
        return None
    fields = data[:end].split(b" ")
    if len(fields) < 2:
        raise ProxyHeaderError("v1 header without a protocol")
    protocol = fields[1]
    if protocol == b"UNKNOWN":  # the rest of the line is ignored
        return end + 2, None
    if len(fields) != 6:
        raise ProxyHeaderError("v1 header with a wrong number of fields")
    try:
        source = fields[2].decode("ascii")
        destination = fields[3].decode("ascii")
        if protocol == b"TCP4":
            ipaddress.IPv4Address(source)
            ipaddress.IPv4Address(destination)
        elif protocol == b"TCP6":
            ipaddress.IPv6Address(source)
            ipaddress.IPv6Address(destination)
        else:
            raise ProxyHeaderError("v1 header with an unknown protocol")
    except (UnicodeDecodeError, ipaddress.AddressValueError) as exc:
        raise ProxyHeaderError("v1 header with a bad address") from exc
    port = _port(fields[4])
    _port(fields[5])
    return end + 2, (source, port)


def _parse_v2(data: bytes) -> tuple[int, Source] | None:
    head = data[: len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyHeaderError("not a PROXY protocol header")
    if len(data) < 16:
        return None
    version_command = data[12]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("v2 header with an unknown version")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError("v2 header with an unknown command")
    length = int.from_bytes(data[14:16], "big")
    if length > V2_MAX_LENGTH:
        raise ProxyHeaderError("v2 header too long")
    total = 16 + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the load balancer's own connection (health checks)
        return total, None
    family = data[13] >> 4
    transport = data[13] & 0x0F
    if family == 0:  # AF_UNSPEC: no address to use
        return total, None
    if transport != 1:
        raise ProxyHeaderError("v2 header not for a stream (TCP) connection")
    if family == 1:  # AF_INET: source, destination (4 bytes each), ports (2 each)
        if length < 12:
            raise ProxyHeaderError("v2 header too short for its addresses")
        address = str(ipaddress.IPv4Address(data[16:20]))
        port = int.from_bytes(data[24:26], "big")
    elif family == 2:  # AF_INET6: 16 bytes each
        if length < 36:
            raise ProxyHeaderError("v2 header too short for its addresses")
        address = str(ipaddress.IPv6Address(data[16:32]))
        port = int.from_bytes(data[48:50], "big")
    elif family == 3:  # AF_UNIX: no IP address to use
        if length < 216:
            raise ProxyHeaderError("v2 header too short for its addresses")
        return total, None
    else:
        raise ProxyHeaderError("v2 header with an unknown address family")
    return total, (address, port)


# Called once the header is read: (the transport, the source, the bytes that followed it).
Handoff = Callable[[asyncio.Transport, Source, bytes], None]


class HeaderReader(asyncio.Protocol):
    """A plain-HTTP connection's protocol until its PROXY header is read; `handoff` then gives
    the transport to the HTTP protocol. Closed when the header is invalid, or not complete
    within `timeout` seconds (the client header timeout)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, handoff: Handoff) -> None:
        self.loop = loop
        self.timeout = timeout
        self.handoff = handoff
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.timer = self.loop.call_later(self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.buffer += data
        try:
            found = parse(self.buffer[:MAX_HEADER])
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        if found is None:
            return
        length, source = found
        rest = self.buffer[length:]
        self.buffer = b""
        self._stop_timer()
        self.transport = None
        self.handoff(transport, source, rest)

    def eof_received(self) -> bool | None:
        self._refuse("connection closed before a complete PROXY protocol header")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()

    def _timed_out(self) -> None:
        self.timer = None
        self._refuse("no complete PROXY protocol header in time")

    def _refuse(self, reason: str) -> None:
        self._stop_timer()
        refused(reason)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def refused(reason: str) -> None:
    # A load balancer that does not send the header (or a client that reaches the listener
    # around it) shows here; at debug, like failed TLS handshakes, since scanners are common.
    logger.debug("proxy.proxy_protocol_refused", extra={"reason": reason})
