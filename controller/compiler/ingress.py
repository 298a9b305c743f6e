"""Ingress semantics: class selection, hosts, paths, precedence, defaultBackend, conflicts, TLS.

Two stages. `compile_ingress` turns one Ingress into an `IngressPart` (validated path rules,
fallbacks, TLS entries, its own problems); it depends on that Ingress alone, so the incremental
compiler caches parts per Ingress object. `assemble` merges the parts of all our Ingresses in
precedence order (oldest first, then namespace/name) into a RouteTable, resolving conflicts and
attaching certificates; the backends the surviving rules use are returned for `backends.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from controller.compiler.annotations import (
    CanaryRules,
    ClientAuth,
    IngressOptions,
    parse_annotations,
)
from controller.compiler.backends import FIRST_PORT, BackendUse, backend_key
from controller.compiler.problems import (
    ACCESS_CONTROL_NOT_ENFORCED,
    ALIAS_CONFLICT,
    CANARY_UNPAIRED,
    CONFIGMAP_NOT_FOUND,
    CUSTOM_HEADERS_INVALID,
    DEFAULT_BACKEND_CONFLICT,
    INVALID_ANNOTATION,
    INVALID_BACKEND,
    INVALID_HOST,
    INVALID_PATH,
    INVALID_PATH_TYPE,
    PASSTHROUGH_NOT_APPLIED,
    PATH_CONFLICT,
    SECRET_INVALID,
    UNSUPPORTED_BACKEND,
    Problem,
)
from controller.compiler.screening import screen
from controller.compiler.settings import CompileSettings
from controller.compiler.tls import LoadedCertificate, check_validity, covers
from controller.objects import Ingress, IngressBackend, IngressClass
from proxy.config import (
    AppRoot,
    BasicAuth,
    Canary,
    ClientCertificate,
    Cors,
    ErrorPages,
    ExternalAuth,
    HostRedirect,
    HTTPSRedirect,
    MatchKind,
    PassthroughHost,
    PathRule,
    PolicyStep,
    RateLimit,
    Redirect,
    Refuse,
    ResponseHeaders,
    Rewrite,
    RouteOptions,
    RouteTable,
    SatisfyAny,
    ShapeRequest,
    SourceRanges,
    TLSCertificate,
    VirtualHost,
)
from proxy.regex import PatternError, compile_path

LEGACY_CLASS_ANNOTATION: Final = "kubernetes.io/ingress.class"
PATH_TYPES: Final[Mapping[str, MatchKind]] = {
    "Exact": "exact",
    "Prefix": "prefix",
    "ImplementationSpecific": "prefix",
}

_DNS_SUBDOMAIN: Final = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# RFC 3986 path characters (pchar plus "/"); "%" must start a percent-escape.
_PATH_CHARS: Final = re.compile(r"^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
# Sequences the API server rejects in Exact and Prefix paths.
_BAD_SEQUENCES: Final = ("//", "/./", "/../", "%2f", "%2F")
_BAD_SUFFIXES: Final = ("/..", "/.")
# Paths never redirected to HTTPS, so that an ACME server (cert-manager's HTTP-01 solver, even
# inside an Ingress with TLS) reaches them over plain HTTP: ingress-nginx's
# no-tls-redirect-locations default, matched as it does, as a prefix of the Ingress path.
NO_TLS_REDIRECT_PREFIX: Final = "/.well-known/acme-challenge"
# The first policy step of the routes of an Ingress whose access control Portico does not
# enforce: answered by the proxy, never forwarded (403, as ingress-nginx refuses access).
ACCESS_DENIED: Final = Refuse(403, ACCESS_CONTROL_NOT_ENFORCED)
# The first policy step of an Ingress whose source-range annotation cannot be read: the
# restriction is not dropped, the routes fail closed (ingress-nginx denies such a location with
# 503; InvalidAnnotation problem).
INVALID_SOURCE_RANGE: Final = Refuse(503, "InvalidSourceRange")
# The first policy step of an Ingress whose custom-headers cannot be served (the annotation or
# its ConfigMap does not read, a name is not allowed): ingress-nginx denies the location (503)
# rather than answer without them (they are often security headers).
INVALID_CUSTOM_HEADERS: Final = Refuse(503, "InvalidCustomHeaders")
# The first policy step of an Ingress whose permanent-redirect or temporal-redirect URL cannot
# be read: its routes fail closed rather than forward what was meant to be redirected
# (InvalidAnnotation problem).
INVALID_REDIRECT: Final = Refuse(503, "InvalidRedirect")
# auth-tls-* with a value that does not read: the routes fail closed (503) rather than check
# client certificates less than asked.
INVALID_CLIENT_AUTH: Final = Refuse(503, "InvalidClientCertificate")
# auth-tls-secret that cannot be used (missing, no ca.crt, another namespace): ingress-nginx's
# server `return 403` for its AuthTLSError; never served without verification.
CLIENT_AUTH_UNUSABLE: Final = Refuse(403, "ClientCertificateSecretInvalid")
# The first policy step of an Ingress whose external auth cannot be read (an auth-* annotation,
# the ConfigMap's global-auth-* keys it would take, its auth-proxy-set-headers ConfigMap): its
# routes are denied (503), never served unauthenticated.
INVALID_EXTERNAL_AUTH: Final = Refuse(503, "InvalidExternalAuth")
# The first policy step (after the redirects) of an Ingress whose basic auth cannot be enforced:
# an auth annotation does not read or asks for digest, the auth-secret is missing or in another
# namespace (InvalidAnnotation / SecretInvalid problem), or the Secret cannot be read
# (AUTH_SECRET_UNAVAILABLE). Never served open: ingress-nginx denies such a location (503).
INVALID_AUTH: Final = Refuse(503, "InvalidAuth")
AUTH_SECRET_UNAVAILABLE: Final = Refuse(503, "AuthSecretUnavailable")
# A rate-limit annotation does not read: the routes answer 503 rather than serve without the
# limit (InvalidAnnotation problem).
INVALID_RATE_LIMIT: Final = Refuse(503, "InvalidRateLimit")


def _rate_limit(ref: str, opts: IngressOptions, statuses: tuple[int, int]) -> PolicyStep | None:
    """The RateLimit step of an Ingress (its zone: the Ingress, as ingress-nginx names its
    zones after it), INVALID_RATE_LIMIT, or None without a limit."""
    if opts.invalid_rate_limit:
        return INVALID_RATE_LIMIT
    if not (opts.limit_rps or opts.limit_rpm or opts.limit_connections):
        return None
    return RateLimit(
        zone=ref,
        rps=opts.limit_rps,
        rpm=opts.limit_rpm,
        burst_multiplier=opts.limit_burst_multiplier,
        connections=opts.limit_connections,
        allow=opts.limit_allowlist,
        status=statuses[0],
        connection_status=statuses[1],
    )


def _source_ranges(
    allow: tuple[str, ...], deny: tuple[str, ...], invalid: bool
) -> SourceRanges | Refuse | None:
    if invalid:
        return INVALID_SOURCE_RANGE
    if allow or deny:
        return SourceRanges(allow, deny)
    return None


# ---- class selection --------------------------------------------------------------------------


def classify(
    ingress: Ingress, classes: Mapping[str, IngressClass], settings: CompileSettings
) -> str | None:
    """None if the Ingress is ours, else the reason it is not.

    ingress-nginx's rule (store.GetIngressClass), with lists where it has one value: a
    `spec.ingressClassName` wins and must name an IngressClass whose `spec.controller` is one
    of `controller_names`; else the legacy annotation must be one of `ingress_classes`; else
    the Ingress is ours with `watch_ingress_without_class`. One addition: it is also ours when
    a default IngressClass (`ingressclass.kubernetes.io/is-default-class`) is, since the API
    server gives new Ingresses that class and older ones without it are meant for it too.
    """
    if ingress.ingress_class_name is not None:
        cls = classes.get(ingress.ingress_class_name)
        if cls is None:
            return f"IngressClass {ingress.ingress_class_name!r} not found"
        if cls.controller not in settings.controller_names:
            return (
                f"class {ingress.ingress_class_name!r} is not ours (controller {cls.controller!r})"
            )
        return None
    legacy = ingress.annotations.get(LEGACY_CLASS_ANNOTATION)
    if legacy is not None:
        if legacy in settings.ingress_classes:
            return None
        return f"class {legacy!r} is not ours (annotation {LEGACY_CLASS_ANNOTATION})"
    if settings.watch_ingress_without_class:
        return None
    if any(c.is_default and c.controller in settings.controller_names for c in classes.values()):
        return None
    return "no ingress class, and no default IngressClass of ours"


# ---- one Ingress ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def host_error(host: str) -> str | None:
    """Why a (lower-cased) rule host is invalid, or None."""
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        return "a wildcard must be the whole first label, as in *.example.com"
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return "must be a DNS name, not an IP address"
    if not _DNS_SUBDOMAIN.match(name):
        return "not a valid DNS-1123 name"
    return None


@functools.lru_cache(maxsize=65536)
def path_error(path: str, path_type: str) -> str | None:
    """Why a path is invalid for its pathType, or None."""
    if not _PATH_CHARS.match(path):
        if not path.startswith("/"):
            return 'must start with "/"'
        return "contains characters not allowed in a URL path"
    if path_type != "ImplementationSpecific":
        for seq in _BAD_SEQUENCES:
            if seq in path:
                return f"must not contain {seq!r}"
        for suffix in _BAD_SUFFIXES:
            if path.endswith(suffix):
                return f"must not end with {suffix!r}"
    return None


@functools.lru_cache(maxsize=65536)
def regex_path_error(path: str) -> str | None:
    """Why a path cannot be matched as a regular expression (proxy/regex.py, RE2), or None."""
    if not path.startswith("/"):
        return 'must start with "/"'
    try:
        compile_path(path)
    except PatternError as exc:
        return f"is not a regular expression Portico can match: {exc}"
    return None


def normalize_path(path: str, match: MatchKind) -> str:
    """Prefix paths lose their trailing "/" (element-wise matching), "/" stays "/"."""
    if match == "prefix" and len(path) > 1 and path.endswith("/"):
        stripped = path.rstrip("/")
        return stripped or "/"
    return path


@dataclass(frozen=True, slots=True)
class BackendRef:
    key: str
    namespace: str
    service: str
    port: int | str
    cluster_ip: bool = False  # service-upstream


@dataclass(frozen=True, slots=True)
class RuleEntry:
    host: str
    rule: PathRule
    backend: BackendRef
    text: str  # "(rule host=a.com path=/api)" for problem messages
    # The path as written in the Ingress ("" when an ImplementationSpecific path is omitted);
    # `rule.path` is normalized for matching. None for defaultBackend entries.
    written_path: str | None = None
    # This path has `use-regex` or a `rewrite-target` (other than itself): every path of its
    # host is matched as a regular expression (ingress-nginx's enforceRegexModifier).
    regex: bool = False
    # The rule without the HTTPS redirect its host's TLS gives it (None: it has none, or it is
    # forced): what a server-alias the certificate does not cover serves (see `assemble`).
    unredirected: PathRule | None = None


@dataclass(frozen=True, slots=True)
class TLSEntry:
    secret: str
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IngressPart:
    """What one Ingress contributes, validated, before merging with other Ingresses."""

    ref: str
    namespace: str
    hosts: tuple[str, ...]  # valid rule hosts ("" for host-less), in order of appearance
    entries: tuple[RuleEntry, ...]
    fallbacks: tuple[RuleEntry, ...]  # per host: the defaultBackend (Ingress with rules)
    default: RuleEntry | None  # the defaultBackend of an Ingress without rules
    tls: tuple[TLSEntry, ...]
    problems: tuple[Problem, ...]
    # `proxy-ssl-secret` ("ns/name") whose ca.crt verifies the pods; None: no verification.
    ca_secret: str | None = None
    # Access-control annotations not enforced, served anyway (--serve-without-access-control):
    # the compiler logs a warning naming them.
    unprotected: tuple[str, ...] = ()
    # `server-alias` names, resolved across Ingresses by `assemble`.
    aliases: tuple[str, ...] = ()
    # `custom-headers` ("ns/name" of a ConfigMap), resolved by `assemble`.
    custom_headers: str | None = None
    # `auth-proxy-set-headers` ("ns/name" of a ConfigMap), resolved by `assemble` into the
    # ExternalAuth step's fields.
    auth_proxy_set_headers: str | None = None
    # from-to-www-redirect: the rule hosts whose other name (www. added or removed) redirects
    # to them (`assemble` adds those names).
    www_redirect_hosts: tuple[str, ...] = ()
    # `app-root`: "/" on the hosts of this Ingress is redirected there (see `assemble`).
    app_root: str | None = None
    # The `default-backend` annotation's Service (its first port), already in the rules'
    # ErrorPages step; `assemble` has it resolved with the other backends.
    error_backend: BackendRef | None = None
    # `custom-http-errors` without `default-backend`: the statuses the global default backend
    # answers (the Ingress with only a defaultBackend, known once all parts are merged).
    global_error_codes: tuple[int, ...] = ()
    # A canary Ingress (`canary: "true"`): its rules and defaultBackend only name the backends
    # `assemble` pairs with the main Ingresses' rules of the same host and path; it serves
    # nothing on its own (no hosts, no TLS, its other annotations ignored, as ingress-nginx).
    canary: CanaryRules | None = None
    # `ssl-passthrough` with --enable-ssl-passthrough: HTTPS connections for its hosts go to
    # the pods unterminated (`assemble` makes the Snapshot.passthrough entries).
    passthrough: bool = False
    # auth-tls-* (`secret` "ns/name"): `assemble` resolves its ca.crt into the
    # ClientCertificate step of every rule of this Ingress's hosts.
    client_auth: ClientAuth | None = None
    # Basic auth: ("namespace/name" of the auth-secret, auth-secret-type, auth-realm), which
    # `assemble` reads into a BasicAuth step (or locks the routes when it cannot).
    basic_auth: tuple[str, str, str] | None = None


def _rule_text(host: str, path: str | None) -> str:
    where = f"host={host} " if host else ""
    return f"(rule {where}path={path})"


def _backend(
    ingress: Ingress,
    backend: IngressBackend,
    text: str,
    problems: list[Problem],
    cluster_ip: bool = False,
) -> BackendRef | None:
    ref = ingress.ref
    if backend.service is None:
        if backend.resource is not None:
            res = backend.resource
            problems.append(
                Problem(
                    "Ingress",
                    ref,
                    UNSUPPORTED_BACKEND,
                    f"resource backend {res.kind} {res.name!r} is not supported {text}",
                )
            )
        else:
            problems.append(Problem("Ingress", ref, INVALID_BACKEND, f"no service backend {text}"))
        return None
    svc = backend.service
    port = svc.port
    if port is None or port == "":
        problems.append(
            Problem(
                "Ingress",
                ref,
                INVALID_BACKEND,
                f'service "{svc.name}" needs a port number or name {text}',
            )
        )
        return None
    if isinstance(port, int) and not 0 < port < 65536:
        problems.append(
            Problem("Ingress", ref, INVALID_BACKEND, f"port {port} is out of range {text}")
        )
        return None
    return BackendRef(
        backend_key(ingress.namespace, svc.name, port, cluster_ip),
        ingress.namespace,
        svc.name,
        port,
        cluster_ip,
    )


def _rule(
    ingress: Ingress,
    backend: BackendRef,
    options: RouteOptions,
    *,
    path: str = "/",
    match: MatchKind = "prefix",
    path_type: str | None = None,
) -> PathRule:
    return PathRule(
        path=path,
        match=match,
        backend=backend.key,
        ingress=ingress.ref,
        service=f"{backend.namespace}/{backend.service}",
        port=backend.port,
        path_type=path_type,
        options=options,
    )


def compile_ingress(
    ingress: Ingress,
    *,
    serve_without_access_control: bool = False,
    ssl_redirect: bool = True,
    source_ranges: tuple[tuple[str, ...] | None, tuple[str, ...] | None] = ((), ()),
    global_access_denied: bool = False,
    service_upstream: bool = False,
    global_auth: ExternalAuth | Refuse | None = None,
    limit_statuses: tuple[int, int] = (503, 503),
    ssl_passthrough: bool = False,
    limit_rate: tuple[int, int] = (0, 0),
) -> IngressPart:
    """Validate one Ingress into its part; every rejected rule becomes a problem.

    `ssl_redirect`: whether hosts with TLS redirect plain HTTP when no annotation says;
    `source_ranges`: the (allow, deny) networks of an Ingress without source-range annotations
    (None: the list given for them did not read, and such an Ingress fails closed with 503);
    `global_access_denied`: access control for every Ingress is not enforced, so its routes
    answer 403 as for its own unenforced annotations (the problem is the ConfigMap's);
    `service_upstream`: the default of the service-upstream annotation; `limit_statuses`:
    the answers of the rate limits (the ConfigMap's limit-req-status-code and
    limit-conn-status-code); `limit_rate`: the (limit-rate, limit-rate-after) in bytes of an
    Ingress without those annotations (the ConfigMap's keys);
    `ssl_passthrough`: --enable-ssl-passthrough is on (else the annotation is a problem and
    its hosts are terminated, as ingress-nginx ignores it without the flag); `global_auth`: the
    ConfigMap's global external auth (or its refusal when its keys do not read), for an Ingress
    without auth-url unless enable-global-auth is "false".

    An Ingress carrying a snippet is still validated in full, for its problems, but contributes
    no routes, hosts or certificates; one carrying access control Portico does not enforce
    (unless `serve_without_access_control`) contributes routes that answer 403
    (`ACCESS_DENIED` first in their policy): see `screening.py`.
    """
    ref = ingress.ref
    problems: list[Problem] = []
    opts, errors = parse_annotations(ingress.annotations)
    problems.extend(Problem("Ingress", ref, INVALID_ANNOTATION, e.message()) for e in errors)
    screening = screen(ingress.annotations, {e.annotation: e.reason for e in errors})
    problems.extend(screening.problems(ref, serve_without_access_control))
    if opts.ssl_passthrough and not ssl_passthrough:
        problems.append(
            Problem(
                "Ingress",
                ref,
                PASSTHROUGH_NOT_APPLIED,
                "ssl-passthrough needs --enable-ssl-passthrough: Portico terminates TLS for "
                "its hosts, like for any other host",
            )
        )

    tls = tuple(
        TLSEntry(t.secret_name or "", tuple(h.strip().lower() for h in t.hosts))
        for t in ingress.tls
    )
    tls_hosts = tuple(h for t in tls for h in t.hosts)
    plain = opts.route
    rate = limit_rate[0] if opts.limit_rate is None else opts.limit_rate
    rate_after = limit_rate[1] if opts.limit_rate_after is None else opts.limit_rate_after
    if rate or rate_after:
        plain = dataclasses.replace(plain, limit_rate=rate, limit_rate_after=rate_after)
    allow = opts.allow_source_range
    deny = opts.deny_source_range
    allow = source_ranges[0] if allow is None else allow
    deny = source_ranges[1] if deny is None else deny
    ranges = _source_ranges(
        allow or (), deny or (), opts.invalid_source_range or allow is None or deny is None
    )
    # External auth runs with the access checks, after the source ranges (nginx's access
    # phase); satisfy any makes them alternatives (proxy/policy.py).
    auth: ExternalAuth | Refuse | None = opts.external_auth
    if opts.invalid_external_auth:
        auth = INVALID_EXTERNAL_AUTH
    elif auth is None and opts.enable_global_auth:
        auth = global_auth
    if auth is not None:
        plain = dataclasses.replace(plain, policy=(auth, *plain.policy))
    if opts.satisfy_any:
        # The marker of satisfy any: the access checks (source ranges, basic auth added at
        # assembly, external auth) become alternatives where the proxy builds them.
        plain = dataclasses.replace(plain, policy=(*plain.policy, SatisfyAny()))
    if ranges is not None:
        plain = dataclasses.replace(plain, policy=(ranges, *plain.policy))
    # Before the source ranges: nginx's limit_req / limit_conn run in the preaccess phase,
    # ahead of allow / deny (a denied request still counts against the limit).
    rate_limit = _rate_limit(ref, opts, limit_statuses)
    if rate_limit is not None:
        plain = dataclasses.replace(plain, policy=(rate_limit, *plain.policy))
    if opts.upstream_vhost is not None or opts.connection_header is not None:
        shaping = ShapeRequest(
            host=opts.upstream_vhost or "", connection=opts.connection_header or ""
        )
        plain = dataclasses.replace(plain, policy=(*plain.policy, shaping))
    if opts.invalid_custom_headers:
        plain = dataclasses.replace(plain, policy=(INVALID_CUSTOM_HEADERS, *plain.policy))
    basic_auth = _basic_auth(ingress, opts, problems)
    if opts.invalid_auth or basic_auth == "":
        plain = dataclasses.replace(plain, policy=(INVALID_AUTH, *plain.policy))
    cluster_ip = service_upstream if opts.service_upstream is None else opts.service_upstream
    error_backend, global_error_codes, error_pages = _error_pages(ingress, opts)
    if error_pages is not None:
        plain = dataclasses.replace(plain, policy=(*plain.policy, error_pages))
    if opts.invalid_client_auth:
        plain = dataclasses.replace(plain, policy=(INVALID_CLIENT_AUTH, *plain.policy))
    client_auth = opts.client_auth
    if client_auth is not None and client_auth.secret.startswith("/"):
        client_auth = dataclasses.replace(
            client_auth, secret=ingress.namespace + client_auth.secret
        )
    if global_access_denied or screening.denied(serve_without_access_control):
        # Fail closed with an answer: every request is refused before any other step of the
        # route (a body limit, ...) sees it, and never reaches a pod.
        plain = dataclasses.replace(plain, policy=(ACCESS_DENIED, *plain.policy))
    # The redirect goes first: a plain-HTTP request is redirected before any other step sees it
    # (as ingress-nginx redirects in its rewrite phase, before access checks).
    https_redirect = HTTPSRedirect(preserve_trailing_slash=opts.preserve_trailing_slash)
    redirected = dataclasses.replace(plain, policy=(https_redirect, *plain.policy))
    # permanent-redirect / temporal-redirect go before even that: nginx runs their `return` in
    # the rewrite phase ahead of the HTTPS redirect (Lua, at the end of that phase) and of every
    # access check; only a location denied for an unreadable source range answers 503 instead.
    url_redirect = INVALID_REDIRECT if opts.invalid_redirect else opts.url_redirect
    if url_redirect is not None and ranges is not INVALID_SOURCE_RANGE:
        plain = dataclasses.replace(plain, policy=(url_redirect, *plain.policy))
        redirected = dataclasses.replace(redirected, policy=(url_redirect, *redirected.policy))
    # CORS goes before those: ingress-nginx's preflight `return 204` is written in the location
    # ahead of the redirect's `return`, and the HTTPS redirect and access checks come later
    # still. A preflight is answered by the proxy, so it never reaches a pod unchecked. Not on
    # routes that refuse every request (a value that cannot be read: ingress-nginx's denied
    # location has no CORS block; unenforced access control: Portico fails closed).
    refused = any(isinstance(step, Refuse) for step in plain.policy)
    if opts.cors is not None and not refused:
        plain = dataclasses.replace(plain, policy=(opts.cors, *plain.policy))
        redirected = dataclasses.replace(redirected, policy=(opts.cors, *redirected.policy))

    def options_for(host: str) -> RouteOptions:
        has_tls = bool(host) and (host in tls_hosts or covers(tls_hosts, host))
        return redirected if opts.redirect(has_tls, ssl_redirect) else plain

    def unredirected(rule: PathRule) -> PathRule | None:
        # A redirect that the host's TLS gives (not force-ssl-redirect) can be taken back.
        if rule.options is not redirected or opts.force_ssl_redirect:
            return None
        return dataclasses.replace(rule, options=plain)

    hosts: dict[str, RouteOptions] = {}
    entries: list[RuleEntry] = []
    for rule in ingress.rules:
        host = (rule.host or "").strip().lower()
        if host:
            err = host_error(host)
            if err is not None:
                problems.append(
                    Problem(
                        "Ingress", ref, INVALID_HOST, f'host "{rule.host}": {err}; rule dropped'
                    )
                )
                continue
        host_opts = hosts.get(host)
        if host_opts is None:
            host_opts = hosts[host] = options_for(host)
        for p in rule.paths:
            text = _rule_text(host, p.path)
            if p.path_type is None:
                problems.append(
                    Problem("Ingress", ref, INVALID_PATH_TYPE, f"pathType is required {text}")
                )
                continue
            match = PATH_TYPES.get(p.path_type)
            if match is None:
                problems.append(
                    Problem(
                        "Ingress",
                        ref,
                        INVALID_PATH_TYPE,
                        f"pathType {p.path_type!r} is not Exact, Prefix or "
                        f"ImplementationSpecific {text}",
                    )
                )
                continue
            path = p.path
            if not path:
                if p.path_type != "ImplementationSpecific":
                    problems.append(
                        Problem("Ingress", ref, INVALID_PATH, f"path is required {text}")
                    )
                    continue
                path = "/"
            # ingress-nginx's needsRewrite: a target equal to the path is no rewrite.
            rewrite = opts.rewrite_target is not None and opts.rewrite_target != path
            regex = opts.use_regex or rewrite
            if regex and p.path_type == "ImplementationSpecific":
                # A regular expression (ingress-nginx documents regex paths with this type).
                err = regex_path_error(path)
            else:
                err = path_error(path, p.path_type)
                if err is None and regex:
                    err = regex_path_error(path)
            if err is not None:
                problems.append(Problem("Ingress", ref, INVALID_PATH, f"path {err} {text}"))
                continue
            backend = _backend(ingress, p.backend, text, problems, cluster_ip)
            if backend is None:
                continue
            rule_opts = plain if path.startswith(NO_TLS_REDIRECT_PREFIX) else host_opts
            if rewrite and opts.rewrite_target is not None:
                # Last: the access checks and redirects before it see the client's request.
                step = Rewrite(path, opts.rewrite_target, opts.x_forwarded_prefix)
                rule_opts = dataclasses.replace(rule_opts, policy=(*rule_opts.policy, step))
            rule_obj = _rule(
                ingress,
                backend,
                rule_opts,
                path=normalize_path(path, match),
                match=match,
                path_type=p.path_type,
            )
            entries.append(
                RuleEntry(
                    host,
                    rule_obj,
                    backend,
                    text,
                    p.path or "",
                    regex,
                    unredirected=unredirected(rule_obj),
                )
            )

    fallbacks: list[RuleEntry] = []
    default: RuleEntry | None = None
    if ingress.default_backend is not None:
        text = "(defaultBackend)"
        backend = _backend(ingress, ingress.default_backend, text, problems, cluster_ip)
        if backend is not None:
            if ingress.rules:
                for host, host_opts in hosts.items():
                    rule_obj = _rule(ingress, backend, host_opts)
                    fallbacks.append(
                        RuleEntry(
                            host, rule_obj, backend, text, unredirected=unredirected(rule_obj)
                        )
                    )
            else:
                rule_obj = _rule(ingress, backend, options_for(""))
                default = RuleEntry("", rule_obj, backend, text)
    if opts.canary is not None and screening.denied(serve_without_access_control):
        # ingress-nginx ignores a canary's own access control (the main Ingress's applies), but
        # until Portico enforces what it asks for, the canary is not used at all: its requests
        # stay on the main Ingress's backend, nothing is served unprotected.
        problems.append(
            Problem(
                "Ingress",
                ref,
                CANARY_UNPAIRED,
                "canary not used: it carries access control Portico does not enforce yet "
                f"({', '.join(screening.unenforced)}); its requests stay on the main Ingresses",
            )
        )
        return dataclasses.replace(_empty_part(ref, ingress.namespace), problems=tuple(problems))
    if opts.canary is not None and not screening.withheld:
        return IngressPart(
            ref=ref,
            namespace=ingress.namespace,
            hosts=(),
            entries=tuple(entries),
            fallbacks=tuple(fallbacks),
            default=default,
            tls=(),
            problems=tuple(problems),
            canary=opts.canary,
        )
    if screening.withheld:
        return IngressPart(
            ref=ref,
            namespace=ingress.namespace,
            hosts=(),
            entries=(),
            fallbacks=(),
            default=None,
            tls=(),
            problems=tuple(problems),
        )
    return IngressPart(
        ref=ref,
        namespace=ingress.namespace,
        hosts=tuple(hosts),
        entries=tuple(entries),
        fallbacks=tuple(fallbacks),
        default=default,
        tls=tls,
        problems=tuple(problems),
        ca_secret=opts.proxy_ssl_secret if opts.proxy_ssl_verify is not False else None,
        unprotected=screening.unenforced if serve_without_access_control else (),
        aliases=opts.server_alias,
        custom_headers=opts.custom_headers,
        auth_proxy_set_headers=opts.auth_proxy_set_headers,
        www_redirect_hosts=_www_redirect_hosts(entries) if opts.from_to_www_redirect else (),
        app_root=opts.app_root,
        error_backend=error_backend,
        global_error_codes=global_error_codes,
        passthrough=opts.ssl_passthrough and ssl_passthrough,
        client_auth=client_auth,
        basic_auth=(basic_auth, opts.auth_secret_type, opts.auth_realm) if basic_auth else None,
    )


def _empty_part(ref: str, namespace: str) -> IngressPart:
    return IngressPart(
        ref=ref,
        namespace=namespace,
        hosts=(),
        entries=(),
        fallbacks=(),
        default=None,
        tls=(),
        problems=(),
    )


def _basic_auth(ingress: Ingress, opts: IngressOptions, problems: list[Problem]) -> str | None:
    """The auth-secret as "namespace/name"; None without basic auth; "" when it cannot be used
    (the routes fail closed): not given, or in another namespace, which ingress-nginx refuses
    by default (allow-cross-namespace-resources false)."""
    if opts.auth_secret is None:
        return None
    if not opts.auth_secret:
        reason = "auth-type basic without auth-secret"
    else:
        namespace, _, name = opts.auth_secret.rpartition("/")
        if not namespace or namespace == ingress.namespace:
            return f"{ingress.namespace}/{name}"
        reason = (
            f'auth-secret "{opts.auth_secret}" is in another namespace, which ingress-nginx '
            "refuses (allow-cross-namespace-resources)"
        )
    problems.append(
        Problem("Ingress", ingress.ref, SECRET_INVALID, f"{reason}; its routes answer 503")
    )
    return ""


def _with_auth(options: RouteOptions, step: PolicyStep) -> RouteOptions:
    """`step` (basic auth) after the redirects, the CORS preflight answer, the rate limits and
    the client-address checks, as nginx runs its rewrite phase (redirects, `return 204` of a
    preflight), its preaccess phase (limit_req, limit_conn) and its access module before
    auth_basic (a denied address gets 403, not a 401 challenge)."""
    policy = options.policy
    at = 0
    while at < len(policy) and isinstance(
        policy[at], HTTPSRedirect | Redirect | Refuse | SourceRanges | AppRoot | Cors | RateLimit
    ):
        at += 1
    return dataclasses.replace(options, policy=(*policy[:at], step, *policy[at:]))


def _www_redirect_hosts(entries: list[RuleEntry]) -> tuple[str, ...]:
    """The hosts a from-to-www redirect applies to: those with a path (ingress-nginx marks a
    server when it adds a location), named (no other name for host-less rules) and not
    wildcards (nginx has no `www.*.example.com`)."""
    hosts = dict.fromkeys(e.host for e in entries)
    return tuple(h for h in hosts if h and not h.startswith("*."))


def _error_pages(
    ingress: Ingress, opts: IngressOptions
) -> tuple[BackendRef | None, tuple[int, ...], ErrorPages | None]:
    """(the default-backend annotation's backend, the codes left for the global default
    backend, the ErrorPages step of the Ingress's routes) from its annotations.

    ingress-nginx: `default-backend` answers for Services without endpoints and serves the
    `custom-http-errors` codes; without it the codes go to the global default backend;
    `disable-proxy-intercept-errors` keeps the pods' answers (the fallback stays)."""
    codes = () if opts.disable_proxy_intercept_errors else opts.custom_http_errors or ()
    name = opts.default_backend
    if name is None:
        return None, codes, None
    namespace = ingress.namespace
    ref = BackendRef(backend_key(namespace, name, FIRST_PORT), namespace, name, FIRST_PORT)
    return ref, (), ErrorPages(ref.key, f"{namespace}/{name}", codes, fallback=True)


# ---- all Ingresses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assembly:
    routes: RouteTable
    certificates: tuple[TLSCertificate, ...]
    problems: tuple[Problem, ...]
    uses: Mapping[str, BackendUse]  # backend key -> the surviving rules using it
    # (host, path, match) of each routed path rule -> its path as written in the Ingress.
    written_paths: Mapping[tuple[str, str, MatchKind], str] = dataclasses.field(
        default_factory=dict
    )
    passthrough: tuple[PassthroughHost, ...] = ()  # sorted by host


def _rule_order(rule: PathRule) -> tuple[int, int, str]:
    # Longest path first; Exact before Prefix at equal length; then by path for determinism.
    return (-len(rule.path), 0 if rule.match == "exact" else 1, rule.path)


def _without_https_redirect(rule: PathRule) -> PathRule:
    """The rule without its HTTPS redirect step (for a server-alias its host's certificate does
    not cover: ingress-nginx serves such a name without TLS, so without the redirect)."""
    policy = tuple(s for s in rule.options.policy if not isinstance(s, HTTPSRedirect))
    return dataclasses.replace(rule, options=dataclasses.replace(rule.options, policy=policy))


def _regex_rules(
    host: str,
    slot: dict[tuple[str, MatchKind], PathRule],
    written: dict[tuple[str, str, MatchKind], str],
    regex_rules: set[tuple[str, str, MatchKind]],
    problems: list[Problem],
    *,
    origin: dict[tuple[str, str], tuple[str, str, MatchKind]],
) -> tuple[PathRule, ...]:
    """The rules of a host where some path has use-regex or rewrite-target, as ingress-nginx
    makes them: every path, whatever its Ingress or pathType, becomes `~* "^<path as written>"`
    (so an Exact path matches as a prefix, and a Prefix path "/foo" matches "/foobar" too), tried
    in its order: longest path first, then by path in reverse byte order, then by precedence
    (its two stable sorts of the server's locations). A path of another Ingress that RE2 cannot
    take is an InvalidPath problem on that Ingress and its rule is dropped."""
    rules: list[PathRule] = []
    for (path, match), rule in slot.items():
        pattern = written.get((host, path, match)) or "/"
        if (host, path, match) not in regex_rules:
            err = regex_path_error(pattern)
            if err is not None:
                problems.append(
                    Problem(
                        "Ingress",
                        rule.ingress,
                        INVALID_PATH,
                        f"path {pattern} on host {host or '<any>'} is matched as a regular "
                        "expression (a path of this host has use-regex or rewrite-target) but "
                        f"{err}; rule dropped",
                    )
                )
                continue
        written[(host, pattern, "regex")] = written.get((host, path, match), pattern)
        origin.setdefault((host, pattern), (host, path, match))
        rules.append(dataclasses.replace(rule, path=pattern, match="regex"))
    rules.sort(key=lambda r: r.path, reverse=True)
    rules.sort(key=lambda r: len(r.path), reverse=True)
    return tuple(rules)


def _apply_app_roots(
    ordered: dict[str, tuple[PathRule, ...]],
    fallback: dict[str, PathRule],
    app_roots: dict[str, str],
) -> None:
    """ingress-nginx writes `app-root` as a server-level `if ($uri = /) { return 302 ...; }`
    before the locations: it applies to the whole host, whichever rule "/" reaches. So every
    rule of a host where an Ingress with app-root has a rule gets the AppRoot step first (the
    first such Ingress in the host's rule order wins, as the first `if` does)."""

    def with_step(rule: PathRule, step: AppRoot) -> PathRule:
        options = dataclasses.replace(rule.options, policy=(step, *rule.options.policy))
        return dataclasses.replace(rule, options=options)

    for host, rules in ordered.items():
        root = next((app_roots[r.ingress] for r in rules if r.ingress in app_roots), None)
        if root is None:
            continue
        step = AppRoot(root)
        ordered[host] = tuple(with_step(r, step) for r in rules)
        if host in fallback:
            fallback[host] = with_step(fallback[host], step)


def _use(uses: dict[str, BackendUse], entry: RuleEntry, ref: str) -> None:
    b = entry.backend
    use = uses.get(b.key)
    if use is None:
        use = uses[b.key] = BackendUse(
            b.key, b.namespace, b.service, b.port, cluster_ip=b.cluster_ip
        )
    use.users.append((ref, entry.text))


def _use_backend(uses: dict[str, BackendUse], b: BackendRef, ref: str, text: str) -> None:
    use = uses.get(b.key)
    if use is None:
        use = uses[b.key] = BackendUse(b.key, b.namespace, b.service, b.port)
    use.users.append((ref, text))


def _with_global_errors(part: IngressPart, catch_all: PathRule) -> IngressPart:
    """The part with an ErrorPages step for its custom-http-errors, served by the global
    default backend (`catch_all`, already among the backends: its own rule uses it)."""
    assert catch_all.service is not None
    step = ErrorPages(catch_all.backend, catch_all.service, part.global_error_codes)

    return _map_options(part, lambda o: dataclasses.replace(o, policy=(*o.policy, step)))


def _map_options(part: IngressPart, change: Callable[[RouteOptions], RouteOptions]) -> IngressPart:
    """The part with `change` applied to the options of every rule (once per distinct options:
    the rules of one Ingress share a few)."""
    done: dict[int, tuple[RouteOptions, RouteOptions]] = {}

    def options(old: RouteOptions) -> RouteOptions:
        found = done.get(id(old))
        if found is None:
            found = done[id(old)] = (old, change(old))  # the old one kept: ids stay unique
        return found[1]

    def rule(r: PathRule | None) -> PathRule | None:
        return None if r is None else dataclasses.replace(r, options=options(r.options))

    def entry(e: RuleEntry) -> RuleEntry:
        new = rule(e.rule)
        assert new is not None
        return dataclasses.replace(e, rule=new, unredirected=rule(e.unredirected))

    return dataclasses.replace(
        part,
        entries=tuple(entry(e) for e in part.entries),
        fallbacks=tuple(entry(e) for e in part.fallbacks),
        default=None if part.default is None else entry(part.default),
    )


def _with_ca(part: IngressPart, pem: str) -> IngressPart:
    """The part with `upstream_ca_pem` set on every rule ("" when the CA is unusable)."""
    return _map_options(part, lambda o: dataclasses.replace(o, upstream_ca_pem=pem))


def _client_auth_steps(
    parts: list[IngressPart],
    ca_bundle: Callable[[str], tuple[str | None, str | None]] | None,
    problems: list[Problem],
) -> dict[str, PolicyStep]:
    """The client-certificate step of each host: the first Ingress (in precedence order) with
    auth-tls-secret for a host gives it, as ingress-nginx sets it on the host's server block;
    a Secret that cannot be used gives a 403 refusal instead (never an unverified host)."""
    by_host: dict[str, PolicyStep] = {}
    for part in parts:
        auth = part.client_auth
        if auth is None or not part.hosts:
            continue
        namespace = auth.secret.partition("/")[0]
        pem: str | None = None
        reason: str | None
        if namespace != part.namespace:
            # ingress-nginx's allow-cross-namespace-resources is false by default.
            reason = "a Secret in another namespace is not allowed"
        elif ca_bundle is None:
            reason = "no Secret can be read"
        else:
            pem, reason = ca_bundle(auth.secret)
        step: PolicyStep
        if pem is None:
            problems.append(
                Problem(
                    "Ingress",
                    part.ref,
                    SECRET_INVALID,
                    f'auth-tls-secret "{auth.secret}": {reason}; its hosts answer 403',
                )
            )
            step = CLIENT_AUTH_UNUSABLE
        else:
            step = ClientCertificate(
                ca_pem=pem,
                verify=auth.verify,
                depth=auth.depth,
                error_page=auth.error_page,
                pass_certificate=auth.pass_certificate,
                match_cn=auth.match_cn,
            )
        for host in part.hosts:
            by_host.setdefault(host, step)
    return by_host


def _with_host_steps(part: IngressPart, steps: Mapping[str, PolicyStep]) -> IngressPart:
    """The part with each host's client-certificate step first (after the redirects) in the
    policy of its rules on that host."""
    if not any(e.host in steps for e in (*part.entries, *part.fallbacks)):
        return part

    def rule(r: PathRule | None, host: str) -> PathRule | None:
        if r is None:
            return None
        options = _with_step(r.options, steps[host], first=True)
        return dataclasses.replace(r, options=options)

    def entry(e: RuleEntry) -> RuleEntry:
        if e.host not in steps:
            return e
        new = rule(e.rule, e.host)
        assert new is not None
        return dataclasses.replace(e, rule=new, unredirected=rule(e.unredirected, e.host))

    return dataclasses.replace(
        part,
        entries=tuple(entry(e) for e in part.entries),
        fallbacks=tuple(entry(e) for e in part.fallbacks),
    )


def _with_step(options: RouteOptions, step: PolicyStep, *, first: bool) -> RouteOptions:
    """`step` added last, or `first`: first after the redirects (which answer before any
    other step, as ingress-nginx redirects before it denies)."""
    policy = options.policy
    if not first:
        return dataclasses.replace(options, policy=(*policy, step))
    if isinstance(step, Refuse):
        # A route refusing every request answers no CORS preflight either (see compile).
        policy = tuple(s for s in policy if not isinstance(s, Cors))
    at = 0
    while at < len(policy) and isinstance(policy[at], HTTPSRedirect | Redirect):
        at += 1
    return dataclasses.replace(options, policy=(*policy[:at], step, *policy[at:]))


def _with_auth_headers(
    options: RouteOptions,
    found: tuple[tuple[str, ...], tuple[str, ...], tuple[Problem, ...]] | None,
) -> RouteOptions:
    """The auth-proxy-set-headers fields in the route's ExternalAuth step (the step denied,
    503, when its ConfigMap is missing)."""
    policy: list[PolicyStep] = []
    for step in options.policy:
        if isinstance(step, ExternalAuth):
            if found is None:
                policy.append(INVALID_EXTERNAL_AUTH)
                continue
            policy.append(dataclasses.replace(step, set_names=found[0], set_values=found[1]))
            continue
        policy.append(step)
    return dataclasses.replace(options, policy=tuple(policy))


def _with_request_headers(
    names: tuple[str, ...], values: tuple[str, ...]
) -> Callable[[RouteOptions], RouteOptions]:
    """The proxy-set-headers fields merged into a route's ShapeRequest (or one added)."""

    def change(options: RouteOptions) -> RouteOptions:
        own = options.step(ShapeRequest)
        if own is None:
            return _with_step(options, ShapeRequest(names=names, values=values), first=False)
        merged = dataclasses.replace(own, names=names, values=values)
        return dataclasses.replace(
            options, policy=tuple(merged if s is own else s for s in options.policy)
        )

    return change


def _www_redirects(
    parts: list[IngressPart],
    by_host: Mapping[str, Mapping[tuple[str, MatchKind], PathRule]],
    *,
    fallback: Mapping[str, PathRule],
    host_cert: Mapping[str, str],
    wild_cert: Mapping[str, str],
    certificates: Mapping[str, TLSCertificate],
) -> list[VirtualHost]:
    """The virtual hosts of from-to-www-redirect, as ingress-nginx's BuildRedirects makes its
    redirect servers: for each host an Ingress asks it for, its other name (`www.` added, or
    removed) answers every request with a redirect to the host (HostRedirect: 308, scheme and
    target kept), unless that name is a rule host itself (of any Ingress: it is served as
    such). Over HTTPS it presents the host's certificate when that covers the other name, else
    the default certificate, as ingress-nginx does. Its one rule names a backend of the host
    only because a rule needs one: the step answers before any pod is chosen."""
    aliases: dict[str, VirtualHost] = {}
    for part in parts:
        for host in part.www_redirect_hosts:
            other = host.removeprefix("www.") if host.startswith("www.") else "www." + host
            if other in by_host or other in aliases or host_error(other) is not None:
                continue
            rules = sorted(by_host.get(host, {}).values(), key=_rule_order)
            model = rules[0] if rules else fallback.get(host)
            if model is None:
                continue
            name = host_cert.get(host) or wild_cert.get(host)
            covered = name is not None and covers(certificates[name].hosts, other)
            rule = dataclasses.replace(
                model,
                path="/",
                match="prefix",
                ingress=part.ref,
                path_type=None,
                options=RouteOptions(policy=(HostRedirect(host),)),
            )
            aliases[other] = VirtualHost(other, (rule,), None, name if covered else None)
    return list(aliases.values())


def _with_canary(rule: PathRule, step: Canary) -> PathRule:
    options = dataclasses.replace(rule.options, policy=(*rule.options.policy, step))
    return dataclasses.replace(rule, options=options)


def _pair_canaries(
    canaries: list[IngressPart],
    *,
    by_host: dict[str, dict[tuple[str, MatchKind], PathRule]],
    written: Mapping[tuple[str, str, MatchKind], str],
    default: PathRule | None,
    uses: dict[str, BackendUse],
    problems: list[Problem],
) -> PathRule | None:
    """Pair each canary Ingress's rules with the main rules, as ingress-nginx's
    mergeAlternativeBackends does: a canary path goes with the main (non-canary) Ingress's
    rule of the same host, path (as written) and pathType, which then carries a Canary step
    naming the canary's backend; its defaultBackend goes with the global default backend. The
    first canary (in precedence order) of a rule wins (ingress-nginx uses only its first
    alternative backend); a canary naming the main rule's own backend is ignored. A canary rule
    without a main rule is not served at all (ingress-nginx answers 404 there): a
    CanaryUnpaired problem. Returns the global default rule, with its canary if any."""

    def unpaired(part: IngressPart, entry: RuleEntry, why: str) -> None:
        where = f"on host {entry.host}" if entry.host else "on any host"
        problems.append(
            Problem(
                "Ingress",
                part.ref,
                CANARY_UNPAIRED,
                f"canary {entry.text} {where} is not served: {why}",
            )
        )

    def paired(part: IngressPart, entry: RuleEntry, main: PathRule) -> PathRule | None:
        rules = part.canary
        assert rules is not None
        own = main.options.step(Canary)
        if own is not None:
            unpaired(part, entry, f"the main rule already has the canary of Ingress {own.ingress}")
            return None
        if main.backend == entry.rule.backend:
            unpaired(part, entry, f"the main rule of Ingress {main.ingress} uses that backend")
            return None
        backend = entry.backend
        step = Canary(
            backend.key,
            f"{backend.namespace}/{backend.service}",
            part.ref,
            str(backend.port),
            rules.header,
            rules.header_value,
            rules.header_pattern,
            rules.header_invalid,
            rules.cookie,
            rules.weight,
            rules.weight_total,
            entry.rule.options.balancer,  # the canary Ingress's load-balance (or the default)
            affinity_behavior=rules.affinity_behavior,
            hash_by=rules.hash_by.expression if rules.hash_by is not None else "",
            hash_by_subset=rules.hash_by is not None and rules.hash_by.subset,
            hash_by_subset_size=rules.hash_by.subset_size if rules.hash_by is not None else 3,
        )
        _use(uses, entry, part.ref)
        return _with_canary(main, step)

    for part in canaries:
        for entry in part.entries:
            rule = entry.rule
            key = (rule.path, rule.match)
            slot = by_host.get(entry.host)
            main = None if slot is None else slot.get(key)
            if (
                main is None
                or main.path_type != rule.path_type
                or written.get((entry.host, rule.path, rule.match)) != entry.written_path
            ):
                unpaired(part, entry, "no main Ingress has a rule with its host, path and pathType")
                continue
            new = paired(part, entry, main)
            if new is None or slot is None:
                continue
            slot[key] = new
        for entry in (*part.fallbacks, *((part.default,) if part.default is not None else ())):
            if default is None:
                unpaired(part, entry, "there is no global default backend to pair with")
                continue
            new = paired(part, entry, default)
            if new is not None:
                default = new
    return default


def assemble(
    parts: Iterable[IngressPart],
    certificate: Callable[[str, str], LoadedCertificate | str],
    now: datetime,
    ca_bundle: Callable[[str], tuple[str | None, str | None]] | None = None,
    *,
    response_headers: Callable[[str], ResponseHeaders | str | None] | None = None,
    request_headers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
    auth_headers: Callable[
        [str], tuple[tuple[str, ...], tuple[str, ...], tuple[Problem, ...]] | None
    ]
    | None = None,
    basic_auth: Callable[[str, str, str], tuple[BasicAuth | None, str | None]] | None = None,
) -> Assembly:
    """Merge parts, given in precedence order, into routes; `certificate(ns, name)` loads TLS.

    `ca_bundle(ref)` gives (PEM, None) or (None, reason) for a `proxy-ssl-secret`; a part whose
    CA cannot be loaded gets an empty CA, which the proxy refuses (503, fail closed) rather
    than talk to its pods unverified. `response_headers(ref)` gives the step of a
    `custom-headers` ConfigMap, or why it cannot be served (its routes then answer 503, as
    ingress-nginx denies them); `request_headers` are the (names, values) every route sends its
    pods (the ingress-nginx ConfigMap's proxy-set-headers). `auth_headers(ref)` gives the
    (names, values, problems) of an `auth-proxy-set-headers` ConfigMap, None when it does not
    exist (the Ingress's routes then answer 503: its auth requests cannot be sent as meant).

    `server-alias`, as ingress-nginx: the first Ingress (in precedence order) with aliases for
    a host gives that host its aliases; an alias that is a rule host, or already another
    host's alias, is ignored (an `AliasConflict` problem). An alias serves every rule of its
    host, whichever Ingress it comes from, with the host's certificate when that certificate
    covers the alias, and otherwise without one (and so without the TLS hosts' HTTPS redirect:
    ingress-nginx redirects only hosts with a certificate).
    """
    problems: list[Problem] = []
    uses: dict[str, BackendUse] = {}
    by_host: dict[str, dict[tuple[str, MatchKind], PathRule]] = {}
    written: dict[tuple[str, str, MatchKind], str] = {}
    fallback: dict[str, PathRule] = {}
    host_cert: dict[str, str] = {}
    wild_cert: dict[str, str] = {}
    certificates: dict[str, TLSCertificate] = {}
    default: PathRule | None = None
    regex_hosts: set[str] = set()
    # (host, path, match) of each routed rule -> whether its own Ingress made it a regex.
    regex_rules: set[tuple[str, str, MatchKind]] = set()
    app_roots: dict[str, str] = {}  # Ingress ref -> its app-root
    parts = list(parts)
    # The global default backend (the first Ingress with only a defaultBackend) serves the
    # custom-http-errors of the Ingresses without a default-backend annotation; without one,
    # their pods' answers are relayed (ingress-nginx would answer 404 from its own server).
    catch_all = next((p.default for p in parts if p.default is not None), None)
    if catch_all is not None:
        for i, part in enumerate(parts):
            if part.global_error_codes:
                parts[i] = _with_global_errors(part, catch_all.rule)
    for i, part in enumerate(parts):
        if part.ca_secret is None or ca_bundle is None:
            continue
        pem, reason = ca_bundle(part.ca_secret)
        if pem is None:
            problems.append(
                Problem(
                    "Ingress",
                    part.ref,
                    SECRET_INVALID,
                    f'proxy-ssl-secret "{part.ca_secret}": {reason}; its backends answer 503',
                )
            )
        parts[i] = _with_ca(part, pem or "")
    for i, part in enumerate(parts):
        if part.custom_headers is None or response_headers is None:
            continue
        step = response_headers(part.custom_headers)
        if step is None:
            continue  # an empty ConfigMap: nothing to add
        if isinstance(step, str):
            problems.append(
                Problem(
                    "Ingress",
                    part.ref,
                    CUSTOM_HEADERS_INVALID,
                    f'custom-headers "{part.custom_headers}": {step}; its routes answer 503',
                )
            )
            parts[i] = _map_options(
                part, functools.partial(_with_step, step=INVALID_CUSTOM_HEADERS, first=True)
            )
        else:
            parts[i] = _map_options(part, functools.partial(_with_step, step=step, first=False))
    for i, part in enumerate(parts):
        if part.auth_proxy_set_headers is None or auth_headers is None:
            continue
        found = auth_headers(part.auth_proxy_set_headers)
        if found is None:
            problems.append(
                Problem(
                    "Ingress",
                    part.ref,
                    CONFIGMAP_NOT_FOUND,
                    f'auth-proxy-set-headers "{part.auth_proxy_set_headers}": the ConfigMap '
                    "does not exist; its routes answer 503",
                )
            )
        else:
            problems.extend(found[2])
        parts[i] = _map_options(part, functools.partial(_with_auth_headers, found=found))
    for i, part in enumerate(parts):
        if part.basic_auth is None:
            continue
        auth, reason = (None, "not read") if basic_auth is None else basic_auth(*part.basic_auth)
        if reason is not None:
            locked = "; its routes answer 503" if auth is None else ""
            message = f"auth-secret: {reason}{locked}"
            problems.append(Problem("Ingress", part.ref, SECRET_INVALID, message))
        auth_step: PolicyStep = AUTH_SECRET_UNAVAILABLE if auth is None else auth
        parts[i] = _map_options(part, functools.partial(_with_auth, step=auth_step))
    if request_headers[0]:
        change = _with_request_headers(*request_headers)
        parts = [_map_options(part, change) for part in parts]
    client_auth = _client_auth_steps(parts, ca_bundle, problems)
    if client_auth:
        parts = [_with_host_steps(part, client_auth) for part in parts]

    unredirected: dict[tuple[str, str, MatchKind], PathRule] = {}
    fallback_unredirected: dict[str, PathRule] = {}
    canaries: list[IngressPart] = []
    for part in parts:
        ref = part.ref
        problems.extend(part.problems)
        if part.canary is not None:
            canaries.append(part)
            continue
        error_backend = part.error_backend
        if error_backend is not None and (part.entries or part.fallbacks or part.default):
            _use_backend(uses, error_backend, ref, f"(default-backend {error_backend.service})")
        for host in part.hosts:
            if host not in by_host:
                by_host[host] = {}
        for entry in part.entries:
            slot = by_host[entry.host]
            rule = entry.rule
            key = (rule.path, rule.match)
            prev = slot.get(key)
            if prev is None:
                slot[key] = rule
                if entry.written_path is not None:
                    written[(entry.host, rule.path, rule.match)] = entry.written_path
                if entry.unredirected is not None:
                    unredirected[(entry.host, rule.path, rule.match)] = entry.unredirected
                if entry.regex:
                    regex_hosts.add(entry.host)
                    regex_rules.add((entry.host, rule.path, rule.match))
                _use(uses, entry, ref)
                continue
            owner = (
                "an earlier path of this Ingress"
                if prev.ingress == ref
                else f"Ingress {prev.ingress}, which is older or sorts first"
            )
            problems.append(
                Problem(
                    "Ingress",
                    ref,
                    PATH_CONFLICT,
                    f"{rule.match} path {rule.path} on host {entry.host or '<any>'} is already "
                    f"claimed by {owner} {entry.text}",
                )
            )
        if part.app_root is not None:
            app_roots[ref] = part.app_root
        for entry in part.fallbacks:
            prev = fallback.get(entry.host)
            if prev is None:
                fallback[entry.host] = entry.rule
                if entry.unredirected is not None:
                    fallback_unredirected[entry.host] = entry.unredirected
                _use(uses, entry, ref)
            elif prev.backend != entry.rule.backend:
                problems.append(
                    Problem(
                        "Ingress",
                        ref,
                        DEFAULT_BACKEND_CONFLICT,
                        f"host {entry.host or '<any>'} already falls back to {prev.backend} "
                        f"(defaultBackend of Ingress {prev.ingress}); {entry.rule.backend} ignored",
                    )
                )
        if part.default is not None:
            entry = part.default
            if default is None:
                default = entry.rule
                _use(uses, entry, ref)
            elif default.backend != entry.rule.backend:
                problems.append(
                    Problem(
                        "Ingress",
                        ref,
                        DEFAULT_BACKEND_CONFLICT,
                        f"the global default backend is already {default.backend} (Ingress "
                        f"{default.ingress}); {entry.rule.backend} ignored",
                    )
                )

    if canaries:
        default = _pair_canaries(
            canaries,
            by_host=by_host,
            written=written,
            default=default,
            uses=uses,
            problems=problems,
        )

    # TLS after routes so a certificate is attached only to hosts that exist.
    for part in parts:
        for tls in part.tls:
            if not tls.secret:
                continue  # hosts listed for redirects only; the proxy's default certificate
            loaded = certificate(part.namespace, tls.secret)
            listed = f" (hosts: {', '.join(tls.hosts)})" if tls.hosts else ""
            reason = loaded if isinstance(loaded, str) else check_validity(loaded, now)
            if reason is not None or isinstance(loaded, str):
                problems.append(Problem("Ingress", part.ref, SECRET_INVALID, f"{reason}{listed}"))
                continue
            cert = loaded.certificate
            used = not tls.hosts
            for host in tls.hosts:
                if not covers(cert.hosts, host):
                    problems.append(
                        Problem(
                            "Ingress",
                            part.ref,
                            SECRET_INVALID,
                            f'secret "{cert.name}": certificate does not cover host "{host}"',
                        )
                    )
                    continue
                used = True
                if host in by_host and host not in host_cert:
                    host_cert[host] = cert.name
                if host.startswith("*."):
                    # A wildcard tls host serves the rule hosts it covers (one label), unless
                    # an exact tls entry names them (exact wins whatever the order).
                    for rule_host in by_host:
                        if (
                            rule_host
                            and not rule_host.startswith("*.")
                            and rule_host.partition(".")[2] == host[2:]
                            and rule_host not in wild_cert
                        ):
                            wild_cert[rule_host] = cert.name
            if used:
                certificates[cert.name] = cert

    ordered: dict[str, tuple[PathRule, ...]] = {}
    # (host, regex path) -> the (host, path, match) key of the rule it was made from.
    regex_origin: dict[tuple[str, str], tuple[str, str, MatchKind]] = {}
    for host, slot in by_host.items():
        if host in regex_hosts:
            ordered[host] = _regex_rules(
                host, slot, written, regex_rules, problems, origin=regex_origin
            )
        else:
            ordered[host] = tuple(sorted(slot.values(), key=_rule_order))
    if app_roots:
        _apply_app_roots(ordered, fallback, app_roots)
    vhosts = [
        VirtualHost(
            host=host,
            rules=ordered[host],
            fallback=fallback.get(host),
            tls_certificate=host_cert.get(host) or wild_cert.get(host),
        )
        for host in sorted(by_host)
    ]
    aliases = _aliases(parts, by_host, problems)
    for alias, host in aliases.items():
        name = host_cert.get(host) or wild_cert.get(host)
        served = certificates.get(name) if name is not None else None
        covered = served is not None and covers(served.hosts, alias)
        # Not covered: the rules lose the HTTPS redirect their host's TLS gave them (not a
        # forced one: `unredirected` has those rules whose redirect can be taken back), and keep
        # everything else they became since (a regular expression, the app-root step).
        rules = [
            rule
            if covered
            or unredirected.get(regex_origin.get((host, rule.path), (host, rule.path, rule.match)))
            is None
            else _without_https_redirect(rule)
            for rule in ordered[host]
        ]
        host_fallback = fallback.get(host)
        if host_fallback is not None and not covered and host in fallback_unredirected:
            host_fallback = _without_https_redirect(host_fallback)
        vhosts.append(
            VirtualHost(
                host=alias,
                rules=tuple(rules),  # the host's order (regular expressions: as written)
                fallback=host_fallback,
                tls_certificate=name if covered else None,
            )
        )
        for rule in rules:
            path = written.get((host, rule.path, rule.match))
            if path is not None:
                written[(alias, rule.path, rule.match)] = path
    # from-to-www-redirect names that are no rule host nor alias (an alias is served).
    redirects = _www_redirects(
        parts,
        by_host,
        fallback=fallback,
        host_cert=host_cert,
        wild_cert=wild_cert,
        certificates=certificates,
    )
    vhosts.extend(r for r in redirects if r.host not in aliases)
    vhosts.sort(key=lambda v: v.host)
    passthrough = _passthrough_hosts(parts, by_host, fallback, problems)
    return Assembly(
        routes=RouteTable(virtual_hosts=tuple(vhosts), default=default),
        certificates=tuple(certificates[k] for k in sorted(certificates)),
        problems=tuple(problems),
        uses=uses,
        written_paths=written,
        passthrough=passthrough,
    )


def _passthrough_hosts(
    parts: list[IngressPart],
    by_host: Mapping[str, Mapping[tuple[str, MatchKind], PathRule]],
    fallback: Mapping[str, PathRule],
    problems: list[Problem],
) -> tuple[PassthroughHost, ...]:
    """The passthrough hosts, as ingress-nginx makes them: a host is passthrough when any
    Ingress with a rule for it has the annotation; its connections go to the backend of the
    host's "/" path (Prefix or ImplementationSpecific, whichever Ingress owns it), else of the
    defaultBackend it falls back to; the access rules are that rule's."""
    hosts: dict[str, PassthroughHost] = {}
    for part in parts:
        if not part.passthrough:
            continue
        for host in part.hosts:
            if host in hosts:
                continue
            if not host or host.startswith("*."):
                what = "rules without a host" if not host else f"wildcard host {host}"
                problems.append(
                    Problem(
                        "Ingress",
                        part.ref,
                        PASSTHROUGH_NOT_APPLIED,
                        f"ssl-passthrough does not apply to {what}: a server name is matched "
                        "exactly, as ingress-nginx does; Portico terminates TLS for it",
                    )
                )
                continue
            rule = by_host.get(host, {}).get(("/", "prefix")) or fallback.get(host)
            if rule is None:
                problems.append(
                    Problem(
                        "Ingress",
                        part.ref,
                        PASSTHROUGH_NOT_APPLIED,
                        f'ssl-passthrough host {host} has no "/" path or defaultBackend to send '
                        "its connections to: they are closed",
                    )
                )
                hosts[host] = PassthroughHost(host, "", part.ref)
                continue
            refuse = ""
            allow: tuple[str, ...] = ()
            deny: tuple[str, ...] = ()
            for step in rule.options.policy:
                if isinstance(step, Refuse) and not refuse:
                    refuse = step.reason
                elif isinstance(step, SourceRanges):
                    allow, deny = step.allow, step.deny
            hosts[host] = PassthroughHost(
                host, rule.backend, rule.ingress, rule.service, refuse, allow, deny
            )
    return tuple(hosts[h] for h in sorted(hosts))


def _aliases(
    parts: list[IngressPart],
    by_host: Mapping[str, object],
    problems: list[Problem],
) -> dict[str, str]:
    """alias -> the rule host it serves (see `assemble`)."""
    owners: dict[str, str] = {}  # host -> the Ingress that gave it its aliases
    alias_of: dict[str, str] = {}
    for part in parts:
        if not part.aliases:
            continue
        for host in part.hosts:
            if not host:
                continue  # host-less rules already answer every name
            owner = owners.get(host)
            if owner is not None:
                problems.append(
                    Problem(
                        "Ingress",
                        part.ref,
                        ALIAS_CONFLICT,
                        f"host {host} already has the server-alias names of Ingress {owner}; "
                        "this Ingress's are ignored for it",
                    )
                )
                continue
            owners[host] = part.ref
            for alias in part.aliases:
                if alias == host:
                    continue
                if alias in by_host:
                    taken = "a host of an Ingress rule"
                elif alias in alias_of:
                    taken = f"already an alias of host {alias_of[alias]}"
                else:
                    alias_of[alias] = host
                    continue
                problems.append(
                    Problem(
                        "Ingress",
                        part.ref,
                        ALIAS_CONFLICT,
                        f"server-alias {alias} of host {host} is {taken}; ignored",
                    )
                )
    return alias_of
