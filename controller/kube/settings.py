"""Cluster-mode settings: where the API server is, what to watch, how to report back.

`portico controller` builds one `ClusterSettings` from its flags (the data-plane and compiler
settings stay in `controller.settings.Settings`) and hands both to `run_controller`. Defaults
that come from the pod (namespace, name) are read from the Downward-API environment variables
`POD_NAMESPACE` and `POD_NAME` when the value is not given.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

DEFAULT_ELECTION_ID: Final = "portico-leader"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _pod_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or "default"


def _pod_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ClusterSettings:
    # Path of a kubeconfig file; None means the in-cluster service account.
    kubeconfig: Path | None = None
    # Namespaces to watch (one list+watch per namespace and kind); empty means all namespaces.
    watch_namespaces: tuple[str, ...] = ()
    # "namespace/name" of the Service whose status.loadBalancer becomes every owned Ingress's.
    publish_service: str | None = None
    # Fixed addresses (IPs or hostnames) to publish instead of a Service's; wins when both set.
    publish_status_address: tuple[str, ...] = ()
    election_id: str = DEFAULT_ELECTION_ID
    election_namespace: str = field(default_factory=_pod_namespace)
    # Lease timing (seconds), as client-go: a leader that could not renew for renew_deadline
    # steps down; followers take over lease_duration after the last renewal they saw.
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    pod_name: str = field(default_factory=_pod_name)
    # Server-side watch timeout (seconds, jittered by up to 25% per watch). The client read
    # timeout is this plus a margin, which is what detects a silently dead stream.
    watch_timeout: float = 270.0
    # Cap of the jittered exponential backoff between failed API calls (seconds).
    max_backoff: float = 30.0
    # Turn compiler problems into Kubernetes Events (leader only).
    events: bool = True

    def __post_init__(self) -> None:
        for ns in self.watch_namespaces:
            if not _DNS_LABEL.match(ns):
                raise ValueError(f"watch namespace {ns!r} is not a valid namespace name")
        if self.publish_service is not None:
            ns, _, name = self.publish_service.partition("/")
            if not (_DNS_LABEL.match(ns) and _DNS_LABEL.match(name)):
                raise ValueError(
                    f"publish service {self.publish_service!r} is not of the form namespace/name"
                )
        for address in self.publish_status_address:
            if not (_is_ip(address) or _DNS_NAME.match(address.lower())):
                raise ValueError(f"publish status address {address!r} is not an IP or hostname")
        if not _DNS_NAME.match(self.election_id):
            raise ValueError(f"election id {self.election_id!r} is not a valid Lease name")
        if not _DNS_LABEL.match(self.election_namespace):
            raise ValueError(f"election namespace {self.election_namespace!r} is not valid")
        if not self.pod_name:
            raise ValueError("pod name (the leader-election identity) must not be empty")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration"
            )
        if self.watch_timeout < 1 or self.max_backoff <= 0:
            raise ValueError("watch_timeout must be >= 1 s and max_backoff > 0")

    @property
    def lease_duration_seconds(self) -> int:
        """leaseDurationSeconds is an integer in the API; round up so we never claim less."""
        return max(1, math.ceil(self.lease_duration))

    def publish_service_ref(self) -> tuple[str, str] | None:
        if self.publish_service is None:
            return None
        ns, _, name = self.publish_service.partition("/")
        return ns, name

    def publish_addresses(self) -> tuple[tuple[str | None, str | None], ...]:
        """`--publish-status-address` as (ip, hostname) pairs."""
        return tuple(
            (a, None) if _is_ip(a) else (None, a.lower()) for a in self.publish_status_address
        )


# What each field means, for `portico controller --help`.
FIELD_HELP: Final = {
    "kubeconfig": "kubeconfig file; unset: the in-cluster service account",
    "watch_namespaces": "comma-separated namespaces to watch; empty: all namespaces",
    "publish_service": "namespace/name of the Service whose load-balancer address goes "
    "into the status of every Ingress Portico owns",
    "publish_status_address": "comma-separated IPs or hostnames to publish instead of a "
    "Service's address",
    "election_id": "name of the leader-election Lease",
    "election_namespace": "namespace of the Lease (default: $POD_NAMESPACE, else default)",
    "lease_duration": "seconds a Lease is valid without renewal",
    "renew_deadline": "seconds a leader keeps trying to renew before it steps down",
    "retry_period": "seconds between leader-election attempts",
    "pod_name": "leader-election identity (default: $POD_NAME, else the hostname)",
    "watch_timeout": "server-side timeout of each watch request, seconds",
    "max_backoff": "longest wait between retries of failed API calls, seconds",
    "events": "turn configuration problems into Kubernetes Events",
}


def cluster_settings_from_sources(
    given: dict[str, object], environ: dict[str, str] | os._Environ[str] | None = None
) -> ClusterSettings:
    """ClusterSettings from flags (`given`, raw strings or bools), else `PORTICO_<FIELD>`.

    Raises ValueError naming the flag or variable for a value that does not parse.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(ClusterSettings):
        env = "PORTICO_" + f.name.upper()
        if f.name in given:
            raw, source = given[f.name], "--" + f.name.replace("_", "-")
        elif env in environ:
            raw, source = environ[env], env
        else:
            continue
        try:
            values[f.name] = _convert(f.name, raw)
        except ValueError as exc:
            raise ValueError(f"{source}={raw!r}: {exc}") from exc
    return ClusterSettings(**values)  # type: ignore[arg-type]


def _convert(name: str, raw: object) -> object:
    default = {f.name: f for f in fields(ClusterSettings)}[name]
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    if name in ("watch_namespaces", "publish_status_address"):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if name == "kubeconfig":
        return Path(text) if text else None
    if name == "publish_service":
        return text or None
    if name == "events":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default.default, float):
        return float(text)
    return text
