"""Route policies through real sockets: each step kind, their order, the proxy-wide defaults.

Every route of the snapshot below is a host with its own policy (`RouteOptions.policy`) in
front of one test pod; the proxy listens for HTTP and HTTPS. Each row sends one request and
says what answers it: the pod (its status) or the proxy (status, reason in the access log),
with the Location and Strict-Transport-Security the client sees.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
from backends import Client, Pod
from tls_env import running, tls_client

from proxy.config import (
    HSTS,
    Backend,
    BodyLimit,
    Endpoint,
    HTTPSRedirect,
    PathRule,
    PolicyStep,
    Refuse,
    RouteOptions,
    RouteTable,
    Snapshot,
    VirtualHost,
)

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

DENIED = Refuse(403, "AccessControlNotEnforced")
POLICIES: dict[str, tuple[PolicyStep, ...]] = {
    "plain.test": (),
    "refused.test": (DENIED,),
    "redirect.test": (HTTPSRedirect(),),
    "moved.test": (HTTPSRedirect(301),),
    # Order matters: the first step that answers ends the request.
    "refuse-first.test": (DENIED, HTTPSRedirect()),
    "redirect-first.test": (HTTPSRedirect(), DENIED),
    "small.test": (BodyLimit(10),),
    "unlimited.test": (BodyLimit(0),),  # overrides the proxy's --max-body-bytes
    "hsts.test": (HSTS(60, include_subdomains=False),),  # overrides the proxy's --hsts values
}
PROXY_HSTS = "max-age=31536000; includeSubDomains"


def _snapshot(pod: Pod) -> Snapshot:
    vhosts = tuple(
        VirtualHost(
            host,
            (
                PathRule(
                    "/",
                    "prefix",
                    "ns/web/80",
                    "ns/" + host.removesuffix(".test"),
                    "ns/web",
                    80,
                    "Prefix",
                    RouteOptions(policy=steps),
                ),
            ),
        )
        for host, steps in POLICIES.items()
    )
    backend = Backend("ns/web/80", (Endpoint(pod.host, pod.port),))
    return Snapshot(RouteTable(vhosts), (backend,), version=1)


class Case(NamedTuple):
    scheme: str
    host: str
    method: str
    body: bytes
    status: int
    reason: str | None  # logged with a local answer; None: the pod answered
    location: str | None = None
    hsts: str | None = None  # Strict-Transport-Security the client sees


CASES: dict[str, Case] = {
    "no-policy": Case("http", "plain.test", "GET", b"", 200, None),
    "no-policy-https": Case("https", "plain.test", "GET", b"", 200, None, hsts=PROXY_HSTS),
    "refused": Case("http", "refused.test", "GET", b"", 403, DENIED.reason),
    "refused-https-keeps-hsts": Case(
        "https", "refused.test", "POST", b"x", 403, DENIED.reason, hsts=PROXY_HSTS
    ),
    "redirected": Case(
        "http", "redirect.test", "GET", b"", 308, "SSLRedirect", "https://redirect.test/p?q=1"
    ),
    "not-redirected-on-https": Case(
        "https", "redirect.test", "GET", b"", 200, None, hsts=PROXY_HSTS
    ),
    "redirect-status": Case(
        "http", "moved.test", "GET", b"", 301, "SSLRedirect", "https://moved.test/p?q=1"
    ),
    "refusal-first": Case("http", "refuse-first.test", "GET", b"", 403, DENIED.reason),
    "redirect-first": Case(
        "http",
        "redirect-first.test",
        "GET",
        b"",
        308,
        "SSLRedirect",
        "https://redirect-first.test/p?q=1",
    ),
    "redirect-first-https": Case(
        "https", "redirect-first.test", "GET", b"", 403, DENIED.reason, hsts=PROXY_HSTS
    ),
    "body-within": Case("http", "small.test", "POST", b"x" * 10, 200, None),
    "body-over": Case("http", "small.test", "POST", b"x" * 11, 413, "BodyTooLarge"),
    "proxy-limit": Case("http", "plain.test", "POST", b"x" * 101, 413, "BodyTooLarge"),
    "route-unlimited": Case("http", "unlimited.test", "POST", b"x" * 101, 200, None),
    "route-hsts": Case("https", "hsts.test", "GET", b"", 200, None, hsts="max-age=60"),
    "route-hsts-plain": Case("http", "hsts.test", "GET", b"", 200, None),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_policy_steps(pod: Pod, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    async with running(_snapshot(pod), access_log=True, max_body_bytes=100) as proxy:
        if case.scheme == "https":
            client = await tls_client(proxy.https_port, case.host)
        else:
            client = await Client.connect(proxy.http_port)
        try:
            resp = await client.request(case.method, "/p?q=1", host=case.host, body=case.body)
            assert resp.status == case.status
            assert resp.header("Location") == case.location
            # One policy, never the route's and the proxy's both.
            assert resp.header_all("Strict-Transport-Security") == (
                [case.hsts] if case.hsts else []
            )
            if case.reason is None:
                assert pod.requests == 1
            else:
                assert pod.requests == 0  # answered by the proxy: the pod never saw it
                assert resp.header("Server") == "portico"
        finally:
            await client.close()
        assert proxy.access is not None
        proxy.access.flush()
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    assert line["status"] == case.status and line.get("reason") == case.reason
    # A request a route's policy answered is counted for that route.
    assert line["ingress"] == "ns/" + case.host.removesuffix(".test")


async def test_a_refused_request_keeps_the_connection(pod: Pod) -> None:
    async with running(_snapshot(pod)) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            assert (await client.request("GET", "/", host="refused.test")).status == 403
            assert (await client.request("GET", "/", host="plain.test")).status == 200
        finally:
            await client.close()
