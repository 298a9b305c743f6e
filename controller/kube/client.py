"""The API client: configuration (kubeconfig or in-cluster) and raw-JSON calls.

Portico reads only a few fields of a few kinds, so it skips kubernetes_asyncio's model layer:
every call goes through `ApiClient.call_api` (the library's auth, TLS, token refresh and URL
encoding) with `_preload_content=False`, and the body is decoded once with `json.loads`.
Lists and watch lines thus reach `controller.objects.parse_object` as plain dicts, with no
model deserialisation in between. Failures become `ApiError` (status 0 when the server could not
be reached), so callers never see aiohttp or kubernetes_asyncio exceptions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from controller.kube import ApiError

logger = logging.getLogger(__name__)

# A request that is not a watch: connect quickly, answer within this many seconds.
REQUEST_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 5.0
# A watch's read timeout is its server timeout plus this margin: a stream silent for that long
# is dead (the server would have closed it) even if TCP never noticed.
WATCH_READ_MARGIN: Final = 30.0
_AUTH: Final = ["BearerToken"]
_JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """One API collection: where it lives and what its objects are called."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        return base


INGRESSES: Final = Resource("Ingress", "networking.k8s.io", "v1", "ingresses")
INGRESS_CLASSES: Final = Resource(
    "IngressClass", "networking.k8s.io", "v1", "ingressclasses", namespaced=False
)
SERVICES: Final = Resource("Service", "", "v1", "services")
ENDPOINT_SLICES: Final = Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices")
SECRETS: Final = Resource("Secret", "", "v1", "secrets")
CONFIG_MAPS: Final = Resource("ConfigMap", "", "v1", "configmaps")
LEASES: Final = Resource("Lease", "coordination.k8s.io", "v1", "leases")
EVENTS: Final = Resource("Event", "", "v1", "events")


async def load_configuration(kubeconfig: Path | None) -> Any:
    """A client Configuration from a kubeconfig file, else the pod's service account.

    Raises `k8s_config.ConfigException` (a ValueError-like) with the library's message when
    neither works, so `portico controller` can say what is missing.
    """
    configuration = k8s_client.Configuration()
    if kubeconfig is not None:
        await k8s_config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
    else:
        # Reads KUBERNETES_SERVICE_HOST/PORT, the token and the CA from the service-account
        # mount; the token is re-read periodically (bound tokens rotate).
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def _query(params: Mapping[str, str | int | bool | None]) -> list[tuple[str, str]]:
    # Booleans as lower-case words (what the API documents); None means "not given".
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, str(value)))
    return out


class KubeApi:
    """The calls Portico makes, on one shared `ApiClient` (one connection pool)."""

    def __init__(self, configuration: Any, user_agent: str = "portico") -> None:
        self._client = k8s_client.ApiClient(configuration=configuration)
        # Naming the replica lets API-server audit logs (and tests) tell replicas apart.
        self._client.user_agent = user_agent

    async def close(self) -> None:
        await self._client.close()

    # ---- plumbing ---------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = _JSON,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": _JSON, "Content-Type": content_type}
        try:
            response: aiohttp.ClientResponse = await self._client.call_api(
                path,
                method,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=_AUTH,
                _preload_content=False,
                _request_timeout=client_timeout
                or aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        if response.status >= 300:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                raw = b""
            finally:
                response.release()
            try:
                body_json: Any = json.loads(raw)
            except ValueError:
                body_json = raw
            raise ApiError.from_status(response.status, body_json)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        try:
            raw = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        finally:
            response.release()
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ApiError(response.status, "BadResponse", f"not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ApiError(response.status, "BadResponse", "expected a JSON object")
        return doc

    # ---- reads ------------------------------------------------------------------------------

    async def list(
        self, resource: Resource, namespace: str | None, *, field_selector: str | None = None
    ) -> dict[str, Any]:
        """One consistent list (no paging: our kinds are small enough to list at once)."""
        query = _query({"fieldSelector": field_selector})
        return await self._json("GET", resource.path(namespace), query=query)

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        timeout_seconds: int,
        field_selector: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events as decoded dicts (`{"type", "object"}`), until the server ends the stream.

        Raises ApiError on a failed request, an unreadable stream (status 0), or an inactivity
        longer than the server timeout plus a margin.
        """
        query = _query(
            {
                "watch": True,
                "resourceVersion": resource_version,
                "allowWatchBookmarks": True,
                "timeoutSeconds": timeout_seconds,
                "fieldSelector": field_selector,
            }
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=CONNECT_TIMEOUT,
            sock_connect=CONNECT_TIMEOUT,
            sock_read=timeout_seconds + WATCH_READ_MARGIN,
        )
        response = await self._send(
            "GET", resource.path(namespace), query=query, client_timeout=timeout
        )
        try:
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise ApiError(0, "StreamBroken", f"{type(exc).__name__}: {exc}") from exc
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise ApiError(0, "BadResponse", f"watch line is not JSON: {exc}") from exc
                if not isinstance(event, dict):
                    raise ApiError(0, "BadResponse", "watch line is not a JSON object")
                yield event
        finally:
            # An unfinished chunked stream cannot go back to the pool: drop the connection.
            response.close()

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return await self._json("GET", resource.path(namespace, name))

    # ---- writes -----------------------------------------------------------------------------

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self._json("POST", resource.path(namespace), body=dict(body))

    async def replace(
        self, resource: Resource, namespace: str | None, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """PUT: compare-and-swap on the body's metadata.resourceVersion (409 on a mismatch)."""
        return await self._json("PUT", resource.path(namespace, name), body=dict(body))

    async def merge_patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """RFC 7386 merge patch (null deletes a field) of the object or a subresource."""
        path = resource.path(namespace, name)
        if subresource:
            path += f"/{subresource}"
        return await self._json("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)

    # ---- the narrow interfaces leader/status/events use (see their Protocols) -------------

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.get(LEASES, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.create(LEASES, namespace, body)

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.replace(LEASES, namespace, name, body)

    async def patch_ingress_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.merge_patch(INGRESSES, namespace, name, patch, subresource="status")

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.create(EVENTS, namespace, body)

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.get(EVENTS, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.merge_patch(EVENTS, namespace, name, patch)


async def open_api(kubeconfig: Path | None, user_agent: str = "portico") -> KubeApi:
    return KubeApi(await load_configuration(kubeconfig), user_agent)


# Re-exported so callers can catch configuration problems without importing the library.
ConfigError: Final = k8s_config.ConfigException

__all__ = [
    "ENDPOINT_SLICES",
    "EVENTS",
    "INGRESSES",
    "INGRESS_CLASSES",
    "LEASES",
    "SECRETS",
    "SERVICES",
    "ConfigError",
    "KubeApi",
    "Resource",
    "load_configuration",
    "open_api",
]
