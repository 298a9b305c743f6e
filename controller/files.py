"""The manifest-directory source: YAML files on disk become store events, as a watch would.

`ManifestSource` reads every `*.yaml` / `*.yml` under a directory (recursively, multi-document,
`List` kinds unpacked), keeps the objects of the kinds Portico reads and diffs each read against
the previous one, so the store sees the same ADDED / MODIFIED / DELETED events a Kubernetes watch
would produce. It polls (stat signatures every ~0.2 s): no inotify dependency, and it works on
ConfigMap volumes whose files change by a symlink swap.

A broken file (bad YAML, a document without apiVersion/kind, an object that does not parse)
becomes a `File` problem naming `<relative path>#<document index>` (0-based), and the last good
version of that whole file keeps serving: a half-saved edit never takes routes down.

Objects of other kinds are skipped, and each is named (`skipped`). One that looks meant for
Portico (`kind: Ingres`, an `extensions/v1beta1` Ingress: see `controller.kinds`) is also a
`File` problem, `UnknownKind` or `UnsupportedAPIVersion`; the rest of its file is used.

Manifest mode can also take its default certificate from a PEM file pair instead of a Secret
(`load_certificate_files`), read once at start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import yaml

from controller.compiler import Problem
from controller.compiler.tls import check_validity, load_pem_pair
from controller.kinds import is_read, mistake
from controller.objects import READ_KINDS, KubeObject, ObjectParseError, parse_object
from controller.store import Store, WatchEvent
from proxy.config import TLSCertificate

logger = logging.getLogger(__name__)

POLL_INTERVAL: Final = 0.2
SUFFIXES: Final = (".yaml", ".yml")
INVALID: Final = "InvalidManifest"
DUPLICATE: Final = "DuplicateObject"

# A file modified this recently (ns) may still be being written: read it again next tick.
# Filesystem timestamps come from a coarse clock, hence the margin.
_FRESH_NS: Final = 50_000_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)
Signature = tuple[int, int, int, int]  # (device, inode, size, mtime_ns)


@dataclass(frozen=True)
class Located:
    """One object and the document it came from (`path#index`, for problems and explain)."""

    obj: KubeObject
    where: str


@dataclass(frozen=True)
class Skipped:
    """An object Portico does not read, where it is, and the problem when it looks meant for
    Portico (a misspelt kind, an old apiVersion)."""

    where: str  # "path#index"
    api_version: str
    kind: str
    name: str  # "ns/name" when a namespace is given, else "name"
    problem: Problem | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.api_version} {self.kind} {self.name}"


@dataclass
class _FileState:
    # What the last read saw; None forces a read on the next tick.
    read_signature: Signature | None = None
    # What the previous tick saw: a changed file is read once it stops changing between ticks.
    seen_signature: Signature | None = None
    good: tuple[Located, ...] = ()  # the last good read
    problems: tuple[Problem, ...] = ()
    skipped: tuple[Skipped, ...] = ()


class ManifestSink(Protocol):
    """Where a watching source delivers changes (the reconciler)."""

    def apply(self, events: Sequence[WatchEvent]) -> None: ...

    def mark_listed(self, kind: str) -> None: ...

    def set_source_problems(self, problems: tuple[Problem, ...]) -> None: ...


class _Invalid(Exception):
    """A document of a file that cannot be used; carries its index and the reason."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


@dataclass
class ManifestSource:
    """Reads, diffs and watches one manifest directory."""

    directory: Path
    _files: dict[str, _FileState] = field(default_factory=dict, init=False)
    _current: dict[ObjectKey, Located] = field(default_factory=dict, init=False)
    _problems: tuple[Problem, ...] = field(default=(), init=False)
    _scanned: bool = field(default=False, init=False)

    @property
    def problems(self) -> tuple[Problem, ...]:
        """File problems of the current state: invalid manifests, then duplicate objects."""
        return self._problems

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """The objects Portico does not read, in file and document order."""
        return tuple(s for state in self._files.values() for s in state.skipped)

    def located(self, kind: str, namespace: str, name: str) -> str | None:
        """The `path#index` the object currently served comes from."""
        found = self._current.get((kind, namespace, name))
        return None if found is None else found.where

    # ---- one pass ---------------------------------------------------------------------------

    def scan(self) -> list[WatchEvent]:
        """Look at the directory once; the events turning the previous view into the new one.

        The first scan reads every file; later scans read the files whose signature changed
        and has stayed the same for one tick.
        """
        first = not self._scanned
        self._scanned = True
        try:
            paths = self._list()
        except OSError as exc:
            # A vanished or unreadable directory must not delete every route: keep serving.
            self._problems = (
                Problem("File", str(self.directory), INVALID, f"cannot list directory: {exc}"),
            )
            logger.warning(
                "manifests.unlistable", extra={"directory": str(self.directory), "reason": str(exc)}
            )
            return []

        changed = False
        for gone in set(self._files) - set(paths):
            del self._files[gone]
            changed = True
        for rel, path in paths.items():
            state = self._files.setdefault(rel, _FileState())
            try:
                st = path.stat()
            except OSError:
                continue  # vanished since listing: next tick drops it
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if signature == state.read_signature:
                continue
            stable = signature == state.seen_signature
            state.seen_signature = signature
            if not (first or stable):
                continue
            started = time.time_ns()
            self._read(rel, path, state)
            changed = True
            fresh = st.st_mtime_ns > started - _FRESH_NS
            state.read_signature = None if fresh else signature
        if not changed and not first:
            return []
        return self._merge()

    def _list(self) -> dict[str, Path]:
        if not self.directory.is_dir():
            raise NotADirectoryError(f"{self.directory} is not a directory")
        found: dict[str, Path] = {}
        for root, dirs, files in os.walk(self.directory, onerror=_raise):
            # Hidden directories are skipped: ConfigMap volumes keep a second copy of every file
            # under `..data` / `..2024_...`, editors keep backups in dot-directories.
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if name.startswith(".") or not name.endswith(SUFFIXES):
                    continue
                path = Path(root, name)
                if path.is_file():
                    found[path.relative_to(self.directory).as_posix()] = path
        return dict(sorted(found.items()))

    def _read(self, rel: str, path: Path, state: _FileState) -> None:
        skipped: list[Skipped] = []
        try:
            located = tuple(self._documents(rel, path, skipped))
        except _Invalid as exc:
            ref = f"{rel}#{exc.index}"
            state.problems = (Problem("File", ref, INVALID, exc.reason),)
            logger.debug(
                "manifest.invalid",
                extra={"file": rel, "document": exc.index, "reason": exc.reason},
            )
            return
        state.good = located
        state.problems = ()
        state.skipped = tuple(skipped)
        logger.debug("manifest.read", extra={"file": rel, "objects": len(located)})

    def _documents(self, rel: str, path: Path, skipped: list[Skipped]) -> Iterator[Located]:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _Invalid(0, f"cannot read file: {exc}") from None
        yield from self._parse(rel, text, skipped)

    def _parse(self, rel: str, text: str, skipped: list[Skipped]) -> Iterator[Located]:
        loaded = 0  # documents fully handled: a YAML error is in document `loaded`
        try:
            for doc in yaml.load_all(text, Loader=_Loader):
                yield from self._document(rel, loaded, doc, skipped)
                loaded += 1
        except yaml.YAMLError as exc:
            raise _Invalid(loaded, f"invalid YAML: {_yaml_reason(exc)}") from None

    def _document(
        self, rel: str, index: int, doc: Any, skipped: list[Skipped]
    ) -> Iterator[Located]:
        if doc is None:
            return  # an empty document (a trailing `---`, a comment-only file)
        if not isinstance(doc, Mapping):
            raise _Invalid(index, f"document is a {type(doc).__name__}, not an object")
        missing = [k for k in ("apiVersion", "kind") if not doc.get(k)]
        if missing:
            raise _Invalid(index, f"document has no {' and no '.join(missing)}")
        kind = doc["kind"]
        if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise _Invalid(index, "List items is not a list")
            for i, item in enumerate(items):
                if not isinstance(item, Mapping) or not item.get("kind"):
                    raise _Invalid(index, f"items[{i}] is not an object with a kind")
                yield from self._object(rel, index, item, skipped, prefix=f"items[{i}]: ")
            return
        yield from self._object(rel, index, doc, skipped)

    def _object(
        self,
        rel: str,
        index: int,
        raw: Mapping[str, Any],
        skipped: list[Skipped],
        *,
        prefix: str = "",
    ) -> Iterator[Located]:
        where = f"{rel}#{index}"
        if not is_read(raw.get("apiVersion"), raw.get("kind")):
            item = _skipped(where, prefix, raw)
            skipped.append(item)
            logger.debug(
                "manifest.skipped", extra={"file": rel, "document": index, "object": str(item)}
            )
            return
        try:
            obj = parse_object(raw)
        except ObjectParseError as exc:
            raise _Invalid(index, f"{prefix}{exc}") from None
        assert obj is not None  # is_read() admits only kinds that parse_object reads
        yield Located(obj, where)

    def _merge(self) -> list[WatchEvent]:
        merged: dict[ObjectKey, Located] = {}
        invalid: list[Problem] = []
        duplicates: list[Problem] = []
        for state in self._files.values():  # sorted by relative path
            invalid.extend(state.problems)
            invalid.extend(s.problem for s in state.skipped if s.problem is not None)
            for located in state.good:
                key = located.obj.key
                first = merged.get(key)
                if first is None:
                    merged[key] = located
                    continue
                obj = located.obj
                duplicates.append(
                    Problem(
                        "File",
                        located.where,
                        DUPLICATE,
                        f"{obj.kind} {obj.ref} is also defined in {first.where}, which wins; "
                        "this definition is ignored",
                    )
                )
        self._problems = (*invalid, *duplicates)

        events: list[WatchEvent] = []
        for key, located in merged.items():
            old = self._current.get(key)
            if old is None:
                events.append(WatchEvent("ADDED", located.obj))
            elif old.obj != located.obj:
                events.append(WatchEvent("MODIFIED", located.obj))
        events.extend(
            WatchEvent("DELETED", old.obj)
            for key, old in self._current.items()
            if key not in merged
        )
        self._current = merged
        return events

    # ---- feeding a store or a reconciler ----------------------------------------------------

    def load(self, store: Store) -> list[WatchEvent]:
        """Read the directory once into `store` and mark it synced (for one-shot commands)."""
        events = self.scan()
        for event in events:
            store.apply(event)
        for kind in READ_KINDS:
            store.mark_listed(kind)
        return events

    async def watch(self, sink: ManifestSink, interval: float = POLL_INTERVAL) -> None:
        """Feed `sink` forever: the full first read (then every kind is listed), then changes."""
        events = await asyncio.to_thread(self.scan)
        sink.apply(events)
        sink.set_source_problems(self._problems)
        for kind in sorted(READ_KINDS):
            sink.mark_listed(kind)
        logger.info(
            "manifests.loaded",
            extra={
                "directory": str(self.directory),
                "files": len(self._files),
                "objects": len(self._current),
                "skipped": len(self.skipped),
            },
        )
        while True:
            await asyncio.sleep(interval)
            problems = self._problems
            events = await asyncio.to_thread(self.scan)
            if events:
                sink.apply(events)
            if self._problems != problems:
                sink.set_source_problems(self._problems)


def read_manifests(directory: Path) -> tuple[Store, ManifestSource]:
    """A synced store holding a directory's objects, and the source (for its problems)."""
    source = ManifestSource(directory)
    store = Store()
    source.load(store)
    return store, source


def read_text(text: str, name: str) -> tuple[tuple[Located, ...], tuple[Skipped, ...]]:
    """The objects of one YAML stream (a file, standard input) read as a manifest directory
    reads each of its files; `name` stands for the file in `Located.where`.

    Raises ManifestError naming the first document that cannot be used.
    """
    skipped: list[Skipped] = []
    try:
        located = tuple(ManifestSource(Path(name))._parse(name, text, skipped))
    except _Invalid as exc:
        raise ManifestError(f"{name}#{exc.index}: {exc.reason}") from None
    return located, tuple(skipped)


class ManifestError(ValueError):
    """A YAML stream with a document that cannot be used."""


def _skipped(where: str, prefix: str, raw: Mapping[str, Any]) -> Skipped:
    api_version, kind = raw.get("apiVersion"), raw.get("kind")
    meta = raw.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = str(meta.get("name") or "<unnamed>")
    if meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    shown = Skipped(where, str(api_version or "<no apiVersion>"), str(kind), name)
    wrong = mistake(api_version, kind)
    if wrong is None:
        return shown
    problem = Problem(
        "File",
        where,
        wrong.reason,
        f"{prefix}{shown.api_version} {shown.kind} {name} is not read (skipped): "
        f"{wrong.advice(api_version)}",
    )
    return dataclasses.replace(shown, problem=problem)


def _raise(exc: OSError) -> None:
    raise exc


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc)


DEFAULT_CERTIFICATE_FILE_NAME: Final = "portico/default-certificate-file"


def load_certificate_files(cert_file: Path, key_file: Path) -> TLSCertificate | str:
    """The default certificate from a PEM file pair, or why it cannot be used.

    Read once at start: renewing these files takes a restart (a Secret in the manifest
    directory, named by --default-certificate, is picked up live instead).
    """
    source = f"default certificate files {cert_file}, {key_file}"
    try:
        cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
    except OSError as exc:
        return f"{source}: {exc.strerror}: {exc.filename}"
    loaded = load_pem_pair(cert_pem, key_pem, DEFAULT_CERTIFICATE_FILE_NAME, source)
    if isinstance(loaded, str):
        return loaded
    invalid = check_validity(loaded, datetime.datetime.now(datetime.UTC), source)
    return invalid if invalid else loaded.certificate
