"""Portico's defaults against ingress-nginx's: the same, or a difference the catalogue lists.

Every row of `catalogue.DEFAULTS` is covered here (a test checks it): a row marked the same
has requests below, each citing where ingress-nginx states that behaviour (paths in
kubernetes/ingress-nginx); a row marked different is listed, and so printed by
`portico compat-report`. The proxy runs with its default settings in front of one test pod:

- `tls.test`: an Ingress with TLS (redirected), with a cert-manager solver path added to it
  (cert-manager's `http01-edit-in-place`);
- `plain.test`: an Ingress without annotations.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from backends import Client, Pod
from tls_env import compiled, running, tls_client

from controller.compiler.catalogue import DEFAULTS
from proxy.settings import ProxySettings
from tests.kube_factory import ingress, path, rule, tls_entry

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

MiB = 1024 * 1024
TOKEN = "/.well-known/acme-challenge/Zb2Kc1pQ9xR0aLw4T7mYv3NfH8sDgJ6eUoB5iWqXrCt"
CONFIGMAP_DOC = "docs/user-guide/nginx-configuration/configmap.md"


class Case(NamedTuple):
    topic: str  # the DEFAULTS row
    source: str  # where ingress-nginx says so
    scheme: str
    host: str
    target: str
    status: int
    body: int = 0  # bytes of request body (POST)
    headers: dict[str, str] | None = None
    location: str | None = None
    hsts: str | None = None
    forwarded_for: str | None = None  # the X-Forwarded-For the pod sees


CASES: dict[str, Case] = {
    "body-at-the-limit": Case(
        "Request body size", f"{CONFIGMAP_DOC}#proxy-body-size: 1m", "http", "plain", "/", 200, MiB
    ),
    "body-over-the-limit": Case(
        "Request body size",
        f"{CONFIGMAP_DOC}#proxy-body-size: 1m",
        "http",
        "plain",
        "/",
        413,
        MiB + 1,
    ),
    "redirect-308": Case(
        "HTTPS redirect of TLS hosts",
        f"{CONFIGMAP_DOC}#http-redirect-code: 308; test/e2e/annotations/forcesslredirect.go",
        "http",
        "tls",
        "/a?b=1",
        308,
        location="https://tls.test/a?b=1",
    ),
    "redirect-of-root": Case(
        "Trailing slash in HTTPS redirects",
        "test/e2e/annotations/forcesslredirect.go: GET / -> https://forcesslredirect.bar.com",
        "http",
        "tls",
        "/",
        308,
        location="https://tls.test",
    ),
    "redirect-drops-a-trailing-slash": Case(
        "Trailing slash in HTTPS redirects",
        "rootfs/etc/nginx/lua/lua_ingress.lua: preserve_trailing_slash false",
        "http",
        "tls",
        "/a/",
        308,
        location="https://tls.test/a",
    ),
    "acme-challenge-not-redirected": Case(
        "ACME HTTP-01 challenges on TLS hosts",
        f"{CONFIGMAP_DOC}#no-tls-redirect-locations: /.well-known/acme-challenge",
        "http",
        "tls",
        TOKEN,
        200,
    ),
    "hsts-on-tls-hosts": Case(
        "HSTS",
        f"{CONFIGMAP_DOC}#hsts, #hsts-max-age, #hsts-include-subdomains; test/e2e/settings/tls.go",
        "https",
        "tls",
        "/",
        200,
        hsts="max-age=31536000; includeSubDomains",
    ),
    "forwarded-headers-replaced": Case(
        "Forwarded headers from clients",
        f"{CONFIGMAP_DOC}#use-forwarded-headers: false; test/e2e/settings/forwarded_headers.go",
        "http",
        "plain",
        "/echo",
        200,
        headers={"X-Forwarded-For": "203.0.113.9"},
        forwarded_for="127.0.0.1",
    ),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_default(pod: Pod, case: Case) -> None:
    app = ingress(
        "app",
        rules=[rule("tls.test", path("/"), path(TOKEN, path_type="ImplementationSpecific"))],
        tls=[tls_entry(None, "tls.test")],
    )
    plain = ingress("plain", rules=[rule("plain.test")])
    result = compiled(app, plain, pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:  # the default settings
        if case.scheme == "https":
            client = await tls_client(proxy.https_port, f"{case.host}.test")
        else:
            client = await Client.connect(proxy.http_port)
        try:
            method = "POST" if case.body else "GET"
            resp = await client.request(
                method, case.target, case.headers, b"x" * case.body, host=f"{case.host}.test"
            )
        finally:
            await client.close()
    assert resp.status == case.status
    assert resp.header("Location") == case.location
    if case.hsts is not None:
        assert resp.header("Strict-Transport-Security") == case.hsts
    assert pod.requests == (1 if case.status == 200 else 0)
    if case.forwarded_for is not None:
        seen = {k.lower(): v for k, v in resp.json()["headers"]}
        assert seen["x-forwarded-for"] == case.forwarded_for


def test_upstream_timeouts() -> None:
    # CONFIGMAP_DOC#proxy-connect-timeout: 5, #proxy-read-timeout: 60, #proxy-send-timeout: 60
    # (test/e2e/settings/proxy_connect_timeout.go, proxy_read_timeout.go, proxy_send_timeout.go).
    settings = ProxySettings()
    assert (
        settings.upstream_connect_timeout,
        settings.upstream_read_timeout,
        settings.upstream_send_timeout,
    ) == (5.0, 60.0, 60.0)


# The rows marked different, each with why (and so in compat-report).
DIFFERENT = {
    # Portico sends HSTS on every HTTPS response; ingress-nginx only for hosts with a
    # certificate of their own (rootfs/etc/nginx/lua/lua_ingress.lua: header()).
    "HSTS",
    # CONFIGMAP_DOC#no-auth-locations: Portico does not authenticate yet, so it fails closed.
    "Authentication of ACME challenge paths",
    # CONFIGMAP_DOC#proxy-request-buffering: "on"; Portico streams.
    "Request bodies",
}


def test_every_default_is_tested_or_listed_as_different() -> None:
    tested = {c.topic for c in CASES.values()} | {"Upstream timeouts"}
    same = {d.topic for d in DEFAULTS if d.status == "supported"}
    different = {d.topic for d in DEFAULTS if d.status == "different"}
    assert different == DIFFERENT
    assert same | different == {d.topic for d in DEFAULTS}
    # A row marked the same has requests above (HSTS: its header on TLS hosts is the same).
    assert same <= tested and tested - same <= {"HSTS"}
    assert all(d.portico for d in DEFAULTS if d.status == "different")
