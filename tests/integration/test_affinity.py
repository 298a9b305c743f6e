"""Sticky sessions and consistent hashing through real sockets, six echo pods behind one Service.

Each host below is an Ingress compiled by the real compiler from ingress-nginx's annotations
(the model: test/e2e/annotations/affinity.go, affinitymode.go, upstreamhashby.go, and
docs/user-guide/nginx-configuration/annotations.md#session-affinity). The pods are `portico
echo` on 127.0.0.2 ... 127.0.0.7, each answering with its name, so a test sees where every
request went; a pod "goes away" when a snapshot without its endpoint is applied, as an
EndpointSlice update would.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from backends import Client
from serving import echo_pods

from controller.compiler import CompileSettings, compile_view
from proxy.affinity import backend_tag, cookie_time
from proxy.config import Snapshot
from proxy.server import ProxyServer
from proxy.settings import ProxySettings
from tests.kube_factory import (
    endpoint,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    store_of,
)

pytestmark = [pytest.mark.timeout(60)]

N = "nginx.ingress.kubernetes.io/"
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 8)]
DEAD = "127.0.0.9"  # listed as a pod, nobody listens there: connect refused

# host -> (annotations, Ingress path)
HOSTS: dict[str, tuple[dict[str, str], str]] = {
    "defaults": ({"affinity": "cookie"}, "/"),
    "serverid": ({"affinity": "cookie", "session-cookie-name": "SERVERID"}, "/"),
    "path": ({"affinity": "cookie", "session-cookie-name": "SERVERID"}, "/something"),
    "expires": (
        {
            "affinity": "cookie",
            "session-cookie-name": "ExpiresCookie",
            "session-cookie-expires": "172800",
            "session-cookie-max-age": "259200",
        },
        "/",
    ),
    "domain": (
        {
            "affinity": "cookie",
            "session-cookie-name": "DomainCookie",
            "session-cookie-domain": "foo.bar",
        },
        "/",
    ),
    "secure": ({"affinity": "cookie", "session-cookie-secure": "true"}, "/"),
    "not-secure": ({"affinity": "cookie", "session-cookie-secure": "false"}, "/"),
    "regex": (
        {"affinity": "cookie", "use-regex": "true", "session-cookie-path": "/foo/bar"},
        "/foo/.*",
    ),
    "samesite": (
        {
            "affinity": "cookie",
            "session-cookie-samesite": "None",
            "session-cookie-conditional-samesite-none": "true",
        },
        "/",
    ),
    "strict": ({"affinity": "cookie", "session-cookie-samesite": "strict"}, "/"),
    "balanced": ({"affinity": "cookie", "affinity-mode": "balanced"}, "/"),
    "persistent": ({"affinity": "cookie", "affinity-mode": "persistent"}, "/"),
    "invalid-affinity": ({"affinity": "ip"}, "/"),
    "hash-uri": ({"upstream-hash-by": "$request_uri"}, "/"),
    "hash-header": ({"upstream-hash-by": "$http_x_user"}, "/"),
    "hash-cookie": ({"upstream-hash-by": "$cookie_user"}, "/"),
    "hash-arg": ({"upstream-hash-by": "$arg_id"}, "/"),
    "hash-combined": ({"upstream-hash-by": "$host$request_uri"}, "/"),
    "subset": (
        {
            "upstream-hash-by": "$request_uri",
            "upstream-hash-by-subset": "true",
            "upstream-hash-by-subset-size": "3",
        },
        "/",
    ),
    "sticky-over-hash": ({"affinity": "cookie", "upstream-hash-by": "$request_uri"}, "/"),
}
# Hosts in front of the Service "flaky", whose first endpoint is DEAD.
FLAKY_HOSTS: dict[str, dict[str, str]] = {
    "keep-on-failure": {"affinity": "cookie", "affinity-mode": "persistent"},
    "change-on-failure": {
        "affinity": "cookie",
        "affinity-mode": "persistent",
        "session-cookie-change-on-failure": "true",
    },
}


def _compile(port: int, addresses: list[str]) -> Snapshot:
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", port)]),
        endpoint_slice(
            "web-1",
            endpoints=[endpoint(a, pod=f"web-{a.rsplit('.', 1)[1]}") for a in addresses],
            ports=[("http", port)],
        ),
        service("flaky", ports=[service_port(80, "http", port)]),
        endpoint_slice("flaky-1", "flaky", endpoints=[DEAD, ADDRESSES[0]], ports=[("http", port)]),
    ]
    for host, (written, ingress_path) in HOSTS.items():
        objects.append(
            ingress(
                host,
                annotations={N + k: v for k, v in written.items()},
                rules=[
                    rule(f"{host}.test", path(ingress_path, path_type="ImplementationSpecific"))
                ],
            )
        )
    for host, written in FLAKY_HOSTS.items():
        objects.append(
            ingress(
                host,
                annotations={N + k: v for k, v in written.items()},
                rules=[rule(f"{host}.test", path("/", "flaky"))],
            )
        )
    result = compile_view(store_of(*objects), CompileSettings())
    invalid = {p.ref for p in result.problems if p.reason == "InvalidAnnotation"}
    assert invalid == {"default/invalid-affinity"}, result.problems
    return result.snapshot


class Proxy(NamedTuple):
    server: ProxyServer
    pods_port: int
    snapshot: Snapshot


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    pods = [(a, "web", f"web-{a.rsplit('.', 1)[1]}") for a in ADDRESSES]
    async with echo_pods(*pods) as port:
        server = ProxyServer(ProxySettings(access_log=False))
        snapshot = _compile(port, ADDRESSES)
        server.apply(snapshot)
        await server.start(host="127.0.0.1", http_port=0, https_port=0)
        try:
            yield Proxy(server, port, snapshot)
        finally:
            await server.shutdown(1.0)


class Answer(NamedTuple):
    pod: str
    set_cookie: list[str]


async def _get(
    proxy: Proxy, host: str, target: str = "/", headers: dict[str, str] | None = None
) -> Answer:
    client = await Client.connect(proxy.server.http_port)
    try:
        resp = await client.request("GET", target, headers, host=f"{host}.test")
    finally:
        await client.close()
    assert resp.status == 200, resp.body
    return Answer(resp.json()["pod"], resp.header_all("Set-Cookie"))


def _cookie(set_cookie: list[str]) -> str:
    """The name=value pair of the one Set-Cookie given."""
    (field,) = set_cookie
    return field.split(";", 1)[0]


# ---- the cookie as ingress-nginx writes it --------------------------------------------------

TAG = backend_tag("default/web/80")
KEY = r"[0-9a-f]{32}"


class CookieCase(NamedTuple):
    host: str
    target: str
    headers: dict[str, str] | None
    pattern: str  # the whole Set-Cookie field


COOKIE_CASES: dict[str, CookieCase] = {
    # docs: session-cookie-name defaults to INGRESSCOOKIE; sticky.lua: HttpOnly, Path of the rule
    "defaults": CookieCase("defaults", "/", None, rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly"),
    # affinity.go "should set sticky cookie SERVERID"
    "name": CookieCase("serverid", "/", None, rf"SERVERID={KEY}\|{TAG}; Path=/; HttpOnly"),
    # affinity.go "should set the path to /something on the generated cookie"
    "rule-path": CookieCase(
        "path", "/something", None, rf"SERVERID={KEY}\|{TAG}; Path=/something; HttpOnly"
    ),
    # affinity.go "should set cookie with expires" (Expires checked to the minute below)
    "expires": CookieCase(
        "expires",
        "/",
        None,
        rf"ExpiresCookie={KEY}\|{TAG}; Expires=[^;]+; Max-Age=259200; Path=/; HttpOnly",
    ),
    # affinity.go "should set cookie with domain"
    "domain": CookieCase(
        "domain", "/", None, rf"DomainCookie={KEY}\|{TAG}; Domain=foo.bar; Path=/; HttpOnly"
    ),
    # affinity.go "should not set cookie without domain annotation"
    "no-domain": CookieCase("serverid", "/", None, r"[^;]*(; (?!Domain)[^;]*)*"),
    # affinity.go "should set secure in cookie with provided true annotation on http"
    "secure": CookieCase(
        "secure", "/", None, rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; Secure; HttpOnly"
    ),
    # affinity.go "should not set secure in cookie with provided false annotation on http"
    "not-secure": CookieCase(
        "not-secure", "/", None, rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly"
    ),
    # affinity.go "should work with use-regex annotation and session-cookie-path"
    "regex-path": CookieCase(
        "regex", "/foo/x", None, rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/foo/bar; HttpOnly"
    ),
    # annotations.md: session-cookie-samesite; same_site.lua: SameSite=None kept for others
    "samesite-none": CookieCase(
        "samesite",
        "/",
        {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36"},
        rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly; SameSite=None",
    ),
    # session-cookie-conditional-samesite-none: left out for Chrome 51-66 (same_site.lua)
    "samesite-none-omitted": CookieCase(
        "samesite",
        "/",
        {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/60.0.3112 Safari/537.36"},
        rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly",
    ),
    "samesite-none-omitted-ios12": CookieCase(
        "samesite",
        "/",
        {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 12_0 like Mac OS X) AppleWebKit"},
        rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly",
    ),
    "samesite-strict": CookieCase(
        "strict", "/", None, rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly; SameSite=Strict"
    ),
    # balancer.lua: the sticky balancer is taken before consistent hashing
    "sticky-over-hash": CookieCase(
        "sticky-over-hash", "/", None, rf"INGRESSCOOKIE={KEY}\|{TAG}; Path=/; HttpOnly"
    ),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in COOKIE_CASES.items()])
async def test_cookie_attributes(proxy: Proxy, case: CookieCase) -> None:
    before = time.time()
    answer = await _get(proxy, case.host, case.target, case.headers)
    (field,) = answer.set_cookie
    assert re.fullmatch(case.pattern, field), field
    if case.host == "expires":
        # As the e2e test: Expires is now + 48h, compared to the minute.
        expires = re.search(r"Expires=([^;]+)", field)
        assert expires is not None
        expected = {cookie_time(before + 172800)[:20], cookie_time(time.time() + 172800)[:20]}
        assert expires.group(1).encode()[:20] in expected


async def test_invalid_affinity_is_not_sticky(proxy: Proxy) -> None:
    """sessionaffinity/main.go: `affinity` takes only "cookie"; another value is no affinity."""
    answers = [await _get(proxy, "invalid-affinity") for _ in range(12)]
    assert all(not a.set_cookie for a in answers)
    assert len({a.pod for a in answers}) > 1  # round robin


# ---- stickiness -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["balanced", "persistent"])
async def test_same_pod_while_the_cookie_is_kept(proxy: Proxy, mode: str) -> None:
    """affinitymode.go: requests with the cookie go to its pod and get no new cookie; requests
    without one are spread over the pods."""
    first = await _get(proxy, mode)
    cookie = _cookie(first.set_cookie)
    for _ in range(15):
        again = await _get(proxy, mode, headers={"Cookie": f"other=1; {cookie}"})
        assert again == Answer(first.pod, [])
    fresh = [await _get(proxy, mode) for _ in range(30)]
    assert all(len(a.set_cookie) == 1 for a in fresh)
    assert len({a.pod for a in fresh}) >= 3


async def test_unknown_persistent_cookie_gets_a_new_one(proxy: Proxy) -> None:
    """sticky_persistent.lua: a cookie naming no current pod is replaced."""
    answer = await _get(proxy, "persistent", headers={"Cookie": f"INGRESSCOOKIE=garbage|{TAG}"})
    assert len(answer.set_cookie) == 1 and "garbage" not in answer.set_cookie[0]


@pytest.mark.parametrize("mode", ["balanced", "persistent"])
async def test_a_removed_pod_moves_only_its_sessions(proxy: Proxy, mode: str) -> None:
    """issue 18: a pod that goes away moves only its own sessions (balanced: the key is
    re-placed on the ring without a new cookie, as sticky_balanced.lua; persistent: the
    session gets a new pod and cookie)."""
    sessions: dict[str, str] = {}  # persistent: one cookie per pod; balanced: per session
    for _ in range(36):
        answer = await _get(proxy, mode)
        sessions[_cookie(answer.set_cookie)] = answer.pod
    assert len(set(sessions.values())) >= 4
    gone = Counter(sessions.values()).most_common(1)[0][0]
    kept = [a for a in ADDRESSES if f"web-{a.rsplit('.', 1)[1]}" != gone]
    proxy.server.apply(_compile(proxy.pods_port, kept))
    for cookie, pod in sessions.items():
        answer = await _get(proxy, mode, headers={"Cookie": cookie})
        if pod != gone:
            assert answer == Answer(pod, []), cookie
        else:
            assert answer.pod != gone
            assert len(answer.set_cookie) == (1 if mode == "persistent" else 0)


@pytest.mark.parametrize(
    ("host", "changed"), [("keep-on-failure", False), ("change-on-failure", True)]
)
async def test_change_on_failure(proxy: Proxy, host: str, changed: bool) -> None:
    """annotations.md session-cookie-change-on-failure: with it, a request whose pod failed
    gets a cookie for the pod that answered; without it the cookie stays. (Portico sends the
    retry to another pod either way: a catalogue difference.)"""
    (backend,) = [b for b in proxy.snapshot.backends if b.key.startswith("default/flaky/")]
    dead_key = hashlib.md5(f"{backend.key}{DEAD}:{proxy.pods_port}".encode()).hexdigest()
    tag = backend_tag(backend.key)
    answer = await _get(proxy, host, headers={"Cookie": f"INGRESSCOOKIE={dead_key}|{tag}"})
    assert answer.pod == "web-2"
    assert len(answer.set_cookie) == (1 if changed else 0)


# ---- consistent hashing -------------------------------------------------------------------------


class HashCase(NamedTuple):
    host: str
    request: dict[str, str]  # "target", or a header's name -> value with {} for the key


HASH_CASES: dict[str, HashCase] = {
    # upstreamhashby.go "should connect to the same pod"
    "request-uri": HashCase("hash-uri", {"target": "/items/{}"}),
    "header": HashCase("hash-header", {"X-User": "user-{}"}),
    "cookie": HashCase("hash-cookie", {"Cookie": "a=b; user=u{}"}),
    "argument": HashCase("hash-arg", {"target": "/q?x=1&id={}"}),
    "combined": HashCase("hash-combined", {"target": "/c/{}"}),
}


def _request(case: HashCase, key: int) -> tuple[str, dict[str, str]]:
    target = case.request.get("target", "/").format(key)
    headers = {k: v.format(key) for k, v in case.request.items() if k != "target"}
    return target, headers


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in HASH_CASES.items()])
async def test_hash_by_is_stable_and_spread(proxy: Proxy, case: HashCase) -> None:
    first: dict[int, str] = {}
    for key in range(30):
        target, headers = _request(case, key)
        first[key] = (await _get(proxy, case.host, target, headers)).pod
    assert len(set(first.values())) >= 4  # spread
    for key in range(0, 30, 3):
        target, headers = _request(case, key)
        assert (await _get(proxy, case.host, target, headers)).pod == first[key]  # stable
    # A pod that goes away moves only its own keys.
    gone = Counter(first.values()).most_common(1)[0][0]
    kept = [a for a in ADDRESSES if f"web-{a.rsplit('.', 1)[1]}" != gone]
    proxy.server.apply(_compile(proxy.pods_port, kept))
    for key, pod in first.items():
        target, headers = _request(case, key)
        now = (await _get(proxy, case.host, target, headers)).pod
        assert now == pod if pod != gone else now != gone


async def test_same_uri_same_pod(proxy: Proxy) -> None:
    """upstreamhashby.go "should connect to the same pod": 100 requests, one pod."""
    pods = {(await _get(proxy, "hash-uri")).pod for _ in range(100)}
    assert len(pods) == 1


async def test_same_uri_same_subset(proxy: Proxy) -> None:
    """upstreamhashby.go "should connect to the same subset of pods": 6 pods, subsets of 3,
    100 requests of one URI reach exactly 3 pods."""
    pods = {(await _get(proxy, "subset")).pod for _ in range(100)}
    assert len(pods) == 3


@pytest.mark.parametrize("mode", ["balanced", "persistent"])
async def test_scale_up(proxy: Proxy, mode: str) -> None:
    """affinitymode.go "Check persistent affinity mode": scaling up moves no persistent
    session; "Balanced affinity mode should balance": balanced sessions may move, only to the
    new pod (sticky_balanced.lua re-places the key on the new ring), without a new cookie."""
    proxy.server.apply(_compile(proxy.pods_port, ADDRESSES[:5]))
    sessions: dict[str, str] = {}
    for _ in range(36):
        answer = await _get(proxy, mode)
        sessions[_cookie(answer.set_cookie)] = answer.pod
    proxy.server.apply(_compile(proxy.pods_port, ADDRESSES))
    new_pod = "web-7"
    moved = 0
    for cookie, pod in sessions.items():
        answer = await _get(proxy, mode, headers={"Cookie": cookie})
        assert answer.set_cookie == []
        if answer.pod != pod:
            assert mode == "balanced" and answer.pod == new_pod
            moved += 1
    assert moved < len(sessions)
