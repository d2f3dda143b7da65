"""Feast in the prod profile on the real servers: SQL registry on PostgreSQL, Redis online store.

The hand-made lake of test_features (hand-computed feature values) goes through the prod profile's
`feature_store.prod.yaml`: apply into a fresh PostgreSQL database, materialize into a Redis db number
claimed for this module, read back online. Online values must equal the latest offline values.
Both the database and the Redis keys are removed afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from services import CLAIM_KEY, pg_connect, redis_client, redis_db, redis_host_port, temp_database
from tiny_platform import T2, T, assert_same_values, forget_stores, prod_settings, tiny_lake, view_columns

from feature_repo import store
from feature_repo.transforms import compute_features

pytestmark = pytest.mark.integration

USERS = ["u1", "u2", "u3"]
VIDEOS = ["v1", "v2", "v4"]


@contextlib.contextmanager
def prod_stores(tmp: Path) -> Iterator[tuple]:
    """The hand-made lake and prod settings over a fresh registry database and an empty Redis db:
    (lake, settings, registry database name, Redis db number); the stores are forgotten after."""
    lake = tiny_lake(tmp)
    settings = prod_settings(tmp)
    mp = pytest.MonkeyPatch()
    with temp_database("feast") as registry_url, redis_db() as db:
        mp.setenv("VIDREC_FEAST_REGISTRY_URL", registry_url)
        host, port = redis_host_port()
        mp.setenv("VIDREC_FEAST_REDIS", f"{host}:{port},db={db}")
        try:
            yield lake, settings, registry_url.rsplit("/", 1)[1], db
        finally:
            forget_stores(settings)
            mp.undo()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with prod_stores(tmp_path_factory.mktemp("feast-prod")) as (lake, settings, registry_db, db):
        where = store.locations(settings)
        compute_features(lake, [T], where.features_dir)
        applied = store.apply_repo(settings)
        first = {m.view: m.mode for m in store.materialize(settings)}
        online_at_t = store.online_user_features(USERS, settings=settings)
        compute_features(lake, [T2], where.features_dir)  # the next snapshot
        second = {m.view: m.mode for m in store.materialize(settings)}
        yield {
            "settings": settings,
            "where": where,
            "registry_db": registry_db,
            "redis_db": db,
            "applied": applied,
            "modes": (first, second),
            "online_at_t": online_at_t,
        }


def test_the_prod_profile_uses_the_sql_registry_and_redis(served):
    config = store.load_config(served["settings"])
    assert config.registry.registry_type == "sql" and served["registry_db"] in config.registry.path
    assert config.online_store.type == "redis" and config.online_store.connection_string.endswith(
        f"db={served['redis_db']}"
    )


def test_the_registry_lives_in_postgresql(served):
    assert (
        "FeatureView:user_profile" in served["applied"].applied
        and "FeatureService:ranker_v1" in served["applied"].applied
    )
    with pg_connect(dbname=served["registry_db"]) as conn:
        tables = {
            r[0] for r in conn.execute("select table_name from information_schema.tables where table_schema = 'public'")
        }
        assert {"feature_views", "entities", "feature_services"} <= tables
        views = {r[0] for r in conn.execute("select feature_view_name from feature_views where project_id = 'vidrec'")}
    assert {"user_profile", "user_recent", "video_stats"} <= views
    # A second store (another worker, say) sees the same definitions and materialization state.
    from feast import FeatureStore

    other = FeatureStore(repo_path=str(served["where"].features_dir), config=store.load_config(served["settings"]))
    profile = other.get_feature_view("user_profile")
    assert profile.most_recent_end_time is not None
    assert pd.Timestamp(profile.most_recent_end_time).tz_convert("UTC") == T2
    assert {s.name for s in other.list_feature_services()} >= {"ranker_v1"}


def test_materialization_is_initial_then_incremental_into_redis(served):
    first, second = served["modes"]
    assert first["user_profile"] == "initial" and first["video_stats"] == "initial"
    assert first["video_embedding"].startswith("skipped")  # no embeddings table in this lake
    assert second["user_profile"] == "incremental" and second["video_stats"] == "incremental"
    # At T, e7 (at T) and e8 (after T) do not count yet; at T2 they do.
    assert served["online_at_t"]["user_profile__events_total"].tolist() == [5, 4, 0]
    client = redis_client(served["redis_db"])
    keys = [k for k in client.scan_iter(count=1000) if k != CLAIM_KEY.encode()]
    assert len(keys) == len(USERS) + len(VIDEOS)  # one hash per entity (u4 and v3 appear after T2)


def test_online_values_equal_the_latest_offline_values(served):
    settings, where = served["settings"], served["where"]
    tables = {
        name: pq.read_table(where.features_dir / f"{name}.parquet").to_pandas()
        for name in ("user_features", "video_features")
    }
    latest_users = tables["user_features"][tables["user_features"]["event_timestamp"] == T2].set_index("user_id")
    latest_videos = tables["video_features"][tables["video_features"]["event_timestamp"] == T2].set_index("video_id")
    videos = sorted(latest_videos.index)

    online_users = store.online_user_features(USERS, settings=settings)
    online_videos = store.online_video_features(videos, settings=settings)
    offline = store.training_frame(
        pd.DataFrame({"user_id": USERS, "event_timestamp": [T2] * len(USERS)}),
        ["user_profile", "user_recent"],
        settings=settings,
    )
    assert online_users["user_id"].tolist() == USERS and online_videos["video_id"].tolist() == videos
    for view in ("user_profile", "user_recent"):
        for column in view_columns(view):
            assert_same_values(
                online_users[f"{view}__{column}"], latest_users.loc[USERS, column], f"online {view}.{column}"
            )
            assert_same_values(
                offline[f"{view}__{column}"], latest_users.loc[USERS, column], f"offline {view}.{column}"
            )
    for column in view_columns("video_stats"):
        assert_same_values(
            online_videos[f"video_stats__{column}"], latest_videos.loc[videos, column], f"video_stats.{column}"
        )
    assert online_users["user_profile__events_total"].tolist() == [7, 4, 0]
    assert online_users["user_recent__last_video_ids"].tolist() == ["v1|v2", "v2|v1", ""]
    assert store.online_user_features(["no-such-user"], settings=settings)["user_profile__avg_rating"].isna().all()


def test_pushed_values_reach_redis(served):
    settings = served["settings"]
    at = T2 + pd.Timedelta(hours=1)
    store.push_online(
        "user_recent",
        pd.DataFrame(
            {"user_id": ["u3"], "event_timestamp": [at], "created_ts": [at], "events_1d": [3], "events_7d": [3],
             "events_30d": [3], "days_since_last_activity": [0.01], "last_video_ids": ["v2"]}
        ),
        settings=settings,
    )  # fmt: skip
    forget_stores(settings)  # a fresh store (fresh Redis client) reads what the push wrote
    online = store.online_user_features(["u3"], ["user_recent"], settings=settings)
    assert online["user_recent__events_1d"].tolist() == [3] and online["user_recent__last_video_ids"].tolist() == ["v2"]
    store.materialize(settings, full=True)  # a later batch run: the older snapshot does not win
    online = store.online_user_features(["u3"], ["user_recent"], settings=settings)
    assert online["user_recent__last_video_ids"].tolist() == ["v2"]


def test_another_registry_in_the_same_process_starts_unmaterialized(served, tmp_path):
    """The SQL registry writes a view's materialization intervals into the object it applies: the
    repo's own view objects must not carry them into the next registry (a fresh one starts `initial`)."""
    store.apply_repo(served["settings"])  # registered views differ from the declared ones: intervals
    with prod_stores(tmp_path) as (lake, settings, _, _):
        compute_features(lake, [T], store.locations(settings).features_dir)
        store.apply_repo(settings)
        modes = {m.view: m.mode for m in store.materialize(settings)}
        assert modes["user_profile"] == "initial" and modes["video_stats"] == "initial", modes
        online = store.online_user_features(USERS, settings=settings)
        assert online["user_profile__events_total"].tolist() == [5, 4, 0]
