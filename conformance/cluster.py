"""Cluster mode: the same scenarios against a real cluster where Portico is already installed.

Objects go to one namespace (created if missing) through kubernetes_asyncio. Each pod
placeholder becomes a bare Pod running `portico echo` from the Portico image (the image's
entrypoint is `portico controller`, so the Pod overrides the command); an HTTPS one gets its
certificate from a TLS Secret mounted into it. Its IP goes into the scenario's hand-written
EndpointSlices, next to selector-less Services, exactly as in local mode. Requests go to the
address Portico writes into the Ingress status (the published Service's load-balancer
address), or to `--address` (for example 127.0.0.1 with `kubectl port-forward`). Portico's
controller name is read from its IngressClass (`portico`), which also shows Portico is
installed. tests/integration/test_conformance_cluster.py runs this mode against the API
simulator, with a stand-in kubelet that runs the echo pods.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from conformance.scenario import CLUSTER_SCOPED, EchoPod, tls_secret

logger = logging.getLogger(__name__)

ECHO_PORT: Final = 8080
POD_WAIT: Final = 180.0  # seconds for echo pods to be scheduled, pulled and ready
TLS_MOUNT: Final = "/etc/echo-tls"  # where an HTTPS echo pod finds its tls.crt and tls.key
# kind -> (API class, snake-case name used in the client's method names)
_APIS: Final = {
    "Ingress": (k8s.NetworkingV1Api, "ingress"),
    "IngressClass": (k8s.NetworkingV1Api, "ingress_class"),
    "Service": (k8s.CoreV1Api, "service"),
    "Secret": (k8s.CoreV1Api, "secret"),
    "ConfigMap": (k8s.CoreV1Api, "config_map"),
    "EndpointSlice": (k8s.DiscoveryV1Api, "endpoint_slice"),
}


class ClusterError(RuntimeError):
    """The cluster could not be reached or prepared; the message says why."""


def pod_name(placeholder: str, pod: EchoPod) -> str:
    """The Pod's name: service and placeholder, plus what makes it differ from a plain one."""
    options = ("-tls" if pod.tls else "") + (f"-d{pod.delay_ms}" if pod.delay_ms else "")
    name = re.sub(r"[^a-z0-9-]", "-", f"echo-{pod.service}-{placeholder}{options}".lower())
    return name[:63].strip("-")


class ClusterTarget:
    """A `Target` on a real cluster; use as `async with ClusterTarget(kubeconfig) as target:`."""

    def __init__(
        self,
        kubeconfig: Path,
        *,
        context: str | None = None,
        namespace: str = "portico-conformance",
        unwatched_namespace: str | None = None,
        one_worker: bool = False,
        ingress_class: str = "portico",
        image: str = "portico/portico:0.1.0",
        echo_port: int = ECHO_PORT,
        address: str | None = None,
        http_port: int = 80,
        https_port: int = 443,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace = namespace
        self.unwatched_namespace = unwatched_namespace
        self.one_worker = one_worker
        self.ingress_class = ingress_class
        self.controller = ""  # read from the IngressClass on entry
        self.image = image
        self.echo_port = echo_port
        self.address = address
        self.http_port = http_port
        self.https_port = https_port
        self._api: Any = None
        self._pods: dict[str, str] = {}  # Pod name -> IP
        self._secrets: list[str] = []  # TLS Secrets of HTTPS echo pods

    async def __aenter__(self) -> ClusterTarget:
        configuration = k8s.Configuration()
        try:
            await k8s_config.load_kube_config(
                config_file=str(self.kubeconfig),
                context=self.context,
                client_configuration=configuration,
            )
        except (k8s_config.ConfigException, OSError) as exc:
            raise ClusterError(f"kubeconfig {self.kubeconfig}: {exc}") from exc
        self._api = k8s.ApiClient(configuration)
        try:
            await self._prepare()
        except BaseException:
            await self._api.close()
            raise
        return self

    async def _prepare(self) -> None:
        try:
            found = await k8s.NetworkingV1Api(self._api).read_ingress_class(self.ingress_class)
        except ApiException as exc:
            if exc.status == 404:
                raise ClusterError(
                    f"no IngressClass {self.ingress_class!r} in the cluster: install Portico "
                    "first (see charts/portico/README.md)"
                ) from exc
            raise ClusterError(f"cannot read IngressClass {self.ingress_class}: {exc}") from exc
        except (OSError, aiohttp.ClientError) as exc:
            raise ClusterError(f"cannot reach the API server: {exc}") from exc
        self.controller = found.spec.controller
        for name in filter(None, (self.namespace, self.unwatched_namespace)):
            try:
                namespace = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name))
                await k8s.CoreV1Api(self._api).create_namespace(namespace)
            except ApiException as exc:
                if exc.status != 409:
                    raise ClusterError(f"cannot create namespace {name}: {exc}") from exc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        core = k8s.CoreV1Api(self._api)
        for name in self._pods:
            try:
                await core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
            except ApiException as error:
                logger.warning("conformance.pod_delete_failed", extra={"error": str(error)})
        for name in self._secrets:
            try:
                await core.delete_namespaced_secret(name, self.namespace)
            except ApiException as error:
                logger.warning("conformance.secret_delete_failed", extra={"error": str(error)})
        await self._api.close()

    # ---- pods ---------------------------------------------------------------------------------

    def _pod(self, name: str, placeholder: str, pod: EchoPod) -> dict[str, Any]:
        args = [
            "echo",
            f"--listen=0.0.0.0:{self.echo_port}",
            f"--service={pod.service}",
            f"--pod={placeholder}",
        ]
        if pod.delay_ms:
            args.append(f"--delay-ms={pod.delay_ms}")
        container: dict[str, Any] = {
            "name": "echo",
            "image": self.image,
            "command": ["portico"],
            "args": args,
            "ports": [{"name": "http", "containerPort": self.echo_port}],
            "readinessProbe": {
                "httpGet": {
                    "path": "/",
                    "port": self.echo_port,
                    "scheme": "HTTPS" if pod.tls else "HTTP",
                },
                "periodSeconds": 1,
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
        }
        if pod.tls:
            args += [f"--tls-cert={TLS_MOUNT}/tls.crt", f"--tls-key={TLS_MOUNT}/tls.key"]
            container["volumeMounts"] = [{"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}]
            spec["volumes"] = [{"name": "tls", "secret": {"secretName": name}}]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/name": "portico-conformance-echo"},
            },
            "spec": spec,
        }

    async def ensure_pods(self, pods: Mapping[str, EchoPod]) -> dict[str, str]:
        # Any: the Pod body is a plain dict, which the client serialises as it is.
        core: Any = k8s.CoreV1Api(self._api)
        names = {placeholder: pod_name(placeholder, pod) for placeholder, pod in pods.items()}
        for placeholder, pod in pods.items():
            name = names[placeholder]
            if name in self._pods:
                continue
            if pod.tls is not None:
                await self.apply(tls_secret(name, self.namespace, pod.tls))
                self._secrets.append(name)
            try:
                await core.create_namespaced_pod(self.namespace, self._pod(name, placeholder, pod))
            except ApiException as exc:
                if exc.status != 409:
                    raise
        deadline = time.monotonic() + POD_WAIT
        for name in names.values():
            while name not in self._pods:
                found = await core.read_namespaced_pod(name, self.namespace)
                ready = any(
                    c.type == "Ready" and c.status == "True"
                    for c in (found.status.conditions or [])
                )
                if ready and found.status.pod_ip:
                    self._pods[name] = found.status.pod_ip
                elif time.monotonic() > deadline:
                    raise ClusterError(f"echo pod {name} not ready in {POD_WAIT:g} s")
                else:
                    await asyncio.sleep(0.2)
        return {placeholder: self._pods[name] for placeholder, name in names.items()}

    # ---- objects --------------------------------------------------------------------------------

    def _call(self, verb: str, kind: str) -> Any:
        api_class, snake = _APIS[kind]
        scope = "" if kind in CLUSTER_SCOPED else "namespaced_"
        return getattr(api_class(self._api), f"{verb}_{scope}{snake}")

    def _scope(self, kind: str, namespace: str | None) -> tuple[str, ...]:
        return () if kind in CLUSTER_SCOPED else (namespace or self.namespace,)

    async def apply(self, obj: dict[str, Any]) -> None:
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        scope = self._scope(kind, obj["metadata"].get("namespace"))
        try:
            await self._call("create", kind)(*scope, obj)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        current = await self._call("read", kind)(name, *scope)
        body = dict(obj)
        body["metadata"] = {
            **obj["metadata"],
            "resourceVersion": current.metadata.resource_version,
        }
        if kind == "Service":  # immutable once allocated
            body["spec"] = {
                **obj["spec"],
                "clusterIP": current.spec.cluster_ip,
                "clusterIPs": current.spec.cluster_ips,
            }
        await self._call("replace", kind)(name, *scope, body)

    async def delete(self, kind: str, name: str, namespace: str | None) -> None:
        try:
            await self._call("delete", kind)(name, *self._scope(kind, namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def ingress_addresses(self, name: str, namespace: str | None = None) -> list[str]:
        api = k8s.NetworkingV1Api(self._api)
        ingress = await api.read_namespaced_ingress(name, namespace or self.namespace)
        lb = ingress.status.load_balancer if ingress.status else None
        addresses = [e.ip or e.hostname for e in (lb.ingress or [])] if lb else []
        if addresses and self.address is None:
            self.address = addresses[0]
        return [str(a) for a in addresses if a]

    def endpoint(self, scheme: str) -> tuple[str, int]:
        if self.address is None:
            raise ClusterError("no address yet: no Ingress status seen and no --address given")
        return self.address, self.https_port if scheme == "https" else self.http_port
