"""Compiler settings: which Ingresses are ours and which backends we allow.

A small frozen value the controller builds from its flags; the compiler reads nothing else
from the environment, so a compile is a pure function of the store and these settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import ExternalAuth, Refuse


@dataclass(frozen=True)
class CompileSettings:
    # Legacy `kubernetes.io/ingress.class` annotation values we answer to (`--ingress-class`).
    ingress_classes: tuple[str, ...] = ("portico",)
    # `spec.controller` values of the IngressClasses that are ours (`--controller-name`);
    # "k8s.io/ingress-nginx" among them takes over ingress-nginx's classes.
    controller_names: tuple[str, ...] = ("portico.dev/ingress-controller",)
    # Take Ingresses with neither a class name nor the legacy annotation.
    watch_ingress_without_class: bool = False
    # ExternalName Services let an Ingress send traffic to any DNS name; off unless the operator
    # opts in, since it lets a namespace owner reach hosts outside the cluster through us.
    allow_external_name: bool = False
    # "namespace/name" of a kubernetes.io/tls Secret served when no host certificate matches
    # (`--default-certificate`); None: the workers' self-signed certificate.
    default_certificate: str | None = None
    # Serve Ingresses whose access-control annotations Portico does not enforce yet (auth-*,
    # satisfy, ...) instead of answering their requests with 403 (fail closed); off by default.
    serve_without_access_control: bool = False
    # Redirect plain HTTP to HTTPS on hosts with TLS unless an Ingress's ssl-redirect annotation
    # says otherwise (`--ssl-redirect`, the ingress-nginx ConfigMap's `ssl-redirect`).
    ssl_redirect: bool = True
    # `--enable-ssl-passthrough`: hosts of Ingresses with the ssl-passthrough annotation become
    # `Snapshot.passthrough` entries; off, the annotation is a problem and does nothing.
    ssl_passthrough: bool = False
    # Keys of the ingress-nginx ConfigMap holding access control for every Ingress that Portico
    # does not enforce (block-cidrs, block-user-agents, ...): unless
    # serve_without_access_control, every route answers 403 (fail closed).
    unenforced_global_access: tuple[str, ...] = ()
    # The source ranges of every Ingress without its own annotation of that kind (canonical
    # CIDR strings; `--allow-source-ranges`, `--deny-source-ranges`, the ingress-nginx
    # ConfigMap's whitelist-source-range and denylist-source-range); empty: none.
    allow_source_ranges: tuple[str, ...] = ()
    deny_source_ranges: tuple[str, ...] = ()
    # The ConfigMap's whitelist-source-range / denylist-source-range did not read: an Ingress
    # that would take that list answers 503 InvalidSourceRange (fail closed, as one whose own
    # annotation does not read) rather than being served without the restriction.
    invalid_allow_source_ranges: bool = False
    invalid_deny_source_ranges: bool = False
    # The default of the service-upstream annotation (`--service-upstream`, the ingress-nginx
    # ConfigMap's `service-upstream`): the Service's cluster IP instead of its endpoints.
    service_upstream: bool = False
    # "namespace/name" of a ConfigMap of request fields sent to every pod
    # (`--proxy-set-headers`, the ingress-nginx ConfigMap's `proxy-set-headers`); None: none.
    proxy_set_headers: str | None = None
    # The response fields a custom-headers ConfigMap may set (`--allowed-response-headers`, the
    # ingress-nginx ConfigMap's `global-allowed-response-headers`); empty: none.
    allowed_response_headers: tuple[str, ...] = ()
    # The ingress-nginx ConfigMap's global-auth-url (with its global-auth-* keys): the external
    # auth of every Ingress without auth-url and without enable-global-auth "false"; a Refuse
    # (503) when those keys do not read; None: none.
    global_auth: ExternalAuth | Refuse | None = None
    # The answers of refused requests of the rate limits (`--limit-req-status-code`,
    # `--limit-conn-status-code`, the ingress-nginx ConfigMap's keys of those names).
    limit_req_status_code: int = 503
    limit_conn_status_code: int = 503
    # limit-rate / limit-rate-after, in bytes, of every Ingress without those annotations
    # (`--limit-rate`, `--limit-rate-after`, the ingress-nginx ConfigMap's keys); 0: none.
    limit_rate: int = 0
    limit_rate_after: int = 0

    def configmaps(self) -> tuple[tuple[str, str], ...]:
        """(namespace, name) of the ConfigMaps these settings name."""
        if self.proxy_set_headers is None:
            return ()
        namespace, _, name = self.proxy_set_headers.partition("/")
        return ((namespace, name),)
