"""Build hook: compiles the proxy's request path with mypyc (metadata lives in pyproject.toml).

The modules listed in proxy/native.py become C extensions next to their sources, together with
a stamp of the sources they were built from (the import-time guard in proxy/native.py runs the
sources instead if they changed since). Without a C compiler, or with PORTICO_NATIVE=0, Portico
installs as plain Python: same behaviour, roughly half the requests per second.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python install in place instead of failing it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any compiler failure means "stay pure"
            print(f"portico: request path not compiled ({exc}); runs as Python", file=sys.stderr)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"portico: {ext.name} not compiled ({exc})", file=sys.stderr)


def native_extensions() -> list[Any]:
    if os.environ.get("PORTICO_NATIVE", "1").lower() in ("0", "false", "no", "off"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("portico: mypyc not available; installing as plain Python", file=sys.stderr)
        return []
    native = runpy.run_path(str(ROOT / "proxy" / "native.py"))
    compiled: tuple[str, ...] = native["COMPILED"]
    stamp = ROOT / "proxy" / "_native_stamp.py"
    stamp.write_text(native["stamp_source"](native["source_hashes"](ROOT)))
    paths = [str(native["source_path"](m, ROOT).relative_to(ROOT)) for m in compiled]
    paths.append(str(stamp.relative_to(ROOT)))
    # Third-party imports (uvloop, httptools, cryptography) stay dynamic: the build environment
    # need not install them, and calls into them gain nothing from static types.
    return mypycify(["--ignore-missing-imports", *paths], opt_level="3", group_name="proxy._native")


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
