#!/usr/bin/env bash
# Sourced by the other scripts: make sure .venv exists with Portico installed (idempotent).
# Usage: ". scripts/venv.sh" then "ensure_venv [extra]" (e.g. "ensure_venv test").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

# A C compiler and the Python headers, so the install compiles the proxy's request path with
# mypyc (setup.py); without them Portico still installs, as plain Python.
ensure_build_tools() {
local include
include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if command -v cc >/dev/null && [ -f "$include/Python.h" ]; then return; fi
local sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
local version
version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
{ $sudo_cmd apt-get update -qq \
  && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc "python$version-dev" >/dev/null; } \
  || echo "portico: no C compiler or Python headers; installing as plain Python" >&2
}

ensure_venv() {
if [ ! -x "$root/.venv/bin/python" ]; then
  if ! "$python" -m venv "$root/.venv" 2>/dev/null; then
    # Debian ships venv support separately.
    rm -rf "$root/.venv"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    "$python" -m venv "$root/.venv"
  fi
fi
ensure_build_tools
local spec="$root"
if [ -n "${1:-}" ]; then spec="$root[$1]"; fi
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
}
