"""Ingress annotations -> typed, validated route options.

Annotations are free-form strings on an Ingress; here each one we support is parsed into a typed
value with a strict grammar (nothing is ever rendered into text parsed again). An invalid value
becomes an `AnnotationError` (reported by the compiler as `InvalidAnnotation`) and is ignored.
The other annotations are not parsed here: `screening.py` reports each one against the
catalogue (`catalogue.py`, whose supported rows are exactly the names parsed here).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from controller.compiler import extauth
from proxy.config import (
    CLIENT_VERIFY_MODES,
    CORS_ORIGIN,
    DEFAULT_OPTIONS,
    NEXT_UPSTREAM_NAMES,
    BodyLimit,
    Cors,
    ExternalAuth,
    HashBy,
    PolicyStep,
    Redirect,
    RewriteCookies,
    RewriteRedirects,
    RouteOptions,
    StickySessions,
    hash_terms,
)
from proxy.regex import PatternError, compile_header_pattern

PREFIXES: Final = ("nginx.ingress.kubernetes.io/", "portico.dev/")

_DNS_NAME: Final = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# Whole seconds, as ingress-nginx reads them (strconv.Atoi: a sign is allowed, a unit is not;
# "10s" is not a number there and the ConfigMap's default applied).
_TIMEOUT: Final = re.compile(r"^\+?([0-9]{1,9})$")
_SIZE: Final = re.compile(r"^([0-9]{1,15})([kKmMgG]?)$")
_SIZE_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# nginx's grammar of a size (proxy_buffer_size, client_body_buffer_size: no `g`) and of an
# offset (proxy_max_temp_file_size), as ingress-nginx's template checks them before use.
_NGINX_SIZE: Final = re.compile(r"^([0-9]{1,12})([kKmM]?)$")
_NGINX_OFFSET: Final = re.compile(r"^([0-9]{1,15})([kKmMgG]?)$")
# Without proxy-next-upstream, -tries or -timeout take ingress-nginx's default conditions.
_NEXT_UPSTREAM_DEFAULT: Final = ("error", "timeout")


@dataclass(frozen=True, slots=True)
class AnnotationError:
    annotation: str  # the full annotation name as written
    value: str
    reason: str

    def message(self) -> str:
        return f"annotation {self.annotation}: invalid value {self.value!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """The auth-tls-* annotations of an Ingress with `auth-tls-secret` (ingress-nginx ignores
    the others without it): the compiler resolves `secret` ("namespace/name", "" namespace: the
    Ingress's) into the `ca.crt` of a `config.ClientCertificate` step for the Ingress's hosts."""

    secret: str
    verify: str = "on"
    depth: int = 1
    error_page: str = ""
    pass_certificate: bool = False
    match_cn: str = ""


@dataclass(frozen=True, slots=True)
class CanaryRules:
    """A canary Ingress's rules, as proxy/config.py's Canary step takes them (without the
    backend, which the compiler adds per paired rule)."""

    header: str = ""  # lower-case; "" none
    header_value: str = ""
    header_pattern: str = ""
    header_invalid: bool = False  # the pattern does not compile: a present header stays main
    cookie: str = ""
    weight: int = 0  # 0 or more
    weight_total: int = 100  # 100 or more (ingress-nginx counts out of 100 below that)
    # affinity-canary-behavior: "sticky" (default) or "legacy" (see proxy/config.py Canary).
    affinity_behavior: str = "sticky"
    # The canary Ingress's own upstream-hash-by, which ingress-nginx keeps for its backend.
    hash_by: HashBy | None = None


@dataclass(frozen=True, slots=True)
class IngressOptions:
    """What an Ingress's annotations say. `ssl_redirect` None: default (redirect TLS hosts)."""

    # The HTTPS redirect step is not in `route.policy` here: it depends on the host (see
    # `redirect`); the compiler puts it first in the policy of the hosts it applies to.
    route: RouteOptions = DEFAULT_OPTIONS
    ssl_redirect: bool | None = None
    force_ssl_redirect: bool = False
    # `proxy-ssl-secret`: "namespace/name" of a Secret whose `ca.crt` verifies the pods'
    # certificates (resolved by the compiler into RouteOptions.upstream_ca_pem).
    proxy_ssl_secret: str | None = None
    # `proxy-ssl-verify`: False turns verification off even with a secret; None/True: verify
    # when a secret is given.
    proxy_ssl_verify: bool | None = None
    # The source ranges (canonical CIDR strings), None when not annotated: `allowlist-source-
    # range`, else its older spelling `whitelist-source-range` (ingress-nginx's alias: the new
    # name wins when both are given), and `denylist-source-range`. The compiler makes the
    # SourceRanges step (proxy/config.py), with the global lists for the ones not annotated.
    allow_source_range: tuple[str, ...] | None = None
    deny_source_range: tuple[str, ...] | None = None
    # A source-range annotation has an invalid value: the routes fail closed (ingress-nginx
    # denies the location: 503) rather than serve without the restriction.
    invalid_source_range: bool = False
    # `ssl-passthrough`: the hosts of this Ingress take HTTPS connections unterminated (with
    # --enable-ssl-passthrough; the compiler makes Snapshot.passthrough).
    ssl_passthrough: bool = False
    # `upstream-vhost`: the Host the pods are sent (host[:port]); None: the client's.
    upstream_vhost: str | None = None
    # `connection-proxy-header`: "close" or "keep-alive", sent as Connection; None: none.
    connection_header: str | None = None
    # `server-alias`: more host names served with this Ingress's hosts (lower-case, sorted,
    # without duplicates; a name may be a one-label wildcard); the compiler resolves conflicts.
    server_alias: tuple[str, ...] = ()
    # `service-upstream`: the Service's cluster IP and port as the one endpoint; None: not
    # annotated (the default, pod endpoints).
    service_upstream: bool | None = None
    # `custom-headers`: "namespace/name" of a ConfigMap of response fields (resolved by the
    # compiler); `invalid_custom_headers`: the annotation does not read, and the routes fail
    # closed (503) as ingress-nginx denies a location whose headers it cannot read.
    custom_headers: str | None = None
    invalid_custom_headers: bool = False
    # permanent-redirect / temporal-redirect: the Redirect step answering every request (the
    # compiler puts it first in the policy), None when not annotated; `invalid_redirect`: the
    # URL of the one that applies cannot be read, and the routes fail closed (503).
    url_redirect: Redirect | None = None
    invalid_redirect: bool = False
    # from-to-www-redirect: the other name of each rule host (www.<host> or <host> without
    # "www.") redirects to it; the compiler adds those hosts (assemble).
    from_to_www_redirect: bool = False
    # Regex paths and rewrites (ingress-nginx's rewrite annotations; the compiler applies them
    # host-wide where ingress-nginx does, see ingress.py): `use-regex`; `rewrite-target` (a
    # template with "$N" captures, None: not annotated); `x-forwarded-prefix` (sent only with a
    # rewrite, "" none); `app-root` (None: none); `preserve-trailing-slash` (HTTPS redirects).
    use_regex: bool = False
    rewrite_target: str | None = None
    x_forwarded_prefix: str = ""
    app_root: str | None = None
    preserve_trailing_slash: bool = False
    # `default-backend`: the name of a Service in the Ingress's namespace that answers for the
    # rules' Services without endpoints and serves the error pages; `custom-http-errors`: the
    # pod statuses it answers instead (sorted, no duplicates); `disable-proxy-intercept-errors`:
    # True keeps the pods' answers (the compiler makes the ErrorPages step, proxy/config.py).
    default_backend: str | None = None
    custom_http_errors: tuple[int, ...] | None = None
    disable_proxy_intercept_errors: bool = False
    # Client certificates (auth-tls-*), None without auth-tls-secret; `invalid_client_auth`:
    # one of them does not read, and the routes fail closed (503) rather than verify less.
    client_auth: ClientAuth | None = None
    invalid_client_auth: bool = False
    # External auth (auth-url and its family, controller/compiler/extauth.py): the step, None
    # without auth-url; `invalid_external_auth`: one of them does not read, and the routes fail
    # closed (503); `auth_proxy_set_headers`: "ns/name" of the ConfigMap of fields sent to the
    # auth service (resolved by the compiler); `satisfy_any`: satisfy "any";
    # `enable_global_auth`: False keeps the ConfigMap's global-auth-url off this Ingress.
    external_auth: ExternalAuth | None = None
    invalid_external_auth: bool = False
    auth_proxy_set_headers: str | None = None
    satisfy_any: bool = False
    enable_global_auth: bool = True
    # enable-cors and cors-*: the Cors step (the compiler puts it first in the policy, as
    # ingress-nginx answers preflights in the rewrite phase); None: CORS not enabled.
    cors: Cors | None = None
    # `canary: "true"` and its rules (canary-by-header, -value, -pattern, -by-cookie, -weight,
    # -weight-total): this Ingress is a canary, paired by the compiler with the main Ingress of
    # each of its host/path rules (ingress.py); None: an ordinary Ingress.
    canary: CanaryRules | None = None
    # Basic auth (`auth-type: basic`; the compiler reads the Secret into a BasicAuth step):
    # `auth_secret` the Secret as written ("name" or "namespace/name"), None: auth-type not
    # given (no authentication, as ingress-nginx), "" : given without a Secret (fail closed);
    # `auth_secret_type` "auth-file" or "auth-map"; `auth_realm`. `invalid_auth`: an auth
    # annotation does not read (or asks for digest), and the routes fail closed (503).
    auth_secret: str | None = None
    auth_secret_type: str = "auth-file"
    auth_realm: str = ""
    invalid_auth: bool = False
    # Rate limits (limit-rps, limit-rpm, limit-connections: 0 none; limit-burst-multiplier,
    # default 5; limit-allowlist, else its older spelling limit-whitelist: canonical CIDRs):
    # the compiler makes the RateLimit step (proxy/config.py) when one limit is above 0.
    # `invalid_rate_limit`: one of them does not read, and the routes fail closed (503) rather
    # than serve without the limit.
    limit_rps: int = 0
    limit_rpm: int = 0
    limit_connections: int = 0
    limit_burst_multiplier: int = 5
    limit_allowlist: tuple[str, ...] = ()
    invalid_rate_limit: bool = False
    # limit-rate / limit-rate-after in bytes (RouteOptions.limit_rate / limit_rate_after);
    # None: not given or not readable, and the ConfigMap's limit-rate / limit-rate-after apply
    # (ingress-nginx's parser falls back to them), set by the compiler.
    limit_rate: int | None = None
    limit_rate_after: int | None = None

    def redirect(self, host_has_tls: bool, default: bool = True) -> bool:
        """`default`: without an ssl-redirect annotation (`--ssl-redirect`)."""
        if self.force_ssl_redirect:
            return True
        return host_has_tls and (default if self.ssl_redirect is None else self.ssl_redirect)


class _Invalid(ValueError):
    pass


def _raising(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser of controller/compiler/extauth.py (ValueError) as the others here."""

    def parsed(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None

    return parsed


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise _Invalid('expected "true" or "false"')


def _balancer(value: str) -> str:
    lowered = value.strip().lower()
    if lowered == "round_robin":
        return "round_robin"
    if lowered in ("ewma", "least_request"):
        return "least_request"
    raise _Invalid('expected "round_robin", "ewma" or "least_request"')


def _protocol(value: str) -> str:
    upper = value.strip().upper()
    if upper in ("HTTP", "HTTPS", "GRPC", "GRPCS"):
        return upper
    raise _Invalid('expected "HTTP", "HTTPS", "GRPC" or "GRPCS"')


def _server_name(value: str) -> str:
    lowered = value.strip().lower()
    if not _DNS_NAME.match(lowered):
        raise _Invalid("expected a DNS name")
    return lowered


_SECRET_REF: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
)


def _secret_ref(value: str) -> str:
    ref = value.strip()
    if not _SECRET_REF.match(ref):
        raise _Invalid('expected a Secret reference "namespace/name"')
    return ref


def _on_off(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "true"):
        return True
    if lowered in ("off", "false"):
        return False
    raise _Invalid('expected "on" or "off"')


def _timeout(value: str) -> float:
    m = _TIMEOUT.match(value.strip())
    if m is None:
        raise _Invalid(
            'expected a whole number of seconds, like "10" (ingress-nginx ignores "10s" too)'
        )
    if int(m.group(1)) == 0:
        raise _Invalid("0 seconds would time out at once (nginx does): give at least 1")
    return float(m.group(1))


# strconv.ParseBool, as ingress-nginx reads its boolean annotations.
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _go_bool(value: str) -> bool:
    if value.strip() in _GO_TRUE:
        return True
    if value.strip() in _GO_FALSE:
        return False
    raise _Invalid('expected "true" or "false"')


# The texts of proxy-redirect-from/-to and proxy-cookie-path: ingress-nginx's URL characters
# (parser.URLIsValidRegex); proxy-cookie-domain's: its cookieDomainRegex characters. Each is one
# nginx argument, so no spaces inside.
_URL_TEXT: Final = re.compile(r"^[-._~a-zA-Z0-9/:,?&=]+$")
_DOMAIN_TEXT: Final = re.compile(r"^[-._~a-zA-Z0-9/:]+$")
_ARGUMENTS: Final = re.compile(r"[ \t\f]+")
_NO_REGEX: Final = (
    "regular expressions (a leading ~) are not supported: give the literal text to replace"
)


def _url_text(text: str) -> str:
    if not _URL_TEXT.match(text):
        raise _Invalid("expected one word of letters, digits and - . _ ~ / : , ? & = (no spaces)")
    return text


def _redirect_from(value: str) -> str:
    """`off`, `default` (both: no rewrite) or the text a Location starts with."""
    text = value.strip()
    if text in ("off", "default"):
        return text
    if text.startswith("~"):
        raise _Invalid(_NO_REGEX)
    return _url_text(text)


def _redirect_to(value: str) -> str:
    """`off` or the replacement text (a leading ~ is literal here, as in nginx)."""
    text = value.strip()
    return text if text == "off" else _url_text(text)


def _rewrite_pair(value: str, text: re.Pattern[str]) -> tuple[str, ...]:
    """`off` -> (); else exactly two words, what to replace and its replacement."""
    stripped = value.strip()
    if stripped == "off":
        return ()
    words = _ARGUMENTS.split(stripped)
    if len(words) != 2 or not all(text.match(w) for w in words):
        raise _Invalid('expected "off" or two words: the text to replace and its replacement')
    if words[0].startswith("~"):
        raise _Invalid(_NO_REGEX)
    return (words[0], words[1])


def _cookie_domain(value: str) -> tuple[str, ...]:
    pair = _rewrite_pair(value, _DOMAIN_TEXT)
    # nginx ignores one leading "." of both (a cookie's own leading "." is kept).
    pair = tuple(w[1:] if w.startswith(".") else w for w in pair)
    if not all(pair):
        raise _Invalid("a domain cannot be only a dot")
    return pair


def _cookie_path(value: str) -> tuple[str, ...]:
    return _rewrite_pair(value, _URL_TEXT)


def _cidrs(value: str) -> tuple[str, ...]:
    """A comma-separated list of IPv4/IPv6 networks or addresses (a bare address is a /32 or
    /128), as ingress-nginx reads it: host bits are cleared (`10.0.0.1/8` is `10.0.0.0/8`).
    Canonical, sorted and without duplicates (IPv4 first)."""
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise _Invalid(
                "expected comma-separated networks (CIDR) or addresses, found an empty entry"
            )
        address, slash, bits = entry.partition("/")
        try:
            if "%" in address or (slash and not (bits.isascii() and bits.isdigit())):
                raise ValueError(entry)
            networks.add(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise _Invalid(f"{entry!r} is not an IPv4 or IPv6 network (CIDR) or address") from None
    return tuple(str(n) for n in sorted(networks, key=lambda n: (n.version, n)))


# host[:port] as a Host value: a DNS name (or IPv4 address) or a bracketed IPv6 address.
_HOST_PORT: Final = re.compile(
    r"^(?:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]{2,45}\])(?::([0-9]{1,5}))?$"
)


def _host_port(value: str) -> str:
    host = value.strip()
    if "$" in host:
        raise _Invalid("nginx variables are not expanded by Portico; expected host[:port]")
    m = _HOST_PORT.match(host.lower())
    if m is None or len(host) > 253 or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
        raise _Invalid("expected a host name or address with an optional port, host[:port]")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1 : host.index("]")])
        except ValueError:
            raise _Invalid("expected a host[:port] with a valid IPv6 address") from None
    return host


def _aliases(value: str) -> tuple[str, ...]:
    """Comma-separated host names, as ingress-nginx reads server-alias (spaces trimmed, empty
    entries skipped, duplicates dropped, sorted). Portico routes exact names and one-label
    wildcards (`*.example.com`): nginx's regular-expression server names are refused."""
    aliases: set[str] = set()
    for raw in value.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        plain = name[2:] if name.startswith("*.") else name
        if not _DNS_NAME.match(plain) or _is_address(plain):
            raise _Invalid(
                f"{raw.strip()!r} is not a host name (a DNS name, or *.domain for one label); "
                "regular-expression server names are not supported"
            )
        aliases.add(name)
    return tuple(sorted(aliases))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _connection(value: str) -> str:
    # ingress-nginx's grammar: exactly one of these (spaces removed), case as written.
    option = value.replace(" ", "")
    if option not in ("close", "keep-alive"):
        raise _Invalid('expected "close" or "keep-alive"')
    return option


_CONFIGMAP_REF: Final = _SECRET_REF


def _configmap_ref(value: str) -> str:
    ref = value.strip()
    if not _CONFIGMAP_REF.match(ref):
        raise _Invalid('expected a ConfigMap reference "namespace/name"')
    return ref


# ingress-nginx's URL grammar for these annotations (parser.URLIsValidRegex: letters, digits and
# `-._~/:,?&=`), then an http or https scheme (redirect.isValidURL); Portico also wants a host.
_REDIRECT_URL: Final = re.compile(
    r"^[hH][tT][tT][pP][sS]?://[-._~a-zA-Z0-9:,=&]+([/?][-._~a-zA-Z0-9/:,?&=]*)?$"
)


def _redirect_url(value: str) -> str:
    """An absolute http:// or https:// URL, kept as written; "" (ingress-nginx: no redirect)."""
    url = value.strip()
    if url and not _REDIRECT_URL.match(url):
        raise _Invalid(
            "expected an http:// or https:// URL with a host, of letters, digits and "
            '"-._~/:,?&=" (ingress-nginx\'s characters for it)'
        )
    return url


def _redirect_code(allowed: tuple[int, ...], default: int) -> Callable[[str], int]:
    """A status among `allowed`: those of ingress-nginx's range (300 to 307 or 308) with which
    nginx's `return` answers a redirect (with 300, 304, 305 and 306 it sends the URL as a body
    and no Location)."""
    listed = ", ".join(str(code) for code in allowed[:-1]) + f" or {allowed[-1]}"

    def parse(value: str) -> int:
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or int(text) not in allowed:
            raise _Invalid(f"expected {listed}; the redirect uses {default}")
        return int(text)

    return parse


# ingress-nginx's RegexPathWithCapture characters (letters, digits, "-._~/:" and "$"), with "$"
# only as a capture "$0" .. "$9": nginx would read "$host" or "$request_uri" as its variables.
_TEMPLATE_CHARS: Final = re.compile(r"^(?:[-._~/:A-Za-z0-9]|\$[0-9])*$")
_TEMPLATE_HINT: Final = (
    'letters, digits, "-._~/:" and captures "$1" .. "$9" (nginx variables are not supported)'
)


def _template(value: str) -> str:
    if not _TEMPLATE_CHARS.match(value):
        raise _Invalid(f"expected {_TEMPLATE_HINT}")
    return value


def _rewrite_target(value: str) -> str:
    """The new path of a rewrite: it must start with "/" or a capture (nginx would make a
    target starting with "http://" or "https://" a redirect: refused here)."""
    target = _template(value.strip())
    if not (target.startswith("/") or target.startswith("$")):
        raise _Invalid('expected a path starting with "/" or a capture ("$1")')
    return target


def _app_root(value: str) -> str:
    path = value.strip()
    if not path.startswith("/") or "$" in path or not _TEMPLATE_CHARS.match(path):
        raise _Invalid('expected a path starting with "/" of letters, digits and "-._~/:"')
    return path


def _forwarded_prefix(value: str) -> str:
    return _template(value.strip())


_SERVICE_NAME: Final = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _service_name(value: str) -> str:
    """A Service name (a DNS-1035 label, as ingress-nginx validates it): no namespace, the
    Service is the Ingress's namespace's."""
    name = value.strip()
    if not _SERVICE_NAME.match(name):
        raise _Invalid("expected the name of a Service in the Ingress's namespace")
    return name


def _status_codes(value: str) -> tuple[int, ...]:
    """Comma-separated HTTP statuses from 400 to 599 ("404,503", spaces ignored, as
    ingress-nginx reads them); sorted, without duplicates."""
    codes: set[int] = set()
    entries = value.replace(" ", "").split(",")
    if entries[-1] == "" and len(entries) > 1:
        entries.pop()  # a trailing comma, which ingress-nginx's grammar allows
    for entry in entries:
        if not (len(entry) == 3 and entry.isascii() and entry.isdigit() and entry[0] in "45"):
            raise _Invalid(
                f"{entry!r} is not a status from 400 to 599; expected comma-separated statuses"
            )
        codes.add(int(entry))
    return tuple(sorted(codes))


def _size(value: str) -> int:
    m = _SIZE.match(value.strip())
    if m is None:
        raise _Invalid('expected a size like "0" (unlimited), "512k", "1m" or "1g"')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _next_upstream(value: str) -> tuple[str, ...]:
    """nginx's proxy_next_upstream list: conditions separated by spaces; `off` (anywhere, as
    nginx reads it) turns retries off: ()."""
    names = value.split()
    if not names:
        raise _Invalid('expected conditions like "error timeout http_502", or "off"')
    for name in names:
        if name != "off" and name not in NEXT_UPSTREAM_NAMES:
            raise _Invalid(
                f"{name!r} is not one of {', '.join(sorted(NEXT_UPSTREAM_NAMES | {'off'}))}"
            )
    if "off" in names:
        return ()
    return tuple(dict.fromkeys(names))


def _limit(value: str) -> int:
    """A rate-limit count (ingress-nginx reads an integer; 0 is no limit)."""
    if not re.fullmatch(r"[0-9]{1,9}", value.strip()):
        raise _Invalid('expected a whole number, like "10" ("0": no limit)')
    return int(value)


def _kilobytes(value: str) -> int:
    """limit-rate / limit-rate-after: kilobytes, as ingress-nginx reads them (strconv.Atoi, a
    sign allowed, no unit) and writes them (`limit_rate 90k;`), in bytes; ingress-nginx writes
    nothing for 0 or less, so a negative value is no limit too."""
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", value):
        raise _Invalid('expected a whole number of kilobytes, like "64" ("0": no limit)')
    return max(int(value), 0) * 1024


def _tries(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value.strip()):
        raise _Invalid('expected a number of attempts, like "3" ("0": no limit)')
    return int(value)


def _next_upstream_timeout(value: str) -> float | None:
    m = _TIMEOUT.match(value.strip())
    if m is None:
        raise _Invalid('expected a number of seconds, like "10" ("0": no limit)')
    return float(m.group(1)) or None


def _on_off_exact(value: str) -> bool:
    """ingress-nginx's on/off options: lower case only (its validator is case-sensitive)."""
    lowered = value.strip()
    if lowered in ("on", "off"):
        return lowered == "on"
    raise _Invalid('expected "on" or "off"')


def _nginx_size(value: str) -> int:
    m = _NGINX_SIZE.match(value.strip())
    if m is None or int(m.group(1)) == 0:
        raise _Invalid('expected a size nginx reads, like "4096", "8k" or "1m"')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _nginx_offset(value: str) -> int:
    m = _NGINX_OFFSET.match(value.strip())
    if m is None:
        raise _Invalid('expected a size like "0", "1024m" or "1g"')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


# ---- sticky sessions and hashing (StickySessions / HashBy steps, proxy/affinity.py) ----------
# session-cookie-name and -domain: ingress-nginx's BasicCharsRegex without "/" and ":", which a
# cookie name cannot hold and a Domain does not.
_COOKIE_NAME_TEXT: Final = re.compile(r"^[-._~a-zA-Z0-9]{1,128}$")
_COOKIE_DOMAIN_TEXT: Final = re.compile(r"^\.?[-_a-zA-Z0-9]+(\.[-_a-zA-Z0-9]+)*$")
# session-cookie-path: ingress-nginx's URL characters (URLIsValidRegex), starting with "/".
_COOKIE_PATH_TEXT: Final = re.compile(r"^/[-._~a-zA-Z0-9/:,?&=]{0,255}$")
# session-cookie-max-age / -expires, as ingress-nginx's affinityCookieExpiresRegex reads them.
_COOKIE_SECONDS_TEXT: Final = re.compile(r"^(0|-?[1-9][0-9]{0,11})$")
_SAMESITE: Final = {"none": "None", "lax": "Lax", "strict": "Strict"}


def _affinity(value: str) -> str:
    if value.strip() != "cookie":
        raise _Invalid('expected "cookie" (the only affinity ingress-nginx has)')
    return "cookie"


def _affinity_canary_behavior(value: str) -> str:
    # ingress-nginx's options are case-sensitive, the value trimmed.
    if value.strip() not in ("sticky", "legacy"):
        raise _Invalid('expected "sticky" or "legacy"')
    return value.strip()


def _affinity_mode(value: str) -> str:
    if value.strip() not in ("balanced", "persistent"):
        raise _Invalid('expected "balanced" or "persistent"')
    return value.strip()


def _cookie_name(value: str) -> str:
    if not _COOKIE_NAME_TEXT.match(value.strip()):
        raise _Invalid("expected a cookie name: letters, digits, '-', '.', '_', '~'")
    return value.strip()


def _session_cookie_domain(value: str) -> str:
    if not _COOKIE_DOMAIN_TEXT.match(value.strip()):
        raise _Invalid('expected a domain name, like "example.com"')
    return value.strip()


def _session_cookie_path(value: str) -> str:
    if not _COOKIE_PATH_TEXT.match(value.strip()):
        raise _Invalid('expected a path starting with "/", URL characters only')
    return value.strip()


def _cookie_seconds(value: str) -> str:
    if not _COOKIE_SECONDS_TEXT.match(value.strip()):
        raise _Invalid('expected whole seconds, like "172800"')
    return value.strip()


def _samesite(value: str) -> str:
    samesite = _SAMESITE.get(value.strip().lower())
    if samesite is None:
        raise _Invalid('expected "None", "Lax" or "Strict"')
    return samesite


def _hash_by(value: str) -> str:
    try:
        hash_terms(value.strip())
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return value.strip()


def _subset_size(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", value.strip()) or int(value) > 1000:
        raise _Invalid('expected a number of pods per subset, like "3"')
    return int(value) or 3  # ingress-nginx's 0 is its default, 3


# CORS, with ingress-nginx's defaults (internal/ingress/annotations/cors/main.go).
CORS_DEFAULT_METHODS: Final = "GET, PUT, POST, DELETE, PATCH, OPTIONS"
CORS_DEFAULT_HEADERS: Final = (
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,"
    "Range,Authorization"
)
CORS_DEFAULT_MAX_AGE: Final = 1728000
# ingress-nginx's lists, written without nested repetition (Python's engine backtracks): words
# separated by ",", " " or ", ", perhaps ending with one of those.
_CORS_METHODS: Final = re.compile(r"^[A-Za-z]+(?:(?:, ?| )[A-Za-z]+)*(?:, ?| )?$")
_CORS_HEADERS: Final = re.compile(r"^[A-Za-z0-9_, -]*$")
_CORS_EXPOSE: Final = re.compile(r"^[A-Za-z0-9_*-]+(?:(?:, ?| )[A-Za-z0-9_*-]+)*(?:, ?| )?$")
_ATOI: Final = re.compile(r"^[+-]?[0-9]{1,9}$")


def _cors_origins(value: str) -> tuple[str, ...]:
    """cors-allow-origin as ingress-nginx reads it: a comma-separated list, "*" alone or
    anywhere in it allows every origin; an empty value allows every origin (its default);
    an entry that is not an origin (no scheme: "example.com") is skipped, as ingress-nginx
    skips it. A character no origin has makes the whole value invalid."""
    allowed: list[str] = []
    for entry in value.split(","):
        origin = entry.strip()
        if not origin:
            continue
        if origin == "*":
            return ("*",)
        if CORS_ORIGIN.fullmatch(origin) is not None:
            if origin not in allowed:
                allowed.append(origin)
        elif not re.fullmatch(r"(?:[a-z]+://)?(?:\*\.)?[A-Za-z0-9.-]*(?::[0-9]+)?", origin):
            raise _Invalid('expected origins like "https://example.com", "https://*.a.com:8443"')
    if not allowed and not value.strip(" ,"):
        return ("*",)
    return tuple(allowed)


def _cors_list(pattern: re.Pattern[str], default: str, expected: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        text = value.strip()
        if not text:
            return default  # ingress-nginx takes an empty value as not given
        if pattern.fullmatch(text) is None:
            raise _Invalid(expected)
        return text

    return parse


def _cors_max_age(value: str) -> int:
    if _ATOI.fullmatch(value.strip()) is None:
        raise _Invalid("expected a number of seconds")
    return int(value.strip())


# Canary names and values: ingress-nginx's BasicCharsRegex (letters, digits, "-._~/:"); its
# header patterns: its IsValidRegex (those and the regex characters "^$[](){}*+?|&=\\").
_CANARY_TEXT: Final = re.compile(r"^[-._~a-zA-Z0-9/:]*$")
_CANARY_PATTERN_TEXT: Final = re.compile(r"^[-._~a-zA-Z0-9/:^$\[\](){}*+?|&=\\]*$")
_GO_INT: Final = re.compile(r"^[+-]?[0-9]{1,9}$")


def _canary_text(value: str) -> str:
    if not _CANARY_TEXT.match(value):
        raise _Invalid('expected letters, digits and "-._~/:" only')
    return value


def _canary_pattern(value: str) -> str:
    # RE2 compiles it in _canary_rules: a pattern of these characters that does not compile is
    # not ignored (see CanaryRules.header_invalid).
    if not _CANARY_PATTERN_TEXT.match(value):
        raise _Invalid('expected letters, digits, "-._~/:" and "^$[](){}*+?|&=\\" only')
    return value


def _go_int(value: str) -> int:
    if not _GO_INT.match(value):
        raise _Invalid("expected an integer")
    return int(value)


def _auth_type(value: str) -> str:
    # ingress-nginx also takes "digest" (nginx's auth_digest, with htdigest files): Portico
    # does not implement it, and a route asking for it must not be served unprotected.
    if value == "digest":
        raise _Invalid(
            "digest authentication is not supported by Portico (use basic); the routes answer "
            "503 (fail closed)"
        )
    if value != "basic":
        raise _Invalid('expected "basic" or "digest"')
    return value


# A Secret in the Ingress's namespace ("name") or named with its namespace ("namespace/name").
_AUTH_SECRET_REF: Final = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
)


def _auth_secret(value: str) -> str:
    ref = value.strip()
    if not _AUTH_SECRET_REF.match(ref):
        raise _Invalid('expected a Secret name, or "namespace/name"')
    return ref


def _auth_secret_type(value: str) -> str:
    if value not in ("auth-file", "auth-map"):
        raise _Invalid('expected "auth-file" or "auth-map"')
    return value


# ingress-nginx's auth-realm characters (CharsWithSpace): letters, digits, "-._~/:" and spaces.
_REALM: Final = re.compile(r"^[-._~/:A-Za-z0-9 ]*$")


def _auth_realm(value: str) -> str:
    if not _REALM.match(value):
        raise _Invalid('expected letters, digits, spaces and "-._~/:" only')
    return value


# annotation suffix -> (parser, RouteOptions field or IngressOptions field)
_TLS_SECRET_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _tls_secret(value: str) -> str:
    """auth-tls-secret: "namespace/name", or "name" in the Ingress's namespace ("/name")."""
    ref = value.strip()
    if "/" not in ref and _TLS_SECRET_NAME.match(ref):
        return "/" + ref
    return _secret_ref(ref)


def _verify_client(value: str) -> str:
    mode = value.strip()
    if mode not in CLIENT_VERIFY_MODES:
        raise _Invalid('expected "on", "off", "optional" or "optional_no_ca"')
    return mode


def _verify_depth(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 3 or int(text) > 100:
        raise _Invalid("expected a depth from 0 to 100")
    return int(text) or 1  # ingress-nginx: 0 is the default, 1


def _error_page(value: str) -> str:
    url = value.strip()
    if url and not _REDIRECT_URL.match(url):
        raise _Invalid(
            "expected an http:// or https:// URL (Portico does not serve a path or a named "
            "location as the error page)"
        )
    return url


def _match_cn(value: str) -> str:
    pattern = value.strip()
    if not pattern.startswith("CN="):
        raise _Invalid('expected "CN=" followed by a regular expression')
    try:
        compile_header_pattern(pattern)
    except PatternError as exc:
        raise _Invalid(str(exc)) from None
    return pattern


_PARSERS: Final[dict[str, tuple[Callable[[str], Any], str]]] = {
    "ssl-redirect": (_bool, "ssl_redirect"),
    "force-ssl-redirect": (_bool, "force_ssl_redirect"),
    "load-balance": (_balancer, "balancer"),
    "backend-protocol": (_protocol, "upstream_protocol"),
    "proxy-ssl-name": (_server_name, "upstream_server_name"),
    "proxy-ssl-secret": (_secret_ref, "proxy_ssl_secret"),
    "proxy-ssl-verify": (_on_off, "proxy_ssl_verify"),
    "proxy-connect-timeout": (_timeout, "connect_timeout"),
    "proxy-read-timeout": (_timeout, "read_timeout"),
    "proxy-send-timeout": (_timeout, "send_timeout"),
    "proxy-body-size": (_size, "max_body_size"),  # a BodyLimit step in the route's policy
    # A SourceRanges step, made by the compiler (with --allow-source-ranges and
    # --deny-source-ranges as the lists of an Ingress without these annotations).
    "allowlist-source-range": (_cidrs, "allow_source_range"),
    "whitelist-source-range": (_cidrs, "whitelist_source_range"),
    "denylist-source-range": (_cidrs, "deny_source_range"),
    "ssl-passthrough": (_bool, "ssl_passthrough"),  # Snapshot.passthrough, by the compiler
    # A ShapeRequest step (with the ingress-nginx ConfigMap's proxy-set-headers).
    "upstream-vhost": (_host_port, "upstream_vhost"),
    "connection-proxy-header": (_connection, "connection_header"),
    # Resolved by the compiler across Ingresses (aliases), Services and ConfigMaps.
    "server-alias": (_aliases, "server_alias"),
    "service-upstream": (_bool, "service_upstream"),
    "custom-headers": (_configmap_ref, "custom_headers"),
    # Retries and buffering (proxy/retry.py, proxy/exchange.py, proxy/upstream.py).
    "proxy-next-upstream": (_next_upstream, "next_upstream"),
    "proxy-next-upstream-tries": (_tries, "next_upstream_tries"),
    "proxy-next-upstream-timeout": (_next_upstream_timeout, "next_upstream_timeout"),
    "proxy-request-buffering": (_on_off_exact, "request_buffering"),
    "proxy-buffer-size": (_nginx_size, "response_head_limit"),
    # Validated, with nothing to change in Portico (catalogue.py says why): in _ACCEPTED.
    "proxy-buffering": (_on_off_exact, "proxy_buffering"),
    "client-body-buffer-size": (_nginx_size, "client_body_buffer_size"),
    "proxy-max-temp-file-size": (_nginx_offset, "proxy_max_temp_file_size"),
    # A Redirect step (temporal-redirect wins), or the other host names (from-to-www-redirect),
    # made by the compiler.
    "permanent-redirect": (_redirect_url, "permanent_redirect"),
    "permanent-redirect-code": (
        _redirect_code((301, 302, 303, 307, 308), 301),
        "permanent_redirect_code",
    ),
    "temporal-redirect": (_redirect_url, "temporal_redirect"),
    "temporal-redirect-code": (_redirect_code((301, 302, 303, 307), 302), "temporal_redirect_code"),
    "from-to-www-redirect": (_bool, "from_to_www_redirect"),
    # Regex paths and rewrites: made into regex rules and policy steps by the compiler.
    "use-regex": (_bool, "use_regex"),
    "rewrite-target": (_rewrite_target, "rewrite_target"),
    "x-forwarded-prefix": (_forwarded_prefix, "x_forwarded_prefix"),
    "app-root": (_app_root, "app_root"),
    "preserve-trailing-slash": (_bool, "preserve_trailing_slash"),
    # The ErrorPages step, made by the compiler (the default backend resolved to a Backend).
    "default-backend": (_service_name, "default_backend"),
    "custom-http-errors": (_status_codes, "custom_http_errors"),
    "disable-proxy-intercept-errors": (_bool, "disable_proxy_intercept_errors"),
    "enable-access-log": (_go_bool, "access_log"),
    # RewriteRedirects / RewriteCookies steps in the route's policy (see _rewrite_steps).
    "proxy-redirect-from": (_redirect_from, "proxy_redirect_from"),
    "proxy-redirect-to": (_redirect_to, "proxy_redirect_to"),
    "proxy-cookie-domain": (_cookie_domain, "proxy_cookie_domain"),
    "proxy-cookie-path": (_cookie_path, "proxy_cookie_path"),
    "auth-tls-secret": (_tls_secret, "tls_secret"),
    "auth-tls-verify-client": (_verify_client, "tls_verify_client"),
    "auth-tls-verify-depth": (_verify_depth, "tls_verify_depth"),
    "auth-tls-error-page": (_error_page, "tls_error_page"),
    "auth-tls-pass-certificate-to-upstream": (_bool, "tls_pass_certificate"),
    "auth-tls-match-cn": (_match_cn, "tls_match_cn"),
    # A StickySessions step (affinity: cookie), else a HashBy step (see _affinity_step).
    "affinity": (_affinity, "affinity"),
    "affinity-mode": (_affinity_mode, "affinity_mode"),
    # Read on a canary Ingress only (CanaryRules), as ingress-nginx's mergeAlternativeBackend.
    "affinity-canary-behavior": (_affinity_canary_behavior, "affinity_canary_behavior"),
    "session-cookie-name": (_cookie_name, "session_cookie_name"),
    "session-cookie-path": (_session_cookie_path, "session_cookie_path"),
    "session-cookie-domain": (_session_cookie_domain, "session_cookie_domain"),
    "session-cookie-max-age": (_cookie_seconds, "session_cookie_max_age"),
    "session-cookie-expires": (_cookie_seconds, "session_cookie_expires"),
    "session-cookie-samesite": (_samesite, "session_cookie_samesite"),
    "session-cookie-secure": (_go_bool, "session_cookie_secure"),
    "session-cookie-conditional-samesite-none": (_go_bool, "session_cookie_samesite_none"),
    "session-cookie-change-on-failure": (_go_bool, "session_cookie_change_on_failure"),
    "upstream-hash-by": (_hash_by, "upstream_hash_by"),
    "upstream-hash-by-subset": (_go_bool, "upstream_hash_by_subset"),
    "upstream-hash-by-subset-size": (_subset_size, "upstream_hash_by_subset_size"),
    # The ExternalAuth step (and satisfy, enable-global-auth): controller/compiler/extauth.py.
    **{name: (_raising(parse), field) for name, (parse, field) in extauth.PARSERS.items()},
    # The Cors step, made by _cors_step (the compiler puts it first in the route's policy).
    "enable-cors": (_go_bool, "enable_cors"),
    "cors-allow-origin": (_cors_origins, "cors_allow_origin"),
    "cors-allow-methods": (
        _cors_list(_CORS_METHODS, CORS_DEFAULT_METHODS, 'expected methods like "GET, POST"'),
        "cors_allow_methods",
    ),
    "cors-allow-headers": (
        _cors_list(_CORS_HEADERS, CORS_DEFAULT_HEADERS, 'expected field names like "X-A, X-B"'),
        "cors_allow_headers",
    ),
    "cors-expose-headers": (
        _cors_list(_CORS_EXPOSE, "", 'expected field names like "X-A, X-B" or "*"'),
        "cors_expose_headers",
    ),
    "cors-allow-credentials": (_go_bool, "cors_allow_credentials"),
    "cors-max-age": (_cors_max_age, "cors_max_age"),
    # Canary: CanaryRules (see _canary_rules), paired with main Ingresses by the compiler.
    "canary": (_go_bool, "canary"),
    "canary-by-header": (_canary_text, "canary_by_header"),
    "canary-by-header-value": (_canary_text, "canary_by_header_value"),
    "canary-by-header-pattern": (_canary_pattern, "canary_by_header_pattern"),
    "canary-by-cookie": (_canary_text, "canary_by_cookie"),
    "canary-weight": (_go_int, "canary_weight"),
    "canary-weight-total": (_go_int, "canary_weight_total"),
    # Basic auth: a BasicAuth step made by the compiler from the Secret (see IngressOptions).
    "auth-type": (_auth_type, "auth_type"),
    "auth-secret": (_auth_secret, "auth_secret"),
    "auth-secret-type": (_auth_secret_type, "auth_secret_type"),
    "auth-realm": (_auth_realm, "auth_realm"),
    # The RateLimit step, made by the compiler (its zone is the Ingress, its statuses the
    # ConfigMap's limit-req-status-code / limit-conn-status-code).
    "limit-rps": (_limit, "limit_rps"),
    "limit-rpm": (_limit, "limit_rpm"),
    "limit-connections": (_limit, "limit_connections"),
    "limit-burst-multiplier": (_limit, "limit_burst_multiplier"),
    "limit-allowlist": (_cidrs, "limit_allowlist"),
    "limit-whitelist": (_cidrs, "limit_whitelist"),
    # RouteOptions.limit_rate / limit_rate_after (proxy/pacing.py), set by the compiler; a value
    # that does not read is ignored (the ConfigMap's applies, as ingress-nginx's; 0: no limit).
    "limit-rate": (_kilobytes, "limit_rate"),
    "limit-rate-after": (_kilobytes, "limit_rate_after"),
}
# Fields of annotations accepted and validated that set nothing (see their catalogue rows).
_ACCEPTED: Final = frozenset(
    {"proxy_buffering", "client_body_buffer_size", "proxy_max_temp_file_size"}
)
_REDIRECT_FIELDS: Final = frozenset(
    {
        "permanent_redirect",
        "permanent_redirect_code",
        "temporal_redirect",
        "temporal_redirect_code",
        "from_to_www_redirect",
    }
)
_REWRITE_FIELDS: Final = frozenset(
    {"proxy_redirect_from", "proxy_redirect_to", "proxy_cookie_domain", "proxy_cookie_path"}
)
_AFFINITY_FIELDS: Final = frozenset(
    {
        "affinity",
        "affinity_mode",
        "affinity_canary_behavior",
        "session_cookie_name",
        "session_cookie_path",
        "session_cookie_domain",
        "session_cookie_max_age",
        "session_cookie_expires",
        "session_cookie_samesite",
        "session_cookie_secure",
        "session_cookie_samesite_none",
        "session_cookie_change_on_failure",
        "upstream_hash_by",
        "upstream_hash_by_subset",
        "upstream_hash_by_subset_size",
    }
)
_SOURCE_RANGE_FIELDS: Final = frozenset(
    {"allow_source_range", "whitelist_source_range", "deny_source_range"}
)
_CORS_FIELDS: Final = frozenset(
    {
        "enable_cors",
        "cors_allow_origin",
        "cors_allow_methods",
        "cors_allow_headers",
        "cors_expose_headers",
        "cors_allow_credentials",
        "cors_max_age",
    }
)
_CANARY_FIELDS: Final = frozenset(
    {
        "canary",
        "canary_by_header",
        "canary_by_header_value",
        "canary_by_header_pattern",
        "canary_by_cookie",
        "canary_weight",
        "canary_weight_total",
    }
)
_AUTH_FIELDS: Final = frozenset({"auth_type", "auth_secret", "auth_secret_type", "auth_realm"})
_RATE_LIMIT_FIELDS: Final = frozenset(
    {
        "limit_rps",
        "limit_rpm",
        "limit_connections",
        "limit_burst_multiplier",
        "limit_allowlist",
        "limit_whitelist",
    }
)
# The annotation names (without prefix) parsed here: the catalogue's supported rows (a test).
_CLIENT_AUTH_FIELDS: Final = frozenset(
    {
        "tls_secret",
        "tls_verify_client",
        "tls_verify_depth",
        "tls_error_page",
        "tls_pass_certificate",
        "tls_match_cn",
    }
)
PARSED_NAMES: Final = frozenset(_PARSERS)
_INGRESS_FIELDS: Final = frozenset(
    {
        "ssl_redirect",
        "force_ssl_redirect",
        "proxy_ssl_secret",
        "proxy_ssl_verify",
        "max_body_size",
        "ssl_passthrough",
        *_SOURCE_RANGE_FIELDS,
        "upstream_vhost",
        "connection_header",
        "server_alias",
        "service_upstream",
        "custom_headers",
        *_ACCEPTED,
        *_REDIRECT_FIELDS,
        "use_regex",
        "rewrite_target",
        "x_forwarded_prefix",
        "app_root",
        "preserve_trailing_slash",
        "default_backend",
        "custom_http_errors",
        "disable_proxy_intercept_errors",
        *_REWRITE_FIELDS,
        *_CLIENT_AUTH_FIELDS,
        *_AFFINITY_FIELDS,
        *extauth.FIELDS,
        *_CORS_FIELDS,
        *_CANARY_FIELDS,
        *_AUTH_FIELDS,
        *_RATE_LIMIT_FIELDS,
        "limit_rate",
        "limit_rate_after",
    }
)
# The value of a source-range field whose winning annotation is invalid.
_INVALID: Final = ("invalid",)


def _url_redirect(values: Mapping[str, Any]) -> tuple[Redirect | None, bool]:
    """(the Redirect step, whether its URL is invalid), as ingress-nginx chooses: a
    temporal-redirect wins over a permanent-redirect, each with its own code (302, 301 when
    not given or invalid); an empty URL is no redirect."""
    for url_field, code_field, default in (
        ("temporal_redirect", "temporal_redirect_code", 302),
        ("permanent_redirect", "permanent_redirect_code", 301),
    ):
        url = values.get(url_field)
        if url == _INVALID:
            return None, True
        if url:
            return Redirect(url, values.get(code_field, default)), False
    return None, False


def _client_auth(values: Mapping[str, Any]) -> tuple[ClientAuth | None, bool]:
    """(the auth-tls-* settings, whether one of them is invalid): nothing without
    auth-tls-secret, as ingress-nginx; an invalid value with it fails closed."""
    if "tls_secret" not in values:
        return None, False
    if any(values.get(f) is _INVALID for f in _CLIENT_AUTH_FIELDS):
        return None, True
    return (
        ClientAuth(
            secret=values["tls_secret"],
            verify=values.get("tls_verify_client", "on"),
            depth=values.get("tls_verify_depth", 1),
            error_page=values.get("tls_error_page", ""),
            pass_certificate=bool(values.get("tls_pass_certificate", False)),
            match_cn=values.get("tls_match_cn", ""),
        ),
        False,
    )


_cache: dict[tuple[tuple[str, str], ...], tuple[IngressOptions, tuple[AnnotationError, ...]]] = {}
_CACHE_MAX: Final = 4096


def parse_annotations(
    annotations: Mapping[str, str],
) -> tuple[IngressOptions, tuple[AnnotationError, ...]]:
    """Parse the annotations we support; the `portico.dev/` prefix wins over `nginx.…/`."""
    relevant = tuple(sorted((k, v) for k, v in annotations.items() if k.startswith(PREFIXES)))
    if not relevant:
        return IngressOptions(), ()
    # Thousands of Ingresses usually share a handful of annotation sets.
    cached = _cache.get(relevant)
    if cached is not None:
        return cached
    values: dict[str, Any] = {}
    errors: list[AnnotationError] = []
    # field -> (annotation as written, value) of the annotation that sets it, valid or not
    given: dict[str, tuple[str, str]] = {}
    # nginx prefix first so the portico prefix overrides it.
    for prefix in PREFIXES:
        for name, value in relevant:
            if not name.startswith(prefix):
                continue
            entry = _PARSERS.get(name[len(prefix) :])
            if entry is None:
                continue
            parser, field = entry
            given[field] = (name, value)
            try:
                values[field] = parser(value)
            except _Invalid as exc:
                errors.append(AnnotationError(name, value, str(exc)))
                if (
                    field in _SOURCE_RANGE_FIELDS
                    or field == "custom_headers"
                    or field in extauth.AUTH_FIELDS
                ):
                    # Not ignored: an access restriction that cannot be read fails closed, and
                    # so do response fields (often security headers) that cannot be read.
                    values[field] = _INVALID
                elif field in _AUTH_FIELDS:
                    # Authentication that cannot be read fails closed too (ingress-nginx
                    # denies the location: 503).
                    values[field] = _INVALID
                elif field in _RATE_LIMIT_FIELDS:
                    # Neither: a limit that cannot be read is not left out (fail closed).
                    values[field] = _INVALID
                elif field in ("permanent_redirect", "temporal_redirect"):
                    # Neither: forwarding what was meant to be redirected could expose the pod.
                    values[field] = _INVALID
                elif field in _CLIENT_AUTH_FIELDS:
                    # Client certificates that cannot be read are not checked less: fail closed.
                    values[field] = _INVALID
                elif field == "cors_allow_origin":
                    # ingress-nginx would allow every origin; no origin is allowed instead.
                    values[field] = ()
                elif field == "cors_allow_credentials":
                    # ingress-nginx would allow credentials; they are not allowed instead.
                    values[field] = False
    route_values: dict[str, Any] = {k: v for k, v in values.items() if k not in _INGRESS_FIELDS}
    if "max_body_size" in values:
        route_values["policy"] = (BodyLimit(values["max_body_size"]),)
    rewrites = _rewrite_steps(values, given, errors)
    if rewrites:
        route_values["policy"] = (*route_values.get("policy", ()), *rewrites)
    affinity = _affinity_step(values)
    if affinity is not None:
        route_values["policy"] = (*route_values.get("policy", ()), affinity)
    if "next_upstream" not in values and (
        "next_upstream_tries" in values or "next_upstream_timeout" in values
    ):
        route_values["next_upstream"] = _NEXT_UPSTREAM_DEFAULT
    ranges = [values.get(f) for f in sorted(_SOURCE_RANGE_FIELDS)]  # allow, deny, whitelist
    allow, deny, whitelist = ranges
    custom = values.get("custom_headers")
    url_redirect, invalid_redirect = _url_redirect(values)
    client_auth, invalid_client_auth = _client_auth(values)
    external_auth, invalid_external_auth = _external_auth(values, given, errors)
    limits = {f: values[f] for f in _RATE_LIMIT_FIELDS if f in values}
    invalid_rate_limit = _INVALID in limits.values()
    if invalid_rate_limit:
        limits = {}
    result = (
        IngressOptions(
            route=dataclasses.replace(DEFAULT_OPTIONS, **route_values)
            if route_values
            else DEFAULT_OPTIONS,
            ssl_redirect=values.get("ssl_redirect"),
            force_ssl_redirect=bool(values.get("force_ssl_redirect", False)),
            proxy_ssl_secret=values.get("proxy_ssl_secret"),
            proxy_ssl_verify=values.get("proxy_ssl_verify"),
            allow_source_range=allow if allow is not None else whitelist,
            deny_source_range=deny,
            invalid_source_range=_INVALID in ranges,
            ssl_passthrough=bool(values.get("ssl_passthrough", False)),
            upstream_vhost=values.get("upstream_vhost"),
            connection_header=values.get("connection_header"),
            server_alias=values.get("server_alias", ()),
            service_upstream=values.get("service_upstream"),
            custom_headers=None if custom is _INVALID else custom,
            invalid_custom_headers=custom is _INVALID,
            url_redirect=url_redirect,
            invalid_redirect=invalid_redirect,
            from_to_www_redirect=bool(values.get("from_to_www_redirect", False)),
            use_regex=bool(values.get("use_regex", False)),
            rewrite_target=values.get("rewrite_target"),
            x_forwarded_prefix=values.get("x_forwarded_prefix", ""),
            app_root=values.get("app_root"),
            preserve_trailing_slash=bool(values.get("preserve_trailing_slash", False)),
            default_backend=values.get("default_backend"),
            custom_http_errors=values.get("custom_http_errors"),
            disable_proxy_intercept_errors=bool(values.get("disable_proxy_intercept_errors")),
            client_auth=client_auth,
            invalid_client_auth=invalid_client_auth,
            external_auth=external_auth,
            invalid_external_auth=invalid_external_auth,
            auth_proxy_set_headers=values.get("auth_proxy_set_headers")
            if external_auth is not None
            else None,
            satisfy_any=values.get("satisfy_any") is True,
            enable_global_auth=values.get("enable_global_auth", True) is not False,
            cors=_cors_step(values),
            canary=_canary_rules(values, given, errors),
            **_basic_auth(values),
            limit_rps=limits.get("limit_rps", 0),
            limit_rpm=limits.get("limit_rpm", 0),
            limit_connections=limits.get("limit_connections", 0),
            limit_burst_multiplier=limits.get("limit_burst_multiplier", 5),
            limit_allowlist=limits.get("limit_allowlist", limits.get("limit_whitelist", ())),
            invalid_rate_limit=invalid_rate_limit,
            limit_rate=values.get("limit_rate"),
            limit_rate_after=values.get("limit_rate_after"),
        ),
        tuple(errors),
    )
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[relevant] = result
    return result


def _external_auth(
    values: Mapping[str, Any],
    given: Mapping[str, tuple[str, str]],
    errors: list[AnnotationError],
) -> tuple[ExternalAuth | None, bool]:
    """(the ExternalAuth step, whether the routes fail closed): an auth-* annotation that
    does not read denies the routes (503) rather than serve them with less protection."""
    if "auth_url" in given and any(values.get(f) is _INVALID for f in extauth.AUTH_FIELDS):
        return None, True
    try:
        return extauth.external_auth(values), False
    except ValueError as exc:
        name, value = given.get("auth_url", ("auth-url", ""))
        errors.append(AnnotationError(name, value, str(exc)))
        return None, True


def _basic_auth(values: Mapping[str, Any]) -> dict[str, Any]:
    """The IngressOptions fields of basic auth, as ingress-nginx reads them: without auth-type
    the other auth annotations do nothing; an auth annotation that does not read fails closed."""
    auth = {f: values[f] for f in _AUTH_FIELDS if f in values}
    if not auth:
        return {}
    if _INVALID in auth.values():
        return {"invalid_auth": True}
    if "auth_type" not in auth:
        return {}
    return {
        "auth_secret": auth.get("auth_secret", ""),
        "auth_secret_type": auth.get("auth_secret_type", "auth-file"),
        "auth_realm": auth.get("auth_realm", ""),
    }


def _rewrite_steps(
    values: Mapping[str, Any],
    given: Mapping[str, tuple[str, str]],
    errors: list[AnnotationError],
) -> tuple[PolicyStep, ...]:
    """The RewriteRedirects / RewriteCookies steps of proxy-redirect-from/-to and
    proxy-cookie-domain/-path, as ingress-nginx's template writes proxy_redirect: "off" or
    "default" in proxy-redirect-from means no rewrite (nginx's `default` replaces the
    `http://upstream_balancer/` of ingress-nginx's proxy_pass, which no pod sends), and the
    pair needs both halves. A half whose other half is missing altogether rewrites nothing
    there either; it is reported, since it is surely a mistake."""
    steps: list[PolicyStep] = []
    source = values.get("proxy_redirect_from", "off")
    target = values.get("proxy_redirect_to", "off")
    if source not in ("off", "default") and target != "off":
        steps.append(RewriteRedirects(source, target))
    for half, other, other_name in (
        ("proxy_redirect_from", "proxy_redirect_to", "proxy-redirect-to"),
        ("proxy_redirect_to", "proxy_redirect_from", "proxy-redirect-from"),
    ):
        if values.get(half, "off") not in ("off", "default") and other not in given:
            name, value = given[half]
            errors.append(AnnotationError(name, value, f"has no effect without {other_name}"))
    domain = values.get("proxy_cookie_domain", ())
    path = values.get("proxy_cookie_path", ())
    if domain or path:
        steps.append(RewriteCookies(*(domain or ("", "")), *(path or ("", ""))))
    return tuple(steps)


def _affinity_step(values: Mapping[str, Any]) -> StickySessions | HashBy | None:
    """The route's StickySessions step (`affinity: cookie` with its session-cookie-*
    annotations, which mean nothing without it), else its HashBy step (upstream-hash-by):
    ingress-nginx's balancer takes the sticky balancer first, then consistent hashing."""
    if values.get("affinity") == "cookie":
        return StickySessions(
            name=values.get("session_cookie_name", "INGRESSCOOKIE"),
            mode=values.get("affinity_mode", "balanced"),
            path=values.get("session_cookie_path", ""),
            domain=values.get("session_cookie_domain", ""),
            max_age=values.get("session_cookie_max_age", ""),
            expires=values.get("session_cookie_expires", ""),
            samesite=values.get("session_cookie_samesite", ""),
            secure=bool(values.get("session_cookie_secure", False)),
            conditional_samesite_none=bool(values.get("session_cookie_samesite_none", False)),
            change_on_failure=bool(values.get("session_cookie_change_on_failure", False)),
        )
    expression = values.get("upstream_hash_by")
    if expression:
        return HashBy(
            expression,
            subset=bool(values.get("upstream_hash_by_subset", False)),
            subset_size=values.get("upstream_hash_by_subset_size", 3),
        )
    return None


def _cors_step(values: Mapping[str, Any]) -> Cors | None:
    """The Cors step of enable-cors "true" and the cors-* annotations, with ingress-nginx's
    defaults for those not given (or given with an invalid value, see parse_annotations)."""
    if not values.get("enable_cors", False):
        return None
    return Cors(
        origins=values.get("cors_allow_origin", ("*",)),
        methods=values.get("cors_allow_methods", CORS_DEFAULT_METHODS),
        headers=values.get("cors_allow_headers", CORS_DEFAULT_HEADERS),
        expose_headers=values.get("cors_expose_headers", ""),
        credentials=values.get("cors_allow_credentials", True),
        max_age=values.get("cors_max_age", CORS_DEFAULT_MAX_AGE),
    )


def _canary_rules(
    values: Mapping[str, Any],
    given: Mapping[str, tuple[str, str]],
    errors: list[AnnotationError],
) -> CanaryRules | None:
    """The rules of a canary Ingress, as ingress-nginx's canary parser reads them: a rule
    whose value is invalid is left out (its default: "" or 0; a weight total of 100); a header
    pattern of valid characters that does not compile is kept as invalid (ingress-nginx passes
    it to Lua, whose regex error keeps the request on the main backend); canary rules on an
    Ingress without `canary: "true"` are an error ("configured but not enabled") and it stays
    an ordinary Ingress."""
    enabled = values.get("canary", False)
    configured = values.get("canary_weight", 0) > 0 or any(
        values.get(f)
        for f in (
            "canary_by_header",
            "canary_by_header_value",
            "canary_by_header_pattern",
            "canary_by_cookie",
        )
    )
    if not enabled:
        if configured:
            name, value = given.get("canary", ("", ""))
            if not name:
                name, value = next(given[f] for f in sorted(_CANARY_FIELDS) if f in given)
            errors.append(
                AnnotationError(
                    name,
                    value,
                    'canary rules are configured but the Ingress is not a canary (canary: "true")'
                    ", so they have no effect",
                )
            )
        return None
    pattern = values.get("canary_by_header_pattern", "")
    invalid = False
    if pattern:
        try:
            compile_header_pattern(pattern)
        except PatternError as exc:
            name, value = given["canary_by_header_pattern"]
            errors.append(
                AnnotationError(
                    name,
                    value,
                    f"{exc}; a request carrying the header stays on the main Ingress's backend "
                    "(as ingress-nginx does when its regex fails)",
                )
            )
            invalid = True
    total = values.get("canary_weight_total", 100)
    return CanaryRules(
        header=values.get("canary_by_header", "").lower(),
        header_value=values.get("canary_by_header_value", ""),
        header_pattern=pattern,
        header_invalid=invalid,
        cookie=values.get("canary_by_cookie", ""),
        weight=max(values.get("canary_weight", 0), 0),
        # ingress-nginx's balancer draws out of 100 unless the total is larger.
        weight_total=total if total > 100 else 100,
        # An invalid value is reported and the default applies, as ingress-nginx reads it.
        affinity_behavior=values.get("affinity_canary_behavior", "sticky"),
        # Its own upstream-hash-by, even beside affinity (the canary's affinity annotations
        # are ignored: ingress-nginx never applies them to a canary's backend).
        hash_by=HashBy(
            values["upstream_hash_by"],
            subset=bool(values.get("upstream_hash_by_subset", False)),
            subset_size=values.get("upstream_hash_by_subset_size", 3),
        )
        if values.get("upstream_hash_by")
        else None,
    )
