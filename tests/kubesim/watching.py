"""Watch streams: the HTTP response that turns store events into newline-delimited JSON.

The start point is computed synchronously with the subscription, so no event can fall between
the initial state (or history replay) and the live feed. Each event is one JSON object plus `\n`,
written (and so flushed) as it happens; bookmarks go out on an interval when asked for; the
stream ends cleanly on `timeoutSeconds`, on `drop_watches()`, or with an in-stream 410 ERROR for
a compacted resourceVersion.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kubesim.registry import parse_rv
from tests.kubesim.resources import ResourceType
from tests.kubesim.selectors import Predicate
from tests.kubesim.status import status_body
from tests.kubesim.storage import Store, Subscriber, WatchEvent

logger = logging.getLogger(__name__)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# How often an idle stream checks whether its client went away.
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WatchRequest:
    rt: ResourceType
    namespace: str | None
    predicate: Predicate
    resource_version: str | None
    allow_bookmarks: bool
    send_initial_events: bool
    timeout_seconds: float | None


def _line(event_type: str, obj: dict[str, Any]) -> bytes:
    return (json.dumps({"type": event_type, "object": obj}, separators=(",", ":")) + "\n").encode()


def bookmark_object(rt: ResourceType, rv: int, initial_end: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


class WatchStream:
    """One watch request from start to end."""

    def __init__(
        self,
        store: Store,
        req: WatchRequest,
        bookmark_interval: Callable[[], float],
        on_status: Callable[[int], None],
    ) -> None:
        self.store = store
        self.req = req
        self.bookmark_interval = bookmark_interval
        self.on_status = on_status

    def _start(self) -> tuple[list[bytes], Subscriber | None]:
        """Initial lines and the live subscription, computed without yielding to the loop."""
        req, store = self.req, self.store
        visible = store.delivered  # watchers see the store as of the last delivered event
        sub = Subscriber(req.rt, req.namespace, req.predicate, progress=visible)
        lines: list[bytes] = []
        rv = req.resource_version
        if req.send_initial_events or rv in (None, "", "0"):
            state = store.state_at(req.rt, visible)
            if state is None:  # history compacted past the pause point: best effort, current
                state = store.state_at(req.rt, store.revision) or {}
            for key in sorted(state):
                if sub.matches(state[key]):
                    lines.append(_line("ADDED", state[key]))
            if req.send_initial_events and req.allow_bookmarks:
                lines.append(_line("BOOKMARK", bookmark_object(req.rt, visible, initial_end=True)))
        else:
            start = parse_rv(rv)
            events = store.events_after(req.rt, start, visible)
            if events is None:
                too_old = status_body(
                    410,
                    f"too old resource version: {start} ({store.compacted(req.rt)})",
                    "Expired",
                )
                return [_line("ERROR", too_old)], None
            for event in events:
                seen = sub.translate(event)
                if seen is not None:
                    lines.append(_line(*seen))
            sub.progress = max(start, visible)
        store.subscribe(sub)
        return lines, sub

    async def serve(self, request: web.Request) -> web.StreamResponse:
        lines, sub = self._start()
        try:
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            response.enable_chunked_encoding()
            await response.prepare(request)
            self.on_status(200)
            for line in lines:
                await response.write(line)
            if sub is not None:
                await self._follow(request, response, sub)
            if sub is not None and sub.abort:
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except (ConnectionError, RuntimeError) as exc:
            # The client went away (or the server is going down): nothing left to tell it.
            logger.debug("kubesim.watch.closed", extra={"error": repr(exc)})
        finally:
            if sub is not None:
                self.store.unsubscribe(sub)
        return response

    async def _follow(
        self, request: web.Request, response: web.StreamResponse, sub: Subscriber
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time() + self.req.timeout_seconds if self.req.timeout_seconds is not None else None
        )
        next_bookmark = time.monotonic() + self.bookmark_interval()
        while True:
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            wait = _POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - now)
            if self.req.allow_bookmarks:
                wait = min(wait, max(0.0, next_bookmark - time.monotonic()))
            event: WatchEvent | str | None
            try:
                event = await asyncio.wait_for(sub.queue.get(), timeout=max(wait, 0.0))
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                if self.req.allow_bookmarks and time.monotonic() >= next_bookmark:
                    await self._bookmark(response, sub)
                    next_bookmark = time.monotonic() + self.bookmark_interval()
                continue
            if event is None:
                return
            if isinstance(event, str):  # BOOKMARK_NOW
                if self.req.allow_bookmarks:
                    await self._bookmark(response, sub)
                    next_bookmark = time.monotonic() + self.bookmark_interval()
                continue
            if event.rv <= sub.progress:
                continue  # a watch from a future RV starts after that RV
            sub.progress = event.rv
            seen = sub.translate(event)
            if seen is not None:
                await response.write(_line(*seen))

    async def _bookmark(self, response: web.StreamResponse, sub: Subscriber) -> None:
        # With nothing queued, every event of this type up to `delivered` has been handled.
        rv = max(sub.progress, self.store.delivered) if sub.queue.empty() else sub.progress
        await response.write(_line("BOOKMARK", bookmark_object(self.req.rt, rv)))
