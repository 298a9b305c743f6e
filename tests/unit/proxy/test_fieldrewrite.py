"""proxy/fieldrewrite.py: nginx's proxy_redirect, proxy_cookie_domain and proxy_cookie_path rules.

Rows cite nginx's documentation of the directives (ngx_http_proxy_module) or its code
(ngx_http_proxy_module.c, ngx_http_upstream.c, ngx_http_header_filter_module.c) where the
documentation is silent. Through real sockets: tests/integration/test_response_rewriting.py.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from proxy.config import RewriteCookies, RewriteRedirects
from proxy.fieldrewrite import FieldRewrites, field_rewrites, server_name
from proxy.headers import ClientContext, RequestHead

HTTP = ClientContext("192.0.2.1", "http", 8080, ())
HTTPS = ClientContext("192.0.2.1", "https", 8443, ())


def _head(host: bytes) -> RequestHead:
    head = RequestHead()
    head.host = host
    return head


class Redirect(NamedTuple):
    prefix: str
    replacement: str
    location: str
    expected: str | None  # None: left as the pod sent it
    host: bytes = b"shop.example"
    client: ClientContext = HTTP


REDIRECTS: dict[str, Redirect] = {
    # proxy_redirect doc: "proxy_redirect http://localhost:8000/two/ http://frontend/one/;"
    "docs-example": Redirect(
        "http://localhost:8000/two/",
        "http://frontend/one/",
        "http://localhost:8000/two/some/uri/",
        "http://frontend/one/some/uri/",
    ),
    # doc: "The replacement string can omit the server name ... the primary server's name and
    # port ... will be inserted" (absolute_redirect; ingress-nginx: port_in_redirect off,
    # server_name_in_redirect off: the request's host, no port).
    "relative-replacement-made-absolute": Redirect(
        "http://localhost:8000/two/",
        "/one/",
        "http://localhost:8000/two/x?y=1",
        "http://shop.example/one/x?y=1",
    ),
    "absolute-on-https": Redirect(
        "http://pod/", "/", "http://pod/a", "https://shop.example/a", client=HTTPS
    ),
    # ngx_http_validate_host: the host lower-cased, its port and a trailing dot dropped.
    "host-normalised": Redirect(
        "http://pod/", "/", "http://pod/a", "http://shop.example/a", host=b"Shop.Example.:8080"
    ),
    "ipv6-host": Redirect("http://pod/", "/", "http://pod/a", "http://[::1]/a", host=b"[::1]:80"),
    # Without a host (HTTP/1.0) there is nothing to put in front: left relative.
    "no-host-stays-relative": Redirect("http://pod/", "/", "http://pod/a", "/a", host=b""),
    # A prefix match, case-sensitive (ngx_http_proxy_rewrite_complex_handler: ngx_rstrncmp).
    "not-a-prefix": Redirect("http://pod/", "/", "https://pod/a", None),
    "case-sensitive": Redirect("http://pod/", "/", "HTTP://POD/a", None),
    "prefix-elsewhere": Redirect("/two/", "/one/", "http://x/two/", None),
    # A relative Location that does not match stays relative (ngx_http_upstream_rewrite_location
    # sets headers_out.location only for a rewritten one).
    "relative-unmatched": Redirect("http://pod/", "/", "/a", None),
    "relative-prefix": Redirect("/two/", "/one/", "/two/a", "http://shop.example/one/a"),
    # The whole value is the prefix.
    "whole-value": Redirect("http://pod/", "/app/", "http://pod/", "http://shop.example/app/"),
    # e2e proxy.go "should set proxy_redirect to hello.com goodbye.com": plain text both ways.
    "e2e-hosts": Redirect("hello.com", "goodbye.com", "hello.com/x", "goodbye.com/x"),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in REDIRECTS.items()])
def test_location(case: Redirect) -> None:
    rewrites = field_rewrites(RewriteRedirects(case.prefix, case.replacement), None)
    assert rewrites is not None
    got = rewrites.location(case.location.encode(), _head(case.host), case.client)
    assert got == (None if case.expected is None else case.expected.encode())


REFRESH: dict[str, tuple[str, str | None]] = {
    # proxy_redirect doc: it changes the "Location" and "Refresh" header fields; nginx rewrites
    # what follows the first "url=", in any case (ngx_http_upstream_rewrite_refresh).
    "url": ("5; url=http://pod/next", "5; url=/app/next"),
    "url-any-case": ("0;URL=http://pod/next", "0;URL=/app/next"),
    # Never made absolute (only Location is, by the header filter).
    "no-url": ("5", None),
    "other-url": ("5; url=http://elsewhere/", None),
}


@pytest.mark.parametrize(
    ("value", "expected"), [pytest.param(*v, id=k) for k, v in REFRESH.items()]
)
def test_refresh(value: str, expected: str | None) -> None:
    rewrites = FieldRewrites(b"http://pod/", b"/app/")
    assert rewrites.refresh(value.encode()) == (None if expected is None else expected.encode())


class Cookie(NamedTuple):
    rule: RewriteCookies
    cookie: str
    expected: str | None  # None: left byte for byte


DOMAIN = RewriteCookies("localhost", "example.org")
PATH = RewriteCookies(path="/two/", path_replacement="/")
BOTH = RewriteCookies("localhost", "example.org", "/two/", "/")

COOKIES: dict[str, Cookie] = {
    # proxy_cookie_domain doc: "domain=localhost" with "proxy_cookie_domain localhost
    # example.org;" becomes "domain=example.org".
    "domain-docs": Cookie(DOMAIN, "sid=1; domain=localhost", "sid=1; domain=example.org"),
    # doc: "A dot at the beginning of the domain and replacement strings and the domain
    # attribute is ignored. Matching is case-insensitive." The cookie's own dot stays.
    "domain-dot-kept": Cookie(DOMAIN, "sid=1; Domain=.localhost", "sid=1; Domain=.example.org"),
    "domain-any-case": Cookie(DOMAIN, "sid=1; DOMAIN=LocalHost", "sid=1; DOMAIN=example.org"),
    # The whole value must match (ngx_http_proxy_rewrite_domain_handler): no suffix match.
    "domain-subdomain": Cookie(DOMAIN, "sid=1; Domain=a.localhost", None),
    "domain-longer": Cookie(DOMAIN, "sid=1; Domain=localhost.net", None),
    # proxy_cookie_path doc: "path=/two/some/uri/" with "proxy_cookie_path /two/ /;" becomes
    # "path=/some/uri/".
    "path-docs": Cookie(PATH, "sid=1; path=/two/some/uri/", "sid=1; path=/some/uri/"),
    "path-not-prefix": Cookie(PATH, "sid=1; Path=/one/two/", None),
    "path-case-sensitive": Cookie(PATH, "sid=1; Path=/TWO/x", None),
    # Both rules on one cookie; other attributes kept in order.
    "both": Cookie(
        BOTH,
        "sid=1; Path=/two/a; Secure; HttpOnly; Domain=localhost; SameSite=Lax",
        "sid=1; Path=/a; Secure; HttpOnly; Domain=example.org; SameSite=Lax",
    ),
    # A rewritten cookie is written back as nginx does: "; " between attributes, spaces
    # around names and values dropped (ngx_http_proxy_parse_cookie / _rewrite_cookie).
    "respaced": Cookie(PATH, "sid = 1 ;path= /two/x ;  Secure", "sid=1; path=/x; Secure"),
    "trailing-semicolon": Cookie(PATH, "sid=1; Path=/two/;", "sid=1; Path=/; "),
    # ... and one with nothing to rewrite is left byte for byte.
    "untouched-spacing": Cookie(BOTH, "sid = 1 ;path= /x ;  Secure", None),
    # The cookie's own name=value is never an attribute, even when called Path.
    "cookie-named-path": Cookie(PATH, "path=/two/x", None),
    "no-name-value": Cookie(PATH, "Path=/two/x", None),
    "flag-without-value": Cookie(BOTH, "sid=1; Domain; Path", None),
    "empty-domain": Cookie(DOMAIN, "sid=1; Domain=", None),
    # Every matching attribute is rewritten.
    "two-domains": Cookie(
        DOMAIN,
        "a=b; Domain=localhost; Domain=.LOCALHOST",
        "a=b; Domain=example.org; Domain=.example.org",
    ),
    # Only the rules given apply: a path rule leaves Domain alone.
    "path-rule-only": Cookie(PATH, "sid=1; Domain=localhost", None),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in COOKIES.items()])
def test_cookie(case: Cookie) -> None:
    rewrites = field_rewrites(None, case.rule)
    assert rewrites is not None
    got = rewrites.cookie(case.cookie.encode())
    assert got == (None if case.expected is None else case.expected.encode())


def _head_parts(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    parts = [b""]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    return parts


def test_rewrite_walks_only_its_fields() -> None:
    rewrites = field_rewrites(RewriteRedirects("http://pod/", "/"), DOMAIN)
    assert rewrites is not None
    fields = [
        (b"LOCATION", b"http://pod/a"),
        (b"X-Location", b"http://pod/a"),
        (b"set-cookie", b"a=1; Domain=localhost"),
        (b"Set-Cookie", b"b=2; Domain=other"),
        (b"Refresh", b"1; url=http://pod/b"),
        (b"Content-Location", b"http://pod/c"),
    ]
    parts = _head_parts(fields)
    rewrites.rewrite(parts, _head(b"shop.example"), HTTP)
    assert parts == _head_parts(
        [
            (b"LOCATION", b"http://shop.example/a"),
            (b"X-Location", b"http://pod/a"),
            (b"set-cookie", b"a=1; Domain=example.org"),
            (b"Set-Cookie", b"b=2; Domain=other"),
            (b"Refresh", b"1; url=/b"),
            (b"Content-Location", b"http://pod/c"),
        ]
    )


def test_each_step_rewrites_only_its_fields() -> None:
    cookies_only = field_rewrites(None, PATH)
    redirects_only = field_rewrites(RewriteRedirects("/two/", "/"), None)
    assert cookies_only is not None and redirects_only is not None
    fields = [(b"Location", b"/two/a"), (b"Set-Cookie", b"s=1; Path=/two/a")]
    parts = _head_parts(fields)
    cookies_only.rewrite(parts, _head(b"h"), HTTP)
    assert parts == _head_parts([(b"Location", b"/two/a"), (b"Set-Cookie", b"s=1; Path=/a")])
    parts = _head_parts(fields)
    redirects_only.rewrite(parts, _head(b"h"), HTTP)
    assert parts == _head_parts(
        [(b"Location", b"http://h/a"), (b"Set-Cookie", b"s=1; Path=/two/a")]
    )
    assert field_rewrites(None, None) is None


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"a.example", b"a.example"),
        (b"A.Example:8080", b"a.example"),
        (b"a.example.", b"a.example"),
        (b"[2001:DB8::1]:443", b"[2001:db8::1]"),
        (b"", b""),
    ],
)
def test_server_name(host: bytes, name: bytes) -> None:
    assert server_name(host) == name
