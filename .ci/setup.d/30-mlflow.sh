#!/usr/bin/env bash
# MLflow for envkit's MLflow export and its tests (issue 16): the client (`envkit[mlflow]` needs only mlflow-skinny)
# and, for tests/integration/test_mlflow.py, the tracking server (`mlflow server`, SQLite backend), which is in the
# full `mlflow` package. The tests start and stop their own server on 127.0.0.1: nothing is started here.
#
# Idempotent and quiet: nothing happens when this version and the server's modules are already importable.
set -euo pipefail

MLFLOW_VERSION=3.17.2  # the version the tests were written and run against

log() { echo "setup 30-mlflow: $*" >&2; }

have() {
  python3 - "$MLFLOW_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata, importlib.util, sys
assert importlib.metadata.version("mlflow") == sys.argv[1]
for module in ("mlflow.server", "sqlalchemy", "alembic"):  # what `mlflow server` needs beyond the client
    assert importlib.util.find_spec(module) is not None, module
PY
}

if ! have; then
  log "installing mlflow==$MLFLOW_VERSION"
  python3 -m pip install -q --disable-pip-version-check "mlflow==$MLFLOW_VERSION"
  have || { log "mlflow $MLFLOW_VERSION is still not importable after pip install"; exit 1; }
fi
