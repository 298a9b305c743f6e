"""Retries and buffering annotations parsed into RouteOptions (proxy-next-upstream, -tries,
-timeout, proxy-request-buffering, proxy-buffer-size) or accepted and validated only
(proxy-buffering, client-body-buffer-size, proxy-max-temp-file-size); invalid values are
problems. Rows cite ingress-nginx's e2e tests (test/e2e/annotations/*.go), its validators
(internal/ingress/annotations/proxy/main.go) or nginx's documentation."""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler.annotations import parse_annotations
from proxy.config import DEFAULT_OPTIONS

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
E2E_NEXT = 'proxy.go "should build proxy next upstream"'
E2E_BUFFERING = 'proxy.go "should turn on proxy-buffering"'

VALID: list[tuple[dict[str, str], dict[str, Any], str]] = [
    # (annotations without prefix, RouteOptions fields expected, source)
    (
        {
            "proxy-next-upstream": "error timeout http_502",
            "proxy-next-upstream-timeout": "999999",
            "proxy-next-upstream-tries": "888888",
        },
        {
            "next_upstream": ("error", "timeout", "http_502"),
            "next_upstream_timeout": 999999.0,
            "next_upstream_tries": 888888,
        },
        E2E_NEXT,
    ),
    (
        {"proxy-next-upstream": "error timeout off"},
        {"next_upstream": ()},
        "nginx proxy_next_upstream: off (anywhere in the list) disables it",
    ),
    (
        {"proxy-next-upstream": "off"},
        {"next_upstream": ()},
        "nginx proxy_next_upstream off",
    ),
    (
        {"proxy-next-upstream": "http_503 non_idempotent http_503"},
        {"next_upstream": ("http_503", "non_idempotent")},
        "main.go validUpstreamAnnotation; duplicates kept once",
    ),
    (
        {"proxy-next-upstream": "invalid_header http_500 http_504 http_403 http_404 http_429"},
        {
            "next_upstream": (
                "invalid_header",
                "http_500",
                "http_504",
                "http_403",
                "http_404",
                "http_429",
            )
        },
        "main.go validUpstreamAnnotation",
    ),
    (
        {"proxy-next-upstream-tries": "2"},
        {"next_upstream": ("error", "timeout"), "next_upstream_tries": 2},
        "ingress-nginx default proxy-next-upstream: error timeout",
    ),
    (
        {"proxy-next-upstream-tries": "0"},
        {"next_upstream": ("error", "timeout"), "next_upstream_tries": 0},
        "nginx proxy_next_upstream_tries: 0 turns off this limitation",
    ),
    (
        {"proxy-next-upstream-timeout": "0"},
        {"next_upstream": ("error", "timeout"), "next_upstream_timeout": None},
        "ingress-nginx default proxy-next-upstream-timeout 0: no limit",
    ),
    (
        {"proxy-request-buffering": "off"},
        {"request_buffering": False},
        'proxy.go "should turn off proxy-request-buffering"',
    ),
    ({"proxy-request-buffering": "on"}, {"request_buffering": True}, E2E_BUFFERING),
    ({"proxy-buffer-size": "8k"}, {"response_head_limit": 8192}, E2E_BUFFERING),
    ({"proxy-buffer-size": "1M"}, {"response_head_limit": 1024**2}, "nginx size units"),
    ({"proxy-buffer-size": "4096"}, {"response_head_limit": 4096}, "nginx size units"),
    ({"proxy-buffering": "on"}, {}, E2E_BUFFERING),
    ({"client-body-buffer-size": "1000"}, {}, 'clientbodybuffersize.go "to 1000"'),
    ({"client-body-buffer-size": "1K"}, {}, 'clientbodybuffersize.go "to 1K"'),
    ({"client-body-buffer-size": "1k"}, {}, 'clientbodybuffersize.go "to 1k"'),
    ({"client-body-buffer-size": "1m"}, {}, 'clientbodybuffersize.go "to 1m"'),
    ({"client-body-buffer-size": "1M"}, {}, 'clientbodybuffersize.go "to 1M"'),
    ({"proxy-max-temp-file-size": "1024m"}, {}, "ingress-nginx default"),
    ({"proxy-max-temp-file-size": "0"}, {}, "nginx proxy_max_temp_file_size 0"),
    ({"proxy-max-temp-file-size": "2g"}, {}, "template.go isValidByteSize (offset)"),
]


@pytest.mark.parametrize(("annotations", "fields", "source"), VALID)
@pytest.mark.parametrize("prefix", [N, P])
def test_valid(
    prefix: str, annotations: dict[str, str], fields: dict[str, Any], source: str
) -> None:
    opts, errors = parse_annotations({prefix + k: v for k, v in annotations.items()})
    assert errors == ()
    expected = {k: getattr(DEFAULT_OPTIONS, k) for k in ("next_upstream", "request_buffering")}
    expected.update(fields)
    for name, value in expected.items():
        assert getattr(opts.route, name) == value, source


INVALID: list[tuple[str, str, str]] = [
    ("proxy-next-upstream", "error sometimes", "main.go validUpstreamAnnotation"),
    ("proxy-next-upstream", "http_418", "main.go validUpstreamAnnotation"),
    ("proxy-next-upstream", "", "main.go validUpstreamAnnotation"),
    ("proxy-next-upstream", "error,timeout", "main.go validUpstreamAnnotation"),
    ("proxy-next-upstream-tries", "three", "parser.ValidateInt"),
    ("proxy-next-upstream-tries", "-1", "nginx: tries is a number, not negative"),
    ("proxy-next-upstream-timeout", "1m", "parser.ValidateInt"),
    ("proxy-request-buffering", "ON", "ValidateOptions on/off, case-sensitive"),
    ("proxy-request-buffering", "true", "ValidateOptions on/off"),
    ("proxy-buffering", "yes", "ValidateOptions on/off"),
    ("proxy-buffer-size", "4g", "template.go nginxSizeRegex (no g)"),
    ("proxy-buffer-size", "0", "a head limit of nothing"),
    ("proxy-buffer-size", "4 k", "nginx size"),
    ("client-body-buffer-size", "1b", 'clientbodybuffersize.go "invalid 1b"'),
    ("proxy-max-temp-file-size", "1t", "template.go nginxOffsetRegex"),
]


@pytest.mark.parametrize(("name", "value", "source"), INVALID)
def test_invalid_is_a_problem_and_ignored(name: str, value: str, source: str) -> None:
    opts, errors = parse_annotations({N + name: value})
    assert [e.annotation for e in errors] == [N + name], source
    assert opts.route == DEFAULT_OPTIONS


def test_portico_prefix_wins() -> None:
    opts, _ = parse_annotations(
        {N + "proxy-next-upstream": "error", P + "proxy-next-upstream": "off"}
    )
    assert opts.route.next_upstream == ()
