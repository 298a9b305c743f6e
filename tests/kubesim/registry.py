"""API operations on the store: get, list, create, update, patch, delete, with real semantics.

Both the HTTP handlers and the simulator's direct Python API go through here, so a test's
`sim.create(...)` behaves exactly like a client's POST: same defaulting, validation, conflicts,
no-op detection and watch events.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from tests.kubesim import strategy
from tests.kubesim.patching import apply_patch
from tests.kubesim.resources import ALL_TYPES, INGRESS, INGRESS_CLASS, NAMESPACE, ResourceType
from tests.kubesim.selectors import Predicate
from tests.kubesim.status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid_params,
    not_found,
    status_body,
)
from tests.kubesim.storage import Store, object_key
from tests.kubesim.strategy import Options

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue value from the "
    "response to get a consistent list result."
)


def _encode_continue(rv: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(after)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(raw["rv"]), (str(raw["start"][0]), str(raw["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from exc


def parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError as exc:
        raise bad_request(
            f'resourceVersion: Invalid value: "{value}": invalid resource version'
        ) from exc
    if rv < 0:
        raise bad_request(f'resourceVersion: Invalid value: "{value}": invalid resource version')
    return rv


class Registry:
    def __init__(self, store: Store, options: Options) -> None:
        self.store = store
        self.options = options

    # --- reads -----------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(rt, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        return copy.deepcopy(obj)

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Predicate,
        *,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        typed_items: bool = False,
    ) -> dict[str, Any]:
        """A List body per KUBE-API §3.2: `items` always an array, RV = store revision."""
        if resource_version_match:
            if resource_version_match not in ("Exact", "NotOlderThan"):
                raise invalid_params(
                    f'resourceVersionMatch: Unsupported value: "{resource_version_match}": '
                    'supported values: "Exact", "NotOlderThan"'
                )
            if not resource_version:
                raise invalid_params(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                    "resourceVersion is provided"
                )
            if resource_version_match == "Exact" and resource_version == "0":
                raise invalid_params(
                    'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden '
                    'for resourceVersion "0"'
                )
        if continue_token:
            at, after = _decode_continue(continue_token)
        else:
            after = ("", "")
            at = self.store.revision
            exact = resource_version_match == "Exact" or (
                limit is not None and resource_version not in (None, "", "0")
            )
            if resource_version not in (None, "", "0"):
                wanted = parse_rv(resource_version)
                if exact:
                    at = wanted
                elif wanted > self.store.revision:
                    raise ApiError(
                        status_body(
                            504,
                            f"Too large resource version: {wanted}, current: {self.store.revision}",
                            "Timeout",
                        )
                    )
        state = self.store.state_at(rt, at)
        if state is None:
            if continue_token:
                raise gone(_CONTINUE_EXPIRED)
            raise gone("The resourceVersion for the provided list is too old.")
        keys = sorted(k for k in state if (namespace is None or k[0] == namespace) and k > after)
        matching = [state[k] for k in keys if predicate(state[k])]
        # The apiserver ignores limit for resourceVersion="0" (served from the watch cache).
        page_limit = limit if limit and resource_version != "0" else None
        metadata: dict[str, Any] = {"resourceVersion": str(at)}
        if page_limit is not None and len(matching) > page_limit:
            matching = matching[:page_limit]
            metadata["continue"] = _encode_continue(at, object_key(matching[-1]))
            remaining = sum(1 for k in keys if k > object_key(matching[-1]) and predicate(state[k]))
            metadata["remainingItemCount"] = remaining
        items = []
        for obj in matching:
            item = copy.deepcopy(obj)
            if not typed_items:
                # Real built-in lists omit kind/apiVersion on items.
                item.pop("kind", None)
                item.pop("apiVersion", None)
            items.append(item)
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": metadata,
            "items": items,
        }

    # --- writes ----------------------------------------------------------------------------

    def _check_namespace(self, rt: ResourceType, namespace: str | None) -> None:
        if not rt.namespaced:
            return
        if not namespace:
            raise bad_request(
                "the server could not find the requested resource: namespace is required"
            )
        if self.store.get(NAMESPACE, None, namespace) is not None:
            return
        if not self.options.auto_create_namespaces:
            raise not_found(NAMESPACE, namespace)
        self.create(NAMESPACE, None, {"metadata": {"name": namespace}})

    def _check_body(self, rt: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"the body of the request must be a {rt.kind} object")
        mismatch = strategy.body_mismatch(rt, body)
        if mismatch is not None:
            raise mismatch
        meta = body.get("metadata") or {}
        body_ns = meta.get("namespace")
        if rt.namespaced and body_ns and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        return body

    def create(self, rt: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        body = self._check_body(rt, namespace, body)
        if rt.namespaced:
            self._check_namespace(rt, namespace)
        obj = strategy.prepare_create(rt, body, namespace, self.options)
        if rt is INGRESS and self.options.default_ingress_class:
            self._admit_default_class(obj)
        name = obj["metadata"]["name"]
        if self.store.get(rt, namespace, name) is not None:
            raise already_exists(rt, name)
        if rt.namespaced and self._namespace_terminating(namespace):
            raise ApiError(
                status_body(
                    403,
                    f'{rt.plural} "{name}" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                )
            )
        return self.store.commit(rt, obj, None)

    def _admit_default_class(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        annotations = obj["metadata"].get("annotations") or {}
        if spec.get("ingressClassName") or "kubernetes.io/ingress.class" in annotations:
            return
        defaults = [
            c["metadata"]["name"]
            for c in self.store.items(INGRESS_CLASS)
            if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
        ]
        if len(defaults) == 1:
            spec["ingressClassName"] = defaults[0]

    def _namespace_terminating(self, namespace: str | None) -> bool:
        ns = self.store.get(NAMESPACE, None, namespace or "")
        return ns is not None and (ns.get("status") or {}).get("phase") == "Terminating"

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        body = self._check_body(rt, namespace, body)
        body_name = (body.get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        old = self.store.get(rt, namespace, name)
        if old is None:
            raise not_found(rt, name)
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        return self._store_update(rt, old, body, subresource)

    def _store_update(
        self,
        rt: ResourceType,
        old: dict[str, Any],
        body: dict[str, Any],
        subresource: str | None,
    ) -> dict[str, Any]:
        new = strategy.prepare_update(rt, old, body, subresource, self.options)
        if strategy.comparable(new) == strategy.comparable(old):
            return copy.deepcopy(old)  # no-op: same RV, no event
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            # The last finalizer went away: the pending delete completes now (one DELETED event
            # carrying the final state, as the registry's delete-during-update does).
            return self.store.commit(rt, None, old, final=new)
        return self.store.commit(rt, new, old)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        content_type: str,
        raw: bytes,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        old = self.store.get(rt, namespace, name)
        if old is None:
            raise not_found(rt, name)
        patched = apply_patch(old, content_type, raw)
        meta = patched.get("metadata") or {}
        # A resourceVersion inside the patch is a precondition, as on a real server.
        if (
            meta.get("resourceVersion")
            and meta["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise conflict(rt, name)
        if meta.get("name") != name or meta.get("namespace") != old["metadata"].get("namespace"):
            raise bad_request("metadata.name and metadata.namespace cannot be changed by a patch")
        return self._store_update(rt, old, patched, subresource)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Delete; returns (response body, finished). Finalizers make it a pending delete that
        sets deletionTimestamp and emits MODIFIED."""
        old = self.store.get(rt, namespace, name)
        if old is None:
            raise not_found(rt, name)
        preconditions = (options or {}).get("preconditions") or {}
        stored_rv = old["metadata"]["resourceVersion"]
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != stored_rv:
            raise conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{preconditions['resourceVersion']}, ResourceVersion in object meta: {stored_rv}",
            )
        if preconditions.get("uid") and preconditions["uid"] != old["metadata"].get("uid"):
            raise conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                f"UID in object meta: {old['metadata'].get('uid')}",
            )
        if rt is NAMESPACE:
            self._empty_namespace(name)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(old), False
            pending = copy.deepcopy(old)
            pending["metadata"]["deletionTimestamp"] = strategy.now_rfc3339()
            pending["metadata"]["deletionGracePeriodSeconds"] = 0
            pending["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            return self.store.commit(rt, pending, old), False
        final = self.store.commit(rt, None, old)
        if rt.returns_deleted_object:
            return final, True
        details: dict[str, Any] = {
            "name": name,
            "kind": rt.plural,
            "uid": old["metadata"].get("uid"),
        }
        if rt.group:
            details["group"] = rt.group
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }
        return body, True

    def _empty_namespace(self, namespace: str) -> None:
        """Namespace deletion removes its content first (the namespace controller's job)."""
        for rt in ALL_TYPES:
            if rt.namespaced:
                for obj in self.store.items(rt, namespace):
                    self.store.commit(rt, None, obj)
