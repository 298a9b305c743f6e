"""Regex paths on the proxy side: the RE2 wrapper (proxy/regex.py), regex rules in the route
table (proxy/table.py) and the rewrite and app-root steps (proxy/pathrewrite.py), with heads parsed
as the worker parses them."""

from __future__ import annotations

import time

import pytest

from proxy.config import PathRule, RouteTable, VirtualHost
from proxy.headers import ClientContext, RequestHead, parse_request
from proxy.pathrewrite import RedirectAppRoot, RewritePath
from proxy.regex import MAX_PATTERN_LENGTH, PatternError, compile_path
from proxy.table import Router

# ---- the wrapper ----------------------------------------------------------------------------

# (pattern, path, matches): nginx `~* "^<pattern>"`.
MATCHES = [
    # rewrite.go "should use ~* location modifier if regex annotation is present"
    ("/foo", b"/foo", True),
    ("/foo.+", b"/foo/bar", True),
    ("/foo.+", b"/foo", False),
    # annotations.md "Use Regex": case-insensitive (~*)
    ("/foo/bar", b"/FOO/Bar", True),
    # anchored at the start only (buildLocation: `^` prepended, no `$`)
    ("/foo", b"/x/foo", False),
    ("/foo", b"/foobar/baz", True),
    ("/foo$", b"/foobar", False),
    # rewrite.go "should fail to use longest match for documented warning"
    ("/foo/bar/[a-z]{3}", b"/foo/bar/bar", True),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), MATCHES)
def test_matches(pattern: str, path: bytes, matches: bool) -> None:
    assert compile_path(pattern).matches(path) is matches


def test_captures_are_raw_slices_and_absent_groups_are_empty() -> None:
    # ingress-path-matching.md / rewrite example: /something(/|$)(.*)
    pattern = compile_path("/something(/|$)(.*)")
    assert pattern.captures(b"/something") == [b"/something", b"", b""]
    assert pattern.captures(b"/something/new%20x") == [b"/something/new%20x", b"/", b"new%20x"]
    assert compile_path("/a(x)?").captures(b"/a") == [b"/a", b""]
    assert pattern.captures(b"/other") is None


# (pattern, what the error says): PCRE features RE2 lacks, and the bounds.
REFUSED = [
    ("/(a)\\1", "backreferences"),
    ("/(?=a)", "lookahead"),
    ("/(?!a)", "negative lookahead"),
    ("/(?<=a)b", "lookbehind"),
    ("/a++", "possessive"),
    ("/a(b", "missing )"),
    ("/" + "x" * MAX_PATTERN_LENGTH, "longer than"),
    ("/" + "(\\w{1000})" * 10, "too large"),
    ("/\u0100", "Latin-1"),
]


@pytest.mark.parametrize(("pattern", "says"), REFUSED)
def test_refused(pattern: str, says: str) -> None:
    with pytest.raises(PatternError, match=says.replace("(", "\\(").replace(")", "\\)")):
        compile_path(pattern)


def test_a_pathological_pattern_does_not_backtrack() -> None:
    # (a+)+$ against "aaaa...b" takes exponential time in a backtracking engine (Python's re,
    # PCRE); RE2 is linear in the path.
    pattern = compile_path("/(a+)+$")
    path = b"/" + b"a" * 5000 + b"b"
    started = time.perf_counter()
    assert not pattern.matches(path)
    assert time.perf_counter() - started < 0.5


# ---- the table -------------------------------------------------------------------------------


def _rule(path: str, match: str = "regex", backend: str = "") -> PathRule:
    return PathRule(path, match, backend or path, "ns/ing", "ns/web", 80)  # type: ignore[arg-type]


# (rules in the order the compiler emits them, request path, the rule's backend or None).
TABLE = [
    # rewrite.go "should use correct longest path match": ^/.well-known/acme/challenge first
    (
        ["/.well-known/acme/challenge", "/"],
        "/.well-known/acme/challenge",
        "/.well-known/acme/challenge",
    ),
    (["/.well-known/acme/challenge", "/"], "/other", "/"),
    # rewrite.go "should use ~* location modifier ...": ^/foo.+ (longer) before ^/foo
    (["/foo.+", "/foo"], "/foo", "/foo"),
    (["/foo.+", "/foo"], "/foo/bar", "/foo.+"),
    # rewrite.go "should fail to use longest match for documented warning": config order wins
    (["/foo/bar/[a-z]{3}", "/foo/bar/bar"], "/foo/bar/bar", "/foo/bar/[a-z]{3}"),
    # no regex matches: the host's fallback (None here)
    (["/api"], "/web", None),
]


@pytest.mark.parametrize(("paths", "request_path", "expected"), TABLE)
def test_regex_rules_in_order(paths: list[str], request_path: str, expected: str | None) -> None:
    router = Router(RouteTable((VirtualHost("a.example", tuple(_rule(p) for p in paths)),)))
    rule = router.route("a.example", request_path)
    assert (rule.backend if rule is not None else None) == expected
    match = router.explain("a.example", request_path)
    assert match.rule is rule


def test_exact_rules_before_regex_and_prefix_after() -> None:
    # nginx: `=` locations first, then regex locations, then the longest prefix.
    rules = (_rule("/x", "exact", "exact"), _rule("/x.*", "regex", "regex"), _rule("/", "prefix"))
    router = Router(RouteTable((VirtualHost("a.example", rules),)))
    assert [router.route("a.example", p).backend for p in ("/x", "/xy", "/z")] == [  # type: ignore[union-attr]
        "exact",
        "regex",
        "/",
    ]


def test_hosts_without_regex_have_none() -> None:
    router = Router(RouteTable((VirtualHost("a.example", (_rule("/a", "prefix"),)),)))
    table = router._host("a.example")
    assert table is not None and table.regex == ()


# ---- the steps -------------------------------------------------------------------------------

CTX = ClientContext("198.51.100.7", "http", 80, ())
TLS_CTX = ClientContext("198.51.100.7", "https", 443, ())


def _head(target: bytes, host: bytes = b"a.example", fields: bytes = b"") -> RequestHead:
    parts: list[bytes] = [b"", b" ", b"", b""]
    for line in fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            parts += (name, b": ", value, b"\r\n")
    special = [(b"host", host)] if host else []
    return parse_request(b"GET", target, "1.1", parts, special, CTX)


def _request_line(head: RequestHead) -> bytes:
    return head.render(b"10.0.0.1:80").split(b"\r\n")[0]


# (path expression, target template, request target, what the pod is sent). Rows: rewrite.go,
# annotations.md "Rewrite" and the rewrite example (examples/rewrite/README.md).
REWRITES = [
    # rewrite.go "should write rewrite logs": target without captures
    ("/something", "/", b"/something", b"GET / HTTP/1.1"),
    # rewrite.go "should allow for custom rewrite parameters"
    ("/foo/bar/(.+)", "/new/backend/$1", b"/foo/bar/bar", b"GET /new/backend/bar HTTP/1.1"),
    # examples/rewrite: /something(/|$)(.*) -> /$2
    ("/something(/|$)(.*)", "/$2", b"/something", b"GET / HTTP/1.1"),
    ("/something(/|$)(.*)", "/$2", b"/something/", b"GET / HTTP/1.1"),
    ("/something(/|$)(.*)", "/$2", b"/something/new", b"GET /new HTTP/1.1"),
    # the query follows (nginx appends the args to a replacement without "?")
    ("/something(/|$)(.*)", "/$2", b"/something/new?a=1&b", b"GET /new?a=1&b HTTP/1.1"),
    ("/something(/|$)(.*)", "/$2", b"/something/new?", b"GET /new HTTP/1.1"),
    # case-insensitive, the capture as the client wrote it (undecoded)
    ("/api/(.*)", "/$1", b"/API/A%2Fb", b"GET /A%2Fb HTTP/1.1"),
    # $0 is the whole match; "$12" is $1 then "2" (nginx reads one digit); $9 absent: ""
    ("/v(1)", "$0/$12/$9x", b"/v1/rest", b"GET /v1/12/x HTTP/1.1"),
]


@pytest.mark.parametrize(("pattern", "target", "requested", "sent"), REWRITES)
def test_rewrite(pattern: str, target: str, requested: bytes, sent: bytes) -> None:
    head = _head(requested)
    assert RewritePath(pattern, target).request(head, CTX) is None
    assert _request_line(head) == sent
    assert head.target == requested  # the client's, for logs and redirects


def test_rewrite_to_no_leading_slash_fails_closed() -> None:
    # "$1" with an empty capture (or one not starting with "/") is no origin-form target.
    head = _head(b"/app")
    answer = RewritePath("/app(.*)", "$1").request(head, CTX)
    assert answer is not None and (answer.status, answer.reason) == (500, "InvalidRewrite")
    head = _head(b"/app/x")
    assert RewritePath("/app(.*)", "$1").request(head, CTX) is None
    assert _request_line(head) == b"GET /x HTTP/1.1"


# (annotation value, the client's field, the field the pod gets): xforwardedprefix.go.
PREFIXES = [
    # "should set the X-Forwarded-Prefix to the annotation value"
    ("/test/value", b"", b"X-Forwarded-Prefix: /test/value"),
    # the client's own field is replaced (proxy_set_header)
    ("/test/value", b"X-Forwarded-Prefix: /evil\r\n", b"X-Forwarded-Prefix: /test/value"),
    # "should not add X-Forwarded-Prefix if the annotation value is empty"
    ("", b"", None),
    # captures of the path expression, as nginx's $1 in proxy_set_header
    ("/$1", b"", b"X-Forwarded-Prefix: /foo"),
]


@pytest.mark.parametrize(("prefix", "client", "field"), PREFIXES)
def test_forwarded_prefix(prefix: str, client: bytes, field: bytes | None) -> None:
    head = _head(b"/foo/x", fields=client)
    assert RewritePath("/(foo)/(.*)", "/$2", prefix).request(head, CTX) is None
    sent = head.render(b"10.0.0.1:80").split(b"\r\n")
    assert [f for f in sent if f.lower().startswith(b"x-forwarded-prefix")] == (
        [field] if field is not None else []
    )


# (app root, listener, request target, Host, (status, Location) or None): approot.go.
APP_ROOTS = [
    # approot.go "should redirect to /foo"
    ("/foo", CTX, b"/", b"approot.bar.com", (302, b"http://approot.bar.com/foo")),
    # $scheme and $http_host: the listener's scheme, the Host with its port
    ("/foo", TLS_CTX, b"/", b"a.example:8443", (302, b"https://a.example:8443/foo")),
    # $uri = / only: the query is not part of it, and not kept
    ("/foo", CTX, b"/?x=1", b"a.example", (302, b"http://a.example/foo")),
    ("/foo", CTX, b"/bar", b"a.example", None),
    ("/foo", CTX, b"/foo", b"a.example", None),
]


@pytest.mark.parametrize(("root", "ctx", "target", "host", "expected"), APP_ROOTS)
def test_app_root(
    root: str,
    ctx: ClientContext,
    target: bytes,
    host: bytes,
    expected: tuple[int, bytes] | None,
) -> None:
    answer = RedirectAppRoot(root).request(_head(target, host), ctx)
    if expected is None:
        assert answer is None
        return
    assert answer is not None
    assert (answer.status, answer.fields) == (expected[0], b"Location: " + expected[1] + b"\r\n")
