"""limit-rate / limit-rate-after compiled into RouteOptions.limit_rate / limit_rate_after
(bytes; proxy/pacing.py runs them), and the values that do not read. Rows cite ingress-nginx's
docs (annotations.md "Rate Limiting": kilobytes), its parser (ratelimit/main.go: strconv.Atoi,
a value that does not read is the ConfigMap's default, 0), its template (template.go
buildRateLimit: `limit_rate_after {{ N }}k;` / `limit_rate {{ N }}k;`, each only above 0) and
its e2e test (limitrate.go "Check limit-rate annotation")."""

from __future__ import annotations

import pytest

from controller.compiler import CompileSettings, compile_view
from proxy.config import RouteOptions
from tests.kube_factory import ingress, ingress_class, rule, service, store_of

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
DOC = 'annotations.md "Rate Limiting"'
E2E = 'limitrate.go "Check limit-rate annotation"'
MAIN = "ratelimit/main.go Parse"
TEMPLATE = "template.go buildRateLimit"

ROWS: list[tuple[dict[str, str], tuple[int, int], list[str], str]] = [
    # (annotations, (limit_rate, limit_rate_after) in bytes, problems, source)
    ({N + "limit-rate": "1"}, (1024, 0), [], E2E + ": limit_rate 1k"),
    ({N + "limit-rate": "90"}, (90 * 1024, 0), [], E2E + ": limit_rate 90k"),
    (
        {N + "limit-rate": "64", N + "limit-rate-after": "512"},
        (64 * 1024, 512 * 1024),
        [],
        DOC + ": limit-rate-after, initial kilobytes",
    ),
    ({N + "limit-rate": "0"}, (0, 0), [], DOC + ": the zero value disables rate limiting"),
    ({N + "limit-rate": "-3"}, (0, 0), [], TEMPLATE + ": written only if > 0"),
    ({N + "limit-rate": "+8"}, (8 * 1024, 0), [], MAIN + ": strconv.Atoi takes a sign"),
    ({N + "limit-rate-after": "1"}, (0, 1024), [], TEMPLATE + ": limit_rate_after alone"),
    ({N + "limit-rate": "1", P + "limit-rate": "2"}, (2048, 0), [], "portico.dev/ wins"),
    ({N + "limit-rate": "64k"}, (0, 0), ["InvalidAnnotation"], MAIN + ": no unit"),
    ({N + "limit-rate": "1.5"}, (0, 0), ["InvalidAnnotation"], MAIN + ": an integer"),
    ({N + "limit-rate": " 8"}, (0, 0), ["InvalidAnnotation"], MAIN + ": strconv.Atoi, no space"),
    (
        {N + "limit-rate": "8", N + "limit-rate-after": "lots"},
        (8 * 1024, 0),
        ["InvalidAnnotation"],
        MAIN + ": each read on its own, the other kept",
    ),
]


def compiled(annotations: dict[str, str]) -> tuple[RouteOptions, list[str]]:
    result = compile_view(
        store_of(
            ingress_class(),
            service("web"),
            ingress("app", annotations=annotations, rules=[rule("app.test")]),
        ),
        CompileSettings(),
    )
    (vhost,) = result.snapshot.routes.virtual_hosts
    return vhost.rules[0].options, [p.reason for p in result.problems]


@pytest.mark.parametrize(
    ("annotations", "expected", "problems", "source"), ROWS, ids=[r[3] for r in ROWS]
)
def test_limit_rate_annotations(
    annotations: dict[str, str], expected: tuple[int, int], problems: list[str], source: str
) -> None:
    options, found = compiled(annotations)
    assert found == problems
    assert (options.limit_rate, options.limit_rate_after) == expected
    # Not access control: never a refusal, the route serves (paced or not).
    assert options.policy == ()


CONFIGMAP = "annotations.md: the ConfigMap's values, which an annotation overrides"
DEFAULTS: list[tuple[dict[str, str], tuple[int, int], str]] = [
    # (annotations, (limit_rate, limit_rate_after) with the ConfigMap's 8 and 16 KiB, source)
    ({}, (8 * 1024, 16 * 1024), CONFIGMAP + ": no annotation"),
    ({N + "limit-rate": "0"}, (0, 16 * 1024), CONFIGMAP + ": 0 overrides"),
    ({N + "limit-rate": "2"}, (2048, 16 * 1024), CONFIGMAP + ": each annotation on its own"),
    ({N + "limit-rate-after": "1"}, (8 * 1024, 1024), CONFIGMAP + ": each on its own"),
    ({N + "limit-rate": "fast"}, (8 * 1024, 16 * 1024), MAIN + ": invalid, the ConfigMap's"),
]


@pytest.mark.parametrize(
    ("annotations", "expected", "source"), DEFAULTS, ids=[r[2] for r in DEFAULTS]
)
def test_the_configmap_values_apply_without_annotations(
    annotations: dict[str, str], expected: tuple[int, int], source: str
) -> None:
    result = compile_view(
        store_of(
            ingress_class(),
            service("web"),
            ingress("app", annotations=annotations, rules=[rule("app.test")]),
        ),
        CompileSettings(limit_rate=8 * 1024, limit_rate_after=16 * 1024),
    )
    (vhost,) = result.snapshot.routes.virtual_hosts
    options = vhost.rules[0].options
    assert (options.limit_rate, options.limit_rate_after) == expected
