"""Problems: every piece of user input the compiler rejects, as data for status and `explain`.

The compiler never raises on user objects; it drops the offending rule and records a `Problem`
here. The status writer turns problems into Kubernetes Events; `portico explain` prints them.
Reasons are CamelCase like Kubernetes Event reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The reasons the compiler emits; kept in one place so docs, tests and status agree.
INVALID_HOST: Final = "InvalidHost"
INVALID_PATH: Final = "InvalidPath"
INVALID_PATH_TYPE: Final = "InvalidPathType"
INVALID_BACKEND: Final = "InvalidBackend"
UNSUPPORTED_BACKEND: Final = "UnsupportedBackend"
INVALID_ANNOTATION: Final = "InvalidAnnotation"
# Annotations screened against the catalogue (controller/compiler/screening.py).
UNSUPPORTED_ANNOTATION: Final = "UnsupportedAnnotation"
UNKNOWN_ANNOTATION: Final = "UnknownAnnotation"
SNIPPET_REFUSED: Final = "SnippetRefused"
ACCESS_CONTROL_NOT_ENFORCED: Final = "AccessControlNotEnforced"
PATH_CONFLICT: Final = "PathConflict"
DEFAULT_BACKEND_CONFLICT: Final = "DefaultBackendConflict"
SERVICE_NOT_FOUND: Final = "ServiceNotFound"
SERVICE_PORT_NOT_FOUND: Final = "ServicePortNotFound"
EXTERNAL_NAME_NOT_ALLOWED: Final = "ExternalNameNotAllowed"
SECRET_INVALID: Final = "SecretInvalid"
# ssl-passthrough that cannot take effect (no --enable-ssl-passthrough, a wildcard or host-less
# rule, no "/" backend): the message says what happens to the host's HTTPS connections instead.
PASSTHROUGH_NOT_APPLIED: Final = "PassthroughNotApplied"
# server-alias names that another rule host or alias already holds (controller/compiler/
# ingress.py), custom-headers that cannot be served (fail closed: 503), a service-upstream
# Service without a cluster IP (its endpoints are used, as ingress-nginx falls back to them).
ALIAS_CONFLICT: Final = "AliasConflict"
CUSTOM_HEADERS_INVALID: Final = "CustomHeadersInvalid"
NO_CLUSTER_IP: Final = "NoClusterIP"
# A ConfigMap named by the ingress-nginx ConfigMap (proxy-set-headers) is missing, or one of its
# header entries cannot be sent (controller/compiler/headers.py).
CONFIGMAP_NOT_FOUND: Final = "ConfigMapNotFound"
INVALID_HEADER: Final = "InvalidHeader"
# A rule of a canary Ingress that pairs with no main Ingress's rule (same host, path and
# pathType), or whose main rule already has a canary or uses the same backend: not served.
CANARY_UNPAIRED: Final = "CanaryUnpaired"


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One rejected piece of an object: which object, a CamelCase reason, a human message."""

    kind: str
    ref: str  # ObjectRef "ns/name" ("name" for cluster-scoped objects)
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}: {self.reason}: {self.message}"
