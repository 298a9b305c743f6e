"""Raw-object helpers for cluster mode: what the informers see besides the parsed models.

The store keeps only the fields routing needs. Reporting back needs each object's identity
(UID, apiVersion) from the raw objects, so Events attach to it the way `kubectl describe` looks
them up; it is fed by informer changes here, without widening the shared models. The
ingress-nginx ConfigMap (`--nginx-configmap`) is read the same way: its `data`, handed to
whoever applies it. (The publish Service's `status.loadBalancer` is read by
`controller.status.PublishedService`.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controller.kube.watching import Change, Informer, ObjKey

logger = logging.getLogger(__name__)


class ReferenceIndex:
    """(kind, ref) -> the `involvedObject` reference of every object the informers know."""

    def __init__(self) -> None:
        self._refs: dict[tuple[str, str], dict[str, str]] = {}

    def observe(self, kind: str, key: ObjKey, raw: dict[str, Any] | None) -> None:
        """A RawObserver: record or forget one object's identity."""
        ns, name = key
        ref = f"{ns}/{name}" if ns else name
        if raw is None:
            self._refs.pop((kind, ref), None)
            return
        meta = raw.get("metadata")
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        api_version = raw.get("apiVersion")
        reference = {"kind": kind, "name": name}
        if ns:
            reference["namespace"] = ns
        if isinstance(api_version, str) and api_version:
            reference["apiVersion"] = api_version
        if isinstance(uid, str) and uid:
            reference["uid"] = uid
        self._refs[(kind, ref)] = reference

    def get(self, kind: str, ref: str) -> dict[str, str] | None:
        reference = self._refs.get((kind, ref))
        return None if reference is None else dict(reference)

    def __len__(self) -> int:
        return len(self._refs)


class WatchedConfigMap:
    """A ChangeSink for the one-ConfigMap informer of `--nginx-configmap`.

    Hands the ConfigMap's `data` (string values; `binaryData` is not read) to `on_data` at every
    change, and None once it is known to be missing (listed without it, or deleted). `observe`
    sees the raw object, so that Events about the ConfigMap's problems can name it.
    """

    def __init__(
        self,
        name: str,
        on_data: Callable[[dict[str, str] | None], None],
        observe: Callable[[str, ObjKey, dict[str, Any] | None], None] | None = None,
    ) -> None:
        self.name = name
        self._on_data = on_data
        self._observe = observe
        self.informers: list[Informer] = []

    def changes(self, informer: Informer, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.key[1] != self.name:
                continue
            raw = None if change.type == "DELETED" else change.raw
            if self._observe is not None:
                self._observe("ConfigMap", change.key, raw)
            if raw is None:
                logger.warning("configmap.missing", extra={"configmap": "/".join(change.key)})
                self._on_data(None)
                continue
            data = raw.get("data")
            self._on_data(
                {str(k): str(v) for k, v in data.items()} if isinstance(data, Mapping) else {}
            )

    def listed(self, informer: Informer) -> None:
        if not informer.cache:
            logger.warning(
                "configmap.missing", extra={"configmap": f"{informer.namespace}/{self.name}"}
            )
            self._on_data(None)
