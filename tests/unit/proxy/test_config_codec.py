"""The snapshot JSON codec round-trips every field and rejects what it cannot read."""

from __future__ import annotations

import json

import pytest

from proxy.config import (
    HSTS,
    SCHEMA_VERSION,
    AppRoot,
    Backend,
    BasicAuth,
    BodyLimit,
    Canary,
    ClientCertificate,
    Cors,
    Endpoint,
    EndpointsUpdate,
    ErrorPages,
    ExternalAuth,
    HashBy,
    HostRedirect,
    HTTPSRedirect,
    PassthroughHost,
    PathRule,
    RateLimit,
    Redirect,
    Refuse,
    ResponseHeaders,
    Rewrite,
    RewriteCookies,
    RewriteRedirects,
    RouteOptions,
    RouteTable,
    SatisfyAny,
    ShapeRequest,
    Snapshot,
    SnapshotError,
    SourceRanges,
    StickySessions,
    TLSCertificate,
    VirtualHost,
    apply_endpoints_update,
    decode_endpoints_update,
    decode_snapshot,
    encode_endpoints_update,
    encode_snapshot,
)

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def full_snapshot() -> Snapshot:
    policy = (
        HTTPSRedirect(),
        Refuse(403, "AccessControlNotEnforced"),
        SourceRanges(("10.0.0.0/8",), ("10.1.0.0/16", "2001:db8::/32")),
        BodyLimit(1024),
        HSTS(600, include_subdomains=False, preload=True),
        ShapeRequest("b.internal:8080", ("X-Set", "X-Removed"), ("1", ""), "close"),
        ResponseHeaders(("X-Frame-Options",), ("DENY",)),
        Redirect("https://example.com/moved?from=a&b=c", 307),
        HostRedirect("www.a.example", 301),
        ErrorPages("ns/errors/0", "ns/errors", (404, 503), fallback=True),
        RewriteRedirects("http://pod:8080/", "/app/"),
        RewriteCookies("pod.local", "example.org", "/", "/app/"),
        ClientCertificate(CA_PEM, "optional_no_ca", 2, "https://e.example/err", True, "CN=(a|b)"),
        StickySessions(
            "SERVERID",
            "persistent",
            "/app",
            "example.org",
            "-1",
            "172800",
            "None",
            True,
            True,
            True,
        ),
        HashBy("$host$request_uri", subset=True, subset_size=2),
        Cors(
            ("https://a.test", "https://*.b.test:8443", "null"), "GET, POST", "X-A", "*", True, 60
        ),
        BasicAuth("test auth", ("foo", "bob"), ("$2y$05$HASH-SECRET", "{SHA}xO2et=")),
        RateLimit("ns/ing", 10, 600, 3, 8, ("10.0.0.0/8", "2001:db8::/32"), 429, 503),
        ExternalAuth(
            "https://$host/oauth2/auth",
            method="POST",
            signin="https://$host/oauth2/start?rd=$escaped_request_uri",
            signin_redirect_param="orig",
            response_headers=("X-Auth-Request-User",),
            request_redirect="/landing",
            set_names=("X-Tenant",),
            set_values=("a",),
            cache_key="$remote_user$http_authorization",
            cache_statuses=(200, 401),
            cache_seconds=(300, 60),
            always_set_cookie=True,
            keepalive=10,
            keepalive_requests=100,
            keepalive_timeout=30,
        ),
        SatisfyAny(),
    )
    options = RouteOptions(
        balancer="least_request", read_timeout=5.0, policy=policy, access_log=False
    )
    exact = PathRule("/a", "exact", "ns/web/80", "ns/ing", "ns/web", 80, "Exact", options)
    prefix = PathRule("/", "prefix", "ns/web/http", "ns/ing", "ns/web", "http", "Prefix")
    fallback = PathRule("/", "prefix", "ns/def/80", "ns/ing", "ns/def", 80, None)
    # A use-regex host: regex rules, with the rewrite and app-root steps.
    rewriting = RouteOptions(
        policy=(
            AppRoot("/app"),
            HTTPSRedirect(preserve_trailing_slash=True),
            Rewrite("/api(/|$)(.*)", "/$2", "/api"),
        )
    )
    regex = PathRule(
        "/api(/|$)(.*)",
        "regex",
        "ns/web/80",
        "ns/re",
        "ns/web",
        80,
        "ImplementationSpecific",
        rewriting,
    )
    routes = RouteTable(
        (
            VirtualHost("a.example", (exact, prefix), fallback, "ns/cert"),
            VirtualHost("re.example", (regex,)),
            VirtualHost("*.example", (prefix,)),
            VirtualHost("", (prefix,)),
        ),
        default=fallback,
    )
    backends = (
        Backend("ns/def/80", (), unavailable="ServiceNotFound"),
        Backend(
            "ns/web/80", (Endpoint("127.0.0.2", 8080, True, "ns/web-1"), Endpoint("::1", 81, False))
        ),
        Backend("ns/web/http", (Endpoint("db.example", 80),), external_name=True),
    )
    cert = TLSCertificate("ns/cert", "CERT", "KEY", ("a.example",), 1.5e9)
    passthrough = (
        PassthroughHost("a.example", "ns/web/80", "ns/ing", "ns/web"),
        PassthroughHost("b.example", "", "ns/other"),  # no backend: connections are closed
        PassthroughHost(
            "c.example",
            "ns/web/http",
            "ns/ing",
            None,
            "AccessControlNotEnforced",
            ("10.0.0.0/8",),
            ("2001:db8::/32",),
        ),
    )
    return Snapshot(
        routes,
        backends,
        (cert,),
        version=7,
        default_certificate="ns/cert",
        passthrough=passthrough,
    )


def test_round_trip() -> None:
    snapshot = full_snapshot()
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


def test_key_never_in_repr() -> None:
    assert "KEY" not in repr(full_snapshot())
    assert "HASH-SECRET" not in repr(full_snapshot())  # basic auth's hashes neither


def test_endpoints_update_round_trip_and_apply() -> None:
    snapshot = full_snapshot()
    update = EndpointsUpdate(
        7, 8, (Backend("ns/web/80", (Endpoint("127.0.0.3", 8080),)),), ("ns/def/80",)
    )
    assert decode_endpoints_update(encode_endpoints_update(update)) == update
    applied = apply_endpoints_update(snapshot, update)
    assert applied.version == 8
    assert applied.routes is snapshot.routes
    assert applied.passthrough == snapshot.passthrough
    assert [b.key for b in applied.backends] == ["ns/web/80", "ns/web/http"]
    with pytest.raises(SnapshotError):
        apply_endpoints_update(applied, update)  # base version no longer matches


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"schema": 99}',
        b'{"schema": 1}',
        encode_snapshot(Snapshot()).replace(
            b'"schema":%d' % SCHEMA_VERSION, b'"schema":%d' % (SCHEMA_VERSION - 1)
        ),
    ],
)
def test_rejects_malformed(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot(data)


def _with_passthrough(entry: object) -> bytes:
    doc = json.loads(encode_snapshot(Snapshot()))
    doc["passthrough"] = [entry]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "entry",
    [
        ["*.example", "ns/web/80", "ns/ing", None, "", [], []],  # wildcards are never matched
        ["", "ns/web/80", "ns/ing", None, "", [], []],
        ["a.example", 80, "ns/ing", None, "", [], []],
        ["a.example", "ns/web/80", "ns/ing", None, "not a reason", [], []],
        ["a.example", "ns/web/80", "ns/ing", None, "", ["10.0.0.1/8"], []],  # not canonical
        ["a.example", "ns/web/80", "ns/ing", None, "", [], [7]],
        ["a.example", "ns/web/80", "ns/ing"],
    ],
)
def test_rejects_a_bad_passthrough_host(entry: object) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot(_with_passthrough(entry))


def _with_step(step: dict[str, object]) -> bytes:
    doc = json.loads(encode_snapshot(full_snapshot()))
    doc["options"][1]["policy"] = [step]
    return json.dumps(doc).encode()


CORS: dict[str, object] = {
    "step": "cors",
    "origins": ["*"],
    "methods": "GET",
    "headers": "",
    "expose_headers": "",
    "credentials": False,
    "max_age": 5,
}


@pytest.mark.parametrize(
    "step",
    [
        pytest.param({"step": "teleport"}, id="unknown-kind"),
        pytest.param({"max_bytes": 1}, id="no-kind"),
        pytest.param({"step": "body_limit"}, id="missing-field"),
        pytest.param({"step": "body_limit", "max_bytes": -1}, id="negative-limit"),
        pytest.param({"step": "body_limit", "max_bytes": "1m"}, id="limit-not-a-number"),
        pytest.param({"step": "body_limit", "max_bytes": True}, id="limit-a-flag"),
        pytest.param({"step": "hsts", "max_age": 60, "include_subdomains": 1}, id="flag-a-number"),
        pytest.param({"step": "hsts", "max_age": 60, "extra": True}, id="unknown-field"),
        pytest.param({"step": "https_redirect", "status": 200}, id="redirect-not-a-redirect"),
        pytest.param({"step": "refuse", "status": 200, "reason": "Ok"}, id="refusal-not-an-error"),
        pytest.param(
            {"step": "refuse", "status": 403, "reason": "no such"}, id="reason-not-a-word"
        ),
        pytest.param({"step": "source_ranges", "allow": [], "deny": []}, id="ranges-empty"),
        pytest.param({"step": "source_ranges", "allow": "10.0.0.0/8"}, id="ranges-not-a-list"),
        pytest.param({"step": "source_ranges", "allow": [10]}, id="range-not-a-string"),
        pytest.param({"step": "source_ranges", "allow": ["10.0.0.1/8"]}, id="range-host-bits"),
        pytest.param({"step": "source_ranges", "deny": ["10.0.0.0/33"]}, id="range-invalid"),
        pytest.param({"step": "shape_request"}, id="shaping-nothing"),
        pytest.param({"step": "shape_request", "host": "a b"}, id="vhost-not-a-host"),
        pytest.param({"step": "shape_request", "connection": "upgrade"}, id="connection-other"),
        pytest.param(
            {"step": "shape_request", "names": ["X-A"], "values": []}, id="names-without-values"
        ),
        pytest.param(
            {"step": "shape_request", "names": ["X-A"], "values": ["a\r\nb"]}, id="value-crlf"
        ),
        pytest.param(
            {"step": "shape_request", "names": ["Host"], "values": ["x"]}, id="set-host-field"
        ),
        pytest.param(
            {"step": "shape_request", "names": ["X A"], "values": ["x"]}, id="name-not-a-token"
        ),
        pytest.param({"step": "response_headers", "names": [], "values": []}, id="no-fields"),
        pytest.param(
            {"step": "response_headers", "names": ["Transfer-Encoding"], "values": ["x"]},
            id="framing-field",
        ),
        pytest.param(
            {"step": "response_headers", "names": ["X-A"], "values": [""]}, id="empty-value"
        ),
        pytest.param(
            {"step": "response_headers", "names": ["X-A", "x-a"], "values": ["1", "2"]},
            id="repeated-name",
        ),
        pytest.param({"step": "redirect", "url": "https://x.example"}, id="redirect-no-status"),
        pytest.param(
            {"step": "redirect", "url": "https://x.example", "status": 300}, id="redirect-300"
        ),
        pytest.param({"step": "redirect", "url": "ftp://x", "status": 301}, id="redirect-ftp"),
        pytest.param({"step": "redirect", "url": "/moved", "status": 301}, id="redirect-relative"),
        pytest.param({"step": "redirect", "url": "https://", "status": 301}, id="redirect-no-host"),
        pytest.param(
            {"step": "redirect", "url": "https://x\r\nSet-Cookie: a=b", "status": 301},
            id="redirect-header-injection",
        ),
        pytest.param(
            {"step": "redirect", "url": "https://x/a b", "status": 301}, id="redirect-space"
        ),
        pytest.param({"step": "host_redirect", "host": "A.example"}, id="host-redirect-case"),
        pytest.param({"step": "host_redirect", "host": "a.example/x"}, id="host-redirect-path"),
        pytest.param(
            {"step": "host_redirect", "host": "a.example", "status": 200}, id="host-redirect-200"
        ),
        pytest.param(
            {"step": "https_redirect", "status": 308, "preserve_trailing_slash": "yes"},
            id="preserve-slash-not-a-flag",
        ),
        pytest.param({"step": "rewrite", "pattern": "/a", "target": ""}, id="rewrite-no-target"),
        pytest.param(
            {"step": "rewrite", "pattern": "/(a)\\1", "target": "/"}, id="rewrite-backreference"
        ),
        pytest.param({"step": "rewrite", "pattern": "a", "target": "/"}, id="rewrite-no-slash"),
        pytest.param(
            {"step": "rewrite", "pattern": "/a", "target": "/$host"}, id="rewrite-variable"
        ),
        pytest.param(
            {"step": "rewrite", "pattern": "/a", "target": "/x\r\nX: y"}, id="rewrite-crlf"
        ),
        pytest.param(
            {"step": "rewrite", "pattern": "/a", "target": "/", "forwarded_prefix": "/a b"},
            id="rewrite-prefix-space",
        ),
        pytest.param({"step": "app_root", "path": "app"}, id="app-root-relative"),
        pytest.param({"step": "app_root", "path": "/$1"}, id="app-root-capture"),
        pytest.param(
            {"step": "error_pages", "backend": "", "service": "ns/e", "fallback": True},
            id="error-pages-no-backend",
        ),
        pytest.param(
            {"step": "error_pages", "backend": "ns/e/0", "service": "ns/e"},
            id="error-pages-nothing-to-do",
        ),
        pytest.param(
            {"step": "error_pages", "backend": "ns/e/0", "service": "ns/e", "codes": [302]},
            id="error-page-not-an-error",
        ),
        pytest.param(
            {"step": "error_pages", "backend": "ns/e/0", "service": "ns/e", "codes": ["404"]},
            id="error-page-code-a-string",
        ),
        pytest.param(
            {"step": "error_pages", "backend": "ns/e/0", "service": "ns/e", "codes": [True]},
            id="error-page-code-a-flag",
        ),
        pytest.param(
            {"step": "error_pages", "backend": "ns/e/0", "service": "ns/e", "codes": 404},
            id="error-page-codes-not-a-list",
        ),
        pytest.param(
            {"step": "rewrite_redirects", "prefix": "", "replacement": "/"}, id="no-prefix"
        ),
        pytest.param(
            {"step": "rewrite_redirects", "prefix": "/a", "replacement": "/b\r\nX: y"},
            id="redirect-splits-the-head",
        ),
        pytest.param({"step": "client_certificate", "ca_pem": "x"}, id="client-ca-not-pem"),
        pytest.param(
            {"step": "client_certificate", "ca_pem": CA_PEM, "verify": "sometimes"},
            id="client-verify-mode",
        ),
        pytest.param(
            {"step": "client_certificate", "ca_pem": CA_PEM, "depth": 0}, id="client-depth-0"
        ),
        pytest.param(
            {"step": "client_certificate", "ca_pem": CA_PEM, "error_page": "/error"},
            id="client-error-page-path",
        ),
        pytest.param(
            {"step": "client_certificate", "ca_pem": CA_PEM, "match_cn": "CN=(a)\\1"},
            id="client-match-cn-backreference",
        ),
        pytest.param({"step": "rewrite_cookies"}, id="cookies-without-rule"),
        pytest.param({"step": "rewrite_cookies", "path": "/"}, id="cookie-path-alone"),
        pytest.param(
            {"step": "rewrite_cookies", "domain": "a", "domain_replacement": "b;c"},
            id="cookie-attribute-injected",
        ),
        pytest.param(
            {"step": "rewrite_cookies", "domain": ".a", "domain_replacement": "b"},
            id="cookie-domain-dot",
        ),
        pytest.param({"step": "sticky_sessions", "name": "a=b"}, id="sticky-name-injected"),
        pytest.param({"step": "sticky_sessions", "mode": "sticky"}, id="sticky-mode"),
        pytest.param({"step": "sticky_sessions", "path": "/a;b"}, id="sticky-path-injected"),
        pytest.param({"step": "sticky_sessions", "path": "a"}, id="sticky-path-relative"),
        pytest.param({"step": "sticky_sessions", "max_age": "1d"}, id="sticky-max-age"),
        pytest.param({"step": "sticky_sessions", "expires": 10}, id="sticky-expires-a-number"),
        pytest.param({"step": "sticky_sessions", "samesite": "none"}, id="sticky-samesite"),
        pytest.param({"step": "sticky_sessions", "secure": "true"}, id="sticky-secure-a-string"),
        pytest.param({"step": "hash_by", "expression": "$upstream_addr"}, id="hash-unknown"),
        pytest.param({"step": "hash_by", "expression": "text"}, id="hash-no-variable"),
        pytest.param({"step": "hash_by", "expression": "$"}, id="hash-lone-dollar"),
        pytest.param(
            {"step": "hash_by", "expression": "$uri", "subset_size": 0}, id="hash-subset-0"
        ),
        *(
            pytest.param({**CORS, **change}, id=f"cors-{name}")
            for name, change in {
                "origin-with-path": {"origins": ["https://a.test/x"]},
                "origin-splits-the-head": {"origins": ["https://a.test\r\nX: y"]},
                "origin-ends-with-a-newline": {"origins": ["https://a.test\n"]},
                "methods-end-with-a-newline": {"methods": "GET\n"},
                "two-wildcards": {"origins": ["https://*.*.a.test"]},
                "star-in-a-list": {"origins": ["*", "https://a.test"]},
                "methods-empty": {"methods": ""},
                "methods-split-the-head": {"methods": "GET\r\nX: y"},
                "headers-colon": {"headers": "X: y"},
                "max-age-not-a-number": {"max_age": "60"},
                "credentials-not-a-flag": {"credentials": 1},
            }.items()
        ),
        pytest.param(
            {"step": "basic_auth", "realm": 'a"b', "users": [], "hashes": []},
            id="auth-realm-quote",
        ),
        pytest.param(
            {"step": "basic_auth", "realm": "", "users": ["a:b"], "hashes": ["x"]},
            id="auth-user-colon",
        ),
        pytest.param(
            {"step": "basic_auth", "realm": "", "users": ["a"], "hashes": []},
            id="auth-users-without-hashes",
        ),
        pytest.param(
            {"step": "basic_auth", "realm": "", "users": ["a"], "hashes": ["x\r\n"]},
            id="auth-hash-control",
        ),
        pytest.param(
            {"step": "basic_auth", "realm": "", "users": ["a", "a"], "hashes": ["x", "y"]},
            id="auth-users-repeat",
        ),
        pytest.param({"step": "rate_limit", "zone": "ns/a"}, id="rate-limit-without-limit"),
        pytest.param({"step": "rate_limit", "zone": "", "rps": 1}, id="rate-limit-no-zone"),
        pytest.param({"step": "rate_limit", "zone": "ns/a", "rps": -1}, id="rate-negative"),
        pytest.param({"step": "rate_limit", "zone": "ns/a", "rps": True}, id="rate-a-flag"),
        pytest.param(
            {"step": "rate_limit", "zone": "ns/a", "rps": 1, "status": 200}, id="rate-status-200"
        ),
        pytest.param(
            {"step": "rate_limit", "zone": "ns/a", "connections": 1, "allow": ["10.0.0.1/8"]},
            id="rate-allowlist-not-canonical",
        ),
        # ExternalAuth (auth-url): anything the proxy could not send as meant.
        pytest.param({"step": "external_auth", "url": "ftp://a/"}, id="auth-not-http"),
        pytest.param({"step": "external_auth", "url": "http:///a"}, id="auth-without-host"),
        pytest.param({"step": "external_auth", "url": "http://$foo/"}, id="auth-unknown-var"),
        pytest.param({"step": "external_auth", "url": "http://a/\r\nX: y"}, id="auth-split"),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "method": "get"}, id="auth-method"
        ),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "signin": "/start"},
            id="auth-signin-relative",
        ),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "response_headers": ["Host"]},
            id="auth-response-header-host",
        ),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "cache_key": "$request_body"},
            id="auth-cache-key-variable",
        ),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "cache_statuses": [200]},
            id="auth-cache-without-time",
        ),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "keepalive": -1},
            id="auth-keepalive-negative",
        ),
        pytest.param(
            {"step": "external_auth", "url": "http://a/", "keepalive": True},
            id="auth-keepalive-a-flag",
        ),
    ],
)
def test_rejects_a_bad_policy_step(step: dict[str, object]) -> None:
    assert decode_snapshot(_with_step({"step": "body_limit", "max_bytes": 1}))  # the positive
    with pytest.raises(SnapshotError):
        decode_snapshot(_with_step(step))


@pytest.mark.parametrize(
    "pattern", ["/(a)\\1", "/(?=x)", "/a(b", "/" + "x" * 1024], ids=str.__len__
)
def test_rejects_a_regex_rule_the_engine_cannot_take(pattern: str) -> None:
    doc = json.loads(encode_snapshot(full_snapshot()))
    doc["virtual_hosts"][1]["rules"][0][0] = pattern
    with pytest.raises(SnapshotError):
        decode_snapshot(json.dumps(doc).encode())


def test_policy_steps_keep_their_order() -> None:
    (rule, *_) = decode_snapshot(encode_snapshot(full_snapshot())).routes.virtual_hosts[0].rules
    assert [type(s).__name__ for s in rule.options.policy] == [
        "HTTPSRedirect",
        "Refuse",
        "SourceRanges",
        "BodyLimit",
        "HSTS",
        "ShapeRequest",
        "ResponseHeaders",
        "Redirect",
        "HostRedirect",
        "ErrorPages",
        "RewriteRedirects",
        "RewriteCookies",
        "ClientCertificate",
        "StickySessions",
        "HashBy",
        "Cors",
        "BasicAuth",
        "RateLimit",
        "ExternalAuth",
        "SatisfyAny",
    ]
    assert rule.options.step(BodyLimit) == BodyLimit(1024)
    assert rule.options.step(HSTS) == HSTS(600, include_subdomains=False, preload=True)


def test_ready_endpoints_fall_back_to_terminating() -> None:
    terminating = Endpoint("127.0.0.2", 80, ready=False)
    ready = Endpoint("127.0.0.3", 80)
    assert Backend("k", (terminating, ready)).ready_endpoints == (ready,)
    assert Backend("k", (terminating,)).ready_endpoints == (terminating,)
    assert Endpoint("fd00::1", 80).authority == "[fd00::1]:80"


# ---- retries and buffering options (proxy-next-upstream, request buffering, head limit) ------

RETRY_OPTIONS = RouteOptions(
    next_upstream=("error", "timeout", "http_503", "non_idempotent"),
    next_upstream_tries=0,
    next_upstream_timeout=10.0,
    request_buffering=True,
    response_head_limit=8192,
)


def test_retry_options_round_trip() -> None:
    for options in (RETRY_OPTIONS, RouteOptions(next_upstream=())):  # () is "off"
        rule = PathRule("/", "prefix", "ns/web/80", "ns/ing", "ns/web", 80, "Prefix", options)
        snapshot = Snapshot(RouteTable((VirtualHost("a.example", (rule,)),)))
        assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"next_upstream": ["error", "sometimes"]}, id="unknown-condition"),
        pytest.param({"next_upstream": ["off"]}, id="off-is-an-empty-list"),
        pytest.param({"next_upstream": "error"}, id="conditions-not-a-list"),
        pytest.param({"next_upstream_tries": -1}, id="negative-tries"),
        pytest.param({"next_upstream_tries": 1.5}, id="tries-not-an-int"),
        pytest.param({"next_upstream_timeout": 0}, id="zero-timeout-is-none"),
        pytest.param({"next_upstream_timeout": "10"}, id="timeout-not-a-number"),
        pytest.param({"response_head_limit": 0}, id="zero-head-limit"),
    ],
)
def test_rejects_bad_retry_options(fields: dict[str, object]) -> None:
    doc = json.loads(encode_snapshot(full_snapshot()))
    doc["options"][1].update(fields)
    with pytest.raises(SnapshotError):
        decode_snapshot(json.dumps(doc).encode())


# ---- response bandwidth (limit-rate, limit-rate-after) -----------------------------------


def test_limit_rate_round_trip() -> None:
    options = RouteOptions(limit_rate=65536, limit_rate_after=131072)
    rule = PathRule("/", "prefix", "ns/web/80", "ns/ing", "ns/web", 80, "Prefix", options)
    snapshot = Snapshot(RouteTable((VirtualHost("a.example", (rule,)),)))
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"limit_rate": -1}, id="negative-rate"),
        pytest.param({"limit_rate": 1.5}, id="rate-not-an-int"),
        pytest.param({"limit_rate": "64k"}, id="rate-not-a-number"),
        pytest.param({"limit_rate_after": -1}, id="negative-after"),
        pytest.param({"limit_rate_after": True}, id="after-not-an-int"),
    ],
)
def test_rejects_bad_limit_rate(fields: dict[str, object]) -> None:
    doc = json.loads(encode_snapshot(full_snapshot()))
    doc["options"][1].update(fields)
    with pytest.raises(SnapshotError):
        decode_snapshot(json.dumps(doc).encode())


# ---- canaries (canary Ingresses paired with a main rule) -----------------------------------

CANARIES = {
    "header-value": Canary(
        "ns/canary/80", "ns/canary", "ns/ing-canary", "80", "canarybyheader", "DoCanary"
    ),
    "pattern-and-cookie": Canary(
        "ns/canary/http",
        "ns/canary",
        "ns/ing-canary",
        "http",
        header="x-canary",
        header_pattern="^Do[A-Z][a-z]+y$",
        cookie="Canary-By-Cookie",
    ),
    "invalid-pattern": Canary(
        "ns/canary/80", "ns/canary", "ns/c", "80", "x-canary", "", "[][**da?$&*", True
    ),
    "weight": Canary("ns/canary/80", "ns/canary", "ns/c", "80", weight=100, weight_total=200),
    "balancer": Canary("ns/canary/80", "ns/canary", "ns/c", "80", balancer="least_request"),
    # affinity-canary-behavior and the canary Ingress's own upstream-hash-by.
    "legacy": Canary("ns/canary/80", "ns/canary", "ns/c", "80", affinity_behavior="legacy"),
    "own-hash-by": Canary(
        "ns/canary/80",
        "ns/canary",
        "ns/c",
        "80",
        hash_by="$http_x_user$request_uri",
        hash_by_subset=True,
        hash_by_subset_size=2,
    ),
}


@pytest.mark.parametrize("step", CANARIES.values(), ids=CANARIES.keys())
def test_canary_step_round_trips(step: Canary) -> None:
    options = RouteOptions(policy=(BodyLimit(10), step))
    rule = PathRule("/info", "prefix", "ns/main/80", "ns/ing", "ns/main", 80, "Prefix", options)
    snap = Snapshot(RouteTable((VirtualHost("foo", (rule,)),)))
    decoded = decode_snapshot(encode_snapshot(snap))
    assert decoded.routes.virtual_hosts[0].rules[0].options.step(Canary) == step


@pytest.mark.parametrize(
    "change",
    [
        {"weight": -1},
        {"weight": True},
        {"weight_total": 50},  # the compiler counts a total below 100 as 100
        {"header": "X-Upper"},  # lower-case only
        {"header_value": "a\r\nb"},
        {"header_pattern": "(a"},  # a pattern the worker cannot compile refuses the snapshot
        {"backend": ""},
        {"balancer": "ewma"},  # the compiler's names only
        {"affinity_behavior": "Sticky"},  # "sticky" or "legacy", as ingress-nginx's options
        {"hash_by": "$upstream_addr"},  # the canary's hash-by holds HashBy's variables only
        {"hash_by": "$request_uri", "hash_by_subset_size": 0},
    ],
    ids=str,
)
def test_bad_canary_refuses_the_snapshot(change: dict[str, object]) -> None:
    step = Canary("ns/canary/80", "ns/canary", "ns/c", "80", "x-canary", weight=10)
    options = RouteOptions(policy=(step,))
    rule = PathRule("/", "prefix", "ns/main/80", "ns/ing", "ns/main", 80, "Prefix", options)
    doc = json.loads(encode_snapshot(Snapshot(RouteTable((VirtualHost("foo", (rule,)),)))))
    doc["options"][1]["policy"][0].update(change)
    with pytest.raises(SnapshotError):
        decode_snapshot(json.dumps(doc).encode())


@pytest.mark.parametrize("protocol", ["GRPC", "GRPCS"])  # issue 19: gRPC to pods
def test_grpc_backend_protocol_round_trips(protocol: str) -> None:
    options = RouteOptions(upstream_protocol=protocol)  # type: ignore[arg-type]
    rule = PathRule("/", "prefix", "ns/web/80", "ns/ing", "ns/web", 80, "Prefix", options)
    snapshot = Snapshot(RouteTable((VirtualHost("a.example", (rule,)),)))
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
