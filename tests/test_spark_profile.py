"""The spark profile end to end, on a real Spark standalone cluster: the pipeline's own stages, the
functions the DAGs' tasks call, with `VIDREC_PROFILE=spark` and `VIDREC_SPARK_MASTER=spark://...`.

    ingest      the first 60 ml-latest-small users (as tests/champion.py), into the lake
    features    Spark SQL writes the feature tables (a folder per table, a partition per as-of time),
                Feast applies SparkSources over them, materializes into Redis from the Spark store
    training    generators including Spark MLlib ALS, the XGBoost ranker on xgboost.spark, point-in-time
                features from Feast's Spark offline store; registered in MLflow and gated
    batch       the champion ranked per partition by the cluster's executors, into Redis

and each against the embedded path on the same data: feature tables equal to DuckDB's, batch lists
equal to the driver's own ranking. One cluster (tests/spark_cluster.py), one Feast registry
(PostgreSQL) and one Redis database for the module.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from champion import canonical_movielens
from services import redis_client, redis_db, redis_host_port, temp_database
from spark_cluster import standalone_cluster
from tiny_platform import forget_stores

from feature_repo.feast_repo import data_sources as ds
from feature_repo.lake import Lake
from feature_repo.transforms import compute_features
from vidrec import pipeline
from vidrec.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The spark data source API is an experimental feature"),
    pytest.mark.filterwarnings("ignore:The spark offline store is an experimental feature"),
]

USERS = 60
TOP_N = 20
GENERATORS = ["popularity", "trending", "ease", "spark-als"]
RANKER = {"n_estimators": 40, "early_stopping_rounds": None}


@pytest.fixture(scope="module")
def platform(ml_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spark-profile")
    with (
        contextlib.ExitStack() as env_cluster,
        temp_database("spark_profile_feast") as registry_url,
        redis_db() as db,
        pytest.MonkeyPatch.context() as env,
    ):
        host, port = redis_host_port()
        env.setenv("VIDREC_PROFILE", "spark")
        env.setenv("VIDREC_HOME", str(tmp / "home"))
        env.setenv("VIDREC_FEAST_REGISTRY_URL", registry_url)
        env.setenv("VIDREC_FEAST_REDIS", f"{host}:{port},db={db}")
        env.setenv("VIDREC_PRECOMPUTED_URL", f"redis://{host}:{port}/{db}")
        # The tracking store on SQLite keeps the module quick; the cluster's executors read it and
        # the artifacts from this machine's disk, as they would a tracking server's.
        env.setenv("VIDREC_MLFLOW_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        for name in ("VIDREC_LAKE_DIR", "VIDREC_FEATURES_DIR", "VIDREC_MLFLOW_ARTIFACTS"):
            env.delenv(name, raising=False)
        # Started in that environment, as compose gives the workers the tasks' (infra/compose.yaml).
        master = env_cluster.enter_context(standalone_cluster(tmp / "cluster", cores=2))
        env.setenv("VIDREC_SPARK_MASTER", master)
        settings = Settings.from_env()
        assert settings.profile == "spark" and settings.spark_master == master
        # Each test's own environment is reset (conftest): the DAG run takes this one explicitly.
        profile_env = {k: v for k, v in os.environ.items() if k.startswith("VIDREC_")}
        raw = canonical_movielens(ml_small, tmp / "source", USERS)
        ingest = pipeline.ingest_sources("canonical", str(raw), str(tmp / "ingest.json"), settings=settings)
        assert ingest["errors"] == 0, ingest
        features = pipeline.features_job(None, 1, "D", embeddings="none", settings=settings)
        end = features["transform"]["as_of"][-1]
        params = {"generators": GENERATORS, "label_windows": 4, "use_feast": True, "ranker": RANKER,
                  "force_retrain": True, "dataset": "ml-latest-small (first 60 users)"}  # fmt: skip
        trained = pipeline.train_models(params, end, settings=settings)
        if not trained["promoted"]:  # the batch needs a champion, not a verdict
            from mlflow import MlflowClient

            from models.lifecycle import registry

            registry.promote(MlflowClient(), trained["versions"])
        batch = pipeline.precompute_recommendations(end, active_days=100_000, top_n=TOP_N, settings=settings)
        try:
            yield {"settings": settings, "features": features, "trained": trained, "batch": batch, "db": db,
                   "end": pd.Timestamp(end), "tmp": tmp, "master": master, "env": profile_env}  # fmt: skip
        finally:
            forget_stores(settings)
            from pyspark.sql import SparkSession

            if (session := SparkSession.getActiveSession()) is not None:
                session.stop()  # before the cluster goes


def test_features_are_spark_tables_equal_to_duckdb(platform):
    settings, as_of = platform["settings"], platform["features"]["transform"]["as_of"]
    duckdb_dir = platform["tmp"] / "duckdb-features"
    compute_features(Lake(settings.lake_dir), [pd.Timestamp(t) for t in as_of], duckdb_dir)
    for table in (ds.USER_FEATURES_TABLE, ds.VIDEO_FEATURES_TABLE):
        folder = settings.features_dir / table
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("as_of=")), f"{table}: no partitions"
        spark_rows = pd.read_parquet(folder)
        # Training added snapshots at its windows' starts; compare the features job's.
        wanted = {pd.Timestamp(t).strftime(ds.PARTITION_FORMAT) for t in as_of}
        spark_rows = spark_rows[spark_rows["as_of"].astype(str).isin(wanted)].drop(columns="as_of")
        duck_rows = pd.read_parquet(duckdb_dir / f"{table}.parquet")
        key = ["user_id" if table == ds.USER_FEATURES_TABLE else "video_id", ds.TIMESTAMP_FIELD]
        spark_rows = spark_rows[duck_rows.columns].sort_values(key).reset_index(drop=True)
        duck_rows = duck_rows.sort_values(key).reset_index(drop=True)
        assert len(spark_rows) == len(duck_rows) > 0
        for column in duck_rows.columns:
            if pd.api.types.is_numeric_dtype(duck_rows[column]) and not pd.api.types.is_bool_dtype(duck_rows[column]):
                np.testing.assert_allclose(
                    spark_rows[column].to_numpy(float), duck_rows[column].to_numpy(float), rtol=1e-9,
                    equal_nan=True, err_msg=f"{table}.{column}",
                )  # fmt: skip
            elif column == ds.CREATED_FIELD:  # the writer's own clock
                continue
            elif pd.api.types.is_datetime64_any_dtype(duck_rows[column]):
                pd.testing.assert_series_equal(
                    pd.to_datetime(spark_rows[column], utc=True).astype("datetime64[us, UTC]"),
                    pd.to_datetime(duck_rows[column], utc=True).astype("datetime64[us, UTC]"),
                    check_names=False,
                )
            else:
                assert spark_rows[column].astype(str).tolist() == duck_rows[column].astype(str).tolist(), column
    print(f"spark profile: {len(as_of)} snapshot(s) of user and video features equal to DuckDB's")


def test_training_ran_on_spark(platform):
    from mlflow import MlflowClient
    from pyspark.sql import SparkSession

    from models.lifecycle import registry, tracking

    # Every step used the cluster, not a session an earlier test module left behind.
    assert SparkSession.getActiveSession().sparkContext.master == platform["master"]
    trained = platform["trained"]
    tracking.configure(platform["settings"])
    run = MlflowClient().get_run(trained["run_id"])
    assert run.data.params["ranker.engine"] == "spark"
    assert run.data.tags.get("gate.decision") in ("promoted", "blocked")
    system = registry.load_system(trained["versions"])
    assert "spark-als" in system.union.generators
    assert type(system.ranker.booster) is xgb.XGBRanker  # a plain booster: serving needs no Spark
    assert trained["ndcg_at_10"] is not None and 0 < trained["ndcg_at_10"] <= 1


def test_batch_on_the_cluster_equals_the_drivers_ranking(platform):
    from models.lifecycle import batch, registry
    from models.lifecycle.train import feast_lookup
    from serving.precomputed import open_store

    result, settings = platform["batch"], platform["settings"]
    champion = registry.load_champion()
    known, unknown = batch.known_rows(champion.system, [str(u) for u in champion.system.data.user_ids])
    assert result["users_written"] == len(known) > 0 and unknown == 0
    lookup = feast_lookup(settings, champion.feature_service)
    expected = pd.concat(batch.ranked_batches(champion.system, known, platform["end"], TOP_N, lookup))
    host, port = redis_host_port()
    stored = open_store(f"redis://{host}:{port}/{platform['db']}")
    try:
        for user_id, group in expected.sort_values(["user_id", "rank"]).groupby("user_id"):
            found = stored.get(str(user_id), max_age_s=86_400, versions=champion.versions)
            assert found is not None, f"no precomputed list for user {user_id}"
            assert found.video_ids == group["video_id"].astype(str).tolist()
            np.testing.assert_allclose(found.scores, group["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    finally:
        stored.close()
    keys = redis_client(platform["db"]).keys("vidrec:recs:*")
    assert len(keys) == len(known)
    print(f"spark profile: {len(known)} users x {TOP_N} precomputed on the cluster, equal to the driver's lists")


def test_the_batch_dag_runs_the_same_task_on_the_cluster(platform):
    """`airflow dags test vidrec_batch_recs` under VIDREC_PROFILE=spark: its task opens its own
    SparkSession on the cluster (client mode) and writes the same store."""
    import json
    import re
    import subprocess
    import sys
    from pathlib import Path

    from pyspark.sql import SparkSession

    if (session := SparkSession.getActiveSession()) is not None:
        session.stop()  # the cluster's 2 cores go to the DAG's application
    root = Path(__file__).resolve().parents[1]
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {**os.environ, **platform["env"], "AIRFLOW_HOME": str(platform["tmp"] / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"), "VIDREC_TASK_RETRIES": "0"}  # fmt: skip
    for name, value in {"VIDREC_PROFILE": "spark", "VIDREC_SPARK_MASTER": platform["master"]}.items():
        assert env[name] == value  # the module's environment, which the fixture set
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    day = platform["end"].strftime("%Y-%m-%d")
    run = subprocess.run(
        [airflow, "dags", "test", "vidrec_batch_recs", day, "--conf", json.dumps({"active_days": 3650, "top_n": TOP_N})],
        env=env, capture_output=True, text=True, timeout=900, cwd=root,
    )  # fmt: skip
    log = run.stdout + run.stderr
    written = re.search(r"(\d+) users written to (redis://\S+) by", log)
    assert run.returncode == 0 and written, log[-6000:]
    assert int(written.group(1)) > 0 and written.group(2).endswith(f"/{platform['db']}")
    assert re.search(r"precomputed on Spark \(spark://127\.0\.0\.1:\d+\)", log), "the task did not use the cluster"
    print(f"spark profile: the vidrec_batch_recs DAG wrote {written.group(1)} users' lists from the cluster")
