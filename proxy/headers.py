"""Header rules of the data path: request validation and rewriting, response rewriting.

The downstream protocol sorts each client request's fields as httptools reports them: ordinary
ones are rendered for the upstream at once, the few that need a decision (REQUEST_SPECIAL) are
kept apart. `parse_request` checks those against the smuggling rules (RFC 9112 §6.3, §3.2),
strips hop-by-hop fields (RFC 9110 §7.6.1), adds the X-Forwarded-* / X-Real-IP / X-Request-ID
fields and renders the upstream head as one bytes object. `render_response` does the same for
the upstream's response head on its way back to the client and decides how its body is framed.
Both run for every request: the common case (only Host, or only Content-Length, Server and
Connection in a response) takes a short path.
"""

from __future__ import annotations

import http
import ipaddress
import itertools
import os
from collections.abc import Iterator
from typing import Final

from proxy.peercert import PeerCertificate
from proxy.settings import IPNetwork

# Hop-by-hop fields (RFC 9110 §7.6.1) plus the framing ones we regenerate ourselves.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Connection options that are not header names; anything else listed in Connection names a
# header to remove as well.
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})

_FORWARDED: Final = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
    }
)

# Every request field parse_request decides about; all others are copied as they came.
REQUEST_SPECIAL: Final = (
    HOP_BY_HOP | _FORWARDED | {b"host", b"content-length", b"expect", b"x-request-id"}
)


class FieldNames:
    """Which field names are special: name as received -> its lower-case form, b"" if plain.

    Per header field this replaces a `lower()` (a new bytes object) and a set lookup with one
    dict lookup: clients and pods send the same few spellings over and over. Bounded, so
    made-up names cost memory once: past the bound they are classified without caching.
    """

    __slots__ = ("known", "special")

    LIMIT: Final = 512

    def __init__(self, special: frozenset[bytes]) -> None:
        self.special = special
        self.known: dict[bytes, bytes] = {}

    def special_name(self, name: bytes) -> bytes:
        found = self.known.get(name)
        if found is None:
            lname = name.lower()
            found = lname if lname in self.special else b""
            if len(self.known) < FieldNames.LIMIT:
                self.known[name] = found
        return found


REQUEST_NAMES: Final = FieldNames(REQUEST_SPECIAL)

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Request ids: a random per-process prefix plus a counter; as unique as a UUID across workers
# and restarts, and an order of magnitude cheaper to make than uuid4().
_ID_PREFIX: Final = os.urandom(8).hex().encode()
_HEX2: Final = tuple(b"%02x" % i for i in range(256))


def _request_ids() -> Iterator[bytes]:
    """prefix + a 16-digit hex counter; formatted once per 256 ids (this runs per request)."""
    for high in itertools.count(0):
        base = b"%s%014x" % (_ID_PREFIX, high)
        for low in _HEX2:
            yield base + low


_next_request_id = _request_ids().__next__


class BadRequest(Exception):
    """A request we refuse to forward: answered with `status` and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientContext:
    """What is fixed for one client connection: its address, trust, scheme and listener port.

    `client_ip` is the peer's address as text, or the PROXY protocol's source address when the
    listener reads that header; `family` (4, 6; 0: not an IP address) and `address` are the
    same as an integer, for the source-range checks (an IPv4-mapped IPv6 address as IPv4)."""

    __slots__ = (
        "address",
        "certificate",
        "client_ip",
        "family",
        "fixed_forwarded",
        "port",
        "scheme",
        "secure",
        "trusted",
    )

    def __init__(
        self, client_ip: str, scheme: str, port: int, trusted_networks: tuple[IPNetwork, ...]
    ) -> None:
        self.client_ip = client_ip.encode()
        self.scheme = scheme.encode()
        self.secure = scheme == "https"  # which of a route's policies applies (plain, secure)
        self.port = str(port).encode()
        self.trusted = False
        self.family = 0
        self.address = 0
        # The client certificate of a connection to a host that asks for one (its own
        # context then, see `with_certificate`); None on every other connection.
        self.certificate: PeerCertificate | None = None
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            ip = None
        if ip is not None:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            self.family = ip.version
            self.address = int(ip)
            self.trusted = any(ip in net for net in trusted_networks)
        # For an untrusted client the forwarded fields do not depend on the request, except
        # X-Forwarded-Host: render them once per connection.
        self.fixed_forwarded = b"".join(
            (
                b"X-Forwarded-For: ",
                self.client_ip,
                b"\r\nX-Real-IP: ",
                self.client_ip,
                b"\r\nX-Forwarded-Proto: ",
                self.scheme,
                b"\r\nX-Forwarded-Port: ",
                self.port,
                b"\r\n",
            )
        )

    def with_certificate(self, certificate: PeerCertificate) -> ClientContext:
        """A copy for one connection, holding what its TLS handshake found (not shared)."""
        copy = ClientContext(self.client_ip.decode(), self.scheme.decode(), int(self.port), ())
        copy.trusted = self.trusted
        copy.certificate = certificate
        return copy


class ClientContexts:
    """The ClientContext of each (client address, scheme, listener port), shared by the
    connections of one client (bounded: a scan of many addresses starts it over)."""

    __slots__ = ("_contexts", "_trusted")

    LIMIT: Final = 4096

    def __init__(self, trusted_networks: tuple[IPNetwork, ...]) -> None:
        self._trusted = trusted_networks
        self._contexts: dict[tuple[str, str, int], ClientContext] = {}

    def get(self, client_ip: str, scheme: str, port: int) -> ClientContext:
        key = (client_ip, scheme, port)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = ClientContext(client_ip, scheme, port, self._trusted)
            if len(self._contexts) > ClientContexts.LIMIT:
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx


class RequestHead:
    """One validated client request, ready to go upstream."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "forwarded_for",
        "host",
        "keep_alive",
        "method",
        "path",
        "request_id",
        "target",
        "upgrade",
        "upstream_head",
        "upstream_rest",
        "upstream_target",
        "version_11",
    )

    method: bytes
    target: bytes  # origin-form, as forwarded
    path: str  # target without the query, for routing
    host: bytes  # Host as sent (or the authority of an absolute-form target); b"" if none
    content_length: int  # -1: none
    chunked: bool
    keep_alive: bool
    version_11: bool
    expect_continue: bool
    upgrade: bytes | None  # the Upgrade value when this request asks for a tunnel
    request_id: bytes
    forwarded_for: bytes | None  # X-Forwarded-For as received (trusted or not), for the log
    upstream_head: bytes | None  # full upstream head; None when Host must be added at send time
    upstream_rest: bytes  # head after the request line, without Host (when Host is missing)
    upstream_target: bytes  # the target sent to the pod: `target` unless a step rewrote it

    def render(self, authority: bytes) -> bytes:
        """The upstream head; a request without Host (HTTP/1.0) gets the endpoint's authority."""
        if self.upstream_head is not None:
            return self.upstream_head
        return (
            b"".join(
                (
                    self.method,
                    b" ",
                    self.upstream_target,
                    b" HTTP/1.1\r\nHost: ",
                    authority,
                    b"\r\n",
                )
            )
            + self.upstream_rest
        )

    def reshape(
        self,
        target: bytes | None = None,
        host: bytes | None = None,
        fields: bytes = b"",
        drop: frozenset[bytes] = frozenset(),
    ) -> None:
        """Change what the pod is sent, for the policy steps that do (a rewritten path, another
        Host, fields set or removed); the request as the client sent it (`target`, `host`) stays
        for routing, redirects and the access log.

        `target`: the new request target (origin-form, validated by the caller); `host`: the new
        Host value; `fields`: rendered fields ("Name: value\r\n"...) added last; `drop`:
        lower-case names of fields removed first (Host and the framing fields are not theirs to
        drop). The head after the request line is "Host: ...\r\n" then the other fields (see
        parse_request), which is what makes this a slice, not a parse."""
        if target is not None:
            self.upstream_target = target
        data = self.upstream_head
        if data is None:
            rest = self.upstream_rest
            current = host
        else:
            line_end = data.index(b"\r\n") + 2
            host_end = data.index(b"\r\n", line_end) + 2
            rest = data[host_end:]
            current = data[line_end + 6 : host_end - 2] if host is None else host
        if drop:
            kept = [
                line
                for line in rest[:-2].split(b"\r\n")[:-1]
                if line.partition(b":")[0].lower() not in drop
            ]
            rest = b"".join(line + b"\r\n" for line in kept) + b"\r\n"
        if fields:
            rest = rest[:-2] + fields + b"\r\n"
        if current is None:
            self.upstream_rest = rest
            return
        self.upstream_rest = b""
        self.upstream_head = b"".join(
            (
                self.method,
                b" ",
                self.upstream_target,
                b" HTTP/1.1\r\nHost: ",
                current,
                b"\r\n",
                rest,
            )
        )


# RFC 3986 §3.2.2 reg-name characters: unreserved, sub-delims and "%" (of a pct-encoded triple),
# without ",": the authority becomes the forwarded Host, and "," is refused in Host (a list).
_REG_NAME: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+;=%"
)
_HEXDIG: Final = frozenset(b"0123456789ABCDEFabcdef")


def _valid_authority(authority: bytes) -> bool:
    """Whether an absolute-form target's authority is host[:port] (RFC 3986 §3.2.2-3).

    host: a bracketed IPv6 address (no zone, no IPvFuture: nothing Portico could route) or a
    non-empty reg-name (IPv4 addresses included); no userinfo (RFC 9110 §4.2.4). port: digits,
    at most 65535, possibly empty (RFC 3986 §3.2.3). Only absolute-form targets come here.
    """
    if authority[:1] == b"[":
        end = authority.find(b"]")
        literal = authority[1:end]
        if end < 0 or 37 in literal:  # 37: "%" (a zone)
            return False
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
        port = authority[end + 1 :]
        if port:
            if port[:1] != b":":
                return False
            port = port[1:]
    else:
        colon = authority.find(b":")
        host = authority if colon < 0 else authority[:colon]
        port = b"" if colon < 0 else authority[colon + 1 :]
        if not host:
            return False
        n = len(host)
        i = 0
        while i < n:
            c = host[i]
            if c not in _REG_NAME:
                return False
            if c == 37 and (i + 2 >= n or host[i + 1] not in _HEXDIG or host[i + 2] not in _HEXDIG):
                return False
            i += 1
    if not port:
        return True
    digits = port.lstrip(b"0")  # bounded before int(): a port of 5,000 digits is refused too
    return port.isdigit() and len(digits) <= 5 and int(digits or b"0") <= 65535


def _check_target(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
    """(origin-form target, authority from an absolute-form target or None)."""
    if 35 in url or not url.isascii():  # 35: "#" (an int test is a memchr)
        raise BadRequest(400, "InvalidTarget")  # RFC 9112 §3.2: no fragment, ASCII only
    if url[:1] == b"/":
        return url, None
    if url == b"*":
        if method != b"OPTIONS":
            raise BadRequest(400, "AsteriskTarget")
        return url, None
    lower = url[:8].lower()
    if lower.startswith(b"http://"):
        rest = url[7:]
    elif lower.startswith(b"https://"):
        rest = url[8:]
    else:
        raise BadRequest(400, "InvalidTarget")
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = slash if slash >= 0 and (query < 0 or slash < query) else query
    if cut < 0:
        authority, target = rest, b"/"
    else:
        authority, target = rest[:cut], rest[cut:]
        if target[:1] == b"?":
            target = b"/" + target
    if not _valid_authority(authority):
        raise BadRequest(400, "InvalidHost")  # it stands for Host (RFC 9112 §3.2.2)
    return target, authority


def parse_request(
    method: bytes,
    url: bytes,
    version: str,
    parts: list[bytes],
    special: list[tuple[bytes, bytes]],
    ctx: ClientContext,
) -> RequestHead:
    """Validate a request head and render its upstream form; raises BadRequest.

    The downstream protocol classifies fields as httptools reports them: `parts` holds four
    slots for the request line, then the end-to-end fields already rendered as name, ": ",
    value, CRLF; `special` the REQUEST_SPECIAL ones as (lower-case name, value). `parts` is
    completed in place."""
    if version == "1.1":
        version_11 = True
    elif version == "1.0":
        version_11 = False
    elif version[:2] == "1.":
        version_11 = True  # RFC 9110 §2.5: a later 1.x minor version is handled as 1.1
    elif version[:1] in ("0", "1"):
        raise BadRequest(400, "InvalidVersion")
    else:
        raise BadRequest(505, "VersionNotSupported")
    if method == b"CONNECT":
        raise BadRequest(405, "ConnectNotAllowed")
    if url[:1] == b"/" and 35 not in url and url.isascii():
        target, authority = url, None  # origin-form, the common case, checked inline
    else:
        target, authority = _check_target(method, url)

    head = RequestHead()
    head.method = method
    head.target = target
    head.upstream_target = target
    query = target.find(b"?")
    head.path = (target if query < 0 else target[:query]).decode("latin-1")
    head.version_11 = version_11
    parts[0] = method
    parts[2] = target
    # The common request: Host is its only field needing a decision, perhaps with a plain
    # "Connection: close" or "keep-alive"; anything else takes the full path.
    count = len(special)
    keep_alive = version_11
    if count == 1:
        name, host = special[0]
        simple = name == b"host"
    elif count == 2:
        name, host = special[0]
        other, option = special[1]
        if name == b"connection":
            name, host, other, option = other, option, name, host
        simple = name == b"host" and other == b"connection"
        if simple:
            option = option.lower()
            if option == b"close":
                keep_alive = False
            elif option == b"keep-alive":
                keep_alive = True
            else:
                simple = False
    else:
        simple = False
    if simple and authority is None:
        if 47 in host or 32 in host or 44 in host or 64 in host:  # "/", " ", ",", "@"
            raise BadRequest(400, "InvalidHost")
        request_id = _next_request_id()
        head.content_length = -1
        head.chunked = False
        head.keep_alive = keep_alive
        head.expect_continue = False
        head.upgrade = None
        head.request_id = request_id
        head.forwarded_for = None
        head.host = host
        parts[3] = b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        parts += (b"X-Request-ID: ", request_id, b"\r\nX-Forwarded-Host: ", host, b"\r\n")
        if ctx.trusted:
            _forwarded(parts, ctx, None, None, None, None)
        else:
            parts.append(ctx.fixed_forwarded)
        parts.append(b"\r\n")
        head.upstream_head = b"".join(parts)
        head.upstream_rest = b""
        return head
    _parse_special(head, version_11, authority, parts, special, ctx)
    return head


def _forwarded(
    parts: list[bytes],
    ctx: ClientContext,
    xff: bytes | None,
    x_real_ip: bytes | None,
    x_proto: bytes | None,
    x_port: bytes | None,
) -> None:
    """The X-Forwarded-* fields for a trusted client: its values kept, its address appended."""
    parts += (
        b"X-Forwarded-For: ",
        ctx.client_ip if xff is None else xff + b", " + ctx.client_ip,
        b"\r\nX-Real-IP: ",
        ctx.client_ip if x_real_ip is None else x_real_ip,
        b"\r\nX-Forwarded-Proto: ",
        ctx.scheme if x_proto is None else x_proto,
        b"\r\nX-Forwarded-Port: ",
        ctx.port if x_port is None else x_port,
        b"\r\n",
    )


def _parse_special(
    head: RequestHead,
    version_11: bool,
    authority: bytes | None,
    parts: list[bytes],
    special: list[tuple[bytes, bytes]],
    ctx: ClientContext,
) -> None:
    """parse_request for a head with fields beyond Host: framing, Connection, Expect, ..."""
    host: bytes | None = None
    hosts = 0
    content_length = -1
    te: bytes | None = None
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    expect: bytes | None = None
    request_id: bytes | None = None
    xff: bytes | None = None
    x_proto: bytes | None = None
    x_host: bytes | None = None
    x_port: bytes | None = None
    x_real_ip: bytes | None = None
    for lname, value in special:
        if lname == b"host":
            hosts += 1
            host = value
        elif lname in HOP_BY_HOP:
            if lname == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                connection = tokens if connection is None else connection + tokens
            elif lname == b"transfer-encoding":
                if te is not None:
                    raise BadRequest(400, "DuplicateTransferEncoding")
                te = value
            elif lname == b"upgrade":
                upgrade = value
        elif lname == b"content-length":
            # httptools already rejects malformed and duplicate values; checked again because
            # this is the one field request smuggling hinges on.
            digits = value.strip(b" \t")
            if content_length >= 0 or not digits.isdigit():
                raise BadRequest(400, "InvalidContentLength")
            content_length = int(digits)
            # regenerated below: framing fields go out in canonical form
        elif lname in _FORWARDED:
            if lname == b"x-forwarded-for":
                # Kept from any client: only a trusted one's is forwarded, all are logged.
                xff = value if xff is None else xff + b", " + value
            elif ctx.trusted:
                if lname == b"x-forwarded-proto":
                    x_proto = value
                elif lname == b"x-forwarded-host":
                    x_host = value
                elif lname == b"x-forwarded-port":
                    x_port = value
                else:
                    x_real_ip = value
        elif lname == b"expect":
            expect = value
        else:  # x-request-id
            request_id = value

    if hosts > 1:
        raise BadRequest(400, "MultipleHost")
    # RFC 9112 §3.2: an HTTP/1.1 request without Host, or with an invalid one, is a 400 even
    # when an absolute-form target's authority then replaces it (§3.2.2).
    if host is None:
        if version_11:
            raise BadRequest(400, "MissingHost")
    elif 47 in host or 32 in host or 44 in host or 64 in host:  # "/", " ", ",", "@"
        raise BadRequest(400, "InvalidHost")
    if authority is not None:
        host = authority
    chunked = False
    if te is not None:
        if content_length >= 0:
            raise BadRequest(400, "ContentLengthWithTransferEncoding")
        if te.strip().lower() != b"chunked" or not version_11:
            raise BadRequest(400, "InvalidTransferEncoding")
        chunked = True

    keep_alive = version_11
    tunnel: bytes | None = None
    if connection is not None:
        if b"close" in connection:
            keep_alive = False
        elif not version_11 and b"keep-alive" in connection:
            keep_alive = True
        # h2c is hop-by-hop and cannot be proxied to an HTTP/1.1 upstream: strip it.
        if (
            upgrade is not None
            and b"upgrade" in connection
            and version_11
            and upgrade.strip().lower() != b"h2c"
        ):
            tunnel = upgrade
        extra = [t for t in connection if t and t not in _CONNECTION_OPTIONS]
        if extra:
            parts[:] = _drop_named(parts, frozenset(extra))

    expect_continue = False
    if expect is not None:
        if expect.strip().lower() != b"100-continue":
            raise BadRequest(417, "UnsupportedExpectation")
        expect_continue = version_11

    if request_id is None:
        request_id = _next_request_id()
    if host is not None:
        parts += (
            b"X-Request-ID: ",
            request_id,
            b"\r\nX-Forwarded-Host: ",
            x_host if x_host is not None else host,
            b"\r\n",
        )
    else:
        parts += (b"X-Request-ID: ", request_id, b"\r\n")
    if ctx.trusted:
        _forwarded(parts, ctx, xff, x_real_ip, x_proto, x_port)
    else:
        parts.append(ctx.fixed_forwarded)
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length >= 0:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if tunnel is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", tunnel, b"\r\n")
    parts.append(b"\r\n")

    head.content_length = content_length
    head.chunked = chunked
    head.keep_alive = keep_alive
    head.expect_continue = expect_continue and (chunked or content_length > 0)
    head.upgrade = tunnel
    head.request_id = request_id
    head.forwarded_for = xff
    if host is None:
        head.host = b""
        head.upstream_head = None
        head.upstream_rest = b"".join(parts[4:])
    else:
        head.host = host
        parts[3] = b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        head.upstream_head = b"".join(parts)
        head.upstream_rest = b""


def _drop_named(parts: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Remove header fields named in Connection from the rendered parts (rare path)."""
    out = parts[:4]
    for i in range(4, len(parts), 4):
        if parts[i].lower() not in names:
            out.extend(parts[i : i + 4])
    return out


# Response fields render_response decides about; all others are copied as they came. A response
# step can replace only these (see render_response).
RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"content-length", b"server", b"strict-transport-security"}
RESPONSE_NAMES: Final = FieldNames(RESPONSE_SPECIAL)

# The end of a chunked body (no trailers).
LAST_CHUNK: Final = b"0\r\n\r\n"

# Response body framing towards the client.
FRAME_NONE: Final = 0  # no body (HEAD, 1xx, 204, 304)
FRAME_LENGTH: Final = 1  # Content-Length, passed through
FRAME_CHUNKED: Final = 2  # re-chunked by us (upstream chunked or read-to-close)
FRAME_CLOSE: Final = 3  # delimited by closing the client connection (HTTP/1.0 clients)

# Status lines with the standard reason phrases (the upstream's own phrase is not kept:
# RFC 9112 §4 says clients ignore it, and not collecting it saves a callback per response).
_STATUS_LINES: Final[dict[int, bytes]] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus
}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Status\r\n" % status
    return line


class ResponseHead:
    """The client-facing head of an upstream response and how its body is framed."""

    __slots__ = ("data", "framing", "keep_alive", "length", "upstream_chunked")

    data: bytes
    framing: int
    keep_alive: bool  # the client connection may stay open after this response
    upstream_chunked: bool
    length: int  # the body's Content-Length (FRAME_LENGTH), else -1


def render_response(
    status: int,
    parts: list[bytes],
    special: list[tuple[bytes, bytes, bytes]],
    head_request: bool,
    version_11: bool,
    keep_alive: bool,
    added: bytes,
    replaced: frozenset[bytes],
) -> ResponseHead:
    """Rewrite an upstream response head for the client; raises ValueError if it is invalid.

    The upstream protocol classifies fields as they are parsed: `parts` holds the end-to-end
    ones already rendered as name, ": ", value, CRLF (parts[0] is set here to the status
    line), `special` the RESPONSE_SPECIAL ones as (lower-case name, name, value). `added` are
    the fields of the route's response steps, rendered (b"": none); `replaced` the lower-case
    names of the pod's RESPONSE_SPECIAL fields they replace (a Strict-Transport-Security of
    ours replaces the pod's, as ingress-nginx's does, so a client never sees two policies)."""
    out = ResponseHead()
    parts, has_server = _end_to_end(status, parts, special, head_request, version_11, replaced, out)
    append = parts.append
    if not has_server:
        append(b"Server: portico\r\n")
    if added:
        append(added)
    if out.framing == FRAME_CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    elif out.framing == FRAME_CLOSE:
        keep_alive = False
    if not keep_alive:
        append(b"Connection: close\r\n\r\n")
    elif not version_11:
        append(b"Connection: keep-alive\r\n\r\n")
    else:
        append(b"\r\n")
    out.keep_alive = keep_alive
    out.data = b"".join(parts)
    return out


def response_fields(
    status: int,
    parts: list[bytes],
    special: list[tuple[bytes, bytes, bytes]],
    head_request: bool,
    added: bytes,
    replaced: frozenset[bytes],
) -> tuple[list[tuple[bytes, bytes]], ResponseHead]:
    """The same response as `render_response` gives an HTTP/1.1 client, as HTTP/2 fields
    (RFC 9113 §8.3.2: `:status` first, names in lower case, no connection-specific field) for
    proxy/h2server.py, without rendering the head to parse it again. The ResponseHead's
    `data` is empty; its framing is what an HTTP/1.1 keep-alive client would get."""
    out = ResponseHead()
    parts, has_server = _end_to_end(status, parts, special, head_request, True, replaced, out)
    fields = [(b":status", b"%d" % status)]
    append = fields.append
    # parts[1:] is name, ": ", value, CRLF per field; none is connection-specific (those
    # are all RESPONSE_SPECIAL, and _end_to_end keeps none of them).
    for i in range(1, len(parts), 4):
        append((parts[i].lower(), parts[i + 2]))
    if not has_server:
        append((b"server", b"portico"))
    if added:
        for line in added.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                append((name.lower(), value.strip(b" \t")))
    out.keep_alive = True
    out.data = b""
    return fields, out


def _end_to_end(
    status: int,
    parts: list[bytes],
    special: list[tuple[bytes, bytes, bytes]],
    head_request: bool,
    version_11: bool,
    replaced: frozenset[bytes],
    out: ResponseHead,
) -> tuple[list[bytes], bool]:
    """What every client gets of the pod's head, whatever its protocol: `parts` with the
    status line first and the pod's end-to-end fields (content-length and server included,
    hop-by-hop and replaced ones dropped, and the fields Connection names), four items per
    field; whether the pod sent a Server field; and `out`'s framing and length."""
    line = _STATUS_LINES.get(status)
    parts[0] = line if line is not None else status_line(status)
    has_server = False
    length = -1
    chunked = False
    connection: list[bytes] | None = None
    for lname, name, value in special:
        if lname == b"content-length":
            if length >= 0:
                raise ValueError("duplicate content-length from upstream")
            length = int(value)  # httptools accepted it: digits
            parts += (name, b": ", value, b"\r\n")
        elif lname == b"server":
            has_server = True
            parts += (name, b": ", value, b"\r\n")
        elif lname == b"connection":
            # "keep-alive" / "close" (what servers send) name no other field to drop.
            if value.lower() not in _CONNECTION_OPTIONS:
                tokens = [t.strip().lower() for t in value.split(b",")]
                connection = tokens if connection is None else connection + tokens
        elif lname == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or chunked:
                raise ValueError("unsupported transfer-encoding from upstream")
            chunked = True
        elif lname not in HOP_BY_HOP and lname not in replaced:
            parts += (name, b": ", value, b"\r\n")
        # Any other hop-by-hop field is dropped, and the pod's fields a step replaces.
    if connection is not None:
        # Content-Length stays whatever Connection names: the body is framed by it.
        named = [
            t for t in connection if t and t not in _CONNECTION_OPTIONS and t != b"content-length"
        ]
        if named:
            parts = _drop_named_response(parts, frozenset(named))
    out.upstream_chunked = chunked
    if head_request or status < 200 or status in {204, 304}:
        out.framing = FRAME_NONE
        out.length = -1
    elif length >= 0 and not chunked:
        out.framing = FRAME_LENGTH
        out.length = length
    elif version_11:
        out.framing = FRAME_CHUNKED
        out.length = -1
    else:
        out.framing = FRAME_CLOSE
        out.length = -1
    return parts, has_server


def _drop_named_response(parts: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    out = parts[:1]
    for i in range(1, len(parts), 4):
        if parts[i].lower() not in names:
            out.extend(parts[i : i + 4])
    return out


def drop_response_fields(parts: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """The pod's ordinary response fields (as the upstream protocol collects them for
    render_response) without those named (lower-case): the ones a route's step replaces."""
    return _drop_named_response(parts, names)


def render_switching(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 head for the client: end-to-end fields plus Connection/Upgrade kept as sent."""
    parts: list[bytes] = [status_line(101)]
    upgrade = b"websocket"
    for name, value in headers:
        lname = name.lower()
        if lname == b"upgrade":
            upgrade = value
            continue
        if lname in HOP_BY_HOP:
            continue
        parts.extend((name, b": ", value, b"\r\n"))
    parts.extend((b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n"))
    return b"".join(parts)
