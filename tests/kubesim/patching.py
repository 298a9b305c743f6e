"""PATCH bodies applied to stored objects, chosen by Content-Type as the apiserver does.

- `application/json-patch+json`: RFC 6902 through the `jsonpatch` package;
- `application/merge-patch+json`: RFC 7386;
- `application/strategic-merge-patch+json`: treated as RFC 7386 too. Caveat: real strategic merge
  merges lists that declare a patch merge key (containers by name, ports by port...) and honours
  `$patch`/`$retainKeys` directives; here every list is replaced whole and directive keys are
  dropped. Portico only patches `status.loadBalancer.ingress`, an atomic list, where both agree;
- `application/apply-patch+yaml` (server-side apply) and anything else: 415.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from tests.kubesim.status import ApiError, bad_request, status_body, unsupported_media_type

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _drop_directives(patch: Any) -> Any:
    if isinstance(patch, dict):
        return {k: _drop_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_drop_directives(v) for v in patch]
    return patch


def apply_patch(obj: dict[str, Any], content_type: str, raw: bytes) -> dict[str, Any]:
    """Return the patched copy of `obj`, or raise the ApiError a real server would send."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        raise unsupported_media_type(media)
    try:
        patch = json.loads(raw or b"null")
    except ValueError as exc:
        raise bad_request(f"error decoding patch: {exc}") from exc
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            patched = jsonpatch.apply_patch(obj, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(
                status_body(
                    422, f"the server rejected our request due to an error in our request: {exc}"
                )
            ) from exc
        if not isinstance(patched, dict):
            raise bad_request("json patch replaced the whole object with a non-object")
        return patched
    if not isinstance(patch, dict):
        raise bad_request("patch body must be a JSON object")
    if media == STRATEGIC_MERGE_PATCH:
        patch = _drop_directives(patch)
    result: dict[str, Any] = merge_patch(obj, patch)
    return result
