"""External authentication (ingress-nginx's auth-url, nginx's `auth_request`) and `satisfy any`.

`config.ExternalAuth` becomes a `CheckExternalAuth` step, a `WaitingStep` (proxy/steps.py):
routing leaves it to the exchange, which holds the request (its body buffered with the usual
backpressure, no pod chosen) while the step asks the auth service, then goes on or answers.

The subrequest, as ingress-nginx's auth location sends it: the configured method (GET by
default, as an nginx subrequest), never the body (no Content-Length, Transfer-Encoding), the
client's fields as the pod would get them (Cookie, Authorization, X-Forwarded-For, X-Real-IP,
X-Request-ID) without X-Forwarded-Proto, `Host` of the auth URL, and X-Original-URL,
X-Original-Method, X-Sent-From, X-Auth-Request-Redirect (plus X-Original-URI and X-Scheme with
auth-method), then the auth-proxy-set-headers fields. Its answer decides:

- 2xx: the request goes on; each auth-response-headers field replaces the client's field of
  that name in what the pod is sent (removed when the auth answer has none, so a client cannot
  supply it); the auth answer's Set-Cookie goes to the client (`steps.Pass`);
- 401: 401, or with auth-signin a 302 to it, with `rd=<scheme>://<host><escaped target>`
  (and the auth answer's Set-Cookie);
- 403: 403;
- anything else, a connect failure, a timeout: 500 (`AuthFailed`), never a pass.

The HTTP client is aiohttp's, one session per keep-alive setting per worker (its connection
pool to the auth services), made on first use; `auth-keepalive: 0` closes each connection after
its request, as ingress-nginx does without an upstream block. Host names in the URL are
resolved by the system resolver (the cluster DNS in a pod), per connection. HTTPS auth URLs
are not verified, as nginx's `proxy_ssl_verify off` default. Timeouts are the worker's upstream
connect and read timeouts (ingress-nginx's auth location takes the ConfigMap's
proxy-connect-timeout / proxy-read-timeout, not the Ingress's annotations).

With auth-cache-key, answers whose status auth-cache-duration lists are kept per rendered key
(the host, the auth URL and the key's request variables) for their time, in a bounded
per-worker dict: a hit sends no subrequest.

`satisfy: any` (`SatisfyAll` is the default, the steps in a row): `AnyOf` / `AnyOfWaiting` run
the route's access checks as alternatives (see config.SatisfyAny).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.steps import BOTH, Pass, RequestStep, WaitingStep

logger = logging.getLogger("portico.proxy")

FAILED: Final = Answer(500, "AuthFailed")
UNAUTHORIZED: Final = Answer(401, "AuthUnauthorized")
FORBIDDEN: Final = Answer(403, "AuthForbidden")
# The reason of a sign-in redirect: a 401 for `satisfy any`'s precedence.
SIGNIN: Final = "AuthSignin"
# Cached answers per worker; past this the cache starts over (a flood of keys cannot grow it).
CACHE_LIMIT: Final = 10_000
# Not sent to the auth service from the client's request (nginx: proxy_pass_request_body off,
# Content-Length "", X-Forwarded-Proto ""), or set by the subrequest itself.
_NOT_FORWARDED: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "x-forwarded-proto",
        "x-original-url",
        "x-original-method",
        "x-original-uri",
        "x-scheme",
        "x-sent-from",
        "x-auth-request-redirect",
    }
)
# RFC 3986 unreserved characters: what nginx's set_escape_uri leaves as is.
_UNRESERVED: Final = "-._~"


def _visible(value: str) -> bool:
    return all(" " <= c <= "~" or c == "\t" for c in value)


def render(template: str, head: RequestHead, client: ClientContext) -> str:
    """A URL with the request variables of config.AUTH_URL_VARIABLES replaced."""
    if "$" not in template:
        return template
    scheme = client.scheme.decode("latin-1")
    host = head.host.decode("latin-1")
    target = head.target.decode("latin-1")
    values = (
        ("$escaped_request_uri", quote(target, safe=_UNRESERVED)),
        ("$request_method", head.method.decode("latin-1")),
        ("$pass_access_scheme", scheme),
        ("$request_uri", target),
        ("$http_host", host),
        ("$scheme", scheme),
        ("$host", host.rsplit(":", 1)[0] if not host.endswith("]") else host),
    )
    for name, value in values:
        template = template.replace(name, value)
    return template


def _cache_key(template: str, head: RequestHead, client: ClientContext) -> str:
    """auth-cache-key with its variables ($remote_user, $http_*, $cookie_*, ...) rendered."""
    out: list[str] = []
    i = 0
    fields: dict[str, str] | None = None
    while i < len(template):
        c = template[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < len(template) and (template[j].isalnum() or template[j] in "_-"):
            j += 1
        name = template[i + 1 : j]
        i = j
        if fields is None:
            fields = _fields(head)
        if name == "remote_user":
            out.append(_remote_user(fields.get("authorization", "")))
        elif name.startswith("cookie_"):
            out.append(_cookie(fields.get("cookie", ""), name[7:]))
        elif name.startswith("http_"):
            out.append(fields.get(name[5:].replace("_", "-"), ""))
        elif name == "host":
            out.append(head.host.decode("latin-1"))
        elif name == "request_uri":
            out.append(head.target.decode("latin-1"))
        elif name == "uri":
            out.append(head.path)
        elif name == "remote_addr":
            out.append(client.client_ip.decode("latin-1"))
        elif name == "scheme":
            out.append(client.scheme.decode("latin-1"))
        out.append("\x00")  # variables cannot run into each other
    return "".join(out)


def _remote_user(authorization: str) -> str:
    import base64
    import binascii

    kind, _, credentials = authorization.partition(" ")
    if kind.lower() != "basic":
        return ""
    try:
        return base64.b64decode(credentials.strip(), validate=True).decode("latin-1").split(":")[0]
    except (binascii.Error, ValueError):
        return ""


def _cookie(cookies: str, name: str) -> str:
    for pair in cookies.split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return ""


def _fields(head: RequestHead) -> dict[str, str]:
    """The request fields as the pod would get them (lower-case names; repeated ones joined)."""
    data = head.upstream_head
    rest = head.upstream_rest if data is None else data[data.index(b"\r\n") + 2 :]
    out: dict[str, str] = {}
    for line in rest.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        value = value.strip(" \t")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _pairs(head: RequestHead) -> list[tuple[str, str]]:
    data = head.upstream_head
    rest = head.upstream_rest if data is None else data[data.index(b"\r\n") + 2 :]
    out: list[tuple[str, str]] = []
    for line in rest.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() not in _NOT_FORWARDED:
            out.append((name.strip(), value.strip(" \t")))
    return out


class Sessions:
    """The aiohttp sessions of one worker, one per (keepalive, keepalive_timeout) setting,
    made on first use on the running loop and kept for the worker's life."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[int, int], aiohttp.ClientSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, keepalive: int, keepalive_timeout: int) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A session belongs to its loop (a worker has one; tests start one per test).
            self._sessions = {}
            self._loop = loop
        key = (keepalive, keepalive_timeout)
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,
                force_close=keepalive == 0,
                keepalive_timeout=float(keepalive_timeout) if keepalive else None,
                ssl=False,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            self._sessions[key] = session
        return session

    async def close(self) -> None:
        """Close the sessions of the running loop (the worker's shutdown)."""
        sessions = self._sessions if self._loop is asyncio.get_running_loop() else {}
        self._sessions = {}
        for session in sessions.values():
            await session.close()


SESSIONS: Final = Sessions()


class CheckExternalAuth(WaitingStep):
    """config.ExternalAuth (see the module docstring)."""

    def __init__(
        self,
        url: str,
        method: str,
        signin: str,
        signin_redirect_param: str,
        response_headers: tuple[str, ...],
        request_redirect: str,
        set_fields: tuple[tuple[str, str], ...],
        cache_key: str,
        cache_times: dict[int, int],
        always_set_cookie: bool,
        keepalive: int,
        keepalive_timeout: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        super().__init__(BOTH)
        self.url = url
        self.method = method
        self.signin = signin
        self.signin_redirect_param = signin_redirect_param
        self.response_headers = response_headers
        self.dropped = frozenset(n.lower().encode("latin-1") for n in response_headers)
        self.request_redirect = request_redirect
        self.set_fields = set_fields
        self.cache_key = cache_key
        self.cache_times = cache_times
        self.cache: dict[str, tuple[float, int, tuple[tuple[str, str], ...]]] = {}
        self.always_set_cookie = always_set_cookie
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )

    async def check(self, head: RequestHead, client: ClientContext) -> Answer | Pass | None:
        key = ""
        answer: tuple[int, tuple[tuple[str, str], ...]] | None = None
        if self.cache_key:
            key = self.url + "\x00" + _cache_key(self.cache_key, head, client)
            cached = self.cache.get(key)
            if cached is not None:
                if cached[0] > time.monotonic():
                    answer = (cached[1], cached[2])
                else:
                    del self.cache[key]
        if answer is None:
            answer = await self._ask(head, client)
            if answer is None:
                return FAILED
            seconds = self.cache_times.get(answer[0]) if key else None
            if seconds:
                if len(self.cache) >= CACHE_LIMIT:
                    self.cache.clear()
                self.cache[key] = (time.monotonic() + seconds, answer[0], answer[1])
        return self._decide(answer[0], answer[1], head, client)

    async def _ask(
        self, head: RequestHead, client: ClientContext
    ) -> tuple[int, tuple[tuple[str, str], ...]] | None:
        """(status, wanted fields) of the auth service's answer, None when it failed."""
        url = URL(render(self.url, head, client), encoded=True)
        target = head.target.decode("latin-1")
        scheme = client.scheme.decode("latin-1")
        fields = _pairs(head)
        fields += [
            # ingress-nginx sends the auth URL's host name, without its port.
            ("Host", url.raw_host or ""),
            ("X-Original-URL", f"{scheme}://{head.host.decode('latin-1')}{target}"),
            ("X-Original-Method", head.method.decode("latin-1")),
            ("X-Sent-From", "nginx-ingress-controller"),
            ("X-Auth-Request-Redirect", self.request_redirect or target),
        ]
        if self.method:
            fields += [("X-Original-URI", target), ("X-Scheme", scheme)]
        if self.set_fields:
            names = {n.lower() for n, _ in self.set_fields}
            fields = [f for f in fields if f[0].lower() not in names]
            fields += [f for f in self.set_fields if f[1]]
        session = SESSIONS.get(self.keepalive, self.keepalive_timeout)
        try:
            async with session.request(
                self.method or "GET",
                url,
                headers=CIMultiDict(fields),
                allow_redirects=False,
                timeout=self.timeout,
                data=None,
            ) as response:
                status = response.status
                # The client's Set-Cookie fields under the name "" (a listed Set-Cookie also goes
                # to the pod, as authentik asks).
                wanted: list[tuple[str, str]] = [
                    ("", v) for v in response.headers.getall("Set-Cookie", ())
                ]
                if 200 <= status < 300:
                    for name in self.response_headers:
                        values = response.headers.getall(name, ())
                        if values:
                            wanted.append((name, ", ".join(values)))
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            logger.info(
                "auth.failed",
                extra={"auth_url": str(url), "error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        if not all(_visible(v) for _, v in wanted):
            return None  # a value that cannot be forwarded as it is: no pass
        return status, tuple(wanted)

    def _decide(
        self,
        status: int,
        fields: tuple[tuple[str, str], ...],
        head: RequestHead,
        client: ClientContext,
    ) -> Answer | Pass | None:
        cookies = b"".join(b"Set-Cookie: %s\r\n" % v.encode("latin-1") for n, v in fields if not n)
        if 200 <= status < 300:
            if self.dropped:
                added = b"".join(
                    b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1"))
                    for n, v in fields
                    if n
                )
                head.reshape(fields=added, drop=self.dropped)
            return Pass(cookies, self.always_set_cookie) if cookies else None
        if status == 401:
            if self.signin:
                location = self._signin(head, client)
                return Answer(302, SIGNIN, b"Location: " + location + b"\r\n" + cookies)
            return Answer(401, UNAUTHORIZED.reason, cookies) if cookies else UNAUTHORIZED
        if status == 403:
            return FORBIDDEN
        logger.info("auth.failed", extra={"auth_url": self.url, "status": status})
        return FAILED

    def _signin(self, head: RequestHead, client: ClientContext) -> bytes:
        url = render(self.signin, head, client)
        param = self.signin_redirect_param
        _, _, query = url.partition("?")
        query = query.partition("#")[0]
        if any(p.partition("=")[0] == param and p.partition("=")[2] for p in query.split("&")):
            return url.encode("latin-1")
        original = "{}://{}{}".format(
            client.scheme.decode("latin-1"),
            head.host.decode("latin-1"),
            quote(head.target.decode("latin-1"), safe=_UNRESERVED),
        )
        return ("{}{}{}={}".format(url, "&" if query else "?", param, original)).encode("latin-1")


def _denied(answer: Answer) -> bool:
    """An access check's refusal (which `satisfy any` passes over), not a failure."""
    return answer.status in (401, 403) or answer.reason == SIGNIN


def _preferred(current: Answer | None, answer: Answer) -> Answer:
    """nginx's `satisfy any` keeps a 401 (or its sign-in redirect) over a 403."""
    if current is not None and (current.status == 401 or current.reason == SIGNIN):
        return current
    return answer


class AnyOf(RequestStep):
    """`satisfy any` over access checks that do not wait (source ranges, basic auth)."""

    __slots__ = ("steps",)

    def __init__(self, steps: tuple[RequestStep, ...]) -> None:
        super().__init__(BOTH)
        self.steps = steps

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        refused: Answer | None = None
        for step in self.steps:
            answer = step.request(head, client)
            if answer is None:
                return None
            if not _denied(answer):
                return answer
            refused = _preferred(refused, answer)
        return refused


class AnyOfWaiting(WaitingStep):
    """`satisfy any` with an external auth among the checks: the others are asked first, so
    a request they let in costs no subrequest."""

    __slots__ = ("steps",)

    def __init__(self, steps: tuple[RequestStep, ...]) -> None:
        super().__init__(BOTH)
        self.steps = tuple(s for s in steps if not s.waits) + tuple(s for s in steps if s.waits)

    async def check(self, head: RequestHead, client: ClientContext) -> Answer | Pass | None:
        refused: Answer | None = None
        for step in self.steps:
            if isinstance(step, WaitingStep):
                verdict = await step.check(head, client)
            else:
                verdict = step.request(head, client)
            if not isinstance(verdict, Answer):
                return verdict
            if not _denied(verdict):
                return verdict
            refused = _preferred(refused, verdict)
        return refused


def any_of(steps: tuple[RequestStep, ...]) -> RequestStep:
    """The `satisfy any` step over these access checks."""
    if any(s.waits for s in steps):
        return AnyOfWaiting(steps)
    return AnyOf(steps)


def external_auth_step(
    spec_url: str,
    method: str,
    signin: str,
    signin_redirect_param: str,
    response_headers: tuple[str, ...],
    request_redirect: str,
    set_names: tuple[str, ...],
    set_values: tuple[str, ...],
    cache_key: str,
    cache_statuses: tuple[int, ...],
    cache_seconds: tuple[int, ...],
    always_set_cookie: bool,
    keepalive: int,
    keepalive_timeout: int,
    connect_timeout: float,
    read_timeout: float,
) -> CheckExternalAuth:
    """The step of a config.ExternalAuth (its values are valid: checked when decoded)."""
    return CheckExternalAuth(
        spec_url,
        method,
        signin,
        signin_redirect_param,
        response_headers,
        request_redirect,
        tuple(zip(set_names, set_values, strict=True)),
        cache_key,
        dict(zip(cache_statuses, cache_seconds, strict=True)),
        always_set_cookie,
        keepalive,
        keepalive_timeout,
        connect_timeout,
        read_timeout,
    )
