"""Informers against a scripted API: list/watch/410/403 handling and the parse edge."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest

from controller.app import ClusterMode
from controller.compiler.problems import Problem
from controller.kube import ApiError
from controller.kube.client import INGRESS_CLASSES, SECRETS, SERVICES, KubeApi, Resource
from controller.kube.watching import (
    SECRETS_SELECTOR,
    WATCHED,
    Backoff,
    Change,
    ClusterSource,
    Informer,
    Watched,
    build_informers,
    build_named_informers,
    reconcile_list,
)
from controller.settings import Settings
from controller.store import Store, WatchEvent
from tests.kubesim import resources as kubesim_resources
from tests.kubesim.selectors import parse_field_selector


def svc(name: str, rv: str, ns: str = "default", port: Any = 80) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "uid": f"u-{name}"},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


class FakeApi:
    """Lists and watch streams scripted per call; records every request."""

    def __init__(self) -> None:
        self.lists: list[dict[str, Any] | ApiError] = []
        self.watches: list[list[dict[str, Any]] | ApiError] = []
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.exhausted = asyncio.Event()

    async def list(
        self, resource: Resource, namespace: str | None, *, field_selector: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("list", namespace, field_selector))
        if not self.lists:
            self.exhausted.set()
            await asyncio.Event().wait()
        item = self.lists.pop(0)
        if isinstance(item, ApiError):
            raise item
        return item

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        timeout_seconds: int,
        field_selector: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("watch", namespace, resource_version))
        if not self.watches:
            self.exhausted.set()
            await asyncio.Event().wait()
        item = self.watches.pop(0)
        if isinstance(item, ApiError):
            raise item
        for event in item:
            yield event


class Recorder:
    """A ReconcilerSink that keeps what it was given."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.listed: list[str] = []
        self.problems: tuple[Problem, ...] = ()

    def apply(self, events: Sequence[WatchEvent]) -> None:
        for event in events:
            self.store.apply(event)

    def mark_listed(self, kind: str) -> None:
        self.listed.append(kind)

    def set_source_problems(self, problems: tuple[Problem, ...]) -> None:
        self.problems = problems


SERVICES_WATCHED = Watched(SERVICES)


def make(
    api: FakeApi, watched: Watched = SERVICES_WATCHED, namespace: str | None = None
) -> tuple[Informer, ClusterSource, Recorder]:
    store = Store()
    recorder = Recorder(store)
    source = ClusterSource(recorder, store)
    informer = Informer(api, watched, namespace, source, max_backoff=0.01, rng=random.Random(1))
    source.informers.append(informer)
    return informer, source, recorder


async def run_until_exhausted(informer: Informer, api: FakeApi) -> None:
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(5):
            await api.exhausted.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def names(store: Store) -> set[str]:
    return {o.name for o in store.objects("Service")}


def test_reconcile_list_diffs_against_the_cache() -> None:
    cache = {("default", "same"): "1", ("default", "changed"): "2", ("default", "gone"): "3"}
    items = [svc("same", "1"), svc("changed", "5"), svc("new", "6")]
    changes, fresh = reconcile_list(cache, items)
    kinds = {(c.type, c.key[1]) for c in changes}
    assert kinds == {("MODIFIED", "changed"), ("ADDED", "new"), ("DELETED", "gone")}
    deleted = next(c for c in changes if c.type == "DELETED")
    assert deleted.raw is None
    assert fresh == {("default", "same"): "1", ("default", "changed"): "5", ("default", "new"): "6"}


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(3))
    delays = [backoff.next() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(4.0 <= d <= 8.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next() <= 1.0


async def test_list_then_watch_from_the_list_version_with_bookmarks() -> None:
    api = FakeApi()
    api.lists = [{"metadata": {"resourceVersion": "10"}, "items": [svc("a", "5")]}]
    api.watches = [
        [
            {"type": "ADDED", "object": {**svc("b", "11"), "kind": "Service"}},
            {
                "type": "BOOKMARK",
                "object": {"kind": "Service", "metadata": {"resourceVersion": "15"}},
            },
        ],
        [{"type": "DELETED", "object": {**svc("a", "16"), "kind": "Service"}}],
    ]
    informer, _, recorder = make(api)
    await run_until_exhausted(informer, api)
    assert recorder.listed == ["Service"]
    assert names(recorder.store) == {"b"}
    # The first watch starts at the list's version, the second at the bookmark's.
    assert [c for c in api.calls if c[0] == "watch"][:3] == [
        ("watch", None, "10"),
        ("watch", None, "15"),
        ("watch", None, "16"),
    ]


async def test_gone_relists_and_synthesises_deletes() -> None:
    api = FakeApi()
    api.lists = [
        {"metadata": {"resourceVersion": "10"}, "items": [svc("a", "5"), svc("b", "6")]},
        {"metadata": {"resourceVersion": "30"}, "items": [svc("b", "6"), svc("c", "25")]},
    ]
    api.watches = [
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}],
    ]
    informer, _, recorder = make(api)
    await run_until_exhausted(informer, api)
    assert names(recorder.store) == {"b", "c"}
    assert informer.lists == 2
    assert api.calls[-1] == ("watch", None, "30")


async def test_gone_as_an_http_status_also_relists() -> None:
    api = FakeApi()
    api.lists = [
        {"metadata": {"resourceVersion": "10"}, "items": [svc("a", "5")]},
        {"metadata": {"resourceVersion": "20"}, "items": []},
    ]
    api.watches = [ApiError(410, "Expired", "too old")]
    informer, _, recorder = make(api)
    await run_until_exhausted(informer, api)
    assert names(recorder.store) == set()


async def test_errors_resume_from_the_last_version_without_relisting() -> None:
    api = FakeApi()
    api.lists = [{"metadata": {"resourceVersion": "10"}, "items": []}]
    api.watches = [
        [{"type": "ADDED", "object": {**svc("a", "12"), "kind": "Service"}}],
        ApiError(0, "Unreachable", "connection refused"),
        ApiError(500, "InternalError", "boom"),
        [],
    ]
    informer, _, recorder = make(api)
    await run_until_exhausted(informer, api)
    assert informer.lists == 1
    assert [c for c in api.calls if c[0] == "watch"][1:4] == [("watch", None, "12")] * 3
    assert names(recorder.store) == {"a"}


async def test_forbidden_is_reported_with_the_missing_permission_until_allowed() -> None:
    api = FakeApi()
    api.lists = [
        ApiError(403, "Forbidden", 'secrets is forbidden: User "x" cannot list resource'),
        ApiError(403, "Forbidden", "again"),
    ]
    informer, source, recorder = make(api, Watched(SECRETS, "type=kubernetes.io/tls"), "team-a")
    await run_until_exhausted(informer, api)
    assert source.blocked_reasons() == ["cannot list secrets in namespace team-a"]
    assert recorder.listed == []
    assert api.calls[0] == ("list", "team-a", "type=kubernetes.io/tls")

    api.exhausted.clear()
    api.lists = [{"metadata": {"resourceVersion": "3"}, "items": []}]
    await run_until_exhausted(informer, api)
    assert source.blocked_reasons() == []
    assert recorder.listed == ["Secret"]


async def test_cluster_scoped_forbidden_message() -> None:
    api = FakeApi()
    api.lists = [ApiError(403, "Forbidden", "no")]
    informer, source, _ = make(api, Watched(INGRESS_CLASSES), "ignored-for-cluster-scope")
    await run_until_exhausted(informer, api)
    assert source.blocked_reasons() == ["cannot list ingressclasses at the cluster scope"]


async def test_unparsable_object_is_a_problem_and_the_last_good_version_stays() -> None:
    api = FakeApi()
    api.lists = [{"metadata": {"resourceVersion": "10"}, "items": [svc("a", "5", port=80)]}]
    api.watches = [
        [{"type": "MODIFIED", "object": {**svc("a", "11", port=True), "kind": "Service"}}],
    ]
    informer, _, recorder = make(api)
    await run_until_exhausted(informer, api)
    kept = recorder.store.get("Service", "default", "a")
    assert kept is not None and kept.ports[0].port == 80  # type: ignore[union-attr]
    assert [(p.kind, p.ref, p.reason) for p in recorder.problems] == [
        ("Service", "default/a", "InvalidObject")
    ]
    assert "spec.ports[0].port" in recorder.problems[0].message

    # Fixed: the problem goes away.
    api.exhausted.clear()
    api.watches = [[{"type": "MODIFIED", "object": {**svc("a", "12", port=81), "kind": "Service"}}]]
    await run_until_exhausted(informer, api)
    assert recorder.problems == ()


def test_a_kind_is_listed_only_when_every_namespace_listed() -> None:
    store = Store()
    recorder = Recorder(store)
    source = ClusterSource(recorder, store)
    informers = build_informers(
        FakeApi(), source, ["a", "b"], watch_timeout=10, max_backoff=1, watched=[Watched(SERVICES)]
    )
    assert [i.namespace for i in informers] == ["a", "b"]
    informers[0].has_listed = True
    source.listed(informers[0])
    assert recorder.listed == []
    informers[1].has_listed = True
    source.listed(informers[1])
    assert recorder.listed == ["Service"]


def test_deleted_without_object_removes_the_stored_one() -> None:
    store = Store()
    recorder = Recorder(store)
    seen: list[tuple[str, tuple[str, str], bool]] = []
    source = ClusterSource(
        recorder, store, observers=[lambda k, key, raw: seen.append((k, key, raw is None))]
    )
    informer = Informer(FakeApi(), Watched(SERVICES), None, source)
    source.changes(
        informer, [Change("ADDED", ("default", "a"), {**svc("a", "1"), "kind": "Service"})]
    )
    assert names(store) == {"a"}
    source.changes(informer, [Change("DELETED", ("default", "a"), None)])
    assert names(store) == set()
    assert seen == [("Service", ("default", "a"), False), ("Service", ("default", "a"), True)]


# Secrets of these types must reach the store (Opaque: a proxy-ssl-secret's ca.crt, htpasswd
# files); the others must be excluded by the server and never be sent to Portico.
SECRET_TYPES = [
    ("kubernetes.io/tls", True),
    ("Opaque", True),
    ("kubernetes.io/basic-auth", True),
    ("kubernetes.io/service-account-token", False),
    ("helm.sh/release.v1", False),
    ("kubernetes.io/dockercfg", False),
    ("kubernetes.io/dockerconfigjson", False),
    ("bootstrap.kubernetes.io/token", False),
]


@pytest.mark.parametrize(("secret_type", "read"), SECRET_TYPES)
def test_the_secret_informer_reads_every_type_portico_can_use(secret_type: str, read: bool) -> None:
    (secrets,) = [w for w in WATCHED if w.resource is SECRETS]
    assert secrets.field_selector is not None
    # Applied as the API server applies it (KubeSim implements the same selector grammar).
    selector = parse_field_selector(secrets.field_selector, kubesim_resources.SECRET)
    raw = {"metadata": {"name": "s", "namespace": "default"}, "type": secret_type}
    assert selector(raw) is read


def test_named_informers_read_objects_outside_the_watched_namespaces_by_name() -> None:
    store = Store()
    recorder = Recorder(store)
    source = ClusterSource(recorder, store)
    refs = [(SECRETS, "certs", "wildcard"), (SECRETS, "team-a", "inside")]
    watched = build_informers(
        FakeApi(), source, ["team-a"], watch_timeout=10, max_backoff=1, watched=[Watched(SECRETS)]
    )
    named = build_named_informers(
        FakeApi(), source, ["team-a"], refs, watch_timeout=10, max_backoff=1
    )
    # Inside a watched namespace the namespace's informer has it already.
    assert [(i.namespace, i.field_selector) for i in named] == [("certs", "metadata.name=wildcard")]
    # With every namespace watched, nothing is read by name.
    assert build_named_informers(FakeApi(), source, [], refs, watch_timeout=1, max_backoff=1) == []
    # Secrets count as listed only once the by-name informer has listed too.
    for informer in watched:
        informer.has_listed = True
        source.listed(informer)
    assert recorder.listed == []
    named[0].has_listed = True
    source.listed(named[0])
    assert recorder.listed == ["Secret"]


@pytest.mark.parametrize(
    ("namespaces", "certificate", "expected"),
    [
        (("team-a",), "certs/wildcard", [("certs", "metadata.name=wildcard")]),
        (("team-a", "certs"), "certs/wildcard", []),
        ((), "certs/wildcard", []),
        (("team-a",), None, []),
    ],
)
def test_the_controller_reads_a_default_certificate_outside_the_watched_namespaces(
    namespaces: tuple[str, ...], certificate: str | None, expected: list[tuple[str, str]]
) -> None:
    cluster = ClusterMode(
        cast(KubeApi, FakeApi()),
        Settings(
            watch_namespaces=namespaces,
            pod_name="p",
            election_namespace="portico",
            default_certificate=certificate,
        ),
    )
    secrets = [i for i in cluster.informers if i.resource is SECRETS]
    assert [(i.namespace, i.field_selector) for i in secrets] == [
        *[(ns, SECRETS_SELECTOR) for ns in namespaces or [None]],
        *expected,
    ]
    # They feed the store, and the first compile waits for them.
    assert all(i in cluster.source.informers for i in secrets)
