"""Cluster mode: the same scenarios against a real cluster where Portico is already installed.

Objects go to one namespace (created if missing) through kubernetes_asyncio. Each pod
placeholder becomes a bare Pod running `portico echo` from the Portico image (the image's
entrypoint is `portico controller`, so the Pod overrides the command); its IP goes into the
scenario's hand-written EndpointSlices, next to selector-less Services, exactly as in local
mode. Requests go to the address Portico writes into the Ingress status (the published
Service's load-balancer address), or to `--address` (for example 127.0.0.1 with
`kubectl port-forward`). Not exercised by the test suite: there is no cluster here.
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

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from conformance.scenario import CLUSTER_SCOPED

logger = logging.getLogger(__name__)

ECHO_PORT: Final = 8080
POD_WAIT: Final = 180.0  # seconds for echo pods to be scheduled, pulled and ready
# kind -> (API class, snake-case name used in the client's method names)
_APIS: Final = {
    "Ingress": (k8s.NetworkingV1Api, "ingress"),
    "IngressClass": (k8s.NetworkingV1Api, "ingress_class"),
    "Service": (k8s.CoreV1Api, "service"),
    "Secret": (k8s.CoreV1Api, "secret"),
    "EndpointSlice": (k8s.DiscoveryV1Api, "endpoint_slice"),
}


class ClusterError(RuntimeError):
    """The cluster could not be reached or prepared; the message says why."""


def _pod_name(service: str, pod: str) -> str:
    name = re.sub(r"[^a-z0-9-]", "-", f"echo-{service}-{pod}".lower())
    return name[:63].strip("-")


class ClusterTarget:
    """A `Target` on a real cluster; use as `async with ClusterTarget(kubeconfig) as target:`."""

    echo_port = ECHO_PORT

    def __init__(
        self,
        kubeconfig: Path,
        *,
        context: str | None = None,
        namespace: str = "portico-conformance",
        image: str = "portico/portico:0.1.0",
        address: str | None = None,
        http_port: int = 80,
        https_port: int = 443,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace = namespace
        self.image = image
        self.address = address
        self.http_port = http_port
        self.https_port = https_port
        self._api: Any = None
        self._pods: dict[tuple[str, str], str] = {}  # (service, pod) -> IP

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
            namespace = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=self.namespace))
            await k8s.CoreV1Api(self._api).create_namespace(namespace)
        except ApiException as exc:
            if exc.status != 409:
                await self._api.close()
                raise ClusterError(f"cannot create namespace {self.namespace}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        core = k8s.CoreV1Api(self._api)
        for service, pod in self._pods:
            try:
                await core.delete_namespaced_pod(
                    _pod_name(service, pod), self.namespace, grace_period_seconds=0
                )
            except ApiException as error:
                logger.warning("conformance.pod_delete_failed", extra={"error": str(error)})
        await self._api.close()

    # ---- pods ---------------------------------------------------------------------------------

    def _pod(self, service: str, pod: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": _pod_name(service, pod),
                "labels": {"app.kubernetes.io/name": "portico-conformance-echo"},
            },
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "securityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "echo",
                        "image": self.image,
                        "command": ["portico"],
                        "args": [
                            "echo",
                            f"--listen=0.0.0.0:{ECHO_PORT}",
                            f"--service={service}",
                            f"--pod={pod}",
                        ],
                        "ports": [{"name": "http", "containerPort": ECHO_PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": ECHO_PORT},
                            "periodSeconds": 1,
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        }

    async def ensure_pods(self, pods: Mapping[str, str]) -> dict[str, str]:
        # Any: the Pod body is a plain dict, which the client serialises as it is.
        core: Any = k8s.CoreV1Api(self._api)
        wanted = [(service, pod) for pod, service in pods.items()]
        for key in wanted:
            if key in self._pods:
                continue
            try:
                await core.create_namespaced_pod(self.namespace, self._pod(*key))
            except ApiException as exc:
                if exc.status != 409:
                    raise
        deadline = time.monotonic() + POD_WAIT
        for service, pod in wanted:
            while (service, pod) not in self._pods:
                found = await core.read_namespaced_pod(_pod_name(service, pod), self.namespace)
                ready = any(
                    c.type == "Ready" and c.status == "True"
                    for c in (found.status.conditions or [])
                )
                if ready and found.status.pod_ip:
                    self._pods[(service, pod)] = found.status.pod_ip
                elif time.monotonic() > deadline:
                    raise ClusterError(f"echo pod for {service}/{pod} not ready in {POD_WAIT:g} s")
                else:
                    await asyncio.sleep(1.0)
        return {pod: self._pods[(service, pod)] for service, pod in wanted}

    # ---- objects --------------------------------------------------------------------------------

    def _call(self, verb: str, kind: str) -> Any:
        api_class, snake = _APIS[kind]
        scope = "" if kind in CLUSTER_SCOPED else "namespaced_"
        return getattr(api_class(self._api), f"{verb}_{scope}{snake}")

    def _scope(self, kind: str) -> tuple[str, ...]:
        return () if kind in CLUSTER_SCOPED else (self.namespace,)

    async def apply(self, obj: dict[str, Any]) -> None:
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        try:
            await self._call("create", kind)(*self._scope(kind), obj)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        current = await self._call("read", kind)(name, *self._scope(kind))
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
        await self._call("replace", kind)(name, *self._scope(kind), body)

    async def delete(self, kind: str, name: str) -> None:
        try:
            await self._call("delete", kind)(name, *self._scope(kind))
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def ingress_addresses(self, name: str) -> list[str]:
        ingress = await k8s.NetworkingV1Api(self._api).read_namespaced_ingress(name, self.namespace)
        lb = ingress.status.load_balancer if ingress.status else None
        addresses = [e.ip or e.hostname for e in (lb.ingress or [])] if lb else []
        if addresses and self.address is None:
            self.address = addresses[0]
        return [str(a) for a in addresses if a]

    def endpoint(self, scheme: str) -> tuple[str, int]:
        if self.address is None:
            raise ClusterError("no address yet: no Ingress status seen and no --address given")
        return self.address, self.https_port if scheme == "https" else self.http_port
