"""The conformance runner: plays scenarios against a target and compares the answers.

For each scenario: make sure its echo pods exist, render and apply its objects, wait until
Portico serves them (conformance/barrier.py: a marker written after the objects must be
served), wait (bounded) until every Ingress it expects Portico to own has a
`status.loadBalancer`, send each request once and compare, check that the Ingresses of other
classes or unwatched namespaces still have no status; then the same for each step (apply and
delete, converge, statuses, requests), and delete everything it created. No request is ever
sent again because its answer differed: an answer that differs once is a failure, so a proxy
that misroutes now and then fails. A `Target` (local: KubeSim + echo servers + a controller
subprocess; cluster: a real API server) hides where objects and pods live; this module only
talks to that interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TextIO

from conformance import certificate
from conformance.barrier import MARKER_POD, MARKER_SERVICE, Marker
from conformance.client import Answer, ClientError, send
from conformance.scenario import (
    ONE_WORKER,
    REQUIREMENTS,
    UNWATCHED_NAMESPACE,
    Certificate,
    CertificateSpec,
    EchoPod,
    Environment,
    Expect,
    ObjectKey,
    Request,
    Scenario,
    Step,
    created,
    deletions,
    pods_of,
    render,
    steps_of,
)

logger = logging.getLogger(__name__)

STATUS_WAIT: Final = 15.0  # seconds for a change to be served or a status to appear
POLL: Final = 0.02  # seconds between two looks at a status or at the marker
REQUEST_TIMEOUT: Final = 5.0
MAX_REPORTED: Final = 3  # differences shown per failing scenario


class Target(Protocol):
    """Where scenarios run. Objects carry their namespace (`namespace`, or
    `unwatched_namespace` -- None when the target has none -- or none: cluster-scoped)."""

    namespace: str
    echo_port: int
    unwatched_namespace: str | None
    one_worker: bool  # Portico runs one worker in one replica: every request sees one balancer
    controller: str  # spec.controller of the IngressClasses Portico serves

    async def ensure_pods(self, pods: Mapping[str, EchoPod]) -> dict[str, str]:
        """Make an echo backend run for every pod placeholder; return pod -> IP. Pods may be
        reused across scenarios (same placeholder and same EchoPod)."""
        ...

    async def apply(self, obj: dict[str, Any]) -> None:
        """Create the object, or replace it if it exists."""
        ...

    async def delete(self, kind: str, name: str, namespace: str | None) -> None:
        """Delete the object; a missing object is not an error."""
        ...

    async def ingress_addresses(self, name: str, namespace: str | None = None) -> list[str]:
        """The IPs/hostnames in the Ingress's status.loadBalancer (empty: none); namespace
        None: the target's `namespace`."""
        ...

    def endpoint(self, scheme: str) -> tuple[str, int]:
        """Address and port requests of `scheme` go to (valid once a status was seen)."""
        ...


@dataclass(frozen=True)
class Outcome:
    name: str
    differences: tuple[str, ...]
    skipped: str | None = None  # why the scenario did not run (the target lacks what it needs)

    @property
    def passed(self) -> bool:
        return not self.differences and self.skipped is None

    @property
    def failed(self) -> bool:
        return bool(self.differences)

    def line(self) -> str:
        if self.skipped is not None:
            return f"SKIP {self.name}: {self.skipped}"
        if self.passed:
            return f"PASS {self.name}"
        shown = "; ".join(self.differences[:MAX_REPORTED])
        more = len(self.differences) - MAX_REPORTED
        return f"FAIL {self.name}: {shown}" + (f" (+{more} more)" if more > 0 else "")


# ---- comparing answers -------------------------------------------------------------------------


def _summary(answer: Answer) -> str:
    service = answer.header("X-Echo-Service")
    who = f"service {service}" if service else "answered by the proxy"
    pod = answer.header("X-Echo-Pod")
    return f"{answer.status} ({who}{', pod ' + pod if pod else ''})"


def _location_matches(expected: str, actual: str | None, https_port: int) -> bool:
    if actual is None:
        return False
    if actual == expected:
        return True
    # `https://host/path` may carry the port the HTTPS listener is reachable on.
    scheme, sep, rest = expected.partition("://")
    if not sep:
        return False
    authority, slash, tail = rest.partition("/")
    return actual == f"{scheme}://{authority}:{https_port}{slash}{tail}"


def _echoed(answer: Answer) -> dict[str, Any]:
    """The echo pod's JSON description of the request it received ({} if none)."""
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _echoed_headers(answer: Answer) -> dict[str, str]:
    headers = _echoed(answer).get("headers")
    if not isinstance(headers, dict):
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def compare(expect: Expect, answer: Answer, https_port: int) -> list[str]:
    """What the expectation wanted that this answer lacks, each part naming what came instead
    when the summary (`status (service, pod)`) does not show it. Empty: the answer matches."""
    wanted: list[str] = []
    if answer.status != expect.status:
        wanted.append(f"status {expect.status}")
    if expect.checks_service and answer.header("X-Echo-Service") != expect.service:
        wanted.append(f"service {expect.service}" if expect.service else "an answer by the proxy")
    if expect.pod is not None and answer.header("X-Echo-Pod") != expect.pod:
        wanted.append(f"pod {expect.pod}")
    if expect.path is not None and (path := _echoed(answer).get("path")) != expect.path:
        wanted.append(f"the pod to see path {expect.path!r} (saw {path!r})")
    if expect.body_bytes is not None:
        received = _echoed(answer).get("body_bytes")
        if received != expect.body_bytes:
            wanted.append(f"the pod to receive {expect.body_bytes} body bytes (got {received!r})")
    if expect.response_bytes is not None and len(answer.body) != expect.response_bytes:
        wanted.append(f"a body of {expect.response_bytes} bytes (got {len(answer.body)})")
    if expect.min_seconds is not None and answer.elapsed < expect.min_seconds:
        wanted.append(f"at least {expect.min_seconds:g} s (took {answer.elapsed:.2f} s)")
    if expect.max_seconds is not None and answer.elapsed > expect.max_seconds:
        wanted.append(f"at most {expect.max_seconds:g} s (took {answer.elapsed:.2f} s)")
    if expect.echoed:
        seen = _echoed_headers(answer)
        for name, value in expect.echoed.items():
            if (actual := seen.get(name.lower())) != value:
                shown = "absent" if value is None else repr(value)
                wanted.append(f"the pod to see {name} {shown} (saw {actual!r})")
    location = answer.header("Location")
    if expect.location is not None and not _location_matches(expect.location, location, https_port):
        wanted.append(f"Location {expect.location!r} (got {location!r})")
    for name, value in expect.headers.items():
        if (actual := answer.header(name)) != value:
            wanted.append(f"header {name}: {value!r} (got {actual!r})")
    for name, pattern in expect.header_patterns.items():
        if (actual := answer.header(name)) is None or not re.fullmatch(pattern, actual):
            wanted.append(f"header {name} matching {pattern!r} (got {actual!r})")
    cert = answer.certificate
    if (expect.cn is not None or expect.san is not None) and cert is None:
        wanted.append("a peer certificate (got none)")
    elif cert is not None:
        if expect.cn is not None and cert.cn != expect.cn:
            wanted.append(f"certificate CN {expect.cn!r} (got {cert.cn!r})")
        if expect.san is not None and cert.san != expect.san:
            wanted.append(f"certificate SANs {sorted(expect.san)} (got {sorted(cert.san)})")
    return [f"got {_summary(answer)}, expected {', '.join(wanted)}"] if wanted else []


def compare_all(request: Request, answers: Sequence[Answer | str], https_port: int) -> list[str]:
    """Differences for every answer of a request (a str is a failed attempt), plus the pod set.
    Each message is prefixed with the request; repeated messages are reported once."""
    found: dict[str, None] = {}
    per_pod: dict[str, int] = {}
    for answer in answers:
        if isinstance(answer, str):
            found[answer] = None
            continue
        for problem in compare(request.expect, answer, https_port):
            found[problem] = None
        if pod := answer.header("X-Echo-Pod"):
            per_pod[pod] = per_pod.get(pod, 0) + 1
    expect = request.expect
    if expect.pods is not None and set(per_pod) != expect.pods:
        found[
            f"{len(answers)} answers came from pods {sorted(per_pod)}, "
            f"expected {sorted(expect.pods)}"
        ] = None
    if expect.one_pod and len(per_pod) != 1:
        found[f"{len(answers)} answers came from pods {sorted(per_pod)}, expected one"] = None
    shares = ", ".join(f"{pod}: {n}" for pod, n in sorted(per_pod.items()))
    for pod, n in expect.counts.items():
        if per_pod.get(pod, 0) != n:
            found[
                f"{pod} answered {per_pod.get(pod, 0)} of {len(answers)}, expected {n} ({shares})"
            ] = None
    for pod, n in expect.at_most.items():
        if per_pod.get(pod, 0) > n:
            found[
                f"{pod} answered {per_pod[pod]} of {len(answers)}, at most {n} expected ({shares})"
            ] = None
    return [f"{request.describe()}: {problem}" for problem in found]


# ---- running ------------------------------------------------------------------------------------


def _label(index: int, step: Step) -> str:
    return "" if index == 0 else f"{step.name or f'step {index}'}: "


class Runner:
    def __init__(self, target: Target, out: TextIO, *, status_wait: float = STATUS_WAIT) -> None:
        self.target = target
        self.out = out
        self.status_wait = status_wait
        # Marker names carry a run id: objects a crashed run left behind never pass for ours.
        self.run_id = secrets.token_hex(3)
        self._markers = 0
        self._marker: Marker | None = None  # the newest marker written, deleted by the next
        self._pod_ca = certificate.generate_ca("Portico Conformance Pod CA")
        self._ca_bundles = {
            "pods": self._pod_ca.cert_pem,
            "unrelated": certificate.generate_ca("Portico Conformance Unrelated CA").cert_pem,
        }
        self._pod_certificates: dict[tuple[str, str], Certificate] = {}

    # ---- pods ------------------------------------------------------------------------------

    def _pod_certificate(self, service: str, pod: str) -> Certificate:
        # One per placeholder for the whole run, so an HTTPS pod is the same EchoPod (and can
        # be reused) in every scenario naming it.
        key = (service, pod)
        if key not in self._pod_certificates:
            name = f"{service}.{self.target.namespace}.svc"  # Portico's default upstream name
            self._pod_certificates[key] = certificate.issue(self._pod_ca, [name])
        return self._pod_certificates[key]

    def echo_pods(self, scenario: Scenario) -> dict[str, EchoPod]:
        pods: dict[str, EchoPod] = {}
        for pod, service in pods_of(scenario).items():
            spec = scenario.pods.get(pod)
            tls = self._pod_certificate(service, pod) if spec is not None and spec.tls else None
            pods[pod] = EchoPod(service, spec.delay_ms if spec else 0, tls)
        return pods

    # ---- requests --------------------------------------------------------------------------

    async def _send(self, request: Request) -> list[Answer | str]:
        address, port = self.target.endpoint(request.scheme)
        answers: list[Answer | str] = []
        for _ in range(request.count):
            try:
                answers.append(
                    await send(
                        address,
                        port,
                        method=request.method,
                        path=request.path,
                        host=request.host,
                        headers=request.headers,
                        body=request.payload,
                        tls=request.scheme == "https",
                        server_name=request.server_name,
                        limit=REQUEST_TIMEOUT,
                    )
                )
            except ClientError as exc:
                answers.append(f"request failed: {exc}")
        return answers

    async def _requests(self, requests: Sequence[Request]) -> list[str]:
        """Each request sent once (`count` times), its answers compared: never resent."""
        https_port = self.target.endpoint("https")[1]
        problems: list[str] = []
        for request in requests:
            problems += compare_all(request, await self._send(request), https_port)
        return problems

    # ---- convergence -----------------------------------------------------------------------

    async def _converge(self) -> list[str]:
        """Write a new marker and wait until Portico serves it (see conformance/barrier.py)."""
        namespace = self.target.namespace
        addresses = await self.target.ensure_pods({MARKER_POD: EchoPod(MARKER_SERVICE)})
        self._markers += 1
        marker = Marker(self.run_id, self._markers)
        cert = certificate.generate(CertificateSpec(cn=marker.host))
        objects = marker.objects(
            namespace,
            self.target.controller,
            addresses[MARKER_POD],
            self.target.echo_port,
            cert,
        )
        for obj in objects:
            await self.target.apply(obj)
        previous, self._marker = self._marker, marker
        if previous is not None:
            await self._delete(previous.keys(namespace))
        deadline = time.monotonic() + self.status_wait
        seen = "no status"
        while time.monotonic() < deadline:
            if await self.target.ingress_addresses(marker.name):
                address, port = self.target.endpoint("https")
                try:
                    probe = await send(
                        address,
                        port,
                        host=marker.host,
                        tls=True,
                        server_name=marker.host,
                        limit=REQUEST_TIMEOUT,
                    )
                except ClientError as exc:
                    seen = f"the probe failed: {exc}"
                else:
                    shown = marker.served(probe)
                    if shown is None:
                        return []
                    seen = f"the probe got {shown}"
            await asyncio.sleep(POLL)
        return [f"not served within {self.status_wait:g} s (marker Ingress {marker.name}: {seen})"]

    async def _wait_status(self, expected: Mapping[str, bool]) -> list[str]:
        """Wait (bounded) until each named Ingress has a status (True) or has none (False)."""
        deadline = time.monotonic() + self.status_wait
        pending = dict(expected)
        while True:
            for name, wanted in list(pending.items()):
                if bool(await self.target.ingress_addresses(name)) == wanted:
                    del pending[name]
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        return [
            f"Ingress {name}: "
            + ("no status.loadBalancer" if wanted else "status.loadBalancer not cleared")
            + f" within {self.status_wait:g} s"
            for name, wanted in pending.items()
        ]

    async def _unowned(self, scenario: Scenario) -> list[str]:
        """Ingresses Portico must not own still have no status (checked once: after the
        barrier and after the owned ones got theirs, the status writer had its chance)."""
        problems = []
        for name in scenario.unowned:
            unwatched = name in scenario.unwatched_ingresses
            namespace = self.target.unwatched_namespace if unwatched else None
            if addresses := await self.target.ingress_addresses(name, namespace):
                problems.append(f"Ingress {name} Portico must not own got status {addresses}")
        return problems

    # ---- scenarios -------------------------------------------------------------------------

    async def _delete(self, keys: Sequence[ObjectKey]) -> None:
        for kind, name, namespace in keys:
            await self.target.delete(kind, name, namespace)

    def _environment(self, addresses: Mapping[str, str]) -> Environment:
        return Environment(
            namespace=self.target.namespace,
            pod_addresses=addresses,
            echo_port=self.target.echo_port,
            certificates={},
            ca_bundles=self._ca_bundles,
            unwatched_namespace=self.target.unwatched_namespace,
        )

    def _missing(self, scenario: Scenario) -> str | None:
        offered = {
            UNWATCHED_NAMESPACE: self.target.unwatched_namespace is not None,
            ONE_WORKER: self.target.one_worker,
        }
        missing = [REQUIREMENTS[r] for r in scenario.requires if not offered[r]]
        return f"needs {'; '.join(missing)}" if missing else None

    async def run_scenario(self, scenario: Scenario) -> Outcome:
        if (missing := self._missing(scenario)) is not None:
            return Outcome(scenario.full_name, (), skipped=missing)
        try:
            env = self._environment(await self.target.ensure_pods(self.echo_pods(scenario)))
        except Exception as exc:
            logger.exception("conformance.pods_failed", extra={"scenario": scenario.full_name})
            return Outcome(scenario.full_name, (f"echo pods: {type(exc).__name__}: {exc}",))
        problems: list[str] = []
        try:
            for index, step in enumerate(steps_of(scenario)):
                # Certificates are generated for each step naming them: a step rotates them.
                certificates = {n: certificate.generate(s) for n, s in step.certificates.items()}
                step_env = replace(env, certificates=certificates)
                await self._delete(deletions(step, env))
                for obj in render(step, step_env):
                    await self.target.apply(obj)
                found = await self._converge()
                expected = dict(step.status)
                if index == 0:
                    expected.update(dict.fromkeys(scenario.owned_ingresses, True))
                if not found:
                    found = await self._wait_status(expected)
                if not found:
                    found = await self._requests(step.requests)
                if not found and index == 0:
                    found = await self._unowned(scenario)
                problems += [f"{_label(index, step)}{p}" for p in found]
                if problems:
                    break
        except Exception as exc:  # an API error must not stop the other scenarios
            logger.exception("conformance.scenario_error", extra={"scenario": scenario.full_name})
            problems.append(f"error: {type(exc).__name__}: {exc}")
        finally:
            for kind, name, namespace in created(scenario, env):
                try:
                    await self.target.delete(kind, name, namespace)
                except Exception as exc:
                    problems.append(f"cleanup of {kind} {name} failed: {exc}")
        return Outcome(scenario.full_name, tuple(problems))

    async def run(self, scenarios: Sequence[Scenario]) -> list[Outcome]:
        outcomes = []
        try:
            for scenario in scenarios:
                outcome = await self.run_scenario(scenario)
                print(outcome.line(), file=self.out, flush=True)
                outcomes.append(outcome)
        finally:
            if self._marker is not None:
                try:
                    await self._delete(self._marker.keys(self.target.namespace))
                except Exception:
                    logger.exception("conformance.marker_cleanup_failed")
        return outcomes


def summary_line(outcomes: Sequence[Outcome]) -> str:
    passed = sum(1 for o in outcomes if o.passed)
    failed = sum(1 for o in outcomes if o.failed)
    skipped = len(outcomes) - passed - failed
    return f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
