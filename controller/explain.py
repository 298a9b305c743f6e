"""`portico explain`: where one request would go, or why it would go nowhere.

A pure function of a compile result, the store it came from and a request (URL + headers). It
looks the request up with the data plane's own `Router`, so the answer is what a worker would
do: the Ingress, rule, backend and endpoints, or a CamelCase reason for a miss. A miss is also
checked against the Ingresses that are not ours (another class), by compiling those alone as if
they were ours, so "you named the wrong class" is told apart from "no rule matches".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.problems import SERVICE_NOT_FOUND
from controller.objects import Ingress, IngressClass
from controller.store import Store, WatchEvent
from proxy.config import (
    HostRedirect,
    HTTPSRedirect,
    PathRule,
    Redirect,
    Refuse,
    RouteTable,
    Snapshot,
)
from proxy.table import Router

SSL_REDIRECT: Final = "SSLRedirect"
URL_REDIRECT: Final = "Redirect"  # permanent-redirect, temporal-redirect
WWW_REDIRECT: Final = "FromToWWWRedirect"  # the other name of a host
NO_HOST_MATCH: Final = "NoHostMatch"
NO_PATH_MATCH: Final = "NoPathMatch"
NO_ENDPOINTS: Final = "NoEndpoints"
CLASS_NOT_OURS: Final = "IngressClassNotOurs"

# Keys of the JSON answer, in output order.
# "match": how the rule's path matched ("exact", "prefix", or "regex": a use-regex host), None
# for a default backend.
KEYS: Final = (
    "status",
    "ingress",
    "host",
    "path",
    "pathType",
    "match",
    "service",
    "port",
    "endpoints",
)

_LEGACY_CLASS_ANNOTATION: Final = "kubernetes.io/ingress.class"
_PROBE_CLASS: Final = "portico-explain-probe"


class RequestError(ValueError):
    """The URL or a header cannot describe an HTTP request."""


def request_parts(url: str, headers: Mapping[str, str]) -> tuple[str, str, str]:
    """(scheme, host, path) of a request: the Host header wins over the URL's authority.

    The host is passed to the Router as received; it normalizes it as the proxy does.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not (parts.netloc or headers):
        raise RequestError(f"{url!r} is not an http:// or https:// URL")
    host_header = next((v for k, v in headers.items() if k.lower() == "host"), None)
    host = host_header if host_header is not None else parts.netloc.rpartition("@")[2]
    return parts.scheme, host.strip(), parts.path or "/"


def _answer(status: int, reason: str | None, **values: Any) -> dict[str, Any]:
    doc: dict[str, Any] = dict.fromkeys(KEYS)
    doc["endpoints"] = []
    doc.update(values)
    doc["status"] = status
    doc["reason"] = reason
    return doc


def explain(
    result: CompileResult, store: Store, url: str, headers: Mapping[str, str]
) -> dict[str, Any]:
    """The JSON answer of `portico explain` (keys: KEYS + "reason")."""
    scheme, host, path = request_parts(url, headers)
    routes = result.snapshot.routes
    match = Router(routes).explain(host, path)
    rule = match.rule
    if rule is None:
        foreign = _foreign_ingress(result, store, host, path)
        if foreign is not None:
            return _answer(404, CLASS_NOT_OURS, ingress=foreign)
        vhost = match.virtual_host
        reason = match.reason or NO_HOST_MATCH
        return _answer(404, reason, host=(vhost.host or None) if vhost is not None else None)

    vhost = match.virtual_host
    is_default = rule is routes.default or (vhost is not None and rule is vhost.fallback)
    on_host = vhost is not None and rule is not routes.default
    # The path as the Ingress wrote it (rule.path is normalized for matching: a Prefix "/foo/"
    # matches as "/foo"); the compiler keeps it for every routed rule.
    written = (
        None
        if is_default or vhost is None
        # (none for the rule of a from-to-www name, which no Ingress wrote)
        else result.written_paths.get((vhost.host, rule.path, rule.match))
    )
    where: dict[str, Any] = {
        "ingress": rule.ingress,
        "host": (vhost.host or None) if on_host and vhost is not None else None,
        "path": written,
        "pathType": None if is_default else rule.path_type,
        "match": None if is_default else rule.match,
        "service": rule.service,
        "port": rule.port,
    }
    # The first step that answers whatever the client, in the policy's order (as a worker runs
    # them); source ranges depend on the client and are not judged here.
    for step in rule.options.policy:
        if isinstance(step, Redirect):
            return _answer(step.status, URL_REDIRECT, **where)
        if isinstance(step, HostRedirect):
            return _answer(step.status, WWW_REDIRECT, **where)
        if isinstance(step, HTTPSRedirect) and scheme == "http":
            return _answer(step.status, SSL_REDIRECT, **where)
        if isinstance(step, Refuse):
            return _answer(step.status, step.reason, **where)
    return _backend_answer(result.snapshot, rule, where)


def _backend_answer(snapshot: Snapshot, rule: PathRule, where: dict[str, Any]) -> dict[str, Any]:
    backend = snapshot.backend_map().get(rule.backend)
    if backend is None:
        return _answer(503, SERVICE_NOT_FOUND, **where)
    if backend.unavailable is not None:
        return _answer(503, backend.unavailable, **where)
    if not backend.endpoints:
        return _answer(503, NO_ENDPOINTS, **where)
    endpoints = [e.authority for e in backend.ready_endpoints]
    return _answer(200, None, endpoints=endpoints, **where)


def _foreign_ingress(result: CompileResult, store: Store, host: str, path: str) -> str | None:
    """The Ingress, among those not ours, that would have taken this request if it were ours."""
    ignored = [
        obj
        for ref in sorted(result.ignored)
        if isinstance(obj := _get_ingress(store, ref), Ingress)
    ]
    if not ignored:
        return None
    routes = _routes_as_ours(ignored)
    rule = Router(routes).explain(host, path).rule
    return None if rule is None else rule.ingress


def _get_ingress(store: Store, ref: str) -> Ingress | None:
    namespace, _, name = ref.partition("/")
    obj = store.get("Ingress", namespace, name)
    return obj if isinstance(obj, Ingress) else None


def _routes_as_ours(ingresses: Iterable[Ingress]) -> RouteTable:
    """Compile Ingresses alone after re-pointing them at a class that is ours."""
    settings = CompileSettings()
    probe = Store()
    events = [
        WatchEvent(
            "ADDED",
            IngressClass(name=_PROBE_CLASS, controller=settings.controller_names[0]),
        )
    ]
    for ingress in ingresses:
        annotations = {
            k: v for k, v in ingress.annotations.items() if k != _LEGACY_CLASS_ANNOTATION
        }
        events.append(
            WatchEvent(
                "ADDED",
                ingress.model_copy(
                    update={"ingress_class_name": _PROBE_CLASS, "annotations": annotations}
                ),
            )
        )
    for event in events:
        probe.apply(event)
    return compile_view(probe, settings).snapshot.routes


def describe(answer: Mapping[str, Any], why_ignored: Mapping[str, str]) -> list[str]:
    """The text form of an answer, one line per fact."""
    lines = [f"status:    {answer['status']}"]
    reason = answer.get("reason")
    if answer.get("ingress"):
        lines.append(f"ingress:   {answer['ingress']}")
    if answer.get("host") or answer.get("pathType"):
        host = answer.get("host") or "(any host)"
        # An ImplementationSpecific rule may omit its path: shown as "" rather than nothing.
        path = '""' if answer.get("path") == "" else answer.get("path") or ""
        rule = f"{host} {path} {answer.get('pathType') or ''}".rstrip()
        if answer.get("match") == "regex":
            rule += ", matched as a regular expression (~* ^path)"
        lines.append(f"rule:      {rule}")
    elif answer.get("service") and answer.get("ingress"):
        lines.append("rule:      default backend")
    if answer.get("service"):
        lines.append(f"backend:   service {answer['service']} port {answer['port']}")
    if answer.get("endpoints"):
        lines.append(f"endpoints: {', '.join(answer['endpoints'])}")
    if reason is not None:
        lines.append(f"reason:    {reason}: {_REASON_TEXT.get(reason, '')}".rstrip(": "))
        if reason == CLASS_NOT_OURS and answer.get("ingress") in why_ignored:
            lines.append(f"           {why_ignored[answer['ingress']]}")
    return lines


_REASON_TEXT: Final[Mapping[str, str]] = {
    NO_HOST_MATCH: "no Ingress rule names this host and there is no default backend",
    NO_PATH_MATCH: "the host matched, but none of its paths and it has no default backend",
    NO_ENDPOINTS: "the Service has no ready (or terminating) endpoints",
    SERVICE_NOT_FOUND: "the backend Service does not exist",
    "ServicePortNotFound": "the Service has no port with that number or name",
    CLASS_NOT_OURS: "an Ingress of another class would match; Portico does not serve it",
    SSL_REDIRECT: "the host is listed under tls: plain HTTP is redirected to HTTPS",
}
