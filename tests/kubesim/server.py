"""KubeSim: an in-process Kubernetes API server for tests, speaking the real HTTP protocol.

Data flow: an HTTP request (from kubernetes-asyncio, kubectl or raw aiohttp) is parsed into
(verb, resource type, namespace, name, subresource), recorded in the audit log, passed through
the test's fault injection (down, delay, 401, 403, fail_next) and then served by the registry
(reads/writes on the store) or a watch stream. Tests also manipulate objects directly through
the same registry, so every change produces the watch events and resourceVersions a real
server would. The contract is /work/shared/KUBE-API.md §6.2.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tests.kubesim import rbac, resources
from tests.kubesim.rbac import Grant
from tests.kubesim.registry import Registry
from tests.kubesim.resources import ALL_TYPES, GROUPS, NAMESPACE, ResourceType
from tests.kubesim.selectors import parse_field_selector, parse_label_selector, required_name
from tests.kubesim.status import (
    ApiError,
    bad_request,
    forbidden,
    generic,
    invalid_params,
    method_not_allowed,
    not_found_path,
    status_body,
)
from tests.kubesim.storage import BOOKMARK_NOW, Store
from tests.kubesim.strategy import Options
from tests.kubesim.watching import WatchRequest, WatchStream

logger = logging.getLogger(__name__)

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def go_bool(name: str, value: str) -> bool:
    """strconv.ParseBool, which is how the apiserver reads boolean query parameters."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_request(
        f'{name}: Invalid value: "{value}": strconv.ParseBool: parsing "{value}": invalid syntax'
    )


# Aliases so annotations inside KubeSim are not shadowed by its `list` method.
_Objects = list[dict[str, Any]]
_Segments = list[str]
_Grants = list[Grant]


@dataclass
class AuditEntry:
    """One HTTP request as the simulator saw it; `status` is filled in when it is answered
    (for a watch: when the stream starts)."""

    time: float
    method: str
    path: str
    query: str
    verb: str = ""
    resource: str = ""  # plural, or plural/subresource
    namespace: str | None = None
    name: str | None = None
    status: int = 0
    user_agent: str = ""
    user: str = ""


@dataclass
class _Fault:
    verb: str
    resource: str
    status: int
    remaining: int
    retry_after: float | None


@dataclass(frozen=True)
class _Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def resource(self) -> str:
        return f"{self.rt.plural}/{self.subresource}" if self.subresource else self.rt.plural


class KubeSim:
    """See the module docstring; every public method must be called from the loop's thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        token: str = "kubesim-token",
        require_auth: bool = False,
        user: str = "system:serviceaccount:portico:portico",
        history_size: int = 1000,
        bookmark_interval: float = 5.0,
        watch_list: bool = True,
        allow_loopback_endpoints: bool = True,
        validation: bool = True,
        auto_create_namespaces: bool = True,
        default_ingress_class: bool = False,
        typed_list_items: bool = False,
        server_version: str = "v1.32.0",
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.token = token
        self.require_auth = require_auth
        self.user = user
        # Seconds between BOOKMARK events on watches that allow them; may be changed any time.
        self.bookmark_interval = bookmark_interval
        # False answers WatchList (sendInitialEvents) with 422, as a 1.33 server does.
        self.watch_list = watch_list
        self.typed_list_items = typed_list_items
        self.server_version = server_version
        self.options = Options(
            validation=validation,
            allow_loopback_endpoints=allow_loopback_endpoints,
            auto_create_namespaces=auto_create_namespaces,
            default_ingress_class=default_ingress_class,
        )
        self.store = Store(history_size)
        self.registry = Registry(self.store, self.options)
        self.audit: list[AuditEntry] = []
        self._faults: list[_Fault] = []
        self._forbidden: list[tuple[str, str, str | None]] = []
        # Requests refused with 403, by (verb, resource): lets a test prove a refusal happened
        # (and happened again) before it checks what the refusal prevents.
        self.refusals: Counter[tuple[str, str]] = Counter()
        self._rbac: frozenset[Grant] | None = None
        # The grants that allowed at least one request since load_rbac (see rbac_unused).
        self.rbac_used: set[Grant] = set()
        self._delay = 0.0
        self._down = False
        self._app = web.Application()
        self._app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._restart: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._ca_pem: bytes | None = None
        for ns in ("default", "kube-system", "kube-public"):
            self.registry.create(NAMESPACE, None, {"metadata": {"name": ns}})

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        if self.tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert(self.host, "localhost", "kubernetes.default.svc")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ctx)
            self._ssl = ctx
            self._ca_pem = ca.cert_pem.bytes()
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = self._listen(self.port)
        self.port = sock.getsockname()[1]
        await self._serve_on(sock)
        logger.info("kubesim.started", extra={"url": self.url})

    async def stop(self) -> None:
        self._close_connections(abort=False)
        if self._restart is not None:
            await asyncio.gather(self._restart, return_exceptions=True)
            self._restart = None
        if self._server is not None:
            self._server.close()
            self._server = None
        self._abort_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeSim:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def _serve_on(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=sock, ssl=self._ssl)

    def _protocol(self) -> RequestHandler:
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    def _abort_connections(self) -> None:
        if self._runner is None or self._runner.server is None:
            return
        for handler in self._runner.server.connections:
            if handler.transport is not None:
                handler.transport.abort()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig pointing at this server (atomically: pollers never see half)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self._ca_pem is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self._ca_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": cluster}],
            "users": [{"name": "kubesim", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "kubesim",
                    "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace},
                }
            ],
            "current-context": "kubesim",
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, path)
        return path

    def write_incluster_files(self, directory: Path) -> dict[str, str]:
        """Token and CA files for kubernetes-asyncio's in-cluster loader (TLS only); returns the
        KUBERNETES_SERVICE_* environment to use with them."""
        if self._ca_pem is None:
            raise RuntimeError("in-cluster config needs KubeSim(tls=True), started")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(self.token)
        (directory / "ca.crt").write_bytes(self._ca_pem)
        (directory / "namespace").write_text("default")
        return {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": str(self.port)}

    # --- direct object manipulation (as if through the API) ----------------------------------

    @staticmethod
    def _type_of(obj: dict[str, Any]) -> ResourceType:
        rt = resources.by_api_version_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
        if rt is None:
            raise KeyError(
                f"unsupported apiVersion/kind: {obj.get('apiVersion')}/{obj.get('kind')}"
            )
        return rt

    @staticmethod
    def _ns(rt: ResourceType, obj: dict[str, Any]) -> str | None:
        return (obj.get("metadata", {}).get("namespace") or "default") if rt.namespaced else None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST semantics; the namespace defaults to "default". Raises ApiError."""
        rt = self._type_of(obj)
        return self.registry.create(rt, self._ns(rt, obj), obj)

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT semantics (compare-and-swap if obj carries metadata.resourceVersion)."""
        rt = self._type_of(obj)
        return self.registry.update(rt, self._ns(rt, obj), obj["metadata"]["name"], obj)

    def update_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT .../status semantics: only .status is taken."""
        rt = self._type_of(obj)
        if not rt.status_subresource:
            raise KeyError(f"{rt.kind} has no status subresource")
        return self.registry.update(rt, self._ns(rt, obj), obj["metadata"]["name"], obj, "status")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace unconditionally if it exists (a test convenience, not SSA)."""
        rt = self._type_of(obj)
        ns = self._ns(rt, obj)
        if self.store.get(rt, ns, obj["metadata"]["name"]) is None:
            return self.registry.create(rt, ns, obj)
        body = json.loads(json.dumps(obj))
        body["metadata"].pop("resourceVersion", None)
        return self.registry.update(rt, ns, obj["metadata"]["name"], body)

    def patch(
        self,
        kind_or_plural: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = "application/merge-patch+json",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        rt = resources.lookup(kind_or_plural)
        ns = namespace if rt.namespaced else None
        raw = json.dumps(patch).encode()
        return self.registry.patch(
            rt, ns, name, content_type=content_type, raw=raw, subresource=subresource
        )

    def delete(self, kind_or_plural: str, namespace: str | None, name: str) -> None:
        rt = resources.lookup(kind_or_plural)
        self.registry.delete(rt, namespace if rt.namespaced else None, name)

    def get(self, kind_or_plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        rt = resources.lookup(kind_or_plural)
        obj = self.store.get(rt, namespace if rt.namespaced else None, name)
        return json.loads(json.dumps(obj)) if obj is not None else None

    def list(
        self,
        kind_or_plural: str,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> _Objects:
        rt = resources.lookup(kind_or_plural)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt)
        return [
            json.loads(json.dumps(obj))
            for obj in self.store.items(rt, namespace if rt.namespaced else None)
            if labels(obj) and fields(obj)
        ]

    def load_manifests(self, text: str) -> _Objects:
        """Apply every document of a YAML stream (e.g. for `python -m tests.kubesim -f`)."""
        return [self.apply(doc) for doc in yaml.safe_load_all(text) if doc]

    @property
    def resource_version(self) -> str:
        """The store's current revision."""
        return str(self.store.revision)

    # --- fault injection and inspection ------------------------------------------------------

    def drop_watches(self, abort: bool = False) -> None:
        """End every open watch: a clean EOF, or a connection reset with abort=True."""
        for sub in self.store.subscribers():
            sub.abort = abort
            sub.queue.put_nowait(None)

    def bookmark_now(self) -> None:
        """Send a BOOKMARK on every watch that allows them, without waiting for the interval."""
        for sub in self.store.subscribers():
            sub.queue.put_nowait(BOOKMARK_NOW)

    def watch_count(self, kind_or_plural: str | None = None) -> int:
        rt = resources.lookup(kind_or_plural) if kind_or_plural else None
        return sum(1 for s in self.store.subscribers() if rt is None or s.rt is rt)

    async def wait_for_watch(
        self, kind_or_plural: str, count: int = 1, timeout: float = 5.0
    ) -> None:
        """Wait until at least `count` watches of a type are open (e.g. the informer is up)."""
        async with asyncio.timeout(timeout):
            while self.watch_count(kind_or_plural) < count:
                await asyncio.sleep(0.01)

    def compact(self) -> None:
        """Forget all history: watches and exact lists from older RVs get 410 Expired."""
        self.store.compact()

    def fail_next(
        self,
        verb: str,
        resource: str,
        status: int,
        n: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next `n` requests matching (verb, resource) with a Status of `status`.
        verb/resource may be "*"; resource is a plural or "plural/status"."""
        self._faults.append(_Fault(verb, resource, status, n, retry_after))

    def delay(self, seconds: float) -> None:
        """Add latency before every request is handled (0 to turn off)."""
        self._delay = seconds

    def pause_events(self) -> None:
        """Hold watch events (writes still succeed and lists see them) until resume_events()."""
        self.store.pause()

    def resume_events(self) -> None:
        self.store.resume()

    def set_down(self, down: bool) -> None:
        """Down: stop listening (connections are refused) and reset every open connection.
        Up again: listen on the same port."""
        if down == self._down:
            return
        self._down = down
        if down:
            if self._server is not None:
                self._server.close()
                self._server = None
            self._close_connections(abort=True)
            self._abort_connections()
        elif self._runner is not None:
            # Listen synchronously, so connects queue in the backlog instead of being refused.
            sock = self._listen(self.port)
            self._restart = asyncio.get_running_loop().create_task(self._serve_on(sock))

    def _close_connections(self, abort: bool) -> None:
        self.drop_watches(abort=abort)

    def forbid(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Answer matching requests with 403 Forbidden (RBAC denial); "*" matches anything."""
        self._forbidden.append((verb, resource, namespace))

    def refused_count(self, verb: str, resource: str) -> int:
        """How many `verb` requests on `resource` were refused with 403 so far."""
        return self.refusals[(verb, resource)]

    def allow(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Undo a forbid() with the same arguments."""
        self._forbidden = [r for r in self._forbidden if r != (verb, resource, namespace)]

    def load_rbac(self, documents: Iterable[dict[str, Any] | None] | None) -> None:
        """Allow only what these ClusterRole/Role documents grant to `user` through their
        bindings (all of them when there is no binding); None turns RBAC off. Use with
        `helm template` output to catch missing rules, and `rbac_unused()` for surplus ones."""
        self._rbac = None if documents is None else rbac.grants(documents, self.user)
        self.rbac_used = set()

    def rbac_grants(self) -> frozenset[Grant]:
        """What the loaded RBAC grants (empty when RBAC is off)."""
        return self._rbac or frozenset()

    def rbac_unused(self) -> _Grants:
        """Grants that allowed no request since load_rbac, sorted."""
        return sorted(self.rbac_grants() - self.rbac_used)

    # --- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        entry = AuditEntry(
            time=time.time(),
            method=request.method,
            path=request.path,
            query=request.query_string,
            user_agent=request.headers.get("User-Agent", ""),
            user=self.user,
        )
        self.audit.append(entry)
        if self._down:
            if request.transport is not None:
                request.transport.abort()
            entry.status = -1
            return web.Response(status=503)
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            response = await self._dispatch(request, entry)
        except ApiError as err:
            response = web.Response(
                status=err.code,
                body=json.dumps(err.body).encode(),
                content_type="application/json",
                headers=err.headers,
            )
        if not entry.status:
            entry.status = response.status
        logger.debug(
            "kubesim.request",
            extra={"method": entry.method, "path": entry.path, "status": entry.status},
        )
        return response

    def _authenticate(self, request: web.Request) -> None:
        if not self.require_auth:
            return
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(status_body(401, "Unauthorized"))

    async def _dispatch(self, request: web.Request, entry: AuditEntry) -> web.StreamResponse:
        self._authenticate(request)
        segments = [s for s in request.path.split("/") if s]
        discovery = self._discovery(segments)
        if discovery is not None:
            entry.verb = "get"
            return discovery
        target = self._target(segments, request.path)
        verb = self._verb(request, target)
        # A list or watch pinned to one name by its field selector is authorized (and audited)
        # as a request for that name, as the apiserver's RequestInfo does.
        name = target.name
        if name is None and verb in ("list", "watch"):
            name = required_name(request.query.get("fieldSelector", ""))
        entry.verb, entry.resource = verb, target.resource
        entry.namespace, entry.name = target.namespace, name
        self._authorize(verb, target, name)
        self._inject_fault(verb, target.resource)
        query = request.query
        if query.get("dryRun"):
            raise bad_request("kubesim does not implement dryRun")
        rt, ns, name, sub = target.rt, target.namespace, target.name, target.subresource
        if verb == "get":
            assert name is not None
            return _json(200, self.registry.get(rt, ns, name))
        if verb in ("list", "watch"):
            return await self._list_or_watch(request, entry, target, verb == "watch")
        if verb == "create":
            return _json(201, self.registry.create(rt, ns, await _read_json(request)))
        if verb == "update":
            assert name is not None
            body = await _read_json(request)
            return _json(200, self.registry.update(rt, ns, name, body, sub))
        if verb == "patch":
            assert name is not None
            raw = await request.read()
            content_type = request.headers.get("Content-Type", "")
            return _json(
                200,
                self.registry.patch(
                    rt, ns, name, content_type=content_type, raw=raw, subresource=sub
                ),
            )
        if verb == "delete":
            assert name is not None
            raw = await request.read()
            options = json.loads(raw) if raw.strip() else None
            body, finished = self.registry.delete(rt, ns, name, options)
            return _json(200 if finished else 202, body)
        if verb == "deletecollection":
            return self._delete_collection(request, target)
        raise method_not_allowed(request.method)

    def _delete_collection(self, request: web.Request, target: _Target) -> web.Response:
        rt = target.rt
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""), rt)
        deleted = []
        for obj in self.store.items(rt, target.namespace):
            if labels(obj) and fields(obj):
                meta = obj["metadata"]
                self.registry.delete(rt, meta.get("namespace"), meta["name"])
                deleted.append(obj)
        items = [json.loads(json.dumps(o)) for o in deleted]
        return _json(
            200,
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.revision)},
                "items": items,
            },
        )

    def _target(self, segments: _Segments, path: str) -> _Target:
        if len(segments) >= 2 and segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise not_found_path(path)
        namespace: str | None = None
        if (
            rest
            and rest[0] == "namespaces"
            and group == ""
            and (len(rest) <= 2 or (len(rest) == 3 and rest[2] in ("status", "finalize")))
        ):
            plural, tail = "namespaces", rest[1:]
        elif rest and rest[0] == "namespaces" and len(rest) >= 3:
            namespace, plural, tail = rest[1], rest[2], rest[3:]
        elif rest:
            plural, tail = rest[0], rest[1:]
        else:
            raise not_found_path(path)
        rt = resources.by_url(group, version, plural)
        if rt is None or len(tail) > 2 or (namespace is not None and not rt.namespaced):
            raise not_found_path(path)
        name = tail[0] if tail else None
        subresource = tail[1] if len(tail) > 1 else None
        if subresource is not None and not (subresource == "status" and rt.status_subresource):
            raise not_found_path(path)
        if rt.namespaced and namespace is None and name is not None:
            raise not_found_path(path)
        return _Target(rt, namespace, name, subresource)

    @staticmethod
    def _verb(request: web.Request, target: _Target) -> str:
        method = request.method
        if method == "GET":
            if target.name is not None:
                return "get"
            watch = request.query.get("watch")
            return "watch" if watch is not None and go_bool("watch", watch) else "list"
        if method == "POST" and target.name is None and target.subresource is None:
            return "create"
        if method == "PUT" and target.name is not None:
            return "update"
        if method == "PATCH" and target.name is not None:
            return "patch"
        if method == "DELETE" and target.subresource is None:
            return "delete" if target.name is not None else "deletecollection"
        raise method_not_allowed(method)

    def _authorize(self, verb: str, target: _Target, name: str | None) -> None:
        denied = any(
            f_verb in ("*", verb)
            and f_resource in ("*", target.resource)
            and (f_ns is None or f_ns == target.namespace)
            for f_verb, f_resource, f_ns in self._forbidden
        )
        if not denied and self._rbac is not None:
            allowing = {
                grant
                for grant in self._rbac
                if grant.allows(verb, target.rt.group, target.resource, target.namespace, name)
            }
            self.rbac_used |= allowing
            denied = not allowing
        if denied:
            self.refusals[(verb, target.resource)] += 1
            raise forbidden(
                target.rt,
                verb,
                user=self.user,
                subresource=target.subresource,
                namespace=target.namespace,
                name=name,
            )

    def _inject_fault(self, verb: str, resource: str) -> None:
        for fault in self._faults:
            if fault.verb in ("*", verb) and fault.resource in ("*", resource):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                err = generic(fault.status)
                if fault.retry_after is not None:
                    seconds = math.ceil(fault.retry_after)
                    err.headers["Retry-After"] = str(seconds)
                    err.body["details"] = {"retryAfterSeconds": seconds}
                raise err

    async def _list_or_watch(
        self, request: web.Request, entry: AuditEntry, target: _Target, watch: bool
    ) -> web.StreamResponse:
        query = request.query
        rt = target.rt
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt)

        def predicate(obj: dict[str, Any]) -> bool:
            return labels(obj) and fields(obj)

        rv = query.get("resourceVersion")
        rv_match = query.get("resourceVersionMatch")
        sie_raw = query.get("sendInitialEvents")
        send_initial = go_bool("sendInitialEvents", sie_raw) if sie_raw is not None else False
        if not watch:
            if sie_raw is not None:
                raise invalid_params(
                    "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
                )
            limit_raw = query.get("limit")
            limit = _int_param("limit", limit_raw) if limit_raw else None
            body = self.registry.list(
                rt,
                target.namespace,
                predicate,
                resource_version=rv,
                resource_version_match=rv_match,
                limit=limit,
                continue_token=query.get("continue"),
                typed_items=self.typed_list_items,
            )
            return _json(200, body)
        if sie_raw is not None:
            if not self.watch_list:
                raise invalid_params(
                    "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch "
                    "unless the WatchList feature gate is enabled"
                )
            if rv_match != "NotOlderThan":
                raise invalid_params(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                    "resourceVersionMatch to NotOlderThan"
                )
        elif rv_match:
            raise invalid_params(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch "
                "unless sendInitialEvents is provided"
            )
        bookmarks_raw = query.get("allowWatchBookmarks")
        timeout_raw = query.get("timeoutSeconds")
        watch_request = WatchRequest(
            rt=rt,
            namespace=target.namespace,
            predicate=predicate,
            resource_version=rv,
            allow_bookmarks=bookmarks_raw is not None
            and go_bool("allowWatchBookmarks", bookmarks_raw),
            send_initial_events=send_initial,
            timeout_seconds=float(_int_param("timeoutSeconds", timeout_raw))
            if timeout_raw
            else None,
        )

        def on_status(code: int) -> None:
            entry.status = code

        stream = WatchStream(self.store, watch_request, lambda: self.bookmark_interval, on_status)
        return await stream.serve(request)

    # --- discovery ---------------------------------------------------------------------------

    def _discovery(self, segments: _Segments) -> web.Response | None:
        if not segments:
            paths = ["/api", "/api/v1", "/apis", "/version", "/healthz", "/readyz", "/livez"]
            for group in GROUPS:
                paths += [f"/apis/{group}", f"/apis/{group}/v1"]
            return _json(200, {"paths": sorted(paths)})
        if segments in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok", content_type="text/plain")
        if segments == ["version"]:
            major, minor = self.server_version.lstrip("v").split(".")[:2]
            return _json(
                200,
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": self.server_version,
                    "gitCommit": "kubesim",
                    "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.23",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
            )
        if segments == ["api"]:
            return _json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                },
            )
        if segments == ["apis"]:
            return _json(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(g) for g in GROUPS],
                },
            )
        if len(segments) == 2 and segments[0] == "apis" and segments[1] in GROUPS:
            return _json(200, {"kind": "APIGroup", "apiVersion": "v1", **self._group(segments[1])})
        if segments == ["api", "v1"]:
            return _json(200, self._resource_list(""))
        if len(segments) == 3 and segments[0] == "apis" and segments[1] in GROUPS:
            if segments[2] != "v1":
                return None
            return _json(200, self._resource_list(segments[1]))
        return None

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        version = {"groupVersion": f"{group}/v1", "version": "v1"}
        return {"name": group, "versions": [version], "preferredVersion": version}

    @staticmethod
    def _resource_list(group: str) -> dict[str, Any]:
        entries: list[dict[str, object]] = []
        for rt in ALL_TYPES:
            if rt.group == group:
                entries.extend(rt.discovery_entries())
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/v1" if group else "v1",
            "resources": entries,
        }


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _int_param(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise bad_request(f'{name}: Invalid value: "{value}": must be an integer') from exc


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc
