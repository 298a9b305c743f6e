"""The incremental Compiler: same output as compile_view, routes reused on endpoint-only changes,
and a cached result not reused once time alone changed a certificate's validity."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import pytest
from cryptography import x509

from controller.compiler import Compiler, CompileSettings, compile_view
from controller.objects import parse_object
from controller.store import Store, WatchEvent
from tests.kube_factory import (
    Raw,
    endpoint_slice,
    ingress,
    ingress_class,
    make_cert,
    path,
    rule,
    service,
    store_of,
    tls_entry,
    tls_secret,
)

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


# ---- time: certificate validity changes with no object changing ---------------------------------

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class TimeCase:
    id: str
    cert: Literal["valid", "not_yet_valid"]  # the Ingress's certificate (b.example.com)
    first: Literal["before", "inside", "after"]  # `now` of the first compile, then of the second
    second: Literal["before", "inside", "after"]
    slice_change: bool  # an endpoints-only change between the two compiles
    served: bool  # whether the second result serves the certificate


# "before"/"after": a minute before notBefore / after notAfter; "inside": a minute after the
# boundary the first compile is next to (notAfter - 1 min for a valid certificate).
TIME_CASES = [
    TimeCase("expires-unchanged-store", "valid", "inside", "after", False, False),
    TimeCase("expires-endpoints-only-change", "valid", "inside", "after", True, False),
    TimeCase("becomes-valid-unchanged-store", "not_yet_valid", "before", "inside", False, True),
    TimeCase("becomes-valid-endpoints-change", "not_yet_valid", "before", "inside", True, True),
    TimeCase("clock-stepped-back-over-expiry", "valid", "after", "inside", False, True),
]


def _moments(cert_pem: bytes) -> dict[str, dt.datetime]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    minute = dt.timedelta(minutes=1)
    return {
        "before": cert.not_valid_before_utc - minute,
        "after": cert.not_valid_after_utc + minute,
        # Inside the validity period, a minute from the boundary the case crosses.
        "inside": (
            cert.not_valid_before_utc + minute
            if cert.not_valid_before_utc > dt.datetime.now(dt.UTC)
            else cert.not_valid_after_utc - minute
        ),
    }


@pytest.mark.parametrize("case", TIME_CASES, ids=lambda c: c.id)
def test_time_alone_invalidates_the_cached_result(case: TimeCase) -> None:
    cert_pem, key_pem = (
        make_cert("b.example.com", not_yet_valid=True)
        if case.cert == "not_yet_valid"
        else make_cert("b.example.com", lifetime=DAY)
    )
    store = setup()
    store.apply(
        event("MODIFIED", tls_secret(hosts=["b.example.com"], cert_pem=cert_pem, key_pem=key_pem))
    )
    at = _moments(cert_pem)
    compiler = Compiler(SETTINGS)
    first = compiler.compile(store, now=at[case.first])
    assert bool(first.snapshot.certificates) is not case.served
    if case.slice_change:
        assert store.apply(
            event("MODIFIED", endpoint_slice("web-1", "web", endpoints=["10.0.0.9"]))
        )
    second = compiler.compile(store, now=at[case.second])
    assert second == compile_view(store, SETTINGS, now=at[case.second])
    assert [c.name for c in second.snapshot.certificates] == (
        ["default/web-tls"] if case.served else []
    )
    invalid = [p for p in second.problems if p.reason == "SecretInvalid"]
    assert bool(invalid) is not case.served


def test_refresh_at_is_the_next_validity_boundary() -> None:
    """`refresh_at` names the earliest notBefore/notAfter still ahead among the certificates
    checked (the default certificate's too), and within it the cached result is reused."""
    soon_pem, soon_key = make_cert("b.example.com", lifetime=DAY)
    later_pem, later_key = make_cert("fallback.example", lifetime=2 * DAY)
    store = setup()
    store.apply(
        event("MODIFIED", tls_secret(hosts=["b.example.com"], cert_pem=soon_pem, key_pem=soon_key))
    )
    store.apply(event("ADDED", tls_secret("fallback", cert_pem=later_pem, key_pem=later_key)))
    soon = x509.load_pem_x509_certificate(soon_pem).not_valid_after_utc
    later = x509.load_pem_x509_certificate(later_pem).not_valid_after_utc
    compiler = Compiler(CompileSettings(default_certificate="default/fallback"))
    now = soon - dt.timedelta(hours=1)
    first = compiler.compile(store, now=now)
    assert first.refresh_at == soon.timestamp()
    assert compiler.compile(store, now=now + dt.timedelta(minutes=30)) is first
    # Past the Ingress certificate's end, the default certificate's end is next ...
    second = compiler.compile(store, now=soon + dt.timedelta(seconds=1))
    assert second.refresh_at == later.timestamp()
    assert second.snapshot.default_certificate == "default/fallback"
    # ... and past both, nothing will change with time any more.
    third = compiler.compile(store, now=later + dt.timedelta(seconds=1))
    assert third.refresh_at is None
    assert third.snapshot.default_certificate is None
    assert {p.ref for p in third.problems if p.reason == "SecretInvalid"} == {
        "default/b",
        "default/fallback",
    }
