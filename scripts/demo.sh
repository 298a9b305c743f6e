#!/usr/bin/env bash
# Install Portico and run it on the bundled examples with demo echo backends (no cluster needed).
# The example EndpointSlices point at 127.0.0.2-5:8081; this starts an echo "pod" on each,
# then runs `portico serve --manifests examples` in the foreground (Ctrl-C stops everything).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/venv.sh
ensure_venv
bin="$root/.venv/bin"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for backend in web:web-1:127.0.0.2 web:web-2:127.0.0.3 api:api-1:127.0.0.4 fallback:fallback-1:127.0.0.5; do
  IFS=: read -r service pod address <<<"$backend"
  "$bin/portico" echo --listen "$address:8081" --service "$service" --pod "$pod" &
  pids+=("$!")
done
"$bin/portico" serve --manifests examples --workers 1 "$@"
