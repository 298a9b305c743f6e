"""PROXY protocol headers (haproxy's proxy-protocol.txt, v1 and v2) read strictly and bounded.

Each row is the bytes a connection begins with and what `parse` says: the header's length and
source, "more" (a valid beginning: read on), or the refusal. Whatever follows the header (the
request, a ClientHello) is never counted in its length.
"""

from __future__ import annotations

import pytest

from proxy.proxyprotocol import V2_MAX_LENGTH, ProxyHeaderError, parse
from tests.fakes import AWS_TLV
from tests.fakes import proxy_v2 as v2

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


V1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 51234 80\r\n"
V1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"

VALID = [
    # (bytes, header length, source)
    (V1 + REQUEST, len(V1), ("192.0.2.1", 51234)),
    (V1_6, len(V1_6), ("2001:db8::7", 51234)),
    (b"PROXY UNKNOWN\r\n" + REQUEST, 15, None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 35, None),
    (v2() + REQUEST, 28, ("192.0.2.1", 51234)),
    (v2(family=0x21, source="2001:db8::7", destination="2001:db8::1"), 52, ("2001:db8::7", 51234)),
    (v2(tlvs=AWS_TLV), 28 + len(AWS_TLV), ("192.0.2.1", 51234)),
    (v2(command=0, family=0x00), 16, None),  # LOCAL: a health check of the load balancer
    (v2(command=0), 28, None),  # LOCAL ignores the addresses given
    (v2(family=0x00), 16, None),  # PROXY, AF_UNSPEC
    (v2(family=0x31), 16 + 216, None),  # AF_UNIX
]


@pytest.mark.parametrize(("data", "length", "source"), VALID)
def test_valid(data: bytes, length: int, source: tuple[str, int] | None) -> None:
    assert parse(data) == (length, source)


# Every proper prefix of a valid header asks for more.
@pytest.mark.parametrize(
    "header", [V1, V1_6, v2(), v2(family=0x21, source="::1"), v2(tlvs=AWS_TLV)]
)
def test_truncated_asks_for_more(header: bytes) -> None:
    for end in range(len(header)):
        assert parse(header[:end]) is None, end


INVALID = {
    "plain-http": REQUEST,
    "tls-client-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "v1-lower-case": b"proxy TCP4 192.0.2.1 198.51.100.1 51234 80\r\n",
    "v1-bad-protocol": b"PROXY UDP4 192.0.2.1 198.51.100.1 51234 80\r\n",
    "v1-family-mismatch": b"PROXY TCP4 2001:db8::7 2001:db8::1 51234 443\r\n",
    "v1-bad-address": b"PROXY TCP4 192.0.2.300 198.51.100.1 51234 80\r\n",
    "v1-leading-zero-address": b"PROXY TCP4 192.0.2.01 198.51.100.1 51234 80\r\n",
    "v1-port-too-big": b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 80\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 192.0.2.1 198.51.100.1 051234 80\r\n",
    "v1-port-sign": b"PROXY TCP4 192.0.2.1 198.51.100.1 +5123 80\r\n",
    "v1-missing-field": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234\r\n",
    "v1-extra-field": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234 80 x\r\n",
    "v1-double-space": b"PROXY TCP4  192.0.2.1 198.51.100.1 51234 80\r\n",
    "v1-bare-lf": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234 80\n",
    "v1-no-protocol": b"PROXY\r\n",
    "v1-too-long": b"PROXY UNKNOWN " + b"x" * 100,
    "v1-too-long-with-crlf-after": b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",
    "v2-bad-signature": b"\r\n\r\n\x00\r\nQUIT\r" + bytes(4),
    "v2-version-1": v2(version=1),
    "v2-unknown-command": v2(command=2),
    "v2-udp": v2(family=0x12),
    "v2-unknown-family": v2(family=0x41),
    "v2-short-inet": v2(length=8) + bytes(8),
    "v2-short-inet6": v2(family=0x21, length=20, source="::1", destination="::1")[:36],
    "v2-too-long": v2(length=V2_MAX_LENGTH + 1),
}


@pytest.mark.parametrize("data", INVALID.values(), ids=INVALID.keys())
def test_invalid(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_longest_v2_accepted() -> None:
    header = v2(tlvs=b"\0" * (V2_MAX_LENGTH - 12))
    assert parse(header + REQUEST) == (16 + V2_MAX_LENGTH, ("192.0.2.1", 51234))
