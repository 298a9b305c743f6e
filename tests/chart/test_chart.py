"""Checks of the Helm chart (charts/portico) and the Dockerfile, with offline tools only.

Every chart check runs with Helm 3 and Helm 4 (binaries in .tools/, installed by
scripts/chart-tools.sh; the tests try that script once and skip only if helm still cannot be
had). Renderings are validated by kubernetes-validate --strict for Kubernetes 1.30 and the newest
version it knows, then asserted on as objects: RBAC, probes, securityContext, Service, classes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_tools import CHART, ROOT, helm_path, install_tools

RELEASE = "demo"
NAMESPACE = "ingress"
FULLNAME = "demo-portico"
HELM_MAJORS = (3, 4)

# Kinds whose schema is not part of Kubernetes; checked by assertions below instead.
CRD_KINDS = {"ServiceMonitor"}

Doc = dict[str, Any]
Values = dict[str, Any]


# --- tools ---------------------------------------------------------------------------------


def venv_tool(name: str) -> str:
    """A console script of the running virtualenv, else one on PATH, else install it."""
    for _ in range(2):
        beside = Path(sys.executable).parent / name
        if beside.exists():
            return str(beside)
        if found := shutil.which(name):
            return found
        install_tools()
    pytest.fail(f"{name} is missing and scripts/chart-tools.sh did not install it")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@cache
def run_helm(helm: str, args: tuple[str, ...], values_json: str) -> Result:
    # Values go in on stdin (JSON is YAML): no temp files, no --set escaping. Cached because
    # many tests look at the same rendering.
    done = subprocess.run(
        [helm, *args, "--values", "-"],
        input=values_json,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Helm:
    """One Helm binary, run on charts/portico with values given as Python data."""

    major: int
    path: Path

    def run(self, *args: str, values: Values | None = None) -> Result:
        return run_helm(str(self.path), args, json.dumps(values or {}, sort_keys=True))

    def template_result(self, values: Values | None = None, kube: str | None = None) -> Result:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        if kube:
            args += ["--kube-version", kube]
        return self.run(*args, values=values)

    def template(self, values: Values | None = None, kube: str | None = None) -> str:
        done = self.template_result(values, kube)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def render(self, values: Values | None = None, kube: str | None = None) -> list[Doc]:
        return [doc for doc in yaml.safe_load_all(self.template(values, kube)) if doc]

    def lint(self, values: Values | None = None) -> Result:
        return self.run("lint", "--strict", str(CHART), values=values)


@pytest.fixture(scope="session", params=HELM_MAJORS, ids=lambda major: f"helm{major}")
def helm(request: pytest.FixtureRequest) -> Iterator[Helm]:
    major: int = request.param
    path = helm_path(major)
    if not path.exists():
        output = install_tools()
        if not path.exists():
            pytest.skip(f"helm {major} could not be installed: {output.strip()[-400:]}")
    version = subprocess.run(
        [str(path), "version", "--short"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert version.startswith(f"v{major}."), version
    yield Helm(major, path)


# --- rendered objects ----------------------------------------------------------------------


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def workload(docs: list[Doc]) -> Doc:
    found = find(docs, "Deployment") + find(docs, "DaemonSet")
    assert len(found) == 1
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers = workload(docs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Doc = containers[0]
    return result


def env_of(docs: list[Doc]) -> dict[str, Any]:
    """Container env as name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


Grant = tuple[str | None, str, str, str, str | None]  # namespace, group, resource, verb, name


def grants(docs: list[Doc], service_account: str = FULLNAME) -> set[Grant]:
    """Every permission the ServiceAccount gets, following the bindings to their roles."""
    roles = {
        (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]): doc
        for doc in docs
        if doc["kind"] in ("ClusterRole", "Role")
    }
    result: set[Grant] = set()
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        subject = {"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace")  # None: cluster-wide
        ref = binding["roleRef"]
        role_ns = None if ref["kind"] == "ClusterRole" else scope
        role = roles[(ref["kind"], role_ns, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            result.add((scope, group, resource, verb, name))
    return result


def expand(
    scope: str | None, group: str, resources: list[str], verbs: list[str], name: str | None = None
) -> set[Grant]:
    return {(scope, group, r, v, name) for r in resources for v in verbs}


# The informers list and watch; nothing gets an object by name (see test_cluster_chart_rbac.py).
READ = ["list", "watch"]


def namespaced_grants(scope: str | None) -> set[Grant]:
    """What the controller needs for the namespaces it serves (scope None: all of them)."""
    return (
        expand(scope, "networking.k8s.io", ["ingresses"], READ)
        | expand(scope, "", ["services", "secrets", "configmaps"], READ)
        | expand(scope, "discovery.k8s.io", ["endpointslices"], READ)
        # controller/status.py merge-patches ingresses/status (never a PUT).
        | expand(scope, "networking.k8s.io", ["ingresses/status"], ["patch"])
        # controller/events.py: create, on 409 get the existing Event, then patch its count.
        | expand(scope, "", ["events"], ["create", "get", "patch"])
    )


LEASE_GRANTS = expand(
    NAMESPACE, "coordination.k8s.io", ["leases"], ["get", "update"], f"{FULLNAME}-leader"
) | expand(NAMESPACE, "coordination.k8s.io", ["leases"], ["create"])


# --- value sets ----------------------------------------------------------------------------

VALUE_SETS: dict[str, Values] = {
    "defaults": {},
    "nodeport": {
        "service": {
            "type": "NodePort",
            "nodePorts": {"http": 30080, "https": 30443},
            "externalTrafficPolicy": "Local",
        }
    },
    "daemonset": {"kind": "DaemonSet", "tolerations": [{"operator": "Exists"}]},
    "namespaced": {
        "rbac": {"scope": "namespaced"},
        "watchNamespaces": ["team-a", "team-b"],
        "controller": {"defaultCertificate": "certs/wildcard"},
    },
    "extras": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "targetMemoryUtilizationPercentage": 70},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {
            "enabled": True,
            "adminFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
            ],
        },
        "ingressClass": {"default": True},
        "service": {
            "loadBalancerClass": "example.com/lb",
            "loadBalancerSourceRanges": ["192.0.2.0/24"],
            "ipFamilyPolicy": "PreferDualStack",
            "ipFamilies": ["IPv4", "IPv6"],
            "annotations": {"example.com/lb-scheme": "internet-facing"},
        },
        "controller": {
            "preStopSleepSeconds": 3,
            "workers": 2,
            "serveWithoutAccessControl": True,
            "config": {"trusted_proxies": "10.0.0.0/8", "max_body_bytes": 1048576},
            "extraArgs": ["--log-level=debug"],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
        },
        "image": {"digest": "sha256:" + "a" * 64},
        "podAnnotations": {"example.com/scrape": "true"},
    },
    # Migrating from ingress-nginx (docs/migrating-from-ingress-nginx.md): its classes taken
    # over, its ConfigMap read, its load balancer address kept.
    "migration": {
        "controller": {
            "extraControllerNames": ["k8s.io/ingress-nginx"],
            "extraIngressClasses": ["nginx"],
            "nginxConfigMap": "ingress-nginx/ingress-nginx-controller",
        },
        "service": {
            "loadBalancerIP": "203.0.113.7",
            "annotations": {"metallb.universe.tf/loadBalancerIPs": "203.0.113.7"},
        },
    },
}


@cache
def newest_kube() -> str:
    from kubernetes_validate import utils  # type: ignore[import-untyped]

    newest: str = utils.latest_version()
    return newest


# --- lint and schema validation ------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_strict(helm: Helm, name: str) -> None:
    done = helm.lint(VALUE_SETS[name])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("name", list(VALUE_SETS))
@pytest.mark.parametrize("kube", ["1.30.0", "newest"])
def test_rendering_passes_kubernetes_validate(helm: Helm, name: str, kube: str) -> None:
    version = newest_kube() if kube == "newest" else kube
    manifest = helm.template(VALUE_SETS[name], version)
    docs = [doc for doc in yaml.safe_load_all(manifest) if doc]
    done = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", version, "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Every built-in object was really checked, not skipped for want of a schema.
    passed = re.findall(r"passed for resource (\S+)", output)
    built_in = [doc for doc in docs if doc["kind"] not in CRD_KINDS]
    assert len(passed) == len(built_in), output
    assert "did not validate" not in output


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicaz": 3}, "replicaz"),
        ({"service": {"type": "Loadbalancer"}}, "type"),
        ({"service": {"type": "NodePort", "nodePorts": {"http": 8080}}}, "http"),
        ({"controller": {"drainTimeout": "30s"}}, "drainTimeout"),
        ({"rbac": {"scope": "cluster-wide"}}, "scope"),
        ({"controller": {"containerPorts": {"http": 80, "https": 443, "admin": 10254}}}, "http"),
        ({"controller": {"defaultCertificate": "no-namespace"}}, "defaultCertificate"),
        ({"kind": "StatefulSet"}, "kind"),
        ({"controller": {"config": {"admin_port": 1}}}, "admin_port"),
        ({"controller": {"extraControllerNames": ["nginx"]}}, "extraControllerNames"),
        ({"controller": {"extraIngressClasses": ["a,b"]}}, "extraIngressClasses"),
        ({"controller": {"nginxConfigMap": "no-namespace"}}, "nginxConfigMap"),
        ({"service": {"loadBalancerIP": "lb.example.com"}}, "loadBalancerIP"),
    ],
    ids=[
        "unknown-key",
        "type-typo",
        "nodeport-range",
        "string-seconds",
        "scope",
        "privileged-port",
        "secret-ref",
        "kind",
        "config-shadows-value",
        "controller-value-without-domain",
        "class-list-in-one",
        "configmap-ref",
        "lb-ip-hostname",
    ],
)
def test_schema_rejects_bad_values(helm: Helm, values: Values, field: str) -> None:
    done = helm.lint(values)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "schema" in output.lower(), output
    assert field in output, output


def test_grace_period_shorter_than_drain_fails(helm: Helm) -> None:
    values = {
        "controller": {"shutdownDelay": 5, "drainTimeout": 30, "terminationGracePeriodSeconds": 35}
    }
    done = helm.template_result(values)
    assert done.returncode != 0
    assert "terminationGracePeriodSeconds" in done.stderr


def test_daemonset_with_autoscaling_fails(helm: Helm) -> None:
    done = helm.template_result({"kind": "DaemonSet", "autoscaling": {"enabled": True}})
    assert done.returncode != 0
    assert "autoscaling" in done.stderr


def test_prestop_sleep_needs_kubernetes_1_30(helm: Helm) -> None:
    values = {"controller": {"preStopSleepSeconds": 3}}
    assert helm.template_result(values, "1.29.0").returncode != 0
    hook = container(helm.render(values, "1.30.0"))["lifecycle"]["preStop"]
    assert hook == {"sleep": {"seconds": 3}}


# --- defaults: a working install -----------------------------------------------------------


def test_defaults_render_the_full_install(helm: Helm) -> None:
    docs = helm.render()
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "IngressClass",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    deployment = one(docs, "Deployment", FULLNAME)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(docs)["image"].endswith(":" + chart["appVersion"])
    # Selector, Service selector and pod labels agree.
    labels = pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one(docs, "Service", FULLNAME)["spec"]["selector"].items() <= labels.items()
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread.values())
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_controller_settings_as_env(helm: Helm) -> None:
    docs = helm.render()
    env = env_of(docs)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    service = one(docs, "Service", FULLNAME)
    assert env["PORTICO_PUBLISH_SERVICE"] == f"{NAMESPACE}/{service['metadata']['name']}"
    assert env["PORTICO_INGRESS_CLASS"] == one(docs, "IngressClass")["metadata"]["name"]
    assert env["PORTICO_CONTROLLER_NAME"] == "portico.dev/ingress-controller"
    assert env["PORTICO_ELECTION_ID"] == f"{FULLNAME}-leader"
    assert env["PORTICO_ADMIN_ADDRESS"] == "0.0.0.0"
    assert "PORTICO_WATCH_NAMESPACES" not in env  # all namespaces
    assert env["PORTICO_SERVE_WITHOUT_ACCESS_CONTROL"] == "false"  # fail closed by default
    # The image's ENTRYPOINT is `portico controller`: the chart adds no command of its own.
    assert "command" not in container(docs)
    assert "args" not in container(docs)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_env_names_are_portico_settings(helm: Helm, name: str) -> None:
    from controller.settings import Settings

    known = set(Settings.model_fields)
    names = [e["name"] for e in container(helm.render(VALUE_SETS[name]))["env"]]
    assert len(names) == len(set(names)), names
    settings = [v for v in names if v.startswith("PORTICO_")]
    assert settings, names  # every value set renders some: an empty list would check nothing
    for variable in settings:
        assert variable.removeprefix("PORTICO_").lower() in known, variable


def test_env_is_accepted_by_settings(helm: Helm) -> None:
    """The settings parse the chart's environment, cluster-mode settings included."""
    from controller.settings import Settings

    env = env_of(helm.render(VALUE_SETS["extras"]))
    environ = {k: v for k, v in env.items() if k.startswith("PORTICO_") and isinstance(v, str)}
    settings = Settings.from_sources({}, environ)
    # ipFamilies lists IPv6: public ports on "::" (both families), admin on the pod's own IP.
    assert settings.bind_address == "::"
    assert env["PORTICO_ADMIN_ADDRESS"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert settings.admin_port == 10254
    assert (settings.http_port, settings.https_port) == (8080, 8443)
    assert (settings.shutdown_delay, settings.drain_timeout) == (5, 30)
    assert settings.workers == 2
    assert settings.max_body_bytes == 1048576
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.compile_settings().serve_without_access_control is True
    assert settings.election_id == f"{FULLNAME}-leader"
    assert settings.publish_service_ref() == (NAMESPACE, FULLNAME)


# --- probes, shutdown, security --------------------------------------------------------------


def test_probes_on_admin_port(helm: Helm) -> None:
    docs = helm.render()
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "https": 8443, "admin": 10254}
    assert env_of(docs)["PORTICO_ADMIN_PORT"] == str(ports["admin"])
    assert env_of(docs)["PORTICO_HTTP_PORT"] == str(ports["http"])
    assert env_of(docs)["PORTICO_HTTPS_PORT"] == str(ports["https"])
    paths = {
        kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": {"path": "/healthz", "port": "admin"},
        "livenessProbe": {"path": "/healthz", "port": "admin"},
        "readinessProbe": {"path": "/readyz", "port": "admin"},
    }


@pytest.mark.parametrize(("delay", "drain", "pre_stop"), [(5, 30, 0), (0, 120, 0), (10, 60, 15)])
def test_grace_period_covers_shutdown(helm: Helm, delay: int, drain: int, pre_stop: int) -> None:
    values = {
        "controller": {
            "shutdownDelay": delay,
            "drainTimeout": drain,
            "preStopSleepSeconds": pre_stop,
        }
    }
    docs = helm.render(values, "1.30.0")
    grace = workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + delay + drain
    env = env_of(docs)
    assert (env["PORTICO_SHUTDOWN_DELAY"], env["PORTICO_DRAIN_TIMEOUT"]) == (str(delay), str(drain))
    assert ("lifecycle" in container(docs)) == (pre_stop > 0)


@pytest.mark.parametrize("name", ["defaults", "daemonset"])
def test_security_context(helm: Helm, name: str) -> None:
    docs = helm.render(VALUE_SETS[name])
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}  # and nothing added: ports are > 1024
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all(p["containerPort"] >= 1024 for p in container(docs)["ports"])
    assert "hostNetwork" not in pod
    # The read-only root keeps one writable scratch directory.
    mounts = {m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts == {"/tmp"}


# --- Service -------------------------------------------------------------------------------


def test_service_load_balancer_by_default(helm: Helm) -> None:
    docs = helm.render()
    spec = one(docs, "Service", FULLNAME)["spec"]
    assert spec["type"] == "LoadBalancer"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in spec["ports"]}
    assert ports == {"http": (80, "http"), "https": (443, "https")}
    assert all("nodePort" not in p for p in spec["ports"])
    container_ports = {p["name"] for p in container(docs)["ports"]}
    assert {target for _, target in ports.values()} <= container_ports
    for field in ("externalTrafficPolicy", "loadBalancerClass", "loadBalancerSourceRanges"):
        assert field not in spec


def test_service_node_port(helm: Helm) -> None:
    spec = one(helm.render(VALUE_SETS["nodeport"]), "Service", FULLNAME)["spec"]
    assert spec["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in spec["ports"]} == {"http": 30080, "https": 30443}
    assert spec["externalTrafficPolicy"] == "Local"


def test_service_load_balancer_options(helm: Helm) -> None:
    service = one(helm.render(VALUE_SETS["extras"]), "Service", FULLNAME)
    spec = service["spec"]
    assert spec["loadBalancerClass"] == "example.com/lb"
    assert spec["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert spec["ipFamilyPolicy"] == "PreferDualStack"
    assert spec["ipFamilies"] == ["IPv4", "IPv6"]
    assert service["metadata"]["annotations"] == {"example.com/lb-scheme": "internet-facing"}


def test_service_keeps_a_load_balancer_ip(helm: Helm) -> None:
    # What an ingress-nginx user sets to keep the address (controller.service.loadBalancerIP
    # and annotations there); LoadBalancer only.
    service = one(helm.render(VALUE_SETS["migration"]), "Service", FULLNAME)
    assert service["spec"]["loadBalancerIP"] == "203.0.113.7"
    assert service["metadata"]["annotations"] == {
        "metallb.universe.tf/loadBalancerIPs": "203.0.113.7"
    }
    assert "loadBalancerIP" not in one(helm.render(), "Service", FULLNAME)["spec"]
    values = {"service": {"type": "NodePort", "loadBalancerIP": "203.0.113.7"}}
    assert "loadBalancerIP" not in one(helm.render(values), "Service", FULLNAME)["spec"]


def test_service_cluster_ip_drops_external_fields(helm: Helm) -> None:
    values = {
        "service": {
            "type": "ClusterIP",
            "nodePorts": {"http": 30080},
            "externalTrafficPolicy": "Local",
            "loadBalancerClass": "example.com/lb",
        }
    }
    spec = one(helm.render(values), "Service", FULLNAME)["spec"]
    assert spec["type"] == "ClusterIP"
    assert all("nodePort" not in p for p in spec["ports"])
    assert "externalTrafficPolicy" not in spec
    assert "loadBalancerClass" not in spec


def test_ipv4_listeners_by_default(helm: Helm) -> None:
    env = env_of(helm.render())
    assert env["PORTICO_ADMIN_ADDRESS"] == "0.0.0.0"
    assert "PORTICO_BIND_ADDRESS" not in env  # the proxy's own default, 0.0.0.0
    single = env_of(helm.render({"service": {"ipFamilies": ["IPv6"]}}))
    assert single["PORTICO_BIND_ADDRESS"] == "::"
    chosen = {
        "service": {"ipFamilies": ["IPv6"]},
        "controller": {"config": {"bind_address": "::1"}},
    }
    assert env_of(helm.render(chosen))["PORTICO_BIND_ADDRESS"] == "::1"
    names = [e["name"] for e in container(helm.render(chosen))["env"]]
    assert len(names) == len(set(names))


def test_publish_status_address_replaces_publish_service(helm: Helm) -> None:
    env = env_of(helm.render({"controller": {"publishStatusAddress": "203.0.113.7"}}))
    assert env["PORTICO_PUBLISH_STATUS_ADDRESS"] == "203.0.113.7"
    assert "PORTICO_PUBLISH_SERVICE" not in env


# --- IngressClass --------------------------------------------------------------------------


@pytest.mark.parametrize("default", [False, True])
def test_ingress_class_default_toggle(helm: Helm, default: bool) -> None:
    ingress_class = one(helm.render({"ingressClass": {"default": default}}), "IngressClass")
    assert ingress_class["metadata"]["name"] == "portico"
    assert ingress_class["spec"] == {"controller": "portico.dev/ingress-controller"}
    annotations = ingress_class["metadata"].get("annotations") or {}
    key = "ingressclass.kubernetes.io/is-default-class"
    if default:
        assert annotations[key] == "true"
    else:
        assert key not in annotations


def test_ingress_class_follows_controller_values(helm: Helm) -> None:
    values = {"controller": {"ingressClass": "edge", "controllerName": "example.com/edge"}}
    docs = helm.render(values)
    ingress_class = one(docs, "IngressClass")
    assert ingress_class["metadata"]["name"] == "edge"
    assert ingress_class["spec"]["controller"] == "example.com/edge"
    env = env_of(docs)
    assert (env["PORTICO_INGRESS_CLASS"], env["PORTICO_CONTROLLER_NAME"]) == (
        "edge",
        "example.com/edge",
    )
    assert find(helm.render({"ingressClass": {"create": False}}), "IngressClass") == []


def test_class_takeover(helm: Helm) -> None:
    from controller.settings import Settings

    docs = helm.render(VALUE_SETS["migration"])
    env = env_of(docs)
    # Portico's own class first (metrics carry it), then ingress-nginx's.
    assert env["PORTICO_INGRESS_CLASS"] == "portico,nginx"
    assert env["PORTICO_CONTROLLER_NAME"] == "portico.dev/ingress-controller,k8s.io/ingress-nginx"
    assert env["PORTICO_NGINX_CONFIGMAP"] == "ingress-nginx/ingress-nginx-controller"
    # The chart creates only Portico's own IngressClass: ingress-nginx's stays where it is.
    (ingress_class,) = find(docs, "IngressClass")
    assert ingress_class["metadata"]["name"] == "portico"
    assert ingress_class["spec"]["controller"] == "portico.dev/ingress-controller"
    environ = {k: v for k, v in env.items() if k.startswith("PORTICO_") and isinstance(v, str)}
    compile_settings = Settings.from_sources({}, environ).compile_settings()
    assert compile_settings.ingress_classes == ("portico", "nginx")
    assert compile_settings.controller_names == (
        "portico.dev/ingress-controller",
        "k8s.io/ingress-nginx",
    )
    assert "PORTICO_NGINX_CONFIGMAP" not in env_of(helm.render())


# --- RBAC ----------------------------------------------------------------------------------


def test_rbac_cluster_scope_exact(helm: Helm) -> None:
    expected = (
        namespaced_grants(None)
        | expand(None, "networking.k8s.io", ["ingressclasses"], READ)
        | LEASE_GRANTS
    )
    assert grants(helm.render()) == expected


def test_rbac_namespaced_scope_exact(helm: Helm) -> None:
    docs = helm.render(VALUE_SETS["namespaced"])
    expected = (
        namespaced_grants("team-a")
        | namespaced_grants("team-b")
        | expand(None, "networking.k8s.io", ["ingressclasses"], READ)
        | LEASE_GRANTS
        # Outside the watched namespaces, only the named objects it must read.
        | expand(NAMESPACE, "", ["services"], READ, FULLNAME)
        | expand("certs", "", ["secrets"], READ, "wildcard")
        # Problems with the default certificate become Events on its Secret.
        | expand("certs", "", ["events"], ["create", "get", "patch"])
    )
    assert grants(docs) == expected
    # No cluster-wide Secret read, and the controller is told which namespaces to watch.
    assert not any(g[0] is None and g[2] == "secrets" for g in grants(docs))
    assert env_of(docs)["PORTICO_WATCH_NAMESPACES"] == "team-a,team-b"


CONFIGMAP_GRANTS = expand("ingress-nginx", "", ["configmaps"], READ, "ingress-nginx-controller")


def test_rbac_nginx_configmap_by_name(helm: Helm) -> None:
    # Cluster scope: the one ConfigMap, by name (Events are granted everywhere already).
    expected = (
        namespaced_grants(None)
        | expand(None, "networking.k8s.io", ["ingressclasses"], READ)
        | LEASE_GRANTS
        | CONFIGMAP_GRANTS
    )
    assert grants(helm.render(VALUE_SETS["migration"])) == expected
    # Namespaced: also Events in its namespace (its problems), unless that one is watched.
    values = {**VALUE_SETS["namespaced"], "controller": VALUE_SETS["migration"]["controller"]}
    namespaced = grants(helm.render(values))
    assert namespaced - grants(helm.render(VALUE_SETS["namespaced"])) == CONFIGMAP_GRANTS | expand(
        "ingress-nginx", "", ["events"], ["create", "get", "patch"]
    )
    watched = {**values, "watchNamespaces": ["team-a", "ingress-nginx"]}
    assert {g for g in grants(helm.render(watched)) if g[0] == "ingress-nginx"} == (
        namespaced_grants("ingress-nginx") | CONFIGMAP_GRANTS
    )


def test_rbac_namespaced_defaults_to_release_namespace(helm: Helm) -> None:
    docs = helm.render({"rbac": {"scope": "namespaced"}})
    expected = (
        namespaced_grants(NAMESPACE)
        | expand(None, "networking.k8s.io", ["ingressclasses"], READ)
        | LEASE_GRANTS
    )
    assert grants(docs) == expected
    assert env_of(docs)["PORTICO_WATCH_NAMESPACES"] == NAMESPACE


def test_rbac_disabled_and_external_service_account(helm: Helm) -> None:
    docs = helm.render(
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}}
    )
    assert find(docs, "ClusterRole") == find(docs, "Role") == find(docs, "ServiceAccount") == []
    assert workload(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# --- workload modes and optional objects ---------------------------------------------------


def test_daemonset_mode(helm: Helm) -> None:
    docs = helm.render(VALUE_SETS["daemonset"])
    daemonset = one(docs, "DaemonSet", FULLNAME)
    assert find(docs, "Deployment") == []
    assert "replicas" not in daemonset["spec"]
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert daemonset["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert find(docs, "PodDisruptionBudget") == []


@pytest.mark.parametrize(("replicas", "has_pdb"), [(1, False), (2, True), (5, True)])
def test_pdb_only_with_several_replicas(helm: Helm, replicas: int, has_pdb: bool) -> None:
    docs = helm.render({"replicaCount": replicas})
    assert one(docs, "Deployment")["spec"]["replicas"] == replicas
    assert len(find(docs, "PodDisruptionBudget")) == int(has_pdb)


def test_extras_hpa_pdb_monitor_policy(helm: Helm) -> None:
    docs = helm.render(VALUE_SETS["extras"])
    deployment = one(docs, "Deployment", FULLNAME)
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 80},
        "memory": {"type": "Utilization", "averageUtilization": 70},
    }
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"

    # ServiceMonitor (no schema in kubernetes-validate): it must select the metrics Service and
    # name a port that Service has.
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    metrics = one(docs, "Service", f"{FULLNAME}-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= one(docs, "Service", FULLNAME)["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert metrics["spec"]["type"] == "ClusterIP"

    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    public, admin = policy["ingress"]
    assert "from" not in public
    assert {p["port"] for p in public["ports"]} == {"http", "https"}
    assert {p["port"] for p in admin["ports"]} == {"admin"}
    assert admin["from"] == VALUE_SETS["extras"]["networkPolicy"]["adminFrom"]

    c = container(docs)
    assert c["image"] == "portico/portico@sha256:" + "a" * 64
    assert c["args"] == ["--log-level=debug"]
    env = env_of(docs)
    assert env["EXTRA"] == "1"
    assert env["PORTICO_TRUSTED_PROXIES"] == "10.0.0.0/8"
    assert env["PORTICO_MAX_BODY_BYTES"] == "1048576"  # never 1.048576e+06


# --- Dockerfile ----------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    done = subprocess.run(
        [venv_tool("hadolint"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runtime_contract() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2
    # The build stage has setup.py, which compiles the request path (proxy/native.py).
    build = lines[: lines.index(stages[-1])]
    assert any(line.startswith("COPY ") and "setup.py" in line.split() for line in build)
    assert "slim" in stages[-1]
    final = lines[lines.index(stages[-1]) :]
    assert 'ENTRYPOINT ["portico", "controller"]' in final
    assert "STOPSIGNAL SIGTERM" in final
    assert "USER 65532:65532" in final
    assert not any(line.startswith(("CMD ", "SHELL ")) for line in final)
    assert any("org.opencontainers.image.title" in line for line in final)
