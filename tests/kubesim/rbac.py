"""RBAC as the apiserver's authorizer applies it: ClusterRoles, Roles and their bindings.

`grants(documents, user)` turns rendered RBAC objects (e.g. `helm template` output) into the
atomic permissions the user holds, one `Grant` per (namespace, group, resource, verb, name)
that a rule lists; a request is allowed when any grant matches it. Bindings are followed when
the documents contain any (a Role nobody binds grants nothing); documents without bindings are
taken as bound to the user, which keeps hand-written rule lists short in tests. KubeSim records
which grants allowed a request, so a test can find permissions that nothing used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_ROLE_KINDS = ("ClusterRole", "Role")
_BINDING_KINDS = ("ClusterRoleBinding", "RoleBinding")


@dataclass(frozen=True)
class Grant:
    """One permission: `namespace` None means cluster-wide (a ClusterRole bound cluster-wide),
    `name` None means any object; "*" in group, resource or verb matches anything."""

    namespace: str | None
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    name: str | None = None

    def allows(
        self, verb: str, group: str, resource: str, namespace: str | None, name: str | None
    ) -> bool:
        return (
            (self.namespace is None or self.namespace == namespace)
            and self.group in ("*", group)
            and self.resource in ("*", resource)
            and self.verb in ("*", verb)
            and (self.name is None or self.name == name)
        )

    def __lt__(self, other: Grant) -> bool:
        """Sorted by namespace (cluster-wide first), group, resource, verb, name."""
        return self._key() < other._key()

    def _key(self) -> tuple[str, str, str, str, str]:
        return (self.namespace or "", self.group, self.resource, self.verb, self.name or "")

    def __str__(self) -> str:
        group = f".{self.group}" if self.group else ""
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        named = f" named {self.name}" if self.name else ""
        return f"{self.verb} {self.resource}{group}{named} {where}"


def _rule_grants(rule: Mapping[str, Any], namespace: str | None) -> Iterable[Grant]:
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in rule.get("verbs") or []:
                for name in rule.get("resourceNames") or [None]:
                    yield Grant(namespace, group, resource, verb, name)


def _is_subject(subject: Mapping[str, Any], user: str, binding_namespace: str | None) -> bool:
    kind = subject.get("kind")
    name = subject.get("name")
    if kind == "User":
        return bool(name == user)
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user == f"system:serviceaccount:{namespace}:{name}"
    if kind == "Group" and user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        return name in ("system:authenticated", "system:serviceaccounts") or (
            name == f"system:serviceaccounts:{namespace}"
        )
    return False


def grants(documents: Iterable[Mapping[str, Any] | None], user: str) -> frozenset[Grant]:
    """Every permission `user` holds under these RBAC documents (other kinds are ignored)."""
    docs: list[Mapping[str, Any]] = [d for d in documents if d]
    roles: dict[tuple[str, str | None, str], Mapping[str, Any]] = {}
    for doc in docs:
        if doc.get("kind") in _ROLE_KINDS:
            meta = doc.get("metadata") or {}
            scope = meta.get("namespace") if doc["kind"] == "Role" else None
            roles[(doc["kind"], scope, meta.get("name", ""))] = doc
    bindings = [d for d in docs if d.get("kind") in _BINDING_KINDS]
    out: set[Grant] = set()
    if not bindings:
        for (_, scope, _), role in roles.items():
            for rule in role.get("rules") or []:
                out.update(_rule_grants(rule, scope))
        return frozenset(out)
    for binding in bindings:
        meta = binding.get("metadata") or {}
        # A RoleBinding grants within its namespace, whatever role it refers to.
        scope = meta.get("namespace") if binding["kind"] == "RoleBinding" else None
        if not any(_is_subject(s, user, scope) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        role_scope = scope if ref.get("kind") == "Role" else None
        bound = roles.get((ref.get("kind", ""), role_scope, ref.get("name", "")))
        if bound is None:
            continue  # a binding to a missing role grants nothing, as on a real server
        for rule in bound.get("rules") or []:
            out.update(_rule_grants(rule, scope))
    return frozenset(out)
