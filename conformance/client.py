"""The runner's HTTP/1.1 client: one request per connection over plain TCP or TLS.

Hand-written on asyncio streams rather than a client library so the runner controls exactly
what goes on the wire (the Host header independently of the address and of the SNI, no
redirect following, no retries) and can read the certificate the proxy presented.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

from conformance.certificate import PeerCertificate, describe

_MAX_RESPONSE = 4 << 20  # the echo answers are small; anything bigger is a failure anyway


class ClientError(Exception):
    """The request could not be sent or its response not read (connection refused, timeout,
    malformed answer)."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    certificate: PeerCertificate | None = None
    raw_head: str = field(default="", repr=False)
    elapsed: float = 0.0  # seconds from the connection's start to the response's last byte

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _tls_context() -> ssl.SSLContext:
    # No verification: the point is to see which certificate comes back, not to trust it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise ClientError("truncated chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        data = rest[size + 2 :]


def parse_response(data: bytes, head_only: bool) -> Answer:
    """Parse a whole `Connection: close` response (status line, headers, body)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ClientError(f"no complete response head in {len(data)} bytes")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ClientError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ClientError(f"bad header line {line!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    status = int(parts[1])
    if head_only or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(status=status, headers=headers, body=body, raw_head=head.decode("latin-1"))


async def send(
    address: str,
    port: int,
    *,
    method: str = "GET",
    path: str = "/",
    host: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    tls: bool = False,
    server_name: str | None = None,
    limit: float = 5.0,
) -> Answer:
    """Send one request and read the whole response. `host` None: the address as Host.
    With `tls`, `server_name` is the SNI (None: none is sent when `address` is an IP)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host if host is not None else address}"]
    extra = headers or {}
    lines += [f"{name}: {value}" for name, value in extra.items() if name.lower() != "connection"]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    # One request per connection; options the caller names (hop-by-hop fields) go with it.
    options = [value for name, value in extra.items() if name.lower() == "connection"]
    lines.append("Connection: " + ", ".join([*options, "close"]))
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    writer: asyncio.StreamWriter | None = None
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            if tls:
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=_tls_context(), server_hostname=server_name
                )
            else:
                reader, writer = await asyncio.open_connection(address, port)
            certificate = None
            if tls:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                certificate = describe(der) if der else None
            writer.write(wire)
            await writer.drain()
            data = await reader.read(_MAX_RESPONSE)
            while chunk := await reader.read(_MAX_RESPONSE):
                data += chunk
                if len(data) > _MAX_RESPONSE:
                    raise ClientError("response too large")
            elapsed = time.monotonic() - started
    except TimeoutError:
        raise ClientError(f"no complete answer within {limit:g} s") from None
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    answer = parse_response(data, head_only=method == "HEAD")
    return Answer(answer.status, answer.headers, answer.body, certificate, answer.raw_head, elapsed)
