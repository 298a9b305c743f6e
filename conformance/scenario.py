"""Conformance scenarios: the YAML data model, its validation and its rendering into objects.

A scenario file (`conformance/scenarios/<area>.yaml`) holds the scenarios of one area. Each
scenario names Kubernetes objects (raw, or through three shorthands: `services` expands into a
selector-less Service plus an EndpointSlice, `certificates` into a `kubernetes.io/tls` Secret
generated at run time, `ca_secrets` into an Opaque Secret holding a `ca.crt`), the requests to
send, and the answers expected; optional `steps` change objects mid-scenario and send more
requests. Pod IPs are never written: an endpoint names a pod placeholder (`pod: web-1`) and the
runner maps it to the echo backend it started for that pod (`pods` gives a placeholder options:
HTTPS, a delay); an annotation value `{pod_url: POD, path: /PATH}` becomes that pod's echo
backend URL (an auth-url). Namespaces are never written either: an annotation value
`{secret: NAME}` becomes "<namespace>/NAME", and `unwatched_objects` go to a namespace Portico
must not watch (scenarios that need one say `requires: [unwatched-namespace]`). This module is
pure (no I/O besides reading files): the runner feeds it the pod addresses and the generated
certificates and gets plain object dicts back.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Kinds a scenario may create, in the order they are applied: an Ingress comes after everything
# it references, so the first snapshot that carries it (and so its status) is the complete one.
KIND_ORDER: Final = ("IngressClass", "Secret", "ConfigMap", "Service", "EndpointSlice", "Ingress")
API_VERSIONS: Final = {
    "IngressClass": "networking.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1",
    "Service": "v1",
    "Secret": "v1",
    "ConfigMap": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
}
CLUSTER_SCOPED: Final = frozenset({"IngressClass"})
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
MANAGED_BY_LABEL: Final = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY: Final = "conformance.portico.dev"
# The CN of the certificate Portico generates at start when no default certificate is named.
DEFAULT_CERTIFICATE_CN: Final = "Portico Default Certificate"
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# What a scenario may require of the target (`requires`), and what each means.
UNWATCHED_NAMESPACE: Final = "unwatched-namespace"
ONE_WORKER: Final = "one-worker"
Requirement: TypeAlias = Literal["unwatched-namespace", "one-worker"]
REQUIREMENTS: Final[dict[str, str]] = {
    UNWATCHED_NAMESPACE: "a namespace Portico does not watch (a namespaced install)",
    ONE_WORKER: "Portico running one worker in one replica (answers counted per pod)",
}
CA_KEY: Final = "ca.crt"  # the key of a CA bundle in a Secret, as ingress-nginx reads it

# (kind, name, namespace); namespace None for cluster-scoped kinds.
ObjectKey: TypeAlias = tuple[str, str, str | None]

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ScenarioError(ValueError):
    """A scenario file that cannot be loaded; the message names the file and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Model):
    """The answer expected for a request (every field optional except `status`).

    `service: null` means Portico answered by itself (no echo pod): no `X-Echo-Service` header.
    `pods` is compared as a set with the pods that answered all `count` requests; `pod` must
    answer each; `counts` gives how many of the `count` answers each pod must give exactly,
    `at_most` an upper bound per pod. `location` may omit the HTTPS port: the runner also
    accepts it with the port it targets. `cn`/`san` check the certificate the server presented
    (https only). `echoed` checks the request headers the pod saw (names case-insensitive; null:
    the header must not have reached the pod), `body_bytes` how many body bytes it received.
    `response_bytes` is the length of the response body the client got, `min_seconds` /
    `max_seconds` bound the time from connecting to its last byte (response bandwidth).
    """

    status: int = Field(ge=100, le=599)
    service: str | None = None
    pod: str | None = None
    pods: frozenset[str] | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    at_most: dict[str, int] = Field(default_factory=dict)
    path: str | None = None
    location: str | None = None
    headers: dict[str, str | None] = Field(default_factory=dict)  # None: must be absent
    echoed: dict[str, str | None] = Field(default_factory=dict)
    body_bytes: int | None = Field(default=None, ge=0)
    response_bytes: int | None = Field(default=None, ge=0)
    min_seconds: float | None = Field(default=None, ge=0)
    max_seconds: float | None = Field(default=None, gt=0)
    cn: str | None = None
    san: frozenset[str] | None = None
    # Response header fields matched whole by a regular expression (a value with a random
    # part: an affinity cookie), and whether every answer of the request came from one pod
    # (whichever: consistent hashing).
    header_patterns: dict[str, str] = Field(default_factory=dict)
    one_pod: bool = False

    @property
    def checks_service(self) -> bool:
        return "service" in self.model_fields_set


class Request(_Model):
    """One request (sent `count` times). `host` is the Host header; None sends the target's
    address. `sni` defaults to `host` for https; "" sends no SNI (the client connects by IP)."""

    method: str = "GET"
    scheme: Literal["http", "https"] = "http"
    host: str | None = None
    sni: str | None = None
    path: str = "/"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    body_size: int | None = Field(default=None, ge=0, le=1 << 20)  # a body of that many "x"
    count: int = Field(default=1, ge=1, le=100)
    expect: Expect

    @model_validator(mode="after")
    def _consistent(self) -> Request:
        if self.body is not None and self.body_size is not None:
            raise ValueError("give body or body_size, not both")
        if sum(self.expect.counts.values()) > self.count:
            raise ValueError("expect.counts adds up to more answers than count")
        return self

    @property
    def payload(self) -> bytes | None:
        if self.body_size is not None:
            return b"x" * self.body_size
        return None if self.body is None else self.body.encode()

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        upper = value.upper()
        if upper not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}")
        return upper

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value

    @property
    def server_name(self) -> str | None:
        """The SNI to send on https (None: no SNI)."""
        if self.sni is not None:
            return self.sni or None
        return self.host

    def describe(self) -> str:
        host = self.host if self.host is not None else "(address)"
        extra = f" sni={self.server_name or '(none)'}" if self.scheme == "https" else ""
        return f"{self.method} {self.scheme}://{host}{self.path}{extra}"


class PodEndpoint(_Model):
    """An endpoint of a `services` shorthand: a pod placeholder and its conditions."""

    pod: str
    ready: bool = True
    serving: bool | None = None
    terminating: bool = False


class ServiceSpec(_Model):
    """Shorthand for a selector-less Service (one port, named `port_name`) and its EndpointSlice.

    `pods: null` (the default) creates no EndpointSlice at all; `pods: []` an empty one.
    """

    port: int = Field(default=80, ge=1, le=65535)
    port_name: str = "http"
    pods: list[str | PodEndpoint] | None = None

    def endpoints(self) -> list[PodEndpoint]:
        return [PodEndpoint(pod=p) if isinstance(p, str) else p for p in self.pods or ()]


class CertificateSpec(_Model):
    """Shorthand for a `kubernetes.io/tls` Secret with a self-signed certificate generated at
    run time: subject CN `cn`, DNS SANs `dns` (default: just the CN). Generated anew for each
    step that names it, so a step rotates the Secret's content."""

    cn: str
    dns: list[str] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.dns or [self.cn]


class CASecretSpec(_Model):
    """Shorthand for an Opaque Secret holding only `ca.crt` (what `proxy-ssl-secret` names):
    the CA of the HTTPS echo pods (`pods`) or one that signed nothing here (`unrelated`)."""

    ca: Literal["pods", "unrelated"] = "pods"


class PodSpec(_Model):
    """Options of a pod placeholder's echo backend: `tls` serves HTTPS with a certificate for
    `<service>.<namespace>.svc` (Portico's default upstream name) signed by the run's pod CA;
    `delay_ms` makes every answer that late."""

    tls: bool = False
    delay_ms: int = Field(default=0, ge=0, le=5000)


class ObjectRef(_Model):
    kind: str
    name: str

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KIND_ORDER:
            raise ValueError(f"kind must be one of {list(KIND_ORDER)}")
        return value


class Step(_Model):
    """Objects to apply and objects to delete; then, once the runner has proof that Portico
    serves the change (conformance/barrier.py), the Ingress statuses expected (`status`: name ->
    whether it has one; waited for, bounded) and the requests, each sent once."""

    name: str = ""
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    certificates: dict[str, CertificateSpec] = Field(default_factory=dict)
    ca_secrets: dict[str, CASecretSpec] = Field(default_factory=dict)
    objects: list[dict[str, Any]] = Field(default_factory=list)
    unwatched_objects: list[dict[str, Any]] = Field(default_factory=list)
    delete: list[ObjectRef] = Field(default_factory=list)
    status: dict[str, bool] = Field(default_factory=dict)
    requests: list[Request] = Field(default_factory=list)

    @field_validator("objects", "unwatched_objects")
    @classmethod
    def _objects_valid(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for obj in value:
            _check_object(obj)
        return value

    @field_validator("unwatched_objects")
    @classmethod
    def _namespaced(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for obj in value:
            if obj["kind"] in CLUSTER_SCOPED:
                raise ValueError(f"{obj['kind']} is cluster-scoped: not an unwatched_object")
        return value


class Scenario(Step):
    """Base objects and requests, optional steps. `unowned` lists Ingresses that must still
    have no status once the base requests are done (another class, an unwatched namespace);
    every other Ingress of the base objects must get one. `requires` names what the target
    must offer for the scenario to run (else it is skipped)."""

    area: str = ""
    description: str = ""
    requires: list[Requirement] = Field(default_factory=list)
    pods: dict[str, PodSpec] = Field(default_factory=dict)
    unowned: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.area}/{self.name}"

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if not _NAME.match(self.name):
            raise ValueError(f"scenario name {self.name!r} must be a lower-case DNS-like name")
        ingresses = {o["metadata"]["name"] for o in self.objects if o["kind"] == "Ingress"}
        unwatched = {
            o["metadata"]["name"] for o in self.unwatched_objects if o["kind"] == "Ingress"
        }
        if not ingresses - set(self.unowned):
            raise ValueError("a scenario needs at least one Ingress it expects Portico to own")
        if clash := ingresses & unwatched:
            raise ValueError(f"Ingress names used in both namespaces: {sorted(clash)}")
        if unknown := set(self.unowned) - ingresses - unwatched:
            raise ValueError(f"unowned names no Ingress of the scenario: {sorted(unknown)}")
        if not self.requests and not any(s.requests for s in self.steps):
            raise ValueError("a scenario needs requests")
        steps = list(_steps(self))
        if any(s.unwatched_objects for s in steps) and UNWATCHED_NAMESPACE not in self.requires:
            raise ValueError(f"unwatched_objects need `requires: [{UNWATCHED_NAMESPACE}]`")
        named = {o["metadata"]["name"] for s in steps for o in s.objects if o["kind"] == "Ingress"}
        for step in steps:
            if unknown := set(step.status) - named:
                raise ValueError(f"status names no Ingress of the scenario: {sorted(unknown)}")
        pods = pods_of(self)  # raises on a pod placeholder claimed by two services
        if unknown := set(self.pods) - set(pods):
            raise ValueError(f"pods names placeholders no service uses: {sorted(unknown)}")
        return self

    @property
    def owned_ingresses(self) -> list[str]:
        return [
            o["metadata"]["name"]
            for o in self.objects
            if o["kind"] == "Ingress" and o["metadata"]["name"] not in self.unowned
        ]

    @property
    def unwatched_ingresses(self) -> frozenset[str]:
        return frozenset(
            o["metadata"]["name"] for o in self.unwatched_objects if o["kind"] == "Ingress"
        )


def _check_object(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise ValueError("every object must be a mapping")
    kind = obj.get("kind")
    if kind not in KIND_ORDER:
        raise ValueError(f"object kind {kind!r} is not one of {list(KIND_ORDER)}")
    if obj.get("apiVersion") != API_VERSIONS[kind]:
        raise ValueError(f"{kind} must have apiVersion {API_VERSIONS[kind]}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise ValueError(f"{kind} needs metadata.name")
    if "namespace" in metadata:
        raise ValueError(f"{kind} {metadata['name']}: the runner sets namespaces, leave them out")
    if kind == "EndpointSlice":
        labels = metadata.get("labels") or {}
        if SERVICE_NAME_LABEL not in labels:
            raise ValueError(
                f"EndpointSlice {metadata['name']} needs the {SERVICE_NAME_LABEL} label"
            )
        for endpoint in obj.get("endpoints") or []:
            if "addresses" in endpoint:
                raise ValueError(
                    f"EndpointSlice {metadata['name']}: write `pod: NAME`, not addresses"
                )
            if not isinstance(endpoint.get("pod"), str):
                raise ValueError(f"EndpointSlice {metadata['name']}: each endpoint needs `pod`")
    for key, value in (metadata.get("annotations") or {}).items():
        if isinstance(value, str):
            continue
        if _is_pod_url(value):
            continue
        if not (
            isinstance(value, dict)
            and len(value) == 1
            and set(value) <= _REFERENCES
            and _is_name(next(iter(value.values())))
        ):
            raise ValueError(
                f"{kind} {metadata['name']}: annotation {key} must be a string, "
                "{secret: NAME} or {configmap: NAME} (rendered as namespace/NAME), or "
                "{pod_url: POD, path: /PATH} (rendered as http://<pod address>:<port>/PATH)"
            )


# Annotation values naming an object of the scenario's namespace: {secret: NAME}, {configmap: NAME}.
_REFERENCES: Final = frozenset({"secret", "configmap"})


def _is_pod_url(value: Any) -> bool:
    """{pod_url: POD, path: /PATH}: the URL of a pod placeholder's echo backend (an auth-url
    pointing at a pod: the echo backend answers `?status=N` with N)."""
    return (
        isinstance(value, dict)
        and "pod_url" in value
        and set(value) <= {"pod_url", "path"}
        and _is_name(value["pod_url"])
        and isinstance(value.get("path", "/"), str)
        and str(value.get("path", "/")).startswith("/")
    )


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and _NAME.match(value) is not None


# ---- loading -----------------------------------------------------------------------------------


class _File(_Model):
    description: str = ""
    scenarios: list[dict[str, Any]]


def load_file(path: Path) -> list[Scenario]:
    """The scenarios of one file; their area is the file's stem. Raises ScenarioError."""
    try:
        raw = yaml.safe_load(path.read_text())
        document = _File.model_validate(raw)
        scenarios = [Scenario.model_validate({**s, "area": path.stem}) for s in document.scenarios]
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    seen: set[str] = set()
    for scenario in scenarios:
        if scenario.name in seen:
            raise ScenarioError(f"{path}: scenario {scenario.name!r} appears twice")
        seen.add(scenario.name)
    return scenarios


def load_scenarios(directory: Path, select: str | None = None) -> list[Scenario]:
    """Every scenario of every `*.yaml` in `directory` (sorted by file, then file order) whose
    `area/name` contains `select` (all when None)."""
    if not directory.is_dir():
        raise ScenarioError(f"{directory} is not a directory")
    scenarios = [s for path in sorted(directory.glob("*.yaml")) for s in load_file(path)]
    if select:
        scenarios = [s for s in scenarios if select in s.full_name]
    return scenarios


# ---- pods and rendering ------------------------------------------------------------------------


def _steps(scenario: Scenario) -> Iterable[Step]:
    yield scenario
    yield from scenario.steps


def pods_of(scenario: Scenario) -> dict[str, str]:
    """pod placeholder -> the Service it serves (its echo backend reports that name)."""
    pods: dict[str, str] = {}

    def claim(pod: str, service: str) -> None:
        if pods.setdefault(pod, service) != service:
            raise ValueError(f"pod {pod!r} is claimed by services {pods[pod]!r} and {service!r}")

    for step in _steps(scenario):
        for service, spec in step.services.items():
            for endpoint in spec.endpoints():
                claim(endpoint.pod, service)
        for obj in (*step.objects, *step.unwatched_objects):
            if obj["kind"] == "EndpointSlice":
                service = obj["metadata"]["labels"][SERVICE_NAME_LABEL]
                for endpoint in obj.get("endpoints") or []:
                    claim(endpoint["pod"], service)
    return pods


@dataclass(frozen=True)
class Certificate:
    """A generated certificate: PEM cert and key (what goes into the Secret)."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class EchoPod:
    """What a target runs for one pod placeholder: an echo backend reporting `service`,
    answering `delay_ms` late, over HTTPS with `tls` when given. Equal values may share a pod."""

    service: str
    delay_ms: int = 0
    tls: Certificate | None = None


@dataclass(frozen=True)
class Environment:
    """What rendering needs from the target: where objects go and where pods listen."""

    namespace: str
    pod_addresses: Mapping[str, str]  # pod placeholder -> IP
    echo_port: int
    certificates: Mapping[str, Certificate]  # certificate (Secret) name -> generated PEMs
    ca_bundles: Mapping[str, bytes] = field(default_factory=dict)  # CASecretSpec.ca -> PEM
    unwatched_namespace: str | None = None


def _endpoint(pod: str, env: Environment, conditions: Mapping[str, Any]) -> dict[str, Any]:
    ready = bool(conditions.get("ready", True))
    terminating = bool(conditions.get("terminating", False))
    serving = conditions.get("serving")
    return {
        "addresses": [env.pod_addresses[pod]],
        "conditions": {
            "ready": ready,
            "serving": ready if serving is None else bool(serving),
            "terminating": terminating,
        },
        "targetRef": {"kind": "Pod", "name": pod, "namespace": env.namespace},
    }


def _service_objects(name: str, spec: ServiceSpec, env: Environment) -> list[dict[str, Any]]:
    meta = {"name": name, "namespace": env.namespace}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": dict(meta),
            "spec": {
                "ports": [
                    {
                        "name": spec.port_name,
                        "port": spec.port,
                        "targetPort": env.echo_port,
                        "protocol": "TCP",
                    }
                ]
            },
        }
    ]
    if spec.pods is not None:
        objects.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    **meta,
                    "name": _slice_name(name),
                    "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                },
                "addressType": "IPv4",
                "endpoints": [
                    _endpoint(e.pod, env, e.model_dump(exclude={"pod"})) for e in spec.endpoints()
                ],
                "ports": [{"name": spec.port_name, "port": env.echo_port, "protocol": "TCP"}],
            }
        )
    return objects


def _slice_name(service: str) -> str:
    return f"{service}-conformance"


def tls_secret(name: str, namespace: str, certificate: Certificate) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(certificate.cert_pem).decode(),
            "tls.key": base64.b64encode(certificate.key_pem).decode(),
        },
    }


def _ca_secret(name: str, spec: CASecretSpec, env: Environment) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": env.namespace},
        "type": "Opaque",
        "data": {CA_KEY: base64.b64encode(env.ca_bundles[spec.ca]).decode()},
    }


def _raw_object(
    obj: Mapping[str, Any], env: Environment, namespace: str | None = None
) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    namespace = namespace or env.namespace
    if out["kind"] not in CLUSTER_SCOPED:
        out["metadata"]["namespace"] = namespace
    annotations = out["metadata"].get("annotations") or {}
    for key, value in annotations.items():
        if _is_pod_url(value):
            address = env.pod_addresses[value["pod_url"]]
            annotations[key] = f"http://{address}:{env.echo_port}{value.get('path', '/')}"
        elif isinstance(value, dict):  # {secret: NAME} or {configmap: NAME}, checked when loading
            annotations[key] = f"{namespace}/{next(iter(value.values()))}"
    if out["kind"] == "EndpointSlice":
        labels = out["metadata"].setdefault("labels", {})
        labels.setdefault(MANAGED_BY_LABEL, MANAGED_BY)
        out.setdefault("addressType", "IPv4")
        out["endpoints"] = [
            _endpoint(e["pod"], env, e.get("conditions") or {}) for e in out.get("endpoints") or []
        ]
        for port in out.setdefault("ports", [{"name": "http"}]):
            port.setdefault("port", env.echo_port)
            port.setdefault("protocol", "TCP")
    return out


def _kind_order(obj: Mapping[str, Any]) -> int:
    return KIND_ORDER.index(obj["kind"])


def render(step: Step, env: Environment) -> list[dict[str, Any]]:
    """The objects a step applies, complete and namespaced, in KIND_ORDER."""
    objects: list[dict[str, Any]] = []
    for name in step.certificates:
        objects.append(tls_secret(name, env.namespace, env.certificates[name]))
    for name, ca_spec in step.ca_secrets.items():
        objects.append(_ca_secret(name, ca_spec, env))
    for name, spec in step.services.items():
        objects.extend(_service_objects(name, spec, env))
    objects.extend(_raw_object(o, env) for o in step.objects)
    if step.unwatched_objects:
        if env.unwatched_namespace is None:
            raise ValueError("unwatched_objects need an unwatched namespace")
        objects.extend(_raw_object(o, env, env.unwatched_namespace) for o in step.unwatched_objects)
    return sorted(objects, key=_kind_order)


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj["metadata"]
    return obj["kind"], metadata["name"], metadata.get("namespace")


def _deletion_order(key: ObjectKey) -> int:
    return -KIND_ORDER.index(key[0])


def deletions(step: Step, env: Environment) -> list[ObjectKey]:
    """The objects a step deletes, Ingresses first."""
    refs = [
        (r.kind, r.name, None if r.kind in CLUSTER_SCOPED else env.namespace) for r in step.delete
    ]
    return sorted(refs, key=_deletion_order)


def _written(step: Step, env: Environment) -> Iterable[ObjectKey]:
    namespace = env.namespace
    for name in (*step.certificates, *step.ca_secrets):
        yield "Secret", name, namespace
    for name, spec in step.services.items():
        yield "Service", name, namespace
        if spec.pods is not None:
            yield "EndpointSlice", _slice_name(name), namespace
    for obj in step.objects:
        scoped = obj["kind"] in CLUSTER_SCOPED
        yield obj["kind"], obj["metadata"]["name"], None if scoped else namespace
    for obj in step.unwatched_objects:
        yield obj["kind"], obj["metadata"]["name"], env.unwatched_namespace


def created(scenario: Scenario, env: Environment) -> list[ObjectKey]:
    """Everything a scenario may have created, in deletion order (Ingresses first, so no route
    ever points at a Service that is already gone)."""
    refs = dict.fromkeys(key for step in _steps(scenario) for key in _written(step, env))
    return sorted(refs, key=_deletion_order)


def steps_of(scenario: Scenario) -> list[Step]:
    """The scenario's base (itself) and then its steps, in the order they run."""
    return list(_steps(scenario))
