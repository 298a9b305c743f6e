"""Source ranges: the real client address, and the policy step that allows or denies it.

`config.SourceRanges` (ingress-nginx's `allowlist-source-range` / `whitelist-source-range` and
`denylist-source-range`) becomes a `CheckSourceRanges` step: its networks are turned once per
snapshot into `Ranges`, sorted disjoint integer intervals per address family, so a request
costs one bisection per list, whatever the number of networks.

The address checked is the one nginx's realip module gives ingress-nginx (`real_ip_recursive
on`, `set_real_ip_from` the trusted networks):

- the peer's address: the TCP peer, or the source address of the PROXY protocol header when
  the listener reads one (proxy/proxyprotocol.py; ClientContext holds it as an integer);
- unless the peer is a trusted proxy (`--trusted-proxies`) and the request has
  X-Forwarded-For: then the list is read from the right, each trusted address passed over, and
  the first address that is not trusted is the client's (all trusted: the leftmost). An entry
  that is not an address ends the walk, keeping the address to its right, as nginx does; an
  untrusted peer's X-Forwarded-For is never read.

IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 peers) count as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.settings import IPNetwork
from proxy.steps import BOTH, RequestStep

# ingress-nginx answers a denied address with nginx's 403.
FORBIDDEN: Final = Answer(403, "SourceRangeDenied")


class Ranges:
    """Networks as sorted, merged [first, last] integer intervals per family (4, 6)."""

    __slots__ = ("ends4", "ends6", "starts4", "starts6")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for net in networks:
            span = (int(net.network_address), int(net.broadcast_address))
            (v4 if net.version == 4 else v6).append(span)
        self.starts4, self.ends4 = _merged(v4)
        self.starts6, self.ends6 = _merged(v6)

    def contains(self, family: int, address: int) -> bool:
        if family == 4:
            starts = self.starts4
            ends = self.ends4
        elif family == 6:
            starts = self.starts6
            ends = self.ends6
        else:
            return False
        i = bisect_right(starts, address) - 1
        return i >= 0 and address <= ends[i]


def _merged(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    for first, last in sorted(spans):
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends


def parse_address(text: str) -> tuple[int, int] | None:
    """(family, integer) of an address as X-Forwarded-For carries it (`192.0.2.1`,
    `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]:8080`), or None."""
    if text[:1] == "[":
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return 4, int(mapped)
        return 6, int(ip)
    return 4, int(ip)


def client_address(head: RequestHead, ctx: ClientContext, trusted: Ranges) -> tuple[int, int]:
    """(family, integer) of the real client address (see the module docstring)."""
    family = ctx.family
    address = ctx.address
    xff = head.forwarded_for
    if not ctx.trusted or xff is None:
        return family, address
    entries = xff.decode("latin-1").split(",")
    for i in range(len(entries) - 1, -1, -1):
        entry = entries[i].strip(" \t")
        if not entry:
            continue
        parsed = parse_address(entry)
        if parsed is None:
            break
        family, address = parsed
        if not trusted.contains(family, address):
            break
    return family, address


class CheckSourceRanges(RequestStep):
    """config.SourceRanges: deny networks first, then allow networks (if any) or 403."""

    __slots__ = ("allow", "deny", "restricted", "trusted")

    def __init__(self, allow: Ranges, deny: Ranges, restricted: bool, trusted: Ranges) -> None:
        super().__init__(BOTH)
        self.allow = allow
        self.deny = deny
        self.restricted = restricted  # an allow list is given: what it does not hold is denied
        self.trusted = trusted

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        if client.trusted and head.forwarded_for is not None:
            family, address = client_address(head, client, self.trusted)
        else:
            family = client.family
            address = client.address
        if self.deny.contains(family, address):
            return FORBIDDEN
        if self.restricted and not self.allow.contains(family, address):
            return FORBIDDEN
        return None


def source_ranges_step(
    allow: tuple[str, ...], deny: tuple[str, ...], trusted: Ranges
) -> CheckSourceRanges:
    """The step of a config.SourceRanges (its networks are valid: checked when decoded)."""
    return CheckSourceRanges(
        Ranges(ipaddress.ip_network(c) for c in allow),
        Ranges(ipaddress.ip_network(c) for c in deny),
        bool(allow),
        trusted,
    )
