"""The session rules (feature_repo.sessions) that both the batch table and /feedback's pushes use."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from feature_repo.lake import Lake
from feature_repo.sessions import (
    SESSION_FIELDS,
    fold_recent,
    fold_session,
    push_stamp,
    session_table,
    split_ids,
    write_session_table,
)

T0 = pd.Timestamp("2024-05-07 12:00", tz="UTC")
GENRES = {"a": ["Drama"], "b": ["Comedy", "Drama"], "c": ["Horror"]}


def events(*rows: tuple[str, str | None, str]) -> pd.DataFrame:
    """(minutes after T0, video, event type) rows of one user."""
    return pd.DataFrame(
        [{"user_id": "u", "event_ts": T0 + pd.Timedelta(minutes=float(m)), "video_id": v, "event_type": t}
         for m, v, t in rows]
    )  # fmt: skip


def genres_of(video: str) -> list[str]:
    return GENRES.get(video, [])


def test_a_session_collects_watches_likes_and_dislikes_newest_first():
    row = fold_session(
        None, events((0, "a", "watch"), (5, "b", "like"), (9, "c", "dislike"), (10, "a", "play")), genres_of, 1.0
    )
    assert split_ids(row["watched_ids"]) == ["a"] and row["liked_ids"] == "b" and row["disliked_ids"] == "c"
    assert row["session_events"] == 4 and row["session_started_s"] == T0.timestamp()
    assert row["last_active_s"] == (T0 + pd.Timedelta(minutes=10)).timestamp() and row["updated_s"] == 1.0
    assert row["genre_shares"] == "Drama:0.667|Comedy:0.333"  # watched and liked videos: a, b
    assert row["event_timestamp"] == (T0 + pd.Timedelta(minutes=10)).to_pydatetime()


def test_a_like_then_a_dislike_of_one_video_keeps_the_latest_opinion():
    row = fold_session(None, events((0, "a", "like"), (1, "a", "dislike")), genres_of, 0.0)
    assert row["liked_ids"] == "" and row["disliked_ids"] == "a"


def test_a_gap_over_30_minutes_starts_a_new_session_and_a_late_event_does_not_reopen_one():
    first = fold_session(None, events((0, "a", "like")), genres_of, 0.0)
    same = fold_session(first, events((29, "b", "watch")), genres_of, 0.0)
    assert same["liked_ids"] == "a" and same["watched_ids"] == "b" and same["session_events"] == 2
    new = fold_session(same, events((70, "c", "watch")), genres_of, 0.0)
    assert new["liked_ids"] == "" and new["watched_ids"] == "c" and new["session_events"] == 1
    late = fold_session(new, events((5, "b", "like")), genres_of, 0.0)
    assert late["liked_ids"] == "" and late["last_active_s"] == new["last_active_s"]


def test_recent_activity_adds_the_new_events_to_the_snapshot():
    previous = {"events_1d": 2, "events_7d": 5, "events_30d": None, "last_video_ids": "x|a"}
    row = fold_recent(previous, events((0, "a", "watch"), (1, "b", "like"), (2, "c", "rating")))
    assert (row["events_1d"], row["events_7d"], row["events_30d"]) == (5, 8, 3)
    assert row["last_video_ids"] == "c|a|x" and row["days_since_last_activity"] == 0.0  # likes are not watches


def test_a_push_is_stamped_later_than_the_row_it_replaces():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert push_stamp(None, now) == now
    ahead = datetime(2026, 1, 2, tzinfo=UTC).timestamp()  # a batch snapshot stamped at the next midnight
    assert push_stamp(ahead, now).timestamp() == ahead + 1


def test_the_batch_table_holds_each_users_last_session_before_each_as_of(movielens_lake):
    lake: Lake = movielens_lake
    last = lake.read_events(columns=["event_ts"])["event_ts"].max()
    as_of = pd.Timestamp(last).ceil("D")
    table = session_table(lake, [as_of])
    assert len(table) > 0 and list(table.columns) == ["user_id", *SESSION_FIELDS, "event_timestamp", "created_ts"]
    assert (table["event_timestamp"] == as_of).all() and table["user_id"].is_unique
    assert (table["last_active_s"] < as_of.timestamp()).all()
    assert (table["last_active_s"] >= (as_of - pd.Timedelta(days=1)).timestamp()).all()


@pytest.mark.parametrize("runs", [1, 2])
def test_writing_the_batch_table_is_idempotent(movielens_lake, tmp_path, runs):
    lake = movielens_lake
    last = lake.read_events(columns=["event_ts"])["event_ts"].max()
    times = [pd.Timestamp(last).ceil("D") - pd.Timedelta(days=d) for d in (1, 0)]
    for _ in range(runs):
        n = write_session_table(lake, times, tmp_path)
    again = write_session_table(lake, times[1:], tmp_path)  # one as-of time recomputed: the other kept
    assert n == again == len(pd.read_parquet(tmp_path / "user_sessions.parquet"))
