"""Per-type write rules, the simulator's version of the apiserver's registry strategies.

For creates: server-filled metadata, defaulting (Service, Secret, Namespace) and the resets a real
server does (status of Ingress/Service starts empty). For updates: which parts of the body count
(spec vs status subresource), immutable fields, generation bumps on spec changes only. Validation
covers the checks Portico's code depends on, with the real field paths and messages; it is not a
full schema validation.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.kubesim.resources import (
    CORE_EVENT,
    ENDPOINT_SLICE,
    EVENT_V1,
    INGRESS,
    INGRESS_CLASS,
    NAMESPACE,
    SECRET,
    SERVICE,
    ResourceType,
)
from tests.kubesim.status import ApiError, bad_request, invalid

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")
_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


@dataclass
class Options:
    """Switches for fidelity versus convenience in tests."""

    validation: bool = True
    # Tests use 127.0.0.x pod IPs; a real server rejects loopback endpoint addresses.
    allow_loopback_endpoints: bool = True
    # Create a missing namespace on first use instead of answering 404 (a real server's answer).
    auto_create_namespaces: bool = True
    # The DefaultIngressClass admission plugin: stamp the default class onto new Ingresses
    # without one, when exactly one IngressClass is marked default.
    default_ingress_class: bool = False


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short_suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(5))


def spec_view(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything that counts as "spec" for generation: all but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object minus fields a no-op write may legitimately differ in."""
    view = copy.deepcopy(obj)
    meta = view.get("metadata", {})
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return view


# --- create ------------------------------------------------------------------------------------


def prepare_create(
    rt: ResourceType, body: dict[str, Any], namespace: str | None, options: Options
) -> dict[str, Any]:
    obj = copy.deepcopy(body)
    obj["kind"] = rt.kind
    obj["apiVersion"] = rt.api_version
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if not meta.get("name"):
        if meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{_short_suffix()}"
        else:
            raise invalid(
                rt, "", ["metadata.name: Required value: name or generateName is required"]
            )
    if rt.namespaced:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    for server_owned in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(server_owned, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now_rfc3339()
    meta["generation"] = 1
    _default(rt, obj)
    if rt.status_subresource and rt is not NAMESPACE:
        # Creates ignore a client-supplied status for types with a status subresource.
        obj["status"] = {"loadBalancer": {}} if rt in (INGRESS, SERVICE) else {}
    if options.validation:
        validate(rt, obj, None, options)
    return obj


def _default(rt: ResourceType, obj: dict[str, Any]) -> None:
    if rt is SECRET:
        obj.setdefault("type", "Opaque")
        _merge_string_data(obj)
    elif rt is SERVICE:
        _default_service(obj, None)
    elif rt is NAMESPACE:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif rt is ENDPOINT_SLICE and not obj.get("endpoints"):
        # The API returns `endpoints: null` for an empty slice; mirror that quirk (KUBE-API §4.1).
        obj["endpoints"] = None


def _merge_string_data(obj: dict[str, Any]) -> None:
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.get("data") or {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


_cluster_ip_counter = 0


def _default_service(obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    global _cluster_ip_counter
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if spec["type"] != "ExternalName":
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        if old is not None and not spec.get("clusterIP"):
            # Like the real registry, an update without clusterIP keeps the allocated one.
            old_spec = old.get("spec", {})
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if key in old_spec:
                    spec[key] = copy.deepcopy(old_spec[key])
        if not spec.get("clusterIP"):
            _cluster_ip_counter += 1
            n = _cluster_ip_counter
            spec["clusterIP"] = f"10.96.{(n >> 8) & 255}.{n & 255}"
        if spec["clusterIP"] != "None":
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")


# --- update ------------------------------------------------------------------------------------


def prepare_update(
    rt: ResourceType,
    old: dict[str, Any],
    body: dict[str, Any],
    subresource: str | None,
    options: Options,
) -> dict[str, Any]:
    """The object to store for a PUT (or a patched body) to the main resource or /status."""
    if subresource == "status":
        # Status writes take only .status; spec and metadata stay as stored
        # (ResetObjectMetaForStatus on a real server).
        obj = copy.deepcopy(old)
        if "status" in body:
            obj["status"] = copy.deepcopy(body["status"])
        else:
            obj.pop("status", None)
        return obj
    obj = copy.deepcopy(body)
    obj["kind"] = rt.kind
    obj["apiVersion"] = rt.api_version
    meta = obj.setdefault("metadata", {})
    old_meta = old["metadata"]
    for kept in (
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ):
        if kept in old_meta:
            meta[kept] = old_meta[kept]
        else:
            meta.pop(kept, None)
    meta["generation"] = old_meta.get("generation", 1)
    if rt.status_subresource:
        # Main-resource writes ignore .status for types with a status subresource.
        if "status" in old:
            obj["status"] = copy.deepcopy(old["status"])
        else:
            obj.pop("status", None)
    if rt is SECRET:
        obj.setdefault("type", "Opaque")
        _merge_string_data(obj)
    elif rt is SERVICE:
        _default_service(obj, old)
    elif rt is ENDPOINT_SLICE and not obj.get("endpoints"):
        obj["endpoints"] = None
    if spec_view(obj) != spec_view(old):
        meta["generation"] = old_meta.get("generation", 1) + 1
    if options.validation:
        validate(rt, obj, old, options)
    return obj


# --- validation --------------------------------------------------------------------------------


def validate(
    rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, options: Options
) -> None:
    meta = obj["metadata"]
    name = meta["name"]
    causes: list[str] = []
    if rt in (CORE_EVENT, EVENT_V1):
        pass  # Event names are free-form (<object>.<hex>)
    elif rt is NAMESPACE:
        if not _DNS_LABEL.match(name) or len(name) > 63:
            causes.append(
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label '
                "must consist of lower case alphanumeric characters or '-', and must "
                "start and end with an alphanumeric character"
            )
    elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(
            f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain '
            "must consist of lower case alphanumeric characters, '-' or '.', and must "
            "start and end with an alphanumeric character"
        )
    checker = _CHECKS.get(rt.kind + "/" + rt.group)
    if checker is not None:
        causes.extend(checker(obj, old, options))
    if causes:
        raise invalid(rt, name, causes)


def _immutable(path: str, new: Any, old: Any) -> list[str]:
    if new != old:
        shown = new if isinstance(new, str) else repr(new)
        return [f'{path}: Invalid value: "{shown}": field is immutable']
    return []


def _check_secret(obj: dict[str, Any], old: dict[str, Any] | None, options: Options) -> list[str]:
    causes: list[str] = []
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise bad_request("Secret.data must be an object")
    for key, value in data.items():
        if not _SECRET_KEY.match(key):
            causes.append(
                f'data[{key}]: Invalid value: "{key}": a valid config key must consist '
                "of alphanumeric characters, '-', '_' or '.'"
            )
        try:
            base64.b64decode(str(value), validate=True)
        except ValueError as exc:
            # The real server fails decoding the JSON []byte field before validation runs.
            raise bad_request(f"illegal base64 data in Secret.data[{key}]") from exc
    kind = obj.get("type")
    if kind == "kubernetes.io/tls":
        for key in ("tls.crt", "tls.key"):
            if key not in data:
                causes.append(f"data[{key}]: Required value")
    elif kind == "kubernetes.io/basic-auth" and not ({"username", "password"} & set(data)):
        causes.append("data[username]: Required value")
    if old is not None:
        causes.extend(_immutable("type", kind, old.get("type")))
        if old.get("immutable") and data != (old.get("data") or {}):
            causes.append("data: Forbidden: field is immutable when `immutable` is set")
    return causes


def _check_ingress(obj: dict[str, Any], old: dict[str, Any] | None, options: Options) -> list[str]:
    causes: list[str] = []
    spec = obj.get("spec") or {}
    if not spec.get("defaultBackend") and not spec.get("rules"):
        causes.append(
            "spec: Invalid value: {}: either `defaultBackend` or `rules` must be specified"
        )
    for i, rule in enumerate(spec.get("rules") or []):
        http = rule.get("http")
        if http is None:
            continue
        paths = http.get("paths") or []
        if not paths:
            causes.append(f"spec.rules[{i}].http.paths: Required value")
        for j, path in enumerate(paths):
            where = f"spec.rules[{i}].http.paths[{j}]"
            path_type = path.get("pathType")
            if not path_type:
                causes.append(f"{where}.pathType: Required value: pathType must be specified")
            elif path_type not in _PATH_TYPES:
                causes.append(
                    f'{where}.pathType: Unsupported value: "{path_type}": supported '
                    'values: "Exact", "ImplementationSpecific", "Prefix"'
                )
            value = path.get("path", "")
            if path_type in ("Exact", "Prefix") and not str(value).startswith("/"):
                causes.append(f'{where}.path: Invalid value: "{value}": must be an absolute path')
            backend = path.get("backend") or {}
            if not backend.get("service") and not backend.get("resource"):
                causes.append(
                    f'{where}.backend: Invalid value: "": one backend (`service` '
                    "or `resource`) must be specified"
                )
    return causes


def _check_ingress_class(
    obj: dict[str, Any], old: dict[str, Any] | None, options: Options
) -> list[str]:
    controller = (obj.get("spec") or {}).get("controller")
    if not controller:
        return ["spec.controller: Required value"]
    if old is not None:
        return _immutable("spec.controller", controller, (old.get("spec") or {}).get("controller"))
    return []


def _check_service(obj: dict[str, Any], old: dict[str, Any] | None, options: Options) -> list[str]:
    spec = obj.get("spec") or {}
    causes: list[str] = []
    kind = spec.get("type")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        causes.append(
            f'spec.type: Unsupported value: "{kind}": supported values: "ClusterIP", '
            '"ExternalName", "LoadBalancer", "NodePort"'
        )
    if kind == "ExternalName":
        if not spec.get("externalName"):
            causes.append("spec.externalName: Required value")
    elif not spec.get("ports") and spec.get("clusterIP") != "None":
        causes.append("spec.ports: Required value")
    names = [p.get("name") or "" for p in spec.get("ports") or []]
    if len(names) > 1 and "" in names:
        causes.append("spec.ports[0].name: Required value")
    for i, port in enumerate(spec.get("ports") or []):
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(
                f"spec.ports[{i}].port: Invalid value: {number}: must be between 1 "
                "and 65535, inclusive"
            )
    return causes


def _check_endpoint_ip(where: str, address: str, family: str, options: Options) -> list[str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return [f'{where}: Invalid value: "{address}": must be a valid {family} address']
    if (ip.version == 4) != (family == "IPv4"):
        return [f'{where}: Invalid value: "{address}": must be an {family} address']
    if ip.is_unspecified:
        return [f'{where}: Invalid value: "{address}": may not be unspecified']
    if ip.is_loopback and not options.allow_loopback_endpoints:
        return [
            f'{where}: Invalid value: "{address}": may not be in the loopback range '
            "(127.0.0.0/8, ::1/128)"
        ]
    if ip.is_link_local:
        return [
            f'{where}: Invalid value: "{address}": may not be in the link-local range '
            "(169.254.0.0/16, fe80::/10)"
        ]
    return []


def _check_endpoint_slice(
    obj: dict[str, Any], old: dict[str, Any] | None, options: Options
) -> list[str]:
    causes: list[str] = []
    family = obj.get("addressType")
    if not family:
        causes.append("addressType: Required value")
    elif family not in _ADDRESS_TYPES:
        causes.append(
            f'addressType: Unsupported value: "{family}": supported values: "FQDN", "IPv4", "IPv6"'
        )
    if old is not None:
        causes.extend(_immutable("addressType", family, old.get("addressType")))
    for i, endpoint in enumerate(obj.get("endpoints") or []):
        addresses = endpoint.get("addresses") or []
        if not addresses:
            causes.append(
                f"endpoints[{i}].addresses: Required value: must contain at least 1 address"
            )
        elif len(addresses) > 100:
            causes.append(
                f"endpoints[{i}].addresses: Too many: {len(addresses)}: must have at most 100 items"
            )
        if family in ("IPv4", "IPv6"):
            for j, address in enumerate(addresses):
                causes.extend(
                    _check_endpoint_ip(f"endpoints[{i}].addresses[{j}]", address, family, options)
                )
    names: set[str] = set()
    for i, port in enumerate(obj.get("ports") or []):
        port_name = port.get("name") or ""
        if port_name in names:
            causes.append(f'ports[{i}].name: Duplicate value: "{port_name}"')
        names.add(port_name)
    return causes


def _check_event_v1(obj: dict[str, Any], old: dict[str, Any] | None, options: Options) -> list[str]:
    causes = [
        f"{key}: Required value"
        for key in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not obj.get(key)
    ]
    if obj.get("type") not in ("Normal", "Warning"):
        causes.append(
            f'type: Unsupported value: "{obj.get("type", "")}": supported values: '
            '"Normal", "Warning"'
        )
    if len(obj.get("note") or "") > 1024:
        causes.append("note: Too long: may not be more than 1024 bytes")
    return causes


_CHECKS = {
    f"{SECRET.kind}/{SECRET.group}": _check_secret,
    f"{INGRESS.kind}/{INGRESS.group}": _check_ingress,
    f"{INGRESS_CLASS.kind}/{INGRESS_CLASS.group}": _check_ingress_class,
    f"{SERVICE.kind}/{SERVICE.group}": _check_service,
    f"{ENDPOINT_SLICE.kind}/{ENDPOINT_SLICE.group}": _check_endpoint_slice,
    f"{EVENT_V1.kind}/{EVENT_V1.group}": _check_event_v1,
}


def body_mismatch(rt: ResourceType, body: dict[str, Any]) -> ApiError | None:
    """400 for a body of another type, as the real decoder answers."""
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version and api_version != rt.api_version:
        return bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rt.api_version})"
        )
    if kind and kind != rt.kind:
        return bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
        )
    return None
