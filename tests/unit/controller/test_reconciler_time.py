"""The reconciler notices certificate validity changing with time alone.

No object changes in these tests: the store is built once, and the reconciler must still
compile again once a certificate expires (or becomes valid), publishing a result without it
(or with it) and the `SecretInvalid` problem (or its resolution). Clocks are injected where a
test must move time; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import pytest
from cryptography import x509

from controller.compiler import Compiler, CompileResult, CompileSettings
from controller.reconciler import REFRESH_MARGIN, Reconciler
from controller.store import Store
from tests.kube_factory import (
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

pytestmark = pytest.mark.timeout(30)

HOST = "tls.example.com"
SLACK = 3.0  # seconds a result may take beyond its due moment on a loaded 2-core machine


def tls_store(cert_pem: bytes, key_pem: bytes) -> Store:
    return store_of(
        ingress_class(),
        ingress(
            "web",
            rules=[rule(HOST, path("/", "web"))],
            tls=[tls_entry("web-tls", HOST)],
        ),
        tls_secret(cert_pem=cert_pem, key_pem=key_pem),
        service("web"),
        endpoint_slice("web-1", "web", endpoints=["127.0.0.2"]),
    )


def validity(cert_pem: bytes) -> tuple[float, float]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def invalid(result: CompileResult) -> list[str]:
    return [p.message for p in result.problems if p.reason == "SecretInvalid"]


class CountingCompiler(Compiler):
    """Counts calls, and full compiles (a cached result handed back again is not one)."""

    def __init__(self, settings: CompileSettings) -> None:
        super().__init__(settings)
        self.full = 0
        self.calls = 0

    def compile(self, store: Store, *, now: dt.datetime | None = None) -> CompileResult:
        self.calls += 1
        return super().compile(store, now=now)

    def _full(self, store: Store, now: dt.datetime) -> CompileResult:
        self.full += 1
        return super()._full(store, now)


class Clock:
    """A wall clock that runs with real time from `start`, and can be stepped."""

    def __init__(self, start: float) -> None:
        self.offset = start - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
async def results_of() -> AsyncIterator[list[AsyncIterator[CompileResult]]]:
    """Closes the result generators a test opened."""
    opened: list[AsyncIterator[CompileResult]] = []
    yield opened
    for stream in opened:
        await stream.aclose()  # type: ignore[attr-defined]


def start(
    reconciler: Reconciler, opened: list[AsyncIterator[CompileResult]]
) -> AsyncIterator[CompileResult]:
    """The reconciler's results, after the store's (already complete) listing is announced."""
    reconciler.mark_listed("Ingress")
    stream = reconciler.results()
    opened.append(stream)
    return stream


async def test_expiry_is_compiled_at_not_after_with_no_event(
    results_of: list[AsyncIterator[CompileResult]],
) -> None:
    """A real certificate valid for two more seconds, the real clock: the next result comes
    right after its notAfter (not before, not at some later edit), without the certificate and
    with the SecretInvalid problem."""
    cert_pem, key_pem = make_cert(HOST, lifetime=dt.timedelta(seconds=2))
    _, not_after = validity(cert_pem)
    store = tls_store(cert_pem, key_pem)
    stream = start(Reconciler(store, Compiler(CompileSettings())), results_of)

    first = await asyncio.wait_for(anext(stream), SLACK)
    assert [c.name for c in first.snapshot.certificates] == ["default/web-tls"]
    assert first.refresh_at == not_after
    assert invalid(first) == []
    revision = store.revision

    second = await asyncio.wait_for(anext(stream), not_after - time.time() + SLACK)
    assert time.time() > not_after
    assert store.revision == revision  # nothing but time changed
    assert second.snapshot.certificates == ()
    (vhost,) = second.snapshot.routes.virtual_hosts
    assert vhost.host == HOST and vhost.tls_certificate is None  # the default certificate
    (message,) = invalid(second)
    assert 'secret "default/web-tls": certificate expired at' in message
    assert second.refresh_at is None


async def test_a_certificate_becomes_valid_at_not_before(
    results_of: list[AsyncIterator[CompileResult]],
) -> None:
    """Symmetric: a certificate issued for the future is served once its notBefore passes."""
    cert_pem, key_pem = make_cert(HOST, not_yet_valid=True)
    not_before, _ = validity(cert_pem)
    clock = Clock(not_before - 0.5)  # half a second before it starts
    store = tls_store(cert_pem, key_pem)
    stream = start(Reconciler(store, Compiler(CompileSettings()), clock=clock), results_of)

    first = await asyncio.wait_for(anext(stream), SLACK)
    assert first.snapshot.certificates == ()
    (message,) = invalid(first)
    assert "not valid before" in message
    assert first.refresh_at == not_before

    second = await asyncio.wait_for(anext(stream), 0.5 + REFRESH_MARGIN + SLACK)
    assert clock() > not_before
    assert [c.name for c in second.snapshot.certificates] == ["default/web-tls"]
    assert invalid(second) == []


async def test_a_clock_jump_is_noticed_at_the_next_clock_check(
    results_of: list[AsyncIterator[CompileResult]],
) -> None:
    """The wait runs on the loop's monotonic clock; when the wall clock jumps (a suspended VM,
    a stepped system clock) past an expiry a day away, the bounded wait reads it again and the
    certificate is dropped, not a day later."""
    cert_pem, key_pem = make_cert(HOST, lifetime=dt.timedelta(days=1))
    _, not_after = validity(cert_pem)
    clock = Clock(time.time())
    compiler = CountingCompiler(CompileSettings())
    reconciler = Reconciler(tls_store(cert_pem, key_pem), compiler, clock=clock, clock_check=0.05)
    stream = start(reconciler, results_of)

    first = await asyncio.wait_for(anext(stream), SLACK)
    assert [c.name for c in first.snapshot.certificates] == ["default/web-tls"]
    following = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.2)  # the reconciler is waiting, its deadline taken from the old clock
    assert not following.done()
    clock.step(not_after - clock() + 60)
    second = await asyncio.wait_for(following, SLACK)
    assert second.snapshot.certificates == ()
    assert len(invalid(second)) == 1
    assert compiler.full == 2


async def test_clock_checks_inside_the_window_reuse_the_result(
    results_of: list[AsyncIterator[CompileResult]],
) -> None:
    """Reading the clock often is cheap: while no certificate changes validity, each clock
    check gets the cached result back (no full compile) and nothing is published."""
    cert_pem, key_pem = make_cert(HOST, lifetime=dt.timedelta(days=1))
    compiler = CountingCompiler(CompileSettings())
    reconciler = Reconciler(tls_store(cert_pem, key_pem), compiler, clock_check=0.02)
    stream = start(reconciler, results_of)
    await asyncio.wait_for(anext(stream), SLACK)

    following = asyncio.ensure_future(anext(stream))
    try:
        async with asyncio.timeout(SLACK):
            while compiler.calls < 10:
                await asyncio.sleep(0.02)
        assert not following.done()
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert compiler.full == 1
