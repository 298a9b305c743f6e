"""The compiled request path: present where it is required, and never run when stale.

Each case imports a copy of the `proxy` package (with its extensions) in a fresh interpreter, so
the guard in proxy/native.py decides as it does in a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import native

compiled_build = pytest.mark.skipif(
    native.STATE != "compiled", reason=f"no current compiled build ({native.STATE})"
)

PROBE = """
import json, proxy.headers, proxy.server, proxy.native
print(json.dumps({"state": proxy.native.STATE,
                  "files": [proxy.headers.__file__, proxy.server.__file__]}))
"""


def _probe(package_root: Path, **env: str) -> dict[str, object]:
    inherited = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=package_root,
        env={**inherited, "PYTHONPATH": str(package_root), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(
        native.PACKAGE_DIR, tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


@pytest.mark.skipif(
    os.environ.get("PORTICO_REQUIRE_NATIVE") != "1",
    reason="the test command sets PORTICO_REQUIRE_NATIVE=1 after building",
)
def test_every_request_path_module_is_compiled() -> None:
    import importlib

    assert native.STATE == "compiled"
    assert native.COMPILED, "no request-path module listed: the loop below would check nothing"
    for name in native.COMPILED:
        module = importlib.import_module(name)
        assert str(module.__file__).endswith(".so"), name


@compiled_build
def test_an_unchanged_copy_runs_compiled(package_copy: Path) -> None:
    result = _probe(package_copy)
    assert result["state"] == "compiled"
    assert result["files"] and all(str(f).endswith(".so") for f in result["files"])  # type: ignore[attr-defined]


@compiled_build
def test_a_source_edited_after_the_build_runs_as_python(package_copy: Path) -> None:
    headers = package_copy / "proxy" / "headers.py"
    headers.write_text(headers.read_text() + "\n# edited after the build\n")
    result = _probe(package_copy)
    assert result["state"] == "pure: stale build (proxy.headers changed since it was compiled)"
    # Every compiled module falls back, not only the edited one: they call each other natively.
    assert result["files"] == [
        str(package_copy / "proxy" / "headers.py"),
        str(package_copy / "proxy" / "server.py"),
    ]


@compiled_build
def test_pure_python_on_request(package_copy: Path) -> None:
    result = _probe(package_copy, PORTICO_PURE_PYTHON="1")
    assert result["state"] == "pure: PORTICO_PURE_PYTHON"
    assert result["files"] and all(str(f).endswith(".py") for f in result["files"])  # type: ignore[attr-defined]


def test_without_extensions_the_sources_run(package_copy: Path) -> None:
    for extension in (package_copy / "proxy").glob("*.so"):
        extension.unlink()
    result = _probe(package_copy)
    assert result["state"] == "pure: not compiled"
    assert result["files"] and all(str(f).endswith(".py") for f in result["files"])  # type: ignore[attr-defined]


def test_the_stamp_records_each_compiled_source() -> None:
    hashes = native.source_hashes()
    assert sorted(hashes) == sorted(native.COMPILED)
    namespace: dict[str, object] = {}
    exec(native.stamp_source(hashes), namespace)
    assert namespace["SOURCES"] == hashes
