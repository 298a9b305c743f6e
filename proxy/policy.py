"""A route's policy as it runs: its steps in order, per listener, built once per snapshot.

`Policies.for_steps(route_steps)` turns a route's step descriptions (`RouteOptions.policy`,
proxy/config.py) into two `Policy` objects, one for requests on the plain-HTTP listener and one
for HTTPS, each holding:

- `request`: the request steps, in order; routing runs them when the head is routed and the
  first that answers ends the exchange (proxy/routing.py);
- `added` / `replaced`: the response fields of the steps whose fields are fixed, rendered once,
  and the pod's fields they replace; `response`: the steps computing theirs per response; the
  exchange hands these to the client side with every response head (proxy/exchange.py);
- `max_body`: the body limit the exchange checks as the request body is read;
- `dropped`: the pod's ordinary response fields a step replaces (custom-headers), removed from
  its head before the client side renders it; `upstream_close`: the request told the pod
  `Connection: close`, so its connection is not reused (connection-proxy-header).
- `rewrite`: the rewrites of the pod's Location / Refresh / Set-Cookie fields
  (proxy/fieldrewrite.py), None for a route without them.
- `limiter`: the rate-limit step when it counts requests in progress (limit-connections), so
  that routing hands the exchange what to give back when it ends; None otherwise.

The worker's settings add proxy-wide steps (`--hsts`: HSTS; `--max-body-bytes`: a body limit)
to every route whose own list has no step of that kind; requests no route matched get the
proxy-wide response steps only (a 404 over HTTPS still carries HSTS). Routes with the same
steps share their Policy objects, so 20,000 routes with one annotation set build two.
"""

from __future__ import annotations

from typing import Final

from proxy.basicauth import BasicAuthStep
from proxy.clientauth import VerifyClientCertificate
from proxy.config import (
    HSTS,
    AppRoot,
    BasicAuth,
    BodyLimit,
    ClientCertificate,
    Cors,
    ExternalAuth,
    HostRedirect,
    HTTPSRedirect,
    PolicyStep,
    RateLimit,
    Redirect,
    Refuse,
    ResponseHeaders,
    Rewrite,
    RewriteCookies,
    RewriteRedirects,
    SatisfyAny,
    ShapeRequest,
    SourceRanges,
)
from proxy.cors import cors_steps
from proxy.extauth import any_of, external_auth_step
from proxy.fieldrewrite import FieldRewrites, field_rewrites
from proxy.headers import HOP_BY_HOP, RESPONSE_SPECIAL
from proxy.pathrewrite import RedirectAppRoot, RewritePath
from proxy.ratelimit import LimitRequests, counters
from proxy.redirect import RedirectAll, RedirectToHost, RedirectToHTTPS
from proxy.settings import ProxySettings
from proxy.shaping import ShapeRequestStep, response_headers_step
from proxy.sourceranges import Ranges, source_ranges_step
from proxy.steps import PLAIN, SECURE, LimitBody, RefuseAll, RequestStep, ResponseStep, hsts_step


class Policy:
    """The steps of one route for requests on one listener (see the module docstring)."""

    __slots__ = (
        "added",
        "dropped",
        "limiter",
        "max_body",
        "replaced",
        "request",
        "response",
        "rewrite",
        "upstream_close",
    )

    def __init__(
        self,
        request: tuple[RequestStep, ...] = (),
        response: tuple[ResponseStep, ...] = (),
        max_body: int = 0,
        rewrite: FieldRewrites | None = None,
        upstream_close: bool = False,
        limiter: LimitRequests | None = None,
    ) -> None:
        self.request = request
        self.response = tuple(s for s in response if s.dynamic)
        self.added = b"".join(s.fields for s in response if not s.dynamic)
        replaced: frozenset[bytes] = frozenset()
        dropped: frozenset[bytes] = frozenset()
        for step in response:
            if step.replaces & _NEVER_REPLACED:
                raise ValueError(
                    f"a response step can only replace fields but {sorted(_NEVER_REPLACED)}"
                )
            if step.dynamic:
                # Replaced only on the responses it adds fields to (the exchange drops them).
                if step.replaces & RESPONSE_SPECIAL:
                    raise ValueError("a dynamic response step can only replace ordinary fields")
                continue
            replaced |= step.replaces & RESPONSE_SPECIAL
            dropped |= step.replaces - RESPONSE_SPECIAL
        self.replaced = replaced
        self.dropped = dropped  # ordinary fields: removed by the exchange (see render_response)
        self.max_body = max_body  # 0: unlimited
        self.upstream_close = upstream_close
        self.rewrite = rewrite  # the pod's fields rewritten (Location, Set-Cookie); None: none
        self.limiter = limiter


# The access checks `satisfy any` makes alternatives (nginx's access phase: allow/deny,
# auth_basic, auth_request).
_ACCESS_CHECKS: Final = (SourceRanges, BasicAuth, ExternalAuth)


# The pod's fields no response step may replace: framing and hop-by-hop ones. The other fields
# render_response sees apart are `replaced` there; ordinary ones are `dropped` before it.
_NEVER_REPLACED: Final = HOP_BY_HOP | {b"content-length"}


class Policies:
    """Builds and shares the Policy pairs of one worker's routes (see the module docstring)."""

    __slots__ = ("_built", "auth_timeouts", "defaults", "trusted", "unrouted")

    def __init__(self, settings: ProxySettings) -> None:
        # External auth requests are timed as nginx's auth location: the proxy-wide timeouts.
        self.auth_timeouts = (settings.upstream_connect_timeout, settings.upstream_read_timeout)
        # The trusted proxies, for the source-range steps reading X-Forwarded-For.
        self.trusted = Ranges(settings.trusted_networks())
        defaults: list[PolicyStep] = []
        if settings.max_body_bytes:
            defaults.append(BodyLimit(settings.max_body_bytes))
        if settings.hsts:
            defaults.append(
                HSTS(settings.hsts_max_age, settings.hsts_include_subdomains, preload=False)
            )
        # The proxy-wide steps: added to every route without a step of the same kind.
        self.defaults = tuple(defaults)
        self._built: dict[tuple[PolicyStep, ...], tuple[Policy, Policy]] = {}
        # Requests no route matched (404, malformed): the proxy-wide response steps only.
        self.unrouted = self._build(tuple(s for s in self.defaults if isinstance(s, HSTS)))

    def start(self) -> None:
        """A new snapshot's routes are built next: forget the previous snapshot's sharing
        (its routes keep their policies)."""
        self._built = {}

    def for_steps(self, steps: tuple[PolicyStep, ...]) -> tuple[Policy, Policy]:
        """(plain-HTTP policy, HTTPS policy) of a route with these steps."""
        built = self._built.get(steps)
        if built is None:
            kinds = {type(s) for s in steps}
            merged = steps + tuple(s for s in self.defaults if type(s) not in kinds)
            built = self._built[steps] = self._build(merged)
        return built

    def _access_step(self, spec: SourceRanges | BasicAuth | ExternalAuth) -> RequestStep:
        if isinstance(spec, SourceRanges):
            return source_ranges_step(spec.allow, spec.deny, self.trusted)
        if isinstance(spec, BasicAuth):
            return BasicAuthStep(spec.realm, spec.users, spec.hashes)
        return external_auth_step(
            spec.url,
            spec.method,
            spec.signin,
            spec.signin_redirect_param,
            spec.response_headers,
            spec.request_redirect,
            spec.set_names,
            spec.set_values,
            spec.cache_key,
            spec.cache_statuses,
            spec.cache_seconds,
            spec.always_set_cookie,
            spec.keepalive,
            spec.keepalive_timeout,
            *self.auth_timeouts,
        )

    def _build(self, steps: tuple[PolicyStep, ...]) -> tuple[Policy, Policy]:
        request: list[RequestStep] = []
        response: list[ResponseStep] = []
        max_body = 0
        upstream_close = False
        redirects: RewriteRedirects | None = None
        cookies: RewriteCookies | None = None
        # satisfy any: the access checks become one step, where the first of them was.
        satisfy_any = any(isinstance(s, SatisfyAny) for s in steps)
        access: list[RequestStep] = []
        access_at = -1
        limiter: LimitRequests | None = None
        for spec in steps:
            if satisfy_any and isinstance(spec, _ACCESS_CHECKS):
                if access_at < 0:
                    access_at = len(request)
                    request.append(RefuseAll(500, "SatisfyAny"))  # replaced below
                access.append(self._access_step(spec))
                continue
            if isinstance(spec, HTTPSRedirect):
                request.append(RedirectToHTTPS(spec.status, spec.preserve_trailing_slash))
            elif isinstance(spec, BodyLimit):
                if spec.max_bytes:
                    request.append(LimitBody(spec.max_bytes))
                max_body = spec.max_bytes
            elif isinstance(spec, HSTS):
                response.append(hsts_step(spec.max_age, spec.include_subdomains, spec.preload))
            elif isinstance(spec, Refuse):
                request.append(RefuseAll(spec.status, spec.reason))
            elif isinstance(spec, (SourceRanges, ExternalAuth)):
                request.append(self._access_step(spec))
            elif isinstance(spec, ShapeRequest):
                request.append(
                    ShapeRequestStep(spec.host, spec.names, spec.values, spec.connection)
                )
                upstream_close = upstream_close or spec.connection == "close"
            elif isinstance(spec, ResponseHeaders):
                response.append(response_headers_step(spec.names, spec.values))
            elif isinstance(spec, Redirect):
                request.append(RedirectAll(spec.url, spec.status))
            elif isinstance(spec, HostRedirect):
                # One per listener, each with its scheme: nothing tests the scheme per request.
                request.append(RedirectToHost("http", spec.host, spec.status, PLAIN))
                request.append(RedirectToHost("https", spec.host, spec.status, SECURE))
            elif isinstance(spec, Rewrite):
                request.append(RewritePath(spec.pattern, spec.target, spec.forwarded_prefix))
            elif isinstance(spec, AppRoot):
                request.append(RedirectAppRoot(spec.path))
            elif isinstance(spec, BasicAuth):
                request.append(self._access_step(spec))
            elif isinstance(spec, RewriteRedirects):
                redirects = spec
            elif isinstance(spec, RewriteCookies):
                cookies = spec
            elif isinstance(spec, ClientCertificate):
                # On HTTPS before every other step, as nginx answers a certificate before its
                # rewrite phase; on plain HTTP where the compiler put it (after the HTTPS
                # redirect): there it only sees "no certificate".
                args = (spec.ca_pem, spec.verify, spec.depth, spec.error_page)
                more = (spec.pass_certificate, spec.match_cn)
                request.insert(0, VerifyClientCertificate(*args, *more, schemes=SECURE))
                request.append(VerifyClientCertificate(*args, *more, schemes=PLAIN))
            elif isinstance(spec, Cors):
                preflight, fields = cors_steps(spec)
                request.append(preflight)
                response.append(fields)
            elif isinstance(spec, RateLimit):
                limit = LimitRequests(
                    counters(),
                    spec.zone,
                    spec.rps,
                    spec.rpm,
                    spec.burst_multiplier,
                    spec.connections,
                    spec.allow,
                    spec.status,
                    spec.connection_status,
                    self.trusted,
                )
                request.append(limit)
                if spec.connections:
                    limiter = limit
        if access_at >= 0:
            request[access_at] = access[0] if len(access) == 1 else any_of(tuple(access))
        rewrite = field_rewrites(redirects, cookies)
        return (
            Policy(
                tuple(s for s in request if s.schemes & PLAIN),
                tuple(s for s in response if s.schemes & PLAIN),
                max_body,
                rewrite,
                upstream_close,
                limiter,
            ),
            Policy(
                tuple(s for s in request if s.schemes & SECURE),
                tuple(s for s in response if s.schemes & SECURE),
                max_body,
                rewrite,
                upstream_close,
                limiter,
            ),
        )
