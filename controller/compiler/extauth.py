"""External authentication annotations (and the ConfigMap's global-auth-* keys) -> one step.

ingress-nginx's auth-url family (internal/ingress/annotations/authreq/main.go) and
`satisfy`: each annotation is validated on its own here (`PARSERS`, used by annotations.py;
a value that does not read raises ValueError), then `external_auth` builds the
`config.ExternalAuth` step of an Ingress from the values read. The ConfigMap's global-auth-*
keys take the same grammar (`global_auth`, used by controller/configmap.py): their step applies
to every Ingress without its own auth-url unless it says `enable-global-auth: "false"`.

Where ingress-nginx would ignore an invalid value and serve (an unreadable auth-signin, say),
Portico denies the routes (503, `InvalidExternalAuth`): an authentication setting that cannot
be read is not dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from controller.compiler.catalogue import GLOBAL_AUTH_OPTIONS
from proxy.config import ExternalAuth

_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
)
# authreq's headerRegexp.
_HEADER: Final = re.compile(r"^[a-zA-Z\d\-_]+\Z")
_PARAM: Final = re.compile(r"^[-._~a-zA-Z0-9]+\Z")
_CONFIGMAP_REF: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z"
)
# authreq's statusCodeRegex and durationRegex (nginx's time units).
_STATUS: Final = re.compile(r"^\d{3}\Z")
_DURATION: Final = re.compile(r"^(\d+)(ms|s|m|h|d|w|M|y)\Z")
_UNIT_SECONDS: Final = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "M": 2592000,
    "y": 31536000,
}
# ingress-nginx's DefaultCacheDuration.
DEFAULT_CACHE_DURATION: Final = "200 202 401 5m"
# nginx's proxy_cache_valid with a time alone caches these.
_TIME_ALONE_STATUSES: Final = (200, 301, 302)
_EXAMPLE_URL: Final = "http://auth.example"


def _url(value: str) -> str:
    url = value.strip()
    try:
        ExternalAuth(url)
    except ValueError:
        raise ValueError(
            "expected an http:// or https:// URL with a host, of visible characters, whose "
            "$ start only $host, $http_host, $scheme, $pass_access_scheme, $request_uri, "
            "$escaped_request_uri or $request_method"
        ) from None
    return url


def _signin(value: str) -> str:
    url = value.strip()
    return "" if not url else _url(url)


def _method(value: str) -> str:
    method = value.strip()
    if method not in _METHODS:
        raise ValueError(f"expected one of {', '.join(sorted(_METHODS))}")
    return method


def _param(value: str) -> str:
    param = value.strip()
    if not _PARAM.match(param):
        raise ValueError("expected a query parameter name (letters, digits, -._~)")
    return param


def _headers(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if not _HEADER.match(name):
            raise ValueError(f"{name!r} is not a header name (letters, digits, - and _)")
    try:
        ExternalAuth(_EXAMPLE_URL, response_headers=names)
    except ValueError as exc:
        raise ValueError(f"{exc}: the proxy decides that field itself") from None
    return names


def _redirect(value: str) -> str:
    text = value.strip()
    if not all("!" <= c <= "~" for c in text):
        raise ValueError("expected visible characters without spaces")
    return text


def _configmap(value: str) -> str:
    ref = value.strip()
    if not _CONFIGMAP_REF.match(ref):
        raise ValueError('expected a ConfigMap reference "namespace/name"')
    return ref


def _cache_key(value: str) -> str:
    key = value.strip()
    try:
        ExternalAuth(_EXAMPLE_URL, cache_key=key)
    except ValueError:
        raise ValueError(
            "expected literal text and the variables $remote_user, $http_authorization, "
            "$http_<name>, $cookie_<name>, $host, $request_uri, $uri, $remote_addr, $scheme"
        ) from None
    return key


def cache_durations(value: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(statuses, seconds) of auth-cache-duration: comma-separated entries of status codes
    then one time (`200 202 10m, 401 30s`); a time alone caches 200, 301 and 302 (nginx's
    proxy_cache_valid). A later entry for the same status wins."""
    times: dict[int, int] = {}
    for entry in value.split(","):
        words = entry.split()
        if not words:
            continue
        *codes, duration = words
        m = _DURATION.match(duration)
        if m is None or not all(_STATUS.match(c) for c in codes):
            raise ValueError(f"{entry.strip()!r} is not status codes then a time like 5m")
        seconds = max(1, round(int(m.group(1)) * _UNIT_SECONDS[m.group(2)]))
        for code in [int(c) for c in codes] or _TIME_ALONE_STATUSES:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status")
            times[code] = seconds
    if not times:
        raise ValueError("expected status codes then a time, like 200 202 401 5m")
    statuses = tuple(sorted(times))
    return statuses, tuple(times[s] for s in statuses)


def _go_bool(value: str) -> bool:
    text = value.strip()
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError('expected "true" or "false"')


def _count(value: str) -> int:
    """A whole number; ingress-nginx takes a negative keep-alive as none (0)."""
    text = value.strip()
    if not re.fullmatch(r"[+-]?\d{1,9}", text):
        raise ValueError("expected a whole number")
    return max(0, int(text))


def _positive(value: str) -> int:
    number = _count(value)
    if number == 0:
        raise ValueError("expected a number above 0")
    return number


def _satisfy(value: str) -> bool:
    text = value.strip()
    if text not in ("any", "all"):
        raise ValueError('expected "any" or "all"')
    return text == "any"


# Annotation (and, after "global-", ConfigMap key) suffix -> (parser, field).
PARSERS: Final[Mapping[str, tuple[Callable[[str], Any], str]]] = {
    "auth-url": (_url, "auth_url"),
    "auth-method": (_method, "auth_method"),
    "auth-signin": (_signin, "auth_signin"),
    "auth-signin-redirect-param": (_param, "auth_signin_redirect_param"),
    "auth-response-headers": (_headers, "auth_response_headers"),
    "auth-request-redirect": (_redirect, "auth_request_redirect"),
    "auth-proxy-set-headers": (_configmap, "auth_proxy_set_headers"),
    "auth-cache-key": (_cache_key, "auth_cache_key"),
    "auth-cache-duration": (cache_durations, "auth_cache_duration"),
    "auth-always-set-cookie": (_go_bool, "auth_always_set_cookie"),
    "auth-keepalive": (_count, "auth_keepalive"),
    # Lua's variables shared with the auth subrequest: Portico's subrequest is no nginx
    # subrequest, so there is nothing to share; validated only.
    "auth-keepalive-share-vars": (_go_bool, "auth_keepalive_share_vars"),
    "auth-keepalive-requests": (_positive, "auth_keepalive_requests"),
    "auth-keepalive-timeout": (_positive, "auth_keepalive_timeout"),
    "satisfy": (_satisfy, "satisfy_any"),
    "enable-global-auth": (_go_bool, "enable_global_auth"),
}
FIELDS: Final = frozenset(field for _, field in PARSERS.values())
# The fields of the step itself (not satisfy, enable-global-auth).
AUTH_FIELDS: Final = frozenset(f for f in FIELDS if f.startswith("auth_"))


def external_auth(values: Mapping[str, Any]) -> ExternalAuth | None:
    """The step of the auth-* values read (valid ones: `values` maps FIELDS to parsed values);
    None without auth-url. Raises ValueError for a combination the step refuses."""
    url = values.get("auth_url")
    if not url:
        return None
    statuses, seconds = values.get("auth_cache_duration") or cache_durations(DEFAULT_CACHE_DURATION)
    cache_key = values.get("auth_cache_key", "")
    return ExternalAuth(
        url,
        method=values.get("auth_method", ""),
        signin=values.get("auth_signin", ""),
        signin_redirect_param=values.get("auth_signin_redirect_param", "rd"),
        response_headers=values.get("auth_response_headers", ()),
        request_redirect=values.get("auth_request_redirect", ""),
        cache_key=cache_key,
        cache_statuses=statuses if cache_key else (),
        cache_seconds=seconds if cache_key else (),
        always_set_cookie=values.get("auth_always_set_cookie", False),
        keepalive=values.get("auth_keepalive", 0),
        keepalive_requests=values.get("auth_keepalive_requests", 1000),
        keepalive_timeout=values.get("auth_keepalive_timeout", 60),
    )


# The ConfigMap's global-auth-* keys (ingress-nginx's GlobalExternalAuth), by key.
GLOBAL_KEYS: Final = {
    "global-" + name: entry
    for name, entry in PARSERS.items()
    if name == "auth-url" or name in GLOBAL_AUTH_OPTIONS
}


def global_auth(data: Mapping[str, str]) -> tuple[ExternalAuth | None, dict[str, str]]:
    """The global external auth of the ingress-nginx ConfigMap's global-auth-* keys (None
    without global-auth-url), and the keys whose value does not read, with why. With any
    such key the step is None and the caller fails closed."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, (parse, field) in GLOBAL_KEYS.items():
        if key == "global-auth-url" and not data.get(key, "").strip():
            continue  # empty: no global auth, as ingress-nginx
        if key in data:
            try:
                values[field] = parse(data[key])
            except ValueError as exc:
                errors[key] = str(exc)
    if errors:
        return None, errors
    try:
        return external_auth(values), {}
    except ValueError as exc:
        return None, {"global-auth-url": str(exc)}
