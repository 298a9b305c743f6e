"""The object store: one global revision counter, objects by type, and per-type event history.

Every committed write gets the next revision as its resourceVersion and is appended to its type's
history ring buffer, then fanned out to watch subscribers. The history is what lets a watch
"start at exact" RV N (replay events after N), lets a list be served at an exact older revision,
and defines compaction: a type's `compacted` revision is the oldest N it can still replay from.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.kubesim.resources import ALL_TYPES, ResourceType

Key = tuple[str, str]  # (namespace or "", name)
Predicate = Callable[[dict[str, Any]], bool]
BOOKMARK_NOW = "BOOKMARK_NOW"


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata", {})
    return (meta.get("namespace") or "", meta["name"])


@dataclass(frozen=True)
class WatchEvent:
    """A committed change. `obj` is the new state (for DELETED: the final state at the deletion
    revision); `old` is the previous stored state, needed for selector transitions and rollback."""

    type: str  # ADDED | MODIFIED | DELETED
    rv: int
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass(eq=False)
class Subscriber:
    """One open watch: its scope, and the queue the store feeds (None means: end the stream)."""

    rt: ResourceType
    namespace: str | None
    predicate: Predicate
    progress: int  # every event up to this revision has been processed for this watcher
    # WatchEvent, BOOKMARK_NOW (send a bookmark if allowed) or None (end the stream).
    queue: asyncio.Queue[WatchEvent | str | None] = field(default_factory=asyncio.Queue)
    abort: bool = False  # end by resetting the connection rather than a clean EOF

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if (
            self.namespace is not None
            and obj.get("metadata", {}).get("namespace") != self.namespace
        ):
            return False
        return self.predicate(obj)

    def translate(self, event: WatchEvent) -> tuple[str, dict[str, Any]] | None:
        """The event this watcher sees, with the watch cache's selector transitions (§3.3)."""
        if event.type == "ADDED":
            return ("ADDED", event.obj) if self.matches(event.obj) else None
        if event.type == "DELETED":
            return ("DELETED", event.obj) if self.matches(event.old) else None
        was, now = self.matches(event.old), self.matches(event.obj)
        if was and now:
            return ("MODIFIED", event.obj)
        if now:
            return ("ADDED", event.obj)
        if was:
            return ("DELETED", event.obj)
        return None


class Store:
    def __init__(self, history_size: int = 1000) -> None:
        self.revision = 0
        # Highest revision whose events have been pushed to subscribers (lags while paused).
        self.delivered = 0
        self.history_size = history_size
        self._objects: dict[ResourceType, dict[Key, dict[str, Any]]] = {t: {} for t in ALL_TYPES}
        self._history: dict[ResourceType, deque[WatchEvent]] = {t: deque() for t in ALL_TYPES}
        self._compacted: dict[ResourceType, int] = dict.fromkeys(ALL_TYPES, 0)
        self._subscribers: dict[ResourceType, set[Subscriber]] = {t: set() for t in ALL_TYPES}
        self._paused = False
        self._held: list[tuple[ResourceType, WatchEvent]] = []

    # --- reads -----------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects[rt].get((namespace or "", name))

    def items(self, rt: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        objs = self._objects[rt]
        keys = sorted(k for k in objs if namespace is None or k[0] == namespace)
        return [objs[k] for k in keys]

    def compacted(self, rt: ResourceType) -> int:
        return self._compacted[rt]

    def events_after(self, rt: ResourceType, rv: int, upto: int) -> list[WatchEvent] | None:
        """Events with rv < revision <= upto, or None if part of that range was compacted away."""
        if rv < self._compacted[rt]:
            return None
        return [e for e in self._history[rt] if rv < e.rv <= upto]

    def state_at(self, rt: ResourceType, rv: int) -> dict[Key, dict[str, Any]] | None:
        """The objects of a type as they were at revision `rv`, rebuilt by undoing later events."""
        if rv >= self.revision:
            return dict(self._objects[rt])
        if rv < self._compacted[rt]:
            return None
        state = dict(self._objects[rt])
        for event in reversed(self._history[rt]):
            if event.rv <= rv:
                break
            key = object_key(event.obj)
            if event.old is None:
                state.pop(key, None)
            else:
                state[key] = event.old
        return state

    # --- writes ----------------------------------------------------------------------------

    def commit(
        self,
        rt: ResourceType,
        new: dict[str, Any] | None,
        old: dict[str, Any] | None,
        final: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store `new` (or delete `old` when `new` is None) at the next revision; returns the
        stored object (for a delete: the final state, `final` or `old`, at the deletion RV)."""
        self.revision += 1
        rv = self.revision
        if new is None:
            assert old is not None
            stored = copy.deepcopy(final if final is not None else old)
            stored["metadata"]["resourceVersion"] = str(rv)
            del self._objects[rt][object_key(old)]
            event = WatchEvent("DELETED", rv, stored, old)
        else:
            stored = copy.deepcopy(new)
            stored["metadata"]["resourceVersion"] = str(rv)
            self._objects[rt][object_key(stored)] = stored
            event = WatchEvent("ADDED" if old is None else "MODIFIED", rv, stored, old)
        history = self._history[rt]
        history.append(event)
        while len(history) > self.history_size:
            self._compacted[rt] = history.popleft().rv
        if self._paused:
            self._held.append((rt, event))
        else:
            self._deliver(rt, event)
        return copy.deepcopy(stored)

    def _deliver(self, rt: ResourceType, event: WatchEvent) -> None:
        self.delivered = event.rv
        for sub in self._subscribers[rt]:
            sub.queue.put_nowait(event)

    def compact(self) -> None:
        """Drop all history: any watch or exact list from an RV older than now gets 410."""
        for rt in ALL_TYPES:
            self._history[rt].clear()
            self._compacted[rt] = self.revision

    # --- watchers --------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber) -> None:
        self._subscribers[sub.rt].add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers[sub.rt].discard(sub)

    def subscribers(self) -> list[Subscriber]:
        return [s for subs in self._subscribers.values() for s in subs]

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        held, self._held = self._held, []
        for rt, event in held:
            self._deliver(rt, event)
        self.delivered = self.revision
