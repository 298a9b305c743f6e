"""The source-range step's parts: merged integer ranges, and X-Forwarded-For addresses.

The requests themselves go through real sockets in tests/integration/test_source_ranges.py;
here are the edges a socket test cannot reach (IPv4-mapped peers of a dual-stack listener,
adjacent and nested networks merged into one interval).
"""

from __future__ import annotations

import ipaddress

import pytest

from proxy.headers import ClientContext
from proxy.sourceranges import Ranges, parse_address


def _ranges(*cidrs: str) -> Ranges:
    return Ranges(ipaddress.ip_network(c) for c in cidrs)


def _int(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


# (networks, address, inside)
CONTAINS = [
    (("10.0.0.0/8",), "10.255.255.255", True),
    (("10.0.0.0/8",), "11.0.0.0", False),
    (("10.0.0.0/9", "10.128.0.0/9"), "10.128.0.0", True),  # adjacent: merged
    (("10.0.0.0/8", "10.1.0.0/16"), "10.2.0.0", True),  # nested
    (("10.0.0.0/8", "192.0.2.0/24"), "172.16.0.1", False),  # between two intervals
    (("192.0.2.7/32",), "192.0.2.7", True),
    (("192.0.2.7/32",), "192.0.2.8", False),
    (("2001:db8::/32",), "2001:db8:ffff::1", True),
    (("2001:db8::/32",), "2001:db9::", False),
    (("0.0.0.0/0",), "::1", False),  # a v4 list never holds a v6 address
    (("::/0",), "127.0.0.1", False),
    ((), "127.0.0.1", False),
]


@pytest.mark.parametrize(("networks", "address", "inside"), CONTAINS)
def test_contains(networks: tuple[str, ...], address: str, inside: bool) -> None:
    assert _ranges(*networks).contains(*_int(address)) is inside


ADDRESSES = [
    ("192.0.2.1", "192.0.2.1"),
    ("192.0.2.1:8080", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]:8080", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped: the IPv4 address
    ("unknown", None),
    ("[2001:db8::1", None),
    ("[2001:db8::1]x", None),
    ("192.0.2.256", None),
]


@pytest.mark.parametrize(("text", "address"), ADDRESSES)
def test_parse_address(text: str, address: str | None) -> None:
    assert parse_address(text) == (None if address is None else _int(address))


def test_a_dual_stack_listener_s_ipv4_peer_is_ipv4() -> None:
    trusted = (ipaddress.ip_network("192.0.2.0/24"),)
    ctx = ClientContext("::ffff:192.0.2.1", "http", 80, trusted)
    assert (ctx.family, ctx.address, ctx.trusted) == (*_int("192.0.2.1"), True)
    assert (ClientContext("not-an-address", "http", 80, ()).family) == 0
