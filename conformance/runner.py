"""The conformance runner: plays scenarios against a target and compares the answers.

For each scenario: make sure its echo pods exist, render and apply its objects, wait (bounded)
until every Ingress it expects Portico to own has a `status.loadBalancer` (the controller
writes it only once every worker serves the routes), send the requests and compare, then run
the steps (apply/delete, then requests retried until they match, bounded), check that the
Ingresses of other classes still have no status, and delete everything it created. A `Target`
(local: KubeSim + echo servers + a controller subprocess; cluster: a real API server) hides
where objects and pods live; this module only talks to that interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TextIO

from conformance import certificate
from conformance.client import Answer, ClientError, send
from conformance.scenario import (
    Environment,
    Expect,
    Request,
    Scenario,
    Step,
    certificate_specs,
    created,
    deletions,
    pods_of,
    render,
)

logger = logging.getLogger(__name__)

STATUS_WAIT: Final = 15.0  # seconds for an Ingress status to appear (first one: controller start)
STEP_WAIT: Final = 5.0  # seconds for a step's change to show in the answers
REQUEST_TIMEOUT: Final = 5.0
MAX_REPORTED: Final = 3  # differences shown per failing scenario


class Target(Protocol):
    """Where scenarios run. All names are in `namespace` except cluster-scoped kinds."""

    namespace: str
    echo_port: int

    async def ensure_pods(self, pods: Mapping[str, str]) -> dict[str, str]:
        """Make an echo backend run for every pod placeholder (-> its Service's name);
        return pod -> IP. Pods may be reused across scenarios (same name and service)."""
        ...

    async def apply(self, obj: dict[str, Any]) -> None:
        """Create the object, or replace it if it exists."""
        ...

    async def delete(self, kind: str, name: str) -> None:
        """Delete the object; a missing object is not an error."""
        ...

    async def ingress_addresses(self, name: str) -> list[str]:
        """The IPs/hostnames in the Ingress's status.loadBalancer (empty: none)."""
        ...

    def endpoint(self, scheme: str) -> tuple[str, int]:
        """Address and port requests of `scheme` go to (valid once a status was seen)."""
        ...


@dataclass(frozen=True)
class Outcome:
    name: str
    differences: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.differences

    def line(self) -> str:
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


def _echoed_path(answer: Answer) -> str | None:
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return None
    path = doc.get("path") if isinstance(doc, dict) else None
    return path if isinstance(path, str) else None


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
    if expect.path is not None and (echoed := _echoed_path(answer)) != expect.path:
        wanted.append(f"the pod to see path {expect.path!r} (saw {echoed!r})")
    location = answer.header("Location")
    if expect.location is not None and not _location_matches(expect.location, location, https_port):
        wanted.append(f"Location {expect.location!r} (got {location!r})")
    for name, value in expect.headers.items():
        if (actual := answer.header(name)) != value:
            wanted.append(f"header {name}: {value!r} (got {actual!r})")
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
    seen_pods: set[str] = set()
    for answer in answers:
        if isinstance(answer, str):
            found[answer] = None
            continue
        for problem in compare(request.expect, answer, https_port):
            found[problem] = None
        if pod := answer.header("X-Echo-Pod"):
            seen_pods.add(pod)
    if request.expect.pods is not None and seen_pods != request.expect.pods:
        found[
            f"{len(answers)} answers came from pods {sorted(seen_pods)}, "
            f"expected {sorted(request.expect.pods)}"
        ] = None
    return [f"{request.describe()}: {problem}" for problem in found]


# ---- running ------------------------------------------------------------------------------------


class Runner:
    def __init__(self, target: Target, out: TextIO, *, status_wait: float = STATUS_WAIT) -> None:
        self.target = target
        self.out = out
        self.status_wait = status_wait

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
                        body=None if request.body is None else request.body.encode(),
                        tls=request.scheme == "https",
                        server_name=request.server_name,
                        limit=REQUEST_TIMEOUT,
                    )
                )
            except ClientError as exc:
                answers.append(f"request failed: {exc}")
        return answers

    async def _requests(self, requests: Sequence[Request]) -> list[str]:
        https_port = self.target.endpoint("https")[1]
        problems: list[str] = []
        for request in requests:
            problems += compare_all(request, await self._send(request), https_port)
        return problems

    async def _eventually(self, requests: Sequence[Request], limit: float) -> list[str]:
        deadline = time.monotonic() + limit
        while True:
            problems = await self._requests(requests)
            if not problems or time.monotonic() >= deadline:
                return problems
            await asyncio.sleep(0.1)

    async def _wait_status(self, names: Sequence[str]) -> list[str]:
        deadline = time.monotonic() + self.status_wait
        pending = list(names)
        while pending:
            pending = [n for n in pending if not await self.target.ingress_addresses(n)]
            if not pending:
                break
            if time.monotonic() >= deadline:
                return [
                    f"Ingress {n}: no status.loadBalancer within {self.status_wait:g} s"
                    for n in pending
                ]
            await asyncio.sleep(0.1)
        return []

    async def _apply(self, step: Step, env: Environment) -> None:
        for kind, name in deletions(step):
            await self.target.delete(kind, name)
        for obj in render(step, env):
            await self.target.apply(obj)

    async def run_scenario(self, scenario: Scenario) -> Outcome:
        try:
            env = Environment(
                namespace=self.target.namespace,
                pod_addresses=await self.target.ensure_pods(pods_of(scenario)),
                echo_port=self.target.echo_port,
                certificates={
                    name: certificate.generate(spec)
                    for name, spec in certificate_specs(scenario).items()
                },
            )
        except Exception as exc:
            logger.exception("conformance.pods_failed", extra={"scenario": scenario.full_name})
            return Outcome(scenario.full_name, (f"echo pods: {type(exc).__name__}: {exc}",))
        problems: list[str] = []
        try:
            await self._apply(scenario, env)
            problems += await self._wait_status(scenario.owned_ingresses)
            if not problems:
                problems += await self._requests(scenario.requests)
                # Checked after the owned Ingresses got theirs: the writer had its chance.
                for name in scenario.unowned:
                    if addresses := await self.target.ingress_addresses(name):
                        problems.append(f"Ingress {name} of another class got status {addresses}")
            for index, step in enumerate(scenario.steps, 1):
                if problems:
                    break
                await self._apply(step, env)
                label = step.name or f"step {index}"
                found = await self._eventually(step.requests, STEP_WAIT)
                problems += [f"{label}: {p}" for p in found]
        except Exception as exc:  # an API error must not stop the other scenarios
            logger.exception("conformance.scenario_error", extra={"scenario": scenario.full_name})
            problems.append(f"error: {type(exc).__name__}: {exc}")
        finally:
            for kind, name in created(scenario, env):
                try:
                    await self.target.delete(kind, name)
                except Exception as exc:
                    problems.append(f"cleanup of {kind} {name} failed: {exc}")
        return Outcome(scenario.full_name, tuple(problems))

    async def run(self, scenarios: Sequence[Scenario]) -> list[Outcome]:
        outcomes = []
        for scenario in scenarios:
            outcome = await self.run_scenario(scenario)
            print(outcome.line(), file=self.out, flush=True)
            outcomes.append(outcome)
        return outcomes


def summary_line(outcomes: Sequence[Outcome]) -> str:
    passed = sum(1 for o in outcomes if o.passed)
    return f"{passed} passed, {len(outcomes) - passed} failed"
