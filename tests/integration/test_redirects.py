"""Redirect annotations through real sockets: what the client gets, and that no pod is reached.

Every host below is an Ingress compiled by the real compiler from ingress-nginx's annotations
(permanent-redirect, temporal-redirect and their codes; from-to-www-redirect), served by a proxy
with an HTTP and an HTTPS listener in front of one test pod. Each row sends one request and
checks the status, the Location, the certificate presented over HTTPS where it matters, and
whether the pod saw the request. Rows cite ingress-nginx's e2e tests
(test/e2e/annotations/redirect.go, fromtowwwredirect.go) or its annotations page.

Where Portico differs on purpose the row says so: the from-to-www Location has no port
(ingress-nginx: `http://fromtowwwredirect.bar.com:80/foo`, its listener's port), and an
unreadable URL answers 503 instead of the Ingress being dropped or forwarded.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
from backends import Client, Pod
from tls_env import compiled, der, peer_der, running, tls_client

from tests.kube_factory import Raw, ingress, make_cert, rule, tls_entry, tls_secret

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
E2E_URL = "http://redirect.example.com"  # redirect.go's redirectURL
GOOGLE = "https://www.google.com"  # annotations.md's example
WWW = {"from-to-www-redirect": "true"}

# The certificates of the HTTPS rows: one covering both names, one only the bare name.
BOTH_NAMES = make_cert("example.com", "www.example.com")
BARE_ONLY = make_cert("plain.example")

HOSTS: dict[str, dict[str, str]] = {
    "moved.test": {"permanent-redirect": E2E_URL},
    "custom.test": {"permanent-redirect": E2E_URL, "permanent-redirect-code": "302"},
    "moved308.test": {"permanent-redirect": E2E_URL, "permanent-redirect-code": "308"},
    "temporal.test": {"temporal-redirect": GOOGLE},
    "temporal307.test": {"temporal-redirect": GOOGLE, "temporal-redirect-code": "307"},
    "temporal308.test": {"temporal-redirect": GOOGLE, "temporal-redirect-code": "308"},
    "both.test": {"temporal-redirect": GOOGLE, "permanent-redirect": E2E_URL},
    "query.test": {"permanent-redirect": "https://new.example/landing?from=old&x=1"},
    "invalid.test": {"permanent-redirect": "ok.com"},
    "fromtowwwredirect.bar.com": WWW,
    "www.bare.test": WWW,
    "open.test": {},
}


def _ingresses() -> list[Raw]:
    out = [
        ingress(
            host.replace(".", "-"),
            annotations={N + k: v for k, v in annotations.items()},
            rules=[rule(host)],
        )
        for host, annotations in HOSTS.items()
    ]
    out += [
        # A TLS host: plain HTTP would get the HTTPS redirect, but permanent-redirect is first.
        tls_secret("tlsmoved", hosts=("tlsmoved.test",)),
        ingress(
            "tlsmoved",
            annotations={N + "permanent-redirect": E2E_URL},
            rules=[rule("tlsmoved.test")],
            tls=[tls_entry("tlsmoved", "tlsmoved.test")],
        ),
        # fromtowwwredirect.go "should redirect from www HTTPS to HTTPS": the Secret has both
        # names, the Ingress lists both under tls, its rule host is the bare name.
        tls_secret("both-names", cert_pem=BOTH_NAMES[0], key_pem=BOTH_NAMES[1]),
        ingress(
            "www-tls",
            annotations={N + "from-to-www-redirect": "true"},
            rules=[rule("example.com")],
            tls=[tls_entry("both-names", "example.com", "www.example.com")],
        ),
        # A certificate without the www. name: the other name still redirects, with the
        # default certificate (ingress-nginx: "Redirects will not work for HTTPS to HTTPS").
        tls_secret("bare-only", cert_pem=BARE_ONLY[0], key_pem=BARE_ONLY[1]),
        ingress(
            "www-not-covered",
            annotations={N + "from-to-www-redirect": "true"},
            rules=[rule("plain.example")],
            tls=[tls_entry("bare-only", "plain.example")],
        ),
    ]
    return out


class Case(NamedTuple):
    scheme: str
    host: str  # the Host header (and SNI over HTTPS)
    target: str
    status: int
    location: str | None  # None: no Location
    reason: str | None = None  # logged with a local answer; None: the pod answered
    method: str = "GET"
    body: bytes = b""
    certificate: bytes | None = None  # the PEM the HTTPS listener must present


CASES: dict[str, Case] = {
    # redirect.go "should respond with a standard redirect code": 301, Location as written
    "permanent": Case("http", "moved.test", "/something", 301, E2E_URL, "Redirect"),
    # ... and nothing of the request is appended (nginx `return 301 <url>`)
    "permanent-path-not-appended": Case(
        "http", "moved.test", "/a/b/?c=d", 301, E2E_URL, "Redirect"
    ),
    "permanent-https": Case("https", "moved.test", "/something", 301, E2E_URL, "Redirect"),
    "permanent-post": Case(
        "http", "moved.test", "/form", 301, E2E_URL, "Redirect", "POST", b"a=1&b=2"
    ),
    "permanent-head": Case("http", "moved.test", "/", 301, E2E_URL, "Redirect", "HEAD"),
    # redirect.go "should respond with a custom redirect code"
    "permanent-custom-code": Case("http", "custom.test", "/something", 302, E2E_URL, "Redirect"),
    # annotations.md "Permanent Redirect Code": '308'
    "permanent-308": Case("http", "moved308.test", "/", 308, E2E_URL, "Redirect"),
    # annotations.md "Temporal Redirect": 302
    "temporal": Case("http", "temporal.test", "/x", 302, GOOGLE, "Redirect"),
    # annotations.md "Temporal Redirect Code": '307'
    "temporal-307": Case("http", "temporal307.test", "/x", 307, GOOGLE, "Redirect"),
    # redirect.go: the temporal range ends at 307, so 308 is the default 302
    "temporal-308-is-302": Case("http", "temporal308.test", "/x", 302, GOOGLE, "Redirect"),
    # redirect.go Parse: temporal, then permanent
    "temporal-wins": Case("http", "both.test", "/x", 302, GOOGLE, "Redirect"),
    "url-query-kept": Case(
        "http", "query.test", "/old", 301, "https://new.example/landing?from=old&x=1", "Redirect"
    ),
    # before the HTTPS redirect of a TLS host (nginx's `return` runs before the Lua rewrite)
    "before-https-redirect": Case("http", "tlsmoved.test", "/x", 301, E2E_URL, "Redirect"),
    # Portico: an unreadable URL fails closed (different: ingress-nginx forwards this one)
    "invalid-url-fails-closed": Case("http", "invalid.test", "/x", 503, None, "InvalidRedirect"),
    # fromtowwwredirect.go "should redirect from www HTTP to HTTP" (Location without ":80")
    "www-to-bare": Case(
        "http",
        "www.fromtowwwredirect.bar.com",
        "/foo",
        308,
        "http://fromtowwwredirect.bar.com/foo",
        "FromToWWWRedirect",
    ),
    # ngx_srv_redirect.lua: the request URI is kept, one trailing "/" dropped
    "www-query-kept": Case(
        "http",
        "www.fromtowwwredirect.bar.com",
        "/a/b?x=1&y=2",
        308,
        "http://fromtowwwredirect.bar.com/a/b?x=1&y=2",
        "FromToWWWRedirect",
    ),
    "www-trailing-slash": Case(
        "http",
        "www.fromtowwwredirect.bar.com",
        "/foo/",
        308,
        "http://fromtowwwredirect.bar.com/foo",
        "FromToWWWRedirect",
    ),
    "www-root": Case(
        "http",
        "www.fromtowwwredirect.bar.com",
        "/",
        308,
        "http://fromtowwwredirect.bar.com",
        "FromToWWWRedirect",
    ),
    "www-host-port-ignored": Case(
        "http",
        "WWW.fromtowwwredirect.bar.com:8080",
        "/foo",
        308,
        "http://fromtowwwredirect.bar.com/foo",
        "FromToWWWRedirect",
    ),
    "www-post-keeps-method": Case(
        "http",
        "www.fromtowwwredirect.bar.com",
        "/form",
        308,
        "http://fromtowwwredirect.bar.com/form",
        "FromToWWWRedirect",
        "POST",
        b"a=1",
    ),
    "www-host-itself-served": Case("http", "fromtowwwredirect.bar.com", "/foo", 200, None),
    # annotations.md "Redirect from/to www": a www. rule host gets the bare name redirected
    "bare-to-www": Case(
        "http", "bare.test", "/x", 308, "http://www.bare.test/x", "FromToWWWRedirect"
    ),
    # fromtowwwredirect.go "should redirect from www HTTPS to HTTPS": 308 to https://<host>
    # (ingress-nginx: "https://<host>:443"), the host's certificate presented for www.
    "www-https": Case(
        "https",
        "www.example.com",
        "/",
        308,
        "https://example.com",
        "FromToWWWRedirect",
        certificate=BOTH_NAMES[0],
    ),
    # ... "sending request to domain should not redirect to www"
    "www-https-host-served": Case(
        "https", "example.com", "/", 200, None, certificate=BOTH_NAMES[0]
    ),
    # the certificate does not cover www.: redirected all the same, default certificate
    "www-https-not-covered": Case(
        "https",
        "www.plain.example",
        "/a",
        308,
        "https://plain.example/a",
        "FromToWWWRedirect",
    ),
    "www-plain-http-of-tls-host": Case(
        "http", "www.example.com", "/a", 308, "http://example.com/a", "FromToWWWRedirect"
    ),
    "no-annotation": Case("http", "open.test", "/x", 200, None),
    "no-www-for-unannotated": Case("http", "www.open.test", "/x", 404, None, "NoRoute"),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_redirects(pod: Pod, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    result = compiled(*_ingresses(), pod=(pod.host, pod.port))
    assert sorted((p.ref, p.reason) for p in result.problems) == [
        ("default/invalid-test", "InvalidAnnotation"),  # the URL
        ("default/temporal308-test", "InvalidAnnotation"),  # the code
    ]
    async with running(result.snapshot, access_log=True) as proxy:
        if case.scheme == "https":
            client = await tls_client(proxy.https_port, case.host.partition(":")[0].lower())
        else:
            client = await Client.connect(proxy.http_port)
        try:
            resp = await client.request(case.method, case.target, host=case.host, body=case.body)
            if case.certificate is not None:
                assert peer_der(client) == der(case.certificate)
            elif case.scheme == "https" and case.host.startswith("www.plain"):
                assert peer_der(client) != der(BARE_ONLY[0])
        finally:
            await client.close()
        assert resp.status == case.status
        assert resp.header("Location") == case.location
        assert pod.requests == (1 if case.reason is None else 0)
        assert proxy.access is not None
        proxy.access.flush()
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    assert (line["status"], line.get("reason")) == (case.status, case.reason)
