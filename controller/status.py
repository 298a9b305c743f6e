"""Ingress status: the leader writes `status.loadBalancer.ingress` of every Ingress Portico owns.

Inputs arrive from three sides: the Ingress informer tells what each Ingress's status is now,
the compile results tell which Ingresses are ours, and the published address comes from the
`--publish-service` Service's own `status.loadBalancer` (or the fixed
`--publish-status-address`). `plan_status` (pure) turns them into the writes needed; the
`StatusWriter` loop performs them through the `/status` subresource, only while leading, only
once the snapshot carrying those routes is applied by every worker, and only where the status
differs. It clears the status of an Ingress that stopped being ours only when that status is
ours (the address we publish or last wrote), and never writes an empty status for an owned
Ingress: an unknown address (Service without a load balancer yet, restart, shutdown) leaves
statuses alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.compiler import CompileResult
from controller.kube import ApiError
from controller.kube.watching import Change, Informer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LbAddress:
    """One `status.loadBalancer.ingress[]` entry (the fields Portico writes)."""

    ip: str | None = None
    hostname: str | None = None

    def to_json(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.ip:
            out["ip"] = self.ip
        if self.hostname:
            out["hostname"] = self.hostname
        return out


LbStatus = tuple[LbAddress, ...]  # sorted, duplicates removed: comparable as a whole


def lb_status(entries: Iterable[LbAddress]) -> LbStatus:
    unique = {e for e in entries if e.ip or e.hostname}
    return tuple(sorted(unique, key=lambda e: (e.ip or "", e.hostname or "")))


def parse_lb_status(raw: Mapping[str, Any] | None) -> LbStatus:
    """`status.loadBalancer.ingress` of a raw Ingress or Service (anything malformed: empty)."""
    if not isinstance(raw, Mapping):
        return ()
    status = raw.get("status")
    lb = status.get("loadBalancer") if isinstance(status, Mapping) else None
    entries = lb.get("ingress") if isinstance(lb, Mapping) else None
    if not isinstance(entries, list):
        return ()
    out: list[LbAddress] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            ip, hostname = entry.get("ip"), entry.get("hostname")
            out.append(
                LbAddress(
                    ip if isinstance(ip, str) and ip else None,
                    hostname if isinstance(hostname, str) and hostname else None,
                )
            )
    return lb_status(out)


def status_patch(status: LbStatus) -> dict[str, Any]:
    """A merge patch for the /status subresource; an empty status removes the list."""
    ingress: list[dict[str, str]] | None = [a.to_json() for a in status] if status else None
    return {"status": {"loadBalancer": {"ingress": ingress}}}


def plan_status(
    owned: Iterable[str],
    current: Mapping[str, LbStatus],
    published: LbStatus | None,
    written: Mapping[str, LbStatus],
) -> dict[str, LbStatus]:
    """The status writes needed: Ingress ref -> new status (empty = clear).

    `current` is every Ingress we know of and its status now; `published` the address to
    publish (None or empty: unknown, write nothing for owned Ingresses); `written` what this
    process last wrote per Ingress.
    """
    owned_set = set(owned)
    writes: dict[str, LbStatus] = {}
    if published:
        for ref in sorted(owned_set):
            if ref in current and current[ref] != published:
                writes[ref] = published
    for ref, now in sorted(current.items()):
        if ref in owned_set or not now:
            continue
        # Not ours (any more): take back only what is visibly ours, never another controller's.
        if (published and now == published) or now == written.get(ref):
            writes[ref] = ()
    return writes


class IngressStatusApi(Protocol):
    async def patch_ingress_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...


class AppliedVersions(Protocol):
    """What the writer needs of the publisher (controller.publisher.Publisher)."""

    @property
    def version(self) -> int: ...

    async def wait_applied(self, version: int) -> None: ...


class StatusWriter:
    """Keeps owned Ingresses' status equal to the published address, while leading."""

    def __init__(
        self,
        api: IngressStatusApi,
        *,
        static: LbStatus = (),
        retry_delay: float = 2.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        self._api = api
        self._current: dict[str, LbStatus] = {}
        self._written: dict[str, LbStatus] = {}
        self._owned: tuple[str, ...] | None = None  # None until the first compile result
        self._published: LbStatus | None = static or None
        self._static = bool(static)
        self._leading = False
        self._wake = asyncio.Event()
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.blocked: str | None = None
        self.writes = 0  # successful status writes (for tests and metrics)

    # ---- inputs (called synchronously from the source side) ----------------------------------

    def observe_ingress(self, kind: str, key: tuple[str, str], raw: dict[str, Any] | None) -> None:
        """A RawObserver for the Ingress informer: remember every Ingress's current status."""
        if kind != "Ingress":
            return
        ref = f"{key[0]}/{key[1]}"
        if raw is None:
            self._current.pop(ref, None)
            self._written.pop(ref, None)
        else:
            status = parse_lb_status(raw)
            if self._current.get(ref) == status:
                return
            self._current[ref] = status
        self._wake.set()

    def observe_result(self, result: CompileResult) -> None:
        self._owned = result.owned
        self._wake.set()

    def set_published(self, status: LbStatus | None) -> None:
        """The publish Service's address (None: unknown, e.g. Service missing)."""
        if self._static or status == self._published:
            return
        logger.info(
            "status.address",
            extra={"addresses": [a.to_json() for a in status] if status is not None else None},
        )
        self._published = status
        self._wake.set()

    def set_leader(self, leading: bool) -> None:
        self._leading = leading
        self._wake.set()

    @property
    def published(self) -> LbStatus | None:
        return self._published

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self, publisher: AppliedVersions) -> None:
        delay = self._retry_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._leading or self._owned is None:
                continue
            # The owned set and the version are read together, with no await between them:
            # the result that produced `owned` was published at `version` or earlier.
            owned, version = self._owned, publisher.version
            await publisher.wait_applied(version)
            if not self._leading:
                continue
            plan = plan_status(owned, self._current, self._published, self._written)
            failed = False
            for ref, status in plan.items():
                if not self._leading:
                    break
                failed = not await self._write(ref, status) or failed
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
                self._wake.set()
            else:
                delay = self._retry_delay

    async def _write(self, ref: str, status: LbStatus) -> bool:
        namespace, _, name = ref.partition("/")
        try:
            await self._api.patch_ingress_status(namespace, name, status_patch(status))
        except ApiError as exc:
            if exc.status == 404:
                return True  # deleted meanwhile; its DELETED event is on its way
            if exc.forbidden:
                blocked = f"cannot patch ingresses/status in namespace {namespace}"
                if blocked != self.blocked:
                    self.blocked = blocked
                    logger.error(
                        "status.forbidden",
                        extra={"missing": blocked, "ref": ref, "reason": exc.message},
                    )
            else:
                logger.warning("status.write_failed", extra={"ref": ref, "reason": str(exc)})
            return False
        self.blocked = None
        self.writes += 1
        # Optimistic: the watch will confirm; meanwhile the next plan must not write it again.
        self._current[ref] = status
        if status:
            self._written[ref] = status
        else:
            self._written.pop(ref, None)
        logger.info(
            "status.written",
            extra={"ref": ref, "addresses": [a.to_json() for a in status]},
        )
        return True


class PublishedService:
    """A ChangeSink for the one-Service informer of `--publish-service`.

    Hands the Service's `status.loadBalancer.ingress` to `on_status`; None while the Service is
    missing (unknown: statuses are then left alone, never blanked).
    """

    def __init__(self, name: str, on_status: Callable[[LbStatus | None], None]) -> None:
        self.name = name
        self._on_status = on_status
        self.informers: list[Informer] = []

    def changes(self, informer: Informer, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.key[1] != self.name:
                continue
            if change.type == "DELETED" or change.raw is None:
                logger.warning("status.publish_service_missing", extra={"service": self.name})
                self._on_status(None)
            else:
                self._on_status(parse_lb_status(change.raw))

    def listed(self, informer: Informer) -> None:
        if not informer.cache:
            logger.warning("status.publish_service_missing", extra={"service": self.name})
