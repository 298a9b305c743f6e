"""External authentication through real sockets: a real auth service, a real pod, the proxy.

Each host below is an Ingress compiled by the real compiler from ingress-nginx's annotations;
the auth service is a small aiohttp server on 127.0.0.30 answering by path, and recording what
it was asked. The rows follow ingress-nginx's e2e tests (test/e2e/annotations/auth.go, the
"when external authentication is configured" and "with invalid auth-url" groups;
test/e2e/settings/global_external_auth.go) and its template's auth location
(rootfs/etc/nginx/template/nginx.tmpl: which fields the auth request carries, 401 -> 401 or
the auth-signin redirect, 403 -> 403, anything else -> 500).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from aiohttp import web
from backends import Client, Pod
from tls_env import compiled, running

from controller.compiler import CompileSettings
from controller.configmap import compile_settings, overlay, read
from controller.settings import Settings
from tests.kube_factory import ingress, opaque_secret, rule

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
AUTH_HOST = "127.0.0.30"
# Nothing listens there: the auth service is down.
DOWN = "http://127.0.0.31:9/auth"
USER = "Basic dXNlcjpwYXNzd29yZA=="  # user:password, as httpbun's /basic-auth/user/password


class AuthService:
    """Answers by path: /allow (200 with identity fields and a cookie), /basic (200 for
    USER, else 401), /deny401 (401 with a cookie), /deny403, /error (500), /slow (1 s)."""

    def __init__(self) -> None:
        self.asked: list[dict[str, object]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> AuthService:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, AUTH_HOST, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://{AUTH_HOST}:{self.port}{path}"

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.asked.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
            }
        )
        path = request.path
        if path == "/allow":
            return web.Response(
                status=200,
                headers={
                    "X-Auth-Request-User": "alice",
                    "X-Auth-Request-Email": "alice@example.com",
                    "Set-Cookie": "session=fresh; Path=/",
                },
            )
        if path == "/basic":
            if request.headers.get("Authorization") == USER:
                return web.Response(status=200, headers={"X-Auth-Request-User": "user"})
            return web.Response(status=401)
        if path == "/deny401":
            return web.Response(status=401, headers={"Set-Cookie": "csrf=1; Path=/"})
        if path == "/deny403":
            return web.Response(status=403)
        if path == "/slow":
            await asyncio.sleep(1.0)
            return web.Response(status=200)
        return web.Response(status=500)


@pytest.fixture
async def auth() -> AsyncIterator[AuthService]:
    service = await AuthService().start()
    yield service
    await service.stop()


def hosts(auth: AuthService) -> dict[str, dict[str, str]]:
    return {
        "allowed": {
            "auth-url": auth.url("/allow"),
            "auth-response-headers": "X-Auth-Request-User,X-Auth-Request-Email",
        },
        "denied": {"auth-url": auth.url("/deny401")},
        "signin": {
            "auth-url": auth.url("/deny401"),
            "auth-signin": "http://$host/auth/start",
        },
        "signin-param": {
            "auth-url": auth.url("/deny401"),
            "auth-signin": "http://$host/auth/start",
            "auth-signin-redirect-param": "orig",
        },
        "signin-own-rd": {
            "auth-url": auth.url("/deny401"),
            "auth-signin": "https://sso.example/start?rd=$escaped_request_uri",
        },
        "forbidden": {"auth-url": auth.url("/deny403")},
        "failing": {"auth-url": auth.url("/error")},
        "down": {"auth-url": DOWN},
        "slow": {"auth-url": auth.url("/slow")},
        "basic": {"auth-url": auth.url("/basic")},
        "method": {"auth-url": auth.url("/allow"), "auth-method": "POST"},
        "redirect-header": {"auth-url": auth.url("/allow"), "auth-request-redirect": "/landing"},
        "cached": {
            "auth-url": auth.url("/basic"),
            "auth-cache-key": "$http_authorization",
            "auth-cache-duration": "200 401 1m",
        },
        "invalid": {"auth-url": "http://$request_body/auth"},
        "any": {
            "auth-url": auth.url("/deny401"),
            "whitelist-source-range": "127.0.0.5",
            "satisfy": "any",
        },
        "all": {"auth-url": auth.url("/allow"), "whitelist-source-range": "127.0.0.5"},
    }


class Case(NamedTuple):
    host: str
    status: int
    asked: int  # requests the auth service got
    headers: dict[str, str] = {}  # sent by the client
    peer: str = "127.0.0.1"
    method: str = "GET"
    body: bytes = b""


CASES: dict[str, Case] = {
    # auth.go "should return status code 200 when signed in"
    "allowed": Case("allowed", 200, 1),
    # auth.go: an auth service answering 401 without auth-signin
    "unauthorized": Case("denied", 401, 1),
    # auth.go "should redirect to signin url when not signed in"
    "redirected-to-signin": Case("signin", 302, 1),
    # auth.go "should redirect to signin url when not signed in" (auth-signin-redirect-param)
    "redirect-param": Case("signin-param", 302, 1),
    "signin-sets-rd-itself": Case("signin-own-rd", 302, 1),
    # nginx auth_request: 403 is 403
    "forbidden": Case("forbidden", 403, 1),
    # nginx auth_request: any other status is 500, never a pass
    "auth-error": Case("failing", 500, 1),
    "auth-down": Case("down", 500, 0),
    "auth-timeout": Case("slow", 500, 1),
    # httpbun /basic-auth/user/password, as auth.go uses it
    "basic-accepted": Case("basic", 200, 1, {"Authorization": USER}),
    "basic-refused": Case("basic", 401, 1, {"Authorization": "Basic Zm9vOmJhcg=="}),
    "method": Case("method", 200, 1),
    "request-redirect": Case("redirect-header", 200, 1),
    # auth.go "with invalid auth-url should deny whole ingress": 503 (location denied)
    "invalid-url-denied": Case("invalid", 503, 0),
    # satisfy any: the source range suffices, no auth request
    "any-range-suffices": Case("any", 200, 0, peer="127.0.0.5"),
    "any-auth-refuses": Case("any", 401, 1, peer="127.0.0.6"),
    # satisfy all (default): both must
    "all-range-refuses": Case("all", 403, 0, peer="127.0.0.6"),
    "all-both-pass": Case("all", 200, 1, peer="127.0.0.5"),
    # The body never goes to the auth service; the pod gets it.
    "post-body-to-pod-only": Case("allowed", 200, 1, method="POST", body=b"x" * 100_000),
}
REASONS = {
    200: None,
    302: "AuthSignin",
    401: "AuthUnauthorized",
    403: "AuthForbidden",
    500: "AuthFailed",
    503: "InvalidExternalAuth",
}


async def connect_from(address: str, port: int) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    return Client(reader, writer)


def _compiled(pod: Pod, auth: AuthService, settings: CompileSettings | None = None) -> object:
    ingresses = [
        ingress(host, annotations={N + k: v for k, v in ann.items()}, rules=[rule(f"{host}.test")])
        for host, ann in hosts(auth).items()
    ]
    return compiled(*ingresses, pod=(pod.host, pod.port), settings=settings)


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_external_auth(
    pod: Pod, auth: AuthService, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    result = _compiled(pod, auth)
    async with running(
        result.snapshot,  # type: ignore[attr-defined]
        access_log=True,
        upstream_read_timeout=0.3,
    ) as proxy:
        client = await connect_from(case.peer, proxy.http_port)
        try:
            headers = {"Cookie": "sid=abc", "X-Auth-Request-User": "mallory", **case.headers}
            resp = await client.request(
                case.method, "/?a=b&c=d", headers, body=case.body, host=f"{case.host}.test"
            )
        finally:
            await client.close()
        assert proxy.access is not None
        proxy.access.flush()
    assert resp.status == case.status
    assert len(auth.asked) == case.asked
    assert pod.requests == (1 if case.status == 200 else 0)  # never reached when refused
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    ranges_refused = case.status == 403 and case.host == "all"
    reason = "SourceRangeDenied" if ranges_refused else REASONS[case.status]
    assert (line["status"], line.get("reason")) == (case.status, reason)
    if case.asked and case.host != "any":
        asked = auth.asked[0]
        fields = asked["headers"]
        assert isinstance(fields, dict)
        # What ingress-nginx's auth location sends (nginx.tmpl `location = $authPath`).
        assert fields["x-original-url"] == f"http://{case.host}.test/?a=b&c=d"
        assert fields["x-original-method"] == case.method
        assert fields["x-sent-from"] == "nginx-ingress-controller"
        assert fields["x-real-ip"] == case.peer
        assert fields["host"] == AUTH_HOST  # the auth URL's host, without its port
        assert fields["cookie"] == "sid=abc"  # the client's fields go along
        assert "x-forwarded-proto" not in fields  # proxy_set_header X-Forwarded-Proto ""
        # No body: aiohttp says so with Content-Length: 0 for POST (auth-method).
        assert fields.get("content-length") in (None, "0") and "transfer-encoding" not in fields
        assert asked["body"] == b""  # proxy_pass_request_body off
        expected_redirect = "/landing" if case.host == "redirect-header" else "/?a=b&c=d"
        assert fields["x-auth-request-redirect"] == expected_redirect
        if case.host == "method":
            assert asked["method"] == "POST"
            assert fields["x-original-uri"] == "/?a=b&c=d" and fields["x-scheme"] == "http"
        else:
            assert asked["method"] == "GET"  # an nginx subrequest's method
            assert "x-original-uri" not in fields
    if case.status == 200:
        seen = dict((k.lower(), v) for k, v in resp.json()["headers"])
        assert resp.json()["length"] == len(case.body)
        if case.host == "allowed":
            # auth.go "should overwrite Foo header with auth response": the auth answer's
            # fields replace the client's, and its cookie goes to the client.
            users = [v for k, v in resp.json()["headers"] if k.lower() == "x-auth-request-user"]
            assert users == ["alice"]  # the client's own is gone
            assert seen["x-auth-request-email"] == "alice@example.com"
            assert resp.header_all("Set-Cookie") == ["session=fresh; Path=/"]
        else:
            # Not listed in auth-response-headers: the client's own field goes as sent.
            assert seen["x-auth-request-user"] == "mallory"
    if case.status == 302:
        location = resp.header("Location")
        escaped = "%2F%3Fa%3Db%26c%3Dd"  # url.QueryEscape("/?a=b&c=d"), as auth.go expects
        expected = {
            "signin": f"http://signin.test/auth/start?rd=http://signin.test{escaped}",
            "signin-param": f"http://signin-param.test/auth/start?orig=http://signin-param.test"
            f"{escaped}",
            "signin-own-rd": f"https://sso.example/start?rd={escaped}",
        }[case.host]
        assert location == expected
        # The signin location's `add_header Set-Cookie $auth_cookie`.
        assert resp.header_all("Set-Cookie") == ["csrf=1; Path=/"]


async def test_denied_answer_carries_no_cookie_unless_always(pod: Pod, auth: AuthService) -> None:
    # auth.go "user retains cookie by default" / "user does not retain cookie if upstream
    # returns error status code" / "user with annotated ingress retains cookie if upstream
    # returns error status code": the auth's Set-Cookie goes with 2xx/3xx pod answers, and
    # with every answer with auth-always-set-cookie.
    result = compiled(
        ingress("plain", annotations={N + "auth-url": auth.url("/allow")}, rules=[rule("p.test")]),
        ingress(
            "always",
            annotations={N + "auth-url": auth.url("/allow"), N + "auth-always-set-cookie": "true"},
            rules=[rule("a.test")],
        ),
        pod=(pod.host, pod.port),
    )
    async with running(result.snapshot) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            ok = await client.request("GET", "/echo", host="p.test")
            error = await client.request("GET", "/error?code=500", host="p.test")
            always = await client.request("GET", "/error?code=500", host="a.test")
        finally:
            await client.close()
    assert ok.status == 200 and ok.header_all("Set-Cookie") == ["session=fresh; Path=/"]
    assert error.status == 500 and error.header_all("Set-Cookie") == []
    assert always.status == 500 and always.header_all("Set-Cookie") == ["session=fresh; Path=/"]


async def test_cache_hits_ask_once_per_key(pod: Pod, auth: AuthService) -> None:
    # auth.go "should set cache_key when external auth cache is configured": answers kept per
    # auth-cache-key ($http_authorization here) for auth-cache-duration.
    result = _compiled(pod, auth)
    async with running(result.snapshot) as proxy:  # type: ignore[attr-defined]
        client = await Client.connect(proxy.http_port)
        try:
            statuses = []
            for authorization in (USER, USER, "Basic Zm9vOmJhcg==", USER, "Basic Zm9vOmJhcg=="):
                resp = await client.request(
                    "GET", "/", {"Authorization": authorization}, host="cached.test"
                )
                statuses.append(resp.status)
        finally:
            await client.close()
    assert statuses == [200, 200, 401, 200, 401]
    assert len(auth.asked) == 2  # one per key
    assert pod.requests == 3


async def test_keep_alive_and_pipelining_keep_order(pod: Pod, auth: AuthService) -> None:
    # Two requests in one write: the second waits for the first's auth check and answer.
    result = _compiled(pod, auth)
    async with running(result.snapshot) as proxy:  # type: ignore[attr-defined]
        client = await Client.connect(proxy.http_port)
        try:
            client.send(
                b"GET /first HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
                b"GET /second HTTP/1.1\r\nHost: forbidden.test\r\n\r\n"
                b"GET /third HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
            )
            first = await client.response()
            second = await client.response()
            third = await client.response()
        finally:
            await client.close()
    assert (first.status, second.status, third.status) == (200, 403, 200)
    assert first.json()["target"] == "/first" and third.json()["target"] == "/third"


async def test_global_auth_from_the_ingress_nginx_configmap(pod: Pod, auth: AuthService) -> None:
    # global_external_auth.go: "should return status code 401 when request any protected
    # service" (the ConfigMap's global-auth-url applies to every Ingress), "should return
    # status code 200 when request whitelisted (via no-auth-locations) service" is not Portico's;
    # "should return status code 200 when request whitelisted (via ingress annotation) service"
    # (enable-global-auth: "false"); an Ingress's own auth-url replaces the global one.
    data = {"global-auth-url": auth.url("/deny401"), "global-auth-signin": "http://$host/in"}
    reading = read(data, "ingress-nginx/ingress-nginx-controller")
    assert reading.problems() == ()
    settings = compile_settings(overlay(Settings(), reading), reading)
    result = compiled(
        ingress("global", rules=[rule("global.test")]),
        ingress("off", annotations={N + "enable-global-auth": "false"}, rules=[rule("off.test")]),
        ingress("own", annotations={N + "auth-url": auth.url("/allow")}, rules=[rule("own.test")]),
        pod=(pod.host, pod.port),
        settings=settings,
    )
    async with running(result.snapshot) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            protected = await client.request("GET", "/x", host="global.test")
            off = await client.request("GET", "/x", host="off.test")
            own = await client.request("GET", "/x", host="own.test")
        finally:
            await client.close()
    assert protected.status == 302
    assert protected.header("Location") == "http://global.test/in?rd=http://global.test%2Fx"
    assert (off.status, own.status) == (200, 200)
    assert [a["path"] for a in auth.asked] == ["/deny401", "/allow"]
    assert pod.requests == 2


async def test_invalid_global_auth_fails_closed(pod: Pod) -> None:
    data = {"global-auth-url": "ftp://auth.example/"}
    reading = read(data, "ingress-nginx/ingress-nginx-controller")
    assert [p.reason for p in reading.problems()] == ["InvalidConfigMapValue"]
    settings = compile_settings(overlay(Settings(), reading), reading)
    result = compiled(
        ingress("global", rules=[rule("global.test")]), pod=(pod.host, pod.port), settings=settings
    )
    async with running(result.snapshot) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            resp = await client.request("GET", "/", host="global.test")
        finally:
            await client.close()
    assert resp.status == 503 and pod.requests == 0


# htpasswd -nbm bob apr1-pass (as tests/integration/test_basic_auth.py)
APR1_HASH = "$apr1$cV7rta74$/wB6b37vKIZ6elCNQmJuT/"
BOB = "Basic Ym9iOmFwcjEtcGFzcw=="  # bob:apr1-pass
BASIC = {"auth-type": "basic", "auth-secret": "users", "auth-realm": "test auth"}


class Combined(NamedTuple):
    host: str
    peer: str
    authorization: str | None
    status: int
    asked: int


# satisfy.go: "should configure satisfy directive correctly" / "should allow multiple auth with
# satisfy any": basic auth, external auth and source ranges as alternatives (any) or all
# required (all, the default).
COMBINED: dict[str, Combined] = {
    "any-range-without-credentials": Combined("basic-range-any", "127.0.0.5", None, 200, 0),
    "any-credentials-outside-range": Combined("basic-range-any", "127.0.0.6", BOB, 200, 0),
    "any-neither-is-401": Combined("basic-range-any", "127.0.0.6", None, 401, 0),
    "any-basic-spares-the-auth-request": Combined("basic-url-any", "127.0.0.6", BOB, 200, 0),
    # auth-url refuses (403) and basic asks for credentials: nginx keeps the 401
    "any-401-over-403": Combined("basic-url-any", "127.0.0.6", None, 401, 1),
    "all-basic-first": Combined("basic-url-all", "127.0.0.6", None, 401, 0),
    "all-both": Combined("basic-url-all", "127.0.0.6", BOB, 200, 1),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in COMBINED.items()])
async def test_satisfy_with_basic_auth(pod: Pod, auth: AuthService, case: Combined) -> None:
    hosts = {
        "basic-range-any": {**BASIC, "whitelist-source-range": "127.0.0.5", "satisfy": "any"},
        "basic-url-any": {**BASIC, "auth-url": auth.url("/deny403"), "satisfy": "any"},
        "basic-url-all": {**BASIC, "auth-url": auth.url("/allow")},
    }
    result = compiled(
        opaque_secret("users", auth=f"bob:{APR1_HASH}\n"),
        *(
            ingress(h, annotations={N + k: v for k, v in a.items()}, rules=[rule(f"{h}.test")])
            for h, a in hosts.items()
        ),
        pod=(pod.host, pod.port),
    )
    async with running(result.snapshot) as proxy:
        client = await connect_from(case.peer, proxy.http_port)
        try:
            headers = {"Authorization": case.authorization} if case.authorization else None
            resp = await client.request("GET", "/", headers, host=f"{case.host}.test")
        finally:
            await client.close()
    assert resp.status == case.status
    assert len(auth.asked) == case.asked
    assert pod.requests == (1 if case.status == 200 else 0)
    if case.status == 401:
        assert resp.header("WWW-Authenticate") == 'Basic realm="test auth"'
