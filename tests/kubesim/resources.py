"""The resource types the simulator serves: URL names, kinds, scope and subresources.

Every request and every direct manipulation is resolved to one `ResourceType` first; storage,
selectors, validation and discovery all key on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Field selectors every type supports (apimachinery's DefaultMetaV1FieldSelectorConversion).
_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_CORE_EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)
_EVENTS_V1_FIELDS = frozenset(
    {
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "regarding.resourceVersion",
        "regarding.fieldPath",
        "reason",
        "reportingController",
        "type",
    }
)

_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    field_labels: frozenset[str] = field(default=_META_FIELDS)
    # DELETE answers with the deleted object instead of a Status (the registry's
    # ReturnDeletedObject; Services do this, as the OpenAPI return types show).
    returns_deleted_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`ingresses.networking.k8s.io` / `services`: the name used in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """`Ingress.networking.k8s.io` / `Secret`: the kind used in 422 Invalid messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def discovery_entries(self) -> list[dict[str, object]]:
        """APIResource entries for this type (and its status subresource) in discovery."""
        main: dict[str, object] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": [*_VERBS, "deletecollection"] if self.namespaced else list(_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        entries = [main]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


INGRESS = ResourceType(
    "networking.k8s.io", "v1", "ingresses", "ingress", "Ingress", True, True, ("ing",)
)
INGRESS_CLASS = ResourceType(
    "networking.k8s.io", "v1", "ingressclasses", "ingressclass", "IngressClass", False
)
SERVICE = ResourceType(
    "", "v1", "services", "service", "Service", True, True, ("svc",), returns_deleted_object=True
)
ENDPOINT_SLICE = ResourceType(
    "discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True
)
SECRET = ResourceType(
    "",
    "v1",
    "secrets",
    "secret",
    "Secret",
    True,
    field_labels=_META_FIELDS | {"type"},
)
LEASE = ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True)
# DELETE answers with a Status (the registry's default): ConfigMaps do not return the object.
CONFIG_MAP = ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, False, ("cm",))
# Stored and served like any object, nothing runs them: a test plays the kubelet (the
# conformance runner's cluster mode starts echo pods and waits for them to be Ready).
POD = ResourceType("", "v1", "pods", "pod", "Pod", True, True, ("po",), returns_deleted_object=True)
NAMESPACE = ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, True, ("ns",))
CORE_EVENT = ResourceType(
    "",
    "v1",
    "events",
    "event",
    "Event",
    True,
    short_names=("ev",),
    field_labels=_META_FIELDS | _CORE_EVENT_FIELDS,
)
EVENT_V1 = ResourceType(
    "events.k8s.io",
    "v1",
    "events",
    "event",
    "Event",
    True,
    short_names=("ev",),
    field_labels=_META_FIELDS | _EVENTS_V1_FIELDS,
)

ALL_TYPES: tuple[ResourceType, ...] = (
    INGRESS,
    INGRESS_CLASS,
    SERVICE,
    ENDPOINT_SLICE,
    SECRET,
    LEASE,
    CONFIG_MAP,
    POD,
    NAMESPACE,
    CORE_EVENT,
    EVENT_V1,
)

# Groups in the order discovery lists them; "" is the legacy core group under /api.
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(t.group for t in ALL_TYPES if t.group))


def by_url(group: str, version: str, plural: str) -> ResourceType | None:
    for rt in ALL_TYPES:
        if (rt.group, rt.version, rt.plural) == (group, version, plural):
            return rt
    return None


def by_api_version_kind(api_version: str, kind: str) -> ResourceType | None:
    for rt in ALL_TYPES:
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None


def lookup(name: str) -> ResourceType:
    """Resolve a test's shorthand: `Ingress`, `ingresses`, `ing`, `ingresses.networking.k8s.io`,
    `events.events.k8s.io`, `events.k8s.io/v1/Event`. Bare `Event`/`events` mean core v1."""
    if "/" in name:
        api_version, _, kind = name.rpartition("/")
        found = by_api_version_kind(api_version, kind)
        if found is not None:
            return found
    lowered = name.lower()
    for rt in ALL_TYPES:
        if lowered in (rt.plural, rt.singular, rt.kind.lower(), *rt.short_names):
            return rt
    for rt in ALL_TYPES:
        if rt.group and lowered == rt.group_resource:
            return rt
    raise KeyError(f"unknown resource type: {name}")
