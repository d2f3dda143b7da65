#!/usr/bin/env bash
# Entry point of the Airflow containers: give the simple auth manager its users' passwords from the
# environment (never from a committed file), then run the Airflow command given as arguments.
#   AIRFLOW_ADMIN_USER       the admin user's name (default admin)
#   AIRFLOW_ADMIN_PASSWORD   its password (required)
set -euo pipefail
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD}"
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json}"
mkdir -p "$(dirname "$passwords")"
umask 077
python - "$passwords" <<'PY'
import json, os, sys
with open(sys.argv[1], "w") as fh:
    json.dump({os.environ.get("AIRFLOW_ADMIN_USER", "admin"): os.environ["AIRFLOW_ADMIN_PASSWORD"]}, fh)
PY
exec "$@"
