"""CORS through real sockets: preflights Portico answers and the Access-Control-* fields of the
pod's responses, from ingress-nginx's enable-cors / cors-* annotations compiled by the compiler.

Each row is one request to one host of the Ingresses below: the status, whether the echo pod
answered (a preflight never reaches it), and the CORS fields the client got (None: absent).
Rows cite ingress-nginx's e2e test (test/e2e/annotations/cors.go "<name>") or its template
(rootfs/etc/nginx/template/nginx.tmpl, the "CORS" block) they come from.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from backends import Client, Pod, Response
from tls_env import compiled, running

from controller.compiler import CompileResult
from tests.kube_factory import Raw, ingress, rule

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
ACAO = "Access-Control-Allow-Origin"
METHODS = "GET, PUT, POST, DELETE, PATCH, OPTIONS"
HEADERS = (
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,"
    "Range,Authorization"
)
# The fields of a response to an allowed origin with ingress-nginx's defaults (cors.go "should
# enable cors": the template's more_set_headers lines).
DEFAULTS = {
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Allow-Methods": METHODS,
    "Access-Control-Allow-Headers": HEADERS,
    "Access-Control-Expose-Headers": None,
    "Access-Control-Max-Age": "1728000",
}
NONE = {ACAO: None, **dict.fromkeys(DEFAULTS)}

CORS_INGRESSES: dict[str, dict[str, str]] = {
    "default.cors": {"enable-cors": "true"},
    "star.cors": {"enable-cors": "true", "cors-allow-origin": "*"},
    "star-extra.cors": {"enable-cors": "true", "cors-allow-origin": "*, foo.bar.com"},
    "blank.cors": {"enable-cors": "true", "cors-allow-origin": "      "},
    "one.cors": {"enable-cors": "true", "cors-allow-origin": "https://origin.cors.com:8080"},
    "two.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "https://origin.cors.com:8080, https://origin2.cors.com",
    },
    "skip.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "origin.cors.com:8080, https://origin2.cors.com, https://origin.com",
    },
    "dot.cors": {"enable-cors": "true", "cors-allow-origin": "https://foo.bar.com"},
    "ports.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "http://origin.cors.com:8080, http://origin.com:8080",
    },
    "noport.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "https://origin2.cors.com, http://origin.com",
    },
    "wild.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "http://*.origin.cors.com, http://*.origin.com:8080",
    },
    "wildport.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "http://origin.cors.com:8080, http://*.origin.com:8080",
    },
    "comma.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "https://origin-123.cors.com:8080,   ,https://origin-321.cors.com:8080,",
    },
    "scheme.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "test://localhost, tauri://localhost:3000",
    },
    "tuned.cors": {
        "enable-cors": "true",
        "cors-allow-methods": "POST, GET",
        "cors-allow-headers": "DNT, User-Agent",
        "cors-expose-headers": "X-CustomResponseHeader, X-CustomSecondHeader",
        "cors-allow-credentials": "false",
        "cors-max-age": "200",
    },
    "off.cors": {"enable-cors": "false", "cors-allow-origin": "https://a.test"},
    "bad.cors": {"enable-cors": "true", "cors-allow-origin": "https://a.test/path"},
    "denied.cors": {"enable-cors": "true", "whitelist-source-range": "not-a-range"},
    "redirect.cors": {
        "enable-cors": "true",
        "cors-allow-origin": "https://a.test",
        "permanent-redirect": "https://elsewhere.test/",
    },
}


def _ingresses() -> list[Raw]:
    return [
        ingress(
            host.replace(".", "-"),
            annotations={N + k: v for k, v in annotations.items()},
            rules=[rule(host)],
        )
        for host, annotations in CORS_INGRESSES.items()
    ]


def _compile(pods: list[Pod]) -> CompileResult:
    return compiled(*_ingresses(), pod=(pods[0].host, pods[0].port))


class Row(NamedTuple):
    host: str
    origin: str | None
    fields: dict[str, str | None]  # the client's CORS fields (None: absent)
    method: str = "GET"
    status: int = 200
    target: str = "/echo"


def _allowed(origin: str, **changes: str | None) -> dict[str, str | None]:
    fields = {ACAO: origin, **DEFAULTS}
    fields.update({"-".join(w.capitalize() for w in k.split("_")): v for k, v in changes.items()})
    return fields


ROWS: dict[str, Row] = {
    # cors.go "should enable cors" / "should not break functionality - without `*`": every
    # request gets the fields, Origin or not, with "*" (set $http_origin *).
    "enable-default": Row("default.cors", None, _allowed("*")),
    "default-any-origin": Row("default.cors", "https://x.test", _allowed("*")),
    # cors.go "should not break functionality".
    "star": Row("star.cors", None, _allowed("*")),
    # cors.go "should not break functionality with extra domain".
    "star-extra-domain": Row("star-extra.cors", None, _allowed("*")),
    # cors.go "should allow - missing origins (should allow all origins)".
    "blank-origins-all": Row("blank.cors", "http://origin.com", _allowed("*")),
    "blank-origins-any": Row("blank.cors", "test.origin.com", _allowed("*")),
    # cors.go "should allow origin for cors".
    "one-origin": Row(
        "one.cors", "https://origin.cors.com:8080", _allowed("https://origin.cors.com:8080")
    ),
    # nginx matches with ~* (case-insensitive) and echoes $http_origin as sent.
    "one-origin-case": Row(
        "one.cors", "HTTPS://Origin.Cors.com:8080", _allowed("HTTPS://Origin.Cors.com:8080")
    ),
    "one-origin-none": Row("one.cors", None, NONE),
    # cors.go "should allow - single origin for multiple cors values".
    "list-second": Row(
        "two.cors", "https://origin2.cors.com", _allowed("https://origin2.cors.com")
    ),
    "list-first": Row(
        "two.cors", "https://origin.cors.com:8080", _allowed("https://origin.cors.com:8080")
    ),
    # cors.go "should not allow - single origin for multiple cors values".
    "list-other": Row("noport.cors", "http://no.origin.com", NONE),
    # cors.go "should allow correct origins - single origin for multiple cors values": the
    # entry without a scheme is skipped, the others apply.
    "skipped-entry": Row("skip.cors", "origin.cors.com:8080", NONE),
    "skipped-entry-others": Row("skip.cors", "https://origin.com", _allowed("https://origin.com")),
    # cors.go "should not match": the dots are literal.
    "not-match": Row("dot.cors", "https://fooxbar.com", NONE),
    # cors.go "should allow - single origin with required port".
    "port-required": Row(
        "ports.cors", "http://origin.cors.com:8080", _allowed("http://origin.cors.com:8080")
    ),
    # cors.go "should not allow - single origin with port and origin without port".
    "port-given-not-listed": Row("noport.cors", "https://origin2.cors.com:8080", NONE),
    # cors.go "should not allow - single origin without port and origin with required port".
    "port-missing": Row("ports.cors", "http://origin.com", NONE),
    # cors.go "should allow - matching origin with wildcard origin (2 subdomains)".
    "wildcard": Row(
        "wild.cors", "http://foo.origin.cors.com", _allowed("http://foo.origin.cors.com")
    ),
    "wildcard-dash": Row(
        "wild.cors", "http://bar-foo.origin.cors.com", _allowed("http://bar-foo.origin.cors.com")
    ),
    # cors.go "should not allow - unmatching origin with wildcard origin (2 subdomains)".
    "wildcard-one-label": Row("wild.cors", "http://bar.foo.origin.cors.com", NONE),
    # The wildcard stands for one label, not none.
    "wildcard-not-empty": Row("wild.cors", "http://.origin.cors.com", NONE),
    # cors.go "should allow - matching origin+port with wildcard origin".
    "wildcard-port": Row(
        "wildport.cors", "http://abc.origin.com:8080", _allowed("http://abc.origin.com:8080")
    ),
    # cors.go "should not allow - portless origin with wildcard origin".
    "wildcard-portless": Row("wildport.cors", "http://abc.origin.com", NONE),
    # cors.go "should allow correct origins - missing subdomain + origin with wildcard origin
    # and correct origin".
    "wildcard-missing-label": Row("wildport.cors", "http://origin.com:8080", NONE),
    "wildcard-with-exact": Row(
        "wildport.cors", "http://bar.origin.com:8080", _allowed("http://bar.origin.com:8080")
    ),
    # cors.go "should allow correct origin but not others - cors allow origin annotations
    # contain trailing comma".
    "comma-first": Row(
        "comma.cors",
        "https://origin-123.cors.com:8080",
        _allowed("https://origin-123.cors.com:8080"),
    ),
    "comma-second": Row(
        "comma.cors",
        "https://origin-321.cors.com:8080",
        _allowed("https://origin-321.cors.com:8080"),
    ),
    "comma-unknown": Row("comma.cors", "https://unknown.cors.com:8080", NONE),
    # cors.go "should allow - origins with non-http[s] protocols".
    "scheme-test": Row("scheme.cors", "test://localhost", _allowed("test://localhost")),
    "scheme-tauri": Row(
        "scheme.cors", "tauri://localhost:3000", _allowed("tauri://localhost:3000")
    ),
    # cors.go "should set cors methods to only allow POST, GET", "should allow headers for
    # cors", "should expose headers for cors", "should set cors max-age", "should disable cors
    # allow credentials".
    "tuned": Row(
        "tuned.cors",
        "https://x.test",
        _allowed(
            "*",
            access_control_allow_methods="POST, GET",
            access_control_allow_headers="DNT, User-Agent",
            access_control_expose_headers="X-CustomResponseHeader, X-CustomSecondHeader",
            access_control_max_age="200",
            access_control_allow_credentials=None,
        ),
    ),
    # The template's preflight: OPTIONS from an allowed origin is answered 204 by nginx with
    # the same fields (the pod is not asked; nginx drops the body fields of a 204).
    "preflight-star": Row("default.cors", "https://x.test", _allowed("*"), "OPTIONS", 204),
    "preflight-star-no-origin": Row("default.cors", None, _allowed("*"), "OPTIONS", 204),
    "preflight-listed": Row(
        "one.cors",
        "https://origin.cors.com:8080",
        _allowed("https://origin.cors.com:8080"),
        "OPTIONS",
        204,
    ),
    "preflight-wildcard": Row(
        "wild.cors",
        "http://foo.origin.cors.com",
        _allowed("http://foo.origin.cors.com"),
        "OPTIONS",
        204,
    ),
    # An OPTIONS request from an origin not allowed is not a preflight for nginx ($cors is
    # "options"): the pod answers it, without CORS fields.
    "options-unlisted": Row("one.cors", "https://other.test", NONE, "OPTIONS", 200),
    # Other methods from an allowed origin reach the pod and get the fields.
    "post-listed": Row(
        "one.cors", "https://origin.cors.com:8080", _allowed("https://origin.cors.com:8080"), "POST"
    ),
    # enable-cors "false": the cors-* annotations do nothing.
    "disabled": Row("off.cors", "https://a.test", NONE),
    "disabled-options": Row("off.cors", "https://a.test", NONE, "OPTIONS", 200),
    # A cors-allow-origin that does not read allows no origin (ingress-nginx would allow all).
    "invalid-origins-none": Row("bad.cors", "https://a.test", NONE),
    "invalid-origins-no-preflight": Row("bad.cors", "https://a.test", NONE, "OPTIONS", 200),
    # A denied location (a source range that does not read: 503) has no CORS block.
    "denied-no-preflight": Row("denied.cors", "https://x.test", NONE, "OPTIONS", 503),
    # The preflight's `return 204` comes before the permanent-redirect's `return` in the
    # location; other requests are redirected, with the CORS fields (more_set_headers applies
    # to every status).
    "preflight-before-redirect": Row(
        "redirect.cors", "https://a.test", _allowed("https://a.test"), "OPTIONS", 204
    ),
    "redirect-with-fields": Row(
        "redirect.cors", "https://a.test", _allowed("https://a.test"), "GET", 301
    ),
}


async def _request(port: int, row: Row, target: str | None = None) -> Response:
    headers = {} if row.origin is None else {"Origin": row.origin}
    client = await Client.connect(port)
    try:
        return await client.request(row.method, target or row.target, headers, host=row.host)
    finally:
        await client.close()


@pytest.mark.parametrize("row", [pytest.param(r, id=name) for name, r in ROWS.items()])
async def test_cors(pods: list[Pod], row: Row) -> None:
    result = _compile(pods)
    async with running(result.snapshot) as proxy:
        before = pods[0].requests
        resp = await _request(proxy.http_port, row)
        assert resp.status == row.status, resp.body
        for name, value in row.fields.items():
            assert resp.header_all(name) == ([] if value is None else [value]), name
        reached = pods[0].requests - before
        if row.status == 204:
            # Answered by the proxy: the pod never saw it, and a 204 has no body fields.
            assert reached == 0
            assert resp.body == b""
            assert resp.header("Content-Length") is None
            assert resp.header("Content-Type") is None
        assert resp.header("Vary") is None  # ingress-nginx adds no Vary: Origin


# The pod's own CORS fields: replaced for an allowed origin (more_set_headers), kept for
# another (no CORS block applies).
POD_FIELDS = "/fields?f=Access-Control-Allow-Origin:%20https://pod.test"


async def test_pod_fields_replaced_only_for_allowed_origins(pods: list[Pod]) -> None:
    result = _compile(pods)
    async with running(result.snapshot) as proxy:
        allowed = Row("one.cors", "https://origin.cors.com:8080", {})
        resp = await _request(proxy.http_port, allowed, POD_FIELDS)
        assert resp.header_all(ACAO) == ["https://origin.cors.com:8080"]
        other = Row("one.cors", "https://other.test", {})
        resp = await _request(proxy.http_port, other, POD_FIELDS)
        assert resp.header_all(ACAO) == ["https://pod.test"]
        star = Row("default.cors", "https://other.test", {})
        resp = await _request(proxy.http_port, star, POD_FIELDS)
        assert resp.header_all(ACAO) == ["*"]


async def test_preflight_keeps_the_connection(pods: list[Pod]) -> None:
    # The 204 is a complete answer: the next request on the connection is served.
    result = _compile(pods)
    async with running(result.snapshot) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            headers = {"Origin": "https://origin.cors.com:8080"}
            first = await client.request("OPTIONS", "/", headers, host="one.cors")
            second = await client.request("GET", "/", headers, host="one.cors")
        finally:
            await client.close()
        assert (first.status, second.status) == (204, 200)
        assert second.json()["pod"] == pods[0].host


def test_problems(pods: list[Pod]) -> None:
    reasons = {(p.ref, p.reason) for p in _compile(pods).problems}
    assert ("default/bad-cors", "InvalidAnnotation") in reasons
    assert not any(ref == "default/skip-cors" for ref, _ in reasons)
