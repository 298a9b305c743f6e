"""A Kubernetes API-server simulator for Portico's tests (KUBE-API.md §6.2).

It speaks the real HTTP protocol (lists, watch streams, resourceVersions, bookmarks, 410 Gone,
status subresources, Status error bodies) so the unmodified kubernetes-asyncio client can be
tested against it, and exposes fault injection and an audit log to the tests.

    async with KubeSim() as sim:                       # 127.0.0.1, ephemeral port, plain HTTP
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
        sim.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, ...})
        ... start the controller with the kubeconfig ...
        await sim.wait_for_watch("ingresses")          # its informer is up
        sim.fail_next("patch", "ingresses/status", 500)
        assert not [e for e in sim.audit if e.verb == "patch"]

Objects created directly go through the same validation and produce the same watch events as
API writes. Options worth knowing: bookmark_interval, watch_list (False = reject WatchList as
1.33), allow_loopback_endpoints (True by default for 127.0.0.x pods), default_ingress_class,
tls/require_auth, history_size. `load_rbac(docs)` enforces ClusterRoles, Roles and their
bindings (e.g. `helm template` output) for `user`, and `rbac_unused()` lists the grants that no
request used. Call everything from the event loop's thread.
"""

from tests.kubesim.rbac import Grant
from tests.kubesim.server import AuditEntry, KubeSim, go_bool
from tests.kubesim.status import ApiError

__all__ = ["ApiError", "AuditEntry", "Grant", "KubeSim", "go_bool"]
