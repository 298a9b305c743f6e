"""The reconciler: the single loop between sources and the publisher.

Sources (the manifest directory, the Kubernetes watches) hand it events; it applies them
to the store at once, debounces (about 20 ms of quiet, forced after 250 ms of steady churn),
never compiles before every kind has been listed, then runs the incremental `Compiler` and
yields a `CompileResult` whenever the snapshot actually changed. Problems (the compiler's and the
source's) are logged once when they appear, not on every compile. Validity changes with time
alone, so with no change at all it still compiles a second after the moment the last result
names (`refresh_at`: a certificate expires or becomes valid); the expired one then falls back to
the default certificate with a `SecretInvalid` problem, through the same compile as an edit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

from controller.compiler import Compiler, CompileResult, CompileSettings, Problem
from controller.store import Store, WatchEvent
from proxy.config import Snapshot

logger = logging.getLogger(__name__)

# Seconds after a result's `refresh_at` at which it is compiled again: X.509 times are whole
# seconds, and the loop's clock and the wall clock may disagree slightly.
REFRESH_MARGIN: Final = 1.0
# The wall clock is read again at least this often (seconds), whatever the next `refresh_at`:
# the wait runs on the loop's monotonic clock, which a suspended VM or a stepped system clock
# leaves behind, and a certificate must still stop being served within a minute of expiring.
CLOCK_CHECK: Final = 60.0
QUIET: Final = 0.02  # seconds without a change before compiling (a burst of events is one compile)
MAX_DELAY: Final = 0.25  # seconds after the first change at most, even under steady churn


class ProblemLog:
    """Logs each problem once when it appears, and once when it goes away."""

    def __init__(self) -> None:
        self._seen: set[Problem] = set()

    def update(self, problems: Iterable[Problem]) -> None:
        current = set(problems)
        for problem in sorted(current - self._seen, key=_order):
            logger.warning("problem", extra=_fields(problem))
        for problem in sorted(self._seen - current, key=_order):
            logger.info("problem.resolved", extra=_fields(problem))
        self._seen = current


def _order(problem: Problem) -> tuple[str, str, str, str]:
    return (problem.kind, problem.ref, problem.reason, problem.message)


def _fields(problem: Problem) -> dict[str, object]:
    # `message` is reserved on LogRecords (it is the formatted event), hence `detail`.
    fields: dict[str, object] = {
        "kind": problem.kind,
        "ref": problem.ref,
        "reason": problem.reason,
        "detail": problem.message,
    }
    if problem.kind == "File":
        # File problems name "path#document": also log them apart for grep-ability.
        path, _, document = problem.ref.rpartition("#")
        if path and document.isdigit():
            fields["file"] = path
            fields["document"] = int(document)
    return fields


class Reconciler:
    """Applies source events to a store and turns settled changes into compile results.

    The source side (`apply`, `mark_listed`, `set_source_problems`) is synchronous and runs on
    the same event loop as `results()`, so the store is only ever touched from one task at a time.
    """

    def __init__(
        self,
        store: Store,
        compiler: Compiler,
        *,
        quiet: float = QUIET,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.time,
        clock_check: float = CLOCK_CHECK,
    ) -> None:
        """`clock` is the wall clock (Unix time) certificates are checked against."""
        self._store = store
        self._compiler = compiler
        # Changes of the ConfigMaps the settings name (proxy-set-headers) must recompile.
        store.pin_configmaps(compiler.settings.configmaps())
        self._quiet = quiet
        self._max_delay = max_delay
        self._clock = clock
        self._clock_check = clock_check
        self._wake = asyncio.Event()
        self._dirty = True  # nothing compiled yet
        # Problems of the sources, by origin (the objects' source; the ingress-nginx ConfigMap).
        self._source_problems: dict[str, tuple[Problem, ...]] = {}
        self._compiled: CompileResult | None = None
        self._failure: BaseException | None = None
        self.problem_log = ProblemLog()

    # ---- the source side ----------------------------------------------------------------------

    def apply(self, events: Sequence[WatchEvent]) -> None:
        changed = False
        for event in events:
            changed = self._store.apply(event) or changed
        if changed:
            self._dirty = True
            self._wake.set()

    def mark_listed(self, kind: str) -> None:
        self._store.mark_listed(kind)
        self._wake.set()

    def set_source_problems(self, problems: tuple[Problem, ...], origin: str = "objects") -> None:
        """The current problems of one origin (replacing its previous ones)."""
        if problems != self._source_problems.get(origin, ()):
            self._source_problems[origin] = problems
            self._wake.set()

    def set_compile_settings(self, settings: CompileSettings) -> None:
        """Compile with other settings from now on (the ingress-nginx ConfigMap changed): a
        full compile with a fresh compiler, whose caches depended on the old settings."""
        if settings != self._compiler.settings:
            self._compiler = Compiler(settings)
            self._store.pin_configmaps(settings.configmaps())
            self._dirty = True
            self._wake.set()

    def fail(self, exc: BaseException) -> None:
        """A source died: `results()` raises `exc` instead of waiting forever."""
        self._failure = exc
        self._wake.set()

    # ---- the compile side ---------------------------------------------------------------------

    async def _settle(self) -> None:
        """Return once changes stop for `quiet` seconds, or `max_delay` after the first one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_delay
        while self._failure is None:
            self._wake.clear()
            remaining = min(self._quiet, deadline - loop.time())
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _recheck_in(self) -> float | None:
        """Seconds until the wall clock must be compared with `refresh_at` again (None: nothing
        compiled yet, only sources can wake us)."""
        compiled = self._compiled
        if compiled is None:
            return None
        if compiled.refresh_at is None:
            return self._clock_check
        due = compiled.refresh_at + REFRESH_MARGIN - self._clock()
        return min(self._clock_check, max(due, 0.0))

    async def results(self) -> AsyncIterator[CompileResult]:
        """One result after the initial sync, then one per change of the snapshot."""
        published: tuple[Snapshot, tuple[Problem, ...], tuple[str, ...]] | None = None
        while True:
            timed_out = False
            try:
                await asyncio.wait_for(self._wake.wait(), self._recheck_in())
            except TimeoutError:
                timed_out = True
            await self._settle()
            self._wake.clear()
            if self._failure is not None:
                raise self._failure
            if not self._store.synced:
                continue
            previous = compiled = self._compiled
            edited = self._dirty
            if edited or compiled is None or timed_out:
                # On a timeout the store is unchanged and the compiler returns the previous
                # result itself unless the clock left the window that result holds in.
                self._dirty = False
                started = time.perf_counter()
                compiled = self._compiler.compile(
                    self._store, now=datetime.fromtimestamp(self._clock(), UTC)
                )
                self._compiled = compiled
                logger.debug(
                    "reconcile.compiled",
                    extra={"duration_ms": round((time.perf_counter() - started) * 1000, 3)},
                )
                if not edited and compiled is not previous:
                    logger.info("reconcile.revalidated", extra={"reason": "certificate validity"})
            sourced = (
                p for origin in sorted(self._source_problems) for p in self._source_problems[origin]
            )
            result = dataclasses.replace(compiled, problems=(*compiled.problems, *sourced))
            self.problem_log.update(result.problems)
            # Problems and ownership matter too (Events, Ingress status) even when the routes
            # they concern did not change; the publisher skips an identical snapshot itself.
            key = (result.snapshot, result.problems, result.owned)
            if published is not None and key == published:
                continue
            published = key
            logger.info(
                "reconcile.changed",
                extra={
                    "hosts": len(result.snapshot.routes.virtual_hosts),
                    "backends": len(result.snapshot.backends),
                    "problems": len(result.problems),
                },
            )
            yield result
