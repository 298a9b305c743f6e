"""Host/path lookup: which PathRule answers a request. Built once per snapshot, read per request.

A worker builds a `Router` from `Snapshot.routes` when it applies a snapshot; every request calls
`route(host, path)`. `portico explain` calls `explain` for the same answer plus why. Lookups are
dict probes only: exact hosts, one-label wildcards keyed by their parent domain, then the
host-less rules; per host an exact-path dict, then a prefix dict probed at each segment boundary
of the request path from longest to shortest. Paths are matched raw (no percent-decoding).
A host with regex rules (ingress-nginx's `use-regex`, `rewrite-target`) also keeps them as an
ordered tuple of compiled expressions (proxy/regex.py), tried after the exact paths and before
the prefixes, first match wins (nginx's order: `=` locations, then regex locations in
configuration order); a host without any pays one empty-tuple test.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import PathRule, RouteTable, VirtualHost
from proxy.regex import PathPattern, compile_path

NO_HOST_MATCH = "NoHostMatch"
NO_PATH_MATCH = "NoPathMatch"

# Distinct Host values remembered by Router.route_raw before it starts over.
_RAW_HOSTS_MAX = 1024


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The outcome of a lookup, for `portico explain` and logs.

    `rule` is what the proxy uses (None: 404). `reason` is None when a path rule matched, else
    NoHostMatch / NoPathMatch; `via_default` says `rule` is a fallback (the virtual host's
    defaultBackend or the global default backend).
    """

    rule: PathRule | None
    virtual_host: VirtualHost | None
    reason: str | None
    via_default: bool = False


class _Host:
    """Lookup structures for one virtual host."""

    __slots__ = ("exact", "fallback", "prefix", "regex", "root", "vhost")

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        self.exact: dict[str, PathRule] = {}
        self.prefix: dict[str, PathRule] = {}
        regex: list[tuple[PathPattern, PathRule]] = []
        # Rules arrive longest first, Exact first; keep the first one for each key. Regex rules
        # arrive in the order they are tried (the compiler's, ingress-nginx's).
        for rule in vhost.rules:
            if rule.match == "regex":
                regex.append((compile_path(rule.path), rule))
                continue
            target = self.exact if rule.match == "exact" else self.prefix
            target.setdefault(rule.path, rule)
        self.regex = tuple(regex)
        # Prefix "/" is probed last, after every segment boundary; held apart so the loop below
        # never has to produce the "/" string.
        self.root = self.prefix.pop("/", None)
        self.fallback = vhost.fallback

    def match(self, path: str) -> PathRule | None:
        rule = self.exact.get(path)
        if rule is not None:
            return rule
        regex = self.regex
        if regex:
            raw = path.encode("latin-1", "replace")
            for pattern, regex_rule in regex:
                if pattern.matches(raw):
                    return regex_rule
        prefix = self.prefix
        if prefix:
            end = len(path)
            # A trailing "/" on the request is a segment boundary, not part of a segment.
            if end > 1 and path[end - 1] == "/":
                end -= 1
            candidate = path if end == len(path) else path[:end]
            while end > 0:
                rule = prefix.get(candidate)
                if rule is not None:
                    return rule
                end = path.rfind("/", 0, end)
                candidate = path[:end]
        return self.root


def _normalize_host(host: str) -> str:
    """Lower-case, without port, brackets kept for IPv6 literals, without a trailing dot."""
    if host.startswith("["):
        close = host.find("]")
        host = host[: close + 1] if close > 0 else host
    else:
        colon = host.find(":")
        if colon >= 0:
            host = host[:colon]
    if host.endswith("."):
        host = host[:-1]
    return host.lower()


class Router:
    """Route lookup over one RouteTable; immutable once built."""

    __slots__ = ("_by_raw", "_catch_all", "_default", "_exact", "_wildcard")

    def __init__(self, routes: RouteTable) -> None:
        self._exact: dict[str, _Host] = {}
        self._wildcard: dict[str, _Host] = {}  # "*.foo.com" under "foo.com"
        self._catch_all: _Host | None = None
        self._default = routes.default
        # Host field as sent -> its table (None: no host matched), so a request's host is
        # normalized once per distinct value, not per request. Bounded: cleared when full.
        self._by_raw: dict[bytes, _Host | None] = {}
        for vhost in routes.virtual_hosts:
            table = _Host(vhost)
            if vhost.host == "":
                self._catch_all = table
            elif vhost.host.startswith("*."):
                self._wildcard[vhost.host[2:]] = table
            else:
                self._exact[vhost.host] = table

    def _host(self, host: str) -> _Host | None:
        if host:
            name = _normalize_host(host)
            table = self._exact.get(name)
            if table is not None:
                return table
            if self._wildcard:
                dot = name.find(".")
                # The wildcard label must be non-empty: ".foo.com" matches nothing.
                if dot > 0:
                    table = self._wildcard.get(name[dot + 1 :])
                    if table is not None:
                        return table
        return self._catch_all

    def route(self, host: str, path: str) -> PathRule | None:
        """The rule answering a request; the host's fallback or global default; None: 404."""
        # Kubernetes hosts are ASCII: a name beyond latin-1 matches no host, as "?" does not.
        return self.route_raw(host.encode("latin-1", "replace"), path)

    def route_raw(self, host: bytes, path: str) -> PathRule | None:
        """`route` for a Host field as sent (bytes), with the host lookup cached."""
        by_raw = self._by_raw
        try:
            table = by_raw[host]
        except KeyError:
            table = self._host(host.decode("latin-1"))
            if len(by_raw) >= _RAW_HOSTS_MAX:
                by_raw.clear()
            by_raw[host] = table
        if table is None:
            return self._default
        rule = table.match(path)
        if rule is not None:
            return rule
        fallback = table.fallback
        return fallback if fallback is not None else self._default

    def explain(self, host: str, path: str) -> RouteMatch:
        table = self._host(host)
        if table is None:
            return RouteMatch(self._default, None, NO_HOST_MATCH, self._default is not None)
        rule = table.match(path)
        if rule is not None:
            return RouteMatch(rule, table.vhost, None)
        fallback = table.fallback if table.fallback is not None else self._default
        return RouteMatch(fallback, table.vhost, NO_PATH_MATCH, fallback is not None)
