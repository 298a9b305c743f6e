"""Sticky sessions and consistent hashing: which pod a route's request goes to, when the route
says it must not be the balancer's choice.

ingress-nginx's `affinity: cookie` (with its session-cookie-* annotations) and
`upstream-hash-by` arrive as the `StickySessions` and `HashBy` steps of a route's policy
(proxy/config.py); `proxy/route.py` turns them into a `Chooser` (`chooser_for`), and the
exchange asks it for each attempt's pod instead of `Cluster.pick`. Routes without them have no
chooser: the exchange pays one attribute test per attempt and one per response head.

- `Ring`: a consistent-hash ring (160 points per member, 64-bit hashes of the member's
  identity): a key belongs to the first point at or after its hash. Adding or removing a member
  moves only the keys of the points it adds or takes away. The ring of a cluster is rebuilt
  when its candidate endpoints change (`Cluster.candidates` is a new tuple then), never per
  request; every worker builds the same ring (endpoints sorted, hashes not seeded).
- `StickyChooser`: the cookie holds `<key>|<backend tag>` as ingress-nginx writes it. "balanced"
  mode: the key is random and placed on the ring of the pods, so scaling up moves some sessions
  to the new pods; "persistent": the key is the md5 of the backend and the pod's address, so a
  session moves only when its pod leaves. A request without a cookie of a pod still there gets
  one on the pod's response (`Set-Cookie`, attributes as ingress-nginx's sticky.lua sets them).
- `HashChooser`: upstream-hash-by's variables read from the request (`hash_terms`), the key
  hashed onto the ring of the pods or, with a subset, onto a ring of groups of pods.

The affinity cookie's API, for canaries (`affinity-canary-behavior`): `backend_tag(key)` is
the tag a backend's sessions carry, `session_cookie(head, name)` the (key, tag) a request holds,
and `CanarySessions` which of a rule's two backends (main, canary) a request's cookie holds it
to, asked by `Route.chooses_canary` before the canary's rules.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import random
import time
from collections.abc import Sequence
from typing import Final

from mypy_extensions import mypyc_attr

from proxy.cluster import Cluster
from proxy.config import Endpoint, HashBy, StickySessions, hash_terms
from proxy.headers import ClientContext, RequestHead

# Points per member on the ring, as resty.chash places them (weight 1): enough that members'
# shares differ by a few percent.
POINTS: Final = 160
# Tries for a random balanced-mode key whose pod was not tried yet (sticky_balanced.lua's).
_NEW_KEY_TRIES: Final = 20
_DELIMITER: Final = b"|"
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def backend_tag(backend_key: str) -> str:
    """The second half of an affinity cookie: which backend the session is on (the md5 of the
    md5 of the backend's name and its name, as ingress-nginx's sticky.lua computes it)."""
    return _md5(_md5(backend_key) + backend_key)


class Ring:
    """Members placed on a 64-bit consistent-hash ring; `find` a key's member."""

    __slots__ = ("_owners", "_points", "members")

    def __init__(self, identities: Sequence[bytes], members: Sequence[object] | None = None):
        placed: list[tuple[int, int]] = []
        for index, identity in enumerate(identities):
            for point in range(POINTS):
                placed.append((_hash64(identity + b"#" + str(point).encode()), index))
        placed.sort()
        self._points = [p for p, _ in placed]
        self._owners = [i for _, i in placed]
        self.members: Sequence[object] = identities if members is None else members

    def find(self, key: bytes) -> int:
        """The index of the member that owns `key` (the ring must not be empty)."""
        i = bisect.bisect_left(self._points, _hash64(key))
        return self._owners[i if i < len(self._points) else 0]

    def walk(self, key: bytes, skip: frozenset[int]) -> int:
        """The first member from `key` on, clockwise, whose index is not in `skip`; -1: none."""
        points = self._points
        n = len(points)
        start = bisect.bisect_left(points, _hash64(key))
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner not in skip:
                return owner
        return -1


# ---- reading the request -----------------------------------------------------------------------


def request_fields(head: RequestHead, name: bytes) -> list[bytes]:
    """The values of the request's fields called `name` (lower-case), as forwarded."""
    block = head.upstream_head if head.upstream_head is not None else head.upstream_rest
    values: list[bytes] = []
    for line in block.split(b"\r\n"):
        colon = line.find(b":")
        # The request line has a space before any colon, so it never matches a field name.
        if colon == len(name) and line[:colon].lower() == name:
            values.append(line[colon + 1 :].strip(b" \t"))
    return values


def cookie_value(head: RequestHead, name: bytes) -> bytes | None:
    """The value of the request's cookie `name` (the first, as nginx's $cookie_ reads)."""
    for field in request_fields(head, b"cookie"):
        for pair in field.split(b";"):
            key, sep, value = pair.strip(b" \t").partition(b"=")
            if sep and key == name:
                return value
    return None


def session_cookie(head: RequestHead, name: bytes) -> tuple[bytes, bytes] | None:
    """(key, backend tag) of the affinity cookie `name` the request holds (tag b"" when the
    cookie has none), or None: no such cookie, or an empty key."""
    value = cookie_value(head, name)
    if value is None:
        return None
    key, _, tag = value.partition(_DELIMITER)
    return (key, tag) if key else None


class CanarySessions:
    """A sticky rule with a canary: the backend a request's affinity cookie holds it to, as
    balancer.lua's route_to_alternative_balancer asks is_affinitized, first of the main
    backend's balancer (its tag: the request stays on the main backend, whatever the canary's
    rules say), then of the canary's (its tag, b"" when the canary's backend is not sticky:
    affinity-canary-behavior "legacy"). One cookie: the canary's sessions are the main rule's
    StickySessions with the canary's backend tag."""

    __slots__ = ("canary_tag", "cookie_name", "main_tag")

    def __init__(self, cookie_name: bytes, main_tag: bytes, canary_tag: bytes) -> None:
        self.cookie_name = cookie_name
        self.main_tag = main_tag
        self.canary_tag = canary_tag

    def side(self, head: RequestHead) -> int:
        """-1: held to the main backend; 1: held to the canary's; 0: neither (the canary's
        rules decide)."""
        session = session_cookie(head, self.cookie_name)
        if session is None:
            return 0
        tag = session[1]
        if tag == self.main_tag:
            return -1
        if self.canary_tag and tag == self.canary_tag:
            return 1
        return 0


def _query(head: RequestHead) -> bytes:
    _, _, query = head.target.partition(b"?")
    return query


def _argument(head: RequestHead, name: bytes) -> bytes:
    for pair in _query(head).split(b"&"):
        key, _, value = pair.partition(b"=")
        if key.lower() == name:
            return value
    return b""


def _host(head: RequestHead) -> bytes:
    host = head.host.lower()
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.partition(b":")[0]


def variable(name: str, head: RequestHead, client: ClientContext | None) -> bytes:
    """The value of the nginx variable `name` (see config.HASH_VARIABLES) for this request."""
    if name == "request_uri":
        return head.target
    if name in ("uri", "document_uri"):
        return head.path.encode("latin-1")
    if name in ("args", "query_string"):
        return _query(head)
    if name == "is_args":
        return b"?" if b"?" in head.target else b""
    if name == "host":
        return _host(head)
    if name in ("remote_addr", "binary_remote_addr"):
        return client.client_ip if client is not None else b""
    if name == "scheme":
        return client.scheme if client is not None else b"http"
    if name == "request_method":
        return head.method
    if name.startswith("http_"):
        return b", ".join(request_fields(head, name[5:].replace("_", "-").encode()))
    if name.startswith("cookie_"):
        return cookie_value(head, name[7:].encode()) or b""
    if name.startswith("arg_"):
        return _argument(head, name[4:].encode())
    return b""  # not reached: the snapshot admits only the names above


# ---- choosers ----------------------------------------------------------------------------------


@mypyc_attr(allow_interpreted_subclasses=True)
class Chooser:
    """Chooses the pod of each attempt of a route's requests, in place of the balancer."""

    __slots__ = ("_candidates", "_cluster")

    def __init__(self) -> None:
        self._cluster: Cluster | None = None
        self._candidates: tuple[object, ...] | None = None

    def choose(
        self,
        cluster: Cluster,
        head: RequestHead,
        client: ClientContext | None,
        tried: list[Endpoint],
    ) -> tuple[Endpoint | None, bytes]:
        """The pod for the next attempt (None: none left that was not tried) and the response
        fields that go with it (a Set-Cookie; b"" none)."""
        raise NotImplementedError

    def _current(self, cluster: Cluster) -> bool:
        """True when the state built for `cluster`'s candidates is still theirs; else the
        caller rebuilds it (and this records the candidates it is built for)."""
        candidates = cluster.candidates
        if cluster is self._cluster and candidates is self._candidates:
            return True
        self._cluster = cluster
        self._candidates = candidates
        return False


def _identity(endpoint: Endpoint) -> bytes:
    return f"{endpoint.address}:{endpoint.port}".encode()


def _sorted(candidates: Sequence[Endpoint]) -> list[Endpoint]:
    return sorted(candidates, key=lambda e: (e.address, e.port))


class StickyChooser(Chooser):
    """Session affinity by cookie (see the module's docstring)."""

    __slots__ = (
        "_by_key",
        "_endpoints",
        "_expires",
        "_prefix",
        "_ring",
        "_rng",
        "_salt",
        "_suffix_plain",
        "_suffix_secure",
        "spec",
        "tag",
    )

    def __init__(
        self, spec: StickySessions, backend_key: str, rule_path: str, rng: random.Random
    ) -> None:
        super().__init__()
        self.spec = spec
        self._rng = rng
        self._salt = backend_key
        self.tag = backend_tag(backend_key).encode()
        self._endpoints: list[Endpoint] = []
        self._ring: Ring | None = None
        self._by_key: dict[bytes, Endpoint] = {}
        self._expires = int(spec.expires) if spec.expires else None
        # The Set-Cookie field around its value, in lua-resty-cookie's order of attributes:
        # Expires (per response), Max-Age, Domain, Path, Secure, HttpOnly, SameSite.
        self._prefix = f"Set-Cookie: {spec.name}=".encode()
        fixed = ""
        if spec.max_age:
            fixed += f"; Max-Age={spec.max_age}"
        if spec.domain:
            fixed += f"; Domain={spec.domain}"
        fixed += f"; Path={spec.path or rule_path}"
        tail = "; HttpOnly" + (f"; SameSite={spec.samesite}" if spec.samesite else "")
        self._suffix_plain = (fixed + ("; Secure" if spec.secure else "") + tail).encode()
        self._suffix_secure = (fixed + "; Secure" + tail).encode()

    @property
    def cookie_name(self) -> bytes:
        return self.spec.name.encode()

    def _rebuild(self, cluster: Cluster) -> None:
        endpoints = _sorted(cluster.candidates)
        self._endpoints = endpoints
        if self.spec.mode == "persistent":
            salt = self._salt
            self._by_key = {_md5(salt + e.authority).encode(): e for e in endpoints}
            self._ring = None
        else:
            self._ring = Ring([_identity(e) for e in endpoints]) if endpoints else None
            self._by_key = {}

    def _find(self, key: bytes) -> Endpoint | None:
        if self.spec.mode == "persistent":
            return self._by_key.get(key)
        ring = self._ring
        return None if ring is None else self._endpoints[ring.find(key)]

    def choose(
        self,
        cluster: Cluster,
        head: RequestHead,
        client: ClientContext | None,
        tried: list[Endpoint],
    ) -> tuple[Endpoint | None, bytes]:
        if not self._current(cluster):
            self._rebuild(cluster)
        if not self._endpoints:
            return None, b""
        session = session_cookie(head, self.cookie_name)
        held = self._find(session[0]) if session is not None else None
        if held is not None and not tried:
            return held, b""
        # A new session, or a retry after a failure: a pod not tried yet. A retry keeps the
        # session's cookie unless change-on-failure says to move it.
        endpoint, key = self._new(tried)
        if endpoint is None:
            return None, b""
        if held is not None and not self.spec.change_on_failure:
            return endpoint, b""
        return endpoint, self._set_cookie(key, head, client)

    def _new(self, tried: list[Endpoint]) -> tuple[Endpoint | None, bytes]:
        skip = frozenset(_identity(e) for e in tried)
        if self.spec.mode == "persistent":
            usable = [(k, e) for k, e in self._by_key.items() if _identity(e) not in skip]
            if not usable:
                return None, b""
            key, endpoint = usable[self._rng.randrange(len(usable))]
            return endpoint, key
        ring = self._ring
        assert ring is not None
        for _ in range(_NEW_KEY_TRIES):
            key = os.urandom(16).hex().encode()
            endpoint = self._endpoints[ring.find(key)]
            if _identity(endpoint) not in skip:
                return endpoint, key
        # Nearly every pod was tried: walk the ring to one that was not.
        indexes = frozenset(i for i, e in enumerate(self._endpoints) if _identity(e) in skip)
        key = os.urandom(16).hex().encode()
        index = ring.walk(key, indexes)
        return (None, b"") if index < 0 else (self._endpoints[index], key)

    def _set_cookie(self, key: bytes, head: RequestHead, client: ClientContext | None) -> bytes:
        spec = self.spec
        secure = client is not None and client.secure
        suffix = self._suffix_secure if secure else self._suffix_plain
        if spec.conditional_samesite_none and spec.samesite == "None":
            agent = request_fields(head, b"user-agent")
            if agent and not same_site_none_compatible(agent[0]):
                suffix = suffix.replace(b"; SameSite=None", b"")
        expires = b""
        if self._expires is not None:
            expires = b"; Expires=" + cookie_time(time.time() + self._expires)
        return b"".join((self._prefix, key, _DELIMITER, self.tag, expires, suffix, b"\r\n"))


def cookie_time(seconds: float) -> bytes:
    """A time as nginx's ngx.cookie_time writes it: "Thu, 18-Nov-10 11:27:35 GMT"."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year % 100:02d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    ).encode()


def same_site_none_compatible(agent: bytes) -> bool:
    """False for the user agents ingress-nginx's util/same_site.lua leaves SameSite=None out
    for (they reject such cookies or read them as Strict)."""
    if b"Chrome/4" in agent or b"Chrome/5" in agent or b"Chrome/6" in agent:
        return False
    if b"CPU iPhone OS 12" in agent or b"iPad; CPU OS 12" in agent:
        return False
    return not (
        b"Macintosh" in agent
        and b"Intel Mac OS X 10_14" in agent
        and b"Safari" in agent
        and b"Chrome" not in agent
    )


class HashChooser(Chooser):
    """Consistent hashing on request variables (see the module's docstring)."""

    __slots__ = ("_endpoints", "_ring", "_rng", "_subsets", "_terms", "spec")

    def __init__(self, spec: HashBy, rng: random.Random) -> None:
        super().__init__()
        self.spec = spec
        self._rng = rng
        self._terms = hash_terms(spec.expression)
        self._endpoints: list[Endpoint] = []
        self._subsets: list[list[Endpoint]] = []
        self._ring: Ring | None = None

    def key(self, head: RequestHead, client: ClientContext | None) -> bytes:
        """The request's hash key: the expression's variables and text, as nginx renders it."""
        return b"".join(
            variable(name, head, client) if name else text.encode() for name, text in self._terms
        )

    def _rebuild(self, cluster: Cluster) -> None:
        endpoints = _sorted(cluster.candidates)
        self._endpoints = endpoints
        self._subsets = []
        self._ring = None
        if not endpoints:
            return
        if not self.spec.subset:
            self._ring = Ring([_identity(e) for e in endpoints])
            return
        # As chashsubset.lua: groups of subset_size pods in order, the last one filled up
        # with the first pods again; the ring holds the groups.
        size = self.spec.subset_size
        count = -(-len(endpoints) // size)
        padded = endpoints + endpoints[: count * size - len(endpoints)]
        self._subsets = [padded[i * size : (i + 1) * size] for i in range(count)]
        self._ring = Ring([f"set{i + 1}".encode() for i in range(count)])

    def choose(
        self,
        cluster: Cluster,
        head: RequestHead,
        client: ClientContext | None,
        tried: list[Endpoint],
    ) -> tuple[Endpoint | None, bytes]:
        if not self._current(cluster):
            self._rebuild(cluster)
        ring = self._ring
        if ring is None:
            return None, b""
        key = self.key(head, client)
        if self._subsets:
            members = self._subsets[ring.find(key)]
            if tried:
                members = [e for e in members if e not in tried] or [
                    e for e in self._endpoints if e not in tried
                ]
                if not members:
                    return None, b""
            return members[self._rng.randrange(len(members))], b""
        if not tried:
            return self._endpoints[ring.find(key)], b""
        # A retry goes on along the ring: the key's next pod, the same one every time.
        skip = frozenset(i for i, e in enumerate(self._endpoints) if e in tried)
        index = ring.walk(key, skip)
        return (None, b"") if index < 0 else (self._endpoints[index], b"")


def chooser_for(
    sticky: StickySessions | None,
    hashing: HashBy | None,
    backend_key: str,
    rule_path: str,
    rng: random.Random | None = None,
) -> Chooser | None:
    """The chooser of a route's steps: session affinity wins over hashing, as ingress-nginx's
    balancer.lua picks its implementation; None: the balancer chooses."""
    generator = rng if rng is not None else random.Random()
    if sticky is not None:
        return StickyChooser(sticky, backend_key, rule_path, generator)
    if hashing is not None:
        return HashChooser(hashing, generator)
    return None
