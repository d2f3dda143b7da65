"""`make demo`: the whole platform end to end on the embedded (local) profile, timed stage by stage.

    1. airflow db migrate            Airflow on SQLite, AIRFLOW_HOME=.vidrec/airflow, dags folder = dags/
    2. airflow dags test vidrec_features    ingest ml-latest-small -> validate -> features -> Feast
    3. airflow dags test vidrec_training    candidates + ranker -> MLflow -> gate -> champion
    4. airflow dags test vidrec_batch_recs  champion top-N for active users -> precomputed store
    5. bentoml serve serving.service:Vidrec on the champion; recommendations for a few users
    6. how to open the Airflow UI and the MLflow UI (`make ui`)

All three DAGs run for the same logical date: the day after the dataset's last event (for
ml-latest-small 2018-09-25), so the data interval ends after every rating. Every stage is
idempotent: a second `make demo` re-validates, reuses the MLflow run (no new versions) and
rewrites the same precomputed lists. Full logs go to .vidrec/demo-logs/.

Environment: VIDREC_DEMO_DATE (logical date), VIDREC_DEMO_DATA_DIR (default
../shared/datasets/ml-latest-small; empty or missing: downloaded), VIDREC_EMBEDDINGS (minilm),
VIDREC_DEMO_SERVE=0 (skip the service), VIDREC_DEMO_KEEP_SERVING=1 (leave it running, Ctrl-C stops).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOME = Path(os.environ.get("VIDREC_HOME", ROOT / ".vidrec")).resolve()
AIRFLOW_HOME = Path(os.environ.get("AIRFLOW_HOME", HOME / "airflow")).resolve()
LOGS = HOME / "demo-logs"
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
FALLBACK_DATE = "2018-09-25"  # the day after ml-latest-small's last rating (2018-09-24 14:27 UTC)


def airflow_env() -> dict[str, str]:
    """What every Airflow command of the demo (and `make ui`) runs with."""
    return {
        **os.environ,
        "VIDREC_HOME": str(HOME),
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONWARNINGS": "ignore",
    }


class Stages:
    def __init__(self) -> None:
        self.times: list[tuple[str, float, str]] = []
        self.started = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n==> {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.times.append((name, time.perf_counter() - t0, f"FAILED: {exc}"))
            self.report()
            raise SystemExit(f"demo stopped at '{name}': {exc}") from exc
        seconds = time.perf_counter() - t0
        detail = result if isinstance(result, str) else ""
        self.times.append((name, seconds, detail))
        print(f"    done in {seconds:.1f} s{': ' + detail if detail else ''}", flush=True)
        return result

    def report(self) -> None:
        total = time.perf_counter() - self.started
        print("\n==> timings")
        for name, seconds, detail in self.times:
            print(f"    {name:<28} {seconds:7.1f} s  {detail}")
        print(f"    {'total (this script)':<28} {total:7.1f} s")


def sh(command: list[str], log_name: str, env: dict[str, str]) -> str:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / log_name
    with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command[:4])} exited with {proc.returncode} (log {log_path}):\n{tail}")
    return log_path.read_text(errors="replace")


def logical_date(data_dir: Path | None) -> str:
    if os.environ.get("VIDREC_DEMO_DATE"):
        return os.environ["VIDREC_DEMO_DATE"]
    ratings = data_dir / "ratings.csv" if data_dir else None
    if ratings and ratings.exists():
        import pandas as pd

        last = pd.read_csv(ratings, usecols=["timestamp"])["timestamp"].max()
        day = datetime.fromtimestamp(int(last), tz=UTC).date() + timedelta(days=1)
        return day.isoformat()
    return FALLBACK_DATE


def dag_test(dag_id: str, date: str, conf: dict, env: dict[str, str]) -> str:
    command = [str(BIN / "airflow"), "dags", "test", dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    log = sh(command, f"{dag_id}.log", env)
    run_id = re.findall(rf"DagRun Finished: dag_id={dag_id}, logical_date=[^,]*, run_id=([^,]+),", log)
    if not run_id:
        return "finished"
    states = subprocess.run(
        [str(BIN / "airflow"), "tasks", "states-for-dag-run", dag_id, run_id[-1], "-o", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    try:
        rows = json.loads(states.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return f"run {run_id[-1]}"

    def seconds(row) -> str:
        if not row.get("start_date") or not row.get("end_date"):
            return ""
        took = datetime.fromisoformat(row["end_date"]) - datetime.fromisoformat(row["start_date"])
        return f" {took.total_seconds():.1f}s"

    return ", ".join(f"{r['task_id']}={r['state']}{seconds(r)}" for r in rows)


def print_training_result() -> None:
    from mlflow import MlflowClient

    from models.lifecycle import registry, tracking
    from vidrec.settings import Settings

    tracking.configure(Settings.from_env())
    client = MlflowClient()
    champion = registry.champion_versions(client)
    print(f"    champion: {champion}")
    if champion:
        version = client.get_model_version(registry.RANKER_MODEL, champion[registry.RANKER_MODEL])
        run = client.get_run(version.run_id)
        ndcg = run.data.metrics.get("two-stage.ndcg_at_10")
        print(
            f"    ranker v{version.version} from MLflow run {version.run_id}: two-stage nDCG@10 = {ndcg:.4f}"
            if ndcg is not None
            else ""
        )
        print(f"    gate: {run.data.tags.get('gate.decision')} ({run.data.tags.get('gate.reasons')})")


def precomputed_users(limit: int = 2) -> list[str]:
    path = HOME / "serving" / "precomputed.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT key FROM precomputed WHERE expires_at > ? ORDER BY key LIMIT ?", (time.time(), limit)
        ).fetchall()
    return [r[0].removeprefix("vidrec:recs:") for r in rows]


def served_from_counts(url: str) -> dict[str, int]:
    """Where the answer for each user in the lake came from (a user with history is never cold start)."""
    from collections import Counter

    import httpx

    from feature_repo.lake import Lake
    from vidrec.settings import Settings

    users = sorted(set(Lake(Settings.from_env().lake_dir).read_events(columns=["user_id"])["user_id"].astype(str)))
    with httpx.Client(timeout=30) as client:
        return dict(
            Counter(
                client.post(f"{url}/recommend", json={"user_id": u, "k": 10}).json().get("served_from") for u in users
            )
        )


def serve_and_recommend() -> str:
    import httpx

    from serving.process import ServerProcess

    users = precomputed_users(2)
    users += [u for u in ("1", "414", "610") if u not in users][: 4 - len(users)]
    users.append("new-user-42")
    env = {
        "VIDREC_HOME": str(HOME),
        "VIDREC_RELOAD_TOKEN": os.environ.get("VIDREC_RELOAD_TOKEN", "vidrec-demo"),
        # The demo's own requests are not viewers: their impressions stay out of the feedback log that
        # the next `make demo` ingests (which would change the lake and retrain).
        "VIDREC_FEEDBACK_DIR": str(LOGS / "service-log"),
    }
    server = ServerProcess(env=env, log_path=LOGS / "bentoml-serve.log")
    t0 = time.perf_counter()
    server.start(ready_timeout=240)
    ready = time.perf_counter() - t0
    print(f"    BentoML service ready at {server.url} in {ready:.1f} s (log {server.log_path})")
    try:
        for user in users:
            response = httpx.post(f"{server.url}/recommend", json={"user_id": user, "k": 5}, timeout=30)
            body = response.json()
            if response.status_code != 200:
                print(f"    user {user}: HTTP {response.status_code} {body}")
                continue
            items = ", ".join(f"{i['video_id']}" for i in body["items"])
            print(f"    user {user:<12} served_from={body.get('served_from')}: {items}")
            for item in body["items"][:2]:
                print(f"        {item['video_id']:>7}  score {item['score']:.3f}  {item.get('reason', '')}")
        counts = served_from_counts(server.url)
        print(f"    every user in the lake, served from: {counts}")
        print(
            f'    try it: curl -s -X POST {server.url}/recommend -H \'Content-Type: application/json\' -d \'{{"user_id": "1", "k": 5}}\''
        )
        if os.environ.get("VIDREC_DEMO_KEEP_SERVING") == "1":
            print("    serving until Ctrl-C ...")
            try:
                while server.proc and server.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        server.stop()
    return f"{len(users)} users answered; service ready in {ready:.1f} s"


def main() -> None:
    stages = Stages()
    data_env = os.environ.get("VIDREC_DEMO_DATA_DIR")
    data_dir = Path(data_env).resolve() if data_env else (DEFAULT_DATA if DEFAULT_DATA.exists() else None)
    date = logical_date(data_dir)
    env = airflow_env()
    os.environ.update({k: env[k] for k in ("VIDREC_HOME", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    print(f"vidrec demo: VIDREC_HOME={HOME}, AIRFLOW_HOME={AIRFLOW_HOME}, logical date {date}, "
          f"data {data_dir or 'downloaded from GroupLens'}; logs in {LOGS}")  # fmt: skip

    stages.run(
        "airflow db migrate",
        lambda: sh([str(BIN / "airflow"), "db", "migrate"], "airflow-db-migrate.log", env) and "SQLite",
    )
    features_conf = {"dataset": "movielens-small", "data_dir": str(data_dir) if data_dir else "",
                     "embeddings": os.environ.get("VIDREC_EMBEDDINGS", "minilm")}  # fmt: skip
    stages.run("dag vidrec_features", dag_test, "vidrec_features", date, features_conf, env)
    # ml-latest-small's users rate in bursts: no time cut has more than 28 users on both sides, too
    # few for the gate to tell models apart. user-time holds out every user's last 5 videos instead.
    stages.run(
        "dag vidrec_training",
        dag_test,
        "vidrec_training",
        date,
        {"protocol": "user-time", "tuned_for": "movielens-small"},
        env,
    )
    print_training_result()
    stages.run("dag vidrec_batch_recs", dag_test, "vidrec_batch_recs", date, {"active_days": 365}, env)
    if os.environ.get("VIDREC_DEMO_SERVE", "1") == "0":
        print("\n==> serving skipped (VIDREC_DEMO_SERVE=0)")
    elif not (ROOT / "serving" / "service.py").exists():
        print("\n==> serving skipped: serving/service.py is not there yet")
    else:
        stages.run("serve + recommend", serve_and_recommend)
    stages.report()
    print(
        f"""
==> next
    Airflow UI and MLflow UI:  make ui
        Airflow  http://127.0.0.1:{os.environ.get("AIRFLOW_PORT", "8080")}   (the three DAGs and these runs; no login on localhost)
        MLflow   http://127.0.0.1:{os.environ.get("MLFLOW_PORT", "5000")}   (experiment 'vidrec', models vidrec-candidates / vidrec-ranker)
    serve the champion:        VIDREC_HOME={HOME} {BIN}/bentoml serve serving.service:Vidrec
        web page                http://127.0.0.1:3000/ui   (pick a user, react to the cards, see the list move)
    re-run one DAG:            AIRFLOW_HOME={AIRFLOW_HOME} AIRFLOW__CORE__DAGS_FOLDER={ROOT / "dags"} VIDREC_HOME={HOME} \\
                               {BIN}/airflow dags test vidrec_training {date}"""
    )


if __name__ == "__main__":
    main()
