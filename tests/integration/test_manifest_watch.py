"""The manifest source + reconciler on a real temporary directory, as `portico serve` runs them.

Edits must yield a new result within 1 s; a broken edit is reported and changes nothing (the
last good objects keep serving) until it is fixed; deleting a file removes its routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import pytest

from controller.app import manifest_results
from controller.compiler import CompileResult, CompileSettings
from proxy.table import Router

EDIT_BOUND = 1.0  # seconds: the promise of `portico serve`
SLACK_BOUND = 5.0  # seconds: for waits that only need to end

CLASS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portico}
spec: {controller: portico.dev/ingress-controller}
"""


def app(name: str, host: str, path: str = "/", address: str = "127.0.0.2") -> str:
    """An Ingress (host + path -> Service `name`), the Service and its EndpointSlice."""
    return f"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: ns}}
spec:
  ingressClassName: portico
  rules:
    - host: {host}
      http:
        paths:
          - path: {path}
            pathType: Prefix
            backend: {{service: {{name: {name}, port: {{number: 80}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: ns}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8081}}]
endpoints: [{{addresses: [{address}], conditions: {{ready: true}}}}]
"""


def target(result: CompileResult, host: str, path: str = "/") -> tuple[str, list[str]] | None:
    """(service, endpoint authorities) a request would reach, or None."""
    rule = Router(result.snapshot.routes).route(host, path)
    if rule is None or rule.service is None:
        return None
    backend = result.snapshot.backend_map()[rule.backend]
    return rule.service, [e.authority for e in backend.endpoints]


def write(path: Path, text: str) -> None:
    # Replace in place (not by rename), as an editor saving over the file would.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Watch:
    """One running `manifest_results` stream, with bounded waits."""

    def __init__(self, stream: AsyncGenerator[CompileResult, None]) -> None:
        self.stream = stream
        self.pending: asyncio.Future[CompileResult] | None = None
        self.last: CompileResult | None = None

    def _next(self) -> asyncio.Future[CompileResult]:
        if self.pending is None:
            self.pending = asyncio.ensure_future(anext(self.stream))
        return self.pending

    async def result(self, bound: float = SLACK_BOUND) -> CompileResult:
        future = self._next()
        done, _ = await asyncio.wait({future}, timeout=bound)
        assert done, f"no new result within {bound} s"
        self.pending = None
        self.last = future.result()
        return self.last

    async def problem_reported(self, condition_met: asyncio.Event) -> CompileResult:
        """The result that reports a broken edit: it must come (bounded), with `condition_met`
        (the problem logged), and carry the last good snapshot unchanged.

        The reconciler yields a result whenever the problems change (Events and status need
        them), so waiting for it proves the edit was read before checking that routes stayed.
        """
        previous = self.last
        assert previous is not None
        result = await self.result()
        assert condition_met.is_set(), "a result came without the problem"
        assert result.snapshot == previous.snapshot, "a broken edit changed routes"
        assert len(result.problems) > len(previous.problems)
        return result

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pending
        await self.stream.aclose()


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[Watch]:
    write(tmp_path / "class.yaml", CLASS)
    write(tmp_path / "web.yaml", app("web", "web.local"))
    w = Watch(manifest_results(tmp_path, CompileSettings()))
    try:
        yield w
    finally:
        await w.close()


class ProblemSeen(logging.Handler):
    """Sets an event when the reconciler logs a problem for `ref`."""

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref
        self.seen = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "problem" and getattr(record, "ref", None) == self.ref:
            self.records.append(record)
            self.seen.set()


@pytest.fixture
def problems() -> Iterator[type[ProblemSeen]]:
    logger = logging.getLogger("controller.reconciler")
    handlers: list[ProblemSeen] = []
    level = logger.level
    logger.setLevel(logging.INFO)

    class Tracked(ProblemSeen):
        def __init__(self, ref: str) -> None:
            super().__init__(ref)
            handlers.append(self)
            logger.addHandler(self)

    yield Tracked
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


async def test_first_result_after_initial_read(watch: Watch) -> None:
    result = await watch.result()
    assert result.owned == ("ns/web",)
    assert result.problems == ()
    assert target(result, "web.local") == ("ns/web", ["127.0.0.2:8081"])


async def test_edit_yields_a_new_result_within_a_second(watch: Watch, tmp_path: Path) -> None:
    await watch.result()
    write(tmp_path / "web.yaml", app("web", "web.local", address="127.0.0.3"))
    result = await watch.result(EDIT_BOUND)
    assert target(result, "web.local") == ("ns/web", ["127.0.0.3:8081"])

    write(tmp_path / "nested" / "api.yml", app("api", "api.local"))
    result = await watch.result(EDIT_BOUND)
    assert target(result, "api.local") == ("ns/api", ["127.0.0.2:8081"])
    assert target(result, "web.local") == ("ns/web", ["127.0.0.3:8081"])


async def test_broken_edit_keeps_the_last_good_version(
    watch: Watch, tmp_path: Path, problems: type[ProblemSeen]
) -> None:
    await watch.result()
    seen = problems("web.yaml#1")
    broken = app("web", "web.local", "/v2").replace("ports: [{name: http, port: 80}]", "ports: [")
    write(tmp_path / "web.yaml", broken)
    await watch.problem_reported(seen.seen)
    record = seen.records[0]
    assert record.reason == "InvalidManifest"  # type: ignore[attr-defined]
    assert record.file == "web.yaml"  # type: ignore[attr-defined]
    assert record.document == 1  # type: ignore[attr-defined]
    assert "invalid YAML" in record.detail  # type: ignore[attr-defined]

    # Another file changes meanwhile: the broken file's last good objects are still served.
    write(tmp_path / "api.yaml", app("api", "api.local"))
    result = await watch.result()
    assert target(result, "api.local") == ("ns/api", ["127.0.0.2:8081"])
    assert target(result, "web.local", "/") == ("ns/web", ["127.0.0.2:8081"])
    assert [(p.kind, p.ref, p.reason) for p in result.problems] == [
        ("File", "web.yaml#1", "InvalidManifest")
    ]

    # Fixing the file recovers: the new version is served and the problem is gone.
    write(tmp_path / "web.yaml", app("web", "web.local", "/v2"))
    result = await watch.result()
    assert target(result, "web.local", "/") is None
    assert target(result, "web.local", "/v2/x") == ("ns/web", ["127.0.0.2:8081"])
    assert result.problems == ()


async def test_object_that_does_not_parse_is_a_problem(
    watch: Watch, tmp_path: Path, problems: type[ProblemSeen]
) -> None:
    await watch.result()
    seen = problems("web.yaml#2")
    write(tmp_path / "web.yaml", app("web", "web.local").replace("port: 8081", "port: high"))
    await watch.problem_reported(seen.seen)
    assert "ports[0].port" in seen.records[0].detail  # type: ignore[attr-defined]


async def test_deleting_a_file_removes_its_routes(watch: Watch, tmp_path: Path) -> None:
    write(tmp_path / "api.yaml", app("api", "api.local"))
    first = await watch.result()
    assert target(first, "api.local") is not None
    os.unlink(tmp_path / "api.yaml")
    result = await watch.result()
    assert target(result, "api.local") is None
    assert target(result, "web.local") == ("ns/web", ["127.0.0.2:8081"])
    assert result.owned == ("ns/web",)


async def test_removing_a_document_deletes_its_object(watch: Watch, tmp_path: Path) -> None:
    await watch.result()
    without_slice = "---".join(app("web", "web.local").split("---")[:2])
    write(tmp_path / "web.yaml", without_slice)
    result = await watch.result()
    assert target(result, "web.local") == ("ns/web", [])


async def test_skipped_kinds_change_nothing(
    watch: Watch, tmp_path: Path, problems: type[ProblemSeen]
) -> None:
    await watch.result()
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: ns}\n"
    write(tmp_path / "deploy.yaml", deployment)
    # A later, real change proves the Deployment was read past and produced no result.
    write(tmp_path / "api.yaml", app("api", "api.local"))
    result = await watch.result()
    assert result.problems == ()
    assert target(result, "api.local") is not None


async def test_list_kind(tmp_path: Path) -> None:
    docs = [CLASS, *app("web", "web.local").split("---\n")]
    items = "\n".join("  - " + d.strip().replace("\n", "\n    ") for d in docs)
    write(tmp_path / "all.yaml", f"apiVersion: v1\nkind: List\nitems:\n{items}\n")
    stream = manifest_results(tmp_path, CompileSettings())
    try:
        result = await asyncio.wait_for(anext(stream), SLACK_BOUND)
    finally:
        await stream.aclose()
    assert result.problems == ()
    assert target(result, "web.local") == ("ns/web", ["127.0.0.2:8081"])


async def test_missing_directory_fails_at_once(tmp_path: Path) -> None:
    stream = manifest_results(tmp_path / "nope", CompileSettings())
    with pytest.raises(NotADirectoryError):
        await asyncio.wait_for(anext(stream), SLACK_BOUND)


async def test_configmap_volume_symlink_swap(tmp_path: Path) -> None:
    # The layout kubelet writes for a ConfigMap volume: the real files live in a hidden,
    # timestamped directory; `..data` points at it; visible names point through `..data`.
    # Updates swap `..data` atomically. Hidden directories must not be read twice.
    def version(name: str, text: str) -> None:
        write(tmp_path / name / "class.yaml", CLASS)
        write(tmp_path / name / "app.yaml", text)

    version("..v1", app("web", "web.local"))
    os.symlink("..v1", tmp_path / "..data")
    for name in ("class.yaml", "app.yaml"):
        os.symlink(f"..data/{name}", tmp_path / name)
    w = Watch(manifest_results(tmp_path, CompileSettings()))
    try:
        first = await w.result()
        assert first.problems == ()  # no DuplicateObject from the hidden copies
        assert target(first, "web.local") == ("ns/web", ["127.0.0.2:8081"])

        version("..v2", app("web", "web.local", address="127.0.0.9"))
        os.symlink("..v2", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        result = await w.result()
        assert target(result, "web.local") == ("ns/web", ["127.0.0.9:8081"])
    finally:
        await w.close()


async def test_certificate_expiring_while_served_falls_back_without_any_edit(
    tmp_path: Path,
) -> None:
    """Nothing changes on disk: a certificate that expires is noticed a second after its end
    (not at the next edit) and the host falls back to the default certificate."""
    import base64
    import datetime as dt

    from tests.kube_factory import make_cert

    cert, key = make_cert("tls.local", lifetime=dt.timedelta(seconds=3))
    write(tmp_path / "class.yaml", CLASS)
    write(tmp_path / "web.yaml", app("web", "tls.local"))
    write(
        tmp_path / "tls.yaml",
        f"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web-tls, namespace: ns}}
spec:
  ingressClassName: portico
  tls: [{{hosts: [tls.local], secretName: short}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: short, namespace: ns}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(cert).decode()}
  tls.key: {base64.b64encode(key).decode()}
""",
    )
    stream = manifest_results(tmp_path, CompileSettings())
    try:
        first = await asyncio.wait_for(anext(stream), SLACK_BOUND)
        assert [c.name for c in first.snapshot.certificates] == ["ns/short"]
        assert not [p for p in first.problems if p.reason == "SecretInvalid"]
        later = await asyncio.wait_for(anext(stream), 3 + SLACK_BOUND)
        assert later.snapshot.certificates == ()
        (problem,) = [p for p in later.problems if p.reason == "SecretInvalid"]
        assert "ns/short" in problem.message and "expired" in problem.message
    finally:
        await stream.aclose()
