"""proxy-next-upstream as it runs: whether a failed attempt sends the request to another pod.

A `Route` whose Ingress has ingress-nginx's `proxy-next-upstream` (or `-tries` / `-timeout`)
builds one `NextUpstream` from its `RouteOptions` when the snapshot is applied; routes without
them have none and keep the exchange's own retries (proxy/exchange.py), so they pay one
attribute test. The exchange asks `allows` after an attempt failed before anything of its
response reached the client (a failed connect, a connection lost or timed out before the
response head, a head that does not parse or is too large) and `retries_status` when a response
head arrives; it checks itself what does not depend on the annotation: the attempts left
(`-tries`), whether the whole request is still held for a resend, and whether a pod not tried
yet remains.

nginx's rules, kept here: each failure is one of the conditions listed (`error`, `timeout`,
`invalid_header`, `http_N`) or ends the request; a request already sent with a non-idempotent
method (POST, LOCK, PATCH: nginx's list) goes elsewhere only with `non_idempotent`; no new
attempt starts once `-timeout` seconds have passed since the request arrived.
"""

from __future__ import annotations

from typing import Final

# The failure conditions of an attempt, as bits.
ERROR: Final = 1
TIMEOUT: Final = 2
INVALID_HEADER: Final = 4
_CONDITIONS: Final = {"error": ERROR, "timeout": TIMEOUT, "invalid_header": INVALID_HEADER}
# nginx (ngx_http_upstream_non_idempotent_methods): the methods it does not resend by default.
NON_IDEMPOTENT_METHODS: Final = frozenset({b"POST", b"LOCK", b"PATCH"})
# proxy-next-upstream-tries "0": nginx sets no limit; the pods of the backend still bound it.
UNLIMITED_TRIES: Final = 1 << 30


class NextUpstream:
    """One route's proxy-next-upstream rules (see the module docstring)."""

    __slots__ = ("conditions", "non_idempotent", "statuses", "timeout")

    def __init__(self, names: tuple[str, ...], timeout: float | None) -> None:
        conditions = 0
        statuses: set[int] = set()
        for name in names:
            if name.startswith("http_"):
                statuses.add(int(name[5:]))
            else:
                conditions |= _CONDITIONS.get(name, 0)
        self.conditions = conditions
        self.statuses = frozenset(statuses)
        self.non_idempotent = "non_idempotent" in names
        self.timeout = timeout or 0.0  # 0.0: no limit

    def allows(self, condition: int, method: bytes, sent: bool, elapsed: float) -> bool:
        """Whether a failure of `condition` may go to another pod: `sent` says the request (or
        part of it) went out, `elapsed` the seconds since it arrived."""
        if not self.conditions & condition:
            return False
        return self._may_resend(method, sent, elapsed)

    def retries_status(self, status: int, method: bytes, elapsed: float) -> bool:
        """Whether a response with `status` is dropped for another attempt (only asked while
        another one is possible: the last attempt's response goes to the client as it is)."""
        return status in self.statuses and self._may_resend(method, True, elapsed)

    def _may_resend(self, method: bytes, sent: bool, elapsed: float) -> bool:
        if sent and not self.non_idempotent and method in NON_IDEMPOTENT_METHODS:
            return False
        timeout = self.timeout
        return not timeout or elapsed < timeout
