"""Airflow for real in the prod profile: a retrain triggered through the REST API, as the UI's Trigger button does.

Real processes, each in its own process group with its log in a temporary folder: `airflow api-server`
(simple auth manager, one admin whose password this module writes), `airflow scheduler` (LocalExecutor:
tasks run as its children) and `airflow dag-processor`, all on a fresh PostgreSQL metadata database
(`airflow db migrate`). The tasks run the prod profile against the real servers: MLflow's backend store
in a fresh PostgreSQL database, Feast's SQL registry in another, its online store in a Redis db number
claimed for this module. Data: the seeded synthetic platform of tests/test_dags.py (300 users, 200 videos,
20,000 events over January 2026).

Through the REST API with a JWT from `POST /auth/token`: unpause and trigger `vidrec_features` (ingest,
validate, features, feast apply, materialize into Redis), then `vidrec_training` with the Params of
tests/test_dags.py, and poll each run to success. The registry must then hold alias `champion` on
`vidrec-candidates` and `vidrec-ranker`, set by that very Airflow run. Last, a run with a bad Param
fails at `train_and_gate`, its log (read over REST) says why, and the champion stays. The scheduler
creates no scheduled runs here (`use_job_schedule` off): only the runs this module triggers exist.
Processes are stopped (their process groups, and any stray process of this AIRFLOW_HOME), the
databases dropped, the Redis db emptied.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from services import free_port, pg_connect, redis_client, redis_db, redis_host_port, temp_database

from feature_repo.synthetic import SyntheticConfig, generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAGS = ROOT / "dags"
LOGICAL_DATE = "2026-01-31T00:00:00Z"  # the day after the synthetic platform's last event
# As in tests/test_dags.py: few, fast generators; the first model's margin over popularity is waived.
TRAIN_CONF = {"generators": ["popularity", "trending", "item-cf"], "per_source_k": 50, "baseline_gain": -1.0}
RUN_TIMEOUT_S = 900.0
USER = "admin"


class AirflowCluster:
    """api-server + scheduler + dag-processor of one AIRFLOW_HOME, and a REST client logged in to it."""

    COMPONENTS = {"api-server": ["api-server"], "scheduler": ["scheduler"], "dag-processor": ["dag-processor"]}

    def __init__(self, root: Path, metadata_url: str, vidrec_env: dict[str, str]):
        self.root = root
        self.home = root / "airflow"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)
        passwords = root / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({USER: self.password}))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIDREC_", "MLFLOW_"))}
        self.env = {
            **inherited,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            # Airflow derives its async URL as postgresql+asyncpg://, a driver vidrec does not install:
            # psycopg 3 serves both.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",  # LocalExecutor workers (2 cores in CI)
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # Only the runs this module triggers: with catchup=False, unpausing a DAG otherwise makes the
            # scheduler create the latest interval's scheduled run at once (vidrec_features with its
            # default Params, which download MovieLens; a vidrec_training run that races ours for the
            # champion alias).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),  # the scheduler's serve-logs
            **vidrec_env,
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    # ---- processes -------------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self) -> AirflowCluster:
        migrated = self.airflow("db", "migrate")
        assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
        for name, args in self.COMPONENTS.items():
            if name == "api-server":
                args = [*args, "--host", "127.0.0.1", "--port", str(self.port)]
            with open(self.log_path(name), "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [str(BIN / "airflow"), *args],
                    env=self.env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self.wait_healthy()
        self.login()
        return self

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def wait_healthy(self, timeout: float = 180.0) -> dict:
        """The api-server answers and reports the scheduler and the dag-processor healthy."""
        deadline = time.monotonic() + timeout
        health: dict = {}
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                if all(
                    health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "dag_processor")
                ):
                    return health
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f}s: {health}\n{self.log_tail('api-server')}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def our_processes(self) -> list[psutil.Process]:
        """Every live process started with this AIRFLOW_HOME (task runners included)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("AIRFLOW_HOME") == str(self.home):
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        # Whatever outlived its group (a task runner that started a session of its own): by pid.
        stray = self.our_processes()
        for proc in stray:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(stray, timeout=10)

    # ---- REST ---------------------------------------------------------------------------------------

    def login(self) -> None:
        response = httpx.post(f"{self.url}/auth/token", json={"username": USER, "password": self.password}, timeout=30)
        assert response.status_code == 201, response.text
        self.token = response.json()["access_token"]

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """The dag-processor has parsed and serialized the DAG (the API knows it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            response = self.api("GET", f"/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            time.sleep(1)
        errors = self.api("GET", "/importErrors").text
        raise TimeoutError(
            f"{dag_id} not parsed after {timeout:.0f}s; import errors: {errors}\n{self.log_tail('dag-processor')}"
        )

    def trigger(self, dag_id: str, conf: dict, logical_date: str = LOGICAL_DATE) -> dict:
        """Unpause, then trigger a run for `logical_date` with `conf` (what the UI's Trigger form posts)."""
        self.wait_for_dag(dag_id)
        unpaused = self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        assert unpaused.status_code == 200 and unpaused.json()["is_paused"] is False, unpaused.text
        created = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf})
        assert created.status_code == 200, created.text
        return created.json()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT_S) -> tuple[dict, dict[str, str]]:
        """Poll the run to a final state; (run, {task_id: state})."""
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            self.check_alive()
            response = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if response.status_code == 401:  # the token expired: log in again, as the UI does
                self.login()
                continue
            assert response.status_code == 200, response.text
            run = response.json()
            if run["state"] in ("success", "failed"):
                break
            time.sleep(3)
        return run, self.task_states(dag_id, run_id)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        response = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert response.status_code == 200, response.text
        return {ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]}

    def explain(self, dag_id: str, run_id: str, run: dict, states: dict[str, str]) -> str:
        """What failed: the run, its task states, and the logs of tasks that did not succeed (over REST)."""
        lines = [f"{dag_id} run {run_id}: {run.get('state')}", f"tasks: {states}"]
        for ti in self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json().get("task_instances", []):
            try_number = int(ti.get("try_number") or 0)
            if ti["state"] in ("success", "skipped") or try_number < 1:  # fine, or never started
                continue
            log = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{try_number}",
                           params={"full_content": "true"})  # fmt: skip
            lines.append(f"--- {ti['task_id']} ({ti['state']}, try {try_number}) ---\n{log_text(log)[-4000:]}")
        lines.append(f"--- scheduler ---\n{self.log_tail('scheduler', 3000)}")
        return "\n".join(lines)


def log_text(response: httpx.Response) -> str:
    """A task log as the REST API returns it (structured events; errors with their exception) as text."""
    try:
        content = response.json()["content"]
    except (ValueError, KeyError, TypeError):
        return response.text
    lines = []
    for entry in content:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        lines.append(f"{entry.get('timestamp', '')} {entry.get('event', '')}".strip())
        for exc in entry.get("error_detail") or []:
            lines.append(f"    {exc.get('exc_type')}: {exc.get('exc_value')}")
    return "\n".join(lines)


@dataclass
class Platform:
    """The running Airflow, and where the prod profile's state lives."""

    airflow: AirflowCluster
    data_dir: Path  # the synthetic platform's canonical files
    databases: dict[str, str]  # airflow, mlflow, feast -> SQLAlchemy URL
    redis_db: int  # the Feast online store's db number on the shared Redis


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("prod-airflow")
    data_dir = root / "synthetic"
    generate(SyntheticConfig(n_users=300, n_videos=200, n_events=20_000, days=30, seed=7), data_dir)
    with ExitStack() as stack:
        airflow_db = stack.enter_context(temp_database("airflow"))
        mlflow_db = stack.enter_context(temp_database("mlflow"))
        feast_db = stack.enter_context(temp_database("feast"))
        redis_number = stack.enter_context(redis_db())
        host, port = redis_host_port()
        vidrec_env = {
            "VIDREC_PROFILE": "prod",
            "VIDREC_HOME": str(root / "vidrec"),
            "VIDREC_CACHE_DIR": str(root / "cache"),
            "VIDREC_TASK_RETRIES": "0",
            "VIDREC_MLFLOW_URI": mlflow_db,
            "VIDREC_FEAST_REGISTRY_URL": feast_db,
            "VIDREC_FEAST_REDIS": f"{host}:{port},db={redis_number}",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        airflow = AirflowCluster(root, airflow_db, vidrec_env)
        stack.callback(airflow.stop)  # before the databases are dropped
        airflow.start()
        yield Platform(airflow, data_dir, {"airflow": airflow_db, "mlflow": mlflow_db, "feast": feast_db}, redis_number)
    assert all(p.poll() is not None for p in airflow.procs.values()), "an Airflow process is still running"
    assert not airflow.our_processes(), "a process of this AIRFLOW_HOME is still running"


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


class TestRetrainThroughTheRestApi:
    """In order: the features DAG fills the prod stores, then a retrain triggered over REST promotes."""

    @staticmethod
    def run_ids(platform, dag_id: str) -> list[str]:
        response = platform.airflow.api("GET", f"/dags/{dag_id}/dagRuns")
        assert response.status_code == 200, response.text
        return [r["dag_run_id"] for r in response.json()["dag_runs"]]

    def test_rest_api_requires_a_login(self, platform):
        assert httpx.get(f"{platform.airflow.url}/api/v2/dags", timeout=30).status_code == 401
        wrong = httpx.post(
            f"{platform.airflow.url}/auth/token",
            json={"username": USER, "password": "wrong"},  # pragma: allowlist secret
            timeout=30,
        )
        assert wrong.status_code == 401
        listed = platform.airflow.api("GET", "/dags", params={"dag_id_pattern": "vidrec"})
        assert listed.status_code == 200, listed.text

    def test_features_run_fills_the_prod_stores(self, platform):
        conf = {"dataset": "synthetic", "data_dir": str(platform.data_dir), "embeddings": "tfidf"}
        created = platform.airflow.trigger("vidrec_features", conf)
        assert created["run_type"] == "manual" and created["conf"] == conf
        run, states = platform.airflow.wait_for_run("vidrec_features", created["dag_run_id"])
        assert run["state"] == "success", platform.airflow.explain(
            "vidrec_features", created["dag_run_id"], run, states
        )
        assert states == dict.fromkeys(
            ["ingest", "validate", "transform", "embeddings", "feast_apply", "materialize"], "success"
        )
        assert run["data_interval_end"].startswith("2026-01-31T00:00:00")
        assert self.run_ids(platform, "vidrec_features") == [created["dag_run_id"]]
        # Feast's registry is in PostgreSQL and the online rows in the claimed Redis db.
        with pg_connect(dbname=dbname(platform.databases["feast"])) as conn:
            views = {
                r[0] for r in conn.execute("select feature_view_name from feature_views where project_id = 'vidrec'")
            }
        assert {"user_profile", "user_recent", "video_stats"} <= views
        assert redis_client(platform.redis_db).dbsize() > 300  # one hash per user and per video, and the claim

    def test_training_run_promotes_a_champion(self, platform):
        from mlflow import MlflowClient

        from models.lifecycle import registry

        created = platform.airflow.trigger("vidrec_training", TRAIN_CONF)
        run_id = created["dag_run_id"]
        assert created["run_type"] == "manual" and created["conf"] == TRAIN_CONF
        run, states = platform.airflow.wait_for_run("vidrec_training", run_id)
        assert run["state"] == "success", platform.airflow.explain("vidrec_training", run_id, run, states)
        assert states == {"check_data": "success", "train_and_gate": "success", "promote_or_block": "success",
                          "champion_promoted": "success", "gate_blocked": "skipped", "unchanged": "skipped",
                          "reload_serving": "skipped"}, states  # fmt: skip
        assert self.run_ids(platform, "vidrec_training") == [run_id]

        uri = platform.databases["mlflow"]
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        champion = registry.champion_versions(client)
        assert champion == {registry.CANDIDATES_MODEL: "1", registry.RANKER_MODEL: "1"}
        ranker = client.get_model_version(registry.RANKER_MODEL, champion[registry.RANKER_MODEL])
        tags = client.get_run(ranker.run_id).data.tags
        assert tags["airflow.dag_id"] == "vidrec_training" and tags["airflow.run_id"] == run_id  # set by this very run
        assert tags["gate.decision"] == "promoted"
        assert ranker.tags[registry.TAG_CANDIDATES_VERSION] == champion[registry.CANDIDATES_MODEL]
        with pg_connect(dbname=dbname(uri)) as conn:  # the MLflow backend store is PostgreSQL
            stored = dict(
                conn.execute("select name, version from registered_model_aliases where alias = 'champion'").fetchall()
            )
        assert {name: str(v) for name, v in stored.items()} == champion

    def test_a_bad_param_fails_the_run_visibly_and_the_champion_stays(self, platform):
        from mlflow import MlflowClient

        from models.lifecycle import registry

        uri = platform.databases["mlflow"]
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        before = registry.champion_versions(client)
        # A logical date is unique per DAG: the next day's interval (the lake is the one validated).
        created = platform.airflow.trigger(
            "vidrec_training", {**TRAIN_CONF, "ranker": {"colour": "red"}}, "2026-02-01T00:00:00Z"
        )
        run, states = platform.airflow.wait_for_run("vidrec_training", created["dag_run_id"])
        report = platform.airflow.explain("vidrec_training", created["dag_run_id"], run, states)
        assert run["state"] == "failed", report
        assert states["check_data"] == "success" and states["train_and_gate"] == "failed", states
        assert states["champion_promoted"] == "upstream_failed" and states["reload_serving"] == "upstream_failed", (
            states
        )
        # The task's own log, read back through the REST API, names the problem.
        assert "unknown ranker hyperparameter(s) ['colour']" in report, report
        assert registry.champion_versions(client) == before
