"""Cluster mode as the chart deploys it, under the chart's own RBAC, against the API simulator.

`helm template` renders charts/portico twice: rbac.scope=cluster (every namespace served) and
rbac.scope=namespaced with watchNamespaces team-a and team-b. KubeSim enforces the rendered Roles
and bindings for the chart's ServiceAccount and records which grant allowed each request. The
controller runs as `portico controller` with the environment the chart's Deployment sets (class,
namespaces, published Service, default certificate, Lease), only addresses and timings changed
for a test, and one process per mode. Each mode checks:

- routes in the served namespaces, and nothing (no route, no status) for an Ingress elsewhere;
- an HTTPS backend verified against a CA that an Opaque Secret holds;
- the default certificate, a Secret in a namespace that is not served, on a TLS handshake;
- status from the published Service; problems as Events (about Ingresses in the served
  namespaces, the default certificate, and the ingress-nginx ConfigMap read by name from a
  namespace that is not served), created and then counted by patch;
- no request was refused (a missing permission), and every granted permission was used (a
  surplus one), except those listed by `unused()` with the reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from tls_env import der, issued_context, served_certificate

from tests.helm_tools import find_helm, render_chart
from tests.integration import manifests
from tests.integration.cluster import ControllerProcess
from tests.integration.serving import echo_pods, eventually
from tests.kube_factory import ca_secret
from tests.kubesim import Grant, KubeSim

pytestmark = pytest.mark.timeout(120)

# Release "portico" in namespace "portico": ServiceAccount portico/portico, KubeSim's user.
RELEASE = NAMESPACE = "portico"
LB_IP = "203.0.113.20"
CERTS_NS, CERT_NAME = "certs", "wildcard"  # the default certificate's Secret
DEFAULT_CERT = f"{CERTS_NS}/{CERT_NAME}"
HTTPS_NS = "team-a"  # where the HTTPS backend and its Opaque CA Secret live
CONFIGMAP_NS, CONFIGMAP_NAME = "ingress-nginx", "ingress-nginx-controller"
CONFIGMAP = f"{CONFIGMAP_NS}/{CONFIGMAP_NAME}"


@dataclass(frozen=True)
class Mode:
    name: str
    values: dict[str, Any]
    served: tuple[str, ...]  # namespaces whose Ingresses are routed
    ignored: tuple[str, ...]  # namespaces with an Ingress that must not be


MODES = [
    Mode("cluster", {}, ("team-a", "team-b", "other"), ()),
    Mode(
        "namespaced",
        {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
        ("team-a", "team-b"),
        ("other",),
    ),
]


def unused(mode: Mode) -> dict[Grant, str]:
    """Granted permissions a short test legitimately never uses, with the reason."""
    scopes = [None] if mode.name == "cluster" else [*mode.served, CERTS_NS, CONFIGMAP_NS]
    return {
        Grant(ns, "", "events", "get"): "controller/events.py reads an Event only when creating "
        "it answers 409: an Event an earlier leader made, not seen within one process"
        for ns in scopes
    }


# ---- the chart ----------------------------------------------------------------------------------


def render(mode: Mode) -> list[dict[str, Any]]:
    helm, why = find_helm()
    if helm is None:
        pytest.skip(why)
    values = {
        "replicaCount": 1,
        "controller": {"defaultCertificate": DEFAULT_CERT, "nginxConfigMap": CONFIGMAP},
    }
    return render_chart(helm, RELEASE, NAMESPACE, {**values, **mode.values})


def chart_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The literal environment variables of the chart's controller container."""
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def controller_env(
    docs: list[dict[str, Any]], controller: ControllerProcess, kubeconfig: Path
) -> dict[str, str]:
    env = chart_env(docs)
    # What the chart decides stays as rendered; only where to listen and how fast to react change.
    assert env["PORTICO_DEFAULT_CERTIFICATE"] == DEFAULT_CERT
    assert env["PORTICO_PUBLISH_SERVICE"] == f"{NAMESPACE}/{RELEASE}"
    assert env["PORTICO_NGINX_CONFIGMAP"] == CONFIGMAP
    return {
        **os.environ,
        **env,
        "POD_NAME": controller.identity,  # the Downward API's values
        "POD_NAMESPACE": NAMESPACE,
        "PORTICO_KUBECONFIG": str(kubeconfig),
        "PORTICO_HTTP_PORT": str(controller.http),
        "PORTICO_HTTPS_PORT": str(controller.https),
        "PORTICO_ADMIN_PORT": str(controller.admin),
        "PORTICO_ADMIN_ADDRESS": "127.0.0.1",
        "PORTICO_BIND_ADDRESS": "127.0.0.1",
        "PORTICO_WORKERS": "1",
        "PORTICO_SHUTDOWN_DELAY": "0",
        "PORTICO_DRAIN_TIMEOUT": "1",
        "PORTICO_ACCESS_LOG": "false",
        "PORTICO_LEASE_DURATION": "2",
        "PORTICO_RENEW_DEADLINE": "1.5",
        "PORTICO_RETRY_PERIOD": "0.3",
        "PORTICO_WATCH_TIMEOUT": "30",
        "PORTICO_MAX_BACKOFF": "0.5",
    }


# ---- pods and objects ---------------------------------------------------------------------------


@dataclass
class Pods:
    port: int  # the plain echo pod, 127.0.0.2
    tls_port: int  # the HTTPS echo pod, 127.0.0.4, certificate for secure.<HTTPS_NS>.svc
    ca: trustme.CA


@pytest.fixture
async def pods() -> AsyncIterator[Pods]:
    ca = trustme.CA()
    context = issued_context(ca, f"secure.{HTTPS_NS}.svc")
    async with (
        echo_pods(("127.0.0.2", "web", "plain-pod")) as port,
        echo_pods(("127.0.0.4", "secure", "tls-pod"), ssl_context=context) as tls_port,
    ):
        yield Pods(port, tls_port, ca)


@dataclass(frozen=True)
class DefaultCertificate:
    """The default certificate's Secret, valid or (a key of another certificate) invalid."""

    cert: bytes
    key: bytes
    other_key: bytes

    def secret(self, *, valid: bool = True) -> dict[str, Any]:
        key = self.key if valid else self.other_key
        return manifests.tls_secret(CERT_NAME, self.cert, key, CERTS_NS)


def default_certificate() -> DefaultCertificate:
    ca = trustme.CA()
    leaf = ca.issue_cert("default.portico.test")
    other = ca.issue_cert("other.portico.test")
    return DefaultCertificate(
        leaf.cert_chain_pems[0].bytes(),
        leaf.private_key_pem.bytes(),
        other.private_key_pem.bytes(),
    )


def seed(sim: KubeSim, docs: list[dict[str, Any]], pods: Pods, default: DefaultCertificate) -> None:
    """The chart's IngressClass and Service, and the test's objects."""
    for doc in docs:
        if doc["kind"] in ("IngressClass", "Service"):
            sim.create(doc)
    for ns in ("team-a", "team-b", "other"):
        for obj in manifests.service_with_pods("web", ["127.0.0.2"], pods.port, ns):
            sim.create(obj)
        sim.create(manifests.ingress("web", f"web.{ns}.test", {"/": "web"}, namespace=ns))
        # Names a Service that does not exist yet: a ServiceNotFound problem, hence an Event.
        sim.create(manifests.ingress("broken", f"broken.{ns}.test", {"/": "missing"}, namespace=ns))
    for obj in manifests.service_with_pods("secure", ["127.0.0.4"], pods.tls_port, HTTPS_NS):
        sim.create(obj)
    annotations = {
        "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
        "nginx.ingress.kubernetes.io/proxy-ssl-secret": f"{HTTPS_NS}/upstream-ca",
    }
    sim.create(
        manifests.ingress(
            "secure",
            f"secure.{HTTPS_NS}.test",
            {"/": "secure"},
            annotations=annotations,
            namespace=HTTPS_NS,
        )
    )
    # The other key stands for credentials Portico must never keep.
    ca_pem = pods.ca.cert_pem.bytes()
    sim.create(ca_secret("upstream-ca", ca_pem, HTTPS_NS, password="not for portico"))
    # The default certificate lives in "certs", which the namespaced install does not serve.
    sim.create(default.secret())
    sim.create(nginx_configmap(typo=False))


def nginx_configmap(*, typo: bool) -> dict[str, Any]:
    """ingress-nginx's ConfigMap, read by name; a misspelt key is an UnknownConfigMapKey."""
    data = {"proxy-read-timeout": "120"}
    if typo:
        data["proxy-read-timout"] = "120"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP_NAME, "namespace": CONFIGMAP_NS},
        "data": data,
    }


def set_published_address(sim: KubeSim) -> None:
    published = sim.get("services", NAMESPACE, RELEASE)
    assert published is not None
    published["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    sim.update_status(published)


def lb_ips(sim: KubeSim, namespace: str, name: str) -> list[str]:
    obj = sim.get("ingresses", namespace, name) or {}
    entries = (obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return [e.get("ip") or e.get("hostname") for e in entries]


@dataclass(frozen=True)
class Problem:
    """A problem the test causes, fixes and causes again, in `namespace`: its Events are
    created (Warning, Resolved), then the Warning's count is patched."""

    namespace: str
    name: str  # of the object the Events are about
    reason: str
    cause: Callable[[KubeSim], Any]
    fix: Callable[[KubeSim], Any]

    def warning_counts(self, sim: KubeSim) -> list[int]:
        return [e.get("count", 0) for e in self._events(sim, self.reason)]

    def resolved(self, sim: KubeSim) -> bool:
        return bool(self._events(sim, "Resolved"))

    def _events(self, sim: KubeSim, reason: str) -> list[dict[str, Any]]:
        return [
            e
            for e in sim.list("events", self.namespace)
            if e.get("reason") == reason and e["involvedObject"].get("name") == self.name
        ]


def problems(mode: Mode, default: DefaultCertificate) -> list[Problem]:
    """Ingress `broken` names a missing Service in each served namespace (from the start); the
    default certificate, outside them when namespaced, gets a key that does not match."""
    out = [
        Problem(
            ns,
            "broken",
            "ServiceNotFound",
            cause=lambda sim, ns=ns: sim.delete("services", ns, "missing"),
            fix=lambda sim, ns=ns: sim.create(manifests.service("missing", namespace=ns)),
        )
        for ns in mode.served
    ]
    out.append(
        Problem(
            CONFIGMAP_NS,
            CONFIGMAP_NAME,
            "UnknownConfigMapKey",
            cause=lambda sim: sim.apply(nginx_configmap(typo=True)),
            fix=lambda sim: sim.apply(nginx_configmap(typo=False)),
        )
    )
    out.append(
        Problem(
            CERTS_NS,
            CERT_NAME,
            "SecretInvalid",
            cause=lambda sim: sim.apply(default.secret(valid=False)),
            fix=lambda sim: sim.apply(default.secret()),
        )
    )
    return out


def refused(sim: KubeSim) -> list[str]:
    """Requests the RBAC refused (verb, resource, namespace, name)."""
    return sorted(
        {f"{e.verb} {e.resource} {e.namespace} {e.name}" for e in sim.audit if e.status == 403}
    )


# ---- the test -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
async def test_the_chart_rbac_is_exactly_what_cluster_mode_uses(
    mode: Mode, sim: KubeSim, pods: Pods, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    docs = render(mode)
    sim.load_rbac(docs)
    assert sim.rbac_grants(), "the chart rendered no RBAC"
    default = default_certificate()
    seed(sim, docs, pods, default)
    controller = ControllerProcess(f"chart-{mode.name}", tmp_path)
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    await controller.spawn(
        ["-m", "controller", "controller"], controller_env(docs, controller, kubeconfig)
    )
    try:
        await check_cluster_mode(mode, sim, controller=controller, session=session, default=default)
    except BaseException:
        sys.stderr.write(f"--- refused requests\n{chr(10).join(refused(sim))}\n")
        sys.stderr.write(f"--- {controller.identity} (last 40 log lines)\n{controller.tail()}\n")
        raise
    finally:
        await controller.stop(signal.SIGKILL)


async def check_cluster_mode(
    mode: Mode,
    sim: KubeSim,
    *,
    controller: ControllerProcess,
    session: aiohttp.ClientSession,
    default: DefaultCertificate,
) -> None:
    # Ready only once every informer listed: with a permission missing it never would be.
    await eventually(lambda: controller.ready(session), 40)
    for ns in mode.served:
        assert await controller.get(session, f"web.{ns}.test") == (200, "plain-pod"), ns
    # The HTTPS backend, verified with the CA from the Opaque Secret.
    assert await controller.get(session, f"secure.{HTTPS_NS}.test") == (200, "tls-pod")
    # A host no Ingress lists gets the default certificate from "certs", not a self-signed one.
    assert await served_certificate(controller.https, "nobody.test") == der(default.cert)

    set_published_address(sim)
    for ns in mode.served:
        await eventually(lambda ns=ns: asyncio.sleep(0, result=lb_ips(sim, ns, "web") == [LB_IP]))
    # Problems in each served namespace, and with the default certificate wherever it is, are
    # reported: Warning, Resolved, then the same Warning again, which patches its count.
    cases = problems(mode, default)
    for case in cases[-2:]:  # the Ingress problems are there from the start
        case.cause(sim)
    for case in cases:
        await eventually(lambda c=case: asyncio.sleep(0, result=c.warning_counts(sim) == [1]))
        case.fix(sim)
    for case in cases:
        await eventually(lambda c=case: asyncio.sleep(0, result=c.resolved(sim)))
        case.cause(sim)
    for case in cases:
        await eventually(lambda c=case: asyncio.sleep(0, result=c.warning_counts(sim) == [2]))

    # The leader created its Lease, and renews it (every retry period, 0.3 s here).
    def renewed() -> bool:
        return any(e.verb == "update" and e.resource == "leases" for e in sim.audit)

    await eventually(lambda: asyncio.sleep(0, result=renewed()))

    # Namespaces not served: their Ingress is neither routed nor given a status, even after the
    # served ones have theirs (proven above).
    for ns in mode.ignored:
        assert (await controller.get(session, f"web.{ns}.test"))[0] == 404
        assert lb_ips(sim, ns, "web") == []
        assert not [e for e in sim.audit if e.namespace == ns]

    assert not refused(sim), "refused by the chart's RBAC:\n" + "\n".join(refused(sim))
    allowed = unused(mode)
    never_used = sim.rbac_unused()
    surplus = [str(g) for g in never_used if g not in allowed]
    assert not surplus, "granted but never used (remove it from the chart, or list it in " + (
        "unused() with the reason):\n" + "\n".join(surplus)
    )
    stale = [str(g) for g in sorted(allowed) if g not in never_used]
    assert not stale, "used after all, drop from unused():\n" + "\n".join(stale)
