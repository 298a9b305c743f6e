"""The basic-authentication policy step (ingress-nginx's auth-type basic), and its cache.

Built once per snapshot from a `config.BasicAuth` step (the realm, the users and their hashes
from the route's Secret), it runs as a request step: the request's `Authorization: Basic ...`
credential is checked against the user's hash (proxy/htpasswd.py); a request without one, with
a malformed one, an unknown user or a wrong password is answered 401 with `WWW-Authenticate:
Basic realm="<realm>"`, as nginx's auth_basic; a request that passes goes on without its
Authorization field (ingress-nginx sets `proxy_set_header Authorization ""`), so the pods never
see the password. Two Authorization fields are a 400, as nginx refuses a duplicate one.

bcrypt is slow on purpose (a cost of 10 takes about 60 ms), so results are cached per worker:
`VerificationCache`, a bounded LRU keyed by (the identity of the step's users and hashes, a
digest of the Authorization value) -> matched or not. A Secret change gives the step another
identity, so older results never apply to it; the cache holds digests, never passwords.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.htpasswd import verify
from proxy.replies import Answer
from proxy.steps import BOTH, RequestStep

_AUTHORIZATION: Final = b"\nauthorization:"
_DROP: Final = frozenset({b"authorization"})
_DUPLICATE: Final = Answer(400, "DuplicateAuthorization", close=True)
_BASE64: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class VerificationCache:
    """(users identity, Authorization digest) -> matched, least recently used dropped first."""

    __slots__ = ("_entries", "max_entries", "misses")

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[bytes, bytes], bool] = OrderedDict()
        self.max_entries = max_entries
        self.misses = 0  # verifications run (for tests and the benchmark's check)

    def get(self, key: tuple[bytes, bytes]) -> bool | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[bytes, bytes], matched: bool) -> None:
        self.misses += 1
        entries = self._entries
        entries[key] = matched
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


# One per worker process: shared by every route and kept across snapshots (see the docstring).
CACHE: Final = VerificationCache()


def users_identity(realm: str, users: tuple[str, ...], hashes: tuple[str, ...]) -> bytes:
    """A digest naming one set of users and hashes (the cache's key part for a route)."""
    h = hashlib.sha256(realm.encode())
    for user, hashed in zip(users, hashes, strict=True):
        h.update(b"\0" + user.encode() + b"\0" + hashed.encode())
    return h.digest()


def credentials(value: bytes) -> tuple[bytes, bytes] | None:
    """(user, password) of an Authorization value `Basic <base64 of user:password>`, as nginx
    reads it (scheme case-insensitive, spaces after it skipped, padding optional); None when
    the value is not one."""
    if value[:6].lower() != b"basic ":
        return None
    encoded = value[6:].lstrip(b" ").rstrip(b"=")
    if not encoded or len(encoded) % 4 == 1 or not set(encoded) <= _BASE64:
        return None
    try:
        decoded = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


class BasicAuthStep(RequestStep):
    """config.BasicAuth as it runs (see the module docstring)."""

    __slots__ = ("cache", "challenge", "identity", "users")

    def __init__(
        self,
        realm: str,
        users: tuple[str, ...],
        hashes: tuple[str, ...],
        cache: VerificationCache = CACHE,
    ) -> None:
        super().__init__(BOTH)
        self.users = {u.encode(): h for u, h in zip(users, hashes, strict=True)}
        self.identity = users_identity(realm, users, hashes)
        self.cache = cache
        self.challenge = Answer(
            401,
            "Unauthorized",
            b'WWW-Authenticate: Basic realm="' + realm.encode() + b'"\r\n',
        )

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        data = head.upstream_head
        if data is None:
            data = head.upstream_rest
        lowered = b"\n" + data.lower()
        at = lowered.find(_AUTHORIZATION)
        if at < 0:
            return self.challenge
        if lowered.find(_AUTHORIZATION, at + 1) >= 0:
            return _DUPLICATE
        start = at + len(_AUTHORIZATION) - 1  # in `data`, which lacks the leading "\n"
        value = data[start : data.index(b"\r\n", start)].strip(b" \t")
        if not self._matches(value):
            return self.challenge
        head.reshape(drop=_DROP)
        return None

    def _matches(self, value: bytes) -> bool:
        key = (self.identity, hashlib.sha256(value).digest())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        parsed = credentials(value)
        matched = False
        if parsed is not None:
            hashed = self.users.get(parsed[0])
            matched = hashed is not None and verify(parsed[1], hashed)
        self.cache.put(key, matched)
        return matched
