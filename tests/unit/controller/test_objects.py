"""Unit tests of controller.objects: parsing raw API / YAML objects into typed models."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from controller.objects import (
    READ_KINDS,
    EndpointSlice,
    Ingress,
    IngressClass,
    ObjectParseError,
    Secret,
    Service,
    parse_object,
)
from tests.kube_factory import (
    backend,
    endpoint,
    endpoint_slice,
    ingress,
    ingress_class,
    opaque_secret,
    path,
    resource_backend,
    rule,
    service,
    service_port,
    tls_entry,
)


def test_read_kinds() -> None:
    assert (
        frozenset({"Ingress", "IngressClass", "Service", "EndpointSlice", "Secret", "ConfigMap"})
        == READ_KINDS
    )


@pytest.mark.parametrize("kind", ["Deployment", "ServiceAccount", "Pod", "Endpoints"])
def test_other_kinds_are_none(kind: str) -> None:
    assert parse_object({"kind": kind, "metadata": {"name": "x"}}) is None


def test_ingress() -> None:
    raw = ingress(
        "web",
        "shop",
        rules=[rule("a.example.com", path("/api", "api", "http", "Exact"))],
        annotations={"a": "b"},
        default_backend=backend("fallback", 8080),
        tls=[tls_entry("cert", "a.example.com")],
        created=60,
    )
    obj = parse_object(raw)
    assert isinstance(obj, Ingress)
    assert (obj.kind, obj.namespace, obj.name, obj.ref) == ("Ingress", "shop", "web", "shop/web")
    assert obj.key == ("Ingress", "shop", "web")
    assert obj.creation_timestamp == dt.datetime(2024, 1, 1, 0, 1, tzinfo=dt.UTC)
    assert obj.annotations == {"a": "b"}
    assert obj.ingress_class_name == "portico"
    assert obj.default_backend is not None and obj.default_backend.service is not None
    assert obj.default_backend.service.port == 8080
    p = obj.rules[0].paths[0]
    assert (obj.rules[0].host, p.path, p.path_type) == ("a.example.com", "/api", "Exact")
    assert p.backend.service is not None and p.backend.service.port == "http"
    assert obj.tls[0].hosts == ("a.example.com",) and obj.tls[0].secret_name == "cert"


def test_ingress_resource_backend_and_rule_without_http() -> None:
    raw = ingress(rules=[{"host": "a.example.com"}], default_backend=resource_backend())
    obj = parse_object(raw)
    assert isinstance(obj, Ingress)
    assert obj.rules[0].paths == ()
    assert obj.default_backend is not None and obj.default_backend.resource is not None
    assert obj.default_backend.resource.kind == "StorageBucket"


def test_ingress_class_is_cluster_scoped() -> None:
    obj = parse_object(ingress_class("edge", default=True))
    assert isinstance(obj, IngressClass)
    assert (obj.namespace, obj.ref, obj.key) == ("", "edge", ("IngressClass", "", "edge"))
    assert obj.is_default and obj.controller == "portico.dev/ingress-controller"


def test_service() -> None:
    obj = parse_object(service("web", ports=[service_port(80, "http", "web")]))
    assert isinstance(obj, Service)
    assert obj.ports[0].name == "http" and obj.ports[0].port == 80
    assert obj.ports[0].target_port == "web"


def test_endpoint_slice_null_lists_and_conditions() -> None:
    raw = endpoint_slice(endpoints=[endpoint("127.0.0.2", ready=False, pod="p")])
    obj = parse_object(raw)
    assert isinstance(obj, EndpointSlice)
    assert obj.service_name == "web"
    assert obj.endpoints[0].ready is False and obj.endpoints[0].serving is None
    assert obj.endpoints[0].target == "default/p"
    raw["endpoints"] = None
    raw["ports"] = None
    empty = parse_object(raw)
    assert isinstance(empty, EndpointSlice) and empty.endpoints == () and empty.ports == ()


def test_secret_data_and_string_data() -> None:
    raw = opaque_secret(**{"tls.crt": "one", "tls.key": "two"})
    raw["stringData"] = {"tls.key": "override", "ca.crt": "three"}
    obj = parse_object(raw)
    assert isinstance(obj, Secret)
    assert obj.data == {"tls.crt": b"one", "tls.key": b"override", "ca.crt": b"three"}


def test_secret_keeps_only_the_keys_portico_reads() -> None:
    # Credentials beside the CA bundle are dropped at parse time, valid or not.
    raw = opaque_secret(**{"ca.crt": "CA", "password": "hunter2", "token": "t"})
    raw["data"]["broken"] = "!!!"
    raw["stringData"] = {"auth-extra": "x", "other": "y"}
    obj = parse_object(raw)
    assert isinstance(obj, Secret)
    assert obj.data == {"ca.crt": b"CA"}


YAML_MANIFEST = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  creationTimestamp: 2024-01-02T03:04:05Z
  annotations:
    nginx.ingress.kubernetes.io/ssl-redirect: false
    portico.dev/proxy-read-timeout: 30
spec:
  ingressClassName: portico
  rules:
  - host: a.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: web, port: {number: "80"}}}
"""


def test_yaml_form_ingress() -> None:
    obj = parse_object(yaml.safe_load(YAML_MANIFEST))
    assert isinstance(obj, Ingress)
    assert obj.namespace == "default"  # as `kubectl apply` would place it
    assert obj.creation_timestamp == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert obj.annotations == {
        "nginx.ingress.kubernetes.io/ssl-redirect": "false",
        "portico.dev/proxy-read-timeout": "30",
    }
    svc = obj.rules[0].paths[0].backend.service
    assert svc is not None and svc.port == 80


def test_unknown_fields_are_tolerated() -> None:
    raw: dict[str, Any] = service()
    raw["status"] = {"loadBalancer": {}}
    raw["spec"]["sessionAffinity"] = "None"
    raw["metadata"]["managedFields"] = [{"x": 1}]
    assert isinstance(parse_object(raw), Service)


def test_equal_objects_compare_equal() -> None:
    assert parse_object(ingress()) == parse_object(ingress())
    assert parse_object(ingress()) != parse_object(ingress(annotations={"a": "b"}))


def _with(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    target = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[parts[-1]] = value
    return raw


BAD_ROWS: list[tuple[str, dict[str, Any], str]] = [
    # (id, raw, substring of the error: kind, ref and field)
    ("no-name", _with(service(), "metadata.name", None), "Service <unnamed>: field metadata.name"),
    ("no-kind", {"metadata": {"name": "x"}}, "field kind"),
    (
        "rules-not-a-list",
        _with(ingress(), "spec.rules", {"host": "a"}),
        "Ingress default/web: field spec.rules: expected a list",
    ),
    (
        "host-not-a-string",
        _with(ingress(), "spec.rules", [{"host": 5}]),
        "field spec.rules[0].host: expected a string",
    ),
    (
        "port-number-not-int",
        _with(
            ingress(rules=[rule("a", path("/", "web", 80))]),
            "spec.rules.0.http.paths.0.backend.service.port.number",
            "eighty",
        ),
        "spec.rules[0].http.paths[0].backend.service.port.number",
    ),
    (
        "backend-without-service-name",
        _with(ingress(), "spec.defaultBackend", {"service": {"port": {"number": 80}}}),
        "spec.defaultBackend.service.name",
    ),
    ("service-port-missing", _with(service(), "spec.ports", [{"name": "x"}]), "spec.ports[0].port"),
    (
        "slice-condition-not-bool",
        _with(
            endpoint_slice(),
            "endpoints",
            [{"addresses": ["1.2.3.4"], "conditions": {"ready": "yes"}}],
        ),
        "endpoints[0].conditions.ready",
    ),
    (
        "secret-bad-base64",
        _with(opaque_secret(), "data", {"ca.crt": "!!!"}),
        "data.ca.crt: not valid base64",
    ),
    (
        "old-ingress-api",
        _with(ingress(), "apiVersion", "extensions/v1beta1"),
        "unsupported Ingress apiVersion",
    ),
    ("bad-timestamp", _with(ingress(), "metadata.creationTimestamp", "yesterday"), "RFC 3339"),
]


@pytest.mark.parametrize(
    ("raw", "message"), [pytest.param(*row[1:], id=row[0]) for row in BAD_ROWS]
)
def test_parse_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ObjectParseError) as info:
        parse_object(raw)
    assert message in str(info.value)
