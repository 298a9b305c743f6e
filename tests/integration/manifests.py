"""Kubernetes objects for the manifest directories `portico serve` tests run on.

Plain dicts, dumped to YAML by each test; one builder per kind, so every test writes the same
IngressClass, Service, EndpointSlice, Ingress and TLS Secret shapes. `app_yaml` is a whole
manifest file of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

Doc = dict[str, Any]
# An EndpointSlice endpoint: an address (ready), or (address, ready, terminating).
SliceEndpoint = str | tuple[str, bool, bool]


def ingress_class() -> Doc:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "portico"},
        "spec": {"controller": "portico.dev/ingress-controller"},
    }


def service(name: str, target_port: int | None = None, namespace: str = "default") -> Doc:
    """A Service with one port named http (80), to `target_port` when given."""
    port: dict[str, Any] = {"name": "http", "port": 80}
    if target_port is not None:
        port["targetPort"] = target_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [port]},
    }


def endpoint_slice(
    service_name: str, ips: Sequence[SliceEndpoint], port: int, namespace: str = "default"
) -> Doc:
    """The Service's slice `<service>-1`, its endpoints on `port`."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [_endpoint(ip) for ip in ips],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def _endpoint(entry: SliceEndpoint) -> Doc:
    if isinstance(entry, str):
        return {"addresses": [entry], "conditions": {"ready": True}}
    address, ready, terminating = entry
    conditions = {"ready": ready, "serving": True, "terminating": terminating}
    return {"addresses": [address], "conditions": conditions}


def service_with_pods(
    name: str, ips: list[str], port: int, namespace: str = "default"
) -> list[Doc]:
    """A Service and its slice, the pods listening on `port`."""
    return [
        service(name, target_port=port, namespace=namespace),
        endpoint_slice(name, ips, port, namespace),
    ]


def ingress(
    name: str,
    host: str,
    paths: dict[str, str],
    *,
    tls_secret: str | None = None,
    annotations: dict[str, str] | None = None,
    service_port: dict[str, Any] | None = None,
    namespace: str = "default",
    class_name: str = "portico",
) -> Doc:
    """An Ingress of class `class_name`: one rule for `host`, Prefix path -> Service."""
    port = service_port if service_port is not None else {"name": "http"}
    metadata: Doc = {"name": name, "namespace": namespace}
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: Doc = {"ingressClassName": class_name}
    if tls_secret is not None:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    spec["rules"] = [
        {
            "host": host,
            "http": {
                "paths": [
                    {
                        "path": path,
                        "pathType": "Prefix",
                        "backend": {"service": {"name": svc, "port": dict(port)}},
                    }
                    for path, svc in paths.items()
                ]
            },
        }
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def tls_secret(name: str, cert: bytes, key: bytes, namespace: str = "default") -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()},
    }


def app_yaml(service_ips: dict[str, list[str]], port: int, paths: dict[str, str]) -> str:
    """An IngressClass, one Service + EndpointSlice per service (pods on `port`), and the
    Ingress `svc` for host svc.test routing `paths` (path -> Service), as one YAML file."""
    docs = [ingress_class()]
    for name, ips in service_ips.items():
        docs += service_with_pods(name, ips, port)
    docs.append(ingress("svc", "svc.test", paths))
    return yaml.safe_dump_all(docs)
