"""Screening an Ingress's annotations against the catalogue: nothing is silently ignored.

`screen` looks at every annotation under `nginx.ingress.kubernetes.io/` and `portico.dev/` and
says, per annotation, what Portico does with it (a `Finding`, with the statuses of
`portico compat-report`) and, for the Ingress as a whole, whether it must stay out of service:

- a snippet annotation refuses the whole Ingress (`SnippetRefused`): Portico never runs nginx
  configuration text, and a snippet often holds access rules;
- an access-control annotation Portico does not enforce yet fails closed
  (`AccessControlNotEnforced`): its routes are served with a policy step answering 403, so no
  request reaches the pods unchecked, unless the operator chose
  `--serve-without-access-control`. `enable-global-auth: "false"` does not count (Portico has
  no global authentication to turn off);
- an access-control annotation Portico enforces (source ranges) with a value it cannot read
  fails closed too (the compiler answers 503, as ingress-nginx denies such a location), and
  no setting serves it open.

The compiler turns a `Screening` into problems (`problems()`); `controller/compat.py` prints
the findings. Both therefore agree on every status by construction.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from controller.compiler.catalogue import (
    ANNOTATIONS,
    NGINX_PREFIX,
    PORTICO_PREFIX,
    RETIRED,
    Entry,
    nearest,
)
from controller.compiler.problems import (
    ACCESS_CONTROL_NOT_ENFORCED,
    SNIPPET_REFUSED,
    UNKNOWN_ANNOTATION,
    UNSUPPORTED_ANNOTATION,
    Problem,
)

ReportStatus = Literal["supported", "different", "unsupported", "refused", "unknown"]
REPORT_STATUSES: Final[tuple[ReportStatus, ...]] = (
    "supported",
    "different",
    "unsupported",
    "refused",
    "unknown",
)

# strconv.ParseBool's false spellings, which ingress-nginx reads booleans with.
_FALSE: Final = frozenset({"0", "f", "F", "false", "FALSE", "False"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One annotation as written, and what Portico does with it."""

    name: str  # the full annotation name
    value: str
    status: ReportStatus
    detail: str
    # This annotation makes the Ingress's routes answer 403 (unenforced access control).
    fails_closed: bool = False
    # The problem reason it raises on its own (UnsupportedAnnotation, UnknownAnnotation), if any.
    reason: str | None = None
    # Enforced access control whose value cannot be read: the routes fail closed (503).
    unreadable: bool = False


@dataclass(frozen=True, slots=True)
class Screening:
    findings: tuple[Finding, ...]  # sorted by name

    @property
    def refused(self) -> tuple[str, ...]:
        """The snippet annotations that refuse the Ingress."""
        return tuple(f.name for f in self.findings if f.status == "refused")

    @property
    def unenforced(self) -> tuple[str, ...]:
        """The access-control annotations that make the Ingress's routes answer 403."""
        return tuple(f.name for f in self.findings if f.fails_closed)

    @property
    def unreadable(self) -> tuple[str, ...]:
        """The enforced access-control annotations whose invalid value fails the routes closed."""
        return tuple(f.name for f in self.findings if f.unreadable)

    @property
    def withheld(self) -> bool:
        """True when none of the Ingress's routes may be served (a snippet)."""
        return bool(self.refused)

    def denied(self, serve_without_access_control: bool) -> bool:
        """True when every request for the Ingress's routes is answered 403 by Portico."""
        return bool(self.unenforced) and not serve_without_access_control

    def problems(self, ref: str, serve_without_access_control: bool) -> list[Problem]:
        """The problems of an Ingress (`ref` "ns/name") carrying these annotations."""
        out = [
            Problem("Ingress", ref, f.reason, _message(f))
            for f in self.findings
            if f.reason is not None
        ]
        if self.refused:
            out.append(
                Problem(
                    "Ingress",
                    ref,
                    SNIPPET_REFUSED,
                    f"Ingress refused, none of its routes are served: {_names(self.refused)} "
                    "would inject nginx configuration text, which Portico never runs; a snippet "
                    "often holds access rules (such as `deny all;`) and serving without them "
                    "could expose what they protect. Remove the snippet and express it with "
                    "supported annotations",
                )
            )
        elif self.unenforced:
            names = _names(self.unenforced)
            if serve_without_access_control:
                message = (
                    f"served WITHOUT its access control: Portico does not enforce {names} yet, "
                    "and --serve-without-access-control is on"
                )
            else:
                message = (
                    f"routes answered 403 by Portico (fail closed): Portico does not enforce "
                    f"{names} yet, and forwarding would let requests reach the pods unchecked; "
                    "the access log gives the reason AccessControlNotEnforced. "
                    "--serve-without-access-control serves them anyway"
                )
            out.append(Problem("Ingress", ref, ACCESS_CONTROL_NOT_ENFORCED, message))
        return out


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def _message(finding: Finding) -> str:
    if finding.status == "unknown":
        return f"annotation {finding.name} is unknown: {finding.detail}"
    return f"annotation {finding.name} is not supported: {finding.detail}"


def _access(entry: Entry, value: str) -> tuple[bool, str]:
    """(fails closed, detail) of an unsupported access-control annotation with this value."""
    if entry.name == "enable-global-auth" and value in _FALSE:
        return False, (
            'not enforced yet, but "false" only turns off global authentication, which Portico '
            "does not have, so the Ingress is served."
        )
    return True, entry.describe()


@functools.lru_cache(maxsize=1024)
def _unknown_detail(prefix: str, suffix: str) -> str:
    retired = RETIRED.get(suffix)
    if retired is not None:
        return f"no effect (on ingress-nginx either): {retired}."
    near = nearest(suffix)
    if near is not None:
        return f"no effect (on ingress-nginx either); did you mean {prefix}{near}?"
    return "no effect: it is not an ingress-nginx or Portico annotation."


def _finding(
    name: str, value: str, prefix: str, invalid: Mapping[str, str], overridden: bool
) -> Finding:
    suffix = name[len(prefix) :]
    entry = ANNOTATIONS.get(suffix)
    if entry is None:
        return Finding(
            name, value, "unknown", _unknown_detail(prefix, suffix), reason=UNKNOWN_ANNOTATION
        )
    if entry.status in ("supported", "different"):
        reason = invalid.get(name)
        if reason is not None and entry.access_control:
            # The compiler reports it as InvalidAnnotation already.
            return Finding(
                name,
                value,
                "unsupported",
                f"this value is not accepted ({reason}), so every request for the Ingress's "
                "routes is answered 503 (fail closed), as ingress-nginx denies such a location. "
                + entry.describe(),
                unreadable=True,
            )
        if reason is not None:
            # The compiler reports it as InvalidAnnotation already.
            return Finding(
                name,
                value,
                "unsupported",
                f"this value is not accepted ({reason}), so the annotation has no effect. "
                + entry.describe(),
            )
        detail = entry.describe()
        if overridden:
            detail = f"overridden by {PORTICO_PREFIX}{suffix}, which wins. {detail}"
        return Finding(name, value, entry.status, detail)
    if entry.status == "refused":
        return Finding(name, value, "refused", entry.describe())
    if entry.fails_closed:
        closed, detail = _access(entry, value)
        return Finding(name, value, "unsupported", detail, closed, UNSUPPORTED_ANNOTATION)
    return Finding(name, value, "unsupported", entry.describe(), reason=UNSUPPORTED_ANNOTATION)


_PREFIXES: Final = (NGINX_PREFIX, PORTICO_PREFIX)
_cache: dict[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]], Screening] = {}
_CACHE_MAX: Final = 4096


def screen(annotations: Mapping[str, str], invalid: Mapping[str, str] | None = None) -> Screening:
    """Findings for the annotations under Portico's two prefixes, sorted by name.

    `invalid` maps the annotations whose value the parser refused to the reason.
    """
    relevant = tuple(sorted((k, v) for k, v in annotations.items() if k.startswith(_PREFIXES)))
    if not relevant:
        return _NOTHING
    # Thousands of Ingresses usually share a handful of annotation sets (as in annotations.py).
    key = (relevant, tuple(sorted((invalid or {}).items())))
    cached = _cache.get(key)
    if cached is not None:
        return cached
    refused = invalid or {}
    findings: list[Finding] = []
    for name, value in relevant:
        if name.startswith(NGINX_PREFIX):
            overridden = PORTICO_PREFIX + name[len(NGINX_PREFIX) :] in annotations
            findings.append(_finding(name, value, NGINX_PREFIX, refused, overridden))
        else:
            findings.append(_finding(name, value, PORTICO_PREFIX, refused, False))
    result = Screening(tuple(findings))
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = result
    return result


_NOTHING: Final = Screening(())
