#!/usr/bin/env bash
# The README's screenshot of an envkit run in MLflow's UI (docs/mlflow-run.png), taken by a real headless browser.
#
#   bash docs/mlflow-screenshot.sh RUN_ID [OUT.png]
#
# Run it in the project whose store holds RUN_ID (or with ENVKIT_HOME set). It starts a throwaway MLflow tracking
# server on 127.0.0.1 (SQLite backend, in a temporary folder), exports the run and its replays with `envkit mlflow
# export` (their verdicts land on the run's page), takes the run page with Debian's chromium, and stops the server.
# Needs: pip install mlflow; apt-get install -y chromium.
set -euo pipefail

run_id=${1:?usage: $0 RUN_ID [OUT.png]}
out=$(realpath -m "${2:-docs/mlflow-run.png}")
experiment=${EXPERIMENT:-$(basename "$PWD")}
# MLflow's UI opens its assistant panel on hosts named localhost or 127.0.0.1: the browser reaches the server under
# another name (mapped to 127.0.0.1 inside chromium only), which the server is told to accept as host and origin.
alias_host=mlflow.envkit.test

tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill -TERM -- "-$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
uri=http://127.0.0.1:$port
MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true setsid python3 -m mlflow server \
    --backend-store-uri "sqlite:///$tmp/mlflow.db" --artifacts-destination "$tmp/artifacts" \
    --host 127.0.0.1 --port "$port" --workers 1 \
    --allowed-hosts "127.0.0.1:$port,localhost:$port,$alias_host:$port" \
    --cors-allowed-origins "http://$alias_host:$port" >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 240); do  # a cold start migrates the database: up to a minute on a busy machine
    curl -sf "$uri/health" >/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
    sleep 0.5
done
curl -sf "$uri/health" >/dev/null || { echo "mlflow server did not come up" >&2; tail "$tmp/server.log" >&2; exit 1; }

json=$(python3 -m envkit mlflow export "$run_id" --tracking-uri "$uri" --experiment "$experiment" --json)
url=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["url"])' <<<"$json")
# The replays of the run in the store: each puts its verdict on the run's page (envkit.replay.<id>).
for replay in $(python3 -m envkit runs --json | python3 -c '
import json, sys
print(" ".join(r["run_id"] for r in json.load(sys.stdin) if r.get("replay_of") == sys.argv[1]))' "$run_id"); do
    python3 -m envkit mlflow export "$replay" --tracking-uri "$uri" --experiment "$experiment" >/dev/null
done
page=${url/127.0.0.1/$alias_host}?workflowType=machine_learning  # the model-training view, not GenAI's

mkdir -p "$(dirname "$out")"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$tmp/chromium" --host-resolver-rules="MAP $alias_host 127.0.0.1" \
    --window-size="${WINDOW:-1400,1000}" --virtual-time-budget=15000 --screenshot="$out" "$page" 2>/dev/null
echo "$out ($(stat -c %s "$out") bytes): $url" >&2
