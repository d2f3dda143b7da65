"""The spark profile: Feast's Spark offline store serves the rows the file offline store serves.

ml-latest-small: the feature tables are computed once (DuckDB, three as-of times). The local profile
reads them as the DuckDB runner writes them (file offline store, SQLite online store); the spark
profile reads the same rows in the Spark layout (a folder per table, one partition per as-of time,
`transforms.spark.write_partitioned`) through the SparkSources derived from data_sources.py, with
its registry in a fresh PostgreSQL database and its online store in a Redis db number claimed for
this module. Point-in-time frames and online values must agree. That the Spark SQL runner computes
the same rows as DuckDB is test_spark_transforms' subject; here the hand-made lake goes through it
end to end (write_features -> Spark store), since the runner over MovieLens' 4,000 daily event files
takes minutes on a small machine.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pandas as pd
import pytest
from services import redis_client, redis_db, redis_host_port, temp_database
from tiny_platform import T2, T, forget_stores, settings_for, tiny_lake, view_columns

from feature_repo import store
from feature_repo.feast_repo import data_sources as ds
from feature_repo.schema import utc_time
from feature_repo.transforms import compute_features
from feature_repo.transforms.spark import write_features, write_partitioned
from vidrec.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The spark data source API is an experimental feature"),
    pytest.mark.filterwarnings("ignore:The spark offline store is an experimental feature"),
]

AS_OF = [pd.Timestamp(t, tz="UTC") for t in ("2018-06-01", "2018-08-01", "2018-09-25")]
# At a snapshot, between two, and past user_recent's 8-day TTL after the last one.
LABEL_TIMES = [AS_OF[1], AS_OF[1] + pd.Timedelta(hours=36), AS_OF[2] + pd.Timedelta(days=10)]
USER_VIEWS = ["user_profile", "user_recent"]


def spark_settings(tmp, lake_dir) -> Settings:
    return Settings(
        profile="spark", home=tmp / "home", lake_dir=lake_dir, cache_dir=tmp / "cache",
        features_dir=tmp / "features", mlflow_uri="unused://", mlflow_artifacts=str(tmp / "mlartifacts"),
    )  # fmt: skip


@contextlib.contextmanager
def served_stores(env: pytest.MonkeyPatch, label: str):
    """A fresh Feast registry database and a claimed Redis db, set as the spark profile's stores."""
    with temp_database(label) as registry_url, redis_db() as db:
        host, port = redis_host_port()
        env.setenv("VIDREC_FEAST_REGISTRY_URL", registry_url)
        env.setenv("VIDREC_FEAST_REDIS", f"{host}:{port},db={db}")
        yield registry_url, db


@pytest.fixture(scope="module")
def served(spark, movielens_lake, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feast-spark")
    local = settings_for(tmp / "local", movielens_lake.root)
    sparky = spark_settings(tmp / "spark", movielens_lake.root)
    local_dir = store.locations(local).features_dir
    compute_features(movielens_lake, AS_OF, local_dir)
    for table in (ds.USER_FEATURES_TABLE, ds.VIDEO_FEATURES_TABLE):
        write_partitioned(spark, spark.read.parquet(str(local_dir / f"{table}.parquet")), sparky.features_dir, table)
    mp = pytest.MonkeyPatch()
    with served_stores(mp, "feast_spark") as (registry_url, db):
        try:
            store.apply_repo(local)
            store.apply_repo(sparky)
            store.materialize(local, AS_OF[-1].to_pydatetime())
            started = time.perf_counter()
            modes = {m.view: m.mode for m in store.materialize(sparky, AS_OF[-1].to_pydatetime())}
            seconds = time.perf_counter() - started
            print(f"\nspark profile: materialized {sorted(modes)} into Redis in {seconds:.1f}s")
            yield {"local": local, "spark": sparky, "registry_url": registry_url, "redis_db": db, "modes": modes}
        finally:
            forget_stores(local)
            forget_stores(sparky)
            mp.undo()


def assert_same_frames(spark_frame: pd.DataFrame, file_frame: pd.DataFrame, keys: list[str]) -> None:
    """Same columns and rows (sorted by `keys`); numbers to 1e-9, ints == floats, NaN == NaN."""
    assert sorted(spark_frame.columns) == sorted(file_frame.columns)
    got = spark_frame[file_frame.columns].sort_values(keys).reset_index(drop=True)
    want = file_frame.sort_values(keys).reset_index(drop=True)
    assert len(got) == len(want) > 0
    for column in want.columns:
        if pd.api.types.is_datetime64_any_dtype(want[column]):
            pd.testing.assert_series_equal(pd.to_datetime(got[column], utc=True), want[column], check_names=False)
        elif pd.api.types.is_numeric_dtype(want[column]):
            np.testing.assert_allclose(
                got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-9, equal_nan=True, err_msg=column
            )
        else:
            assert got[column].fillna("<null>").tolist() == want[column].fillna("<null>").tolist(), column


def utc_ns(column: pd.Series) -> pd.Series:
    return pd.to_datetime(column, utc=True).astype("datetime64[ns, UTC]")


def fill_dropped_context(from_spark: pd.DataFrame, from_file: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Request features of rows the file store dropped (no user row in the TTL) are NaN there and
    computed from the label time under Spark: check those, then copy them over; returns the mask."""
    dropped = from_file["user_profile__events_total"].isna() & from_file["request_features__hour_of_day"].isna()
    assert (
        from_spark.loc[dropped, "request_features__hour_of_day"].tolist()
        == utc_ns(rows.loc[dropped, "event_timestamp"]).dt.hour.tolist()
    )
    context = ["request_features__hour_of_day", "request_features__day_of_week", "request_features__is_weekend"]
    from_file.loc[dropped, context] = from_spark.loc[dropped, context].to_numpy(float)
    return dropped


def entity_rows(served, n_users: int = 300, n_videos: int = 200, label_times=LABEL_TIMES) -> pd.DataFrame:
    """Users and videos drawn from every id the tables know (some have no row yet at a label time)."""
    features_dir = store.locations(served["local"]).features_dir
    users = pd.read_parquet(features_dir / "user_features.parquet", columns=["user_id"])["user_id"].unique()
    videos = pd.read_parquet(features_dir / "video_features.parquet", columns=["video_id"])["video_id"].unique()
    rng = np.random.default_rng(21)
    users = rng.choice(np.sort(users), n_users, replace=False)
    videos = rng.choice(np.sort(videos), n_videos, replace=False)
    return pd.DataFrame(
        [
            {"user_id": u, "video_id": videos[(i + j) % len(videos)], "event_timestamp": t, "label": (i + j) % 2}
            for i, u in enumerate(users)
            for j, t in enumerate(label_times)
        ]
    )


def test_the_spark_profile_reads_spark_sources_through_the_spark_offline_store(served):
    config = store.load_config(served["spark"])
    assert config.offline_store.type == "spark"
    assert config.offline_store.spark_conf["spark.master"] == served["spark"].spark_master == "local[2]"
    assert config.online_store.type == "redis" and config.online_store.connection_string.endswith(
        f"db={served['redis_db']}"
    )
    assert config.registry.registry_type == "sql" and config.registry.path == served["registry_url"]
    registered = store.feature_store(served["spark"]).get_feature_view("user_profile").batch_source
    assert type(registered).__name__ == "SparkSource" and registered.file_format == "parquet"
    assert registered.path == f"{served['spark'].features_dir}/user_features"
    assert registered.date_partition_column == ds.PARTITION_COLUMN
    assert type(store.feature_store(served["local"]).get_feature_view("user_profile").batch_source).__name__ == (
        "FileSource"
    )
    # The push-fed view keeps its push source, now backed by the SparkSource.
    recent = store.feature_store(served["spark"]).get_feature_view("user_recent")
    assert recent.stream_source.name == "user_recent_push" and type(recent.batch_source).__name__ == "SparkSource"


def test_get_historical_features_gives_the_file_stores_rows(served):
    rows = entity_rows(served).drop_duplicates(["user_id", "event_timestamp"])[["user_id", "event_timestamp"]]
    keys = ["user_id", "event_timestamp"]

    def fetch(settings, views):
        refs = [f"{view}:{column}" for view in views for column in view_columns(view)]
        with store._quiet():
            job = store.feature_store(settings).get_historical_features(
                entity_df=rows, features=refs, full_feature_names=True
            )
            frame = job.to_df()
        frame["event_timestamp"] = utc_ns(frame["event_timestamp"])
        return frame

    from_spark, from_file = fetch(served["spark"], USER_VIEWS), fetch(served["local"], USER_VIEWS)
    assert len(from_spark) == len(rows)
    # Where the file store answers, it answers the same.
    assert_same_frames(from_spark.merge(from_file[keys], on=keys), from_file, keys)
    # Feast's file (Dask) store drops an entity row as soon as one requested view has no row in its
    # TTL (see store._retrieve_distinct), even when another has one; the Spark store keeps the row
    # with NULLs for that view only. Asked one view at a time, the file store gives Spark's values.
    assert len(from_file) < len(rows)
    one_at_a_time = rows.assign(event_timestamp=utc_ns(rows["event_timestamp"]))
    for view in USER_VIEWS:
        one_at_a_time = one_at_a_time.merge(fetch(served["local"], [view]), on=keys, how="left")
    assert_same_frames(from_spark, one_at_a_time, keys)
    # Past user_recent's 8-day TTL, Spark still has user_profile (30 days) and no user_recent.
    late = from_spark[from_spark["event_timestamp"] == LABEL_TIMES[2]]
    assert late["user_recent__events_7d"].isna().all() and late["user_profile__events_total"].notna().any()


def test_training_frames_are_the_same_under_both_profiles(served):
    # Label times within every view's TTL of a snapshot: past it the file store drops whole rows
    # (previous test), and training_frame, which asks all user views at once, gets NaN for them all.
    rows = entity_rows(served, label_times=LABEL_TIMES[:2])
    from_spark = store.training_frame(rows, "ranker_v1", settings=served["spark"])
    from_file = store.training_frame(rows, "ranker_v1", settings=served["local"])
    assert from_spark["label"].tolist() == rows["label"].tolist()  # passed through, order kept
    assert fill_dropped_context(from_spark, from_file, rows).any()
    assert_same_frames(from_spark, from_file, ["user_id", "video_id", "event_timestamp"])


def test_materialized_online_values_equal_the_local_profiles(served):
    assert {served["modes"][v] for v in ("user_profile", "user_recent", "video_stats")} == {"initial"}
    assert pd.Timestamp(utc_time(store.latest_feature_time(served["spark"]))) == AS_OF[-1]
    rows = entity_rows(served, n_users=60, n_videos=60)
    users, videos = sorted(rows["user_id"].unique()), sorted(rows["video_id"].unique())
    for read, ids in ((store.online_user_features, users), (store.online_video_features, videos)):
        from_redis = read(ids, settings=served["spark"])
        from_sqlite = read(ids, settings=served["local"])
        assert from_redis.notna().sum().sum() > len(ids)  # not all empty
        key = from_sqlite.columns[0]
        assert_same_frames(from_redis, from_sqlite, [key])
    assert redis_client(served["redis_db"]).dbsize() > len(users)


def test_the_spark_sql_runner_feeds_the_spark_store(spark, tmp_path, monkeypatch):
    """End to end on the hand-made lake: write_features -> SparkSources -> the same frames as DuckDB -> file store."""
    lake = tiny_lake(tmp_path)
    local = settings_for(tmp_path / "local", lake.root)
    sparky = spark_settings(tmp_path / "spark", lake.root)
    compute_features(lake, [T, T2], store.locations(local).features_dir)
    written = write_features(spark, lake, [T, T2], sparky.features_dir)
    assert written["user_features"] == ds.spark_path("user_features", str(sparky.features_dir))
    rows = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u1", "u4"],
            "video_id": ["v1", "v2", "v4", "v2", "v3"],
            "event_timestamp": [T, T, T2, T2 + pd.Timedelta(hours=15), T2],
        }
    )
    with served_stores(monkeypatch, "feast_spark_tiny"):
        try:
            store.apply_repo(local)
            store.apply_repo(sparky)
            from_spark = store.training_frame(rows, "ranker_v1", settings=sparky)
            from_file = store.training_frame(rows, "ranker_v1", settings=local)
        finally:
            forget_stores(sparky)
            forget_stores(local)
    assert from_spark["user_profile__events_total"].tolist()[:4] == [5, 4, 0, 7]
    assert np.isnan(from_spark["user_profile__events_total"].iloc[4])  # u4 signs up after T2
    fill_dropped_context(from_spark, from_file, rows)
    assert_same_frames(from_spark, from_file, ["user_id", "video_id", "event_timestamp"])


def test_the_spark_profile_says_what_to_install_without_java(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(RuntimeError, match=r"needs Java 17\+.*JAVA_HOME"):
        store.load_config(spark_settings(tmp_path, tmp_path / "lake"))
