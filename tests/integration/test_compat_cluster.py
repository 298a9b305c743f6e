"""`portico compat-report --kubeconfig`: the Ingresses of a cluster (KubeSim, the real API
protocol) give the same report as their manifests."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from tests.kubesim import KubeSim

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)
MANIFESTS = ROOT / "tests" / "data" / "corpus" / "ingress-nginx" / "nginx"


async def compat_report(*argv: str) -> tuple[int, dict[str, Any], str]:
    """Run the command in a subprocess: it has its own event loop, the simulator ours."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "compat-report",
        *argv,
        "--output",
        "json",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 45)
    assert process.returncode is not None
    return process.returncode, json.loads(out) if out else {}, err.decode()


def from_manifests() -> dict[str, Any]:
    out = io.StringIO()
    main(["compat-report", str(MANIFESTS), "--output", "json"], out, io.StringIO())
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


async def test_cluster_report_equals_the_manifest_report(sim: KubeSim, tmp_path: Path) -> None:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        sim.load_manifests(path.read_text())
    assert len(sim.list("ingresses", None)) == 71
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    code, report, err = await compat_report("--kubeconfig", str(kubeconfig))
    assert code == 2, err
    assert report == from_manifests()
    # One list of Ingresses, all namespaces; nothing else read.
    assert [(e.verb, e.resource) for e in sim.audit] == [("list", "ingresses")]


async def test_cluster_unreachable_is_an_error(tmp_path: Path) -> None:
    server = KubeSim()
    await server.start()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    await server.stop()
    code, _, err = await compat_report("--kubeconfig", str(kubeconfig))
    assert code == 2 and "listing Ingresses" in err, err
