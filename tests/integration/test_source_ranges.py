"""Source ranges through real sockets: allow and deny lists as ingress-nginx applies them.

Each host below is an Ingress compiled by the real compiler from ingress-nginx's annotations
(the model: test/e2e/annotations/ipallowlist.go, ipdenylist.go: deny rules first, then allow
rules and `deny all`; a denied client gets 403). Clients connect from different loopback
addresses (127.0.0.0/8 is all local), so the peer address varies for real; IPv6 clients come
through a trusted proxy's X-Forwarded-For (nginx's realip module with `real_ip_recursive on`,
as ingress-nginx configures it with use-forwarded-headers). The proxy trusts 127.0.0.10/31.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import NamedTuple

import pytest
from backends import Client, Pod
from tls_env import compiled, running

from controller.compiler import CompileSettings, compile_view
from controller.configmap import compile_settings, overlay, read
from controller.files import read_manifests
from controller.settings import Settings
from proxy.server import ProxyServer
from tests.kube_factory import ingress, rule

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
TRUSTED = "127.0.0.10/31"  # 127.0.0.10 and 127.0.0.11
CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus" / "ingress-nginx" / "nginx"

HOSTS: dict[str, dict[str, str]] = {
    "allow-v4": {"whitelist-source-range": "127.0.0.0/30"},
    "allow-one": {"allowlist-source-range": "127.0.0.5"},  # a bare address: /32
    "allow-v6": {"whitelist-source-range": "2001:db8::/32"},
    "mixed": {"whitelist-source-range": "2001:db8::/32, 127.0.0.8/29"},
    "deny": {"denylist-source-range": "127.0.0.5, 2001:db8::1"},
    "both": {"whitelist-source-range": "127.0.0.0/24", "denylist-source-range": "127.0.0.5"},
    "spellings": {"allowlist-source-range": "127.0.0.5", "whitelist-source-range": "127.0.0.6"},
    "everyone": {"whitelist-source-range": "0.0.0.0/0"},
    "invalid": {"whitelist-source-range": "127.0.0.0/8,"},
    "open": {},
}


class Case(NamedTuple):
    host: str
    peer: str  # the client's own address
    xff: str | None  # X-Forwarded-For sent
    status: int


CASES: dict[str, Case] = {
    "allow-in-range": Case("allow-v4", "127.0.0.2", None, 200),
    "allow-out-of-range": Case("allow-v4", "127.0.0.5", None, 403),
    "allow-one-address": Case("allow-one", "127.0.0.5", None, 200),
    "allow-one-other": Case("allow-one", "127.0.0.6", None, 403),
    "allow-v6-only-refuses-v4": Case("allow-v6", "127.0.0.2", None, 403),
    "mixed-v4-in": Case("mixed", "127.0.0.9", None, 200),
    "mixed-v4-out": Case("mixed", "127.0.0.2", None, 403),
    "deny-listed": Case("deny", "127.0.0.5", None, 403),
    "deny-other": Case("deny", "127.0.0.6", None, 200),
    "deny-before-allow": Case("both", "127.0.0.5", None, 403),
    "allowed-not-denied": Case("both", "127.0.0.6", None, 200),
    "allowlist-spelling-wins": Case("spellings", "127.0.0.5", None, 200),
    "whitelist-spelling-ignored": Case("spellings", "127.0.0.6", None, 403),
    "allow-everyone": Case("everyone", "127.0.0.7", None, 200),
    "invalid-fails-closed": Case("invalid", "127.0.0.2", None, 503),
    "no-ranges": Case("open", "127.0.0.5", None, 200),
    # An untrusted peer's X-Forwarded-For is never read.
    "untrusted-xff-ignored": Case("allow-v6", "127.0.0.2", "2001:db8::7", 403),
    "untrusted-cannot-dodge-deny": Case("deny", "127.0.0.5", "127.0.0.6", 403),
    # A trusted peer: X-Forwarded-For from the right, past trusted addresses.
    "trusted-v6-client": Case("allow-v6", "127.0.0.10", "2001:db8::7", 200),
    "trusted-hop-skipped": Case("allow-v6", "127.0.0.10", "2001:db8::7, 127.0.0.11", 200),
    "rightmost-untrusted-wins": Case("allow-v6", "127.0.0.10", "2001:db8::7, 198.51.100.1", 403),
    "trusted-v6-denied": Case("deny", "127.0.0.11", "2001:db8::1", 403),
    "trusted-v4-denied": Case("deny", "127.0.0.10", "127.0.0.5", 403),
    "trusted-v4-allowed": Case("deny", "127.0.0.10", "127.0.0.6", 200),
    "all-trusted-leftmost": Case("allow-one", "127.0.0.10", "127.0.0.11", 403),
    "past-trusted-to-client": Case("allow-one", "127.0.0.10", "127.0.0.5, 127.0.0.11", 200),
    "with-port": Case("allow-one", "127.0.0.10", "127.0.0.5:4321", 200),
    "garbage-keeps-the-peer": Case("allow-one", "127.0.0.10", "127.0.0.5, garbage", 403),
    "trusted-peer-without-xff": Case("allow-one", "127.0.0.10", None, 403),
}


async def connect_from(address: str, port: int) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    return Client(reader, writer)


async def _status(proxy: ProxyServer, case: Case) -> int:
    client = await connect_from(case.peer, proxy.http_port)
    headers = {"X-Forwarded-For": case.xff} if case.xff is not None else None
    try:
        return int((await client.request("GET", "/", headers, host=f"{case.host}.test")).status)
    finally:
        await client.close()


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_source_ranges(pod: Pod, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    ingresses = [
        ingress(host, annotations={N + k: v for k, v in ann.items()}, rules=[rule(f"{host}.test")])
        for host, ann in HOSTS.items()
    ]
    result = compiled(*ingresses, pod=(pod.host, pod.port))
    async with running(result.snapshot, access_log=True, trusted_proxies=(TRUSTED,)) as proxy:
        assert await _status(proxy, case) == case.status
        assert pod.requests == (1 if case.status == 200 else 0)
        assert proxy.access is not None
        proxy.access.flush()
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    reasons = {200: None, 403: "SourceRangeDenied", 503: "InvalidSourceRange"}
    assert (line["status"], line.get("reason")) == (case.status, reasons[case.status])


async def test_cert_manager_http01_solver_is_served() -> None:
    # The solver Ingress exactly as cert-manager creates it (the corpus, from cert-manager's
    # ingress.go): legacy class annotation, whitelist-source-range 0.0.0.0/0, the token path.
    # Its Service's endpoint is 127.0.62.35:3000: the solver pod is a test pod there.
    store, _ = read_manifests(CORPUS)
    result = compile_view(store, CompileSettings(ingress_classes=("nginx",)))
    solver = await Pod("127.0.62.35", 3000).start()
    token = "Zb2Kc1pQ9xR0aLw4T7mYv3NfH8sDgJ6eUoB5iWqXrCt"
    try:
        async with running(result.snapshot) as proxy:
            for peer in ("127.0.0.2", "127.0.0.200"):  # the ACME server, wherever it is
                client = await connect_from(peer, proxy.http_port)
                try:
                    target = f"/.well-known/acme-challenge/{token}"
                    resp = await client.request("GET", target, host="shop.example.com")
                finally:
                    await client.close()
                assert resp.status == 200 and resp.json()["target"] == target
        assert solver.requests == 2
    finally:
        await solver.stop()


async def test_global_ranges_from_the_ingress_nginx_configmap(pod: Pod) -> None:
    # The ConfigMap's whitelist-source-range and denylist-source-range (configmap.md: "the
    # default ... for each server block", overwritten by an Ingress's annotation) compiled as
    # `portico controller --nginx-configmap` compiles them.
    data = {"whitelist-source-range": "127.0.0.0/29", "denylist-source-range": "127.0.0.5"}
    reading = read(data, "ingress-nginx/ingress-nginx-controller")
    settings = compile_settings(overlay(Settings(), reading), reading)
    own = {N + "whitelist-source-range": "127.0.0.6"}
    result = compiled(
        ingress("global", rules=[rule("global.test")]),
        ingress("own", annotations=own, rules=[rule("own.test")]),
        pod=(pod.host, pod.port),
        settings=settings,
    )
    async with running(result.snapshot) as proxy:
        for host, peer, status in (
            ("global", "127.0.0.2", 200),  # inside the global allow list
            ("global", "127.0.0.9", 403),  # outside it
            ("global", "127.0.0.5", 403),  # inside, but denied
            ("own", "127.0.0.6", 200),  # its own list replaces the global allow list
            ("own", "127.0.0.2", 403),
        ):
            assert await _status(proxy, Case(host, peer, None, status)) == status, (host, peer)
    assert pod.requests == 2
