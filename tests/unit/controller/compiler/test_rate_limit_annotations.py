"""Rate-limit annotations compiled into the RateLimit step (proxy/config.py), and the values
that do not read. Rows cite ingress-nginx's docs (annotations.md "Rate Limiting"), its parser
(internal/ingress/annotations/ratelimit/main.go) or its e2e tests."""

from __future__ import annotations

import pytest

from controller.compiler import CompileSettings, compile_view
from proxy.config import RateLimit, Refuse, RouteOptions
from tests.kube_factory import ingress, ingress_class, opaque_secret, rule, service, store_of

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
DOC = 'annotations.md "Rate Limiting"'
MAIN = "ratelimit/main.go Parse"

VALID: list[tuple[dict[str, str], RateLimit | None, str]] = [
    # (annotations, the step expected, source)
    ({N + "limit-rps": "5"}, RateLimit("default/app", rps=5), DOC + ": burst multiplier 5"),
    ({N + "limit-rpm": "300"}, RateLimit("default/app", rpm=300), DOC),
    (
        {N + "limit-rps": "5", N + "limit-rpm": "100", N + "limit-burst-multiplier": "2"},
        RateLimit("default/app", rps=5, rpm=100, burst_multiplier=2),
        DOC + ": both limits, the multiplier for each",
    ),
    (
        {N + "limit-connections": "8"},
        RateLimit("default/app", connections=8),
        'limitconnections.go "should limit-connections"',
    ),
    (
        {N + "limit-rps": "1", N + "limit-whitelist": "10.0.0.1/8, 192.0.2.7"},
        RateLimit("default/app", rps=1, allow=("10.0.0.0/8", "192.0.2.7/32")),
        DOC + ": limit-whitelist, CIDRs",
    ),
    (
        {
            N + "limit-rps": "1",
            N + "limit-allowlist": "192.0.2.0/24",
            N + "limit-whitelist": "10.0.0.0/8",
        },
        RateLimit("default/app", rps=1, allow=("192.0.2.0/24",)),
        MAIN + ": limit-allowlist, with limit-whitelist its alias",
    ),
    (
        {N + "limit-rps": "1", P + "limit-rps": "7"},
        RateLimit("default/app", rps=7),
        "portico.dev/ overrides nginx.ingress.kubernetes.io/",
    ),
    ({N + "limit-rps": "0"}, None, MAIN + ": rpm == 0 && rps == 0 && conn == 0: no zone"),
    ({N + "limit-whitelist": "10.0.0.0/8"}, None, MAIN + ": an allowlist alone limits nothing"),
    ({N + "limit-burst-multiplier": "3"}, None, MAIN + ": a multiplier alone limits nothing"),
]


def compiled(annotations: dict[str, str], **settings: int) -> tuple[RouteOptions, list[str]]:
    result = compile_view(
        store_of(
            ingress_class(),
            service("web"),
            ingress("app", annotations=annotations, rules=[rule("app.test")]),
        ),
        CompileSettings(**settings),  # type: ignore[arg-type]
    )
    (vhost,) = result.snapshot.routes.virtual_hosts
    return vhost.rules[0].options, [p.reason for p in result.problems]


@pytest.mark.parametrize(("annotations", "step", "source"), VALID, ids=[r[2] for r in VALID])
def test_annotations_make_the_step(
    annotations: dict[str, str], step: RateLimit | None, source: str
) -> None:
    options, problems = compiled(annotations)
    assert problems == []
    assert options.step(RateLimit) == step


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit-rps", "ten"),
        ("limit-rpm", "-1"),
        ("limit-connections", "1.5"),
        ("limit-burst-multiplier", "x"),
        ("limit-whitelist", "10.0.0.0/8,"),
        ("limit-allowlist", "example.com"),
    ],
)
def test_a_value_that_does_not_read_fails_closed(name: str, value: str) -> None:
    # ingress-nginx validates them as integers / CIDRs (ratelimit/main.go); Portico answers 503
    # rather than serve without the limit that was asked for.
    options, problems = compiled({N + "limit-rps": "5", N + name: value})
    assert problems == ["InvalidAnnotation"]
    assert options.step(RateLimit) is None
    assert options.step(Refuse) == Refuse(503, "InvalidRateLimit")


def test_statuses_come_from_the_settings() -> None:
    # configmap.md limit-req-status-code / limit-conn-status-code (default 503).
    options, _ = compiled(
        {N + "limit-rps": "5", N + "limit-connections": "2"},
        limit_req_status_code=429,
        limit_conn_status_code=444,
    )
    step = options.step(RateLimit)
    assert step is not None and (step.status, step.connection_status) == (429, 444)


def test_the_limit_runs_before_the_source_ranges() -> None:
    # nginx's preaccess phase (limit_req, limit_conn) runs before its access phase (allow/deny).
    options, _ = compiled({N + "limit-rps": "5", N + "whitelist-source-range": "10.0.0.0/8"})
    kinds = [type(s).__name__ for s in options.policy]
    assert kinds.index("RateLimit") < kinds.index("SourceRanges")


def test_basic_auth_runs_after_the_limit() -> None:
    # nginx's preaccess phase (limit_req) before its access phase (auth_basic): a request
    # refused by the limit gets the limit's status, not a 401 challenge.
    apr1 = "$apr1$cV7rta74$/wB6b37vKIZ6elCNQmJuT/"
    result = compile_view(
        store_of(
            ingress_class(),
            service("web"),
            opaque_secret("users", auth=f"foo:{apr1}\n"),
            ingress(
                "app",
                annotations={
                    N + "limit-rps": "5",
                    N + "auth-type": "basic",
                    N + "auth-secret": "users",
                },
                rules=[rule("app.test")],
            ),
        ),
        CompileSettings(),
    )
    (vhost,) = result.snapshot.routes.virtual_hosts
    kinds = [type(s).__name__ for s in vhost.rules[0].options.policy]
    assert kinds.index("RateLimit") < kinds.index("BasicAuth"), kinds
