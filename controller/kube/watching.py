"""Informers: list + watch of every kind Portico reads, turned into store events.

One `Informer` per (kind, namespace): list, then watch from the list's resourceVersion with
bookmarks and a jittered server timeout; when the stream ends, resume from the last version
seen (event or bookmark). A 410 Gone (resume point compacted away) re-lists and reconciles the
cache against the list, synthesising DELETED for whatever vanished meanwhile. Any other failure
reconnects with jittered exponential backoff; 401/403 are logged once with the exact permission
missing and reported by `blocked_reasons()` until the call succeeds again.

Informers hand raw `Change`s to a `ChangeSink`. `ClusterSource` is the sink that feeds the
reconciler: it parses each object at the edge (`parse_object`), turns objects that do not parse
into `InvalidObject` problems (keeping the last good version in the store, as the manifest
source does), tells the reconciler when every informer of a kind has listed once, and lets
observers see raw objects (Ingress status, object UIDs for Events).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from controller.compiler.problems import Problem
from controller.kube import ApiError
from controller.kube.client import (
    CONFIG_MAPS,
    ENDPOINT_SLICES,
    INGRESS_CLASSES,
    INGRESSES,
    SECRETS,
    SERVICES,
    Resource,
)
from controller.objects import ObjectParseError, parse_object
from controller.store import Store, WatchEvent

logger = logging.getLogger(__name__)

INVALID_OBJECT: Final = "InvalidObject"

ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class Watched:
    """One kind to watch, with the server-side filter that keeps the stream small."""

    resource: Resource
    field_selector: str | None = None


# Secret types Portico can never use: service-account and bootstrap tokens, Helm release
# records, registry credentials. Configuration names Secrets of any other type: TLS pairs
# (kubernetes.io/tls), and Opaque ones (a `proxy-ssl-secret` holding ca.crt, htpasswd files).
UNUSABLE_SECRET_TYPES: Final[tuple[str, ...]] = (
    "kubernetes.io/service-account-token",
    "helm.sh/release.v1",
    "kubernetes.io/dockercfg",
    "kubernetes.io/dockerconfigjson",
    "bootstrap.kubernetes.io/token",
)

# Secrets: every type except those, excluded by the server (the `type` field selector, several
# `!=` terms ANDed), so the stream carries no tokens; `parse_object` keeps only the data keys
# Portico reads. One list+watch per namespace rather than one watch per referenced Secret: the
# names change with every Ingress, a watch per name does not scale to thousands of Ingresses,
# and a Secret named by an Ingress must be readable anyway (list/watch in that namespace).
SECRETS_SELECTOR: Final = ",".join(f"type!={t}" for t in UNUSABLE_SECRET_TYPES)

WATCHED: Final[tuple[Watched, ...]] = (
    Watched(INGRESSES),
    Watched(INGRESS_CLASSES),
    Watched(SERVICES),
    Watched(ENDPOINT_SLICES),
    Watched(SECRETS, SECRETS_SELECTOR),
    # Header lists named by Ingresses (custom-headers) and by the ingress-nginx ConfigMap
    # (proxy-set-headers): any name in a watched namespace, as for Secrets.
    Watched(CONFIG_MAPS),
)


@dataclass(frozen=True)
class Change:
    """One change of one object. `raw` is None for a DELETED synthesised by a re-list."""

    type: ChangeType
    key: ObjKey
    raw: dict[str, Any] | None


class ChangeSink(Protocol):
    def changes(self, informer: Informer, changes: Sequence[Change]) -> None: ...

    def listed(self, informer: Informer) -> None: ...


class WatchApi(Protocol):
    """The reads an informer makes (`KubeApi` implements it; tests use fakes)."""

    async def list(
        self, resource: Resource, namespace: str | None, *, field_selector: str | None = None
    ) -> dict[str, Any]: ...

    def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        timeout_seconds: int,
        field_selector: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...


class Gone(Exception):
    """The watch's resume point was compacted away (410): re-list."""


class Backoff:
    """Jittered exponential backoff ("full jitter" over a doubling ceiling, capped)."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures, 30))
        self.failures += 1
        # Half fixed, half random: never a zero delay, still spreads replicas apart.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


def object_key(raw: Mapping[str, Any]) -> ObjKey | None:
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    ns = meta.get("namespace")
    return (ns if isinstance(ns, str) else "", name)


def resource_version(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    if isinstance(meta, Mapping):
        rv = meta.get("resourceVersion")
        if isinstance(rv, str):
            return rv
    return ""


def reconcile_list(
    cache: Mapping[ObjKey, str], items: Iterable[dict[str, Any]]
) -> tuple[list[Change], dict[ObjKey, str]]:
    """Diff a fresh list against what we knew: (changes, new cache of key -> resourceVersion).

    New keys become ADDED, a different resourceVersion MODIFIED, an unchanged one nothing, and
    keys missing from the list a DELETED with no object (it vanished while we were not watching).
    """
    changes: list[Change] = []
    fresh: dict[ObjKey, str] = {}
    for raw in items:
        key = object_key(raw)
        if key is None:
            continue
        rv = resource_version(raw)
        fresh[key] = rv
        old = cache.get(key)
        if old is None:
            changes.append(Change("ADDED", key, raw))
        elif old != rv or not rv:
            changes.append(Change("MODIFIED", key, raw))
    changes.extend(Change("DELETED", key, None) for key in cache if key not in fresh)
    return changes, fresh


def _describe_scope(resource: Resource, namespace: str | None) -> str:
    if not resource.namespaced:
        return "at the cluster scope"
    return f"in namespace {namespace}" if namespace else "in all namespaces"


class Informer:
    """List + watch of one kind in one namespace (or all), keeping key -> resourceVersion."""

    def __init__(
        self,
        api: WatchApi,
        watched: Watched,
        namespace: str | None,
        sink: ChangeSink,
        *,
        watch_timeout: float = 240.0,
        max_backoff: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.resource = watched.resource
        self.field_selector = watched.field_selector
        self.namespace = namespace if watched.resource.namespaced else None
        self.sink = sink
        self.watch_timeout = watch_timeout
        self.backoff = Backoff(cap=max_backoff, rng=rng)
        self._rng = rng or random.Random()
        self.cache: dict[ObjKey, str] = {}
        self.resource_version: str | None = None  # None: must (re-)list
        self.has_listed = False
        self.blocked: str | None = None  # "cannot list secrets in namespace x" while forbidden
        self.lists = 0  # how many lists were made (re-lists after 410 included)
        self._verb = "list"  # what the current call is, for the "cannot <verb>" message

    @property
    def name(self) -> str:
        scope = self.namespace or ("*" if self.resource.namespaced else "")
        return f"{self.resource.plural}@{scope}" if scope else self.resource.plural

    def _fields(self, **extra: Any) -> dict[str, Any]:
        return {"resource": self.resource.plural, "namespace": self.namespace or "", **extra}

    # ---- one list, one watch ---------------------------------------------------------------

    async def list_once(self) -> None:
        """List and reconcile the cache; afterwards `resource_version` is the list's."""
        self._verb = "list"
        doc = await self.api.list(self.resource, self.namespace, field_selector=self.field_selector)
        items_raw = doc.get("items")
        items: list[dict[str, Any]] = []
        for item in items_raw if isinstance(items_raw, list) else []:
            if isinstance(item, dict):
                # List items usually lack kind/apiVersion; parse_object needs the kind.
                item.setdefault("kind", self.resource.kind)
                item.setdefault("apiVersion", self.resource.api_version)
                items.append(item)
        changes, self.cache = reconcile_list(self.cache, items)
        meta = doc.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        self.resource_version = rv if isinstance(rv, str) and rv else None
        self.lists += 1
        logger.info(
            "watch.listed",
            extra=self._fields(
                objects=len(self.cache), changes=len(changes), resource_version=rv, lists=self.lists
            ),
        )
        if changes:
            self.sink.changes(self, changes)
        if not self.has_listed:
            self.has_listed = True
            self.sink.listed(self)
        if self.resource_version is None:
            # Without a list version we cannot resume precisely: a later watch from "now" could
            # miss changes, so treat it like a compaction and list again next time.
            raise ApiError(0, "BadResponse", "list without metadata.resourceVersion")

    async def watch_once(self) -> int:
        """Watch from `resource_version` until the server ends the stream; returns #events.

        Raises Gone on 410, ApiError on anything else.
        """
        assert self.resource_version is not None
        self._verb = "watch"
        timeout = int(self.watch_timeout * self._rng.uniform(1.0, 1.25))
        seen = 0
        stream = self.api.watch(
            self.resource,
            self.namespace,
            resource_version=self.resource_version,
            timeout_seconds=max(1, timeout),
            field_selector=self.field_selector,
        )
        try:
            async for event in stream:
                seen += 1
                self._handle(event)
        except ApiError as exc:
            if exc.gone:
                raise Gone(exc.message) from exc
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return seen

    def _handle(self, event: Mapping[str, Any]) -> None:
        etype = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ApiError(0, "BadResponse", f"watch event without an object: {etype!r}")
        if etype == "ERROR":
            error = ApiError.from_status(int(obj.get("code") or 500), obj)
            if error.gone or error.reason in ("Expired", "Gone"):
                raise Gone(error.message)
            raise error
        rv = resource_version(obj)
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            raise ApiError(0, "BadResponse", f"unknown watch event type {etype!r}")
        key = object_key(obj)
        if key is None:
            raise ApiError(0, "BadResponse", "watch event object without metadata.name")
        obj.setdefault("kind", self.resource.kind)
        obj.setdefault("apiVersion", self.resource.api_version)
        if rv:
            self.resource_version = rv
        if etype == "DELETED":
            if self.cache.pop(key, None) is None:
                return
        else:
            self.cache[key] = rv
        self.sink.changes(self, [Change(etype, key, obj)])

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch forever; reconnect on errors. Cancelled by the owner."""
        while True:
            started = time.monotonic()
            try:
                if self.resource_version is None:
                    await self.list_once()
                    self._unblock()
                seen = await self.watch_once()
                self._unblock()
                self.backoff.reset()
                if seen == 0 and time.monotonic() - started < 1.0:
                    # A server that closes watches at once: do not spin.
                    await asyncio.sleep(self.backoff.next())
            except Gone as exc:
                logger.info("watch.expired", extra=self._fields(reason=str(exc)))
                self.resource_version = None
            except ApiError as exc:
                if exc.forbidden:
                    self._block(exc)
                else:
                    logger.warning(
                        "watch.failed",
                        extra=self._fields(verb=self._verb, status=exc.status, reason=str(exc)),
                    )
                delay = self.backoff.next()
                await asyncio.sleep(delay)
            except (ValueError, TypeError, KeyError) as exc:
                # Malformed data from the server: never kill the informer over it.
                logger.error("watch.bad_response", extra=self._fields(reason=repr(exc)))
                self.resource_version = None
                await asyncio.sleep(self.backoff.next())

    def _block(self, exc: ApiError) -> None:
        reason = f"cannot {self._verb} {self.resource.plural} " + _describe_scope(
            self.resource, self.namespace
        )
        if reason != self.blocked:
            self.blocked = reason
            logger.error(
                "watch.forbidden",
                extra=self._fields(
                    verb=self._verb, status=exc.status, missing=reason, reason=exc.message
                ),
            )

    def _unblock(self) -> None:
        if self.blocked is not None:
            logger.info("watch.allowed", extra=self._fields(was=self.blocked))
            self.blocked = None


async def keep_running(informer: Informer) -> None:
    """Run an informer until cancelled. Its loop never ends on its own; a bug in it must not
    stop the watch for good: log it, re-list after a backoff."""
    while True:
        try:
            await informer.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception(
                "watch.crashed", extra={"informer": informer.name, "reason": repr(exc)}
            )
            informer.resource_version = None
            await asyncio.sleep(informer.backoff.next())


# ---- the sink that feeds the reconciler --------------------------------------------------------


class ReconcilerSink(Protocol):
    """What ClusterSource needs of the reconciler (controller.reconciler.Reconciler)."""

    def apply(self, events: Sequence[WatchEvent]) -> None: ...

    def mark_listed(self, kind: str) -> None: ...

    def set_source_problems(self, problems: tuple[Problem, ...]) -> None: ...


# Called with (kind, key, raw) for every change; raw None when the object is gone.
RawObserver = Callable[[str, ObjKey, dict[str, Any] | None], None]


class ClusterSource:
    """Parses informer changes into store events for the reconciler."""

    def __init__(
        self,
        reconciler: ReconcilerSink,
        store: Store,
        observers: Sequence[RawObserver] = (),
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._observers = tuple(observers)
        self._problems: dict[tuple[str, str, str], Problem] = {}
        self.informers: list[Informer] = []

    def changes(self, informer: Informer, changes: Sequence[Change]) -> None:
        kind = informer.resource.kind
        events: list[WatchEvent] = []
        problems_before = dict(self._problems)
        for change in changes:
            ns, name = change.key
            pkey = (kind, ns, name)
            for observe in self._observers:
                observe(kind, change.key, None if change.type == "DELETED" else change.raw)
            if change.type == "DELETED":
                self._problems.pop(pkey, None)
                # The store's copy is the last good one (it may differ from the deleted raw).
                old = self._store.get(kind, ns, name)
                if old is not None:
                    events.append(WatchEvent("DELETED", old))
                continue
            assert change.raw is not None
            try:
                obj = parse_object(change.raw)
            except ObjectParseError as exc:
                ref = f"{ns}/{name}" if ns else name
                self._problems[pkey] = Problem(kind, ref, INVALID_OBJECT, str(exc))
                logger.warning(
                    "object.invalid", extra={"kind": kind, "ref": ref, "reason": str(exc)}
                )
                continue
            if obj is None:
                continue
            self._problems.pop(pkey, None)
            events.append(WatchEvent(change.type, obj))
        if events:
            self._reconciler.apply(events)
        if self._problems != problems_before:
            self._reconciler.set_source_problems(tuple(sorted(self._problems.values())))

    def listed(self, informer: Informer) -> None:
        kind = informer.resource.kind
        if all(i.has_listed for i in self.informers if i.resource.kind == kind):
            logger.info("watch.kind_synced", extra={"kind": kind})
            self._reconciler.mark_listed(kind)

    def blocked_reasons(self) -> list[str]:
        """Missing permissions right now, e.g. "cannot list secrets in namespace x"."""
        return sorted({i.blocked for i in self.informers if i.blocked is not None})

    def synced(self) -> bool:
        return all(i.has_listed for i in self.informers)


def build_informers(
    api: WatchApi,
    sink: ClusterSource,
    namespaces: Sequence[str],
    *,
    watch_timeout: float,
    max_backoff: float,
    watched: Sequence[Watched] = WATCHED,
) -> list[Informer]:
    """One informer per kind, or per (kind, namespace) when namespaces are given."""
    informers: list[Informer] = []
    for item in watched:
        scopes: Sequence[str | None] = (
            list(namespaces) if namespaces and item.resource.namespaced else [None]
        )
        for ns in scopes:
            informers.append(
                Informer(api, item, ns, sink, watch_timeout=watch_timeout, max_backoff=max_backoff)
            )
    sink.informers.extend(informers)
    return informers


def build_named_informers(
    api: WatchApi,
    sink: ClusterSource,
    namespaces: Sequence[str],
    refs: Iterable[tuple[Resource, str, str]],
    *,
    watch_timeout: float,
    max_backoff: float,
) -> list[Informer]:
    """One informer per object that settings name (resource, namespace, name) outside the
    watched `namespaces`: a list+watch of that namespace with a `metadata.name` field
    selector, which the API server authorizes as a request for that one name (the chart grants
    it with `resourceNames`). Objects inside the watched namespaces (or with all namespaces
    watched) already come through `build_informers`. Their objects go into the same store, and
    the kind counts as listed only once these have listed too."""
    informers: list[Informer] = []
    if not namespaces:
        return informers
    for resource, namespace, name in refs:
        if namespace in namespaces:
            continue
        informers.append(
            Informer(
                api,
                Watched(resource, f"metadata.name={name}"),
                namespace,
                sink,
                watch_timeout=watch_timeout,
                max_backoff=max_backoff,
            )
        )
    sink.informers.extend(informers)
    return informers
