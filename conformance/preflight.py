"""What `python -m conformance` needs before it runs, checked first so that a missing piece is
named (which module and what to install, which file and why) instead of shown as a traceback.

Only the standard library is imported here at module level: the point is to run before any
third-party import can fail. Each check returns the problems it found, one sentence each.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
MINIMUM_PYTHON: Final = (3, 11)
INSTALL: Final = "install Portico's dependencies: pip install -e . (in the checkout)"


@dataclass(frozen=True)
class Module:
    """A module the runner imports: its import name, the distribution that provides it, and
    what it is for (said in the message when it is missing)."""

    name: str
    package: str
    purpose: str


# The runner's own imports, in every mode.
RUNNER: Final = (
    Module("yaml", "PyYAML", "to read the scenario files"),
    Module("pydantic", "pydantic", "to validate the scenarios"),
    Module("cryptography", "cryptography", "to make the test certificates"),
    Module("aiohttp", "aiohttp", "to run the echo backends"),
)
CLUSTER: Final = (Module("kubernetes_asyncio", "kubernetes_asyncio", "to talk to the cluster"),)
# Local mode runs the API simulator in-process and `python -m controller` from this checkout.
SIMULATOR: Final = "tests.kubesim"
CONTROLLER: Final = ("controller.app", "controller.cli")


def _import_problem(name: str) -> ImportError | None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        return exc
    return None


def python_version(version: tuple[int, ...] | None = None) -> list[str]:
    version = (sys.version_info.major, sys.version_info.minor) if version is None else version
    if version[:2] >= MINIMUM_PYTHON:
        return []
    wanted = ".".join(map(str, MINIMUM_PYTHON))
    return [f"Python {wanted} or newer is needed (this is {version[0]}.{version[1]})"]


def modules(wanted: Sequence[Module]) -> list[str]:
    problems = []
    for module in wanted:
        error = _import_problem(module.name)
        if error is not None:
            problems.append(
                f"the Python module {module.name} ({module.package}) is needed {module.purpose}"
                f" but cannot be imported ({error}): pip install {module.package}, or {INSTALL}"
            )
    return problems


def local_mode() -> list[str]:
    """Local mode needs the checkout: the simulator in tests/kubesim and a controller that
    imports (the subprocess runs with this interpreter and the checkout on its path)."""
    if not (ROOT / "tests" / "kubesim").is_dir():
        return [
            f"local mode needs the API simulator in tests/kubesim, not found under {ROOT}: "
            "run from a source checkout of Portico (or give --kubeconfig for a cluster)"
        ]
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    for name in (SIMULATOR, *CONTROLLER):
        error = _import_problem(name)
        if error is not None:
            missing = f"the module {error.name}" if error.name else "a module"
            return [
                f"local mode runs `{Path(sys.executable).name} -m controller` from {ROOT}, "
                f"but {missing} cannot be imported ({error}): {INSTALL}"
            ]
    return []


def kubeconfig(path: Path, context: str | None) -> list[str]:
    """The kubeconfig exists, is readable YAML and has the context asked for (or a current
    one); everything else the client library reports itself."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [f"kubeconfig {path} does not exist"]
    except OSError as exc:
        return [f"kubeconfig {path} cannot be read: {exc.strerror or exc}"]
    import yaml  # checked by modules(RUNNER) first

    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"kubeconfig {path} is not valid YAML: {exc}"]
    if not isinstance(doc, dict):
        return [f"kubeconfig {path} holds no configuration"]
    contexts = [
        c.get("name") for c in doc.get("contexts") or [] if isinstance(c, dict) and c.get("name")
    ]
    wanted = context or doc.get("current-context")
    if not wanted:
        return [f"kubeconfig {path} sets no current-context: give --context ({contexts})"]
    if wanted not in contexts:
        return [f"kubeconfig {path} has no context {wanted!r} (it has {contexts})"]
    return []


def check(kubeconfig_path: Path | None, context: str | None, *, run: bool = True) -> list[str]:
    """Everything a run needs (only the scenario tools when not `run`: --list), in the order
    a user would fix it; stops at the first group that fails, since later checks import what
    earlier ones found missing."""
    groups: list[Callable[[], list[str]]] = [python_version, lambda: modules(RUNNER)]
    if run and kubeconfig_path is None:
        groups.append(local_mode)
    elif run and kubeconfig_path is not None:
        groups.append(lambda: modules(CLUSTER))
        groups.append(lambda: kubeconfig(kubeconfig_path, context))
    for group in groups:
        if found := group():
            return found
    return []


def environment_hint() -> str:
    """Which interpreter ran us: a missing module is usually a missing virtualenv."""
    venv = os.environ.get("VIRTUAL_ENV")
    where = f" (virtualenv {venv})" if venv else ""
    return f"interpreter: {sys.executable}{where}"
