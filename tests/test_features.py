"""Feature transforms: hand-computed numbers on a tiny lake, the as-of rule, idempotent output."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_platform import T2, T, tiny_lake, write_tiny_source

from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from feature_repo.transforms import TABLES, compute_features, default_as_of_times, query_features, sql_text


@pytest.fixture
def lake(tmp_path) -> Lake:
    return tiny_lake(tmp_path)


def row(frame: pd.DataFrame, key: str, value: str) -> dict:
    hit = frame[frame[key] == value]
    assert len(hit) == 1, f"{key}={value}: {len(hit)} rows"
    return hit.iloc[0].to_dict()


def test_user_features_match_hand_computed_values(lake):
    users = query_features(lake, "user_features", [T])
    assert sorted(users["user_id"]) == ["u1", "u2", "u3"]  # u4 signs up after T
    assert (users["event_timestamp"] == T).all() and (users["created_ts"] == T).all()

    u1 = row(users, "user_id", "u1")
    # e1..e5 count; the impression e6, e7 (at T) and e8 (after T) do not.
    assert (u1["events_1d"], u1["events_7d"], u1["events_30d"], u1["events_total"]) == (2, 3, 4, 5)
    assert u1["ratings_count"] == 1 and u1["avg_rating"] == pytest.approx(4.0)
    assert u1["like_ratio"] == pytest.approx(0.5)
    assert u1["avg_completion"] == pytest.approx((50 / 100 + 1.0) / 2)  # e4: 300 s of 200 s caps at 1
    assert u1["top_genres"] == "Drama:0.667|Comedy:0.333"  # e1, e2 on v1 (Comedy, Drama); e3, e4 on v2
    assert u1["days_since_last_activity"] == pytest.approx(4 / 24)  # e2, 20:00 the day before
    shares = [u1[f"share_{p}"] for p in ("night", "morning", "afternoon", "evening")]
    assert shares == pytest.approx([0.2, 0.4, 0.2, 0.2])
    devices = [u1[f"share_{d}"] for d in ("mobile", "desktop", "tv", "tablet")]
    assert devices == pytest.approx([0.4, 0.2, 0.2, 0.2])
    assert u1["last_video_ids"] == "v1|v2"

    u2 = row(users, "user_id", "u2")
    assert (u2["events_1d"], u2["events_7d"], u2["events_30d"], u2["events_total"]) == (0, 1, 4, 4)
    assert u2["avg_rating"] == pytest.approx(2.5) and u2["ratings_count"] == 2
    assert math.isnan(u2["like_ratio"])
    assert u2["avg_completion"] == pytest.approx(0.5)
    assert u2["top_genres"] == "Drama:0.8|Comedy:0.2"
    assert u2["days_since_last_activity"] == pytest.approx(2.25)  # f4, 02-27 18:00 (2024 is a leap year)
    assert u2["share_afternoon"] == pytest.approx(0.75) and u2["share_evening"] == pytest.approx(0.25)
    assert u2["share_mobile"] == pytest.approx(1.0)
    assert u2["last_video_ids"] == "v2|v1"

    u3 = row(users, "user_id", "u3")  # signed up, no activity yet
    assert (u3["events_total"], u3["events_30d"], u3["ratings_count"]) == (0, 0, 0)
    assert math.isnan(u3["avg_rating"]) and math.isnan(u3["days_since_last_activity"])
    assert u3["top_genres"] == "" and u3["last_video_ids"] == ""


def test_video_features_match_hand_computed_values(lake):
    videos = query_features(lake, "video_features", [T])
    assert sorted(videos["video_id"]) == ["v1", "v2", "v4"]  # v3 is published after T

    v1 = row(videos, "video_id", "v1")
    # viewers: u1 (watch e1, 02-29) and u2 (rating f3, 02-16)
    assert (v1["views_1d"], v1["views_7d"], v1["views_prev_7d"], v1["views_30d"], v1["views_total"]) == (1, 1, 1, 2, 2)
    assert v1["trending_score"] == pytest.approx(0.0)
    assert v1["completion_rate"] == pytest.approx(0.5)
    assert v1["like_ratio"] == pytest.approx(1.0)
    assert v1["avg_rating"] == pytest.approx(2.0) and v1["ratings_count"] == 1
    assert v1["age_days"] == pytest.approx(60.0)  # 2024 is a leap year
    assert v1["duration_s"] == pytest.approx(100.0) and v1["genres"] == "Comedy|Drama"

    v2 = row(videos, "video_id", "v2")
    # last 7 days: u1 (e3) and u2 (f4); the 7 before: u2 (f1, f2 count once)
    assert (v2["views_1d"], v2["views_7d"], v2["views_prev_7d"], v2["views_30d"], v2["views_total"]) == (0, 2, 1, 2, 2)
    assert v2["trending_score"] == pytest.approx(math.log(3 / 2))
    assert v2["completion_rate"] == pytest.approx((1.0 + 0.5) / 2)
    assert v2["like_ratio"] == pytest.approx(0.0)  # one dislike, no like
    assert v2["avg_rating"] == pytest.approx(3.5) and v2["ratings_count"] == 2
    assert v2["age_days"] == pytest.approx(10.0)

    v4 = row(videos, "video_id", "v4")
    assert v4["views_total"] == 0 and math.isnan(v4["age_days"]) and math.isnan(v4["duration_s"])
    assert v4["genres"] == "" and math.isnan(v4["avg_rating"])


def test_only_events_strictly_before_the_as_of_time_count(lake, tmp_path):
    users = query_features(lake, "user_features", [T, T2])
    at_t, at_t2 = (row(users[users["event_timestamp"] == t], "user_id", "u1") for t in (T, T2))
    assert at_t["events_total"] == 5 and at_t2["events_total"] == 7  # e7 (at T) and e8 count from T2 on
    assert at_t2["ratings_count"] == 2 and at_t2["avg_rating"] == pytest.approx(4.5)

    # Events added later, all at or after T, leave the features as of T unchanged.
    late = [
        ("late1", "u2", "v1", "2024-03-01T00:00:00Z", "rating", "", "5", "tv"),
        ("late2", "u3", "v2", "2024-03-01T00:00:01Z", "watch", "200", "", "tv"),
        ("late3", "u1", "v4", "2024-03-02T12:00:00Z", "like", "", "", "desktop"),
    ]
    ingest(
        open_source("canonical", write_tiny_source(tmp_path / "late", late, with_catalog=False), tmp_path / "c"), lake
    )
    after_users = query_features(lake, "user_features", [T])
    pd.testing.assert_frame_equal(after_users, users[users["event_timestamp"] == T].reset_index(drop=True))
    after_videos = query_features(lake, "video_features", [T])
    assert row(after_videos, "video_id", "v1")["ratings_count"] == 1
    assert row(query_features(lake, "video_features", [T2]), "video_id", "v1")["ratings_count"] == 3


def test_compute_features_writes_merges_and_is_idempotent(lake, tmp_path):
    out = tmp_path / "features"
    paths = compute_features(lake, [T], out)
    assert set(paths) == set(TABLES) and all(p.exists() for p in paths.values())
    first = {name: pq.read_table(p).to_pandas() for name, p in paths.items()}

    compute_features(lake, [T], out)  # same input, same output, no duplicates
    for name, p in paths.items():
        pd.testing.assert_frame_equal(pq.read_table(p).to_pandas(), first[name])

    compute_features(lake, [T2], out)  # another as-of time is added, T's rows kept as they were
    users = pq.read_table(paths["user_features"]).to_pandas()
    assert sorted(users["event_timestamp"].unique()) == [T, T2]
    pd.testing.assert_frame_equal(users[users["event_timestamp"] == T].reset_index(drop=True), first["user_features"])
    assert not users.duplicated(["user_id", "event_timestamp"]).any()

    compute_features(lake, [T2], out, replace=True)
    assert set(pq.read_table(paths["user_features"]).to_pandas()["event_timestamp"]) == {T2}
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_default_as_of_times_step_back_from_the_midnight_after_the_last_event(lake):
    # last event: e8 on 2024-03-02 -> the newest as-of time is 2024-03-03 00:00 UTC
    weekly = default_as_of_times(lake, "W", periods=3)
    assert weekly == [pd.Timestamp(d, tz="UTC") for d in ("2024-02-18", "2024-02-25", "2024-03-03")]
    daily = default_as_of_times(lake, "D", periods=None)
    assert daily[0] == pd.Timestamp("2024-01-15", tz="UTC") and daily[-1] == pd.Timestamp("2024-03-03", tz="UTC")
    assert len(daily) == 49
    assert default_as_of_times(Lake(lake.root.parent / "empty")) == []
    with pytest.raises(ValueError):
        compute_features(lake, [], lake.root.parent / "x")


def test_naive_as_of_times_are_utc(lake):
    naive = query_features(lake, "user_features", [pd.Timestamp("2024-03-01")])
    assert (naive["event_timestamp"] == T).all()


def test_sql_is_engine_neutral():
    """The transforms must run on Spark SQL too: no DuckDB-only syntax in the SQL files."""
    duckdb_only = [r"::", r"\bunnest\b", r"\bepoch\s*\(", r"\blist_\w+\(", r"\bstring_agg\b", r"\barray_to_string\b",
                   r"\bFILTER\s*\(", r"\bQUALIFY\b", r"\bdate_diff\b", r"\bstrftime\b"]  # fmt: skip
    for table in TABLES:
        text = re.sub(r"--[^\n]*", "", sql_text(table))
        for pattern in duckdb_only:
            assert not re.search(pattern, text, re.IGNORECASE), f"{table}: {pattern}"


def test_content_embeddings_table(lake, tmp_path):
    pytest.importorskip("models.content", reason="models/content.py (another issue) is not there yet")
    from feature_repo.transforms.embeddings import compute_embeddings

    path = compute_embeddings(lake, tmp_path / "features", method="tfidf", tfidf_dims=3)
    table = pq.read_table(path)
    embedding_type = table.schema.field("embedding").type
    assert pa.types.is_list(embedding_type) and embedding_type.value_type == pa.float32()
    frame = table.to_pandas()
    assert list(frame["video_id"]) == ["v1", "v2", "v3", "v4"]
    assert frame.loc[frame["video_id"] == "v1", "event_timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert frame.loc[frame["video_id"] == "v4", "event_timestamp"].iloc[0] == pd.Timestamp("1970-01-01", tz="UTC")
    norms = np.array([np.linalg.norm(v) for v in frame["embedding"]])
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


@pytest.mark.slow
def test_minilm_embeddings_load_from_the_bundled_model(lake, tmp_path):
    pytest.importorskip("models.content", reason="models/content.py (another issue) is not there yet")
    from feature_repo.transforms.embeddings import compute_embeddings

    frame = pq.read_table(compute_embeddings(lake, tmp_path / "features", method="minilm")).to_pandas()
    vectors = np.stack(frame["embedding"].to_numpy())
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
