"""How many workers the process's cgroup can hold: its CPU quota, then its memory limit.

The default worker count is one per CPU of the cgroup's CPU quota (cgroup v2 `cpu.max`, v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`), else one per CPU the process may run on. That count
is then capped by what the memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) holds:
the controller's own size plus WORKER_MEMORY per worker. Without the cap a pod with no CPU
limit on a 32-CPU node would start 32 workers inside its 512 MiB and be OOM-killed. A count
asked for with `--workers` is kept, but gets the same warning when the limit cannot hold it.

The limits are read for the process's own cgroup (from `/proc/self/cgroup`) and for each
ancestor visible under the mount, the tightest winning: inside a container only the
container's cgroup is visible, on a host the whole path is. The cgroup root and the membership
file are parameters, so tests describe a cgroup as a directory of files.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger = logging.getLogger("portico.capacity")

MIB: Final = 1 << 20
# Per-worker memory, measured 2026-12-04 with the compiled request path: `portico serve
# --manifests examples --workers N` (N = 1, 2, 4), wrk for 5 s on each of an HTTP route, a second
# HTTP route and HTTPS, then Pss from /proc/PID/smaps_rollup (workers are exec'd, not forked, so
# they share little but libraries). One worker holds 22-31 MiB after 64 concurrent connections
# and 58 MiB after 512 (CPython keeps the high-water mark); the configuration adds about 11 MiB
# per 1,000 Ingresses (131 MiB at 10,000 Ingresses with 50,000 endpoints). 96 MiB is the 512
# connections figure plus 1,000 Ingresses plus about 40% headroom.
WORKER_MEMORY: Final = 96 * MIB
# The controller process, measured the same day: 45 MiB Pss in `portico serve`, 79 MiB in
# cluster mode on a small cluster (the Kubernetes client and the object store), plus about
# 21 MiB per 1,000 Ingresses (290 MiB at 10,000). 128 MiB covers 1,000 Ingresses with headroom.
CONTROLLER_MEMORY: Final = 128 * MIB

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
SELF_CGROUP: Final = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned counter (about 8 EiB).
_V1_UNLIMITED: Final = 1 << 60


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    cpus: float | None  # CPU quota in CPUs (quota / period); None: no quota
    memory: int | None  # memory limit in bytes; None: no limit


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """The worker count and what it was derived from (logged at start)."""

    count: int
    by_cpu: int  # one per CPU of the quota, else per usable CPU
    by_memory: int | None  # workers the memory limit holds; None without a limit
    memory_limit: int | None
    requested: int | None  # --workers, when given

    @property
    def over_memory(self) -> bool:
        """More workers wanted (by CPU, or by --workers) than the memory limit holds."""
        wanted = self.requested if self.requested is not None else self.by_cpu
        return self.by_memory is not None and self.by_memory < wanted


def _membership(self_cgroup: Path) -> dict[str, str]:
    """Controller name -> cgroup path ("" for the cgroup v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    try:
        text = self_cgroup.read_text()
    except OSError:
        return paths
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _levels(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under `mount` and its ancestors', those that exist."""
    parts = [part for part in path.strip("/").split("/") if part and part != ".."]
    candidates = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [directory for directory in candidates if directory.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v1_mount(root: Path, controller: str) -> Path:
    # Usually mounted as "cpu,cpuacct" with "cpu" a symlink to it; "memory" alone.
    for entry in sorted(root.glob(f"*{controller}*")):
        if controller in entry.name.split(",") and entry.is_dir():
            return entry
    return root / controller


def _int(text: str | None) -> int | None:
    """A cgroup file's number; None when absent or not a number (the limit is then unknown)."""
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def read_limits(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> CgroupLimits:
    """The CPU quota and memory limit of this process's cgroup (v2, else v1)."""
    membership = _membership(self_cgroup)
    cpus: list[float] = []
    memory: list[int] = []

    def add_cpu(quota: int | None, period: int | None) -> None:
        if quota is not None and period and quota > 0:
            cpus.append(quota / period)

    if (root / "cgroup.controllers").exists():  # cgroup v2 mounted at the root
        for level in _levels(root, membership.get("", "/")):
            cpu_max = (_read(level / "cpu.max") or "max").split()
            if len(cpu_max) == 2:  # "max 100000" when there is no quota
                add_cpu(_int(cpu_max[0]), _int(cpu_max[1]))
            limit = _int(_read(level / "memory.max"))  # "max": no limit
            if limit is not None:
                memory.append(limit)
    else:
        for level in _levels(_v1_mount(root, "cpu"), membership.get("cpu", "/")):
            # cpu.cfs_quota_us is -1 when there is no quota.
            add_cpu(
                _int(_read(level / "cpu.cfs_quota_us")), _int(_read(level / "cpu.cfs_period_us"))
            )
        for level in _levels(_v1_mount(root, "memory"), membership.get("memory", "/")):
            limit = _int(_read(level / "memory.limit_in_bytes"))
            if limit is not None and limit < _V1_UNLIMITED:
                memory.append(limit)
    return CgroupLimits(cpus=min(cpus, default=None), memory=min(memory, default=None))


def plan_workers(
    limits: CgroupLimits, usable_cpus: int, requested: int | None = None
) -> WorkerPlan:
    """The worker count: `requested`, else the CPU count capped by the memory limit."""
    by_cpu = max(1, usable_cpus)
    if limits.cpus is not None:
        by_cpu = max(1, min(by_cpu, math.ceil(limits.cpus)))
    by_memory = None
    if limits.memory is not None:
        by_memory = max(0, (limits.memory - CONTROLLER_MEMORY) // WORKER_MEMORY)
    if requested is not None:
        count = requested
    elif by_memory is not None:
        count = max(1, min(by_cpu, by_memory))
    else:
        count = by_cpu
    return WorkerPlan(count, by_cpu, by_memory, limits.memory, requested)


def worker_plan(
    requested: int | None,
    root: Path = CGROUP_ROOT,
    self_cgroup: Path = SELF_CGROUP,
    usable_cpus: int | None = None,
) -> WorkerPlan:
    """The plan for this process, with a WARNING when the memory limit cannot hold the workers."""
    cpus = len(os.sched_getaffinity(0)) if usable_cpus is None else usable_cpus
    plan = plan_workers(read_limits(root, self_cgroup), cpus, requested)
    if plan.over_memory:
        assert plan.memory_limit is not None
        logger.warning(
            "workers.memory_limit",
            extra={
                "workers": plan.count,
                "workers_by_cpu": plan.by_cpu,
                "workers_requested": plan.requested,
                "workers_memory_holds": plan.by_memory,
                "memory_limit_mib": plan.memory_limit // MIB,
                "controller_mib": CONTROLLER_MEMORY // MIB,
                "worker_mib": WORKER_MEMORY // MIB,
                "reason": (
                    "the memory limit holds fewer workers than asked for: raise the limit"
                    if plan.requested is not None
                    else "fewer workers than CPUs: the memory limit would not hold more"
                ),
            },
        )
    return plan
