"""Kubernetes `Status` error bodies with the real apiserver's reasons and message formats.

Every failure the simulator produces, over HTTP or from its direct Python API, is an `ApiError`
carrying one of these bodies; clients (kubernetes-asyncio's leader election in particular) parse
them, so they must be complete.
"""

from __future__ import annotations

from typing import Any

from tests.kubesim.resources import ResourceType

# The reason the apiserver uses for each status code it can produce (StatusReason constants).
REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(
    code: int,
    message: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason if reason is not None else REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details


class ApiError(Exception):
    """A failed API operation; `body` is the Status object sent to the client."""

    def __init__(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{body['code']} {body['reason']}: {body['message']}")
        self.body = body
        self.headers = headers or {}

    @property
    def code(self) -> int:
        code: int = self.body["code"]
        return code

    @property
    def reason(self) -> str:
        reason: str = self.body["reason"]
        return reason


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_body(404, f'{rt.group_resource} "{name}" not found', details=_details(rt, name))
    )


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_body(
            409,
            f'{rt.group_resource} "{name}" already exists',
            "AlreadyExists",
            _details(rt, name),
        )
    )


def conflict(rt: ResourceType, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        status_body(
            409,
            f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
            "Conflict",
            _details(rt, name),
        )
    )


def invalid(rt: ResourceType, name: str, causes: list[str]) -> ApiError:
    """422 with apimachinery's aggregate format: one cause bare, several in brackets."""
    joined = causes[0] if len(causes) == 1 else "[" + ", ".join(causes) + "]"
    details = _details(rt, name)
    details["kind"] = rt.kind
    details["causes"] = [
        {"reason": "FieldValueInvalid", "message": cause, "field": cause.split(":", 1)[0]}
        for cause in causes
    ]
    return ApiError(
        status_body(422, f'{rt.qualified_kind} "{name}" is invalid: {joined}', details=details)
    )


def bad_request(message: str) -> ApiError:
    return ApiError(status_body(400, message))


def invalid_params(message: str) -> ApiError:
    """422 for bad list/watch options (apimachinery validates ListOptions as an object)."""
    return ApiError(status_body(422, f'ListOptions.meta.k8s.io "" is invalid: {message}'))


def gone(message: str) -> ApiError:
    return ApiError(status_body(410, message, "Expired"))


def forbidden(
    rt: ResourceType,
    verb: str,
    *,
    user: str,
    subresource: str | None,
    namespace: str | None,
    name: str | None,
) -> ApiError:
    resource = f"{rt.plural}/{subresource}" if subresource else rt.plural
    subject = f'{rt.group_resource} "{name}"' if name else rt.group_resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
        f'in API group "{rt.group}" {scope}'
    )
    return ApiError(status_body(403, message, details=_details(rt, name or "")))


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        status_body(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json-patch+json, application/merge-patch+json, "
            f'application/strategic-merge-patch+json (got "{content_type}")',
        )
    )


def method_not_allowed(method: str) -> ApiError:
    return ApiError(
        status_body(
            405, f"the server does not allow this method on the requested resource ({method})"
        )
    )


def not_found_path(path: str) -> ApiError:
    return ApiError(
        status_body(404, f'the server could not find the requested resource (path "{path}")')
    )


def generic(code: int, message: str | None = None) -> ApiError:
    reason = REASONS.get(code, "Unknown")
    return ApiError(status_body(code, message or f"injected failure: {reason}"))
