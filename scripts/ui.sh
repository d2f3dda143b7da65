#!/usr/bin/env bash
# `make ui`: Airflow standalone (api-server + scheduler + dag-processor + triggerer, on SQLite) and
# the MLflow tracking server (backend: the local SQLite store), both on localhost. Ctrl-C stops both.
#
#   AIRFLOW_PORT (8080), MLFLOW_PORT (5000), VIDREC_HOME (./.vidrec), AIRFLOW_HOME ($VIDREC_HOME/airflow)
#
# The Airflow UI runs without a login (simple auth manager, everyone admin): it listens on
# 127.0.0.1 only, as MLflow does. (Airflow's worker log servers, ports 8793/8794, bind every
# interface: Airflow 3 hard-codes that.) The DAGs start paused: trigger one by hand (with Params)
# from the UI's Trigger button; unpausing one makes the scheduler run its latest interval, which
# reuses an unchanged training (vidrec_training's `unchanged` branch) rather than retraining.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/.venv/bin}"
export PATH="$BIN:$PATH"  # airflow standalone starts its components as `airflow ...` from PATH
export VIDREC_HOME="$(realpath -m "${VIDREC_HOME:-$ROOT/.vidrec}")"
export AIRFLOW_HOME="$(realpath -m "${AIRFLOW_HOME:-$VIDREC_HOME/airflow}")"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$AIRFLOW_PORT" AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW_PORT"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
# The features DAG's default Params point at the local MovieLens copy when there is one.
if [ -z "${VIDREC_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/datasets/ml-latest-small" ]; then
  export VIDREC_DATA_DIR="$(realpath "$ROOT/../shared/datasets/ml-latest-small")"
fi
mkdir -p "$VIDREC_HOME/mlartifacts" "$AIRFLOW_HOME"
"$BIN/airflow" db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1

"$BIN/mlflow" server --backend-store-uri "sqlite:///$VIDREC_HOME/mlflow.db" \
  --artifacts-destination "$VIDREC_HOME/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" \
  > "$VIDREC_HOME/mlflow-server.log" 2>&1 &
MLFLOW_PID=$!
trap 'pkill -TERM -P $MLFLOW_PID 2>/dev/null || true; kill $MLFLOW_PID 2>/dev/null || true; wait $MLFLOW_PID 2>/dev/null || true' EXIT

cat <<EOF
vidrec UIs (Ctrl-C stops both):
  Airflow  http://127.0.0.1:$AIRFLOW_PORT   DAGs vidrec_features, vidrec_training, vidrec_batch_recs, vidrec_experiment_report (paused)
  MLflow   http://127.0.0.1:$MLFLOW_PORT   experiments 'vidrec', 'vidrec-experiments'; models vidrec-candidates, vidrec-ranker (log: $VIDREC_HOME/mlflow-server.log)
EOF
cd "$ROOT"
"$BIN/airflow" standalone
