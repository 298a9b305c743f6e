"""`portico compat-report`: what Portico will do with each ingress-nginx annotation.

Ingresses come from manifests (directories, files, or standard input such as `kubectl get
ingress -A -o yaml`, read as `controller/files.py` reads a manifest directory) or from a cluster
(one list through `controller/kube/client.py`); the ingress-nginx controller ConfigMap from a
file. Each annotation under `nginx.ingress.kubernetes.io/` or `portico.dev/` is screened exactly
as the compiler screens it (`controller/compiler/screening.py`), so the report and the served
configuration cannot disagree; annotations of other tools (cert-manager, kubectl, ...) are not
reported. The ConfigMap's keys are read by `controller/configmap.py`, as
`--nginx-configmap` reads them in the controller.

Exit status: 0 when every row is supported; 1 when something is different, unsupported or
unknown; 2 when an Ingress would not be served (a snippet refuses it, or access control Portico
does not enforce yet fails closed) or the ConfigMap holds access control Portico does not
enforce or cannot read (every Ingress, or every one without its own list, would fail closed).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from controller.compiler.annotations import parse_annotations
from controller.compiler.catalogue import DEFAULTS
from controller.compiler.ingress import LEGACY_CLASS_ANNOTATION
from controller.compiler.screening import REPORT_STATUSES, Finding, screen
from controller.configmap import KeyRow, first_in_file, read

EXIT_SUPPORTED: Final = 0
EXIT_DIFFERENCES: Final = 1
EXIT_NOT_SERVED: Final = 2

Outcome = Literal["served", "refused", "fails-closed"]


@dataclass(frozen=True, slots=True)
class Subject:
    """What the report needs of one Ingress."""

    namespace: str
    name: str
    ingress_class: str | None  # spec.ingressClassName, else the legacy annotation
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class IngressReport:
    subject: Subject
    findings: tuple[Finding, ...]
    outcome: Outcome
    blockers: tuple[str, ...]  # the annotations that refuse it or keep it out of service


@dataclass(frozen=True, slots=True)
class Report:
    ingresses: tuple[IngressReport, ...]
    configmap: tuple[KeyRow, ...] = ()
    configmap_name: str | None = None  # "namespace/name" of the ConfigMap read, if any

    def summary(self) -> dict[str, int]:
        """Rows (annotations and ConfigMap keys) per status, every status present."""
        counts: dict[str, int] = dict.fromkeys(REPORT_STATUSES, 0)
        for item in self.ingresses:
            for finding in item.findings:
                counts[finding.status] += 1
        for row in self.configmap:
            counts[row.status] += 1
        return counts

    def exit_code(self) -> int:
        if any(i.outcome != "served" for i in self.ingresses) or any(
            r.access_control or r.unreadable for r in self.configmap
        ):
            return EXIT_NOT_SERVED
        summary = self.summary()
        if any(count for status, count in summary.items() if status != "supported"):
            return EXIT_DIFFERENCES
        return EXIT_SUPPORTED

    def to_json(self) -> dict[str, Any]:
        return {
            "ingresses": [
                {
                    "namespace": i.subject.namespace,
                    "name": i.subject.name,
                    "ingressClass": i.subject.ingress_class,
                    "annotations": [
                        {"name": f.name, "value": f.value, "status": f.status, "detail": f.detail}
                        for f in i.findings
                    ],
                }
                for i in self.ingresses
            ],
            "configMap": [
                {"key": r.key, "value": r.value, "status": r.status, "detail": r.detail}
                for r in self.configmap
            ],
            "summary": self.summary(),
        }


# ---- building the report ----------------------------------------------------------------------


def ingress_report(subject: Subject) -> IngressReport:
    """Screen one Ingress as the compiler does (with the default settings)."""
    _, errors = parse_annotations(subject.annotations)
    screening = screen(subject.annotations, {e.annotation: e.reason for e in errors})
    outcome: Outcome = "served"
    blockers: tuple[str, ...] = ()
    if screening.refused:
        outcome, blockers = "refused", screening.refused
    elif screening.unenforced or screening.unreadable:
        outcome, blockers = "fails-closed", screening.unenforced + screening.unreadable
    return IngressReport(subject, screening.findings, outcome, blockers)


def build(subjects: Iterable[Subject], configmap: tuple[str, Mapping[str, str]] | None) -> Report:
    """The report, Ingresses sorted by namespace/name (the first of duplicates kept). The
    ConfigMap's rows are what `portico controller --nginx-configmap` does with it (with no
    setting given explicitly)."""
    seen: dict[tuple[str, str], Subject] = {}
    for subject in subjects:
        seen.setdefault((subject.namespace, subject.name), subject)
    ingresses = tuple(ingress_report(seen[key]) for key in sorted(seen))
    if configmap is None:
        return Report(ingresses)
    ref, data = configmap
    return Report(ingresses, read(data, ref).rows, ref)


def subject_from_raw(raw: Mapping[str, Any]) -> Subject:
    """A Subject from an Ingress as the API serves it (only metadata and the class are read)."""
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    cls = spec.get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION)
    return Subject(
        str(meta.get("namespace") or "default"),
        str(meta.get("name") or ""),
        None if cls is None else str(cls),
        annotations,
    )


class InputError(ValueError):
    """Input the report cannot use; the message says which and why."""


def read_sources(sources: Iterable[str], stdin: str | None) -> list[Subject]:
    """Ingresses of directories, files and "-" (`stdin`'s text), in the order given."""
    from controller.files import ManifestError, read_manifests, read_text
    from controller.objects import Ingress

    subjects: list[Subject] = []
    for source in sources:
        if source == "-":
            text = stdin or ""
            name = "<stdin>"
        elif Path(source).is_dir():
            store, manifests = read_manifests(Path(source))
            if manifests.problems:
                raise InputError("; ".join(f"{source}: {p}" for p in manifests.problems))
            objects: Iterable[object] = store.objects("Ingress")
            subjects.extend(_subject(o) for o in objects if isinstance(o, Ingress))
            continue
        else:
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"{source}: cannot read: {exc}") from None
            name = source
        try:
            located, skipped = read_text(text, name)
        except ManifestError as exc:
            raise InputError(str(exc)) from None
        mistakes = [s.problem for s in skipped if s.problem is not None]
        if mistakes:
            raise InputError("; ".join(str(p) for p in mistakes))
        subjects.extend(_subject(item.obj) for item in located if isinstance(item.obj, Ingress))
    return subjects


def _subject(ingress: Any) -> Subject:
    cls = ingress.ingress_class_name or ingress.annotations.get(LEGACY_CLASS_ANNOTATION)
    return Subject(ingress.namespace, ingress.name, cls, dict(ingress.annotations))


def read_configmap(path: Path) -> tuple[str, dict[str, str]]:
    """("namespace/name", data) of the first ConfigMap in a YAML file (a List is unpacked)."""
    try:
        return first_in_file(path)
    except ValueError as exc:
        raise InputError(str(exc)) from None


async def read_cluster(kubeconfig: Path) -> list[Subject]:
    """Every Ingress of the cluster, in one list request."""
    from controller.kube import ApiError
    from controller.kube.client import INGRESSES, ConfigError, open_api

    try:
        api = await open_api(kubeconfig, "portico compat-report")
    except (ConfigError, OSError, ValueError) as exc:
        raise InputError(f"--kubeconfig {kubeconfig}: {exc}") from None
    try:
        listed = await api.list(INGRESSES, None)
    except ApiError as exc:
        raise InputError(f"listing Ingresses: {exc}") from None
    finally:
        await api.close()
    return [subject_from_raw(item) for item in listed.get("items") or [] if isinstance(item, dict)]


# ---- text -------------------------------------------------------------------------------------

_WIDTH: Final = 100
_STATUS_WIDTH: Final = 12
_VALUE_MAX: Final = 60


def _value(value: str) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= _VALUE_MAX else shown[: _VALUE_MAX - 4] + '..."'


def _detail(detail: str) -> list[str]:
    indent = " " * (2 + _STATUS_WIDTH + 1)
    return textwrap.wrap(detail, _WIDTH, initial_indent=indent, subsequent_indent=indent)


def _verdict(item: IngressReport) -> str:
    if item.outcome == "refused":
        return f"REFUSED, not served (snippet: {', '.join(item.blockers)})"
    if item.outcome == "fails-closed":
        return (
            "FAILS CLOSED, every request answered by Portico: access control not enforced "
            "yet or not readable: " + ", ".join(item.blockers)
        )
    idle = sum(1 for f in item.findings if f.status in ("unsupported", "unknown"))
    if idle:
        return f"served; {idle} annotation{'s' if idle != 1 else ''} without effect"
    return "served"


def render_text(report: Report) -> list[str]:
    """Per Ingress, per annotation: status, name, value, what Portico does; then totals."""
    lines: list[str] = []
    for item in report.ingresses:
        s = item.subject
        cls = s.ingress_class or "none"
        lines.append(f"Ingress {s.namespace}/{s.name} (class {cls}): {_verdict(item)}")
        if not item.findings:
            lines.append("  (no ingress-nginx or Portico annotations)")
        for f in item.findings:
            lines.append(f"  {f.status:<{_STATUS_WIDTH}} {f.name}: {_value(f.value)}")
            lines.extend(_detail(f.detail))
        lines.append("")
    if report.configmap_name is not None:
        lines.append(f"ConfigMap {report.configmap_name}:")
        for row in report.configmap:
            lines.append(f"  {row.status:<{_STATUS_WIDTH}} {row.key}: {_value(row.value)}")
            lines.extend(_detail(row.detail))
        lines.append("")
    outcomes = {o: sum(1 for i in report.ingresses if i.outcome == o) for o in _OUTCOMES}
    lines.append(
        f"Ingresses: {len(report.ingresses)}: {outcomes['served']} served, "
        f"{outcomes['refused']} refused (snippets), {outcomes['fails-closed']} answered "
        "403 (access control not enforced yet)"
    )
    annotations = dict.fromkeys(REPORT_STATUSES, 0)
    for item in report.ingresses:
        for f in item.findings:
            annotations[f.status] += 1
    lines.append(
        f"Annotations: {sum(annotations.values())}: "
        + ", ".join(f"{n} {s}" for s, n in annotations.items())
    )
    if report.configmap_name is not None:
        keys = {s: sum(1 for r in report.configmap if r.status == s) for s in REPORT_STATUSES}
        lines.append(
            f"ConfigMap keys: {len(report.configmap)}: "
            + ", ".join(f"{n} {s}" for s, n in keys.items())
        )
    lines.append("Portico defaults that differ from ingress-nginx's (no annotation needed):")
    for d in DEFAULTS:
        if d.status == "different":
            text = f"{d.topic}: ingress-nginx: {d.ingress_nginx}; Portico: {d.portico}"
            lines.extend(
                textwrap.wrap(text, _WIDTH, initial_indent="  - ", subsequent_indent="    ")
            )
    return lines


_OUTCOMES: Final[tuple[Outcome, ...]] = ("served", "refused", "fails-closed")
