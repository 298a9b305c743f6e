"""The convergence barrier: proof that Portico serves a change before any request checks it.

A change spans several kinds (a Secret, a Service, its EndpointSlice, an Ingress), and Portico
reads each kind through its own watch: every stream is ordered, but nothing orders one stream
against another, and some changes (endpoints, a certificate's content) show in no status. So
after the runner writes a scenario's objects (or a step's), it writes a *marker*: one new
object of every kind Portico reads, all named after a run id and a counter, in the same
namespace -- an IngressClass with Portico's controller name, a TLS Secret, a Service, its
EndpointSlice (the marker echo pod) and an Ingress joining them on a host of its own. The
change has reached the proxy once

1. the marker Ingress has a status: Portico writes it only once every worker serves a snapshot
   holding that Ingress, which it owns only once the marker IngressClass has arrived; and
2. one HTTPS request for the marker host is answered by the marker pod with the marker
   certificate: that needs the marker Secret, Service and EndpointSlice in the snapshot the
   answering worker serves.

Since each watch delivers in write order, a snapshot holding a marker holds every earlier
write of that kind, so the change is in it. Only then does the runner send its requests, each
once. (With several workers or replicas, (2) is proven for the worker that answered; (1) for
every worker of the replica writing the status. Local mode runs one worker.) The previous
marker is deleted once the next one is written; the last one at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from conformance.client import Answer
from conformance.scenario import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    Certificate,
    ObjectKey,
    tls_secret,
)

# The marker echo pod (one per run): its answers carry this service name.
MARKER_SERVICE: Final = "conformance-marker"
MARKER_POD: Final = "conformance-marker"
MARKER_DOMAIN: Final = "conformance.invalid"  # RFC 2606: never a real name


@dataclass(frozen=True)
class Marker:
    """The marker objects of barrier number `number` of run `run`."""

    run: str
    number: int

    @property
    def name(self) -> str:
        return f"conformance-marker-{self.run}-{self.number}"

    @property
    def host(self) -> str:
        return f"{self.name}.{MARKER_DOMAIN}"

    def objects(
        self,
        namespace: str,
        controller: str,
        pod_address: str,
        echo_port: int,
        certificate: Certificate,
    ) -> list[dict[str, Any]]:
        """The marker's objects, in the order they are written (the Ingress last)."""
        meta = {"name": self.name, "namespace": namespace}
        backend = {"service": {"name": self.name, "port": {"number": 80}}}
        return [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "IngressClass",
                "metadata": {"name": self.name},
                "spec": {"controller": controller},
            },
            tls_secret(self.name, namespace, certificate),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": dict(meta),
                "spec": {
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": echo_port, "protocol": "TCP"}
                    ]
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    **meta,
                    "labels": {SERVICE_NAME_LABEL: self.name, MANAGED_BY_LABEL: MANAGED_BY},
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [pod_address],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "targetRef": {"kind": "Pod", "name": MARKER_POD, "namespace": namespace},
                    }
                ],
                "ports": [{"name": "http", "port": echo_port, "protocol": "TCP"}],
            },
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": dict(meta),
                "spec": {
                    "ingressClassName": self.name,
                    "tls": [{"hosts": [self.host], "secretName": self.name}],
                    "rules": [
                        {
                            "host": self.host,
                            "http": {
                                "paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]
                            },
                        }
                    ],
                },
            },
        ]

    def keys(self, namespace: str) -> list[ObjectKey]:
        """The marker's objects in deletion order (the Ingress first)."""
        return [
            ("Ingress", self.name, namespace),
            ("EndpointSlice", self.name, namespace),
            ("Service", self.name, namespace),
            ("Secret", self.name, namespace),
            ("IngressClass", self.name, None),
        ]

    def served(self, answer: Answer) -> str | None:
        """None when `answer` (to the probe for this marker's host) proves the marker is
        served; else what it showed instead."""
        service = answer.header("X-Echo-Service")
        cn = answer.certificate.cn if answer.certificate is not None else None
        if answer.status == 200 and service == MARKER_SERVICE and cn == self.host:
            return None
        return f"{answer.status} from {service or 'the proxy'} with certificate {cn!r}"
