"""proxy/extauth.py without sockets: URL variables, cache keys, and satisfy any's answer.

The wire behaviour (the auth service asked, its answers mapped) is in
tests/integration/test_external_auth.py; these rows pin the pieces it is built of.
"""

from __future__ import annotations

import pytest

from proxy.extauth import AnyOf, _cache_key, render
from proxy.headers import ClientContext, RequestHead, parse_request
from proxy.replies import Answer
from proxy.steps import RequestStep

CTX = ClientContext("192.0.2.7", "https", 443, ())


def head(
    target: bytes = b"/a/b?x=1&y=2", fields: tuple[tuple[bytes, bytes], ...] = ()
) -> RequestHead:
    parts: list[bytes] = [b"", b" ", b"", b""]  # the request line's slots (see parse_request)
    for name, value in fields:
        parts += [name, b": ", value, b"\r\n"]
    return parse_request(b"GET", target, "1.1", parts, [(b"host", b"app.example:8443")], CTX)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # annotations.md's oauth2-proxy example
        (
            "https://$host/oauth2/start?rd=$escaped_request_uri",
            "https://app.example/oauth2/start?rd=%2Fa%2Fb%3Fx%3D1%26y%3D2",
        ),
        # vouch-proxy's: $scheme://$http_host$request_uri
        (
            "https://$host/login?url=$scheme://$http_host$request_uri",
            "https://app.example/login?url=https://app.example:8443/a/b?x=1&y=2",
        ),
        # Authelia's
        ("https://auth.example?rm=$request_method", "https://auth.example?rm=GET"),
        ("http://auth/plain", "http://auth/plain"),
    ],
)
def test_render(template: str, expected: str) -> None:
    assert render(template, head(), CTX) == expected


def test_cache_key_variables() -> None:
    fields = (
        (b"Authorization", b"Basic dXNlcjpwYXNzd29yZA=="),
        (b"Cookie", b"a=1; session=s3cr3t"),
        (b"X-Tenant", b"blue"),
    )
    key = _cache_key("$remote_user:$cookie_session:$http_x_tenant:$uri", head(fields=fields), CTX)
    assert key == "user\x00:s3cr3t\x00:blue\x00:/a/b\x00"
    # Different credentials, different keys; variables cannot run into each other.
    assert _cache_key("$http_authorization", head(), CTX) == "\x00"


class Fixed(RequestStep):
    def __init__(self, answer: Answer | None) -> None:
        super().__init__()
        self.answer = answer

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        return self.answer


FORBIDDEN = Answer(403, "SourceRangeDenied")
UNAUTHORIZED = Answer(401, "AuthUnauthorized")
SIGNIN = Answer(302, "AuthSignin", b"Location: /in\r\n")
FAILED = Answer(500, "AuthFailed")


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ((None, UNAUTHORIZED), None),  # one lets it in
        ((FORBIDDEN, None), None),
        ((FORBIDDEN, UNAUTHORIZED), UNAUTHORIZED),  # nginx: 401 wins over 403
        ((UNAUTHORIZED, FORBIDDEN), UNAUTHORIZED),
        ((FORBIDDEN, SIGNIN), SIGNIN),  # the sign-in redirect is a 401
        ((FORBIDDEN, FORBIDDEN), FORBIDDEN),
        ((FAILED, None), FAILED),  # a failure is answered at once, never passed over
    ],
)
def test_any_of(answers: tuple[Answer | None, ...], expected: Answer | None) -> None:
    step = AnyOf(tuple(Fixed(a) for a in answers))
    assert step.request(head(), CTX) is expected
