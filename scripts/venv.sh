#!/usr/bin/env bash
# Sourced by the other scripts: make sure .venv exists with Portico installed (idempotent).
# Usage: ". scripts/venv.sh" then "ensure_venv [extra]" (e.g. "ensure_venv test").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

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
local spec="$root"
if [ -n "${1:-}" ]; then spec="$root[$1]"; fi
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
}
