"""CanaryChoice: whether one request goes to the canary, read from the head as the pod is sent it.

Rows follow rootfs/etc/nginx/lua/balancer.lua's route_to_alternative_balancer (header with its
value or pattern, else always / never; then the cookie; then `math.random(total) <= weight`)
and nginx's `$http_<name>` (case-insensitive, "_" for "-", lines joined with ", ") and
`$cookie_<name>` variables.
"""

from __future__ import annotations

import random

import pytest

from proxy.canary import CanaryChoice, cookie_value, field_value
from proxy.config import Canary
from proxy.headers import ClientContext, RequestHead, parse_request


def _head(fields: list[tuple[bytes, bytes]], version: str = "1.1") -> RequestHead:
    parts: list[bytes] = [b"", b" ", b"", b""]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    special = [(b"host", b"a.example")] if version == "1.1" else []
    ctx = ClientContext("198.51.100.7", "http", 80, ())
    return parse_request(b"GET", b"/info", version, parts, special, ctx)


def _canary(**rules: object) -> CanaryChoice:
    return CanaryChoice(Canary("ns/c/80", "ns/c", "ns/ing-canary", "80", **rules))  # type: ignore[arg-type]


H = b"CanaryByHeader"

ROWS: dict[str, tuple[dict[str, object], list[tuple[bytes, bytes]], bool]] = {
    # id: (Canary rules, request fields, goes to the canary)
    "header always": ({"header": "canarybyheader"}, [(H, b"always")], True),
    "header never": ({"header": "canarybyheader"}, [(H, b"never")], False),
    "header other value, no cookie, no weight": ({"header": "canarybyheader"}, [(H, b"x")], False),
    "header name case-insensitive": (
        {"header": "canarybyheader"},
        [(b"CANARYBYHEADER", b"always")],
        True,
    ),
    "header value trimmed": ({"header": "canarybyheader"}, [(H, b"  always ")], True),
    # nginx $http_canary_by matches the field Canary-By.
    "underscore in the annotation is a dash": (
        {"header": "canary_by"},
        [(b"Canary-By", b"always")],
        True,
    ),
    # Several lines: nginx joins them ("always, always" is neither keyword).
    "two lines are joined": ({"header": "canarybyheader"}, [(H, b"always"), (H, b"always")], False),
    "value match": (
        {"header": "canarybyheader", "header_value": "DoCanary"},
        [(H, b"DoCanary")],
        True,
    ),
    "value makes always ordinary": (
        {"header": "canarybyheader", "header_value": "DoCanary"},
        [(H, b"always")],
        False,
    ),
    "pattern searched": (
        {"header": "canarybyheader", "header_pattern": "Can"},
        [(H, b"DoCanary")],
        True,
    ),
    "pattern case-sensitive": (
        {"header": "canarybyheader", "header_pattern": "can"},
        [(H, b"DoCanary")],
        False,
    ),
    "invalid pattern stays main even with cookie": (
        {"header": "canarybyheader", "header_pattern": "[", "header_invalid": True, "cookie": "c"},
        [(H, b"x"), (b"Cookie", b"c=always")],
        False,
    ),
    "invalid pattern, no header: cookie decides": (
        {"header": "canarybyheader", "header_pattern": "[", "header_invalid": True, "cookie": "c"},
        [(b"Cookie", b"c=always")],
        True,
    ),
    "header mismatch then cookie": (
        {"header": "canarybyheader", "header_value": "v", "cookie": "c"},
        [(H, b"w"), (b"Cookie", b"c=always")],
        True,
    ),
    "cookie always": ({"cookie": "Canary"}, [(b"Cookie", b"a=b; Canary=always")], True),
    "cookie name case-insensitive": ({"cookie": "Canary"}, [(b"Cookie", b"canary=always")], True),
    "cookie never beats weight": ({"cookie": "c", "weight": 100}, [(b"Cookie", b"c=never")], False),
    "first cookie of the name": ({"cookie": "c"}, [(b"Cookie", b"c=never; c=always")], False),
    "second Cookie line": ({"cookie": "c"}, [(b"Cookie", b"a=1"), (b"Cookie", b"c=always")], True),
    "cookie prefix is another cookie": ({"cookie": "c"}, [(b"Cookie", b"cc=always")], False),
    "header never beats weight": ({"header": "h", "weight": 100}, [(b"H", b"never")], False),
    "weight 100": ({"weight": 100}, [], True),
    "weight 0": ({"weight": 0}, [], False),
    "weight equal to a larger total": ({"weight": 500, "weight_total": 500}, [], True),
    "weight above the total": ({"weight": 150}, [], True),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_canary_choice(row: tuple[dict[str, object], list[tuple[bytes, bytes]], bool]) -> None:
    rules, fields, expected = row
    assert _canary(**rules).chooses(_head(fields)) is expected


def test_http_10_head_without_host() -> None:
    # No Host: the head after the request line is kept apart (upstream_rest).
    head = _head([(H, b"always")], version="1.0")
    assert head.upstream_head is None
    assert _canary(header="canarybyheader").chooses(head) is True


def test_field_and_cookie_values() -> None:
    head = _head([(b"X-A", b"1"), (b"Cookie", b" k = v ; z=2")])
    assert field_value(head, b"x-a") == b"1"
    assert field_value(head, b"x-b") is None
    assert cookie_value(head, b"k") == b"v"
    assert cookie_value(head, b"y") is None


def test_weight_is_a_uniform_draw() -> None:
    # balancer.lua: math.random(total) <= weight, so weight / total of the requests.
    random.seed(18)
    choice = _canary(weight=30, weight_total=200)
    n = 20_000
    share = sum(choice.chooses(_head([])) for _ in range(n)) / n
    assert abs(share - 0.15) < 0.015
