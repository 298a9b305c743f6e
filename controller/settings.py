"""Process settings: every flag of `portico serve` / `portico controller`, in one frozen model.

The CLI builds a `Settings` from flags, else `PORTICO_<FIELD>` environment variables, else the
defaults below, then splits it: `proxy_settings()` goes to every worker, `compile_settings()` to
the compiler, the rest (ports, manifests, workers, logging, and in cluster mode what to watch and
how to report back: `CLUSTER_FIELDS`) to the composition root, `controller/app.py`. The
data-plane fields are generated from `proxy.settings.ProxySettings` so names and defaults never
drift. The cluster defaults that come from the pod (namespace, name) are read from the
Downward-API environment variables `POD_NAMESPACE` and `POD_NAME` when not given.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import socket
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from proxy.settings import ProxySettings

if TYPE_CHECKING:
    from controller.compiler import CompileSettings

ENV_PREFIX: Final = "PORTICO_"

LogLevel = Literal["debug", "info", "warning", "error"]

# Help text of the data-plane flags. A field added to ProxySettings without an entry here still
# becomes a flag (with a generic help text), so the two can never disagree on names or defaults.
_PROXY_HELP: Final[Mapping[str, str]] = {
    "bind_address": "Address the public HTTP/HTTPS listeners bind to.",
    "http_port": "Public plain-HTTP port; 0 disables the listener.",
    "https_port": "Public HTTPS port; 0 disables the listener.",
    "max_header_bytes": "Largest request line + headers in bytes; 414/431 beyond.",
    "max_headers": "Most request header fields; 431 beyond.",
    "max_body_bytes": (
        "Largest request body in bytes, for routes without a proxy-body-size annotation; 413 "
        "beyond; 0 = unlimited (default 1 MiB, as ingress-nginx's proxy-body-size)."
    ),
    "max_connections": "Most open client connections per worker.",
    "client_header_timeout": "Seconds from a request's first byte to the end of its head.",
    "client_body_timeout": "Seconds allowed between two reads of a request body.",
    "keepalive_timeout": "Seconds a client connection may stay idle between two requests.",
    "upstream_connect_timeout": "Seconds to connect to a pod.",
    "upstream_send_timeout": "Seconds allowed between two writes of a request body to a pod.",
    "upstream_read_timeout": "Seconds to wait for a response head, and between two body reads.",
    "upstream_keepalive_timeout": "Seconds an idle pooled upstream connection is kept.",
    "upstream_keepalive_max": (
        "Idle pooled connections kept per endpoint for upstream-keepalive-timeout; more are "
        "kept only 1 s (a burst of HTTP/2 streams returns them just before reusing them)."
    ),
    "upstream_keepalive_time": "Seconds an upstream connection is reused (then closed once idle).",
    "upstream_max_attempts": "Distinct endpoints tried when connecting fails.",
    "ejection_base": "Seconds an endpoint is ejected after a connect failure (doubles).",
    "ejection_max": "Cap, in seconds, of the doubling ejection time.",
    "tunnel_idle_timeout": "Seconds an upgraded (WebSocket) connection may stay idle.",
    "trusted_proxies": (
        "Comma-separated client networks (CIDR) whose X-Forwarded-* headers are trusted and "
        "extended; from any other client they are overwritten."
    ),
    "proxy_protocol": (
        "Every connection on the HTTP and HTTPS listeners begins with a PROXY protocol header "
        "(v1 or v2, as load balancers send it); its source address is the client's. A "
        "connection without a valid header is closed (ingress-nginx's use-proxy-protocol)."
    ),
    "enable_ssl_passthrough": (
        "Let Ingresses with the ssl-passthrough annotation take their hosts' HTTPS connections "
        "unterminated: the HTTPS listener reads the server name (SNI) of each new connection "
        "and splices those of passthrough hosts to a pod (ingress-nginx's "
        "--enable-ssl-passthrough). Off: the annotation is reported and ignored."
    ),
    "access_log": "Log one line per request (--access-log off, or --no-access-log, to stop).",
    "metrics_ingress_nginx_names": (
        "Also expose /metrics under ingress-nginx's metric names and labels, for existing "
        "dashboards."
    ),
    "tls_min_version": 'Oldest TLS version the HTTPS listener accepts: "1.2" or "1.3".',
    "hsts": "Send Strict-Transport-Security on HTTPS responses.",
    "hsts_max_age": "max-age, in seconds, of the Strict-Transport-Security header.",
    "hsts_include_subdomains": "Add includeSubDomains to the Strict-Transport-Security header.",
    "http2": "Offer HTTP/2 (ALPN h2) on the HTTPS listener (--no-http2: HTTP/1.1 only).",
    "h2c": (
        "Also accept cleartext HTTP/2 with prior knowledge on the HTTP listener, told from "
        "HTTP/1.1 by the connection preface."
    ),
    "http2_max_requests": (
        "Streams served on one HTTP/2 connection before a graceful GOAWAY (ingress-nginx's "
        "http2-max-requests)."
    ),
    "http2_max_concurrent_streams": (
        "Streams a client may have open at once on one HTTP/2 connection (announced as "
        "SETTINGS_MAX_CONCURRENT_STREAMS; more are refused; ingress-nginx's "
        "http2-max-concurrent-streams)."
    ),
    "shutdown_delay": (
        "Seconds listeners stay open after SIGTERM (readiness already failing) so load "
        "balancers notice."
    ),
    "drain_timeout": "Seconds in-flight requests get to finish after the shutdown delay.",
}

# Lower bounds beyond "not negative"; ports also get an upper bound.
_PROXY_MINIMUM: Final[Mapping[str, int]] = {
    "max_header_bytes": 1,
    "max_headers": 1,
    "max_connections": 1,
    "upstream_max_attempts": 1,
    "http2_max_requests": 1,
    "http2_max_concurrent_streams": 1,
}


def _proxy_field(name: str, annotation: Any, default: Any) -> tuple[Any, FieldInfo]:
    description = _PROXY_HELP.get(name, f"Data-plane setting `{name}` (proxy/settings.py).")
    constraints: dict[str, Any] = {}
    if annotation in (int, float):
        constraints["ge"] = _PROXY_MINIMUM.get(name, 0)
        if name.endswith("_port"):
            constraints["le"] = 65535
    return annotation, Field(default=default, description=description, **constraints)


def _proxy_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ProxySettings)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(ProxySettings):
        fields[f.name] = _proxy_field(f.name, hints[f.name], f.default)
    return fields


if TYPE_CHECKING:
    # For the type checker only: the generated fields carry ProxySettings' own annotations.
    class _ProxyFields(BaseModel, ProxySettings, frozen=True):
        pass

else:
    _ProxyFields = create_model(
        "_ProxyFields", __config__=ConfigDict(frozen=True, extra="forbid"), **_proxy_fields()
    )

PROXY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ProxySettings))

_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

DEFAULT_ELECTION_ID: Final = "portico-leader"

# The settings only `portico controller` (cluster mode) reads: `portico serve` neither shows
# them nor reads their environment variables.
CLUSTER_FIELDS: Final = (
    "kubeconfig",
    "watch_namespaces",
    "publish_service",
    "publish_status_address",
    "election_id",
    "election_namespace",
    "lease_duration",
    "renew_deadline",
    "retry_period",
    "pod_name",
    "watch_timeout",
    "max_backoff",
    "events",
)

# Comma-separated lists, in flags and environment variables alike.
_LISTS: Final = (
    "trusted_proxies",
    "allow_source_ranges",
    "deny_source_ranges",
    "allowed_response_headers",
    "watch_namespaces",
    "publish_status_address",
    "ingress_class",
    "controller_name",
)


def _pod_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or "default"


def _pod_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def _canonical_networks(networks: tuple[str, ...]) -> tuple[str, ...]:
    """CIDR strings as the snapshot's source-range steps hold them (host bits cleared)."""
    nets = {ipaddress.ip_network(n, strict=False) for n in networks}
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n)))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class SettingsError(ValueError):
    """Invalid settings; the message names the flag or environment variable and the reason."""


class Settings(_ProxyFields, frozen=True, extra="forbid"):
    """Everything `portico serve` takes. Data-plane fields come from ProxySettings."""

    manifests: Path | None = Field(
        default=None,
        description=(
            "Directory of YAML manifests (Ingress, IngressClass, Service, EndpointSlice, Secret, "
            "ConfigMap) "
            "to serve instead of a cluster; watched for changes."
        ),
    )
    # Lists, so that one controller can serve its own class and take over another's (ingress-
    # nginx's "nginx" class, controller k8s.io/ingress-nginx); the first of each is Portico's
    # own, which metrics are labelled with.
    ingress_class: tuple[str, ...] = Field(
        default=("portico",),
        min_length=1,
        description=(
            "Comma-separated values of the legacy kubernetes.io/ingress.class annotation this "
            "controller serves (spec.ingressClassName goes by --controller-name)."
        ),
    )
    controller_name: tuple[str, ...] = Field(
        default=("portico.dev/ingress-controller",),
        min_length=1,
        description=(
            "Comma-separated spec.controller values: Ingresses whose IngressClass names one are "
            "served (add k8s.io/ingress-nginx to take over ingress-nginx's classes)."
        ),
    )
    watch_ingress_without_class: bool = Field(
        default=False,
        description="Also serve Ingresses that name no class (when no class is marked default).",
    )
    ssl_redirect: bool = Field(
        default=True,
        description=(
            "Redirect plain-HTTP requests for hosts with TLS to HTTPS (308), for every Ingress "
            "without an ssl-redirect annotation."
        ),
    )
    nginx_configmap: str | None = Field(
        default=None,
        description=(
            "namespace/name of the ingress-nginx controller ConfigMap: its keys (proxy-body-size, "
            "proxy-read-timeout, hsts, ssl-redirect, ...) are defaults below flags and PORTICO_* "
            "variables; the others are reported. Watched in cluster mode; read from --manifests "
            "at start by portico serve."
        ),
    )
    allow_external_name: bool = Field(
        default=False,
        description="Allow backends that are ExternalName Services (resolved through DNS).",
    )
    serve_without_access_control: bool = Field(
        default=False,
        description=(
            "Serve Ingresses whose access-control annotations (auth-*, auth-tls-*, satisfy, "
            "...) Portico does not enforce yet, unprotected, instead of answering their "
            "requests with 403 (fail closed); each is logged as a warning at every compile."
        ),
    )
    allow_source_ranges: tuple[str, ...] = Field(
        default=(),
        description=(
            "Comma-separated client networks (CIDR) or addresses allowed to reach every Ingress "
            "without an allowlist-source-range (or whitelist-source-range) annotation; others "
            "get 403. Default: every client (ingress-nginx's whitelist-source-range key)."
        ),
    )
    deny_source_ranges: tuple[str, ...] = Field(
        default=(),
        description=(
            "Comma-separated client networks (CIDR) or addresses refused (403) by every Ingress "
            "without a denylist-source-range annotation (ingress-nginx's denylist-source-range "
            "key)."
        ),
    )
    service_upstream: bool = Field(
        default=False,
        description=(
            "Send to each Service's cluster IP and port instead of its endpoints, for every "
            "Ingress without a service-upstream annotation (ingress-nginx's service-upstream key)."
        ),
    )
    proxy_set_headers: str | None = Field(
        default=None,
        description=(
            "namespace/name of a ConfigMap whose entries are request header fields sent to every "
            "pod, replacing the client's (ingress-nginx's proxy-set-headers key)."
        ),
    )
    allowed_response_headers: tuple[str, ...] = Field(
        default=(),
        description=(
            "Comma-separated response header names a custom-headers ConfigMap may set; an "
            "Ingress whose ConfigMap sets another answers 503 (ingress-nginx's "
            "global-allowed-response-headers key)."
        ),
    )
    limit_req_status_code: int = Field(
        default=503,
        ge=400,
        le=599,
        description=(
            "Status of the requests the limit-rps / limit-rpm annotations refuse "
            "(ingress-nginx's limit-req-status-code key)."
        ),
    )
    limit_conn_status_code: int = Field(
        default=503,
        ge=400,
        le=599,
        description=(
            "Status of the requests the limit-connections annotation refuses "
            "(ingress-nginx's limit-conn-status-code key)."
        ),
    )
    limit_rate: int = Field(
        default=0,
        ge=0,
        le=999_999_999,
        description=(
            "Kilobytes per second at which each proxied response is sent to the client, for "
            "Ingresses without the limit-rate annotation; 0: no limit (ingress-nginx's "
            "limit-rate key)."
        ),
    )
    limit_rate_after: int = Field(
        default=0,
        ge=0,
        le=999_999_999,
        description=(
            "Kilobytes of each response sent before limit-rate applies, for Ingresses without "
            "the limit-rate-after annotation (ingress-nginx's limit-rate-after key)."
        ),
    )
    default_certificate: str | None = Field(
        default=None,
        description=(
            "namespace/name of a kubernetes.io/tls Secret served when no Ingress certificate "
            "matches; default: a self-signed certificate generated at start."
        ),
    )
    default_certificate_file: Path | None = Field(
        default=None,
        description=(
            "Manifest mode: PEM certificate chain file of the default certificate "
            "(with --default-certificate-key-file), instead of a Secret."
        ),
    )
    default_certificate_key_file: Path | None = Field(
        default=None,
        description="Manifest mode: PEM private key file of the default certificate.",
    )
    admin_port: int = Field(
        default=10254,
        ge=0,
        le=65535,
        description="Port of the admin listener (/healthz, /readyz, /metrics); 0 disables it.",
    )
    admin_address: str = Field(
        default="127.0.0.1", description="Address the admin listener binds to."
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Worker processes; default (or 'auto'): one per CPU of the cgroup's CPU quota (else"
            " per usable CPU), at most as many as the cgroup's memory limit holds."
        ),
    )
    log_level: LogLevel = Field(default="info", description="Least severe level logged.")

    # ---- cluster mode (CLUSTER_FIELDS) -----------------------------------------------------------
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig file; unset: the in-cluster service account."
    )
    # One list+watch per namespace and kind.
    watch_namespaces: tuple[str, ...] = Field(
        default=(), description="Comma-separated namespaces to watch; empty: all namespaces."
    )
    publish_service: str | None = Field(
        default=None,
        description=(
            "namespace/name of the Service whose load-balancer address goes into the status of "
            "every Ingress Portico owns."
        ),
    )
    # Wins over publish_service when both are set.
    publish_status_address: tuple[str, ...] = Field(
        default=(),
        description="Comma-separated IPs or hostnames to publish instead of a Service's address.",
    )
    election_id: str = Field(
        default=DEFAULT_ELECTION_ID, description="Name of the leader-election Lease."
    )
    # The pod's own values are checked too (validate_default), as given ones are.
    election_namespace: str = Field(
        default_factory=_pod_namespace,
        validate_default=True,
        description="Namespace of the Lease (default: $POD_NAMESPACE, else default).",
    )
    # Lease timing (seconds), as client-go: a leader that could not renew for renew_deadline
    # steps down; followers take over lease_duration after the last renewal they saw.
    lease_duration: float = Field(
        default=15.0, description="Seconds a Lease is valid without renewal."
    )
    renew_deadline: float = Field(
        default=10.0, description="Seconds a leader keeps trying to renew before it steps down."
    )
    retry_period: float = Field(
        default=2.0, description="Seconds between leader-election attempts."
    )
    pod_name: str = Field(
        default_factory=_pod_name,
        validate_default=True,
        min_length=1,
        description="Leader-election identity (default: $POD_NAME, else the hostname).",
    )
    # Jittered by up to 25% per watch. The client read timeout is this plus a margin, which is
    # what detects a silently dead stream.
    watch_timeout: float = Field(
        default=270.0, ge=1, description="Server-side timeout of each watch request, seconds."
    )
    max_backoff: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait between retries of failed API calls, seconds.",
    )
    events: bool = Field(
        default=True,
        description="Turn configuration problems into Kubernetes Events (leader only).",
    )

    @field_validator(*_LISTS, mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("ingress_class", "controller_name")
    @classmethod
    def _check_class_values(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item or any(c.isspace() for c in item):
                raise ValueError(f"{item!r} is not a class or controller value")
        return value

    @field_validator("trusted_proxies", "allow_source_ranges", "deny_source_ranges")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not an IP network: {exc}") from None
        return value

    @field_validator("tls_min_version", check_fields=False)
    @classmethod
    def _check_tls_version(cls, value: str) -> str:
        if value not in ("1.2", "1.3"):
            raise ValueError(f"{value!r} is not a TLS version Portico accepts (1.2 or 1.3)")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

    @model_validator(mode="after")
    def _check_certificate_files(self) -> Settings:
        files = (self.default_certificate_file, self.default_certificate_key_file)
        if (files[0] is None) != (files[1] is None):
            raise ValueError(
                "--default-certificate-file and --default-certificate-key-file go together"
            )
        if files[0] is not None and self.default_certificate is not None:
            raise ValueError(
                "give either --default-certificate (a Secret) or the certificate files, not both"
            )
        return self

    @field_validator(
        "manifests",
        "default_certificate",
        "default_certificate_file",
        "default_certificate_key_file",
        "kubeconfig",
        "publish_service",
        "nginx_configmap",
        "proxy_set_headers",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("default_certificate")
    @classmethod
    def _check_ref(cls, value: str | None) -> str | None:
        if value is not None and not _REF.match(value):
            raise ValueError(f"{value!r} is not a Secret reference of the form namespace/name")
        return value

    @field_validator("admin_address", "bind_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("watch_namespaces")
    @classmethod
    def _check_namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for namespace in value:
            if not _DNS_LABEL.match(namespace):
                raise ValueError(f"watch namespace {namespace!r} is not a valid namespace name")
        return value

    @field_validator("nginx_configmap", "proxy_set_headers")
    @classmethod
    def _check_configmap(cls, value: str | None) -> str | None:
        if value is not None and not _REF.match(value):
            raise ValueError(f"{value!r} is not a ConfigMap reference of the form namespace/name")
        return value

    @field_validator("publish_service")
    @classmethod
    def _check_publish_service(cls, value: str | None) -> str | None:
        if value is not None:
            namespace, _, name = value.partition("/")
            if not (_DNS_LABEL.match(namespace) and _DNS_LABEL.match(name)):
                raise ValueError(f"publish service {value!r} is not of the form namespace/name")
        return value

    @field_validator("publish_status_address")
    @classmethod
    def _check_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not (_is_ip(address) or _DNS_NAME.match(address.lower())):
                raise ValueError(f"publish status address {address!r} is not an IP or hostname")
        return value

    @field_validator("election_id")
    @classmethod
    def _check_election_id(cls, value: str) -> str:
        if not _DNS_NAME.match(value):
            raise ValueError(f"election id {value!r} is not a valid Lease name")
        return value

    @field_validator("election_namespace")
    @classmethod
    def _check_election_namespace(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"election namespace {value!r} is not a valid namespace name")
        return value

    @model_validator(mode="after")
    def _check_lease_timing(self) -> Settings:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < --retry-period < --renew-deadline < --lease-duration"
            )
        return self

    def proxy_settings(self) -> ProxySettings:
        """The data-plane part, handed to every worker."""
        return ProxySettings(**{name: getattr(self, name) for name in PROXY_FIELDS})

    def compile_settings(self) -> CompileSettings:
        """The part the compiler needs to decide which Ingresses are ours and what they may do."""
        from controller.compiler import CompileSettings

        return CompileSettings(
            ingress_classes=self.ingress_class,
            controller_names=self.controller_name,
            watch_ingress_without_class=self.watch_ingress_without_class,
            allow_external_name=self.allow_external_name,
            default_certificate=self.default_certificate,
            serve_without_access_control=self.serve_without_access_control,
            ssl_redirect=self.ssl_redirect,
            ssl_passthrough=self.enable_ssl_passthrough,
            allow_source_ranges=_canonical_networks(self.allow_source_ranges),
            deny_source_ranges=_canonical_networks(self.deny_source_ranges),
            service_upstream=self.service_upstream,
            proxy_set_headers=self.proxy_set_headers,
            allowed_response_headers=self.allowed_response_headers,
            limit_req_status_code=self.limit_req_status_code,
            limit_conn_status_code=self.limit_conn_status_code,
            limit_rate=self.limit_rate * 1024,
            limit_rate_after=self.limit_rate_after * 1024,
        )

    @property
    def lease_duration_seconds(self) -> int:
        """leaseDurationSeconds is an integer in the API; round up so we never claim less."""
        return max(1, math.ceil(self.lease_duration))

    def publish_service_ref(self) -> tuple[str, str] | None:
        """`--publish-service` as (namespace, name)."""
        if self.publish_service is None:
            return None
        namespace, _, name = self.publish_service.partition("/")
        return namespace, name

    def publish_addresses(self) -> tuple[tuple[str | None, str | None], ...]:
        """`--publish-status-address` as (ip, hostname) pairs."""
        return tuple(
            (a, None) if _is_ip(a) else (None, a.lower()) for a in self.publish_status_address
        )

    @classmethod
    def from_sources(
        cls,
        flags: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        fields: Iterable[str] | None = None,
    ) -> Settings:
        """Flags win over `PORTICO_<FIELD>` environment variables, which win over defaults.

        `flags` holds only the flags actually given (field name -> value); the environment is
        read for `fields` only (default: all), so that a command ignores the variables of
        settings it does not take. Raises SettingsError.
        """
        environ = os.environ if environ is None else environ
        read = set(cls.model_fields if fields is None else fields)
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name in cls.model_fields:
            if name in flags:
                values[name] = flags[name]
                origin[name] = flag_name(name)
            elif name in read and (env := env_name(name)) in environ:
                values[name] = environ[env]
                origin[name] = env
        unknown = set(flags) - set(cls.model_fields)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**values)
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                if not error["loc"]:  # a rule across fields: its message names them
                    lines.append(error["msg"])
                    continue
                name = str(error["loc"][0])
                # Not given: a default read from the pod's environment (POD_NAMESPACE).
                source = origin.get(name, f"default {flag_name(name)}")
                given = values[name] if name in values else error.get("input")
                lines.append(f"{source}={given!s}: {error['msg']}")
            raise SettingsError("invalid settings: " + "; ".join(lines)) from None


# What `portico serve` (manifest mode) takes: everything but the cluster settings.
SERVE_FIELDS: Final = tuple(name for name in Settings.model_fields if name not in CLUSTER_FIELDS)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


_METAVARS: Final[Mapping[str, str]] = {
    "trusted_proxies": "CIDR,...",
    "allow_source_ranges": "CIDR,...",
    "deny_source_ranges": "CIDR,...",
    "manifests": "DIR",
    "nginx_configmap": "NAMESPACE/NAME",
    "ingress_class": "CLASS,...",
    "controller_name": "CONTROLLER,...",
    "default_certificate": "NAMESPACE/NAME",
    "default_certificate_file": "FILE",
    "default_certificate_key_file": "FILE",
    "log_level": "LEVEL",
    "workers": "N",
    "kubeconfig": "FILE",
    "watch_namespaces": "NAMESPACE,...",
    "publish_service": "NAMESPACE/NAME",
    "publish_status_address": "ADDRESS,...",
    "election_id": "NAME",
    "election_namespace": "NAMESPACE",
    "pod_name": "NAME",
    str(int): "N",
    str(float): "SECONDS",
}


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


_ON: Final = frozenset({"on", "true", "yes", "1"})
_OFF: Final = frozenset({"off", "false", "no", "0"})


class _Switch(argparse.Action):
    """A boolean flag: `--x`, `--no-x`, or `--x on|off` (nginx's spelling, e.g. `--access-log
    off`)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        names = list(option_strings)
        names += ["--no-" + o[2:] for o in option_strings if o.startswith("--")]
        super().__init__(names, dest, nargs="?", metavar="on|off", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        negated = option_string is not None and option_string.startswith("--no-")
        if values is None:
            value = not negated
        elif negated:
            parser.error(f"{option_string} takes no value")
        elif str(values).lower() in _ON:
            value = True
        elif str(values).lower() in _OFF:
            value = False
        else:
            parser.error(f"{option_string}: expected on or off, got {values!r}")
        setattr(namespace, self.dest, value)


class SettingsHelpFormatter(argparse.HelpFormatter):
    """Shows a switch as `--x [on|off], --no-x`: the negated form takes no value."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Switch):
            names = action.option_strings
            shown = [f"{o} [on|off]" for o in names if not o.startswith("--no-")]
            return ", ".join(shown + [o for o in names if o.startswith("--no-")])
        return super()._format_action_invocation(action)


def add_settings_arguments(
    parser: argparse.ArgumentParser, fields: Iterable[str] | None = None
) -> None:
    """Add one flag per Settings field (or per field in `fields`), help from its description.

    Flags default to "not given" so `Settings.from_sources` can fall back to the environment.
    """
    names = list(Settings.model_fields) if fields is None else list(fields)
    for name in names:
        info = Settings.model_fields[name]
        default = info.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{info.description} [env {env_name(name)}; default: {shown}]"
        if info.default_factory is not None:  # the description says where it comes from
            help_text = f"{info.description} [env {env_name(name)}]"
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        if _is_bool(info):
            kwargs["action"] = _Switch
        else:
            kwargs["metavar"] = _METAVARS.get(name) or _METAVARS.get(str(info.annotation), "VALUE")
        parser.add_argument(flag_name(name), **kwargs)


def settings_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    fields: Iterable[str] | None = None,
) -> Settings:
    """The Settings the parsed flags (added by `add_settings_arguments`) describe; the
    environment is read for `fields` only (default: all)."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    return Settings.from_sources(given, environ, fields)
