"""Sticky-session and hashing annotations parsed into the StickySessions / HashBy steps of the
route's policy; invalid values are problems and leave the step's default. Rows cite
ingress-nginx's e2e tests (test/e2e/annotations/affinity.go, affinitymode.go,
upstreamhashby.go), its parsers (internal/ingress/annotations/sessionaffinity/main.go,
upstreamhashby/main.go) or its balancer (rootfs/etc/nginx/lua/balancer.lua)."""

from __future__ import annotations

import pytest

from controller.compiler.annotations import parse_annotations
from proxy.config import HashBy, StickySessions

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"

VALID: list[tuple[dict[str, str], StickySessions | HashBy | None, str]] = [
    ({"affinity": "cookie"}, StickySessions(), "main.go: default name INGRESSCOOKIE, balanced"),
    (
        {"affinity": "cookie", "session-cookie-name": "SERVERID"},
        StickySessions("SERVERID"),
        'affinity.go "should set sticky cookie SERVERID"',
    ),
    (
        {"affinity": "cookie", "session-cookie-path": "/something"},
        StickySessions(path="/something"),
        'affinity.go "should set the path to /something on the generated cookie"',
    ),
    (
        {
            "affinity": "cookie",
            "session-cookie-expires": "172800",
            "session-cookie-max-age": "259200",
        },
        StickySessions(max_age="259200", expires="172800"),
        'affinity.go "should set cookie with expires"',
    ),
    (
        {"affinity": "cookie", "session-cookie-max-age": "-1"},
        StickySessions(max_age="-1"),
        "main.go affinityCookieExpiresRegex: a sign is allowed",
    ),
    (
        {"affinity": "cookie", "session-cookie-domain": "foo.bar"},
        StickySessions(domain="foo.bar"),
        'affinity.go "should set cookie with domain"',
    ),
    (
        {"affinity": "cookie", "session-cookie-secure": "true"},
        StickySessions(secure=True),
        'affinity.go "should set secure in cookie with provided true annotation on http"',
    ),
    (
        {"affinity": "cookie", "session-cookie-samesite": "none"},
        StickySessions(samesite="None"),
        "main.go: samesite options none, lax, strict, any case",
    ),
    (
        {
            "affinity": "cookie",
            "session-cookie-samesite": "None",
            "session-cookie-conditional-samesite-none": "true",
            "session-cookie-change-on-failure": "True",
        },
        StickySessions(samesite="None", conditional_samesite_none=True, change_on_failure=True),
        "annotations.md#session-affinity; strconv.ParseBool spellings",
    ),
    (
        {"affinity": "cookie", "affinity-mode": "persistent"},
        StickySessions(mode="persistent"),
        'affinitymode.go "Check persistent affinity mode"',
    ),
    (
        {"session-cookie-name": "SERVERID", "affinity-mode": "persistent"},
        None,
        "main.go: the cookie annotations mean nothing without affinity: cookie",
    ),
    (
        {"upstream-hash-by": "$request_uri"},
        HashBy("$request_uri"),
        'upstreamhashby.go "should connect to the same pod"',
    ),
    (
        {
            "upstream-hash-by": "$request_uri",
            "upstream-hash-by-subset": "true",
            "upstream-hash-by-subset-size": "3",
        },
        HashBy("$request_uri", subset=True, subset_size=3),
        'upstreamhashby.go "should connect to the same subset of pods"',
    ),
    (
        {"upstream-hash-by": "$host$request_uri", "upstream-hash-by-subset-size": "0"},
        HashBy("$host$request_uri", subset_size=3),
        "upstreamhashby/main.go: size 0 is the default 3",
    ),
    (
        {"affinity": "cookie", "upstream-hash-by": "$request_uri"},
        StickySessions(),
        "balancer.lua: the sticky balancer before chash",
    ),
]


def _step(annotations: dict[str, str]) -> StickySessions | HashBy | None:
    options, errors = parse_annotations({N + k: v for k, v in annotations.items()})
    assert errors == ()
    sticky = options.route.step(StickySessions)
    hashing = options.route.step(HashBy)
    assert sticky is None or hashing is None
    return sticky or hashing


@pytest.mark.parametrize(("annotations", "step", "source"), VALID)
def test_valid(annotations: dict[str, str], step: object, source: str) -> None:
    assert _step(annotations) == step, source


def test_portico_prefix_wins() -> None:
    options, errors = parse_annotations(
        {N + "affinity": "cookie", N + "session-cookie-name": "A", P + "session-cookie-name": "B"}
    )
    assert errors == ()
    assert options.route.step(StickySessions) == StickySessions("B")


INVALID: list[tuple[dict[str, str], str, StickySessions | HashBy | None, str]] = [
    # (annotations, the invalid one, the step that results, source)
    ({"affinity": "ip"}, "affinity", None, "main.go: the only affinity type is cookie"),
    (
        {"affinity": "cookie", "affinity-mode": "sticky"},
        "affinity-mode",
        StickySessions(),
        "main.go: balanced or persistent",
    ),
    (
        {"affinity": "cookie", "session-cookie-name": "a=b"},
        "session-cookie-name",
        StickySessions(),
        "a cookie name is a token",
    ),
    (
        {"affinity": "cookie", "session-cookie-path": "/a;b"},
        "session-cookie-path",
        StickySessions(),
        "main.go: URLIsValidRegex",
    ),
    (
        {"affinity": "cookie", "session-cookie-domain": "a b"},
        "session-cookie-domain",
        StickySessions(),
        "main.go: BasicCharsRegex",
    ),
    (
        {"affinity": "cookie", "session-cookie-max-age": "1d"},
        "session-cookie-max-age",
        StickySessions(),
        "main.go: affinityCookieExpiresRegex",
    ),
    (
        {"affinity": "cookie", "session-cookie-samesite": "always"},
        "session-cookie-samesite",
        StickySessions(),
        "main.go: none, lax, strict",
    ),
    (
        {"affinity": "cookie", "session-cookie-secure": "yes"},
        "session-cookie-secure",
        StickySessions(),
        "strconv.ParseBool",
    ),
    ({"upstream-hash-by": "$upstream_addr"}, "upstream-hash-by", None, "no request variable"),
    ({"upstream-hash-by": "fixed"}, "upstream-hash-by", None, "no variable: one pod for all"),
    (
        {"upstream-hash-by": "$uri", "upstream-hash-by-subset-size": "-1"},
        "upstream-hash-by-subset-size",
        HashBy("$uri"),
        "upstreamhashby/main.go: ValidateInt; a size must be positive",
    ),
]


@pytest.mark.parametrize(("annotations", "invalid", "step", "source"), INVALID)
def test_invalid(annotations: dict[str, str], invalid: str, step: object, source: str) -> None:
    options, errors = parse_annotations({N + k: v for k, v in annotations.items()})
    assert [e.annotation for e in errors] == [N + invalid], source
    assert (options.route.step(StickySessions) or options.route.step(HashBy)) == step
