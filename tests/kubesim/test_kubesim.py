"""The API-server simulator against the unmodified kubernetes-asyncio client (KUBE-API.md §6.2).

Each test starts its own simulator on an ephemeral port and talks to it through a kubeconfig, the
way Portico's controller will. Waits are bounded by asyncio timeouts; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from tests.kubesim import ApiError, KubeSim
from tests.kubesim.resources import SECRET
from tests.kubesim.selectors import parse_field_selector, parse_label_selector

pytestmark = pytest.mark.timeout(30)

NS = "default"
REPO = Path(__file__).resolve().parents[2]


# Object builders return Any: the client takes plain dicts as bodies, though its stubs say models.
def ingress(name: str, host: str = "a.test", labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {
            "ingressClassName": "portico",
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


def slice_(name: str, *addresses: str) -> Any:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


@pytest.fixture
async def sim() -> AsyncIterator[KubeSim]:
    async with KubeSim(bookmark_interval=30.0) as s:
        yield s


@pytest.fixture
async def api(sim: KubeSim, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration()
    path = sim.write_kubeconfig(tmp_path / "kubeconfig")
    await config.load_kube_config(config_file=str(path), client_configuration=cfg)
    async with client.ApiClient(cfg) as api_client:
        yield api_client


async def events(stream: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next `count` events of a watch stream (bounded in time)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            seen.append(event)
            if len(seen) == count:
                break
    return seen


def status_of(exc: ApiException) -> Any:
    """The Status body of a failed call."""
    return json.loads(exc.body or b"{}")


def summary(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in evs]


# --- list and watch ------------------------------------------------------------------------------


async def test_list_then_watch_sees_create_modify_delete(
    sim: KubeSim, api: client.ApiClient
) -> None:
    net = client.NetworkingV1Api(api)
    empty = await net.list_ingress_for_all_namespaces()
    assert empty.items == []
    assert empty.metadata.resource_version == sim.resource_version

    w = watch.Watch()
    stream = w.stream(
        net.list_namespaced_ingress,
        NS,
        resource_version=empty.metadata.resource_version,
        timeout_seconds=10,
    )
    task = asyncio.ensure_future(events(stream, 3))
    await sim.wait_for_watch("ingresses")
    created = sim.create(ingress("a"))
    modified = json.loads(json.dumps(created))
    modified["spec"]["rules"][0]["host"] = "b.test"
    sim.update(modified)
    sim.delete("Ingress", NS, "a")
    seen = await task
    await w.close()

    assert summary(seen) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert isinstance(seen[0]["object"], client.V1Ingress)
    assert seen[1]["object"].spec.rules[0].host == "b.test"
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in seen]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    # Watch-event objects carry kind/apiVersion; list items (as on a real server) do not.
    assert seen[0]["raw_object"]["kind"] == "Ingress"
    sim.create(ingress("b"))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sim.url}/apis/networking.k8s.io/v1/ingresses") as r,
    ):
        listed = await r.json()
    assert listed["kind"] == "IngressList" and "kind" not in listed["items"][0]


async def test_watch_from_rv_replays_only_later_events(sim: KubeSim, api: client.ApiClient) -> None:
    sim.create(ingress("old"))
    rv = sim.resource_version
    sim.create(ingress("new"))
    sim.delete("ingresses", NS, "old")
    net = client.NetworkingV1Api(api)

    w = watch.Watch()
    seen = await events(
        w.stream(net.list_namespaced_ingress, NS, resource_version=rv, timeout_seconds=10), 2
    )
    await w.close()
    assert summary(seen) == [("ADDED", "new"), ("DELETED", "old")]

    # Without a resourceVersion: the current state as synthetic ADDED events.
    w = watch.Watch()
    seen = await events(w.stream(net.list_namespaced_ingress, NS, timeout_seconds=10), 1)
    await w.close()
    assert summary(seen) == [("ADDED", "new")]


async def test_compacted_rv_gives_410_in_stream(sim: KubeSim, api: client.ApiClient) -> None:
    sim.create(ingress("a"))
    stale = sim.resource_version
    sim.create(ingress("b"))
    sim.compact()
    net = client.NetworkingV1Api(api)

    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        await events(
            w.stream(net.list_namespaced_ingress, NS, resource_version=stale, timeout_seconds=10),
            1,
        )
    assert info.value.status == 410
    assert "too old resource version" in str(info.value.reason)

    # "Watch forever" mode retries once with the same RV, then raises (KUBE-API §3.4).
    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        await events(w.stream(net.list_namespaced_ingress, NS, resource_version=stale), 1)
    assert info.value.status == 410
    watches = [e for e in sim.audit if e.verb == "watch" and f"resourceVersion={stale}" in e.query]
    assert len(watches) == 3

    # An Exact list at the compacted RV is an HTTP 410.
    with pytest.raises(ApiException) as info:
        await net.list_namespaced_ingress(
            NS, resource_version=stale, resource_version_match="Exact"
        )
    assert info.value.status == 410
    assert status_of(info.value)["reason"] == "Expired"


async def test_bookmarks_arrive_with_current_rv(sim: KubeSim, api: client.ApiClient) -> None:
    sim.bookmark_interval = 0.05
    sim.create(ingress("a"))
    net = client.NetworkingV1Api(api)
    w = watch.Watch()
    stream = w.stream(
        net.list_namespaced_ingress,
        NS,
        resource_version=sim.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    )
    seen = await events(stream, 1)
    assert seen[0]["type"] == "BOOKMARK"
    assert seen[0]["object"]["metadata"]["resourceVersion"] == sim.resource_version
    sim.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
    seen = await events(stream, 1)
    await w.close()
    assert seen[0]["type"] == "BOOKMARK"
    assert w.resource_version == sim.resource_version
    assert "allowWatchBookmarks=True" in sim.audit[-1].query


async def test_timeout_seconds_ends_the_stream(sim: KubeSim, api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    w = watch.Watch()
    seen = []
    async with asyncio.timeout(10):
        async for event in w.stream(net.list_namespaced_ingress, NS, timeout_seconds=1):
            seen.append(event)
    await w.close()
    assert seen == []
    assert sim.watch_count() == 0


async def test_drop_watches_makes_forever_watch_resume_from_last_rv(
    sim: KubeSim, api: client.ApiClient
) -> None:
    net = client.NetworkingV1Api(api)
    w = watch.Watch()
    stream = w.stream(net.list_namespaced_ingress, NS, resource_version=sim.resource_version)
    task = asyncio.ensure_future(events(stream, 2))
    await sim.wait_for_watch("ingresses")
    sim.create(ingress("a"))
    last = sim.resource_version
    async with asyncio.timeout(5):
        while sim.store.subscribers()[0].progress < int(last):
            await asyncio.sleep(0.01)
    sim.drop_watches()
    await sim.wait_for_watch("ingresses")
    sim.create(ingress("b"))
    seen = await task
    await w.close()
    assert summary(seen) == [("ADDED", "a"), ("ADDED", "b")]
    assert f"resourceVersion={last}" in [e for e in sim.audit if e.verb == "watch"][-1].query


async def test_selector_transitions_and_go_booleans(sim: KubeSim) -> None:
    """Raw HTTP: capitalised and Go-style booleans, selector ADDED/DELETED transitions."""
    base = f"{sim.url}/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses"
    async with aiohttp.ClientSession() as session:
        async with session.get(base, params={"watch": "True", "timeoutSeconds": "1"}) as r:
            assert r.status == 200
            assert await r.read() == b""  # a watch with nothing to say, then EOF
        for word in ("true", "1", "t", "TRUE"):
            async with session.get(base, params={"watch": word}) as r:
                assert r.headers["Transfer-Encoding"] == "chunked"  # a stream, not a list
        async with session.get(base, params={"watch": "False"}) as r:
            assert (await r.json())["kind"] == "IngressList"
        async with session.get(base, params={"watch": "yes"}) as r:
            assert r.status == 400
            assert (await r.json())["reason"] == "BadRequest"
        async with session.get(base, params={"fieldSelector": "spec.x=1"}) as r:
            assert r.status == 400
            assert (await r.json())["message"] == "field label not supported: spec.x"

        params = {
            "watch": "True",
            "resourceVersion": sim.resource_version,
            "labelSelector": "tier in (web,api),env!=prod",
            "fieldSelector": "metadata.namespace=default",
            "timeoutSeconds": "10",
        }
        async with session.get(base, params=params) as r:
            await sim.wait_for_watch("ingresses")
            obj = sim.create(ingress("a", labels={"tier": "db"}))
            obj["metadata"]["labels"] = {"tier": "web"}
            obj = sim.update(obj)
            obj["metadata"]["labels"] = {"tier": "web", "env": "prod"}
            sim.update(obj)
            sim.delete("ingresses", NS, "a")
            lines = [json.loads(await r.content.readline()) for _ in range(2)]
    assert [(e["type"], e["object"]["metadata"]["labels"]) for e in lines] == [
        ("ADDED", {"tier": "web"}),
        ("DELETED", {"tier": "web", "env": "prod"}),
    ]


# --- writes --------------------------------------------------------------------------------------


async def test_status_subresource_and_generation(sim: KubeSim, api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    created = await net.create_namespaced_ingress(NS, ingress("a"))
    assert created.metadata.generation == 1 and created.metadata.uid
    assert created.metadata.creation_timestamp is not None

    body = client.V1Ingress(
        metadata=client.V1ObjectMeta(name="a", resource_version=created.metadata.resource_version),
        spec=client.V1IngressSpec(ingress_class_name="changed-by-status-write"),
        status=client.V1IngressStatus(
            load_balancer=client.V1IngressLoadBalancerStatus(
                ingress=[client.V1IngressLoadBalancerIngress(ip="10.0.0.1")]
            )
        ),
    )
    updated = await net.replace_namespaced_ingress_status("a", NS, body)
    assert updated.status.load_balancer.ingress[0].ip == "10.0.0.1"
    assert updated.spec.ingress_class_name == "portico"  # spec kept
    assert updated.metadata.generation == 1  # status writes never bump generation

    # A status write that changes nothing: same RV, no event.
    again = await net.patch_namespaced_ingress_status(
        "a", NS, {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}
    )
    assert again.metadata.resource_version == updated.metadata.resource_version

    # A main-resource write ignores .status and bumps generation on a spec change.
    main = sim.get("ingresses", NS, "a")
    assert main is not None
    main["status"] = {"loadBalancer": {}}
    main["spec"]["ingressClassName"] = "other"
    replaced = sim.update(main)
    assert replaced["status"]["loadBalancer"]["ingress"] == [{"ip": "10.0.0.1"}]
    assert replaced["metadata"]["generation"] == 2


async def test_put_conflict_and_error_bodies(sim: KubeSim, api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    first = await net.create_namespaced_ingress(NS, ingress("a"))
    sim.patch("Ingress", NS, "a", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(ApiException) as info:
        await net.replace_namespaced_ingress("a", NS, first)
    assert info.value.status == 409
    body = status_of(info.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on ingresses.networking.k8s.io "a": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    # With an empty resourceVersion the PUT is unconditional.
    first.metadata.resource_version = ""
    await net.replace_namespaced_ingress("a", NS, first)

    with pytest.raises(ApiException) as info:
        await net.create_namespaced_ingress(NS, ingress("a"))
    assert (info.value.status, status_of(info.value)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as info:
        await net.read_namespaced_ingress("missing", NS)
    assert status_of(info.value)["message"] == ('ingresses.networking.k8s.io "missing" not found')
    wrong_ns = ingress("b")
    wrong_ns["metadata"]["namespace"] = "other"
    with pytest.raises(ApiException) as info:
        await net.create_namespaced_ingress(NS, wrong_ns)
    assert info.value.status == 400
    no_path_type = ingress("c")
    del no_path_type["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    with pytest.raises(ApiException) as info:
        await net.create_namespaced_ingress(NS, no_path_type)
    assert status_of(info.value)["message"] == (
        'Ingress.networking.k8s.io "c" is invalid: spec.rules[0].http.paths[0].pathType: '
        "Required value: pathType must be specified"
    )


async def test_patch_kinds(sim: KubeSim, api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    await net.create_namespaced_ingress(NS, ingress("a", labels={"keep": "1", "drop": "1"}))
    # dict body -> strategic-merge-patch (treated as RFC 7386 merge)
    merged = await net.patch_namespaced_ingress(
        "a", NS, {"metadata": {"labels": {"drop": None, "new": "1"}}}
    )
    assert merged.metadata.labels == {"keep": "1", "new": "1"}
    # list body -> RFC 6902 JSON patch
    patched = await net.patch_namespaced_ingress(
        "a", NS, [{"op": "replace", "path": "/spec/rules/0/host", "value": "j.test"}]
    )
    assert patched.spec.rules[0].host == "j.test"
    assert patched.metadata.generation == 2
    # explicit merge-patch content type
    merge: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
    merged = await net.patch_namespaced_ingress(
        "a", NS, {"spec": {"ingressClassName": "x"}}, **merge
    )
    assert merged.spec.ingress_class_name == "x"
    # a failing JSON patch test op is a 422
    with pytest.raises(ApiException) as info:
        await net.patch_namespaced_ingress(
            "a", NS, [{"op": "test", "path": "/kind", "value": "No"}]
        )
    assert info.value.status == 422
    # server-side apply is not implemented: 415
    with pytest.raises(ApiException) as info:
        apply: dict[str, Any] = {"_content_type": "application/apply-patch+yaml"}
        await net.patch_namespaced_ingress("a", NS, {"spec": {}}, field_manager="t", **apply)
    assert info.value.status == 415
    assert status_of(info.value)["reason"] == "UnsupportedMediaType"


async def test_secret_string_data_and_tls_validation(sim: KubeSim, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    secret = await core.create_namespaced_secret(
        NS,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="tls"),
            type="kubernetes.io/tls",
            data={"tls.crt": base64.b64encode(b"CERT").decode()},
            string_data={"tls.key": "KEY"},
        ),
    )
    assert base64.b64decode(secret.data["tls.key"]) == b"KEY"
    assert secret.string_data is None
    with pytest.raises(ApiException) as info:
        await core.create_namespaced_secret(
            NS, client.V1Secret(metadata=client.V1ObjectMeta(name="bad"), type="kubernetes.io/tls")
        )
    assert info.value.status == 422
    assert status_of(info.value)["message"] == (
        'Secret "bad" is invalid: [data[tls.crt]: Required value, data[tls.key]: Required value]'
    )
    # Secrets support the `type` field selector.
    listed = await core.list_namespaced_secret(NS, field_selector="type=kubernetes.io/tls")
    assert [s.metadata.name for s in listed.items] == ["tls"]


async def test_endpoint_slices_loopback_switch(sim: KubeSim, api: client.ApiClient) -> None:
    disc = client.DiscoveryV1Api(api)
    made = await disc.create_namespaced_endpoint_slice(NS, slice_("web-1", "127.0.0.2"))
    assert made.endpoints[0].addresses == ["127.0.0.2"]
    empty = await disc.create_namespaced_endpoint_slice(NS, slice_("web-2"))
    assert empty.endpoints is None  # the real API's `endpoints: null` quirk
    sim.options.allow_loopback_endpoints = False
    with pytest.raises(ApiException) as info:
        await disc.create_namespaced_endpoint_slice(NS, slice_("web-3", "10.0.0.1", "127.0.0.3"))
    assert status_of(info.value)["message"] == (
        'EndpointSlice.discovery.k8s.io "web-3" is invalid: endpoints[1].addresses[0]: Invalid '
        'value: "127.0.0.3": may not be in the loopback range (127.0.0.0/8, ::1/128)'
    )
    changed = sim.get("endpointslices", NS, "web-2")
    assert changed is not None
    changed["addressType"] = "IPv6"
    with pytest.raises(ApiError) as err:
        sim.update(changed)
    assert err.value.code == 422 and "field is immutable" in str(err.value)


async def test_finalizers_delay_delete(sim: KubeSim, api: client.ApiClient) -> None:
    obj = ingress("a")
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    sim.create(obj)
    net = client.NetworkingV1Api(api)
    await net.delete_namespaced_ingress("a", NS)
    pending = sim.get("ingresses", NS, "a")
    assert pending is not None and pending["metadata"]["deletionTimestamp"]
    await net.patch_namespaced_ingress("a", NS, {"metadata": {"finalizers": None}})
    assert sim.get("ingresses", NS, "a") is None
    sim.create(ingress("b"))
    status = await net.delete_namespaced_ingress("b", NS)
    assert (status.status, status.details.name) == ("Success", "b")


# --- leases --------------------------------------------------------------------------------------


async def test_lease_conflict_and_leader_election(sim: KubeSim, api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    lease = await coord.create_namespaced_lease(
        NS,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="manual"),
            spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=10),
        ),
        pretty="true",
    )
    lease.spec.holder_identity = "b"
    await coord.replace_namespaced_lease("manual", NS, lease)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as info:
        await coord.replace_namespaced_lease("manual", NS, lease)  # stale RV
    assert info.value.status == 409

    started = asyncio.Event()

    async def on_started() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def on_stopped() -> None:
        return None

    def elector(identity: str) -> leaderelection.LeaderElection:
        lock = LeaseLock("portico-leader", NS, identity, api)
        # lease_duration must be an int: LeaseLock does int(str(lease_duration)), so 2.0 fails.
        cfg = electionconfig.Config(lock, 2, 1.5, 1.0, on_started, on_stopped)
        return leaderelection.LeaderElection(cfg)

    leader = elector("pod-a")
    task = asyncio.create_task(leader.run())
    try:
        async with asyncio.timeout(10):
            await started.wait()
        stored = sim.get("leases", NS, "portico-leader")
        assert stored is not None and stored["spec"]["holderIdentity"] == "pod-a"
        # Another candidate reads a live lease held by someone else: not acquired.
        assert await elector("pod-b").try_acquire_or_renew() is False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    creates = [e for e in sim.audit if e.verb == "create" and e.resource == "leases"]
    assert [e.status for e in creates] == [201, 201]


# --- fault injection -----------------------------------------------------------------------------


async def test_fail_next_and_forbid(sim: KubeSim, api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    sim.fail_next("list", "ingresses", 503, n=2, retry_after=1.5)
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            await net.list_ingress_for_all_namespaces()
        assert info.value.status == 503
        assert info.value.headers is not None
        assert info.value.headers["Retry-After"] == "2"
    await net.list_ingress_for_all_namespaces()  # the fault is used up

    sim.create(ingress("a"))
    sim.forbid("update", "ingresses/status", NS)
    with pytest.raises(ApiException) as info:
        await net.replace_namespaced_ingress_status("a", NS, ingress("a"))
    assert info.value.status == 403
    await net.replace_namespaced_ingress("a", NS, ingress("a"))  # main resource still allowed
    body = {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}
    sim.forbid("patch", "ingresses/status", NS)
    with pytest.raises(ApiException) as info:
        await net.patch_namespaced_ingress_status("a", NS, body)
    assert status_of(info.value)["message"] == (
        'ingresses.networking.k8s.io "a" is forbidden: User "system:serviceaccount:portico:portico"'
        ' cannot patch resource "ingresses/status" in API group "networking.k8s.io" in the '
        'namespace "default"'
    )
    sim.allow("patch", "ingresses/status", NS)
    await net.patch_namespaced_ingress_status("a", NS, body)
    statuses = [(e.verb, e.resource, e.status) for e in sim.audit if e.resource.endswith("status")]
    assert statuses == [
        ("update", "ingresses/status", 403),
        ("patch", "ingresses/status", 403),
        ("patch", "ingresses/status", 200),
    ]


async def test_rbac_rules_from_a_cluster_role(sim: KubeSim, api: client.ApiClient) -> None:
    sim.load_rbac(
        [
            {
                "kind": "ClusterRole",
                "rules": [
                    {
                        "apiGroups": ["networking.k8s.io"],
                        "resources": ["ingresses"],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            }
        ]
    )
    net = client.NetworkingV1Api(api)
    await net.list_ingress_for_all_namespaces()
    with pytest.raises(ApiException) as info:
        await net.create_namespaced_ingress(NS, ingress("a"))
    assert info.value.status == 403


def _binding(kind: str, role: str, subject: dict[str, str], ns: str | None = None) -> Any:
    ref_kind = "ClusterRole" if kind == "ClusterRoleBinding" or role.startswith("c-") else "Role"
    return {
        "kind": kind,
        "metadata": {"name": f"{kind}-{role}", **({"namespace": ns} if ns else {})},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": role},
        "subjects": [subject],
    }


ME = {"kind": "ServiceAccount", "name": "portico", "namespace": "portico"}
RBAC_DOCS: list[Any] = [
    {
        "kind": "ClusterRole",
        "metadata": {"name": "c-read"},
        "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]}],
    },
    {
        "kind": "Role",
        "metadata": {"name": "by-name", "namespace": "certs"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["wildcard"],
                "verbs": ["list", "watch"],
            }
        ],
    },
    {
        "kind": "Role",
        "metadata": {"name": "unbound", "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}],
    },
    # c-read bound in one namespace only; by-name bound to us, and to someone else.
    _binding("RoleBinding", "c-read", ME, "team-a"),
    _binding("RoleBinding", "by-name", ME, "certs"),
    _binding("ClusterRoleBinding", "c-read", {"kind": "User", "name": "alice"}),
]


async def test_rbac_follows_bindings_names_in_field_selectors_and_records_use(
    sim: KubeSim, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    sim.load_rbac(RBAC_DOCS)
    assert sorted(map(str, sim.rbac_grants())) == [
        "list secrets named wildcard in namespace certs",
        "list services in namespace team-a",
        "watch secrets named wildcard in namespace certs",
        "watch services in namespace team-a",
    ]
    # A ClusterRole bound by a RoleBinding grants in that namespace only.
    await core.list_namespaced_service("team-a")
    for call in (
        core.list_namespaced_service("team-b"),
        core.list_service_for_all_namespaces(),
        core.list_namespaced_secret("certs"),  # resourceNames: only with the name pinned
        core.list_namespaced_secret("certs", field_selector="metadata.name=other"),
        core.list_namespaced_secret("certs", field_selector="metadata.name!=wildcard"),
        core.list_namespaced_event(NS),  # its Role is bound to nobody
    ):
        with pytest.raises(ApiException) as info:
            await call
        assert info.value.status == 403
    assert sim.rbac_unused() == sorted(
        g for g in sim.rbac_grants() if g.resource == "secrets" or g.verb == "watch"
    )
    # A list pinned to the name by its field selector is authorized, and audited, by that name.
    listed = await core.list_namespaced_secret(
        "certs", field_selector="type!=kubernetes.io/dockercfg,metadata.name=wildcard"
    )
    assert listed.items == []
    assert (sim.audit[-1].verb, sim.audit[-1].name) == ("list", "wildcard")
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_secret, "certs", field_selector="metadata.name==wildcard"
    )
    task = asyncio.ensure_future(events(stream, 1))
    await sim.wait_for_watch("secrets")
    sim.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "wildcard", "namespace": "certs"},
        }
    )
    assert summary(await task) == [("ADDED", "wildcard")]
    assert sim.rbac_unused() == sorted(
        g for g in sim.rbac_grants() if g.resource == "services" and g.verb == "watch"
    )
    message = (
        'secrets "other" is forbidden: User "system:serviceaccount:portico:portico" cannot list '
        'resource "secrets" in API group "" in the namespace "certs"'
    )
    forbidden = [e for e in sim.audit if e.status == 403 and e.name == "other"]
    assert len(forbidden) == 1
    with pytest.raises(ApiException) as info:
        await core.list_namespaced_secret("certs", field_selector="metadata.name=other")
    assert status_of(info.value)["message"] == message
    sim.load_rbac(None)
    assert sim.rbac_grants() == frozenset() and sim.rbac_unused() == []
    await core.list_namespaced_event(NS)


async def test_down_pause_and_delay(sim: KubeSim, api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    sim.set_down(True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await net.list_ingress_for_all_namespaces()
    sim.set_down(False)
    await net.list_ingress_for_all_namespaces()

    w = watch.Watch()
    stream = w.stream(
        net.list_namespaced_ingress, NS, resource_version=sim.resource_version, timeout_seconds=10
    )
    task = asyncio.ensure_future(events(stream, 1))
    await sim.wait_for_watch("ingresses")
    sim.pause_events()
    sim.create(ingress("held"))
    listed = await net.list_namespaced_ingress(NS)  # lists see the write at once
    assert [i.metadata.name for i in listed.items] == ["held"]
    assert not task.done()
    sim.resume_events()
    assert summary(await task) == [("ADDED", "held")]
    await w.close()

    sim.delay(0.05)
    await net.list_namespaced_ingress(NS)
    sim.delay(0)


# --- protocol details ----------------------------------------------------------------------------


async def test_watch_list_and_its_1_33_rejection(sim: KubeSim, api: client.ApiClient) -> None:
    sim.create(ingress("a"))
    net = client.NetworkingV1Api(api)
    w = watch.Watch()
    stream = w.stream(
        net.list_namespaced_ingress,
        NS,
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    )
    seen = await events(stream, 2)
    await w.close()
    assert seen[0]["type"] == "ADDED"
    assert seen[1]["type"] == "BOOKMARK"
    assert seen[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    sim.watch_list = False
    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        await events(
            w.stream(
                net.list_namespaced_ingress,
                NS,
                send_initial_events=True,
                resource_version_match="NotOlderThan",
                timeout_seconds=10,
            ),
            1,
        )
    await w.close()
    assert info.value.status == 422


async def test_paged_exact_list(sim: KubeSim, api: client.ApiClient) -> None:
    for name in ("a", "b", "c"):
        sim.create(ingress(name))
    net = client.NetworkingV1Api(api)
    page = await net.list_namespaced_ingress(NS, limit=2)
    assert [i.metadata.name for i in page.items] == ["a", "b"]
    sim.delete("ingresses", NS, "c")  # the next page is still served at the first page's RV
    rest = await net.list_namespaced_ingress(NS, limit=2, _continue=page.metadata._continue)
    assert [i.metadata.name for i in rest.items] == ["c"]
    assert rest.metadata._continue is None
    sim.compact()
    with pytest.raises(ApiException) as info:
        await net.list_namespaced_ingress(NS, limit=2, _continue=page.metadata._continue)
    assert info.value.status == 410


async def test_discovery_and_cluster_scoped_types(sim: KubeSim, api: client.ApiClient) -> None:
    version = await client.VersionApi(api).get_code()
    assert version.git_version == sim.server_version
    groups = await client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} >= {"networking.k8s.io", "coordination.k8s.io"}
    resources = await client.NetworkingV1Api(api).get_api_resources()
    assert "ingresses/status" in {r.name for r in resources.resources}

    net = client.NetworkingV1Api(api)
    await net.create_ingress_class(
        client.V1IngressClass(
            metadata=client.V1ObjectMeta(name="portico"),
            spec=client.V1IngressClassSpec(controller="example.com/portico"),
        )
    )
    classes = await net.list_ingress_class()
    assert [c.metadata.name for c in classes.items] == ["portico"]
    namespaces = await client.CoreV1Api(api).list_namespace()
    assert {"default", "kube-system"} <= {n.metadata.name for n in namespaces.items}


async def test_tls_kubeconfig(tmp_path: Path) -> None:
    async with KubeSim(tls=True, require_auth=True) as sim:
        cfg = client.Configuration()
        path = sim.write_kubeconfig(tmp_path / "kubeconfig")
        await config.load_kube_config(config_file=str(path), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            await client.CoreV1Api(api).list_namespaced_service(NS)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{sim.url}/api/v1/services", ssl=False) as r,
        ):
            assert r.status == 401


async def test_standalone_process(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.kubesim",
        "--kubeconfig",
        str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            url = (await proc.stdout.readline()).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            listed = await client.CoreV1Api(api).list_namespace()
        assert "default" in {n.metadata.name for n in listed.items}
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


async def test_services_events_and_default_class(tmp_path: Path) -> None:
    async with KubeSim(default_ingress_class=True) as sim:
        cfg = client.Configuration()
        path = sim.write_kubeconfig(tmp_path / "kubeconfig")
        await config.load_kube_config(config_file=str(path), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            core = client.CoreV1Api(api)
            svc = await core.create_namespaced_service(
                NS,
                client.V1Service(
                    metadata=client.V1ObjectMeta(name="web"),
                    spec=client.V1ServiceSpec(ports=[client.V1ServicePort(name="http", port=80)]),
                ),
            )
            assert svc.spec.type == "ClusterIP" and svc.spec.cluster_ip
            assert svc.spec.ports[0].target_port == 80
            lb = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
            patched = await core.patch_namespaced_service_status("web", NS, lb)
            assert patched.status.load_balancer.ingress[0].ip == "192.0.2.1"
            assert patched.spec.cluster_ip == svc.spec.cluster_ip
            deleted = await core.delete_namespaced_service("web", NS)  # returns the Service
            assert deleted.metadata.name == "web"

            await core.create_namespaced_event(
                NS,
                client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name="web."),
                    involved_object=client.V1ObjectReference(kind="Ingress", name="web"),
                    reason="ServiceNotFound",
                    type="Warning",
                ),
            )
            listed = await core.list_namespaced_event(
                NS, field_selector="involvedObject.kind=Ingress,reason=ServiceNotFound"
            )
            assert len(listed.items) == 1
            assert listed.items[0].metadata.name.startswith("web.")

            events_api = client.EventsV1Api(api)
            with pytest.raises(ApiException) as info:
                bare: Any = {"metadata": {"name": "e"}, "reason": "X", "type": "Normal"}
                await events_api.create_namespaced_event(NS, bare)
            assert info.value.status == 422
            assert "reportingController: Required value" in status_of(info.value)["message"]

            net = client.NetworkingV1Api(api)
            await net.create_ingress_class(
                client.V1IngressClass(
                    metadata=client.V1ObjectMeta(
                        name="portico",
                        annotations={"ingressclass.kubernetes.io/is-default-class": "true"},
                    ),
                    spec=client.V1IngressClassSpec(controller="example.com/portico"),
                )
            )
            body = ingress("classless")
            del body["spec"]["ingressClassName"]
            made = await net.create_namespaced_ingress(NS, body)
            assert made.spec.ingress_class_name == "portico"


async def test_in_cluster_config(tmp_path: Path) -> None:
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

    async with KubeSim(tls=True, require_auth=True) as sim:
        env = sim.write_incluster_files(tmp_path)
        cfg = client.Configuration()
        InClusterConfigLoader(
            token_filename=str(tmp_path / "token"),
            cert_filename=str(tmp_path / "ca.crt"),
            environ=env,
        ).load_and_set(cfg)
        async with client.ApiClient(cfg) as api:
            coord = client.CoordinationV1Api(api)
            listed = await coord.list_namespaced_lease(NS)
        assert listed.items == []
        assert sim.audit[-1].status == 200


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a in (b, c)", {"a": "c"}, True),
        ("a notin (b,c)", {"a": "c"}, False),
        ("a notin (b,c)", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a,b=1", {"a": "x", "b": "1"}, True),
        ("example.com/tier=web,n>3", {"example.com/tier": "web", "n": "4"}, True),
        ("n<3", {"n": "x"}, False),
    ],
)
def test_label_selector_grammar(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector)({"metadata": {"labels": labels}}) is expected


def test_selector_errors_are_bad_requests() -> None:
    for bad in ("a in b", "a=(", "=b"):
        with pytest.raises(ApiError) as err:
            parse_label_selector(bad)
        assert err.value.code == 400
    secret = {"metadata": {"name": "s", "namespace": "x"}, "type": "kubernetes.io/tls"}
    assert parse_field_selector("type=kubernetes.io/tls,metadata.name!=t", SECRET)(secret)
    # Several `!=` terms on one field are ANDed, as Portico's Secret informer uses them.
    excluding = "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1"
    assert parse_field_selector(excluding, SECRET)(secret)
    assert parse_field_selector(excluding, SECRET)({**secret, "type": "Opaque"})
    for unwanted in ("kubernetes.io/service-account-token", "helm.sh/release.v1"):
        assert not parse_field_selector(excluding, SECRET)({**secret, "type": unwanted})
    with pytest.raises(ApiError):
        parse_field_selector("data.x=1", SECRET)
