"""The pod's response fields rewritten, and the per-Ingress access log, through real sockets.

Each host below is an Ingress compiled by the real compiler from ingress-nginx's annotations
(proxy-redirect-from/-to, proxy-cookie-domain/-path: nginx's proxy_redirect,
proxy_cookie_domain and proxy_cookie_path; enable-access-log) in front of one test pod, which
answers `/fields` with the response fields the row chooses, byte for byte. Each row says what
the client then sees. The rules in detail: tests/unit/proxy/test_fieldrewrite.py.
"""

from __future__ import annotations

import json
from typing import NamedTuple
from urllib.parse import urlencode

import pytest
from backends import Client, Pod
from tls_env import compiled, running, tls_client

from tests.kube_factory import ingress, rule

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
POD = "http://pod.internal:8080/"

HOSTS: dict[str, dict[str, str]] = {
    # proxy.go "should set proxy_redirect to hello.com goodbye.com", with a pod's own URL
    "redirect": {"proxy-redirect-from": POD, "proxy-redirect-to": "/app/"},
    "redirect-absolute": {
        "proxy-redirect-from": POD,
        "proxy-redirect-to": "https://shop.example/app/",
    },
    # proxy.go "should set proxy_redirect to off" / "to default": nothing rewritten
    "redirect-off": {"proxy-redirect-from": "off", "proxy-redirect-to": "/app/"},
    "redirect-default": {"proxy-redirect-from": "default", "proxy-redirect-to": "/app/"},
    # proxy.go "should setup proxy cookies"
    "cookies": {"proxy-cookie-domain": "localhost example.org", "proxy-cookie-path": "/one/ /"},
    "plain": {},
}


class Case(NamedTuple):
    host: str
    fields: tuple[str, ...]  # what the pod sends
    seen: dict[str, list[str]]  # what the client sees, per field name
    scheme: str = "http"
    status: int = 302


LOCATION = f"Location: {POD}login?next=/"
CASES: dict[str, Case] = {
    # A relative replacement becomes absolute: the request's scheme and host, no port
    # (nginx's absolute_redirect with ingress-nginx's port_in_redirect off).
    "location-relative": Case(
        "redirect", (LOCATION,), {"Location": ["http://redirect.test/app/login?next=/"]}
    ),
    "location-relative-https": Case(
        "redirect",
        (LOCATION,),
        {"Location": ["https://redirect.test/app/login?next=/"]},
        scheme="https",
    ),
    "location-absolute": Case(
        "redirect-absolute", (LOCATION,), {"Location": ["https://shop.example/app/login?next=/"]}
    ),
    # Any status carries a rewritable Location (201 Created, ...).
    "location-of-201": Case(
        "redirect",
        (f"Location: {POD}items/7",),
        {"Location": ["http://redirect.test/app/items/7"]},
        status=201,
    ),
    "location-other-prefix": Case(
        "redirect",
        ("Location: http://elsewhere.example/x",),
        {"Location": ["http://elsewhere.example/x"]},
    ),
    "refresh": Case(
        "redirect",
        (f"Refresh: 3; url={POD}done",),
        {"Refresh": ["3; url=/app/done"]},
        status=200,
    ),
    "redirect-off": Case("redirect-off", (LOCATION,), {"Location": [LOCATION[10:]]}),
    "redirect-default": Case("redirect-default", (LOCATION,), {"Location": [LOCATION[10:]]}),
    # A redirect rule leaves cookies alone, a cookie rule the Location.
    "redirect-keeps-cookies": Case(
        "redirect",
        ("Set-Cookie: s=1; Domain=localhost; Path=/one/",),
        {"Set-Cookie": ["s=1; Domain=localhost; Path=/one/"]},
        status=200,
    ),
    "cookies": Case(
        "cookies",
        (
            "Set-Cookie: sid=abc; Domain=.LocalHost; Path=/one/cart; HttpOnly",
            "Set-Cookie: theme=dark; Path=/other",
            "Set-Cookie: lang=en ;domain= localhost",
            LOCATION,
        ),
        {
            "Set-Cookie": [
                "sid=abc; Domain=.example.org; Path=/cart; HttpOnly",
                "theme=dark; Path=/other",
                "lang=en; domain=example.org",
            ],
            "Location": [LOCATION[10:]],
        },
        status=200,
    ),
    "plain": Case(
        "plain",
        (LOCATION, "Set-Cookie: s=1; Domain=localhost; Path=/one/", "Refresh: 1; url=/x"),
        {
            "Location": [LOCATION[10:]],
            "Set-Cookie": ["s=1; Domain=localhost; Path=/one/"],
            "Refresh": ["1; url=/x"],
        },
    ),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_response_fields(pod: Pod, case: Case) -> None:
    ingresses = [
        ingress(host, annotations={N + k: v for k, v in ann.items()}, rules=[rule(f"{host}.test")])
        for host, ann in HOSTS.items()
    ]
    result = compiled(*ingresses, pod=(pod.host, pod.port))
    assert result.problems == ()
    query = urlencode([("code", str(case.status)), *(("f", f) for f in case.fields)])
    async with running(result.snapshot) as proxy:
        host = f"{case.host}.test"
        if case.scheme == "https":
            client = await tls_client(proxy.https_port, host)
        else:
            client = await Client.connect(proxy.http_port)
        try:
            resp = await client.request("GET", f"/fields?{query}", host=host)
        finally:
            await client.close()
    assert resp.status == case.status and resp.body == b"ok"
    for name, values in case.seen.items():
        assert resp.header_all(name) == values


LOGGED: dict[str, str] = {"quiet": "false", "loud": "true", "default": ""}


@pytest.mark.parametrize(
    ("host", "logged"),
    [("quiet", False), ("loud", True), ("default", True)],
)
async def test_enable_access_log(
    pod: Pod, capsys: pytest.CaptureFixture[str], host: str, logged: bool
) -> None:
    # log.go "set access_log off": enable-access-log "false" drops the Ingress's entries, for
    # its pod's answers and the proxy's own (a 413 of proxy-body-size) alike; other Ingresses
    # keep theirs.
    ingresses = [
        ingress(
            name,
            annotations={N + "proxy-body-size": "4"}
            | ({N + "enable-access-log": value} if value else {}),
            rules=[rule(f"{name}.test")],
        )
        for name, value in LOGGED.items()
    ]
    result = compiled(*ingresses, pod=(pod.host, pod.port))
    async with running(result.snapshot, access_log=True) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            assert (await client.request("GET", "/a", host=f"{host}.test")).status == 200
            refused = await client.request("POST", "/b", host=f"{host}.test", body=b"12345")
            assert refused.status == 413
        finally:
            await client.close()
        assert proxy.access is not None
        proxy.access.flush()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    assert [(x["status"], x["target"]) for x in lines] == (
        [(200, "/a"), (413, "/b")] if logged else []
    )
    assert pod.requests == 1
