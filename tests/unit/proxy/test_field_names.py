"""FieldNames: the per-field special/plain decision, cached by the name's exact spelling."""

from __future__ import annotations

import pytest

from proxy.headers import REQUEST_NAMES, REQUEST_SPECIAL, RESPONSE_NAMES, FieldNames


@pytest.mark.parametrize(
    ("names", "name", "expected"),
    [
        (REQUEST_NAMES, b"Host", b"host"),
        (REQUEST_NAMES, b"HOST", b"host"),
        (REQUEST_NAMES, b"content-length", b"content-length"),
        (REQUEST_NAMES, b"Transfer-Encoding", b"transfer-encoding"),
        (REQUEST_NAMES, b"X-Forwarded-For", b"x-forwarded-for"),
        (REQUEST_NAMES, b"Connection", b"connection"),
        (REQUEST_NAMES, b"User-Agent", b""),
        (REQUEST_NAMES, b"Server", b""),  # special in responses only
        (RESPONSE_NAMES, b"Server", b"server"),
        (RESPONSE_NAMES, b"Strict-Transport-Security", b"strict-transport-security"),
        (RESPONSE_NAMES, b"Keep-Alive", b"keep-alive"),
        (RESPONSE_NAMES, b"Host", b""),
        (RESPONSE_NAMES, b"Content-Type", b""),
    ],
)
def test_special_names_come_back_lower_case_plain_ones_empty(
    names: FieldNames, name: bytes, expected: bytes
) -> None:
    assert names.special_name(name) == expected
    assert names.special_name(name) == expected  # and the same once cached


def test_the_cache_is_bounded_and_answers_stay_right_past_it() -> None:
    names = FieldNames(REQUEST_SPECIAL)
    for i in range(FieldNames.LIMIT * 3):
        assert names.special_name(b"X-Made-Up-%d" % i) == b""
    assert len(names.known) == FieldNames.LIMIT
    assert names.special_name(b"hOsT") == b"host"  # not cached any more, still classified
    assert b"hOsT" not in names.known
