"""Which apiVersion/kind pairs Portico reads, and whether an object it skips looks like a mistake.

A manifest directory may hold any object; the manifest source keeps the kinds Portico reads and
skips the rest. A skipped object is a mistake, rather than something meant for another
controller, when its kind is one Portico reads under another apiVersion (`extensions/v1beta1`
Ingress, `discovery.k8s.io/v1beta1` EndpointSlice: removed from Kubernetes, so `kubectl apply`
refuses them too) or when its kind is a near miss of one: the same name in another case
(`ingress`), a plural (`EndpointSlices`), or one slip of the keyboard (`Ingres`, `Secert`).

"One slip" is the optimal-string-alignment edit distance (insertions, deletions, substitutions
and adjacent transpositions), case-insensitive, within a budget of one edit per six letters of
the kind it would be (at least one). A ratio such as difflib's cannot separate these: `Endpoints`
(a real kind, 4 edits from `EndpointSlice`) scores 0.82 and the typo `Secert` 0.83, and
`IngressClassParams` (AWS) 0.80; the budget keeps `Egress` and `Device` (two edits from
`Ingress` / `Service`) from being taken for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# The apiVersion each kind Portico reads is served under (what `controller/kube/client.py`
# watches; a test keeps the two equal). The keys are `controller.objects.READ_KINDS`.
API_VERSIONS: Final[Mapping[str, str]] = {
    "Ingress": "networking.k8s.io/v1",
    "IngressClass": "networking.k8s.io/v1",
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Secret": "v1",
    "ConfigMap": "v1",
}

# Problem reasons (CamelCase, like the compiler's).
UNKNOWN_KIND: Final = "UnknownKind"
UNSUPPORTED_API_VERSION: Final = "UnsupportedAPIVersion"

_LETTERS_PER_EDIT: Final = 6


@dataclass(frozen=True, slots=True)
class Mistake:
    """Why a skipped object looks meant for Portico, and what it should have said."""

    reason: str  # UNKNOWN_KIND or UNSUPPORTED_API_VERSION
    kind: str  # the kind Portico reads that was probably meant
    api_version: str  # the apiVersion Portico reads that kind under

    def advice(self, api_version: object) -> str:
        """The fix, as the YAML to write."""
        if self.reason == UNSUPPORTED_API_VERSION:
            return f"Portico reads {self.kind} as apiVersion: {self.api_version}"
        fix = f"kind: {self.kind}"
        if api_version != self.api_version:
            fix += f" with apiVersion: {self.api_version}"
        return f"did you mean {fix}?"


def is_read(api_version: object, kind: object) -> bool:
    """True for the exact apiVersion/kind pairs Portico reads."""
    return isinstance(kind, str) and API_VERSIONS.get(kind) == api_version


def mistake(api_version: object, kind: object) -> Mistake | None:
    """For an object Portico skips: the read kind it was probably meant as, or None when it is
    just another kind (a Deployment, a ConfigMap, ...)."""
    if not isinstance(kind, str) or is_read(api_version, kind):
        return None
    if kind in API_VERSIONS:
        return Mistake(UNSUPPORTED_API_VERSION, kind, API_VERSIONS[kind])
    folded = kind.lower()
    for read in API_VERSIONS:
        if _near(folded, read.lower()):
            return Mistake(UNKNOWN_KIND, read, API_VERSIONS[read])
    return None


def _near(kind: str, read: str) -> bool:
    """Case-folded `kind` is `read`, its plural, or within the edit budget of it."""
    if kind == read or kind in (read + "s", read + "es"):
        return True
    return within_budget(kind, read)


def within_budget(word: str, target: str) -> bool:
    """`word` is one slip of the keyboard per six letters of `target` (at least one) from it.

    Also used for misspelt annotation names (`controller.compiler.catalogue`)."""
    budget = max(1, len(target) // _LETTERS_PER_EDIT)
    return abs(len(word) - len(target)) <= budget and edit_distance(word, target) <= budget


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: Levenshtein plus adjacent transpositions."""
    before: list[int] | None = None
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ca != cb),  # substitution
            )
            if before is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], before[j - 2] + 1)  # transposition
        before, previous = previous, current
    return previous[len(b)]
