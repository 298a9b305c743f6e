"""The compiled request path: present where it is required, never run when stale, and why not.

Each case imports a copy of the `proxy` package (with its extensions, then changed as the case
says) in a fresh interpreter, so the guard in proxy/native.py decides as it does in a worker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from proxy import native

NO_BUILD_HERE = f"no current compiled build ({native.STATE})"

PROBE = """
import json, proxy.headers, proxy.server, proxy.native
print(json.dumps({"state": proxy.native.STATE, "reason": proxy.native.REASON,
                  "report": proxy.native.report(),
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


def _append(path: str, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        with (root / path).open("a") as f:
            f.write(text)

    return mutate


def _extensions(root: Path, stem: str = "") -> list[Path]:
    return sorted((root / "proxy").glob(f"{stem}*.so"))


def _remove(stem: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for extension in _extensions(root, stem):
            extension.unlink()

    return mutate


def _garble(stem: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (extension,) = _extensions(root, stem)
        extension.write_bytes(b"not a shared object")

    return mutate


class Case(NamedTuple):
    mutate: Callable[[Path], None] | None
    env: dict[str, str]
    reason: str
    state: str  # exact, or a prefix ending in "("
    needs_build: bool  # only meaningful where the extensions were built


STALE = "pure: stale build (proxy.headers changed since it was compiled)"
CASES = {
    "unchanged": Case(None, {}, "", "compiled", True),
    "source edited after the build": Case(
        _append("proxy/headers.py", "\n# edited after the build\n"), {}, native.STALE, STALE, True
    ),
    "PORTICO_PURE_PYTHON": Case(
        None, {native.PURE_ENV: "1"}, native.REQUESTED, "pure: PORTICO_PURE_PYTHON", True
    ),
    "no extensions": Case(_remove(""), {}, native.NO_BUILD, native.NOT_COMPILED, False),
    # setup.py keeps going when one extension fails to compile: a partial build runs nothing.
    "one module not compiled": Case(
        _remove("headers."),
        {},
        native.NO_BUILD,
        "pure: incomplete build (proxy.headers not compiled)",
        True,
    ),
    "no stamp": Case(
        _remove("_native_stamp."),
        {},
        native.NO_BUILD,
        "pure: incomplete build (proxy._native_stamp not compiled)",
        True,
    ),
    # Built for another interpreter, truncated, a library missing: the extensions do not load.
    "shared library does not load": Case(
        _garble("_native__mypyc."), {}, native.IMPORT_FAILED, "pure: import failed (", True
    ),
    "stamp does not load": Case(
        _garble("_native_stamp."), {}, native.IMPORT_FAILED, "pure: import failed (", True
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_what_runs_and_why(package_copy: Path, case: Case) -> None:
    if case.needs_build and native.STATE != "compiled":
        pytest.skip(NO_BUILD_HERE)
    if case.mutate is not None:
        case.mutate(package_copy)
    result = _probe(package_copy, **case.env)
    assert result["reason"] == case.reason
    state = str(result["state"])
    assert state.startswith(case.state) if case.state.endswith("(") else state == case.state
    compiled = case.state == "compiled"
    assert result["report"] == {
        "request_path": "compiled" if compiled else "python",
        "reason": case.reason,
        "state": state,
    }
    # Every compiled module runs its extension, or every one its source: they call each other
    # natively, so an edited headers.py also makes server.py run from source.
    suffix = ".so" if compiled else ".py"
    assert all(str(f).endswith(suffix) for f in result["files"])  # type: ignore[attr-defined]


def dockerfile_check() -> list[str]:
    """The Dockerfile's command that fails the image build unless the request path is compiled."""
    text = (Path(__file__).resolve().parents[3] / "Dockerfile").read_text()
    match = re.search(r"(/opt/portico/bin/python [^\n]*require_compiled\(\)\)\")", text)
    assert match is not None, "the Dockerfile no longer checks the build"
    command = shlex.split(match.group(1))
    return [sys.executable, *command[1:]]


@pytest.mark.parametrize("compiled", [True, False])
def test_the_image_build_fails_unless_compiled(
    package_copy: Path, tmp_path: Path, compiled: bool
) -> None:
    if compiled and native.STATE != "compiled":
        pytest.skip(NO_BUILD_HERE)
    if not compiled:
        _remove("")(package_copy)
    # As in the image's build stage: the installed package (here PYTHONPATH) is checked, with
    # the plain sources in the working directory (/src there) not in the way.
    sources = tmp_path / "src"
    shutil.copytree(package_copy / "proxy", sources / "proxy")
    _remove("")(sources)
    inherited = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    done = subprocess.run(
        dockerfile_check(),
        cwd=sources,
        env={**inherited, "PYTHONPATH": str(package_copy)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == (0 if compiled else 1), done.stderr
    if not compiled:
        assert "not compiled (pure: not compiled)" in done.stderr


def test_the_stamp_records_each_compiled_source() -> None:
    hashes = native.source_hashes()
    assert sorted(hashes) == sorted(native.COMPILED)
    namespace: dict[str, object] = {}
    exec(native.stamp_source(hashes), namespace)
    assert namespace["SOURCES"] == hashes
