"""The incremental Compiler: same output as compile_view, routes reused on endpoint-only changes."""

from __future__ import annotations

import pytest
from kube_factory import (
    Raw,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    store_of,
    tls_entry,
    tls_secret,
)

from controller.compiler import Compiler, CompileSettings, compile_view
from controller.objects import parse_object
from controller.store import Store, WatchEvent

SETTINGS = CompileSettings()


def event(kind: str, raw: Raw) -> WatchEvent:
    obj = parse_object(raw)
    assert obj is not None
    return WatchEvent(kind, obj)  # type: ignore[arg-type]


def setup() -> Store:
    return store_of(
        ingress_class(),
        ingress("a", rules=[rule("a.example.com", path("/", "web"), path("/api", "api"))]),
        ingress(
            "b",
            rules=[rule("b.example.com", path("/", "web"))],
            tls=[tls_entry("web-tls", "b.example.com")],
        ),
        tls_secret(hosts=["b.example.com"]),
        service("web"),
        service("api"),
        endpoint_slice("web-1", "web", endpoints=["127.0.0.2"]),
        endpoint_slice("api-1", "api", endpoints=["127.0.0.3"]),
    )


CHANGES: list[tuple[str, str, Raw, bool]] = [
    # (id, event type, object, routes reused?)
    (
        "slice-modified",
        "MODIFIED",
        endpoint_slice("web-1", "web", endpoints=["127.0.0.4", "127.0.0.5"]),
        True,
    ),
    ("slice-added", "ADDED", endpoint_slice("web-2", "web", endpoints=["127.0.0.6"]), True),
    ("slice-deleted", "DELETED", endpoint_slice("api-1", "api"), True),
    ("service-modified", "MODIFIED", service("web", ports=[]), False),
    ("ingress-added", "ADDED", ingress("c", rules=[rule("c.example.com")]), False),
    ("ingress-deleted", "DELETED", ingress("a"), False),
    ("secret-deleted", "DELETED", tls_secret(hosts=["b.example.com"]), False),
    ("class-deleted", "DELETED", ingress_class(), False),
]


@pytest.mark.parametrize(
    ("type_", "raw", "reused"), [pytest.param(*row[1:], id=row[0]) for row in CHANGES]
)
def test_incremental_equals_full(type_: str, raw: Raw, reused: bool) -> None:
    store = setup()
    compiler = Compiler(SETTINGS)
    before = compiler.compile(store)
    assert store.apply(event(type_, raw))
    after = compiler.compile(store)
    assert after == compile_view(store, SETTINGS)
    assert after != before
    assert (after.snapshot.routes is before.snapshot.routes) is reused


def test_no_change_returns_the_same_result() -> None:
    store = setup()
    compiler = Compiler(SETTINGS)
    first = compiler.compile(store)
    assert compiler.compile(store) is first


def test_unreferenced_slice_change_is_irrelevant() -> None:
    store = setup()
    compiler = Compiler(SETTINGS)
    first = compiler.compile(store)
    assert not store.apply(event("ADDED", endpoint_slice("db-1", "db")))
    assert compiler.compile(store) is first


def test_new_store_means_full_compile() -> None:
    compiler = Compiler(SETTINGS)
    compiler.compile(setup())
    other = store_of(ingress_class(), ingress("z", rules=[rule("z.example.com")]), service("web"))
    assert compiler.compile(other) == compile_view(other, SETTINGS)


def test_ingress_parts_are_reused_for_unchanged_ingresses() -> None:
    store = setup()
    compiler = Compiler(SETTINGS)
    before = compiler.compile(store)
    store.apply(event("ADDED", ingress("c", rules=[rule("c.example.com")])))
    after = compiler.compile(store)
    old = {vh.host: vh for vh in before.snapshot.routes.virtual_hosts}
    new = {vh.host: vh for vh in after.snapshot.routes.virtual_hosts}
    # Path rules of untouched Ingresses are the very same objects (their parts were cached).
    assert new["a.example.com"].rules[0] is old["a.example.com"].rules[0]
    assert "c.example.com" in new


def test_a_sequence_of_mixed_changes_stays_equal_to_full() -> None:
    store = setup()
    compiler = Compiler(SETTINGS)
    steps: list[tuple[str, Raw]] = [
        ("MODIFIED", endpoint_slice("web-1", "web", endpoints=["127.0.0.7"])),
        ("ADDED", ingress("c", rules=[rule("c.example.com", path("/", "api"))])),
        ("MODIFIED", endpoint_slice("api-1", "api", endpoints=["127.0.0.8"])),
        ("MODIFIED", endpoint_slice("api-1", "api", endpoints=[])),
        ("DELETED", service("api")),
        ("ADDED", endpoint_slice("api-2", "api", endpoints=["127.0.0.9"])),
        ("ADDED", service("api")),
    ]
    for type_, raw in steps:
        store.apply(event(type_, raw))
        assert compiler.compile(store) == compile_view(store, SETTINGS)
