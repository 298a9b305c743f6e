"""`portico serve` says what its workers' request path runs: log, /metrics and /debug/snapshot.

Three installs: this checkout as it is (compiled when the suite runs, PORTICO_REQUIRE_NATIVE=1),
the same with PORTICO_PURE_PYTHON=1 (plain Python, asked for: INFO), and a copy of the `proxy`
package without its extensions, as an install without a C compiler leaves it (plain Python, not
asked for: a WARNING with the reason). The copy is imported by both the controller and the
workers (PYTHONPATH, and their working directory).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy import native
from tests.integration.manifests import ingress_class
from tests.integration.serving import eventually, free_port, start_serve, stop_serve

pytestmark = pytest.mark.timeout(90)


class Case(NamedTuple):
    copy_without_extensions: bool
    pure_python: bool
    request_path: str
    reason: str
    level: str  # of the controller's line about it


CASES = {
    "as installed": Case(
        False,
        False,
        native.report()["request_path"],
        native.REASON,
        "info" if not native.REASON else "warning",
    ),
    "PORTICO_PURE_PYTHON": Case(False, True, "python", native.REQUESTED, "info"),
    "not compiled": Case(True, False, "python", native.NO_BUILD, "warning"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_the_request_path_the_workers_run_is_reported(tmp_path: Path, case: Case) -> None:
    if case is CASES["as installed"] and native.REASON == native.REQUESTED:
        pytest.skip("this run asked for PORTICO_PURE_PYTHON: the checkout's own state is unknown")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "class.yaml").write_text(yaml.safe_dump(ingress_class()))
    install = tmp_path / "install"
    install.mkdir()
    env = {native.PURE_ENV: "1" if case.pure_python else ""}
    if case.copy_without_extensions:
        shutil.copytree(
            native.PACKAGE_DIR,
            install / "proxy",
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
        env["PYTHONPATH"] = str(install)
    http, admin = free_port(), free_port()
    process = await start_serve(
        manifests,
        http=http,
        admin=admin,
        workers=2,
        env=env,
        cwd=install,  # `python -m` puts the working directory first on sys.path
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{admin}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(base + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, 30, interval=0.1)
            async with session.get(base + "/metrics") as resp:
                text = await resp.text()
            async with session.get(base + "/debug/snapshot") as resp:
                summary: dict[str, Any] = await resp.json()
    finally:
        await stop_serve(process)
    assert process.stderr is not None
    logs = [json.loads(line) for line in (await process.stderr.read()).splitlines()]

    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "portico_build_info"]
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"request_path": case.request_path, "reason": case.reason}, 1.0)
    ]
    builds = [worker["build"] for worker in summary["workers"]]
    assert len(builds) == 2
    assert all((b["request_path"], b["reason"]) == (case.request_path, case.reason) for b in builds)
    said = [log for log in logs if str(log.get("event")).startswith("worker.request_path")]
    assert [(log["level"], log["reason"]) for log in said] == [(case.level, case.reason)]
    if case.copy_without_extensions:
        assert said[0]["state"] == native.NOT_COMPILED
        assert said[0]["fix"] == native.ADVICE[native.NO_BUILD]
