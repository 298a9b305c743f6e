"""Helm for the tests: the binaries scripts/chart-tools.sh installs into .tools/, and renderings.

The chart tests (tests/chart) check every rendering with Helm 3 and Helm 4; the cluster
end-to-end tests load the chart's rendered RBAC and settings into the API simulator. Both find
Helm here; the installer runs at most once per session, and its output explains a skip.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "portico"
TOOLS = ROOT / ".tools"


def helm_path(major: int) -> Path:
    return TOOLS / f"helm{major}" / "helm"


@cache
def install_tools() -> str:
    """Run the installer at most once per session; its output explains a skip."""
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "chart-tools.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return done.stdout + done.stderr


def find_helm(major: int = 3) -> tuple[Path | None, str]:
    """(the Helm binary, "") or (None, why it could not be had), installing it if missing."""
    path = helm_path(major)
    if not path.exists():
        output = install_tools()
        if not path.exists():
            return None, f"helm {major} could not be installed: {output.strip()[-400:]}"
    return path, ""


def render_chart(
    helm: Path, release: str, namespace: str, values: dict[str, Any]
) -> list[dict[str, Any]]:
    """`helm template` of charts/portico as objects; values go in on stdin (JSON is YAML)."""
    done = subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", namespace, "--values", "-"],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"helm template failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
