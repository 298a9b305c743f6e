"""proxy/affinity.py without sockets: the consistent-hash ring's properties, upstream-hash-by's
grammar, reading the request's variables and cookies, and the cookie's time and SameSite rules.
Rows cite ingress-nginx (rootfs/etc/nginx/lua/...) or nginx's documentation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from proxy.affinity import (
    POINTS,
    CanarySessions,
    HashChooser,
    Ring,
    StickyChooser,
    backend_tag,
    cookie_time,
    cookie_value,
    request_fields,
    same_site_none_compatible,
    session_cookie,
    variable,
)
from proxy.cluster import Cluster
from proxy.config import Backend, Endpoint, HashBy, StickySessions, hash_terms
from proxy.headers import ClientContext, RequestHead, parse_request
from proxy.settings import ProxySettings

MEMBERS = [f"10.0.0.{i}:8080".encode() for i in range(1, 11)]
KEYS = [f"key-{i}".encode() for i in range(2000)]


# ---- the ring ------------------------------------------------------------------------------------


def test_ring_is_the_same_in_every_worker() -> None:
    """Every worker builds the same ring: no per-process seed (resty.chash uses crc32)."""
    a, b = Ring(MEMBERS), Ring(list(MEMBERS))
    assert [a.find(k) for k in KEYS] == [b.find(k) for k in KEYS]
    assert len(a._points) == POINTS * len(MEMBERS)


def test_ring_spreads_keys_evenly() -> None:
    counts = Counter(Ring(MEMBERS).find(k) for k in KEYS)
    assert len(counts) == len(MEMBERS)
    expected = len(KEYS) / len(MEMBERS)
    assert all(0.6 * expected < c < 1.4 * expected for c in counts.values()), counts


def test_a_removed_member_moves_only_its_keys() -> None:
    """issue 18: a pod that goes away moves only its own keys."""
    before = Ring(MEMBERS)
    gone = MEMBERS[3]
    after = Ring([m for m in MEMBERS if m != gone])
    for key in KEYS:
        old = MEMBERS[before.find(key)]
        new = after.members[after.find(key)]
        if old != gone:
            assert new == old
        else:
            assert new != gone


def test_an_added_member_takes_keys_only_for_itself() -> None:
    """sticky_balanced: scaling up moves some sessions, and only to the new pod."""
    before = Ring(MEMBERS)
    added = b"10.0.0.99:8080"
    after = Ring([*MEMBERS, added])
    moved = 0
    for key in KEYS:
        old = MEMBERS[before.find(key)]
        new = after.members[after.find(key)]
        if new != old:
            assert new == added
            moved += 1
    assert 0 < moved < len(KEYS) / 5


def test_walk_skips_members() -> None:
    ring = Ring(MEMBERS)
    for key in KEYS[:200]:
        first = ring.find(key)
        assert ring.walk(key, frozenset()) == first
        second = ring.walk(key, frozenset({first}))
        assert second not in (first, -1)
    assert ring.walk(b"k", frozenset(range(len(MEMBERS)))) == -1


# ---- upstream-hash-by's grammar ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "terms"),
    [
        ("$request_uri", (("request_uri", ""),)),  # upstreamhashby.go
        ("$host$request_uri", (("host", ""), ("request_uri", ""))),  # annotations.md
        ("$arg_predictorid", (("arg_predictorid", ""),)),  # in the wild (corpus)
        ("${http_x_user}-x", (("http_x_user", ""), ("", "-x"))),  # nginx's ${name}
        ("$cookie_SESSION", (("cookie_session", ""),)),  # nginx variable names are lower-case
        ("u:$remote_addr", (("", "u:"), ("remote_addr", ""))),
    ],
)
def test_hash_terms(expression: str, terms: tuple[tuple[str, str], ...]) -> None:
    assert hash_terms(expression) == terms


@pytest.mark.parametrize(
    "expression",
    ["", "$", "static", "$upstream_addr", "$http_", "$request_uri\r\nX: y", "${uri"],
)
def test_hash_terms_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        hash_terms(expression)


# ---- the request's variables ---------------------------------------------------------------------

CLIENT = ClientContext("192.0.2.7", "https", 443, ())


def _head(
    target: bytes, *fields: tuple[bytes, bytes], host: bytes = b"Shop.Example:8443"
) -> RequestHead:
    """A parsed request head: end-to-end fields rendered as the client side does."""
    parts: list[bytes] = [b"", b" ", b"", b""]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    return parse_request(b"GET", target, "1.1", parts, [(b"host", host)], CLIENT)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("request_uri", b"/a/b?id=7&x=1"),  # nginx: the original target, with its query
        ("uri", b"/a/b"),
        ("args", b"id=7&x=1"),
        ("is_args", b"?"),
        ("host", b"shop.example"),  # nginx's $host: lower-case, without the port
        ("remote_addr", b"192.0.2.7"),
        ("scheme", b"https"),
        ("request_method", b"GET"),
        ("http_x_user", b"alice"),  # $http_: the field, "_" for "-"
        ("http_x_missing", b""),
        ("cookie_user", b"u1"),
        ("cookie_none", b""),
        ("arg_id", b"7"),
        ("arg_nothing", b""),
    ],
)
def test_variables(name: str, value: bytes) -> None:
    head = _head(b"/a/b?id=7&x=1", (b"X-User", b"alice"), (b"Cookie", b"a=b; user=u1"))
    assert variable(name, head, CLIENT) == value


def test_cookies_and_fields() -> None:
    head = _head(b"/", (b"Cookie", b"x=1"), (b"cookie", b"SERVERID=k1|t1; y=2"))
    assert request_fields(head, b"cookie") == [b"x=1", b"SERVERID=k1|t1; y=2"]
    assert cookie_value(head, b"y") == b"2"
    assert session_cookie(head, b"SERVERID") == (b"k1", b"t1")
    assert session_cookie(head, b"x") == (b"1", b"")
    assert session_cookie(_head(b"/", (b"Cookie", b"SERVERID=|t")), b"SERVERID") is None
    assert session_cookie(head, b"INGRESSCOOKIE") is None


MAIN = backend_tag("ns/main/80").encode()
CANARY = backend_tag("ns/canary/80").encode()
# balancer.lua route_to_alternative_balancer: is_affinitized of the main backend's balancer,
# then of the canary's (sticky.lua: the cookie's backend part equals the balancer's).
HOLDS: dict[str, tuple[bytes, bytes, int]] = {
    # id: (Cookie field, the canary's tag (b"": not sticky, "legacy"), side)
    "no cookie": (b"other=1", CANARY, 0),
    "main's tag: held on main": (b"aff=k|" + MAIN, CANARY, -1),
    "canary's tag: held on the canary": (b"aff=k|" + CANARY, CANARY, 1),
    "canary's tag, legacy: not held": (b"aff=k|" + CANARY, b"", 0),
    "main's tag, legacy: still held on main": (b"aff=k|" + MAIN, b"", -1),
    "another backend's tag": (b"aff=k|" + backend_tag("ns/other/80").encode(), CANARY, 0),
    "no tag": (b"aff=k", CANARY, 0),
    "empty key": (b"aff=|" + CANARY, CANARY, 0),
    "the first cookie of the name counts (nginx's $cookie_)": (
        b"aff=k|" + MAIN + b"; aff=k|" + CANARY,
        CANARY,
        -1,
    ),
    "the name is case-sensitive (lua-resty-cookie)": (b"AFF=k|" + CANARY, CANARY, 0),
}


@pytest.mark.parametrize("case", HOLDS.values(), ids=HOLDS.keys())
def test_canary_sessions(case: tuple[bytes, bytes, int]) -> None:
    cookie, canary_tag, side = case
    sessions = CanarySessions(b"aff", MAIN, canary_tag)
    assert sessions.side(_head(b"/", (b"Cookie", cookie))) == side


# ---- the cookie ----------------------------------------------------------------------------------


def test_backend_tag_is_sticky_lua_s() -> None:
    """sticky.lua: backend_key = md5(md5(name) .. name)."""
    assert backend_tag("ns-web-80") == "061eba64b188d8f77aa21252957ea142"


def test_cookie_time_is_nginx_s() -> None:
    """ngx.cookie_time: "Thu, 18-Nov-10 11:27:35 GMT"."""
    assert cookie_time(1290079655) == b"Thu, 18-Nov-10 11:27:35 GMT"


@pytest.mark.parametrize(
    ("agent", "compatible"),
    [
        (b"Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36", True),
        (b"Mozilla/5.0 (Windows NT 10.0) Chrome/51.0.2704.103 Safari/537.36", False),
        (b"Mozilla/5.0 (Windows NT 10.0) Chrome/66.0.3359.181 Safari/537.36", False),
        (b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_1 like Mac OS X) AppleWebKit/605", False),
        (b"Mozilla/5.0 (iPad; CPU OS 12_0 like Mac OS X) AppleWebKit/605", False),
        (
            b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_0) AppleWebKit/605 Version/12 Safari",
            False,
        ),
        (b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_0) Chrome/90.0 Safari/537.36", True),
        (b"curl/8.0", True),
    ],
)
def test_same_site_none_compatible(agent: bytes, compatible: bool) -> None:
    """util/same_site.lua."""
    assert same_site_none_compatible(agent) is compatible


# ---- choosers ------------------------------------------------------------------------------------


def _cluster(n: int) -> Cluster:
    endpoints = tuple(Endpoint(f"10.0.0.{i}", 8080) for i in range(1, n + 1))
    return Cluster(Backend("ns/web/80", endpoints), ProxySettings())


def test_sticky_new_session_and_kept_session() -> None:
    chooser = StickyChooser(StickySessions(), "ns/web/80", "/", random.Random(1))
    cluster = _cluster(4)
    endpoint, fields = chooser.choose(cluster, _head(b"/"), CLIENT, [])
    assert endpoint is not None and fields.startswith(b"Set-Cookie: INGRESSCOOKIE=")
    value = fields.split(b"=", 1)[1].split(b";", 1)[0]
    again, more = chooser.choose(
        cluster, _head(b"/", (b"Cookie", b"INGRESSCOOKIE=" + value)), CLIENT, []
    )
    assert (again, more) == (endpoint, b"")
    # HTTPS: Secure whatever session-cookie-secure says (affinity.go, on https).
    assert b"; Secure; HttpOnly" in fields


def test_hash_subsets_pad_the_last_group() -> None:
    """chashsubset.lua: 7 pods in groups of 3 make 3 groups, the last filled up from the first."""
    chooser = HashChooser(HashBy("$request_uri", subset=True, subset_size=3), random.Random(1))
    cluster = _cluster(7)
    chooser.choose(cluster, _head(b"/"), CLIENT, [])
    assert [len(group) for group in chooser._subsets] == [3, 3, 3]
    assert chooser._subsets[2][1:] == chooser._subsets[0][:2]


def test_a_cluster_update_rebuilds_the_ring() -> None:
    chooser = HashChooser(HashBy("$request_uri"), random.Random(1))
    cluster = _cluster(3)
    first, _ = chooser.choose(cluster, _head(b"/x"), CLIENT, [])
    assert first is not None
    rest = tuple(e for e in cluster.endpoints if e != first)
    cluster.update(Backend("ns/web/80", rest))
    moved, _ = chooser.choose(cluster, _head(b"/x"), CLIENT, [])
    assert moved in rest
    assert chooser.choose(cluster, _head(b"/x"), CLIENT, list(rest)) == (None, b"")
