"""Ingress backends -> snapshot Backends: Service port resolution and endpoint selection.

A backend reference ("ns/service/port" as written in an Ingress) is resolved against the Service
(port by number or by name -> the ServicePort's name) and then against the Service's
EndpointSlices (slice ports with that name give the pod port; `targetPort` is never read, as
kube-proxy does). This is the only part of a compile that depends on EndpointSlices, so the
incremental compiler re-runs just this for the Services whose slices changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from controller.compiler.problems import (
    EXTERNAL_NAME_NOT_ALLOWED,
    INVALID_BACKEND,
    NO_CLUSTER_IP,
    SERVICE_NOT_FOUND,
    SERVICE_PORT_NOT_FOUND,
    Problem,
)
from controller.compiler.settings import CompileSettings
from controller.objects import EndpointSlice, Service, ServicePort
from controller.store import Store
from proxy.config import Backend, Endpoint

_ADDRESS_TYPES = frozenset({"IPv4", "IPv6"})  # FQDN slices are deprecated and never dialled


@dataclass(slots=True)
class BackendUse:
    """One backend key and the surviving Ingress rules that send traffic to it."""

    key: str
    namespace: str
    service: str
    port: int | str
    users: list[tuple[str, str]] = field(default_factory=list)  # (Ingress ref, rule text)
    # `service-upstream`: the Service's cluster IP and port are the one endpoint.
    cluster_ip: bool = False


# The port of a backend that takes its Service's first port (the `default-backend` annotation
# names a Service only; ingress-nginx uses its first port). 0 is no port an Ingress can name, so
# its key ("ns/service/0") is never a rule's.
FIRST_PORT: Final = 0
# The suffix of the key of a backend reached through its Service's cluster IP: Ingresses with
# and without service-upstream naming the same Service port each get what they asked for.
CLUSTER_IP_SUFFIX: Final = "@cluster-ip"


def backend_key(namespace: str, service: str, port: int | str, cluster_ip: bool = False) -> str:
    key = f"{namespace}/{service}/{port}"
    return key + CLUSTER_IP_SUFFIX if cluster_ip else key


def _find_port(service: Service, port: int | str) -> ServicePort | None:
    if port == FIRST_PORT:
        return service.ports[0] if service.ports else None
    for sp in service.ports:
        if (sp.port == port) if isinstance(port, int) else (sp.name == port):
            return sp
    return None


def _slice_port(eps: EndpointSlice, port_name: str) -> int | None:
    """The pod port of the slice entry named like the ServicePort (TCP preferred)."""
    found: int | None = None
    for p in eps.ports:
        if p.name == port_name and p.port is not None:
            if p.protocol == "TCP":
                return p.port
            found = found if found is not None else p.port
    return found


def endpoints_of(slices: Iterable[EndpointSlice], port_name: str) -> tuple[Endpoint, ...]:
    """Ready endpoints plus serving-but-terminating ones (ready=False), deduplicated, sorted."""
    chosen: dict[tuple[str, int], Endpoint] = {}
    for eps in slices:
        if eps.address_type not in _ADDRESS_TYPES:
            continue
        port = _slice_port(eps, port_name)
        if port is None:
            continue
        for ep in eps.endpoints:
            if not ep.addresses:
                continue
            # Conditions: ready and serving default to true when unknown, terminating to false.
            if ep.ready is not False:
                ready = True
            elif ep.serving is not False and ep.terminating is True:
                ready = False
            else:
                continue
            # Consumers may use only the first address (they are fungible per the API).
            address = ep.addresses[0]
            key = (address, port)
            prev = chosen.get(key)
            if prev is None or (ready and not prev.ready):
                chosen[key] = Endpoint(address, port, ready, ep.target)
    return tuple(chosen[k] for k in sorted(chosen))


def resolve_backend(
    store: Store, use: BackendUse, settings: CompileSettings
) -> tuple[Backend, list[Problem]]:
    """The Backend for one key, with a problem per referencing rule when it cannot serve."""
    service = store.get("Service", use.namespace, use.service)
    svc_ref = f"{use.namespace}/{use.service}"

    def fail(reason: str, message: str) -> tuple[Backend, list[Problem]]:
        problems = [Problem("Ingress", ref, reason, f"{message} {rule}") for ref, rule in use.users]
        return Backend(key=use.key, unavailable=reason), problems

    if not isinstance(service, Service):
        return fail(SERVICE_NOT_FOUND, f'service "{svc_ref}" not found')
    if service.type == "ExternalName":
        if not settings.allow_external_name:
            return fail(
                EXTERNAL_NAME_NOT_ALLOWED,
                f'service "{svc_ref}" is of type ExternalName, which is disabled',
            )
        name = (service.external_name or "").strip().rstrip(".").lower()
        if not name:
            return fail(INVALID_BACKEND, f'ExternalName service "{svc_ref}" has no externalName')
        if isinstance(use.port, int) and use.port != FIRST_PORT:
            number = use.port
        else:
            sp = _find_port(service, use.port)
            if sp is None:
                what = "port" if use.port == FIRST_PORT else f'port named "{use.port}"'
                return fail(SERVICE_PORT_NOT_FOUND, f'service "{svc_ref}" has no {what}')
            number = sp.port
        return Backend(key=use.key, endpoints=(Endpoint(name, number),), external_name=True), []
    sp = _find_port(service, use.port)
    if sp is None:
        what = f"port {use.port}" if isinstance(use.port, int) else f'port named "{use.port}"'
        if use.port == FIRST_PORT:
            what = "port"
        return fail(SERVICE_PORT_NOT_FOUND, f'service "{svc_ref}" has no {what}')
    problems: list[Problem] = []
    if use.cluster_ip:
        address = service.cluster_ip
        if address and address != "None":
            # kube-proxy balances the Service port over the pods: one endpoint, always ready.
            return Backend(key=use.key, endpoints=(Endpoint(address, sp.port),)), []
        # Headless: ingress-nginx logs it and uses the endpoints; so does Portico, visibly.
        problems = [
            Problem(
                "Ingress",
                ref,
                NO_CLUSTER_IP,
                f'service "{svc_ref}" has no cluster IP (headless): service-upstream uses its '
                f"endpoints instead {rule}",
            )
            for ref, rule in use.users
        ]
    endpoints = endpoints_of(store.slices_for(use.namespace, use.service), sp.name)
    return Backend(key=use.key, endpoints=endpoints), problems
