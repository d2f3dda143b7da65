"""The `vidrec` command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import FIXTURES
from typer.testing import CliRunner

from vidrec.cli import app

runner = CliRunner()
VIDREC = [sys.executable, "-m", "vidrec.cli"]


def test_ingest_movielens_1m_prints_summary(tmp_path):
    result = runner.invoke(
        app, ["ingest", "--dataset", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"), "--lake-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "6 events" in result.output and "4 videos" in result.output and "3 users" in result.output
    assert (tmp_path / "users" / "users.parquet").exists()


def test_malformed_file_exits_nonzero_naming_file_and_column(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    pd.DataFrame({"user_id": ["u1"], "video_id": ["v1"], "event_ts": ["2026-01-01"]}).to_csv(
        data / "events.csv", index=False
    )
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [*VIDREC, "ingest", "--dataset", "canonical", "--data-dir", str(data), "--lake-dir", str(lake)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert str(data / "events.csv") in proc.stderr and "'event_type'" in proc.stderr
    assert not lake.exists() or not any(p.is_file() and p.name != ".lock" for p in lake.rglob("*"))


def test_unknown_profile_is_rejected():
    result = runner.invoke(app, ["--profile", "cloud", "ingest"])
    assert result.exit_code != 0
    assert "unknown profile 'cloud'" in result.output


def test_offline_download_error_exits_nonzero(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_MOVIELENS_URL", "http://127.0.0.1:9")
    result = runner.invoke(app, ["ingest", "--dataset", "movielens-1m", "--lake-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "could not download movielens-1m" in result.output


def test_generate_then_ingest_synthetic(tmp_path):
    out = tmp_path / "synthetic"
    result = runner.invoke(
        app, ["generate", "--out", str(out), "--users", "200", "--videos", "100", "--events", "20000"]
    )
    assert result.exit_code == 0, result.output
    assert "20,000 events" in result.output
    lake = tmp_path / "lake"
    result = runner.invoke(app, ["ingest", "--dataset", "synthetic", "--data-dir", str(out), "--lake-dir", str(lake)])
    assert result.exit_code == 0, result.output
    from feature_repo.lake import Lake

    stats = Lake(lake).stats()
    assert stats["events"] == 20_000 and stats["videos"] == 100
    assert {"impression", "click", "watch", "search"} <= set(stats["events_by_type"])


def generate_and_ingest(tmp_path, users: int, videos: int, events: int) -> None:
    """A synthetic platform made and ingested into the test's VIDREC_HOME lake, as a user does it."""
    out = tmp_path / "synthetic"
    sizes = ["--users", str(users), "--videos", str(videos), "--events", str(events)]
    assert runner.invoke(app, ["generate", "--out", str(out), *sizes]).exit_code == 0
    assert runner.invoke(app, ["ingest", "--dataset", "synthetic", "--data-dir", str(out)]).exit_code == 0


def test_train_goes_through_the_pipeline_stage_and_reuses_an_unchanged_run(tmp_path):
    """`vidrec train` is the DAG's train_and_gate stage: a second run on the same lake and options
    registers nothing new; `vidrec batch` then precomputes the champion's lists."""
    generate_and_ingest(tmp_path, users=150, videos=80, events=15000)
    options = ["train", "--protocol", "user-time", "--no-feast", "--generators", "popularity,trending,item-cf"]
    first = runner.invoke(app, options)
    assert first.exit_code == 0, first.output
    assert "held-out evaluation" in first.output and "two-stage" in first.output
    assert "memory: 15,000 events: about" in first.output  # the plan it checked before starting
    assert "registered {'vidrec-candidates': '1', 'vidrec-ranker': '1'}" in first.output

    again = runner.invoke(app, options)
    assert again.exit_code == 0, again.output
    assert "unchanged: reusing MLflow run" in again.output
    assert "registered {'vidrec-candidates': '1', 'vidrec-ranker': '1'}" in again.output

    # Three weak generators on this platform lose to trending: no champion, and batch says so.
    assert "BLOCKED against baseline (trending)" in first.output
    batch = runner.invoke(app, ["batch"])
    assert batch.exit_code == 2 and "no champion in the MLflow registry yet" in batch.output


def test_train_refuses_a_size_its_memory_cannot_hold_before_starting(tmp_path, monkeypatch):
    """Never an OOM kill: a lake the budget cannot hold is refused up front (exit 2), with the
    estimate and what to do instead, and no MLflow run is left behind."""
    generate_and_ingest(tmp_path, users=100, videos=50, events=5000)
    monkeypatch.setenv("VIDREC_MEMORY_LIMIT", "1g")
    result = runner.invoke(app, ["train", "--no-feast", "--generators", "popularity,trending"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "5,000 events: about 1.95 GB at the peak; 1.00 GB available (VIDREC_MEMORY_LIMIT)" in output
    assert "Nothing was started" in output and "VIDREC_MEMORY_LIMIT" in output

    import mlflow

    from vidrec.settings import Settings

    mlflow.set_tracking_uri(Settings.from_env().mlflow_uri)
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_train_refuses_an_unknown_generator(tmp_path):
    result = runner.invoke(app, ["train", "--generators", "popularity,telepathy"])
    assert result.exit_code == 2
    assert "unknown generator(s) ['telepathy']" in result.output


def test_module_entry_point_knows_every_command():
    proc = subprocess.run([*VIDREC, "features", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--embeddings" in proc.stdout


def test_ingest_validates_and_train_refuses_a_lake_that_failed(tmp_path):
    """`vidrec ingest` is the DAG's ingest + validate: too many quarantined rows fail it (exit 2,
    naming the table), and `vidrec train`, like the training DAG, refuses that lake."""
    data = tmp_path / "logs"
    data.mkdir()
    rows = [
        {"event_id": f"e{i}", "user_id": "" if i % 2 else f"u{i}", "video_id": "v1", "event_ts": "2026-01-01T10:00:00Z",
         "event_type": "watch"}
        for i in range(10)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(data / "events.csv", index=False)
    pd.DataFrame([{"video_id": "v1", "title": "One"}]).to_csv(data / "videos.csv", index=False)
    result = runner.invoke(app, ["ingest", "--dataset", "canonical", "--data-dir", str(data), "--no-feedback"])
    assert result.exit_code == 2, result.output
    assert "events quarantined 5 of 10 rows" in result.output and "missing_user_id: 5" in result.output
    train = runner.invoke(app, ["train", "--no-feast", "--generators", "popularity"])
    assert train.exit_code == 2 and "the last validation of the lake failed" in train.output, train.output


def _wait_for_running_run(home, timeout: float = 120.0):
    """The MLflow run a training process opened, once it is RUNNING (tracking: $VIDREC_HOME/mlflow.db).
    Read with sqlite3 until it exists: a second MLflow client would race the process creating the tables."""
    import sqlite3
    import time

    from mlflow import MlflowClient

    db = home / "mlflow.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # the training's own run, not one of the nested per-model runs it opens at the end
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                found = conn.execute(
                    "SELECT run_uuid FROM runs WHERE status = 'RUNNING' AND run_uuid NOT IN "
                    "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')"
                ).fetchone()
        except sqlite3.Error:  # not created yet, or its tables are being created
            found = None
        if found:
            client = MlflowClient(tracking_uri=f"sqlite:///{db}")
            return client, client.get_run(found[0])
        time.sleep(0.2)
    raise AssertionError("no RUNNING MLflow run appeared")


def test_a_killed_training_leaves_no_mlflow_run_running(tmp_path):
    """SIGTERM (what Airflow sends when a task is marked failed or killed) closes the run as KILLED;
    a run left RUNNING by a hard kill (SIGKILL) is closed by the task's next attempt."""
    import os
    import signal

    from vidrec import pipeline

    out = tmp_path / "synthetic"
    generated = runner.invoke(
        app, ["generate", "--out", str(out), "--users", "150", "--videos", "80", "--events", "15000"]
    )
    assert generated.exit_code == 0
    assert runner.invoke(app, ["ingest", "--dataset", "synthetic", "--data-dir", str(out)]).exit_code == 0
    home = tmp_path / "home"
    env = {**os.environ, "VIDREC_HOME": str(home), "VIDREC_CACHE_DIR": str(tmp_path / "cache")}
    options = ["train", "--protocol", "user-time", "--no-feast", "--generators", "popularity,trending,item-cf"]
    proc = subprocess.Popen([*VIDREC, *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client, run = _wait_for_running_run(home)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    assert "training stopped by SIGTERM" in output
    stopped = client.get_run(run.info.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["vidrec.killed"] == "stopped by SIGTERM while training"

    # A hard kill leaves the run RUNNING; the next attempt of the same Airflow task run closes it.
    params = {"protocol": "user-time", "use_feast": False, "generators": ["popularity", "trending", "item-cf"]}
    script = (
        "import sys, json; from vidrec import pipeline; "
        "pipeline.train_models(json.loads(sys.argv[1]), sys.argv[2], run_tags={'airflow.run_id': 'manual__try'})"
    )
    end = "2030-01-01T00:00:00+00:00"
    hard = subprocess.Popen([sys.executable, "-c", script, json.dumps(params), end], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client, orphan = _wait_for_running_run(home)
    hard.kill()
    hard.wait(timeout=60)
    assert client.get_run(orphan.info.run_id).info.status == "RUNNING"
    result = pipeline.train_models(params, end, run_tags={"airflow.run_id": "manual__try"})
    assert result["reused"] is False
    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags["vidrec.killed"] == "closed by the next attempt"
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


def _tracking_store(tmp_path):
    """A client of a fresh SQLite tracking store, and the training experiment's id in it."""
    from mlflow import MlflowClient

    from models.lifecycle import registry

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment(registry.EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))


def test_a_swallowed_sigterm_stops_the_training_at_the_next_stage(tmp_path):
    """Where the stop's first raise is swallowed (a C callback that carries on, as XGBoost's may),
    the checkpoint between stages raises it again: no later stage runs, and the run is KILLED."""
    import os
    import signal
    import time

    import pytest

    from vidrec import pipeline

    client, experiment_id = _tracking_store(tmp_path)
    later_stages = []
    with pytest.raises(pipeline.TrainingStopped):
        with pipeline._closing_runs_on_sigterm(client, "key") as checkpoint:
            run = client.create_run(experiment_id, tags={pipeline.RUN_KEY_TAG: "key"})
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here
            except BaseException:  # noqa: BLE001 - swallowed, as the C callback does
                pass
            checkpoint()
            later_stages.append("register")
    assert later_stages == []
    stopped = client.get_run(run.info.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["vidrec.killed"] == "stopped by SIGTERM while training"


def _ranking_rows(on_block=None):
    """Four blocks of 20 random queries each; `on_block(i)` runs as XGBoost's iterator reads block i."""
    import numpy as np

    from models.ranker import TrainingRows

    class Watched(list):
        def __getitem__(self, i):
            on_block(i)
            return super().__getitem__(i)

    rng = np.random.default_rng(0)
    rows = TrainingRows(features=["a", "b", "c", "d"])
    for block in range(4):
        rows.x.append(rng.random((200, 4), dtype=np.float32))
        rows.y.append(rng.integers(0, 3, 200).astype(np.float32))
        rows.qid.append(np.repeat(np.arange(20) + 20 * block, 10))
        rows.queries.extend(str(q) for q in range(20 * block, 20 * block + 20))
    if on_block is not None:
        rows.x = Watched(rows.x)
    return rows


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("when", ["inside the data callback", "while the trees grow"])
def test_sigterm_inside_xgboost_stops_cleanly_and_closes_the_run(tmp_path, when):
    """A SIGTERM whose handler runs inside the ranker's data callback, which XGBoost's C code calls
    while it builds a QuantileDMatrix: raising there left the callback through C and once aborted
    CI's killed training (`malloc(): invalid size`). The handler records it; the next callback or
    boosting round raises it where XGBoost carries it out, and it comes out as TrainingStopped,
    with no exception lost in a callback and the run KILLED. Also for a stop mid-boosting."""
    import os
    import signal
    import threading

    from models.lifecycle.config import RankerConfig
    from models.ranker import train_ranker_rows
    from vidrec import pipeline, stop_request

    def signal_on_second_block(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the C callback

    if when == "inside the data callback":
        rows, config = _ranking_rows(signal_on_second_block), RankerConfig(n_estimators=5, early_stopping_rounds=None)
    else:  # far more rounds than 0.5 s can grow
        rows, config = _ranking_rows(), RankerConfig(n_estimators=1_000_000, early_stopping_rounds=None)
    client, experiment_id = _tracking_store(tmp_path)
    with pytest.raises(pipeline.TrainingStopped) as stopped_by:
        with pipeline._closing_runs_on_sigterm(client, "key"):  # closes only runs opened inside
            run = client.create_run(experiment_id, tags={pipeline.RUN_KEY_TAG: "key"})
            if when == "while the trees grow":
                threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
            train_ranker_rows(rows, config)
    assert isinstance(stopped_by.value.__cause__, stop_request.StopRequested)
    assert stop_request.requested() is None  # the next training in this process starts clean
    stopped = client.get_run(run.info.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["vidrec.killed"] == "stopped by SIGTERM while training"
