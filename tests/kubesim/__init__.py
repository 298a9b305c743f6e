"""A Kubernetes API-server simulator for Portico's tests (KUBE-API.md §6.2).

It speaks the real HTTP protocol (lists, watch streams, resourceVersions, bookmarks, 410 Gone,
status subresources, Status error bodies) so the unmodified kubernetes-asyncio client can be
tested against it, and exposes fault injection and an audit log to the tests.
"""

from tests.kubesim.server import AuditEntry, KubeSim, go_bool
from tests.kubesim.status import ApiError

__all__ = ["ApiError", "AuditEntry", "KubeSim", "go_bool"]
