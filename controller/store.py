"""The store: the typed objects Portico reads, indexed, with change tracking for the compiler.

Sources turn watch events into `WatchEvent`s; the reconciler applies them here. `apply` says
whether a change can matter for routing, so the reconciler can skip compiles on churn nobody
routes to. The store also records what changed since a given revision, so the incremental
`Compiler` can tell "only endpoints of these Services changed" from "routes must be rebuilt".
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from controller.objects import (
    READ_KINDS,
    TLS_SECRET_TYPE,
    ConfigMap,
    EndpointSlice,
    Ingress,
    IngressBackend,
    KubeObject,
    Secret,
)

logger = logging.getLogger(__name__)

ServiceKey = tuple[str, str]  # (namespace, name)
_ObjKey = tuple[str, str]  # (namespace, name) within one kind

_store_ids: Final = itertools.count(1)


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    obj: KubeObject


def _backend_services(backend: IngressBackend | None, namespace: str) -> Iterable[ServiceKey]:
    if backend is not None and backend.service is not None:
        yield (namespace, backend.service.name)


_DEFAULT_BACKEND = ("nginx.ingress.kubernetes.io/default-backend", "portico.dev/default-backend")


def ingress_services(ingress: Ingress) -> set[ServiceKey]:
    """Every Service an Ingress names (rules, defaultBackend and the default-backend
    annotation), in its own namespace."""
    out = set(_backend_services(ingress.default_backend, ingress.namespace))
    for rule in ingress.rules:
        for path in rule.paths:
            out.update(_backend_services(path.backend, ingress.namespace))
    # A malformed name is reported by the compiler; indexing it anyway is harmless.
    for annotation in _DEFAULT_BACKEND:
        name = ingress.annotations.get(annotation)
        if name and name.strip():
            out.add((ingress.namespace, name.strip()))
    return out


_PROXY_SSL_SECRET = (
    "nginx.ingress.kubernetes.io/proxy-ssl-secret",
    "portico.dev/proxy-ssl-secret",
    # The CA of client certificates (auth-tls-secret) is read the same way.
    "nginx.ingress.kubernetes.io/auth-tls-secret",
    "portico.dev/auth-tls-secret",
)


def ingress_secrets(ingress: Ingress) -> set[_ObjKey]:
    out = {(ingress.namespace, t.secret_name) for t in ingress.tls if t.secret_name}
    # The CA bundle of upstream TLS ("namespace/name"); a malformed value is reported by the
    # compiler, and indexing it anyway is harmless.
    for annotation in _PROXY_SSL_SECRET:
        ref = ingress.annotations.get(annotation)
        if ref and "/" in ref:
            namespace, _, name = ref.strip().partition("/")
            out.add((namespace, name))
        elif ref and ref.strip() and annotation.endswith("auth-tls-secret"):
            out.add((ingress.namespace, ref.strip()))  # a bare name: the Ingress's namespace
    # Basic auth's users ("name" in the Ingress's namespace, or "namespace/name").
    for annotation in _AUTH_SECRET:
        ref = ingress.annotations.get(annotation)
        if ref and ref.strip():
            namespace, _, name = ref.strip().rpartition("/")
            out.add((namespace or ingress.namespace, name))
    return out


_AUTH_SECRET = ("nginx.ingress.kubernetes.io/auth-secret", "portico.dev/auth-secret")
_CUSTOM_HEADERS = (
    "nginx.ingress.kubernetes.io/custom-headers",
    "portico.dev/custom-headers",
    "nginx.ingress.kubernetes.io/auth-proxy-set-headers",
    "portico.dev/auth-proxy-set-headers",
)


def ingress_configmaps(ingress: Ingress) -> set[_ObjKey]:
    """The ConfigMaps an Ingress names ("namespace/name" of `custom-headers`,
    `auth-proxy-set-headers`); a malformed value
    is reported by the compiler, and indexing it anyway is harmless."""
    out: set[_ObjKey] = set()
    for annotation in _CUSTOM_HEADERS:
        ref = ingress.annotations.get(annotation)
        if ref and "/" in ref:
            namespace, _, name = ref.strip().partition("/")
            out.add((namespace, name))
        elif ref and ref.strip() and annotation.endswith("auth-tls-secret"):
            out.add((ingress.namespace, ref.strip()))  # a bare name: the Ingress's namespace
    return out


class Store:
    """All objects of READ_KINDS by kind and (namespace, name), plus the indexes the compiler uses.

    Revisions: every change that matters bumps `revision`. Changes to anything but EndpointSlices
    also set `routes_revision`; EndpointSlice changes record the revision per Service instead, so
    `endpoint_changes_since(r)` lists the Services whose endpoints changed after revision r.
    """

    def __init__(self) -> None:
        # A process-unique id: a Compiler that sees another store must not reuse its caches.
        self.id: Final[int] = next(_store_ids)
        self._objects: dict[str, dict[_ObjKey, KubeObject]] = {k: {} for k in READ_KINDS}
        self._slices: dict[ServiceKey, dict[str, EndpointSlice]] = {}
        self._service_refs: Counter[ServiceKey] = Counter()
        self._secret_refs: Counter[_ObjKey] = Counter()
        self._configmap_refs: Counter[_ObjKey] = Counter()
        # ConfigMaps the compile settings name (the ingress-nginx ConfigMap's proxy-set-headers).
        self._pinned_configmaps: frozenset[_ObjKey] = frozenset()
        self._listed: set[str] = set()
        self.revision = 0
        self.routes_revision = 0
        self._slice_revisions: dict[ServiceKey, int] = {}

    # ---- reading -------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        by_key = self._objects.get(kind)
        return None if by_key is None else by_key.get((namespace, name))

    def objects(self, kind: str) -> Iterable[KubeObject]:
        return self._objects.get(kind, {}).values()

    def slices_for(self, namespace: str, service: str) -> Iterable[EndpointSlice]:
        """EndpointSlices labelled for one Service (same namespace), by slice name."""
        by_name = self._slices.get((namespace, service))
        return () if by_name is None else by_name.values()

    def is_referenced_service(self, namespace: str, name: str) -> bool:
        return self._service_refs[(namespace, name)] > 0

    def endpoint_changes_since(self, revision: int) -> set[ServiceKey]:
        """Services whose EndpointSlices changed after `revision`."""
        return {svc for svc, rev in self._slice_revisions.items() if rev > revision}

    def mark_listed(self, kind: str) -> None:
        self._listed.add(kind)

    def pin_configmaps(self, refs: Iterable[_ObjKey]) -> None:
        """ConfigMaps whose changes matter although no Ingress names them (the compile settings
        name them); set before the compile that reads them."""
        self._pinned_configmaps = frozenset(refs)

    @property
    def synced(self) -> bool:
        return self._listed >= READ_KINDS

    def __len__(self) -> int:
        return sum(len(v) for v in self._objects.values())

    # ---- writing -------------------------------------------------------------------------------

    def apply(self, event: WatchEvent) -> bool:
        """Apply one event; True if the change can matter for routing."""
        obj = event.obj
        by_key = self._objects[obj.kind]
        key = (obj.namespace, obj.name)
        old = by_key.get(key)
        if event.type == "DELETED":
            if old is None:
                return False
            del by_key[key]
            new: KubeObject | None = None
        else:
            if old == obj:
                return False
            by_key[key] = obj
            new = obj
        self._index(old, new)
        relevant = self._relevant(old, new)
        if relevant:
            self.revision += 1
            if isinstance(obj, EndpointSlice):
                for svc in {s.service_name for s in (old, new) if isinstance(s, EndpointSlice)}:
                    if svc is not None:
                        self._slice_revisions[(obj.namespace, svc)] = self.revision
            else:
                self.routes_revision = self.revision
        return relevant

    def _index(self, old: KubeObject | None, new: KubeObject | None) -> None:
        if isinstance(old, Ingress):
            self._service_refs.subtract(ingress_services(old))
            self._secret_refs.subtract(ingress_secrets(old))
            self._configmap_refs.subtract(ingress_configmaps(old))
        if isinstance(new, Ingress):
            self._service_refs.update(ingress_services(new))
            self._secret_refs.update(ingress_secrets(new))
            self._configmap_refs.update(ingress_configmaps(new))
        if isinstance(old, EndpointSlice) and old.service_name is not None:
            skey = (old.namespace, old.service_name)
            group = self._slices.get(skey)
            if group is not None:
                group.pop(old.name, None)
                if not group:
                    del self._slices[skey]
        if isinstance(new, EndpointSlice) and new.service_name is not None:
            self._slices.setdefault((new.namespace, new.service_name), {})[new.name] = new

    def _relevant(self, old: KubeObject | None, new: KubeObject | None) -> bool:
        obj = new if new is not None else old
        if isinstance(obj, EndpointSlice):
            return any(
                s.service_name is not None
                and self.is_referenced_service(s.namespace, s.service_name)
                for s in (old, new)
                if isinstance(s, EndpointSlice)
            )
        if isinstance(obj, Secret):
            # TLS Secrets can become certificates; any other type matters only when an Ingress
            # names it (the compiler then reports its wrong type).
            return self._secret_refs[(obj.namespace, obj.name)] > 0 or any(
                isinstance(s, Secret) and s.type == TLS_SECRET_TYPE for s in (old, new)
            )
        if isinstance(obj, ConfigMap):
            # Most ConfigMaps are other applications' configuration: only named ones matter.
            key = (obj.namespace, obj.name)
            return self._configmap_refs[key] > 0 or key in self._pinned_configmaps
        if obj is not None and obj.kind == "Service":
            return self.is_referenced_service(obj.namespace, obj.name)
        return True
