"""The Airflow DAGs: they parse fast, their task graphs, and real `airflow dags test` runs.

Every run goes through the real Airflow CLI (`airflow dags test`, Airflow on SQLite in a temp
AIRFLOW_HOME) and the real stack behind the tasks (lake, DuckDB, Feast, MLflow on SQLite, the
service's precomputed store), on a small seeded synthetic platform (300 users, 200 videos,
20,000 events over 30 days of January 2026).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo.synthetic import SyntheticConfig, generate
from vidrec import pipeline

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAGS = ROOT / "dags"
DAG_IDS = ("vidrec_features", "vidrec_training", "vidrec_batch_recs", "vidrec_experiment_report")
DAY = "2026-01-31"  # the day after the synthetic platform's last event
NEXT_DAY = "2026-02-01"
HEAVY = ("pandas", "numpy", "mlflow", "feast", "torch", "xgboost", "duckdb", "sklearn", "bentoml")
# What of vidrec's own a DAG file imports at parse time: the DAGs' shared definitions (start date,
# retries, assets) and the defaults its Params show, all standard library only.
PARSE_TIME_MODULES = {
    "vidrec",
    "vidrec.orchestration",
    "models",
    "models.lifecycle",
    "models.lifecycle.config",
    "feature_repo",
    "feature_repo.defaults",
}
# Few, fast generators. On this small synthetic platform popularity is hard to beat, so the first
# model's margin over it is waived: these tests are about the orchestration, not model quality
# (tests/test_train_gate.py covers the gate itself).
TRAIN_CONF = {"generators": ["popularity", "trending", "item-cf"], "per_source_k": 50, "baseline_gain": -1.0}


# ---- parsing ----------------------------------------------------------------------------------------

PARSE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    parse_s = time.perf_counter() - t0
    out = {
        "import_s": import_s,
        "parse_s": parse_s,
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "files": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
        "modules": sorted({m.split(".")[0] for m in sys.modules}),
        "own_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("vidrec", "models", "feature_repo", "serving")),
        "dags": {},
    }
    for dag in bag.dags.values():
        out["dags"][dag.dag_id] = {
            "fileloc": dag.fileloc,
            "timetable": type(dag.timetable).__name__,
            "cron": getattr(getattr(dag.timetable, "timetable", dag.timetable), "expression", None),
            "interval_s": getattr(getattr(dag.timetable, "timetable", dag.timetable), "interval", None).total_seconds(),
            "schedule_assets": [getattr(dag.timetable, "asset_condition").name]
                if getattr(dag.timetable, "asset_condition", None) is not None else [],
            "params": sorted(dag.params.keys()),
            "catchup": dag.catchup,
            "tasks": {
                t.task_id: {
                    "downstream": sorted(t.downstream_task_ids),
                    "retries": t.retries,
                    "backoff": float(t.retry_exponential_backoff),
                    "outlets": sorted(getattr(o, "name", str(o)) for o in t.outlets),
                    "operator": type(t).__name__,
                }
                for t in dag.tasks
            },
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}  # fmt: skip
    env.pop("VIDREC_TASK_RETRIES", None)
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(DAGS)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_dag_file_imports_fast_and_without_heavy_modules(parsed):
    print(
        f"\nDagBag of {DAGS}: {parsed['parse_s']:.3f} s for {len(parsed['files'])} files (airflow import {parsed['import_s']:.2f} s)"
    )
    for file, seconds in sorted(parsed["files"].items()):
        print(f"  {file}: {seconds * 1000:.1f} ms")
    assert parsed["errors"] == {}
    assert sorted(parsed["dags"]) == sorted(DAG_IDS)
    assert {Path(p).name for p in parsed["files"]} == {f"{d}.py" for d in DAG_IDS}
    assert not set(HEAVY) & set(parsed["modules"]), "a DAG file imported a heavy module at parse time"
    assert set(parsed["own_modules"]) <= PARSE_TIME_MODULES, parsed["own_modules"]


def graph(parsed, dag_id) -> dict[str, list[str]]:
    return {task: info["downstream"] for task, info in parsed["dags"][dag_id]["tasks"].items()}


def test_features_graph(parsed):
    assert graph(parsed, "vidrec_features") == {
        "ingest": ["validate"],
        "validate": ["embeddings", "transform"],
        "transform": ["feast_apply"],
        "embeddings": ["feast_apply"],
        "feast_apply": ["materialize"],
        "materialize": [],
    }
    dag = parsed["dags"]["vidrec_features"]
    assert dag["cron"] == "0 0 * * *" and dag["interval_s"] == 86400 and not dag["catchup"]
    assert {"dataset", "data_dir", "include_feedback", "max_quarantine_rate", "embeddings"} <= set(dag["params"])


def test_training_graph(parsed):
    assert graph(parsed, "vidrec_training") == {
        "check_data": ["train_and_gate"],
        "train_and_gate": ["champion_promoted", "gate_blocked", "promote_or_block", "unchanged"],
        "promote_or_block": ["champion_promoted", "gate_blocked", "unchanged"],
        "champion_promoted": ["reload_serving"],
        "gate_blocked": [],
        "unchanged": [],
        "reload_serving": [],
    }
    dag = parsed["dags"]["vidrec_training"]
    assert dag["cron"] == "0 6 * * 1" and dag["interval_s"] == 7 * 86400
    assert dag["tasks"]["promote_or_block"]["operator"] == "_BranchPythonDecoratedOperator"
    assert dag["tasks"]["champion_promoted"]["outlets"] == ["vidrec_champion"]
    assert {"protocol", "generators", "per_source_k", "ranker", "min_gain", "baseline_gain", "guards"} <= set(
        dag["params"]
    )


def test_batch_graph_runs_daily_and_after_a_promotion(parsed):
    assert graph(parsed, "vidrec_batch_recs") == {"precompute": []}
    dag = parsed["dags"]["vidrec_batch_recs"]
    assert dag["timetable"] == "AssetOrTimeSchedule"
    assert dag["schedule_assets"] == ["vidrec_champion"]
    assert dag["cron"] == "0 2 * * *" and dag["interval_s"] == 86400


def test_experiment_report_graph_runs_daily_with_params(parsed):
    assert graph(parsed, "vidrec_experiment_report") == {"report": ["champion_promoted"], "champion_promoted": []}
    dag = parsed["dags"]["vidrec_experiment_report"]
    assert dag["cron"] == "0 3 * * *" and not dag["catchup"]
    assert dag["params"] == ["challenger_share", "experiment", "promote_if_winning", "significance", "window_days"]
    assert dag["tasks"]["champion_promoted"]["outlets"] == ["vidrec_champion"]  # only a promotion emits it


def test_every_task_retries_with_exponential_backoff(parsed):
    for dag in parsed["dags"].values():
        for task, info in dag["tasks"].items():
            assert info["retries"] >= 1 and info["backoff"] > 1, (task, info)


# ---- running ----------------------------------------------------------------------------------------


class Platform:
    """One Airflow + vidrec home; runs DAGs with `airflow dags test` and reads the state they leave."""

    def __init__(self, root: Path, data_dir: Path | None):
        self.home = root / "vidrec"
        self.airflow_home = root / "airflow"
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "VIDREC_HOME": str(self.home),
            "VIDREC_CACHE_DIR": str(root / "cache"),
            "VIDREC_TASK_RETRIES": "0",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        for name in ("VIDREC_LAKE_DIR", "VIDREC_FEATURES_DIR", "VIDREC_MLFLOW_URI", "VIDREC_SERVING_URL",
                     "VIDREC_PRECOMPUTED_URL", "VIDREC_FEEDBACK_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # fmt: skip
            self.env.pop(name, None)
        proc = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def run(
        self, dag_id: str, date: str, conf: dict | None = None, env: dict | None = None
    ) -> tuple[int, dict[str, str], str]:
        """(exit code, {task_id: state}, log) of one `airflow dags test`."""
        command = [str(BIN / "airflow"), "dags", "test", dag_id, date]
        if conf:
            command += ["--conf", json.dumps(conf)]
        proc = subprocess.run(
            command, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=900, cwd=ROOT
        )
        log = proc.stdout + proc.stderr
        run_ids = re.findall(rf"DagRun Finished: dag_id={dag_id}, logical_date=[^,]*, run_id=([^,]+),", log)
        assert run_ids, f"no DagRun finished:\n{log[-4000:]}"
        states = subprocess.run(
            [str(BIN / "airflow"), "tasks", "states-for-dag-run", dag_id, run_ids[-1], "-o", "json"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        rows = json.loads(states.stdout.strip().splitlines()[-1])
        return proc.returncode, {r["task_id"]: r["state"] for r in rows}, log

    def features_conf(self, **extra) -> dict:
        return {"dataset": "synthetic", "data_dir": str(self.data_dir), "embeddings": "tfidf", **extra}

    @contextmanager
    def settings(self):
        from vidrec.settings import Settings

        with mock.patch.dict(os.environ, {"VIDREC_HOME": str(self.home)}):
            yield Settings.from_env()

    def lake_counts(self) -> dict:
        from feature_repo.lake import Lake

        with self.settings() as s:
            stats = Lake(s.lake_dir).stats()
            quarantine = sorted(str(p.relative_to(s.lake_dir)) for p in (s.lake_dir / "quarantine").rglob("*.parquet"))
        return {k: stats[k] for k in ("events", "users", "videos", "partitions")} | {"quarantine_files": quarantine}

    def feature_rows(self) -> dict[str, int]:
        with self.settings() as s:
            return {p.stem: pq.ParquetFile(p).metadata.num_rows for p in sorted(s.features_dir.glob("*.parquet"))}

    def registry(self) -> dict:
        from mlflow import MlflowClient

        from models.lifecycle import registry

        uri = f"sqlite:///{self.home / 'mlflow.db'}"
        if not (self.home / "mlflow.db").exists():
            return {"versions": {}, "champion": None, "runs": 0}
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = {
            m: sorted(int(v.version) for v in client.search_model_versions(f"name = '{m}'")) for m in registry.MODELS
        }
        experiments = [e.experiment_id for e in client.search_experiments()]
        return {
            "versions": versions,
            "champion": registry.champion_versions(client) if any(versions.values()) else None,
            "runs": len(client.search_runs(experiments)),
        }

    def precomputed(self) -> dict[str, dict]:
        path = self.home / "serving" / "precomputed.db"
        if not path.exists():
            return {}
        with sqlite3.connect(path) as conn:
            return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM precomputed")}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(n_users=300, n_videos=200, n_events=20_000, days=30, seed=7), out)
    return out


@pytest.fixture(scope="module")
def platform(tmp_path_factory, synthetic_dir) -> Platform:
    return Platform(tmp_path_factory.mktemp("platform"), synthetic_dir)


def assert_states(states: dict[str, str], expected: dict[str, str], log: str) -> None:
    assert {t: states.get(t) for t in expected} == expected, log[-6000:]


@dataclass
class Ran:
    """One `airflow dags test` and what it left."""

    code: int
    states: dict[str, str]
    log: str
    seen: dict = field(default_factory=dict)  # state read right after the run


# The scenario is a chain of module fixtures, each one DAG run that builds on the one before: any test
# runs alone (`pytest -k name`) and gets exactly the runs it needs, in order.


@pytest.fixture(scope="module")
def featured(platform) -> Ran:
    """The features DAG, once, for DAY."""
    ran = Ran(*platform.run("vidrec_features", DAY, platform.features_conf()))
    with platform.settings() as s:
        stamps = pd.read_parquet(s.features_dir / "user_features.parquet", columns=["event_timestamp"])
    ran.seen = {
        "lake": platform.lake_counts(),
        "features": platform.feature_rows(),
        "as_of": set(stamps["event_timestamp"].astype(str)),
    }
    return ran


@pytest.fixture(scope="module")
def trained(platform, featured) -> Ran:
    """The training DAG, once, for DAY: the first champion."""
    ran = Ran(*platform.run("vidrec_training", DAY, TRAIN_CONF))
    ran.seen = platform.registry()
    return ran


@pytest.fixture(scope="module")
def batched(platform, trained) -> Ran:
    ran = Ran(*platform.run("vidrec_batch_recs", DAY, {"active_days": 7, "top_n": 20}))
    ran.seen = platform.precomputed()
    return ran


@pytest.fixture(scope="module")
def fed_back(platform, trained) -> Ran:
    """40 events in the serving feedback log, then the features DAG for the next day."""
    from feature_repo.lake import Lake
    from serving.feedback import FeedbackLog

    before = platform.lake_counts()["events"]
    with platform.settings() as s:
        videos = list(Lake(s.lake_dir).read_table("videos")["video_id"])
    events = [
        {"user_id": f"fb-{i % 5}", "video_id": videos[i], "event_type": "play", "device": "mobile",
         "event_ts": f"2026-01-31T{10 + i % 10:02d}:00:00Z", "session_id": f"s{i}"}
        for i in range(40)
    ]  # fmt: skip
    result = FeedbackLog(platform.home / "feedback", lambda: videos).append(
        events, now=pd.Timestamp("2026-02-01T00:00:00Z")
    )
    assert len(result.accepted) == 40 and not result.rejected
    ran = Ran(*platform.run("vidrec_features", NEXT_DAY, platform.features_conf()))
    ran.seen = {"before": before, "after": platform.lake_counts()["events"]}
    return ran


@pytest.mark.integration
@pytest.mark.slow
class TestDagRuns:
    """Features (twice), training (promote, reuse, block), batch (twice), feedback, reload."""

    def test_features_dag_runs_to_success(self, platform, featured):
        assert featured.code == 0, featured.log[-6000:]
        assert set(featured.states.values()) == {"success"}, featured.states
        counts, rows = featured.seen["lake"], featured.seen["features"]
        assert counts["events"] > 0 and counts["videos"] == 200
        assert rows["user_features"] > 0 and rows["video_features"] > 0 and rows["video_embeddings"] == 200
        report = json.loads(next((platform.home / "runs" / "vidrec_features").glob(f"{DAY}*/ingest.json")).read_text())
        assert report["sources"][0]["tables"]["events"]["rows_in"] == 20_000
        # The as-of time is the data interval's end: one snapshot, at midnight after the last event.
        assert featured.seen["as_of"] == {"2026-01-31 00:00:00+00:00"}

    def test_features_dag_rerun_of_the_same_interval_duplicates_nothing(self, platform, featured):
        code, states, log = platform.run("vidrec_features", DAY, platform.features_conf())
        assert code == 0 and set(states.values()) == {"success"}, log[-6000:]
        assert platform.lake_counts() == featured.seen["lake"]
        assert platform.feature_rows() == featured.seen["features"]
        assert "videos unchanged since tfidf embeddings were computed" in log

    def test_training_dag_trains_registers_and_promotes(self, trained):
        assert trained.code == 0, trained.log[-6000:]
        assert_states(trained.states, {"check_data": "success", "train_and_gate": "success", "promote_or_block": "success",
                                       "champion_promoted": "success", "gate_blocked": "skipped",
                                       "reload_serving": "skipped"}, trained.log)  # fmt: skip
        assert "VIDREC_SERVING_URL is not set" in trained.log
        assert trained.seen["versions"] == {"vidrec-candidates": [1], "vidrec-ranker": [1]}
        assert trained.seen["champion"] == {"vidrec-candidates": "1", "vidrec-ranker": "1"}

    def test_training_rerun_of_the_same_interval_registers_nothing_new(self, platform, trained):
        before = platform.registry()
        code, states, log = platform.run("vidrec_training", DAY, TRAIN_CONF)
        assert code == 0, log[-6000:]
        assert "reusing MLflow run" in log
        # Nothing new: nothing promoted, no vidrec_champion event (so no batch run), serving untouched.
        assert_states(states, {"unchanged": "success", "champion_promoted": "skipped", "gate_blocked": "skipped",
                               "reload_serving": "skipped"}, log)  # fmt: skip
        assert "unchanged: the data and Params match MLflow run" in log and "champion stays" in log
        assert platform.registry()["versions"] == before["versions"]

    def test_blocked_gate_skips_promotion_and_reload(self, platform, trained):
        # A margin no model can reach: the gate blocks, the champion stays.
        before = platform.registry()["versions"]["vidrec-ranker"]
        code, states, log = platform.run("vidrec_training", DAY, {**TRAIN_CONF, "min_gain": 1.0})
        assert code == 0, log[-6000:]
        assert_states(states, {"train_and_gate": "success", "promote_or_block": "success", "gate_blocked": "success",
                               "champion_promoted": "skipped", "reload_serving": "skipped"}, log)  # fmt: skip
        state = platform.registry()
        assert state["versions"]["vidrec-ranker"] == [*before, before[-1] + 1]
        assert state["champion"] == {"vidrec-candidates": "1", "vidrec-ranker": "1"}

    def test_a_protocol_without_feast_features_cannot_judge_a_feast_champion(self, platform, trained):
        code, states, log = platform.run("vidrec_training", DAY, {**TRAIN_CONF, "protocol": "user-time"})
        assert code == 0, log[-6000:]
        assert_states(states, {"gate_blocked": "success", "champion_promoted": "skipped"}, log)
        assert "ranks with Feast features (ranker_v1), which the user-time protocol leaves out" in log
        assert platform.registry()["champion"] == {"vidrec-candidates": "1", "vidrec-ranker": "1"}

    def test_batch_dag_writes_the_champions_lists(self, platform, batched):
        assert batched.code == 0 and batched.states == {"precompute": "success"}, batched.log[-6000:]
        lists = batched.seen
        assert len(lists) > 10
        first = next(iter(lists.values()))
        assert first["versions"] == {"vidrec-candidates": "1", "vidrec-ranker": "1"}
        assert 0 < len(first["video_ids"]) <= 20 and len(first["scores"]) == len(first["video_ids"])
        # The champion is refit on every event: every user active in the window gets a list.
        from feature_repo.lake import Lake
        from models.lifecycle.batch import active_users

        end = pd.Timestamp(DAY, tz="UTC")
        with platform.settings() as s:
            active = active_users(Lake(s.lake_dir), end - pd.Timedelta(days=7), end)
        assert len(active) > 10 and {f"vidrec:recs:{u}" for u in active} == set(lists)

    def test_batch_rerun_rewrites_the_same_keys(self, platform, batched):
        code, states, log = platform.run("vidrec_batch_recs", DAY, {"active_days": 7, "top_n": 20})
        assert code == 0, log[-6000:]
        again = platform.precomputed()
        assert set(again) == set(batched.seen)
        assert all(again[k]["video_ids"] == batched.seen[k]["video_ids"] for k in again)

    def test_experiment_report_dag_reports_a_simulated_ab_test(self, platform, trained):
        """Simulated viewers of the synthetic world (its truth) split between the champion and a
        popularity challenger, logged offline to their own folder; the DAG reports on them."""
        from models.lifecycle import registry, tracking
        from models.popularity import Popularity
        from serving import simulation

        logs = platform.home / "experiment-logs"
        with platform.settings() as s:
            tracking.configure(s)
            champion = registry.load_champion()
            start = pd.Timestamp("2026-01-29", tz="UTC")
            popular = simulation.GeneratorSystem(Popularity().fit(champion.system.data))
            target = simulation.OfflineTarget(
                {"champion": simulation.registered_system(champion, s, start), "challenger": popular}, "dag-ab", 0.5,
                logs,
                {"champion": champion.versions, "challenger": {"popularity": "baseline"}},
            )  # fmt: skip
            audience = simulation.synthetic_audience(SyntheticConfig(n_users=300, n_videos=200, seed=7))
            simulation.simulate(audience, target, users=300, sessions_per_user=2, seed=3, start=start)
        env = {"VIDREC_FEEDBACK_DIR": str(logs)}
        conf = {"experiment": "dag-ab", "window_days": 2, "challenger_share": 0.5}
        code, states, log = platform.run("vidrec_experiment_report", DAY, conf, env=env)
        assert code == 0, log[-6000:]
        assert_states(states, {"report": "success", "champion_promoted": "skipped"}, log)
        report = json.loads(
            next((platform.home / "runs" / "vidrec_experiment_report").rglob("report.json")).read_text()
        )
        assert report["experiment"] == "dag-ab" and report["srm"]["flagged"] is False
        assert report["counts"]["users"] == 300 and set(report["metrics"]) >= {"ctr", "session_length"}
        assert f"dag-ab: decision {report['decision']} (MLflow run" in log
        # No traffic in the window: the report is skipped and says why.
        code, states, log = platform.run("vidrec_experiment_report", DAY, {**conf, "experiment": "none"}, env=env)
        assert code == 0 and states["report"] == "skipped" and "no impressions" in log, log[-6000:]

    def test_features_dag_ingests_the_feedback_log(self, platform, fed_back):
        assert fed_back.code == 0 and set(fed_back.states.values()) == {"success"}, fed_back.log[-6000:]
        assert fed_back.seen["after"] == fed_back.seen["before"] + 40
        # Once more for the same interval: the feedback batch is not added twice.
        code, _, log = platform.run("vidrec_features", NEXT_DAY, platform.features_conf())
        assert code == 0 and platform.lake_counts()["events"] == fed_back.seen["after"], log[-6000:]

    def test_promotion_reloads_a_running_service(self, platform, fed_back):
        from serving.process import ServerProcess

        newest = max(platform.registry()["versions"]["vidrec-ranker"])
        expected = {"vidrec-candidates": str(newest + 1), "vidrec-ranker": str(newest + 1)}
        env = {"VIDREC_HOME": str(platform.home), "VIDREC_RELOAD_TOKEN": "t0ken", "VIDREC_RELOAD_POLL_S": "0"}
        with ServerProcess(env=env) as server:
            # The lake grew (feedback): new data, new run; margins no model can miss promote it.
            loose = {
                "min_gain": -1.0,
                "guards": {"coverage_at_10": 1.0, "diversity_at_10": 1.0, "candidate_recall_at_200": 1.0},
            }
            code, states, log = platform.run(
                "vidrec_training", NEXT_DAY, {**TRAIN_CONF, **loose},
                env={"VIDREC_SERVING_URL": server.url, "VIDREC_RELOAD_TOKEN": "t0ken"},
            )  # fmt: skip
            assert code == 0, log[-6000:]
            assert_states(states, {"champion_promoted": "success", "reload_serving": "success"}, log)
            assert platform.registry()["champion"] == expected
            import time

            import httpx

            deadline = time.monotonic() + 120  # a reload answers after 3 s even if loading takes longer
            while True:
                status = httpx.post(f"{server.url}/status", json={}, timeout=30).json()
                if f'"vidrec-ranker": "{newest + 1}"' in json.dumps(status) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert f'"vidrec-ranker": "{newest + 1}"' in json.dumps(status), status
            with pytest.raises(PermissionError, match="401"):
                pipeline.reload_serving(server.url, "wrong-token")
            # Every user with history (the 40 feedback events' users included) is ranked, never cold start.
            from feature_repo.lake import Lake

            with platform.settings() as s:
                users = sorted(set(Lake(s.lake_dir).read_events(columns=["user_id"])["user_id"].astype(str)))
            served = {
                u: httpx.post(f"{server.url}/recommend", json={"user_id": u, "k": 5}, timeout=30).json()["served_from"]
                for u in users
            }
            assert len(users) > 250 and "fb-0" in users and set(served.values()) <= {"realtime", "precomputed"}, {
                u: v for u, v in served.items() if v not in ("realtime", "precomputed")
            }
        # The data interval drives the window: the run for the next day saw the 40 feedback events.
        from mlflow import MlflowClient

        uri = f"sqlite:///{platform.home / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        events = {
            v: int(client.get_run(client.get_model_version("vidrec-ranker", v).run_id).data.params["data.events"])
            for v in ("1", str(newest + 1))
        }
        assert events[str(newest + 1)] == events["1"] + 40


@pytest.mark.integration
@pytest.mark.slow
def test_bad_data_fails_the_features_dag_at_validation_and_nothing_is_promoted(tmp_path, synthetic_dir):
    bad = tmp_path / "bad"
    (bad / "events").mkdir(parents=True)
    for name in ("videos.parquet", "users.parquet"):
        (bad / name).write_bytes((synthetic_dir / name).read_bytes())
    events = pd.concat([pd.read_parquet(p) for p in sorted((synthetic_dir / "events").glob("*.parquet"))]).head(2000)
    platform = Platform(tmp_path / "p", bad)

    # 1. A file that cannot be read: the run fails at validate, naming it; the lake is untouched.
    (bad / "events" / "part-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    code, states, log = platform.run("vidrec_features", DAY, platform.features_conf())
    assert code != 0
    assert_states(states, {"ingest": "success", "validate": "failed", "transform": "upstream_failed",
                           "embeddings": "upstream_failed", "feast_apply": "upstream_failed",
                           "materialize": "upstream_failed"}, log)  # fmt: skip
    assert "part-00000.parquet" in log and "cannot be read" in log
    assert platform.lake_counts()["events"] == 0

    # 2. Readable, but half the events have no user: quarantined, above the 5% threshold.
    events.loc[events.index[::2], "user_id"] = None
    events.to_parquet(bad / "events" / "part-00000.parquet")
    code, states, log = platform.run("vidrec_features", DAY, platform.features_conf())
    assert code != 0
    assert states["validate"] == "failed" and states["materialize"] == "upstream_failed", states
    assert "quarantined 1,000 of 2,000 rows" in log and "missing_user_id" in log
    assert not (platform.home / "features" / "user_features.parquet").exists()

    # Training refuses the lake that failed validation: nothing is trained, registered or promoted.
    code, states, log = platform.run("vidrec_training", DAY, TRAIN_CONF)
    assert code != 0
    assert states["check_data"] == "failed" and states["train_and_gate"] == "upstream_failed", states
    assert "last validation of the lake failed" in log
    assert platform.registry() == {"versions": {}, "champion": None, "runs": 0}
