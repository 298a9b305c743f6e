"""Unit tests of controller.store: relevance of changes, sync tracking, indexes, revisions."""

from __future__ import annotations

import pytest

from controller.objects import READ_KINDS, parse_object
from controller.store import Store, WatchEvent
from tests.kube_factory import (
    Raw,
    endpoint_slice,
    ingress,
    ingress_class,
    opaque_secret,
    path,
    rule,
    service,
    tls_entry,
    tls_secret,
)


def ev(type_: str, raw: Raw) -> WatchEvent:
    obj = parse_object(raw)
    assert obj is not None
    return WatchEvent(type_, obj)  # type: ignore[arg-type]


def base_store() -> Store:
    store = Store()
    for raw in (
        ingress_class(),
        ingress(rules=[rule("a.example.com", path("/", "web"))], tls=[tls_entry("cfg")]),
        service("web"),
        endpoint_slice("web-1", "web"),
    ):
        assert store.apply(ev("ADDED", raw))
    return store


RELEVANCE: list[tuple[str, str, Raw, bool]] = [
    # (id, event type, object, matters for routing?)
    (
        "same-ingress-again",
        "MODIFIED",
        ingress(rules=[rule("a.example.com", path("/", "web"))], tls=[tls_entry("cfg")]),
        False,
    ),
    ("ingress-changed", "MODIFIED", ingress(rules=[rule("b.example.com")]), True),
    ("new-ingress", "ADDED", ingress("other"), True),
    ("delete-unknown", "DELETED", ingress("ghost"), False),
    ("referenced-service", "MODIFIED", service("web", ports=[]), True),
    ("unreferenced-service", "ADDED", service("db"), False),
    ("referenced-slice", "ADDED", endpoint_slice("web-2", "web"), True),
    ("same-slice-again", "MODIFIED", endpoint_slice("web-1", "web"), False),
    ("unreferenced-slice", "ADDED", endpoint_slice("db-1", "db"), False),
    ("unlabelled-slice", "ADDED", endpoint_slice("x", None), False),
    ("tls-secret", "ADDED", tls_secret("any"), True),
    ("opaque-secret-unreferenced", "ADDED", opaque_secret("random", x="1"), False),
    ("opaque-secret-referenced", "ADDED", opaque_secret("cfg", x="1"), True),
    ("ingress-class", "ADDED", ingress_class("other", "x/y"), True),
]


@pytest.mark.parametrize(
    ("type_", "raw", "relevant"), [pytest.param(*row[1:], id=row[0]) for row in RELEVANCE]
)
def test_apply_relevance(type_: str, raw: Raw, relevant: bool) -> None:
    store = base_store()
    revision = store.revision
    assert store.apply(ev(type_, raw)) is relevant
    assert (store.revision > revision) is relevant


def test_opaque_ca_secrets_matter_only_when_named_and_only_for_the_keys_portico_reads() -> None:
    store = base_store()
    annotation = {"nginx.ingress.kubernetes.io/proxy-ssl-secret": "default/upstream-ca"}
    assert store.apply(ev("ADDED", ingress("up", annotations=annotation)))
    ca = {"ca.crt": "CA-1", "note": "a"}
    assert store.apply(ev("ADDED", opaque_secret("upstream-ca", **ca)))
    assert not store.apply(ev("ADDED", opaque_secret("unrelated-ca", **ca)))
    # A key Portico does not read changes: the parsed Secret is the same, nothing to compile.
    assert not store.apply(ev("MODIFIED", opaque_secret("upstream-ca", **{**ca, "note": "b"})))
    assert store.apply(ev("MODIFIED", opaque_secret("upstream-ca", **{**ca, "ca.crt": "CA-2"})))


def test_irrelevant_objects_are_still_stored() -> None:
    store = base_store()
    store.apply(ev("ADDED", service("db")))
    assert store.get("Service", "default", "db") is not None


def test_get_objects_and_delete() -> None:
    store = base_store()
    obj = store.get("Ingress", "default", "web")
    assert obj is not None and obj.ref == "default/web"
    assert [o.name for o in store.objects("Service")] == ["web"]
    assert store.apply(ev("DELETED", ingress()))
    assert store.get("Ingress", "default", "web") is None
    assert list(store.objects("Ingress")) == []
    assert store.get("Nope", "a", "b") is None and list(store.objects("Nope")) == []


def test_synced_after_every_kind_listed() -> None:
    store = Store()
    for kind in sorted(READ_KINDS):
        assert not store.synced
        store.mark_listed(kind)
    assert store.synced


def test_slice_index_follows_label_changes() -> None:
    store = base_store()
    store.apply(ev("ADDED", endpoint_slice("web-2", "web")))
    assert sorted(s.name for s in store.slices_for("default", "web")) == ["web-1", "web-2"]
    # Relabelled to another Service: leaves the old group.
    store.apply(ev("MODIFIED", endpoint_slice("web-2", "api")))
    assert [s.name for s in store.slices_for("default", "web")] == ["web-1"]
    assert [s.name for s in store.slices_for("default", "api")] == ["web-2"]
    store.apply(ev("DELETED", endpoint_slice("web-1", "web")))
    assert list(store.slices_for("default", "web")) == []
    assert list(store.slices_for("other", "web")) == []


def test_revisions_separate_routes_from_endpoints() -> None:
    store = base_store()
    routes = store.routes_revision
    rev = store.revision
    store.apply(ev("MODIFIED", endpoint_slice("web-1", "web", endpoints=["127.0.0.9"])))
    assert store.routes_revision == routes
    assert store.endpoint_changes_since(rev) == {("default", "web")}
    assert store.endpoint_changes_since(store.revision) == set()
    store.apply(ev("MODIFIED", service("web", ports=[])))
    assert store.routes_revision == store.revision


def test_references_are_dropped_with_the_ingress() -> None:
    store = base_store()
    assert store.is_referenced_service("default", "web")
    store.apply(ev("DELETED", ingress()))
    assert not store.is_referenced_service("default", "web")
    assert not store.apply(ev("ADDED", endpoint_slice("web-9", "web")))
