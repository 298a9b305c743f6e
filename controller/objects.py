"""Typed Kubernetes objects: the edge where raw dicts (API or YAML manifests) become models.

Sources (the API watcher, the manifest directory) hand raw mappings to `parse_object`; the store and
the compiler only ever see these frozen pydantic models, holding just the fields Portico reads.
Parsing is strict about the shape of what we read (a wrong type raises `ObjectParseError` naming
the object and the field) and tolerant of everything else (unknown fields, null lists).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

READ_KINDS: Final[frozenset[str]] = frozenset(
    {"Ingress", "IngressClass", "Service", "EndpointSlice", "Secret", "ConfigMap"}
)

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
DEFAULT_CLASS_ANNOTATION: Final = "ingressclass.kubernetes.io/is-default-class"
TLS_SECRET_TYPE: Final = "kubernetes.io/tls"
# The Secret data keys Portico reads: a TLS pair (`spec.tls`, the default certificate) and the CA
# bundle of upstream TLS (`proxy-ssl-secret`). Every other key is dropped while parsing, so that
# credentials of unrelated Secrets (cluster mode reads Secrets of most types) never stay in memory.
# A feature that reads another key adds it here.
SECRET_DATA_KEYS: Final[frozenset[str]] = frozenset({"tls.crt", "tls.key", "ca.crt", "auth"})
# Basic auth's `auth-map` Secrets have one key per user, the value its password hash: of the other
# keys, those whose value is a password hash of a scheme with a prefix (proxy/htpasswd.py; not DES
# nor {PLAIN}, which cannot be told from other values) are kept too. A hash is not a credential,
# and this bounds what is kept without knowing, while parsing, which Secrets an Ingress names.
AUTH_MAP_PREFIXES: Final = (
    b"$2a$",
    b"$2b$",
    b"$2y$",
    b"$apr1$",
    b"$1$",
    b"$5$",
    b"$6$",
    b"{SHA}",
    b"{SSHA}",
)
_AUTH_MAP_VALUE_MAX: Final = 256

# Ingress API versions whose spec shape we understand; the old v1beta1 shape (serviceName,
# servicePort) would silently parse as backend-less paths, so it is rejected loudly instead.
_INGRESS_API_VERSIONS: Final = frozenset({"networking.k8s.io/v1"})


class ObjectParseError(ValueError):
    """A raw object of a kind Portico reads does not have the shape we need."""

    def __init__(self, kind: str, ref: str, field: str, reason: str) -> None:
        self.kind = kind
        self.ref = ref
        self.field = field
        self.reason = reason
        where = f" field {field}" if field else ""
        super().__init__(f"{kind} {ref or '<unnamed>'}:{where}: {reason}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Object(_Model):
    """Fields every top-level object has."""

    kind: str
    namespace: str
    name: str

    @property
    def ref(self) -> str:
        """ObjectRef: "namespace/name", or "name" for cluster-scoped objects."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


# ---- Ingress -----------------------------------------------------------------------------------


class ServiceBackendRef(_Model):
    """`backend.service`: a Service name plus a port by number or by name (exactly one set)."""

    name: str
    port_number: int | None = None
    port_name: str | None = None

    @property
    def port(self) -> int | str | None:
        return self.port_number if self.port_number is not None else self.port_name


class ResourceBackendRef(_Model):
    api_group: str | None = None
    kind: str = ""
    name: str = ""


class IngressBackend(_Model):
    service: ServiceBackendRef | None = None
    resource: ResourceBackendRef | None = None


class IngressPath(_Model):
    path: str | None = None
    path_type: str | None = None
    backend: IngressBackend


class IngressRule(_Model):
    host: str | None = None
    # `http` absent and `http.paths` empty are the same to us: a rule with no paths.
    paths: tuple[IngressPath, ...] = ()


class IngressTLS(_Model):
    hosts: tuple[str, ...] = ()
    secret_name: str | None = None


class Ingress(_Object):
    kind: Literal["Ingress"] = "Ingress"
    creation_timestamp: datetime | None = None
    annotations: dict[str, str] = {}
    ingress_class_name: str | None = None
    default_backend: IngressBackend | None = None
    rules: tuple[IngressRule, ...] = ()
    tls: tuple[IngressTLS, ...] = ()


class IngressClass(_Object):
    kind: Literal["IngressClass"] = "IngressClass"
    namespace: str = ""
    annotations: dict[str, str] = {}
    controller: str = ""

    @property
    def is_default(self) -> bool:
        return self.annotations.get(DEFAULT_CLASS_ANNOTATION, "").lower() == "true"


# ---- Service and EndpointSlice ----------------------------------------------------------------


class ServicePort(_Model):
    name: str = ""
    port: int
    target_port: int | str | None = None
    protocol: str = "TCP"


class Service(_Object):
    kind: Literal["Service"] = "Service"
    type: str = "ClusterIP"
    external_name: str | None = None
    ports: tuple[ServicePort, ...] = ()
    # spec.clusterIP: the virtual address kube-proxy balances (`service-upstream` sends there);
    # "None" for a headless Service, None when absent (ExternalName, a manifest without it).
    cluster_ip: str | None = None


class SliceEndpoint(_Model):
    addresses: tuple[str, ...] = ()
    # Conditions as written; None means "unknown" and is interpreted by the compiler.
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None
    target: str | None = None  # "ns/name" of the targetRef


class SlicePort(_Model):
    name: str = ""
    port: int | None = None
    protocol: str = "TCP"


class EndpointSlice(_Object):
    kind: Literal["EndpointSlice"] = "EndpointSlice"
    labels: dict[str, str] = {}
    address_type: str = "IPv4"
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()

    @property
    def service_name(self) -> str | None:
        return self.labels.get(SERVICE_NAME_LABEL)


# ---- Secret ------------------------------------------------------------------------------------


class Secret(_Object):
    kind: Literal["Secret"] = "Secret"
    type: str = "Opaque"
    data: dict[str, bytes] = {}


# ---- ConfigMap ---------------------------------------------------------------------------------


class ConfigMap(_Object):
    """A ConfigMap's string `data` (`binaryData` is not read): the header lists Ingresses name
    (`custom-headers`) and the ingress-nginx ConfigMap's `proxy-set-headers` names."""

    kind: Literal["ConfigMap"] = "ConfigMap"
    data: dict[str, str] = {}


KubeObject = Ingress | IngressClass | Service | EndpointSlice | Secret | ConfigMap


# ---- parsing -----------------------------------------------------------------------------------


class _Reader:
    """Typed access to a raw mapping that reports the failing field with its full path."""

    __slots__ = ("kind", "ref")

    def __init__(self, kind: str, ref: str) -> None:
        self.kind = kind
        self.ref = ref

    def fail(self, field: str, reason: str) -> ObjectParseError:
        return ObjectParseError(self.kind, self.ref, field, reason)

    def mapping(self, raw: Any, field: str) -> Mapping[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.fail(field, f"expected an object, got {type(raw).__name__}")
        return raw

    def items(self, raw: Any, field: str) -> list[Any]:
        if raw is None:
            return []
        if not isinstance(raw, list | tuple):
            raise self.fail(field, f"expected a list, got {type(raw).__name__}")
        return list(raw)

    def opt_str(self, obj: Mapping[str, Any], key: str, field: str) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{field}.{key}", f"expected a string, got {type(value).__name__}")
        return value

    def str_(self, obj: Mapping[str, Any], key: str, field: str, default: str) -> str:
        value = self.opt_str(obj, key, field)
        return default if value is None else value

    def opt_int(self, obj: Mapping[str, Any], key: str, field: str) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        # bool is an int subclass; `true` is never a valid port.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # Hand-written manifests sometimes quote numbers; accept plain digit strings.
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise self.fail(f"{field}.{key}", f"expected an integer, got {value!r}")

    def opt_bool(self, obj: Mapping[str, Any], key: str, field: str) -> bool | None:
        value = obj.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(f"{field}.{key}", f"expected a boolean, got {value!r}")

    def str_map(self, raw: Any, field: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.mapping(raw, field).items():
            if not isinstance(k, str):
                raise self.fail(field, f"key {k!r} is not a string")
            if isinstance(v, str):
                out[k] = v
            elif isinstance(v, bool):
                # YAML turns an unquoted `true` into a bool; annotations are strings in the API.
                out[k] = "true" if v else "false"
            elif isinstance(v, int | float):
                out[k] = str(v)
            elif v is None:
                out[k] = ""
            else:
                raise self.fail(f"{field}.{k}", f"expected a string, got {type(v).__name__}")
        return out

    def timestamp(self, raw: Any, field: str) -> datetime | None:
        if raw is None:
            return None
        if isinstance(raw, datetime):
            value = raw
        elif isinstance(raw, date):
            value = datetime(raw.year, raw.month, raw.day)
        elif isinstance(raw, str):
            try:
                value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(field, f"not an RFC 3339 timestamp: {raw!r}") from None
        else:
            raise self.fail(field, f"expected a timestamp, got {type(raw).__name__}")
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _backend(r: _Reader, raw: Any, field: str) -> IngressBackend:
    obj = r.mapping(raw, field)
    service: ServiceBackendRef | None = None
    resource: ResourceBackendRef | None = None
    if obj.get("service") is not None:
        svc = r.mapping(obj["service"], f"{field}.service")
        name = r.opt_str(svc, "name", f"{field}.service")
        if not name:
            raise r.fail(f"{field}.service.name", "required")
        port = r.mapping(svc.get("port"), f"{field}.service.port")
        service = ServiceBackendRef(
            name=name,
            port_number=r.opt_int(port, "number", f"{field}.service.port"),
            port_name=r.opt_str(port, "name", f"{field}.service.port") or None,
        )
    if obj.get("resource") is not None:
        res = r.mapping(obj["resource"], f"{field}.resource")
        resource = ResourceBackendRef(
            api_group=r.opt_str(res, "apiGroup", f"{field}.resource"),
            kind=r.str_(res, "kind", f"{field}.resource", ""),
            name=r.str_(res, "name", f"{field}.resource", ""),
        )
    return IngressBackend(service=service, resource=resource)


def _ingress(r: _Reader, raw: Mapping[str, Any], meta: Mapping[str, Any], ns: str) -> Ingress:
    api_version = raw.get("apiVersion")
    if api_version is not None and api_version not in _INGRESS_API_VERSIONS:
        raise r.fail("apiVersion", f"unsupported Ingress apiVersion {api_version!r}")
    spec = r.mapping(raw.get("spec"), "spec")
    default_raw = spec.get("defaultBackend")
    rules: list[IngressRule] = []
    for i, rule_raw in enumerate(r.items(spec.get("rules"), "spec.rules")):
        field = f"spec.rules[{i}]"
        rule = r.mapping(rule_raw, field)
        http = r.mapping(rule.get("http"), f"{field}.http")
        paths: list[IngressPath] = []
        for j, path_raw in enumerate(r.items(http.get("paths"), f"{field}.http.paths")):
            pfield = f"{field}.http.paths[{j}]"
            path = r.mapping(path_raw, pfield)
            paths.append(
                IngressPath(
                    path=r.opt_str(path, "path", pfield),
                    path_type=r.opt_str(path, "pathType", pfield),
                    backend=_backend(r, path.get("backend"), f"{pfield}.backend"),
                )
            )
        rules.append(IngressRule(host=r.opt_str(rule, "host", field), paths=tuple(paths)))
    tls: list[IngressTLS] = []
    for i, tls_raw in enumerate(r.items(spec.get("tls"), "spec.tls")):
        field = f"spec.tls[{i}]"
        entry = r.mapping(tls_raw, field)
        hosts = r.items(entry.get("hosts"), f"{field}.hosts")
        for h in hosts:
            if not isinstance(h, str):
                raise r.fail(f"{field}.hosts", f"expected strings, got {h!r}")
        tls.append(
            IngressTLS(hosts=tuple(hosts), secret_name=r.opt_str(entry, "secretName", field))
        )
    return Ingress(
        namespace=ns,
        name=r.ref.rpartition("/")[2],
        creation_timestamp=r.timestamp(meta.get("creationTimestamp"), "metadata.creationTimestamp"),
        annotations=r.str_map(meta.get("annotations"), "metadata.annotations"),
        ingress_class_name=r.opt_str(spec, "ingressClassName", "spec"),
        default_backend=None
        if default_raw is None
        else _backend(r, default_raw, "spec.defaultBackend"),
        rules=tuple(rules),
        tls=tuple(tls),
    )


def _ingress_class(r: _Reader, raw: Mapping[str, Any], meta: Mapping[str, Any]) -> IngressClass:
    spec = r.mapping(raw.get("spec"), "spec")
    return IngressClass(
        name=r.ref,
        annotations=r.str_map(meta.get("annotations"), "metadata.annotations"),
        controller=r.str_(spec, "controller", "spec", ""),
    )


def _service(r: _Reader, raw: Mapping[str, Any], ns: str) -> Service:
    spec = r.mapping(raw.get("spec"), "spec")
    ports: list[ServicePort] = []
    for i, port_raw in enumerate(r.items(spec.get("ports"), "spec.ports")):
        field = f"spec.ports[{i}]"
        port = r.mapping(port_raw, field)
        number = r.opt_int(port, "port", field)
        if number is None:
            raise r.fail(f"{field}.port", "required")
        target = port.get("targetPort")
        if target is not None and not isinstance(target, int | str):
            raise r.fail(f"{field}.targetPort", f"expected an integer or a string, got {target!r}")
        ports.append(
            ServicePort(
                name=r.str_(port, "name", field, ""),
                port=number,
                target_port=target,
                protocol=r.str_(port, "protocol", field, "TCP"),
            )
        )
    return Service(
        namespace=ns,
        name=r.ref.rpartition("/")[2],
        type=r.str_(spec, "type", "spec", "ClusterIP"),
        external_name=r.opt_str(spec, "externalName", "spec"),
        ports=tuple(ports),
        cluster_ip=r.opt_str(spec, "clusterIP", "spec"),
    )


def _endpoint_slice(
    r: _Reader, raw: Mapping[str, Any], meta: Mapping[str, Any], ns: str
) -> EndpointSlice:
    endpoints: list[SliceEndpoint] = []
    for i, ep_raw in enumerate(r.items(raw.get("endpoints"), "endpoints")):
        field = f"endpoints[{i}]"
        ep = r.mapping(ep_raw, field)
        addresses = r.items(ep.get("addresses"), f"{field}.addresses")
        for a in addresses:
            if not isinstance(a, str):
                raise r.fail(f"{field}.addresses", f"expected strings, got {a!r}")
        cond = r.mapping(ep.get("conditions"), f"{field}.conditions")
        target: str | None = None
        if ep.get("targetRef") is not None:
            ref = r.mapping(ep["targetRef"], f"{field}.targetRef")
            tname = r.opt_str(ref, "name", f"{field}.targetRef")
            if tname:
                tns = r.opt_str(ref, "namespace", f"{field}.targetRef") or ns
                target = f"{tns}/{tname}"
        endpoints.append(
            SliceEndpoint(
                addresses=tuple(addresses),
                ready=r.opt_bool(cond, "ready", f"{field}.conditions"),
                serving=r.opt_bool(cond, "serving", f"{field}.conditions"),
                terminating=r.opt_bool(cond, "terminating", f"{field}.conditions"),
                target=target,
            )
        )
    ports: list[SlicePort] = []
    for i, port_raw in enumerate(r.items(raw.get("ports"), "ports")):
        field = f"ports[{i}]"
        port = r.mapping(port_raw, field)
        ports.append(
            SlicePort(
                name=r.str_(port, "name", field, ""),
                port=r.opt_int(port, "port", field),
                protocol=r.str_(port, "protocol", field, "TCP"),
            )
        )
    return EndpointSlice(
        namespace=ns,
        name=r.ref.rpartition("/")[2],
        labels=r.str_map(meta.get("labels"), "metadata.labels"),
        address_type=r.str_(raw, "addressType", "", "IPv4"),
        endpoints=tuple(endpoints),
        ports=tuple(ports),
    )


def _is_password_hash(value: bytes) -> bool:
    return len(value) <= _AUTH_MAP_VALUE_MAX and value.startswith(AUTH_MAP_PREFIXES)


def _password_hash(raw: Any) -> bytes | None:
    """The value of an auth-map key when it is a password hash (see AUTH_MAP_PREFIXES), else
    None (nothing of it is kept)."""
    if not isinstance(raw, str) or len(raw) > _AUTH_MAP_VALUE_MAX * 2:
        return None
    try:
        value = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return value if _is_password_hash(value) else None


def _secret(r: _Reader, raw: Mapping[str, Any], ns: str) -> Secret:
    """A Secret holding only its SECRET_DATA_KEYS and password hashes (other keys are not kept)."""
    data: dict[str, bytes] = {}
    for k, v in r.mapping(raw.get("data"), "data").items():
        if k not in SECRET_DATA_KEYS:
            hashed = _password_hash(v)
            if hashed is not None:
                data[str(k)] = hashed
            continue
        if v is None:
            data[str(k)] = b""
            continue
        if not isinstance(v, str | bytes):
            raise r.fail(f"data.{k}", f"expected a base64 string, got {type(v).__name__}")
        try:
            data[str(k)] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            # The API always sends valid base64; a manifest may hold whitespace-wrapped base64.
            try:
                data[str(k)] = base64.b64decode("".join(str(v).split()), validate=True)
            except (binascii.Error, ValueError):
                raise r.fail(f"data.{k}", "not valid base64") from None
    # stringData is write-only in the API (merged into data by the API server, taking
    # precedence); a YAML manifest may carry it, so do the same merge here.
    for k, v in r.mapping(raw.get("stringData"), "stringData").items():
        if k not in SECRET_DATA_KEYS:
            if isinstance(v, str) and _is_password_hash(v.encode()):
                data[str(k)] = v.encode()
            continue
        if not isinstance(v, str):
            raise r.fail(f"stringData.{k}", f"expected a string, got {type(v).__name__}")
        data[str(k)] = v.encode()
    return Secret(
        namespace=ns,
        name=r.ref.rpartition("/")[2],
        type=r.str_(raw, "type", "", "Opaque"),
        data=data,
    )


def parse_object(raw: Mapping[str, Any]) -> KubeObject | None:
    """Parse one raw object (API or YAML form); None for a kind Portico does not read.

    Raises ObjectParseError when an object of a kind we read has the wrong shape. A namespaced
    object without `metadata.namespace` (a manifest written for `kubectl apply`) lands in
    "default", as kubectl would put it.
    """
    if not isinstance(raw, Mapping):
        raise ObjectParseError("<unknown>", "", "", f"expected an object, got {type(raw).__name__}")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ObjectParseError("<unknown>", "", "kind", "missing or not a string")
    if kind not in READ_KINDS:
        return None
    r = _Reader(kind, "")
    meta = r.mapping(raw.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise r.fail("metadata.name", "missing or not a string")
    if kind == "IngressClass":
        r.ref = name
        return _ingress_class(r, raw, meta)
    ns = meta.get("namespace")
    if ns is None or ns == "":
        ns = "default"
    if not isinstance(ns, str):
        raise r.fail("metadata.namespace", "not a string")
    r.ref = f"{ns}/{name}"
    if kind == "Ingress":
        return _ingress(r, raw, meta, ns)
    if kind == "Service":
        return _service(r, raw, ns)
    if kind == "EndpointSlice":
        return _endpoint_slice(r, raw, meta, ns)
    if kind == "ConfigMap":
        return ConfigMap(namespace=ns, name=name, data=r.str_map(raw.get("data"), "data"))
    return _secret(r, raw, ns)
