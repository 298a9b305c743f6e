"""The routing snapshot: the only contract between the controller and the proxy.

The controller's compiler produces a `Snapshot`; the publisher encodes it with `encode_snapshot`
and workers decode it with `decode_snapshot`, then build lookup structures from it. Everything
here is a frozen, slotted dataclass so a snapshot can be shared freely and never mutated.

Routes and endpoints are kept apart on purpose: `Snapshot.routes` (virtual hosts, path rules)
changes only when Ingresses change, while `Snapshot.backends` (endpoints per backend) changes
with every EndpointSlice update. An `EndpointsUpdate` carries only the backends that changed,
so endpoint churn never re-sends or rebuilds routes.

A route's policy (`RouteOptions.policy`) is an ordered tuple of typed steps that run around
forwarding (HTTPS redirect, body limit, HSTS, a fixed refusal, ...): what each means is said
here, how it runs is proxy/policy.py's business.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from proxy.regex import compile_header_pattern, compile_path

SCHEMA_VERSION: Final = 2

# "regex": the path is a case-insensitive regular expression matched at the start of the request
# path (ingress-nginx's `use-regex`, `~* "^<path>"`), tried in the virtual host's rule order.
MatchKind = Literal["exact", "prefix", "regex"]
BalancerKind = Literal["round_robin", "least_request"]
UpstreamProtocol = Literal["HTTP", "HTTPS", "GRPC", "GRPCS"]


class SnapshotError(ValueError):
    """A snapshot (or update) that cannot be decoded: wrong schema version or malformed."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address a backend can be dialled at (a pod IP, or a DNS name for ExternalName)."""

    address: str
    port: int
    # True: the endpoint is ready. False: serving but terminating, used only when a backend has
    # no ready endpoint at all (as kube-proxy does).
    ready: bool = True
    # "ns/pod-name" from the EndpointSlice targetRef, for logs and `portico explain`.
    target: str | None = None

    @property
    def authority(self) -> str:
        """`ip:port`, with IPv6 addresses in brackets."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Backend:
    """Where one Ingress backend (`namespace/service/port`) sends traffic.

    `unavailable` is set when the backend cannot serve at all (Service or port missing): the
    proxy answers 503 with that CamelCase reason. An empty `endpoints` tuple with no
    `unavailable` reason also answers 503 (`NoEndpoints`).
    """

    key: str  # BackendKey "ns/service/port" (port as written in the Ingress)
    endpoints: tuple[Endpoint, ...] = ()
    unavailable: str | None = None
    # ExternalName Services: endpoints carry a DNS name resolved by the proxy.
    external_name: bool = False

    @property
    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        ready = tuple(e for e in self.endpoints if e.ready)
        return ready if ready else self.endpoints


# ---- route policy steps -----------------------------------------------------------------------
# Each step is data only, validated when built (a bad one is a SnapshotError on decode). The
# proxy runs a route's steps in order: request steps once the head is routed (any of them may
# answer locally instead of forwarding, which ends the exchange), response steps on the response
# head, a pod's or a local answer's. The worker's settings add proxy-wide steps (--hsts,
# --max-body-bytes) to every route whose own list has no step of that kind.


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class HTTPSRedirect:
    """Requests on the plain-HTTP listener are redirected to `https://host/target` (308 keeps
    the method and body; ingress-nginx's `ssl-redirect`)."""

    status: int = 308
    # ingress-nginx's `preserve-trailing-slash`: keep a target's trailing "/" in the Location
    # (without it, as ingress-nginx, the "/" is dropped: see proxy/redirect.py).
    preserve_trailing_slash: bool = False

    def __post_init__(self) -> None:
        _check(self.status in (301, 302, 303, 307, 308), f"redirect status {self.status}")


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """Request bodies above `max_bytes` are refused with 413: before forwarding when
    Content-Length says so, else once the body read passes it. 0: unlimited (overriding the
    proxy's --max-body-bytes)."""

    max_bytes: int

    def __post_init__(self) -> None:
        _check(self.max_bytes >= 0, f"body limit {self.max_bytes}")


@dataclass(frozen=True, slots=True)
class HSTS:
    """Responses on the HTTPS listener carry this Strict-Transport-Security field, replacing
    the pod's own."""

    max_age: int = 31_536_000
    include_subdomains: bool = True
    preload: bool = False

    def __post_init__(self) -> None:
        _check(self.max_age >= 0, f"HSTS max-age {self.max_age}")


@dataclass(frozen=True, slots=True)
class Refuse:
    """Every request is answered by the proxy with `status` and never reaches a pod;
    `reason` (CamelCase) is logged with it (e.g. 403 AccessControlNotEnforced)."""

    status: int
    reason: str

    def __post_init__(self) -> None:
        _check(400 <= self.status <= 599, f"refusal status {self.status}")
        _check(self.reason.isidentifier(), f"refusal reason {self.reason!r}")


@dataclass(frozen=True, slots=True)
class SourceRanges:
    """The real client address (the peer, or what a trusted proxy says it forwards for, see
    proxy/sourceranges.py) decides: in a `deny` network, 403; else, when `allow` is not empty,
    outside every `allow` network, 403 (ingress-nginx's denylist-source-range and
    allowlist-source-range: nginx `deny` rules, then `allow` rules and `deny all`). Networks
    are CIDR strings, IPv4 or IPv6, in canonical form (host bits cleared)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(bool(self.allow or self.deny), "source ranges without any network")
        for cidr in (*self.allow, *self.deny):
            _check(type(cidr) is str, f"source range {cidr!r}")
            _check(str(ipaddress.ip_network(cidr)) == cidr, f"source range {cidr!r}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests and requests in progress per real client address (the address SourceRanges
    checks), counted for the whole proxy across its worker processes (proxy/ratelimit.py):
    ingress-nginx's limit-connections, limit-rpm, limit-rps (nginx's limit_conn and
    limit_req ... burst=B nodelay, checked in that order). `zone` names the counters (the
    Ingress "namespace/name": its routes share them, as ingress-nginx gives each Ingress its
    zones); `rpm` / `rps` 0: no such limit, each with a burst of `burst_multiplier` times
    itself; `connections` 0: none. A client in an `allow` network (canonical CIDRs,
    limit-allowlist) is not limited. Refused requests get `status` (the ConfigMap's
    limit-req-status-code) or `connection_status` (limit-conn-status-code)."""

    zone: str
    rps: int = 0
    rpm: int = 0
    burst_multiplier: int = 5
    connections: int = 0
    allow: tuple[str, ...] = ()
    status: int = 503
    connection_status: int = 503

    def __post_init__(self) -> None:
        _check(type(self.zone) is str and bool(self.zone), "rate limit without a zone")
        for value in (self.rps, self.rpm, self.burst_multiplier, self.connections):
            _check(type(value) is int and 0 <= value < 1 << 31, f"rate limit value {value!r}")
        _check(bool(self.rps or self.rpm or self.connections), "rate limit without a limit")
        _check(400 <= self.status <= 599, f"rate limit status {self.status}")
        _check(400 <= self.connection_status <= 599, f"rate limit status {self.connection_status}")
        for cidr in self.allow:
            _check(type(cidr) is str, f"rate limit allowlist entry {cidr!r}")
            _check(str(ipaddress.ip_network(cidr)) == cidr, f"rate limit allowlist {cidr!r}")


# RFC 9110 §5.1 field names (tokens); §5.5 field values, as ASCII: visible characters, spaces
# and tabs, never CR, LF or NUL (which could end the field or the head) nor obs-text.
_FIELD_NAME: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE: Final = re.compile(r"^[\t\x20-\x7e]*\Z")
# host[:port] sent as Host: a DNS name or IPv4 address, or a bracketed IPv6 address.
_HOST_PORT: Final = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::[0-9]{1,5})?\Z"
)
# Fields no step may set: framing (the proxy frames the body), hop-by-hop ones (RFC 9110
# §7.6.1; Connection is ShapeRequest.connection's), Host (ShapeRequest.host's).
_REQUEST_RESERVED: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
# The response fields the proxy decides itself (framing, hop-by-hop, Server, HSTS).
_RESPONSE_RESERVED: Final = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "server",
        "strict-transport-security",
    }
)


def _check_fields(
    names: tuple[str, ...], values: tuple[str, ...], reserved: frozenset[str]
) -> None:
    _check(len(names) == len(values), "header names and values differ in number")
    _check(len({n.lower() for n in names}) == len(names), f"header names repeat: {names!r}")
    for name, value in zip(names, values, strict=True):
        _check(type(name) is str and bool(_FIELD_NAME.match(name)), f"header name {name!r}")
        _check(name.lower() not in reserved, f"header {name!r} cannot be set")
        _check(type(value) is str and bool(_FIELD_VALUE.match(value)), f"header value {value!r}")
        _check(value == value.strip(" \t"), f"header value {value!r} has outer whitespace")


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """What the pod is sent differs from what the client sent: `host` is the Host sent
    (ingress-nginx's upstream-vhost; "": the client's); `names`/`values` are fields set,
    replacing the client's fields of the same name, an empty value removing it (nginx's
    `proxy_set_header`: the ConfigMap's proxy-set-headers); `connection` ("close" or
    "keep-alive"; "": none) is sent as Connection (connection-proxy-header), except on upgrade
    requests, which keep `Connection: upgrade`; after "close" the connection is not reused."""

    host: str = ""
    names: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    connection: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.host or self.names or self.connection), "request shaping without change")
        _check(type(self.host) is str, f"upstream host {self.host!r}")
        _check(not self.host or bool(_HOST_PORT.match(self.host)), f"upstream host {self.host!r}")
        _check(self.connection in ("", "close", "keep-alive"), f"connection {self.connection!r}")
        _check_fields(self.names, self.values, _REQUEST_RESERVED)


@dataclass(frozen=True, slots=True)
class ResponseHeaders:
    """Every response of the route carries these fields, replacing the pod's of the same name
    (ingress-nginx's custom-headers: `more_set_headers`); values are sent as written."""

    names: tuple[str, ...]
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(bool(self.names), "response headers without any field")
        _check_fields(self.names, self.values, _RESPONSE_RESERVED)
        _check(all(self.values), "empty response header value")


# A CORS origin as ingress-nginx accepts one in cors-allow-origin: scheme://host[:port], the
# host perhaps starting with one wildcard label ("*."), or "null".
CORS_ORIGIN: Final = re.compile(r"(?:[a-z]+://(?:\*\.)?[A-Za-z0-9.-]*(?::[0-9]+)?|null)")
# The characters of the CORS methods, headers and exposed headers lists (one field value each).
_CORS_LIST: Final = re.compile(r"[A-Za-z0-9_*, -]*")


@dataclass(frozen=True, slots=True)
class Cors:
    """CORS (ingress-nginx's enable-cors and cors-* annotations). A request whose Origin is
    allowed (`origins`; ("*",): every request, Origin or not) gets the Access-Control-* fields
    on every response of the route, replacing the pod's, and an OPTIONS request with such an
    Origin is answered 204 by the proxy (the preflight). `origins` () allows none."""

    origins: tuple[str, ...]
    methods: str
    headers: str
    expose_headers: str
    credentials: bool
    max_age: int

    def __post_init__(self) -> None:
        if self.origins != ("*",):
            for origin in self.origins:
                _check(
                    type(origin) is str and CORS_ORIGIN.fullmatch(origin) is not None,
                    f"CORS origin {origin!r}",
                )
        for text in (self.methods, self.headers, self.expose_headers):
            _check(
                type(text) is str and _CORS_LIST.fullmatch(text) is not None, f"CORS list {text!r}"
            )
        _check(bool(self.methods.strip()), "CORS methods empty")
        _check(self.methods == self.methods.strip(), f"CORS methods {self.methods!r}")
        _check(self.headers == self.headers.strip(), f"CORS headers {self.headers!r}")
        _check(self.expose_headers == self.expose_headers.strip(), "CORS exposed headers")
        _check(-(2**31) <= self.max_age < 2**31, f"CORS max-age {self.max_age}")


# The statuses nginx's `return` answers with a Location (the others take the text as a body).
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})


def _header_safe(text: str) -> bool:
    """Visible ASCII only: nothing that could end or split a header field."""
    return bool(text) and all(0x21 <= ord(c) <= 0x7E for c in text)


@dataclass(frozen=True, slots=True)
class Redirect:
    """Every request is answered `status` with `Location: url`, on both listeners, and never
    reaches a pod; the request's path and query are not appended (ingress-nginx's
    permanent-redirect and temporal-redirect: nginx `return <status> <url>`). `url` is an
    absolute http:// or https:// URL."""

    url: str
    status: int

    def __post_init__(self) -> None:
        _check(self.status in REDIRECT_STATUSES, f"redirect status {self.status}")
        _check(type(self.url) is str and _header_safe(self.url), f"redirect URL {self.url!r}")
        scheme, sep, rest = self.url.partition("://")
        _check(
            scheme.lower() in ("http", "https") and bool(sep and rest),
            f"redirect URL {self.url!r}",
        )


@dataclass(frozen=True, slots=True)
class HostRedirect:
    """Every request is answered `status` with `Location: <scheme>://<host><target>`, the
    scheme of the listener it came on and the request's target without one trailing "/", and
    never reaches a pod (ingress-nginx's from-to-www-redirect: the compiler gives the other
    name of a host a route with this step). `host` is a lower-case DNS name."""

    host: str
    status: int = 308

    def __post_init__(self) -> None:
        _check(self.status in REDIRECT_STATUSES, f"redirect status {self.status}")
        _check(
            type(self.host) is str
            and _header_safe(self.host)
            and self.host == self.host.lower()
            and all(c.isalnum() or c in "-." for c in self.host),
            f"redirect host {self.host!r}",
        )


# A rewrite template: path characters (ingress-nginx's RegexPathWithCapture: letters, digits,
# "-._~/:") and captures "$0" .. "$9" of the route's path expression.
_TEMPLATE: Final = re.compile(r"^(?:[-._~/:A-Za-z0-9]|\$[0-9])*$")


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The pod is sent another path (ingress-nginx's `rewrite-target`, nginx `rewrite
    "(?i)<pattern>" <target> break;`): `pattern` (a path expression, proxy/regex.py) is matched
    at the start of the request path and `target` is the new path, its "$N" replaced by the
    N-th capture ("" when it took no part); the request's query, if any, follows. The client's
    request stays as sent for logs and redirects. When the result does not start with "/" the
    request is answered 500 (InvalidRewrite), never forwarded. `forwarded_prefix` (with
    captures too): the `X-Forwarded-Prefix` field sent to the pod, replacing the client's
    (`x-forwarded-prefix`); "" sends none."""

    pattern: str
    target: str
    forwarded_prefix: str = ""

    def __post_init__(self) -> None:
        _check(type(self.pattern) is str and self.pattern.startswith("/"), "rewrite pattern")
        compile_path(self.pattern)  # PatternError (a ValueError) when RE2 cannot take it
        for template in (self.target, self.forwarded_prefix):
            _check(bool(_TEMPLATE.match(template)), f"rewrite template {template!r}")
        _check(self.target != "", "empty rewrite target")


@dataclass(frozen=True, slots=True)
class AppRoot:
    """A request for exactly "/" is answered `302 Found` with `Location:
    <scheme>://<Host as sent><path>` (ingress-nginx's `app-root`, nginx's server-level `if ($uri
    = /) { return 302 $scheme://$http_host<path>; }`: the query is not kept)."""

    path: str

    def __post_init__(self) -> None:
        _check(
            self.path.startswith("/") and bool(_TEMPLATE.match(self.path)) and "$" not in self.path,
            f"app root {self.path!r}",
        )


@dataclass(frozen=True, slots=True)
class ErrorPages:
    """The route's default backend (ingress-nginx's `default-backend` and `custom-http-errors`;
    built by proxy/route.py, run by proxy/errorpages.py): a pod response whose status is in
    `codes` is not relayed; the client gets the answer of `backend` to `GET /` (HEAD for
    HEAD) with X-Code and the other ingress-nginx error headers instead. With `fallback`, a
    request the route cannot serve for lack of endpoints goes to `backend` as it is, with
    X-Code: 503. `backend` is a key into Snapshot.backends, `service` its "ns/name" (logs)."""

    backend: str
    service: str
    codes: tuple[int, ...] = ()
    fallback: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.backend) and bool(self.service), "error pages without a backend")
        _check(bool(self.codes) or self.fallback, "error pages without codes or fallback")
        for code in self.codes:
            _check(type(code) is int and 400 <= code <= 599, f"error page status {code!r}")


def _visible(text: str) -> bool:
    """Printable ASCII without spaces: safe in a response field, nothing to unquote."""
    return all("!" <= c <= "~" for c in text)


@dataclass(frozen=True, slots=True)
class RewriteRedirects:
    """nginx's `proxy_redirect prefix replacement` (ingress-nginx's proxy-redirect-from / -to):
    a pod's Location, and the URL after `url=` in its Refresh, that starts with `prefix`
    (case-sensitive) has it replaced by `replacement`. A rewritten Location that then starts
    with "/" is made absolute as nginx does (listener scheme, the request's host without its
    port: ingress-nginx's port_in_redirect off). See proxy/fieldrewrite.py."""

    prefix: str
    replacement: str

    def __post_init__(self) -> None:
        _check(bool(self.prefix) and _visible(self.prefix), f"redirect prefix {self.prefix!r}")
        _check(
            bool(self.replacement) and _visible(self.replacement),
            f"redirect replacement {self.replacement!r}",
        )


@dataclass(frozen=True, slots=True)
class RewriteCookies:
    """nginx's `proxy_cookie_domain` / `proxy_cookie_path` on the pod's Set-Cookie fields:
    a Domain attribute equal to `domain` (case-insensitive, a leading "." of either ignored and
    kept) becomes `domain_replacement`; a Path attribute starting with `path` (case-sensitive)
    has it replaced by `path_replacement`. "" on both sides of a pair: no rewrite of that
    attribute. Domains are given without a leading ".". See proxy/fieldrewrite.py."""

    domain: str = ""
    domain_replacement: str = ""
    path: str = ""
    path_replacement: str = ""

    def __post_init__(self) -> None:
        pairs = ((self.domain, self.domain_replacement), (self.path, self.path_replacement))
        _check(any(a for a, _ in pairs), "cookie rewrite without any rule")
        for pattern, replacement in pairs:
            _check(bool(pattern) == bool(replacement), f"cookie rewrite {pattern!r}")
            for text in (pattern, replacement):
                _check(_visible(text) and ";" not in text, f"cookie rewrite text {text!r}")
        _check(not self.domain.startswith("."), f"cookie domain {self.domain!r}")
        _check(not self.domain_replacement.startswith("."), f"cookie domain {self.domain!r}")


# auth-tls-verify-client's values (nginx's ssl_verify_client).
CLIENT_VERIFY_MODES: Final = ("on", "optional", "optional_no_ca", "off")


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """Client certificates on the HTTPS listener (ingress-nginx's auth-tls-*; built by
    proxy/clientauth.py, the handshake side in proxy/peercert.py and proxy/tls.py). The host's
    handshake asks for a certificate (unless `verify` is "off") and checks it against `ca_pem`
    to `depth`; each request is then answered as nginx does: 400 for a certificate that did
    not verify (495; "optional_no_ca" lets an unknown issuer through) or, with "on", for none
    (496), or a 302 to `error_page` instead; 403 when `match_cn` (a regular expression, RE2)
    is not found in the subject DN. The pod is sent ssl-client-verify, -subject-dn,
    -issuer-dn and, with `pass_certificate`, ssl-client-cert (the URL-encoded PEM), replacing
    any the client sent."""

    ca_pem: str
    verify: str = "on"
    depth: int = 1
    error_page: str = ""
    pass_certificate: bool = False
    match_cn: str = ""

    def __post_init__(self) -> None:
        _check(
            type(self.ca_pem) is str and "-----BEGIN CERTIFICATE-----" in self.ca_pem,
            "client CA bundle",
        )
        _check(self.verify in CLIENT_VERIFY_MODES, f"verify-client {self.verify!r}")
        _check(type(self.depth) is int and 1 <= self.depth <= 100, f"verify depth {self.depth!r}")
        _check(
            self.error_page == ""
            or (self.error_page.startswith(("http://", "https://")) and _visible(self.error_page)),
            f"error page {self.error_page!r}",
        )
        if self.match_cn:
            compile_header_pattern(self.match_cn)  # PatternError (a ValueError)


# ingress-nginx's session-cookie-max-age / -expires: whole seconds, a sign allowed (its regex).
_COOKIE_SECONDS: Final = re.compile(r"^(0|-?[1-9][0-9]{0,11})$")
# A cookie name as RFC 6265 allows it (a token), kept to what ingress-nginx's validator takes.
_COOKIE_NAME: Final = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
# A cookie Domain / Path: visible ASCII without ";" (nothing that ends the attribute).
_COOKIE_ATTRIBUTE: Final = re.compile(r"^[!-:<-~]{1,256}$")
SAMESITE_VALUES: Final = ("", "None", "Lax", "Strict")


@dataclass(frozen=True, slots=True)
class StickySessions:
    """Session affinity by cookie (ingress-nginx's `affinity: cookie` and its session-cookie-*
    annotations; built by proxy/route.py, run by proxy/affinity.py): a request carrying the
    cookie `name` goes to the pod it names, one without (or naming a pod that left) is given
    one and the cookie. `mode` "balanced": the cookie holds a random key placed on a
    consistent-hash ring of the pods (scaling moves some sessions, as it rebalances);
    "persistent": it names the pod itself (a session moves only when its pod leaves). `path`
    "": the rule's path ("/" for a regex rule); `max_age` / `expires` "": not sent, else whole
    seconds as written; `samesite` one of SAMESITE_VALUES; `secure`: always Secure (else only
    on HTTPS); `conditional_samesite_none`: no SameSite=None for user agents that mishandle it;
    `change_on_failure`: a request that had to go to another pod gets a new cookie for it."""

    name: str = "INGRESSCOOKIE"
    mode: str = "balanced"
    path: str = ""
    domain: str = ""
    max_age: str = ""
    expires: str = ""
    samesite: str = ""
    secure: bool = False
    conditional_samesite_none: bool = False
    change_on_failure: bool = False

    def __post_init__(self) -> None:
        _check(bool(_COOKIE_NAME.match(self.name)), f"affinity cookie name {self.name!r}")
        _check(self.mode in ("balanced", "persistent"), f"affinity mode {self.mode!r}")
        for text in (self.path, self.domain):
            _check(not text or bool(_COOKIE_ATTRIBUTE.match(text)), f"cookie attribute {text!r}")
        _check(not self.path or self.path.startswith("/"), f"cookie path {self.path!r}")
        for seconds in (self.max_age, self.expires):
            _check(not seconds or bool(_COOKIE_SECONDS.match(seconds)), f"seconds {seconds!r}")
        _check(self.samesite in SAMESITE_VALUES, f"samesite {self.samesite!r}")


# nginx variables upstream-hash-by may name: the request's own, and the families by prefix
# (a header, a cookie, a query argument). Others (server or upstream state) have no meaning
# before a pod is chosen, or none in Portico: refused rather than hashed as "".
HASH_VARIABLES: Final = frozenset(
    {
        "request_uri",
        "uri",
        "document_uri",
        "args",
        "query_string",
        "is_args",
        "host",
        "remote_addr",
        "binary_remote_addr",
        "scheme",
        "request_method",
    }
)
HASH_VARIABLE_PREFIXES: Final = ("http_", "cookie_", "arg_")
_HASH_TOKEN: Final = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))|([^$]+)")


def hash_terms(expression: str) -> tuple[tuple[str, str], ...]:
    """upstream-hash-by's value as nginx reads a complex value: ("", text) for literal text,
    (variable, "") for `$variable` / `${variable}`. ValueError: not one it can be."""
    if not expression or len(expression) > 512 or not _header_safe(expression.replace(" ", "!")):
        raise ValueError("expected nginx variables and text, like $request_uri")
    terms: list[tuple[str, str]] = []
    position = 0
    while position < len(expression):
        m = _HASH_TOKEN.match(expression, position)
        if m is None:
            raise ValueError(f"a '$' without a variable name at {position}")
        braced, bare, text = m.groups()
        if text is not None:
            terms.append(("", text))
        else:
            name = (braced or bare).lower()
            known = name in HASH_VARIABLES or any(
                name.startswith(p) and len(name) > len(p) for p in HASH_VARIABLE_PREFIXES
            )
            if not known:
                raise ValueError(f"${name} is not a request variable Portico hashes on")
            terms.append((name, ""))
        position = m.end()
    if all(not variable for variable, _ in terms):
        raise ValueError("no variable: every request would go to the same pod")
    return tuple(terms)


@dataclass(frozen=True, slots=True)
class HashBy:
    """Consistent hashing (ingress-nginx's upstream-hash-by; run by proxy/affinity.py): the
    request's `expression` (nginx variables and text, see `hash_terms`) is hashed onto a ring
    of the pods, so a key keeps its pod and a pod that leaves moves only its own keys. With
    `subset`, the ring holds groups of `subset_size` pods and a request goes to one of its
    group's pods at random (upstream-hash-by-subset)."""

    expression: str
    subset: bool = False
    subset_size: int = 3

    def __post_init__(self) -> None:
        try:
            hash_terms(self.expression)
        except ValueError as exc:
            raise SnapshotError(f"upstream hash {self.expression!r}: {exc}") from None
        size = self.subset_size
        _check(type(size) is int and 1 <= size <= 1000, f"subset size {size!r}")


# The request variables an external-auth URL or sign-in URL may hold (nginx variables
# ingress-nginx users write there), each rendered per request by proxy/extauth.py.
AUTH_URL_VARIABLES: Final = (
    "$escaped_request_uri",
    "$request_method",
    "$pass_access_scheme",
    "$request_uri",
    "$http_host",
    "$scheme",
    "$host",
)
# What an auth-cache-key may hold besides literal text: nginx variables of the request.
_CACHE_KEY: Final = re.compile(
    r"^(?:[A-Za-z0-9._~:/@=,+-]|\$(?:remote_user|http_authorization|cookie_[A-Za-z0-9_-]+"
    r"|http_[a-z0-9_]+|host|request_uri|uri|remote_addr|scheme)\b)+\Z"
)
_AUTH_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
)


def _auth_url(text: str) -> bool:
    """An absolute http(s) URL with a host, of visible ASCII, whose "$" start only the
    variables of AUTH_URL_VARIABLES."""
    if not (text.startswith(("http://", "https://")) and _visible(text)):
        return False
    rest = text.split("//", 1)[1]
    if not rest or rest[0] in "/?#":
        return False
    for variable in AUTH_URL_VARIABLES:
        rest = rest.replace(variable, "")
    return "$" not in rest


@dataclass(frozen=True, slots=True)
class ExternalAuth:
    """Each request is first asked about to `url` (ingress-nginx's auth-url, nginx's
    `auth_request`; run by proxy/extauth.py): a subrequest without the body, with `method`
    ("": GET, as nginx's subrequests; set: also X-Original-URI and X-Scheme), the client's
    fields and ingress-nginx's (X-Original-URL, X-Original-Method, X-Auth-Request-Redirect:
    `request_redirect` or the request target, X-Sent-From, X-Real-IP, X-Forwarded-For), plus
    `set_names`/`set_values` (auth-proxy-set-headers). A 2xx answer lets the request go on, its
    `response_headers` replacing the client's fields of those names in what the pod is sent,
    and its Set-Cookie added to the response (2xx/3xx ones, or every one with
    `always_set_cookie`); 401 is answered 401, or with `signin` a 302 to it (the original URL
    in its `signin_redirect_param` query parameter unless it has one); 403 is 403; anything
    else, a failure or a timeout is 500: never a pass. `url` and `signin` may hold the
    variables of AUTH_URL_VARIABLES. With `cache_key` (literal text and request variables),
    answers with a status in `cache_statuses` are kept `cache_seconds` (parallel tuples) per
    key. `keepalive` idle connections to the auth service are kept (0: none), each closed after
    `keepalive_timeout` seconds idle; `keepalive_requests` is ingress-nginx's limit of requests
    per connection."""

    url: str
    method: str = ""
    signin: str = ""
    signin_redirect_param: str = "rd"
    response_headers: tuple[str, ...] = ()
    request_redirect: str = ""
    set_names: tuple[str, ...] = ()
    set_values: tuple[str, ...] = ()
    cache_key: str = ""
    cache_statuses: tuple[int, ...] = ()
    cache_seconds: tuple[int, ...] = ()
    always_set_cookie: bool = False
    keepalive: int = 0
    keepalive_requests: int = 1000
    keepalive_timeout: int = 60

    def __post_init__(self) -> None:
        _check(type(self.url) is str and _auth_url(self.url), f"auth url {self.url!r}")
        _check(not self.signin or _auth_url(self.signin), f"auth signin {self.signin!r}")
        _check(self.method == "" or self.method in _AUTH_METHODS, f"auth method {self.method!r}")
        _check(
            bool(self.signin_redirect_param)
            and _visible(self.signin_redirect_param)
            and not any(c in "&=#?$" for c in self.signin_redirect_param),
            f"auth signin redirect param {self.signin_redirect_param!r}",
        )
        for name in self.response_headers:
            _check(
                type(name) is str
                and bool(_FIELD_NAME.match(name))
                and name.lower() not in _REQUEST_RESERVED,
                f"auth response header {name!r}",
            )
        _check(
            self.request_redirect == "" or _visible(self.request_redirect),
            f"auth request redirect {self.request_redirect!r}",
        )
        _check_fields(self.set_names, self.set_values, _REQUEST_RESERVED)
        _check(
            self.cache_key == "" or bool(_CACHE_KEY.match(self.cache_key)),
            f"auth cache key {self.cache_key!r}",
        )
        _check(len(self.cache_statuses) == len(self.cache_seconds), "auth cache statuses and times")
        for status, seconds in zip(self.cache_statuses, self.cache_seconds, strict=True):
            _check(type(status) is int and 100 <= status <= 599, f"auth cache status {status!r}")
            _check(type(seconds) is int and seconds > 0, f"auth cache time {seconds!r}")
        for number in (self.keepalive, self.keepalive_requests, self.keepalive_timeout):
            _check(type(number) is int and number >= 0, f"auth keep-alive setting {number!r}")


@dataclass(frozen=True, slots=True)
class SatisfyAny:
    """ingress-nginx's `satisfy: any` (nginx's `satisfy any`): the route's access checks
    (SourceRanges, ExternalAuth, basic authentication) are alternatives: the first that lets
    the request in suffices. When all refuse, a 401 (or its sign-in redirect) is answered
    rather than a 403, as nginx does; an auth service failure (500) is answered at once."""


@dataclass(frozen=True, slots=True)
class Canary:
    """The route's canary (ingress-nginx's canary Ingress paired with this rule; chosen per
    request by proxy/canary.py, which the route builds): a request goes to `backend` (a key
    into Snapshot.backends; `service` "ns/name", `port` as written, `ingress` the canary
    Ingress, for logs and metrics) instead of the rule's, in ingress-nginx's precedence:

    - `header` (lower-case field name, "" none) present: with `header_value` its value must
      equal it; else with `header_pattern` (RE2, searched in the value, case-sensitive) it must
      match, and with `header_invalid` (a pattern that does not compile: ingress-nginx's
      runtime regex error) the request stays on the rule's backend; else "always" chooses the
      canary and "never" the rule's backend; any other value goes on to the cookie;
    - `cookie` ("" none): "always" / "never" as the header;
    - else a random share: `weight` out of `weight_total` (ingress-nginx counts out of 100
      unless the total is larger; the compiler has done that).

    Before these rules, when the rule has sticky sessions: a request whose affinity cookie names
    the rule's backend stays there, and (`affinity_behavior` "sticky") one whose cookie names
    the canary's backend goes to the canary (balancer.lua's is_affinitized checks).

    A canary backend without endpoints is never chosen (ingress-nginx has no balancer for it)."""

    backend: str
    service: str
    ingress: str
    port: str = ""
    header: str = ""
    header_value: str = ""
    header_pattern: str = ""
    header_invalid: bool = False
    cookie: str = ""
    weight: int = 0
    weight_total: int = 100
    # The canary backend's own balancer (BalancerKind): ingress-nginx keeps the canary
    # Ingress's load-balance for its backend.
    balancer: str = "round_robin"
    # affinity-canary-behavior: "sticky" (the main rule's StickySessions go with the canary's
    # backend too, its cookie naming that backend, and a request whose cookie names it stays
    # on the canary), or "legacy" (the canary's backend has no sticky sessions).
    affinity_behavior: str = "sticky"
    # The canary Ingress's own upstream-hash-by ("" none) for its backend, as ingress-nginx
    # keeps it (the main rule's is not the canary's); sticky sessions win over it.
    hash_by: str = ""
    hash_by_subset: bool = False
    hash_by_subset_size: int = 3

    def __post_init__(self) -> None:
        _check(bool(self.backend) and bool(self.service), "canary without a backend")
        _check(self.balancer in ("round_robin", "least_request"), f"balancer {self.balancer!r}")
        _check(self.header == self.header.lower(), f"canary header {self.header!r}")
        for text in (self.header, self.cookie):
            _check(text == "" or (_visible(text) and ";" not in text), f"canary name {text!r}")
        value = self.header_value
        _check(all(" " <= c <= "~" for c in value), f"canary header value {value!r}")
        if self.header_pattern and not self.header_invalid:
            compile_header_pattern(self.header_pattern)  # PatternError (a ValueError)
        _check(type(self.weight) is int and self.weight >= 0, f"canary weight {self.weight!r}")
        _check(
            type(self.weight_total) is int and self.weight_total >= 100,
            f"canary weight total {self.weight_total!r}",
        )
        _check(
            self.affinity_behavior in ("sticky", "legacy"),
            f"affinity canary behavior {self.affinity_behavior!r}",
        )
        if self.hash_by:
            HashBy(self.hash_by, self.hash_by_subset, self.hash_by_subset_size)


# ingress-nginx's auth-realm characters: letters, digits, "-._~/:" and spaces (nothing to
# escape in the quoted realm of WWW-Authenticate).
_REALM: Final = re.compile(r"^[-._~/:A-Za-z0-9 ]*\Z")


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP basic authentication (ingress-nginx's auth-type basic, nginx's auth_basic): a
    request without `Authorization: Basic` credentials of one of `users` whose password matches
    its entry in `hashes` (htpasswd hashes, proxy/htpasswd.py) is answered 401 with
    `WWW-Authenticate: Basic realm="<realm>"`; one that passes is forwarded without its
    Authorization field. No user: every request is answered 401. The hashes are never logged
    and left out of reprs, like a TLS key. Run by proxy/basicauth.py."""

    realm: str
    users: tuple[str, ...]
    hashes: tuple[str, ...] = field(repr=False)

    def __post_init__(self) -> None:
        _check(type(self.realm) is str and bool(_REALM.match(self.realm)), "auth realm")
        _check(len(self.users) == len(self.hashes), "auth users and hashes differ in number")
        _check(len(set(self.users)) == len(self.users), "auth users repeat")
        for user in self.users:
            _check(
                type(user) is str
                and bool(user)
                and ":" not in user
                and all(ord(c) >= 0x20 and ord(c) != 0x7F for c in user),
                "auth user",
            )
        for hashed in self.hashes:
            _check(
                type(hashed) is str and all(0x21 <= ord(c) <= 0x7E and c != ":" for c in hashed),
                "auth hash",  # never the value: it is not logged
            )


PolicyStep = (
    HTTPSRedirect
    | BodyLimit
    | HSTS
    | Refuse
    | SourceRanges
    | Rewrite
    | AppRoot
    | ErrorPages
    | RewriteRedirects
    | RewriteCookies
    | Redirect
    | HostRedirect
    | ShapeRequest
    | ResponseHeaders
    | ClientCertificate
    | StickySessions
    | HashBy
    | ExternalAuth
    | SatisfyAny
    | Cors
    | Canary
    | BasicAuth
    | RateLimit
)
_Step = TypeVar(
    "_Step",
    HTTPSRedirect,
    BodyLimit,
    HSTS,
    Refuse,
    SourceRanges,
    Rewrite,
    AppRoot,
    ErrorPages,
    Redirect,
    HostRedirect,
    RewriteRedirects,
    RewriteCookies,
    ShapeRequest,
    ResponseHeaders,
    ClientCertificate,
    StickySessions,
    HashBy,
    ExternalAuth,
    SatisfyAny,
    Cors,
    Canary,
    BasicAuth,
    RateLimit,
)
# The name of each step kind in the JSON codec.
STEP_KINDS: Final[dict[str, type[PolicyStep]]] = {
    "https_redirect": HTTPSRedirect,
    "body_limit": BodyLimit,
    "hsts": HSTS,
    "refuse": Refuse,
    "source_ranges": SourceRanges,
    "redirect": Redirect,
    "host_redirect": HostRedirect,
    "rewrite": Rewrite,
    "app_root": AppRoot,
    "error_pages": ErrorPages,
    "rewrite_redirects": RewriteRedirects,
    "rewrite_cookies": RewriteCookies,
    "shape_request": ShapeRequest,
    "response_headers": ResponseHeaders,
    "client_certificate": ClientCertificate,
    "sticky_sessions": StickySessions,
    "hash_by": HashBy,
    "external_auth": ExternalAuth,
    "satisfy_any": SatisfyAny,
    "cors": Cors,
    "canary": Canary,
    "basic_auth": BasicAuth,
    "rate_limit": RateLimit,
}


# proxy-next-upstream's conditions (nginx's proxy_next_upstream, as ingress-nginx accepts
# them; "off" is an empty RouteOptions.next_upstream): "error" a failed connect or a connection
# lost before the response head, "timeout" the connect, send or response-head deadline passed,
# "invalid_header" a response head that does not parse or is too large, "http_N" a response
# with status N; "non_idempotent" also retries POST, LOCK and PATCH once they were sent.
NEXT_UPSTREAM_NAMES: Final = frozenset(
    {
        "error",
        "timeout",
        "invalid_header",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
        "non_idempotent",
    }
)


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """Per-route settings parsed from validated annotations; the defaults mean 'none given'."""

    balancer: BalancerKind = "round_robin"
    upstream_protocol: UpstreamProtocol = "HTTP"
    upstream_server_name: str | None = None  # SNI to send when upstream_protocol is HTTPS
    upstream_ca_pem: str | None = None  # CA bundle to verify the upstream with; None: no checks
    connect_timeout: float | None = None  # seconds; None: the proxy's flag
    read_timeout: float | None = None
    send_timeout: float | None = None
    # The route's policy, in order (see the steps above).
    policy: tuple[PolicyStep, ...] = ()
    # False: no access-log entry for the route's requests (ingress-nginx's enable-access-log
    # "false"); True cannot turn on a log the proxy has off.
    access_log: bool = True
    # Retries (ingress-nginx's proxy-next-upstream, -tries, -timeout; run by proxy/retry.py):
    # the conditions that send a request to another pod, nginx's names (NEXT_UPSTREAM_NAMES
    # but "off"); () never retries, not even a failed connect; None: Portico's own retries
    # (a failed connect; a connection closed before any answer, for idempotent methods).
    next_upstream: tuple[str, ...] | None = None
    next_upstream_tries: int | None = None  # attempts in all; 0: no limit; None: the flag's
    next_upstream_timeout: float | None = None  # seconds for all attempts; None: no limit
    # proxy-request-buffering "on": the whole body is read before a pod is chosen.
    request_buffering: bool = False
    # proxy-buffer-size: largest response head (status line and fields) taken from a pod,
    # larger is a 502; None: Portico's bound (proxy/upstream.py HEAD_BOUND).
    response_head_limit: int | None = None
    # limit-rate / limit-rate-after (nginx's limit_rate, limit_rate_after; run by
    # proxy/pacing.py): the response body is sent to the client at most `limit_rate` bytes per
    # second, after its first `limit_rate_after` bytes; 0: no limit.
    limit_rate: int = 0
    limit_rate_after: int = 0

    def __post_init__(self) -> None:
        # Only the fields above get a check: the older ones are typed by the codec's callers.
        next_upstream = self.next_upstream
        if next_upstream is not None:
            _check(type(next_upstream) is tuple, f"next_upstream {next_upstream!r}")
            for name in next_upstream:
                _check(name in NEXT_UPSTREAM_NAMES, f"next_upstream condition {name!r}")
        tries = self.next_upstream_tries
        _check(tries is None or (type(tries) is int and tries >= 0), f"tries {tries!r}")
        timeout = self.next_upstream_timeout
        _check(timeout is None or timeout > 0, f"next_upstream_timeout {timeout!r}")
        limit = self.response_head_limit
        _check(limit is None or (type(limit) is int and limit > 0), f"head limit {limit!r}")
        rate, after = self.limit_rate, self.limit_rate_after
        _check(type(rate) is int and rate >= 0, f"limit_rate {rate!r}")
        _check(type(after) is int and after >= 0, f"limit_rate_after {after!r}")

    def step(self, kind: type[_Step]) -> _Step | None:
        """The first step of a kind in the policy, or None."""
        for step in self.policy:
            if isinstance(step, kind):
                return step
        return None


DEFAULT_OPTIONS: Final = RouteOptions()


@dataclass(frozen=True, slots=True)
class PathRule:
    """One path of one Ingress rule, resolved to a backend key."""

    # as matched: "/" for a catch-all; Prefix paths without their trailing "/"; "regex": the
    # expression as written in the Ingress (without the "^" it is matched with)
    path: str
    match: MatchKind
    backend: str  # key into Snapshot.backends
    ingress: str  # ObjectRef "ns/name" of the Ingress the rule came from
    service: str | None  # "ns/name" of the Service, for logs and explain
    port: int | str | None  # the Service port as written in the Ingress
    path_type: str | None = None  # as written: Exact, Prefix, ImplementationSpecific
    options: RouteOptions = DEFAULT_OPTIONS


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """All path rules for one host pattern, in precedence order.

    `host` is a lower-case exact name, `*.example.com` (exactly one label), or "" for host-less
    rules. `rules` are already sorted: longest path first, Exact before Prefix at equal length.
    `fallback` is the defaultBackend of an Ingress contributing to this host; it answers paths no
    rule matches. `tls_certificate` names a `TLSCertificate` when an Ingress lists this host
    under `tls`.
    """

    host: str
    rules: tuple[PathRule, ...]
    fallback: PathRule | None = None
    tls_certificate: str | None = None


@dataclass(frozen=True, slots=True)
class TLSCertificate:
    """A validated certificate and key, from a `kubernetes.io/tls` Secret (name "ns/secret")."""

    name: str
    cert_pem: str
    key_pem: str = field(repr=False)  # never logged, never in reprs
    hosts: tuple[str, ...] = ()  # the DNS names (SANs) the certificate covers, may be wildcards
    not_after: float = 0.0  # Unix time


@dataclass(frozen=True, slots=True)
class PassthroughHost:
    """HTTPS connections whose ClientHello names `host` (exactly: no wildcard, as ingress-nginx
    compares names) are spliced unterminated to an endpoint of `backend` (ingress-nginx's
    `ssl-passthrough`, with --enable-ssl-passthrough; see proxy/passthrough.py). `backend` is
    the key of the host's "/" rule (or its Ingress's defaultBackend); "" when it has none, and
    its connections are closed. `refuse` (a CamelCase reason): every connection is closed
    (access control not enforced, unreadable source ranges); `allow` / `deny`: source ranges
    checked on the client address (the peer, or the PROXY protocol's), as `SourceRanges`."""

    host: str
    backend: str
    ingress: str  # "ns/name" of the Ingress whose rule gives the backend, for the log
    service: str | None = None  # "ns/name" of the Service, for the log
    refuse: str = ""
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(bool(self.host) and not self.host.startswith("*."), f"host {self.host!r}")
        _check(not self.refuse or self.refuse.isidentifier(), f"refusal {self.refuse!r}")
        for cidr in (*self.allow, *self.deny):
            _check(type(cidr) is str, f"source range {cidr!r}")
            _check(str(ipaddress.ip_network(cidr)) == cidr, f"source range {cidr!r}")


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The route part of a snapshot: virtual hosts plus the global default backend."""

    virtual_hosts: tuple[VirtualHost, ...] = ()
    # The defaultBackend of the oldest Ingress that has one and no rules: catches everything
    # not routed elsewhere.
    default: PathRule | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One complete routing configuration. `version` is set by the publisher (0 before)."""

    routes: RouteTable = RouteTable()
    backends: tuple[Backend, ...] = ()  # sorted by key
    certificates: tuple[TLSCertificate, ...] = ()  # sorted by name
    version: int = 0
    # The certificate (a name in `certificates`) for handshakes no host certificate covers, from
    # `--default-certificate`; None: each worker uses a self-signed one.
    default_certificate: str | None = None
    # Hosts whose HTTPS connections go to a pod unterminated (sorted by host).
    passthrough: tuple[PassthroughHost, ...] = ()

    def backend_map(self) -> dict[str, Backend]:
        return {b.key: b for b in self.backends}


@dataclass(frozen=True, slots=True)
class EndpointsUpdate:
    """Only the backends that changed since snapshot `base_version`; applied on top of it."""

    base_version: int
    version: int
    backends: tuple[Backend, ...]
    removed: tuple[str, ...] = ()


# ---- JSON codec ------------------------------------------------------------------------------
# Hand-written rather than dataclasses.asdict: asdict deep-copies and is several times slower,
# and a 10,000-Ingress snapshot is encoded on every change.


def _endpoint_to_json(e: Endpoint) -> list[Any]:
    return [e.address, e.port, e.ready, e.target]


def _endpoint_from_json(raw: Any) -> Endpoint:
    address, port, ready, target = raw
    if not isinstance(address, str) or not isinstance(port, int) or not isinstance(ready, bool):
        raise SnapshotError(f"bad endpoint {raw!r}")
    return Endpoint(address, port, ready, target)


def _backend_to_json(b: Backend) -> dict[str, Any]:
    out: dict[str, Any] = {"key": b.key, "endpoints": [_endpoint_to_json(e) for e in b.endpoints]}
    if b.unavailable is not None:
        out["unavailable"] = b.unavailable
    if b.external_name:
        out["external_name"] = True
    return out


def _backend_from_json(raw: Mapping[str, Any]) -> Backend:
    return Backend(
        key=str(raw["key"]),
        endpoints=tuple(_endpoint_from_json(e) for e in raw["endpoints"]),
        unavailable=raw.get("unavailable"),
        external_name=bool(raw.get("external_name", False)),
    )


_OPTION_FIELDS: Final = RouteOptions.__dataclass_fields__.keys()
_STEP_NAMES: Final = {kind: name for name, kind in STEP_KINDS.items()}
# The field types steps use, by their annotation: a string when this module runs as Python
# (`from __future__ import annotations`), the type itself when compiled.
_JSON_TYPES: Final[dict[str, type]] = {
    "int": int,
    "bool": bool,
    "str": str,
    "tuple[str, ...]": tuple,
    "tuple[int, ...]": tuple,
}


def _step_to_json(step: PolicyStep) -> dict[str, Any]:
    out: dict[str, Any] = {"step": _STEP_NAMES[type(step)]}
    out.update((k, getattr(step, k)) for k in type(step).__dataclass_fields__)
    return out


def _step_from_json(raw: Mapping[str, Any]) -> PolicyStep:
    fields = dict(raw)
    kind = STEP_KINDS.get(fields.pop("step", None))
    if kind is None:
        raise SnapshotError(f"unknown policy step {raw!r}")
    declared = kind.__dataclass_fields__
    for name, raw_value in list(fields.items()):
        field_type: object = declared[name].type if name in declared else None
        if not isinstance(field_type, type):  # a string annotation (when not compiled)
            field_type = _JSON_TYPES.get(str(field_type))
        field_type = getattr(field_type, "__origin__", field_type)  # tuple[str, ...]: tuple
        value = raw_value
        if field_type is tuple and type(value) is list:
            fields[name] = value = tuple(value)  # a list of strings (checked by the step)
        # Exact types: JSON's true is not a number here, nor 1 a flag.
        if type(value) is not field_type:
            raise SnapshotError(f"bad {name} in policy step {raw!r}")
    return kind(**fields)


def _options_to_json(o: RouteOptions) -> dict[str, Any]:
    out = {
        k: getattr(o, k)
        for k in _OPTION_FIELDS
        if k != "policy" and getattr(o, k) != getattr(DEFAULT_OPTIONS, k)
    }
    if o.policy:
        out["policy"] = [_step_to_json(s) for s in o.policy]
    return out


def _options_from_json(raw: Mapping[str, Any]) -> RouteOptions:
    fields = dict(raw)
    policy = tuple(_step_from_json(s) for s in fields.pop("policy", ()))
    next_upstream = fields.get("next_upstream")
    if type(next_upstream) is list:
        fields["next_upstream"] = tuple(next_upstream)  # names, checked by RouteOptions
    for name, value in fields.items():
        # JSON's true is not a number here. RouteOptions checks its own fields, but compiled
        # (mypyc) an int field stores a bool as 1 before the check sees it.
        if type(value) is bool and type(getattr(DEFAULT_OPTIONS, name, None)) is not bool:
            raise SnapshotError(f"bad {name} in route options {raw!r}")
    return RouteOptions(**fields, policy=policy)


def _rule_to_json(r: PathRule, options_index: dict[RouteOptions, int]) -> list[Any]:
    opt = options_index.setdefault(r.options, len(options_index))
    return [r.path, r.match, r.backend, r.ingress, r.service, r.port, r.path_type, opt]


def _rule_from_json(raw: Any, options: list[RouteOptions]) -> PathRule:
    path, match, backend, ingress, service, port, path_type, opt = raw
    if (
        match not in ("exact", "prefix", "regex")
        or not isinstance(path, str)
        or not path.startswith("/")
    ):
        raise SnapshotError(f"bad path rule {raw!r}")
    if match == "regex":
        compile_path(path)  # a PatternError (ValueError) refuses the snapshot
    return PathRule(path, match, backend, ingress, service, port, path_type, options[opt])


def _passthrough_to_json(p: PassthroughHost) -> list[Any]:
    return [p.host, p.backend, p.ingress, p.service, p.refuse, list(p.allow), list(p.deny)]


def _passthrough_from_json(raw: Any) -> PassthroughHost:
    host, backend, ingress, service, refuse, allow, deny = raw
    texts = (host, backend, ingress, refuse, *allow, *deny)
    if not all(type(t) is str for t in texts) or not (service is None or type(service) is str):
        raise SnapshotError(f"bad passthrough host {raw!r}")
    return PassthroughHost(host, backend, ingress, service, refuse, tuple(allow), tuple(deny))


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """Encode a snapshot as compact JSON (UTF-8) with the schema version."""
    options_index: dict[RouteOptions, int] = {DEFAULT_OPTIONS: 0}
    routes = snapshot.routes
    vhosts = [
        {
            "host": vh.host,
            "rules": [_rule_to_json(r, options_index) for r in vh.rules],
            "fallback": None if vh.fallback is None else _rule_to_json(vh.fallback, options_index),
            "tls": vh.tls_certificate,
        }
        for vh in routes.virtual_hosts
    ]
    default = None if routes.default is None else _rule_to_json(routes.default, options_index)
    doc = {
        "schema": SCHEMA_VERSION,
        "version": snapshot.version,
        "options": [_options_to_json(o) for o in options_index],
        "virtual_hosts": vhosts,
        "default": default,
        "backends": [_backend_to_json(b) for b in snapshot.backends],
        "certificates": [
            {
                "name": c.name,
                "cert": c.cert_pem,
                "key": c.key_pem,
                "hosts": list(c.hosts),
                "not_after": c.not_after,
            }
            for c in snapshot.certificates
        ],
        "default_certificate": snapshot.default_certificate,
    }
    if snapshot.passthrough:
        doc["passthrough"] = [_passthrough_to_json(p) for p in snapshot.passthrough]
    return json.dumps(doc, separators=(",", ":")).encode()


def _check_schema(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise SnapshotError("snapshot document is not an object")
    if doc.get("schema") != SCHEMA_VERSION:
        raise SnapshotError(
            f"unsupported snapshot schema {doc.get('schema')!r}, expected {SCHEMA_VERSION}"
        )


def decode_snapshot(data: bytes) -> Snapshot:
    """Decode `encode_snapshot` output; raises SnapshotError on anything malformed."""
    try:
        doc = json.loads(data)
        _check_schema(doc)
        options = [_options_from_json(o) for o in doc["options"]]

        def rule(raw: Any) -> PathRule | None:
            return None if raw is None else _rule_from_json(raw, options)

        vhosts = tuple(
            VirtualHost(
                host=str(v["host"]),
                rules=tuple(_rule_from_json(r, options) for r in v["rules"]),
                fallback=rule(v["fallback"]),
                tls_certificate=v["tls"],
            )
            for v in doc["virtual_hosts"]
        )
        return Snapshot(
            routes=RouteTable(vhosts, rule(doc["default"])),
            backends=tuple(_backend_from_json(b) for b in doc["backends"]),
            certificates=tuple(
                TLSCertificate(
                    name=c["name"],
                    cert_pem=c["cert"],
                    key_pem=c["key"],
                    hosts=tuple(c["hosts"]),
                    not_after=float(c["not_after"]),
                )
                for c in doc["certificates"]
            ),
            version=int(doc["version"]),
            default_certificate=doc.get("default_certificate"),
            passthrough=tuple(_passthrough_from_json(p) for p in doc.get("passthrough", ())),
        )
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"malformed snapshot: {exc}") from exc


def encode_endpoints_update(update: EndpointsUpdate) -> bytes:
    doc = {
        "schema": SCHEMA_VERSION,
        "base_version": update.base_version,
        "version": update.version,
        "backends": [_backend_to_json(b) for b in update.backends],
        "removed": list(update.removed),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_endpoints_update(data: bytes) -> EndpointsUpdate:
    try:
        doc = json.loads(data)
        _check_schema(doc)
        return EndpointsUpdate(
            base_version=int(doc["base_version"]),
            version=int(doc["version"]),
            backends=tuple(_backend_from_json(b) for b in doc["backends"]),
            removed=tuple(str(k) for k in doc["removed"]),
        )
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"malformed endpoints update: {exc}") from exc


def apply_endpoints_update(snapshot: Snapshot, update: EndpointsUpdate) -> Snapshot:
    """The snapshot `update` describes, built from its base without touching routes."""
    if update.base_version != snapshot.version:
        raise SnapshotError(
            f"endpoints update for version {update.base_version}, have {snapshot.version}"
        )
    merged = snapshot.backend_map()
    for key in update.removed:
        merged.pop(key, None)
    for backend in update.backends:
        merged[backend.key] = backend
    return Snapshot(
        routes=snapshot.routes,
        backends=tuple(merged[k] for k in sorted(merged)),
        certificates=snapshot.certificates,
        version=update.version,
        default_certificate=snapshot.default_certificate,
        passthrough=snapshot.passthrough,
    )
