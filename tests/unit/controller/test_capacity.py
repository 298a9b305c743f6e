"""Worker count from the cgroup: CPU quota x memory limit -> workers, and when it warns.

Each case describes a cgroup as files under a temporary root (v2: `cpu.max`, `memory.max`; v1:
`cpu/cpu.cfs_quota_us`, `memory/memory.limit_in_bytes`) plus the `/proc/self/cgroup` lines
that place the process in it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from controller.capacity import (
    CONTROLLER_MEMORY,
    MIB,
    WORKER_MEMORY,
    CgroupLimits,
    plan_workers,
    read_limits,
    worker_plan,
)

V1_UNLIMITED = "9223372036854771712"
NODE_CPUS = 32


def v2(root: Path, cpu_max: str, memory_max: str, path: str = "/") -> Path:
    directory = root.joinpath(*path.strip("/").split("/")) if path != "/" else root
    directory.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (directory / "cpu.max").write_text(cpu_max + "\n")
    (directory / "memory.max").write_text(memory_max + "\n")
    membership = root.parent / "self-cgroup"
    membership.write_text(f"0::{path}\n")
    return membership


def v1(root: Path, quota: str, limit: str, path: str = "/") -> Path:
    cpu = root / "cpu,cpuacct"
    memory = root / "memory"
    for mount in (cpu, memory):
        mount.mkdir(parents=True)
    (root / "cpu").symlink_to("cpu,cpuacct")
    (cpu / "cpu.cfs_quota_us").write_text(quota + "\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (memory / "memory.limit_in_bytes").write_text(limit + "\n")
    membership = root.parent / "self-cgroup"
    membership.write_text(
        f"12:memory:{path}\n4:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::{path}\n"
    )
    return membership


def mib(n: int) -> str:
    return str(n * MIB)


class Case(NamedTuple):
    version: str
    cpu: str  # cpu.max, or v1 cpu.cfs_quota_us (period 100000)
    memory: str  # memory.max, or v1 memory.limit_in_bytes
    requested: int | None  # --workers
    workers: int
    warns: bool


# The chart's defaults are no CPU limit and 512 MiB: 4 workers on any node, never one per CPU.
CASES = [
    Case("v2", "max 100000", "max", None, NODE_CPUS, False),
    Case("v2", "max 100000", mib(512), None, 4, True),
    Case("v2", "200000 100000", mib(512), None, 2, False),
    Case("v2", "150000 100000", "max", None, 2, False),  # 1.5 CPUs: two workers
    Case("v2", "50000 100000", mib(512), None, 1, False),
    Case("v2", "800000 100000", mib(1024), None, 8, False),  # 1 GiB holds 9
    Case("v2", "1600000 100000", mib(1024), None, 9, True),
    Case("v2", "max 100000", mib(2048), None, 20, True),
    Case("v2", "max 100000", mib(128), None, 1, True),  # holds none: one anyway, with a warning
    Case("v2", "max 100000", mib(512), 8, 8, True),  # asked for: kept, with a warning
    Case("v2", "max 100000", mib(512), 2, 2, False),
    Case("v1", "-1", V1_UNLIMITED, None, NODE_CPUS, False),
    Case("v1", "-1", mib(512), None, 4, True),
    Case("v1", "200000", mib(512), None, 2, False),
    Case("v1", "400000", V1_UNLIMITED, None, 4, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_workers_from_cgroup(tmp_path: Path, caplog: pytest.LogCaptureFixture, case: Case) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    membership = (v2 if case.version == "v2" else v1)(root, case.cpu, case.memory)
    with caplog.at_level(logging.INFO, logger="portico.capacity"):
        plan = worker_plan(case.requested, root, membership, usable_cpus=NODE_CPUS)
    assert plan.count == case.workers
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if case.warns else 0)
    if case.warns:
        # The warning names the numbers the count came from.
        fields = warnings[0].__dict__
        assert fields["memory_limit_mib"] == int(case.memory) // MIB
        assert fields["worker_mib"] == WORKER_MEMORY // MIB
        assert fields["controller_mib"] == CONTROLLER_MEMORY // MIB
        assert fields["workers"] == case.workers


def test_usable_cpus_bound_the_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    membership = v2(root, "400000 100000", "max")
    assert worker_plan(None, root, membership, usable_cpus=2).count == 2


def test_v2_nested_cgroup_tightest_ancestor_wins(tmp_path: Path) -> None:
    # A host view: the process's cgroup and its parent both visible; the parent (the pod)
    # carries the memory limit, the container the CPU quota.
    root = tmp_path / "cgroup"
    membership = v2(root, "300000 100000", "max", path="/kubepods/pod1/ctr")
    (root / "kubepods" / "pod1" / "memory.max").write_text(mib(400))
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000")
    assert read_limits(root, membership) == CgroupLimits(cpus=3.0, memory=400 * MIB)


def test_v1_container_sees_only_its_own_cgroup(tmp_path: Path) -> None:
    # Without a cgroup namespace /proc/self/cgroup names /docker/<id>, but the container's
    # mount shows that cgroup's files at its top.
    root = tmp_path / "cgroup"
    membership = v1(root, "150000", mib(300))
    membership.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert read_limits(root, membership) == CgroupLimits(cpus=1.5, memory=300 * MIB)


def test_no_cgroup_files_means_no_limits(tmp_path: Path) -> None:
    assert read_limits(tmp_path / "absent", tmp_path / "absent-self") == CgroupLimits(None, None)
    plan = plan_workers(CgroupLimits(None, None), usable_cpus=3)
    assert (plan.count, plan.over_memory) == (3, False)


def test_chart_defaults_hold_the_workers_they_start() -> None:
    # The chart's defaults: no CPU limit, workers 0 (auto), a memory limit. On a 32-CPU node
    # that must not mean 32 workers; values.yaml states the count the limit allows.
    values_file = Path(__file__).resolve().parents[3] / "charts" / "portico" / "values.yaml"
    values = yaml.safe_load(values_file.read_text())
    assert values["controller"]["workers"] == 0
    assert "cpu" not in values["resources"]["limits"]
    quantity = re.fullmatch(r"(\d+)(Mi|Gi)", values["resources"]["limits"]["memory"])
    assert quantity is not None
    limit = int(quantity[1]) * (MIB if quantity[2] == "Mi" else 1024 * MIB)
    plan = plan_workers(CgroupLimits(cpus=None, memory=limit), usable_cpus=NODE_CPUS)
    assert 1 <= plan.count < NODE_CPUS
    stated = re.search(r"holds the controller and (\d+) workers", values_file.read_text())
    assert stated is not None and int(stated.group(1)) == plan.count
