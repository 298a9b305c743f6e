"""Basic auth through real sockets: ingress-nginx's auth-type basic, as its e2e tests expect it.

Each host is an Ingress compiled by the real compiler with its Secret (test/e2e/annotations/
auth.go: a bcrypt htpasswd line under `auth`, or an auth-map Secret with the user as key); the
requests go through the proxy to an echo pod, which says what it was sent. Rows cite auth.go's
test names; the rest follow nginx's auth_basic and the template (`proxy_set_header
Authorization ""`: the pod never sees the credentials).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import NamedTuple

import bcrypt
import manifests
import pytest
import yaml
from backends import Client, Pod
from serving import echo_pods, eventually, free_port, start_serve, stop_serve
from tls_env import compiled, running

from controller.compiler import CompileResult
from proxy import basicauth
from proxy.server import ProxyServer
from tests.kube_factory import Raw, ingress, opaque_secret, rule

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
# Cost 10, as htpasswd -B makes by default: about 60 ms a check, which the cache saves.
BAR_HASH = bcrypt.hashpw(b"bar", bcrypt.gensalt(10)).decode()
APR1_HASH = "$apr1$cV7rta74$/wB6b37vKIZ6elCNQmJuT/"  # htpasswd -nbm bob apr1-pass


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = {"auth-type": "basic", "auth-secret": "users", "auth-realm": "test auth"}
INGRESSES: dict[str, dict[str, str]] = {
    "file": AUTH,
    "map": {**AUTH, "auth-secret": "map-users", "auth-secret-type": "auth-map"},
    "invalid-content": {**AUTH, "auth-secret": "invalid-content"},
    "missing-secret": {**AUTH, "auth-secret": "something"},
    "no-auth-key": {**AUTH, "auth-secret": "map-users"},  # an auth-file Secret without `auth`
    "digest": {**AUTH, "auth-type": "digest"},
    "other-namespace": {**AUTH, "auth-secret": "kube-system/users"},
    "no-realm": {"auth-type": "basic", "auth-secret": "users"},
    "no-type": {"auth-secret": "users"},  # without auth-type: no authentication
    "open": {},
}
SECRETS: tuple[Raw, ...] = (
    opaque_secret("users", auth=f"foo:{BAR_HASH}\nbob:{APR1_HASH}\n"),
    opaque_secret("users", namespace="kube-system", auth=f"foo:{BAR_HASH}\n"),
    opaque_secret("map-users", foo=BAR_HASH),
    opaque_secret("invalid-content", auth="foo:"),
)


class Case(NamedTuple):
    host: str
    authorization: list[str]  # the Authorization fields sent
    status: int


CASES: dict[str, Case] = {
    # auth.go "should return status code 200 when no authentication is configured"
    "no-authentication": Case("open", [], 200),
    # auth.go "should return status code 401 when authentication is configured but
    # Authorization header is not configured"
    "no-credentials": Case("file", [], 401),
    # auth.go "... and Authorization header is sent with invalid credentials"
    "unknown-user": Case("file", [basic("user", "pass")], 401),
    "wrong-password": Case("file", [basic("foo", "baz")], 401),
    # auth.go "should return status code 200 when authentication is configured and
    # Authorization header is sent"
    "bcrypt-user": Case("file", [basic("foo", "bar")], 200),
    "apr1-user": Case("file", [basic("bob", "apr1-pass")], 200),
    # auth.go "should return status code 200 when authentication is configured with a map and
    # Authorization header is sent"
    "auth-map": Case("map", [basic("foo", "bar")], 200),
    "auth-map-wrong-password": Case("map", [basic("foo", "baz")], 401),
    # auth.go "should return status code 401 when authentication is configured with invalid
    # content and Authorization header is sent"
    "invalid-content": Case("invalid-content", [basic("foo", "bar")], 401),
    # auth.go "should return status code 503 when authentication is configured with an invalid
    # secret" (a Secret that does not exist): the route is locked, never open.
    "missing-secret": Case("missing-secret", [basic("foo", "bar")], 503),
    "no-auth-key": Case("no-auth-key", [basic("foo", "bar")], 503),
    # auth/main.go: cross-namespace Secrets are refused (allow-cross-namespace-resources false).
    "other-namespace": Case("other-namespace", [basic("foo", "bar")], 503),
    # Portico does not implement digest: fail closed.
    "digest": Case("digest", [basic("foo", "bar")], 503),
    "no-auth-type": Case("no-type", [], 200),
    # nginx's ngx_http_auth_basic_user: the scheme case-insensitively, then base64 of user:pass.
    "scheme-case": Case("file", ["bAsIc " + basic("foo", "bar")[6:]], 200),
    "unpadded-base64": Case("file", [basic("foo", "bar").rstrip("=")], 200),
    "not-basic": Case("file", ["Bearer abc"], 401),
    "not-base64": Case("file", ["Basic !!!!"], 401),
    "no-colon": Case("file", ["Basic " + base64.b64encode(b"foobar").decode()], 401),
    # nginx refuses a duplicate Authorization field (400).
    "duplicate": Case("file", [basic("foo", "bar"), basic("foo", "bar")], 400),
}


def _ingresses() -> list[Raw]:
    return [
        ingress(name, annotations={N + k: v for k, v in a.items()}, rules=[rule(f"{name}.test")])
        for name, a in INGRESSES.items()
    ]


Seen = list[list[str]] | None


async def _request(
    proxy_port: int, host: str, authorization: list[str]
) -> tuple[int, dict[str, str | None], Seen]:
    client = await Client.connect(proxy_port)
    try:
        headers = [("Authorization", value) for value in authorization]
        response = await client.request("GET", "/private", headers=headers, host=f"{host}.test")
        fields = {
            "www-authenticate": response.header("WWW-Authenticate"),
        }
        seen = response.json()["headers"] if response.status == 200 else None
        return response.status, fields, seen
    finally:
        await client.close()


Running = tuple[ProxyServer, CompileResult]


@pytest.fixture
async def proxy_for(pod: Pod) -> AsyncIterator[Running]:
    result = compiled(*_ingresses(), *SECRETS, pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:
        yield proxy, result


@pytest.mark.parametrize("name", sorted(CASES))
async def test_basic_auth(pod: Pod, proxy_for: Running, name: str) -> None:
    proxy, _ = proxy_for
    case = CASES[name]
    status, fields, seen = await _request(proxy.http_port, case.host, case.authorization)
    assert status == case.status
    if status == 401:
        # nginx's auth_basic challenge, the realm as the annotation gives it.
        assert fields["www-authenticate"] == 'Basic realm="test auth"'
    if status == 200:
        assert seen is not None
        # Never forwarded: ingress-nginx's `proxy_set_header Authorization ""`.
        assert all(n.lower() != "authorization" for n, _ in seen)
    else:
        assert pod.requests == 0


async def test_realm_defaults_to_empty(proxy_for: Running) -> None:
    proxy, _ = proxy_for
    status, fields, _ = await _request(proxy.http_port, "no-realm", [])
    assert (status, fields["www-authenticate"]) == (401, 'Basic realm=""')


async def test_locked_routes_are_problems(proxy_for: Running) -> None:
    _, result = proxy_for
    messages = {p.ref: p.message for p in result.problems if p.reason == "SecretInvalid"}
    assert 'secret "default/something" not found' in messages["default/missing-secret"]
    assert 'no key "auth"' in messages["default/no-auth-key"]
    assert "another namespace" in messages["default/other-namespace"]
    assert "answered 401" in messages["default/invalid-content"]
    invalid = [p for p in result.problems if p.reason == "InvalidAnnotation"]
    assert any("digest" in p.message for p in invalid)


async def test_cache_avoids_bcrypt_and_a_secret_change_invalidates(pod: Pod) -> None:
    basicauth.CACHE.clear()
    objects = (*_ingresses(), *SECRETS)
    result = compiled(*objects, pod=(pod.host, pod.port))
    async with running(result.snapshot) as proxy:
        before = basicauth.CACHE.misses
        for _ in range(5):
            status, _, _ = await _request(proxy.http_port, "file", [basic("foo", "bar")])
            assert status == 200
        assert basicauth.CACHE.misses == before + 1  # one bcrypt check for five requests
        # A new password in the Secret: the old one no longer opens, the new one does.
        new_hash = bcrypt.hashpw(b"new", bcrypt.gensalt(4)).decode()
        changed = opaque_secret("users", auth=f"foo:{new_hash}\n")
        secrets = (changed, *SECRETS[1:])
        proxy.apply(compiled(*_ingresses(), *secrets, pod=(pod.host, pod.port)).snapshot)
        status, _, _ = await _request(proxy.http_port, "file", [basic("foo", "bar")])
        assert status == 401
        status, _, _ = await _request(proxy.http_port, "file", [basic("foo", "new")])
        assert status == 200
        # The Secret removed: the route is locked, not opened.
        proxy.apply(compiled(*_ingresses(), *SECRETS[1:], pod=(pod.host, pod.port)).snapshot)
        status, _, _ = await _request(proxy.http_port, "file", [basic("foo", "new")])
        assert status == 503


def test_hashes_stay_out_of_reprs() -> None:
    result = compiled(*_ingresses(), *SECRETS, pod=("127.0.0.2", 80))
    assert BAR_HASH not in repr(result.snapshot)
    assert json.dumps(BAR_HASH)[1:-1] not in str(result.snapshot)


def _manifests(directory: Path, port: int, auth_line: str) -> None:
    docs = [
        manifests.ingress_class(),
        *manifests.service_with_pods("web", ["127.0.0.2"], port),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "users", "namespace": "default"},
            "type": "Opaque",
            "stringData": {"auth": auth_line},
        },
        manifests.ingress("web", "web.test", {"/": "web"}, annotations=dict(SERVE_AUTH)),
    ]
    (directory / "app.yaml").write_text(yaml.safe_dump_all(docs))


SERVE_AUTH = {N + "auth-type": "basic", N + "auth-secret": "users", N + "auth-realm": "serve"}


async def test_manifest_mode_two_workers_and_a_secret_edit(tmp_path: Path) -> None:
    # `portico serve --manifests`: the Secret comes from the manifest directory; each worker
    # checks and caches on its own; an edited Secret reaches every worker.
    http, admin = free_port(), free_port()
    async with echo_pods(("127.0.0.2", "web", "web-1")) as port:
        _manifests(tmp_path, port, f"foo:{APR1_HASH}\n")
        process = await start_serve(tmp_path, http=http, admin=admin, workers=2)
        try:

            async def status(authorization: list[str]) -> int:
                try:
                    got, _, _ = await _request(http, "web", authorization)
                except OSError:
                    return 0
                return got

            await eventually(lambda: _is(status([]), 401))
            creds = [basic("foo", "apr1-pass")]
            for _ in range(6):  # over both workers' connections
                assert await status(creds) == 200
            _manifests(tmp_path, port, f"foo:{BAR_HASH}\n")
            await eventually(lambda: _is(status([basic("foo", "bar")]), 200))
            assert await status(creds) == 401
        finally:
            await stop_serve(process)


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
