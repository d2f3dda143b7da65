#!/usr/bin/env bash
# `make ui`: Airflow standalone (api-server + scheduler + dag-processor + triggerer, on SQLite) and
# the MLflow tracking server (backend: the local SQLite store), both on localhost. Ctrl-C stops both.
#
#   AIRFLOW_PORT (8080), MLFLOW_PORT (5000), VIDREC_HOME (./.vidrec), AIRFLOW_HOME ($VIDREC_HOME/airflow)
#
# The Airflow UI runs without a login (simple auth manager, everyone admin): it listens on
# 127.0.0.1 only, as MLflow does, and nothing else listens at all. That is why the components run
# one by one rather than under `airflow standalone`: the scheduler and the triggerer skip their
# worker log servers (Airflow binds those to every interface, ports 8793/8794); on one machine
# the api-server reads the task logs from the log folder itself. The DAGs start paused: trigger
# one by hand (with Params) from the UI's Trigger button; unpausing one makes the scheduler run
# its latest interval, which reuses an unchanged training (vidrec_training's `unchanged` branch).
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

PIDS=()
stop() {
  for pid in "${PIDS[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

"$BIN/mlflow" server --backend-store-uri "sqlite:///$VIDREC_HOME/mlflow.db" \
  --artifacts-destination "$VIDREC_HOME/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" \
  > "$VIDREC_HOME/mlflow-server.log" 2>&1 &
PIDS+=($!)

cat <<EOF
vidrec UIs (Ctrl-C stops both):
  Airflow  http://127.0.0.1:$AIRFLOW_PORT   DAGs vidrec_features, vidrec_training, vidrec_batch_recs, vidrec_experiment_report (paused)
  MLflow   http://127.0.0.1:$MLFLOW_PORT   experiments 'vidrec', 'vidrec-experiments'; models vidrec-candidates, vidrec-ranker (log: $VIDREC_HOME/mlflow-server.log)
EOF
cd "$ROOT"
"$BIN/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW_PORT" > "$AIRFLOW_HOME/api-server.log" 2>&1 &
PIDS+=($!)
"$BIN/airflow" scheduler --skip-serve-logs > "$AIRFLOW_HOME/scheduler.log" 2>&1 &
PIDS+=($!)
"$BIN/airflow" dag-processor > "$AIRFLOW_HOME/dag-processor.log" 2>&1 &
PIDS+=($!)
"$BIN/airflow" triggerer --skip-serve-logs > "$AIRFLOW_HOME/triggerer.log" 2>&1 &
PIDS+=($!)
echo "  logs: $AIRFLOW_HOME/{api-server,scheduler,dag-processor,triggerer}.log"
wait -n "${PIDS[@]}"  # one component stopping stops them all
echo "a component stopped: see its log under $AIRFLOW_HOME" >&2
