"""Skipped manifest objects: which look meant for Portico (a problem), which are other kinds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from controller.compiler import Problem
from controller.files import ManifestSource
from controller.kinds import API_VERSIONS, UNKNOWN_KIND, UNSUPPORTED_API_VERSION, mistake
from controller.kube.client import (
    CONFIG_MAPS,
    ENDPOINT_SLICES,
    INGRESS_CLASSES,
    INGRESSES,
    SECRETS,
    SERVICES,
)
from controller.objects import READ_KINDS
from controller.store import WatchEvent

NET = "networking.k8s.io/v1"

# (apiVersion, kind, reason or None for an ordinary other kind, the kind suggested)
ROWS = [
    # read kinds under another apiVersion: removed versions, a core kind under a group
    ("networking.k8s.io/v1beta1", "Ingress", UNSUPPORTED_API_VERSION, "Ingress"),
    ("extensions/v1beta1", "Ingress", UNSUPPORTED_API_VERSION, "Ingress"),
    ("discovery.k8s.io/v1beta1", "EndpointSlice", UNSUPPORTED_API_VERSION, "EndpointSlice"),
    ("networking.k8s.io/v1beta1", "IngressClass", UNSUPPORTED_API_VERSION, "IngressClass"),
    ("apps/v1", "Service", UNSUPPORTED_API_VERSION, "Service"),
    (None, "Secret", UNSUPPORTED_API_VERSION, "Secret"),
    # one slip: a letter dropped, doubled, changed, two swapped
    (NET, "Ingres", UNKNOWN_KIND, "Ingress"),
    (NET, "Ingresss", UNKNOWN_KIND, "Ingress"),
    ("v1", "Servce", UNKNOWN_KIND, "Service"),
    ("v1", "Secert", UNKNOWN_KIND, "Secret"),
    ("discovery.k8s.io/v1", "EndpointSlcie", UNKNOWN_KIND, "EndpointSlice"),
    (NET, "IngresClass", UNKNOWN_KIND, "IngressClass"),
    # another case, a plural
    (NET, "ingress", UNKNOWN_KIND, "Ingress"),
    ("discovery.k8s.io/v1", "Endpointslice", UNKNOWN_KIND, "EndpointSlice"),
    ("discovery.k8s.io/v1", "EndpointSlices", UNKNOWN_KIND, "EndpointSlice"),
    (NET, "Ingresses", UNKNOWN_KIND, "Ingress"),
    (NET, "IngressClasses", UNKNOWN_KIND, "IngressClass"),
    ("v1", "secrets", UNKNOWN_KIND, "Secret"),
    # a near-miss kind under a wrong apiVersion too
    ("extensions/v1beta1", "Ingres", UNKNOWN_KIND, "Ingress"),
    # ordinary other kinds, including real kinds close to a read one
    ("apps/v1", "Deployment", None, None),
    ("v1", "ConfigMap", None, None),
    ("v1", "Endpoints", None, None),
    ("v1", "ServiceAccount", None, None),
    ("monitoring.coreos.com/v1", "ServiceMonitor", None, None),
    ("bitnami.com/v1alpha1", "SealedSecret", None, None),
    ("elbv2.k8s.aws/v1beta1", "IngressClassParams", None, None),
    ("traefik.io/v1alpha1", "IngressRoute", None, None),
    ("networking.istio.io/v1", "ServiceEntry", None, None),
    ("multicluster.x-k8s.io/v1alpha1", "ServiceExport", None, None),
    ("networking.k8s.io/v1", "NetworkPolicy", None, None),
    ("example.com/v1", "Egress", None, None),  # two edits from Ingress: over its budget
    ("example.com/v1", "Device", None, None),  # two edits from Service
    # what Portico reads is not a mistake
    (NET, "Ingress", None, None),
    ("discovery.k8s.io/v1", "EndpointSlice", None, None),
    ("v1", "Secret", None, None),
]


@pytest.mark.parametrize(
    ("api_version", "kind", "reason", "meant"), ROWS, ids=[f"{r[0]} {r[1]}" for r in ROWS]
)
def test_mistake(api_version: str | None, kind: str, reason: str | None, meant: str) -> None:
    found = mistake(api_version, kind)
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert (found.reason, found.kind, found.api_version) == (reason, meant, API_VERSIONS[meant])


def test_advice_names_the_kind_and_api_version_to_write() -> None:
    typo = mistake(NET, "Ingres")
    both = mistake("extensions/v1beta1", "Ingres")
    old = mistake("extensions/v1beta1", "Ingress")
    assert typo is not None and both is not None and old is not None
    assert typo.advice(NET) == "did you mean kind: Ingress?"
    assert both.advice("extensions/v1beta1") == (
        "did you mean kind: Ingress with apiVersion: networking.k8s.io/v1?"
    )
    assert old.advice("extensions/v1beta1") == (
        "Portico reads Ingress as apiVersion: networking.k8s.io/v1"
    )


def test_api_versions_are_those_cluster_mode_watches() -> None:
    assert set(API_VERSIONS) == READ_KINDS
    watched = (INGRESSES, INGRESS_CLASSES, SERVICES, ENDPOINT_SLICES, SECRETS, CONFIG_MAPS)
    assert {r.kind: r.api_version for r in watched} == dict(API_VERSIONS)


class Sink:
    """Records what the manifest source delivers, as the reconciler would receive it."""

    def __init__(self) -> None:
        self.problems: asyncio.Queue[tuple[Problem, ...]] = asyncio.Queue()

    def apply(self, events: Sequence[WatchEvent]) -> None:
        pass

    def mark_listed(self, kind: str) -> None:
        pass

    def set_source_problems(self, problems: tuple[Problem, ...]) -> None:
        self.problems.put_nowait(problems)


TYPO = "apiVersion: networking.k8s.io/v1\nkind: Ingres\nmetadata: {name: web, namespace: ns}\n"
CONFIG = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: ns}\n"


async def test_serve_sees_the_problem_and_its_fix(tmp_path: Path) -> None:
    """`portico serve --manifests` gets the problem through the source's problems (merged by the
    reconciler into logs and /debug/snapshot), and loses it once the kind is fixed."""
    (tmp_path / "app.yaml").write_text(f"{CONFIG}---\n{TYPO}")
    sink = Sink()
    task = asyncio.create_task(ManifestSource(tmp_path).watch(sink, interval=0.01))
    try:
        (problem,) = await asyncio.wait_for(sink.problems.get(), 5)
        assert (problem.kind, problem.ref, problem.reason) == ("File", "app.yaml#1", UNKNOWN_KIND)
        assert "Ingres ns/web" in problem.message
        assert "did you mean kind: Ingress?" in problem.message
        (tmp_path / "app.yaml").write_text(f"{CONFIG}---\n{TYPO.replace('Ingres', 'Ingress')}")
        assert await asyncio.wait_for(sink.problems.get(), 5) == ()
    finally:
        task.cancel()
