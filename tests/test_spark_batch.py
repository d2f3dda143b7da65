"""Batch recommendations on a Spark cluster: the same lists as the embedded batch, written to Redis.

A real champion (tests/champion.py: the pipeline's own stages on the first 60 ml-latest-small
users, Feast features), a real Spark standalone cluster on loopback (tests/spark_cluster.py: the
master and worker daemons compose runs) whose executors load the champion from the MLflow
registry, and a claimed Redis database: each user's stored list must be the one `ranked_batches`
gives on the driver.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from champion import build_champion, local_settings
from services import redis_client, redis_db
from spark_cluster import standalone_cluster

from feature_repo.transforms.spark import spark_session
from models.lifecycle import batch
from models.lifecycle.batch_spark import precompute_on_spark, prefetched_lookup
from models.lifecycle.train import feast_lookup
from serving.precomputed import open_store, write_recommendation_batches

TOP_N = 20


@pytest.fixture(scope="module")
def champion(ml_small, tmp_path_factory):
    return build_champion(local_settings(tmp_path_factory.mktemp("spark-batch-home")), ml_small, max_users=60)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), cores=2) as master:
        session = spark_session(
            master, app_name="vidrec-test-batch",
            **{"spark.sql.shuffle.partitions": "2", "spark.executor.memory": "2g", "spark.cores.max": "2"},
        )  # fmt: skip
        session.sparkContext.setLogLevel("ERROR")
        yield session
        session.stop()


@pytest.fixture(scope="module")
def redis_url():
    with redis_db() as db:
        yield f"redis://127.0.0.1:6379/{db}"


@pytest.fixture(scope="module")
def users(champion):
    return sorted(champion.system.data.user_ids.astype(str).tolist())


def run_on_spark(spark, champion, users, url, extra_users=()):
    lookup = prefetched_lookup(
        champion.system, feast_lookup(champion.settings, champion.feature_service), users, champion.end
    )
    write = partial(write_recommendation_batches, url, versions=champion.versions, ttl_s=3600)
    return precompute_on_spark(
        spark, champion.settings, champion.versions, [*users, *extra_users], champion.end, TOP_N, write, lookup,
        partitions=3, batch_users=16,
    )  # fmt: skip


def test_spark_batch_writes_the_embedded_lists_once(spark, champion, users, redis_url):
    totals = run_on_spark(spark, champion, users, redis_url, extra_users=["no-such-user"])
    assert totals == {"users_written": len(users), "rows": len(users) * TOP_N, "unknown": 1}

    known, _ = batch.known_rows(champion.system, users)
    lookup = feast_lookup(champion.settings, champion.feature_service)
    expected = pd.concat(batch.ranked_batches(champion.system, known, champion.end, TOP_N, lookup))
    store = open_store(redis_url)
    client = redis_client(int(redis_url.rsplit("/", 1)[1]))
    try:
        for user_id, group in expected.sort_values(["user_id", "rank"]).groupby("user_id"):
            stored = store.get(str(user_id), max_age_s=3600, versions=champion.versions)
            assert stored is not None, f"no list for user {user_id}"
            assert stored.video_ids == group["video_id"].astype(str).tolist()
            np.testing.assert_allclose(stored.scores, group["score"].to_numpy(), rtol=1e-5, atol=1e-6)
        assert store.get("no-such-user", max_age_s=3600) is None
    finally:
        store.close()
    keys = sorted(client.keys("vidrec:recs:*"))
    assert len(keys) == len(users)
    again = run_on_spark(spark, champion, users, redis_url)  # a retried DAG run
    assert again == {**totals, "unknown": 0} and sorted(client.keys("vidrec:recs:*")) == keys
    print(
        f"spark batch: {totals['users_written']} users x {TOP_N} written from 3 partitions, equal to the embedded lists"
    )


def test_no_users_is_no_work(spark, champion, redis_url):
    write = partial(write_recommendation_batches, redis_url, versions=champion.versions)
    totals = precompute_on_spark(spark, champion.settings, champion.versions, [], champion.end, TOP_N, write)
    assert totals == {"users_written": 0, "rows": 0, "unknown": 0}
