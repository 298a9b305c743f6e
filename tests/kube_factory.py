"""Builders of raw Kubernetes objects (API-form dicts) for tests, plus test certificates.

Shared by every test that needs Ingresses, Services, EndpointSlices, Secrets or IngressClasses:
each function returns the plain dict a watch event or a manifest would carry, so tests exercise
`controller.objects.parse_object` too. Defaults give a working setup: an Ingress of class
"portico" whose rules point at Service "web" port 80, pods on 127.0.0.2...
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from controller.objects import READ_KINDS, parse_object
from controller.store import Store, WatchEvent

CONTROLLER = "portico.dev/ingress-controller"

Raw = dict[str, Any]


def _meta(name: str, namespace: str | None, **extra: Any) -> Raw:
    meta: Raw = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


# ---- Ingress ----


def backend(service: str = "web", port: int | str = 80) -> Raw:
    """An IngressBackend naming a Service port by number (int) or by name (str)."""
    port_ref = {"number": port} if isinstance(port, int) else {"name": port}
    return {"service": {"name": service, "port": port_ref}}


def resource_backend(kind: str = "StorageBucket", name: str = "static") -> Raw:
    return {"resource": {"apiGroup": "k8s.example.com", "kind": kind, "name": name}}


def path(
    path: str | None = "/",
    service: str = "web",
    port: int | str = 80,
    path_type: str | None = "Prefix",
    *,
    backend_raw: Raw | None = None,
) -> Raw:
    out: Raw = {"backend": backend_raw if backend_raw is not None else backend(service, port)}
    if path is not None:
        out["path"] = path
    if path_type is not None:
        out["pathType"] = path_type
    return out


def rule(host: str | None = None, *paths: Raw) -> Raw:
    """An Ingress rule; no paths given means one Prefix "/" path to web:80."""
    out: Raw = {"http": {"paths": list(paths) if paths else [path()]}}
    if host is not None:
        out["host"] = host
    return out


def timestamp(seconds: int) -> str:
    """An RFC 3339 creationTimestamp `seconds` after 2024-01-01 (bigger is younger)."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return base.strftime("%Y-%m-%dT%H:%M:%SZ")


def ingress(
    name: str = "web",
    namespace: str = "default",
    *,
    rules: Sequence[Raw] | None = None,
    class_name: str | None = "portico",
    annotations: dict[str, str] | None = None,
    default_backend: Raw | None = None,
    tls: Sequence[Raw] | None = None,
    created: int | None = 0,
) -> Raw:
    """An Ingress; `rules=None` means one host-less rule `Prefix / -> web:80`; `rules=[]` none."""
    spec: Raw = {}
    if class_name is not None:
        spec["ingressClassName"] = class_name
    if rules is None:
        rules = [rule()]
    if rules:
        spec["rules"] = list(rules)
    if default_backend is not None:
        spec["defaultBackend"] = default_backend
    if tls is not None:
        spec["tls"] = list(tls)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(
            name,
            namespace,
            annotations=annotations,
            creationTimestamp=None if created is None else timestamp(created),
        ),
        "spec": spec,
    }


def tls_entry(secret: str | None, *hosts: str) -> Raw:
    out: Raw = {"hosts": list(hosts)}
    if secret is not None:
        out["secretName"] = secret
    return out


def ingress_class(
    name: str = "portico", controller: str = CONTROLLER, *, default: bool = False
) -> Raw:
    annotations = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": _meta(name, None, annotations=annotations),
        "spec": {"controller": controller},
    }


# ---- Service and EndpointSlice ----


def service_port(port: int = 80, name: str | None = None, target: int | str = 8080) -> Raw:
    out: Raw = {"port": port, "targetPort": target, "protocol": "TCP"}
    if name is not None:
        out["name"] = name
    return out


def service(
    name: str = "web",
    namespace: str = "default",
    *,
    ports: Sequence[Raw] | None = None,
    type: str = "ClusterIP",
    external_name: str | None = None,
    cluster_ip: str | None = None,
) -> Raw:
    """A Service; default one unnamed port 80 -> 8080."""
    spec: Raw = {"type": type, "ports": list(ports) if ports is not None else [service_port()]}
    if external_name is not None:
        spec["externalName"] = external_name
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace), "spec": spec}


def endpoint(
    address: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    pod: str | None = None,
    namespace: str = "default",
) -> Raw:
    conditions: Raw = {}
    for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating)):
        if value is not None:
            conditions[key] = value
    out: Raw = {"addresses": [address], "conditions": conditions}
    if pod is not None:
        out["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": pod}
    return out


def endpoint_slice(
    name: str = "web-abc",
    service: str | None = "web",
    namespace: str = "default",
    *,
    endpoints: Iterable[Raw | str] = ("127.0.0.2",),
    ports: Sequence[tuple[str | None, int]] = ((None, 8080),),
    address_type: Literal["IPv4", "IPv6", "FQDN"] = "IPv4",
) -> Raw:
    """An EndpointSlice for `service`; plain strings in `endpoints` are ready addresses."""
    labels = {"kubernetes.io/service-name": service} if service is not None else None
    port_list: list[Raw] = []
    for port_name, number in ports:
        entry: Raw = {"port": number, "protocol": "TCP"}
        if port_name is not None:
            entry["name"] = port_name
        port_list.append(entry)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(name, namespace, labels=labels),
        "addressType": address_type,
        "endpoints": [endpoint(e) if isinstance(e, str) else e for e in endpoints],
        "ports": port_list,
    }


# ---- Secrets and certificates ----


@functools.cache
def _rsa_key(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec_key(n: int) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


KeyKind = Literal["rsa-pkcs1", "rsa-pkcs8", "ec", "ec-pkcs8"]


def make_cert(
    *hosts: str,
    key: KeyKind = "rsa-pkcs8",
    common_name: str | None = None,
    san: bool = True,
    expired: bool = False,
    not_yet_valid: bool = False,
    key_index: int = 0,
    lifetime: dt.timedelta | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed (cert PEM, key PEM) pair; keys are cached per (kind, index) for speed.
    `lifetime`: valid from a day ago until now + lifetime (a certificate about to expire)."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    private = _ec_key(key_index) if key.startswith("ec") else _rsa_key(key_index)
    now = dt.datetime.now(dt.UTC)
    if expired:
        start, end = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
    elif not_yet_valid:
        start, end = now + dt.timedelta(days=1), now + dt.timedelta(days=30)
    elif lifetime is not None:
        start, end = now - dt.timedelta(days=1), now + lifetime
    else:
        start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=365)
    cn = common_name or (hosts[0] if hosts else "portico-test")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if san and hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
        )
    cert = builder.sign(private, hashes.SHA256())
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if key in ("rsa-pkcs1", "ec")
        else serialization.PrivateFormat.PKCS8
    )
    key_pem = private.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def tls_secret(
    name: str = "web-tls",
    namespace: str = "default",
    *,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    hosts: Sequence[str] = ("a.example.com",),
    type: str = "kubernetes.io/tls",
) -> Raw:
    """A TLS Secret in API form (base64 data); a fresh certificate for `hosts` unless given."""
    if cert_pem is None or key_pem is None:
        cert_pem, key_pem = make_cert(*hosts)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace),
        "type": type,
        "data": {
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }


def opaque_secret(name: str = "config", namespace: str = "default", **data: str) -> Raw:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace),
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def ca_secret(name: str, ca_pem: bytes, namespace: str = "default", **extra: str) -> Raw:
    """An Opaque Secret with a CA bundle under `ca.crt`, as `kubectl create secret generic
    --from-file=ca.crt` makes it, and any `extra` keys."""
    return opaque_secret(name, namespace, **{"ca.crt": ca_pem.decode(), **extra})


# ---- ConfigMaps ----


def configmap(name: str, data: dict[str, str], namespace: str = "default") -> Raw:
    """A ConfigMap with string data (header names as keys: `X-Frame-Options`)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, namespace),
        "data": data,
    }


# ---- store ----


def store_of(*raws: Raw) -> Store:
    """A synced `controller.store.Store` holding the parsed objects."""
    store = Store()
    for raw in raws:
        obj = parse_object(raw)
        assert obj is not None, raw
        store.apply(WatchEvent("ADDED", obj))
    for kind in READ_KINDS:
        store.mark_listed(kind)
    return store
