"""Feast over the feature tables: point-in-time training frames, online = latest offline, the job.

Real Feast (file offline store, SQLite online store, file registry) over features computed from
the real MovieLens lake and from the hand-made lake of test_features.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tiny_platform import T2, T, assert_same_values, settings_for, tiny_lake, view_columns, write_tiny_source
from typer.testing import CliRunner

from feature_repo import store
from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from feature_repo.transforms import compute_features, query_features
from vidrec.cli import app
from vidrec.settings import Settings

# MovieLens ml-latest-small ends on 2018-09-24; the label time and two snapshots around it.
A1 = pd.Timestamp("2018-06-01", tz="UTC")
LABEL = pd.Timestamp("2018-08-01", tz="UTC")
A3 = pd.Timestamp("2018-09-25", tz="UTC")


# ---- MovieLens: point-in-time correctness and online/offline consistency ---------------------------


@pytest.fixture(scope="module")
def movielens_served(ml_small, tmp_path_factory):
    """MovieLens lake, features at A1, LABEL and A3, then events after LABEL added and recomputed."""
    tmp = tmp_path_factory.mktemp("feast-ml")
    lake = Lake(tmp / "lake")
    ingest(open_source("movielens-small", ml_small, tmp / "cache"), lake)
    settings = settings_for(tmp / "home", lake.root)
    where = store.locations(settings)

    # Users and videos the late events touch; what the transforms say as of LABEL before they exist.
    sample_users = ["1", "68", "414", "599"]
    sample_videos = ["1", "356", "2571"]
    before = {table: query_features(lake, table, [LABEL]) for table in ("user_features", "video_features")}
    late = [
        # at the label time itself, one second after, and days after: none may reach LABEL's row
        (f"late{i}", user, video, ts, kind, "", rating, "mobile")
        for i, (user, video, ts, kind, rating) in enumerate(
            [
                ("1", "1", "2018-08-01T00:00:00Z", "rating", "5"),
                ("68", "356", "2018-08-01T00:00:01Z", "rating", "1"),
                ("414", "2571", "2018-08-03T10:00:00Z", "rating", "0.5"),
                ("599", "1", "2018-08-20T22:00:00Z", "rating", "5"),
                ("1", "2571", "2018-09-01T08:00:00Z", "rating", "4"),
            ]
        )
    ]
    ingest(open_source("canonical", write_tiny_source(tmp / "late", late, with_catalog=False), tmp / "cache"), lake)
    compute_features(lake, [A1, LABEL, A3], where.features_dir)
    store.apply_repo(settings)
    materialized = store.materialize(settings, A3.to_pydatetime())
    return {
        "settings": settings,
        "lake": lake,
        "where": where,
        "before": before,
        "users": sample_users,
        "videos": sample_videos,
        "materialized": materialized,
    }


def test_training_frame_never_sees_events_after_the_label_time(movielens_served):
    s = movielens_served
    users = s["users"]
    pairs = [("1", "1"), ("68", "356"), ("414", "2571"), ("599", "1"), ("1", "2571"), ("68", "1")]
    entity_df = pd.DataFrame(
        [
            {"user_id": u, "video_id": v, "event_timestamp": t, "label": i % 2}
            for i, (u, v) in enumerate(pairs)
            for t in (LABEL, LABEL + pd.Timedelta(hours=36))  # at a snapshot, and between two
        ]
    )
    frame = store.training_frame(entity_df, "ranker_v1", settings=s["settings"])
    assert len(frame) == len(entity_df)
    assert frame["label"].tolist() == entity_df["label"].tolist()  # passed through, order kept

    before_users = s["before"]["user_features"].set_index("user_id")
    before_videos = s["before"]["video_features"].set_index("video_id")
    for view, source, key in (
        ("user_profile", before_users, "user_id"),
        ("user_recent", before_users, "user_id"),
        ("video_stats", before_videos, "video_id"),
    ):
        for column in view_columns(view):
            want = source.loc[frame[key], column]
            assert_same_values(frame[f"{view}__{column}"], want, f"{view}.{column}")

    # The late events are in the lake and do change the next snapshot.
    after = query_features(s["lake"], "user_features", [A3]).set_index("user_id")
    assert (after.loc[users, "ratings_count"].to_numpy() > before_users.loc[users, "ratings_count"].to_numpy()).all()
    # Request-time features come from the label time.
    assert frame["request_features__hour_of_day"].tolist() == [t.hour for t in entity_df["event_timestamp"]]


def test_a_kept_cache_answers_later_chunks_with_the_same_values(movielens_served):
    settings = movielens_served["settings"]
    pairs = [("1", "1"), ("68", "356"), ("414", "2571"), ("599", "1"), ("1", "2571"), ("68", "1")]
    entity_df = pd.DataFrame(
        [
            {"user_id": u, "video_id": v, "event_timestamp": t}
            for u, v in pairs
            for t in (LABEL, LABEL + pd.Timedelta(hours=36))
        ]
    )
    whole = store.training_frame(entity_df, "ranker_v1", settings=settings)
    cache: dict = {}
    first = store.training_frame(entity_df.iloc[:5], "ranker_v1", settings=settings, cache=cache)
    kept = {refs: len(table) for refs, table in cache.items()}
    # the second chunk repeats some entity rows (user 1, video 1 at LABEL): those come from the cache
    second = store.training_frame(entity_df.iloc[5:], "ranker_v1", settings=settings, cache=cache)
    chunked = pd.concat([first, second], ignore_index=True)
    pd.testing.assert_frame_equal(chunked[whole.columns], whole)
    assert kept and all(len(cache[refs]) >= n for refs, n in kept.items())
    # nothing new to ask: every row is answered from the cache, the same values again
    again = store.training_frame(entity_df, "ranker_v1", settings=settings, cache=cache)
    pd.testing.assert_frame_equal(again[whole.columns], whole)


def test_feature_rows_expire_after_their_ttl(movielens_served):
    s = movielens_served
    long_after = A3 + pd.Timedelta(days=60)
    frame = store.training_frame(
        pd.DataFrame({"user_id": s["users"][:1], "event_timestamp": [long_after]}),
        ["user_profile", "user_recent"],
        settings=s["settings"],
    )
    values = frame.filter(like="__").iloc[0]
    assert values.isna().all(), values[values.notna()]


def test_online_values_equal_the_latest_offline_values(movielens_served):
    s = movielens_served
    assert {m.view: m.mode for m in s["materialized"]}["user_profile"] == "initial"
    tables = {
        name: pq.read_table(s["where"].features_dir / f"{name}.parquet").to_pandas()
        for name in ("user_features", "video_features")
    }
    latest_users = tables["user_features"][tables["user_features"]["event_timestamp"] == A3].set_index("user_id")
    latest_videos = tables["video_features"][tables["video_features"]["event_timestamp"] == A3].set_index("video_id")
    rng = np.random.default_rng(7)
    users = sorted(set(rng.choice(latest_users.index, 25, replace=False)) | set(s["users"]))
    videos = sorted(set(rng.choice(latest_videos.index, 25, replace=False)) | set(s["videos"]))

    online_users = store.online_user_features(users, settings=s["settings"])
    online_videos = store.online_video_features(videos, settings=s["settings"])
    assert online_users["user_id"].tolist() == users and online_videos["video_id"].tolist() == videos
    offline = store.training_frame(
        pd.DataFrame({"user_id": users, "event_timestamp": [A3] * len(users)}),
        ["user_profile", "user_recent"],
        settings=s["settings"],
    )
    for view in ("user_profile", "user_recent"):
        for column in view_columns(view):
            assert_same_values(
                online_users[f"{view}__{column}"], latest_users.loc[users, column], f"online {view}.{column}"
            )
            assert_same_values(
                offline[f"{view}__{column}"], latest_users.loc[users, column], f"offline {view}.{column}"
            )
    for column in view_columns("video_stats"):
        assert_same_values(
            online_videos[f"video_stats__{column}"], latest_videos.loc[videos, column], f"video_stats.{column}"
        )

    # Unknown ids come back empty, not as an error.
    unknown = store.online_user_features(["no-such-user"], settings=s["settings"])
    assert unknown["user_profile__avg_rating"].isna().all()


def test_request_features_online(movielens_served):
    s = movielens_served
    rows = [
        {"user_id": "414", "video_id": "1", "request_ts": datetime(2018, 9, 25, 15, tzinfo=UTC), "device": "unknown"}
    ]
    online = store.online_features(rows, "ranker_v1", settings=s["settings"])
    assert online["request_features__hour_of_day"].tolist() == [15]
    assert online["request_features__day_of_week"].tolist() == [1]  # a Tuesday
    share = online["user_profile__share_afternoon"].iloc[0]
    assert online["request_features__daypart_affinity"].iloc[0] == pytest.approx(share)


# ---- the hand-made lake: incremental materialization, pushes, services, the command ----------------


@pytest.fixture
def tiny(tmp_path):
    lake = tiny_lake(tmp_path)
    settings = settings_for(tmp_path / "home", lake.root)
    return lake, settings, store.locations(settings)


def test_materialize_is_incremental_and_push_refreshes_online(tiny):
    lake, settings, where = tiny
    compute_features(lake, [T], where.features_dir)
    first = store.apply_repo(settings)
    assert "FeatureService:ranker_v1" in first.applied and first.deleted == []
    assert store.apply_repo(settings).deleted == []  # idempotent

    modes = {m.view: m.mode for m in store.materialize(settings)}
    assert modes["user_profile"] == "initial" and modes["video_embedding"].startswith("skipped")
    assert store.online_user_features(["u1"], settings=settings)["user_profile__events_total"].tolist() == [5]
    assert {m.view: m.mode for m in store.materialize(settings)}["user_profile"] == "refreshed"
    assert {m.view: m.mode for m in store.materialize(settings, T - pd.Timedelta(days=1))}[
        "user_profile"
    ] == "up to date"

    compute_features(lake, [T2], where.features_dir)  # the next snapshot: e7 and e8 now count
    modes = {m.view: m.mode for m in store.materialize(settings)}
    assert modes["user_profile"] == "incremental" and modes["video_stats"] == "incremental"
    online = store.online_user_features(["u1", "u2", "u3"], settings=settings)
    assert online["user_profile__events_total"].tolist() == [7, 4, 0]
    assert online["user_recent__last_video_ids"].tolist() == ["v1|v2", "v2|v1", ""]

    fresh = pd.DataFrame(
        {
            "user_id": ["u3"],
            "event_timestamp": [T2 + pd.Timedelta(hours=1)],
            "created_ts": [T2 + pd.Timedelta(hours=1)],
            "events_1d": [3],
            "events_7d": [3],
            "events_30d": [3],
            "days_since_last_activity": [0.01],
            "last_video_ids": ["v2"],
        }
    )
    store.push_online("user_recent", fresh, settings=settings)
    online = store.online_user_features(["u3"], ["user_recent"], settings=settings)
    assert online["user_recent__events_1d"].tolist() == [3] and online["user_recent__last_video_ids"].tolist() == ["v2"]

    # The latest event time wins a key: a later batch run over the older snapshot leaves the push be.
    assert {m.view: m.mode for m in store.materialize(settings, full=True)}["user_recent"] == "full"
    online = store.online_user_features(["u1", "u3"], ["user_recent"], settings=settings)
    assert online["user_recent__last_video_ids"].tolist() == ["v1|v2", "v2"]


def test_one_feature_service_per_ranker_version(tiny):
    from feature_repo.feast_repo.feature_services import service_name, service_version

    lake, settings, where = tiny
    compute_features(lake, [T], where.features_dir)
    store.apply_repo(settings)
    assert store.newest_ranker_service(settings) == "ranker_v1"
    service = store.register_ranker_service(2, settings=settings)
    assert service.name == service_name(2) == "ranker_v2" and service_version("ranker_v2") == 2
    assert service_version("something_else") is None
    store.apply_repo(settings)  # a re-apply keeps services registered at runtime
    names = {s.name for s in store.feature_store(settings).list_feature_services()}
    assert {"ranker_v1", "ranker_v2"} <= names
    assert store.newest_ranker_service(settings) == "ranker_v2"
    with pytest.raises(ValueError):
        service_name(0)


def test_profiles_fill_the_feature_store_yaml(tmp_path, monkeypatch):
    local = store.load_config(settings_for(tmp_path / "home", tmp_path / "lake"))
    assert local.project == "vidrec" and local.online_store.type == "sqlite"
    assert local.registry.path == str(tmp_path / "home" / "feast" / "registry.db")
    assert Path(local.repo_path) == (tmp_path / "home" / "features").resolve()

    monkeypatch.setenv("VIDREC_FEAST_REGISTRY_URL", "postgresql://u:p@db.internal:5432/feast")
    monkeypatch.setenv("VIDREC_FEAST_REDIS", "redis.internal:6379,db=2")
    monkeypatch.setenv("VIDREC_FEATURES_DIR", str(tmp_path / "shared" / "features"))
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path))
    prod = store.load_config(Settings.from_env("prod"))
    assert prod.registry.registry_type == "sql" and "db.internal:5432/feast" in prod.registry.path
    assert prod.online_store.type == "redis" and prod.online_store.connection_string == "redis.internal:6379,db=2"
    assert Path(prod.repo_path) == (tmp_path / "shared" / "features").resolve()


def test_vidrec_features_command(tmp_path, monkeypatch):
    lake = tiny_lake(tmp_path)
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["features", "--lake-dir", str(lake.root), "--freq", "D", "--periods", "3", "--embeddings", "tfidf"]
    )
    assert result.exit_code == 0, result.output
    assert "transform" in result.output and "feast_apply" in result.output and "materialize" in result.output
    features_dir = tmp_path / "home" / "features"
    users = pq.read_table(features_dir / "user_features.parquet").to_pandas()
    assert sorted(users["event_timestamp"].unique()) == [
        pd.Timestamp(d, tz="UTC") for d in ("2024-03-01", "2024-03-02", "2024-03-03")
    ]
    settings = settings_for(tmp_path / "home", lake.root)
    vectors = store.online_features([{"video_id": "v1"}], ["video_embedding"], settings=settings)
    assert len(vectors["video_embedding__embedding"].iloc[0]) == 3  # 4 videos: LSA keeps 3 dimensions
    online = store.online_user_features(["u1"], settings=settings)
    assert online["user_profile__events_total"].tolist() == [7]


def test_features_command_on_an_empty_lake_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["features", "--lake-dir", str(tmp_path / "nothing"), "--embeddings", "none"])
    assert result.exit_code == 2 and "no events" in result.output


def test_training_frame_keeps_every_row_and_its_request_context(tiny):
    """Rows sharing a user and a label time (several candidates, two devices) all keep their values."""
    lake, settings, where = tiny
    compute_features(lake, [T, T2], where.features_dir)
    store.apply_repo(settings)
    at = T2 + pd.Timedelta(hours=15)  # 15:00 UTC, a Sunday
    entity_df = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u1"],
            "video_id": ["v1", "v2", "v4", "v1", "v1"],
            "event_timestamp": [at, at, at, at, T],
            "device": ["mobile", "desktop", "mobile", "mobile", "tv"],
            "label": [1, 0, 0, 1, 1],
        }
    )
    frame = store.training_frame(entity_df, "ranker_v1", settings=settings)
    assert frame[["user_id", "video_id", "device", "label"]].equals(
        entity_df[["user_id", "video_id", "device", "label"]]
    )
    expected = query_features(lake, "user_features", [T, T2]).set_index(["user_id", "event_timestamp"])
    u1_t2, u1_t = expected.loc[("u1", T2)], expected.loc[("u1", T)]
    assert frame["user_profile__events_total"].tolist() == [7, 7, 7, 4, 5]
    assert frame["video_stats__genres"].tolist() == ["Comedy|Drama", "Drama", "", "Comedy|Drama", "Comedy|Drama"]
    assert frame["request_features__hour_of_day"].tolist() == [15, 15, 15, 15, 0]
    assert frame["request_features__is_weekend"].tolist() == [1, 1, 1, 1, 0]
    affinity = frame["request_features__device_affinity"].tolist()
    assert affinity == pytest.approx(
        [u1_t2["share_mobile"], u1_t2["share_desktop"], u1_t2["share_mobile"], 1.0, u1_t["share_tv"]]
    )
    assert frame["request_features__daypart_affinity"].iloc[0] == pytest.approx(u1_t2["share_afternoon"])

    only_context = store.training_frame(entity_df, ["request_features"], settings=settings)
    assert only_context["request_features__hour_of_day"].tolist() == [15, 15, 15, 15, 0]
