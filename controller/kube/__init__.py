"""The Kubernetes API edge: the API as a source of objects and a place to report back.

`controller/kube/` is the only code that imports kubernetes_asyncio, and it wires nothing (the
composition root, `controller/app.py`, builds cluster mode from these parts). Everything here
hands raw JSON dicts to the rest of the controller: `watching` turns list + watch streams into
store events, `objects` keeps what cluster mode needs of raw objects (UIDs for Events, the
published Service's address), `client` performs the few writes (Ingress status, Events, Leases).
This module itself stays import-light: `ApiError` is what every API call raises, so
`controller/leader.py`, `status.py` and `events.py` can handle API failures without importing
the client library.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failed API call: an HTTP status (0 when the server could not be reached) and the reason.

    `reason` is the Status body's CamelCase reason (`NotFound`, `Conflict`, `Forbidden`,
    `Expired`, ...) when the server sent one; `message` is its human text.
    """

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if reason or message else str(status))

    @property
    def forbidden(self) -> bool:
        return self.status in (401, 403)

    @property
    def gone(self) -> bool:
        return self.status == 410

    @classmethod
    def from_status(cls, status: int, body: Any) -> ApiError:
        """From an HTTP status and a decoded body that may be a `Status` object."""
        if isinstance(body, dict):
            return cls(
                int(body.get("code") or status),
                str(body.get("reason") or ""),
                str(body.get("message") or ""),
            )
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        return cls(status, "", text[:500])


__all__ = ["ApiError"]
