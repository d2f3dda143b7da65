"""The synthetic generator: canonical format, internal consistency, and a learnable signal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo import schema
from feature_repo.synthetic import GENRES, SyntheticConfig, SyntheticSummary, build_world, generate

SMALL = SyntheticConfig(n_users=300, n_videos=200, n_events=40_000, chunk_events=12_000, seed=7, days=30)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSummary:
    return generate(SMALL, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def events(small_run: SyntheticSummary) -> pd.DataFrame:
    return read_events(small_run.out_dir)


@pytest.fixture(scope="module")
def videos(small_run: SyntheticSummary) -> pd.DataFrame:
    return pd.read_parquet(small_run.out_dir / "videos.parquet")


def read_events(out_dir: Path) -> pd.DataFrame:
    """All event files in file order, so each session's rows keep the order they were written in."""
    parts = sorted((out_dir / "events").glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def first_ts(events: pd.DataFrame, event_type: str) -> pd.Series:
    """Time of the first `event_type` event per (session, video)."""
    rows = events[events.event_type == event_type]
    return rows.groupby(["session_id", "video_id"]).event_ts.min().rename(event_type)


def with_flag(rows: pd.DataFrame, events: pd.DataFrame, flag: str) -> pd.DataFrame:
    """`rows` plus a bool column: did the same session have a `flag` event on the same video."""
    keys = events.loc[events.event_type == flag, ["session_id", "video_id"]].drop_duplicates()
    rows = rows.merge(keys.assign(**{flag: True}), on=["session_id", "video_id"], how="left")
    return rows.assign(**{flag: rows[flag].notna()})


# --- Determinism and layout ----------------------------------------------------------------------


def test_same_seed_same_events_other_seed_different(tmp_path: Path, events: pd.DataFrame) -> None:
    generate(SMALL, tmp_path / "again")
    pd.testing.assert_frame_equal(read_events(tmp_path / "again"), events)

    other = SyntheticConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    generate(other, tmp_path / "other")
    other_events = read_events(tmp_path / "other")
    columns = ["user_id", "video_id", "event_ts"]
    assert not other_events[columns].equals(events[columns])


def test_exact_event_count_across_several_files(small_run: SyntheticSummary, events: pd.DataFrame) -> None:
    parts = sorted((small_run.out_dir / "events").glob("part-*.parquet"))
    assert len(events) == SMALL.n_events == small_run.n_events
    assert len(parts) == small_run.event_files == 4  # 3 x 12k + 4k
    assert [pq.read_metadata(p).num_rows for p in parts] == [12_000, 12_000, 12_000, 4_000]
    assert sum(small_run.events_by_type.values()) == SMALL.n_events
    counted = events.event_type.value_counts().reindex(schema.EVENT_TYPES, fill_value=0)
    assert small_run.events_by_type == counted.to_dict()


def test_files_have_the_canonical_schemas(small_run: SyntheticSummary) -> None:
    out = small_run.out_dir
    assert pq.read_schema(out / "users.parquet") == schema.USERS
    assert pq.read_schema(out / "videos.parquet") == schema.VIDEOS
    for part in (out / "events").glob("part-*.parquet"):
        assert pq.read_schema(part) == schema.EVENTS
    assert pq.read_metadata(out / "users.parquet").num_rows == SMALL.n_users
    assert pq.read_metadata(out / "videos.parquet").num_rows == SMALL.n_videos


def test_progress_reports_every_file(tmp_path: Path) -> None:
    reported: list[int] = []
    generate(SMALL, tmp_path, progress=reported.append)
    assert reported == [12_000, 12_000, 12_000, 4_000]


def test_rerun_into_same_folder_replaces_everything(tmp_path: Path) -> None:
    many_files = SyntheticConfig(**{**SMALL.__dict__, "chunk_events": 5_000})
    generate(many_files, tmp_path / "out")
    generate(SMALL, tmp_path / "out")
    generate(SMALL, tmp_path / "fresh")

    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert contents(tmp_path / "out") == contents(tmp_path / "fresh")


def test_no_events_still_writes_an_empty_file(tmp_path: Path) -> None:
    summary = generate(SyntheticConfig(n_users=10, n_videos=10, n_events=0), tmp_path)
    assert summary.event_files == 1
    assert pq.read_table(tmp_path / "events").num_rows == 0


def test_naive_start_is_rejected() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(start=datetime(2026, 1, 1))


# --- Consistency ----------------------------------------------------------------------------------


def test_every_event_type_but_tag_in_a_default_run(tmp_path: Path) -> None:
    summary = generate(SyntheticConfig(), tmp_path)
    present = {t for t, n in summary.events_by_type.items() if n > 0}
    assert present == set(schema.EVENT_TYPES) - {"tag"}


def test_ids_are_unique_and_known(small_run: SyntheticSummary, events: pd.DataFrame, videos: pd.DataFrame) -> None:
    users = pd.read_parquet(small_run.out_dir / "users.parquet")
    assert events.event_id.is_unique
    assert set(events.user_id) <= set(users.user_id)
    assert set(events.video_id.dropna()) <= set(videos.video_id)
    assert events.device.isin(schema.DEVICES).all()
    assert events.groupby("session_id")[["user_id", "device"]].nunique().max().max() == 1


def test_values_are_in_range(events: pd.DataFrame, videos: pd.DataFrame) -> None:
    watches = events[events.event_type == "watch"].merge(videos[["video_id", "duration_s"]], on="video_id")
    assert (watches.watch_time_s >= 0).all() and (watches.watch_time_s <= watches.duration_s).all()
    assert events.loc[events.event_type != "watch", "watch_time_s"].isna().all()

    ratings = events.loc[events.event_type == "rating", "rating"]
    assert ratings.between(schema.RATING_MIN, schema.RATING_MAX).all() and (ratings == ratings.round()).all()
    assert events.loc[events.event_type != "rating", "rating"].isna().all()

    searches = events[events.event_type == "search"]
    assert searches.video_id.isna().all() and searches.text.notna().all()
    assert events.loc[events.event_type != "search", "video_id"].notna().all()

    start = pd.Timestamp(SMALL.start)
    assert events.event_ts.min() >= start
    assert events.event_ts.max() < start + timedelta(days=SMALL.days)


def test_users_and_videos_are_plausible(
    small_run: SyntheticSummary, events: pd.DataFrame, videos: pd.DataFrame
) -> None:
    users = pd.read_parquet(small_run.out_dir / "users.parquet")
    first_event = events.groupby("user_id").event_ts.min()
    assert (users.set_index("user_id").signup_ts.reindex(first_event.index) < first_event).all()
    assert users.age_bucket.isin(["18-24", "25-34", "35-44", "45-54", "55+"]).all()
    assert users.gender.isin(["f", "m", "x"]).all()

    assert videos.genres.map(len).between(1, 3).all() and videos.tags.map(len).between(2, 5).all()
    assert videos.genres.explode().isin(GENRES).all()
    assert videos.duration_s.between(30, 9000).all()
    assert (videos.published_ts >= pd.Timestamp(SMALL.start)).any(), "some videos are fresh"
    assert (videos.language == "en").mean() > 0.5


def test_only_published_videos_are_shown(events: pd.DataFrame, videos: pd.DataFrame) -> None:
    shown = events[events.event_type == "impression"]
    shown = shown.merge(videos[["video_id", "published_ts"]], on="video_id")
    assert (shown.published_ts <= shown.event_ts).all()


def test_sessions_are_in_time_order(events: pd.DataFrame) -> None:
    assert events.session_id.ne(events.session_id.shift()).sum() == events.session_id.nunique(), "contiguous"
    step = events.event_ts.diff()[events.session_id.eq(events.session_id.shift())]
    assert (step > pd.Timedelta(0)).all()


def test_funnel_order(events: pd.DataFrame) -> None:
    """Impression before click before play before watch, for every video a session clicked."""
    steps = pd.concat([first_ts(events, t) for t in ("impression", "click", "play", "watch")], axis=1)
    clicked = steps[steps.click.notna()]
    assert clicked.impression.notna().all()
    assert (clicked.impression < clicked.click).all()
    played = clicked[clicked.play.notna()]
    assert (played.click < played.play).all()
    watched = played[played.watch.notna()]  # a session cut at the window's end may stop mid-video
    assert len(watched) > 0.9 * len(played) and (watched.play < watched.watch).all()
    first_search = events[events.event_type == "search"].groupby("session_id").event_ts.min()
    first_impression = events[events.event_type == "impression"].groupby("session_id").event_ts.min()
    both = first_impression.index.intersection(first_search.index)
    assert (first_search[both] < first_impression[both]).all()


# --- Model behaviour -----------------------------------------------------------------------------


def test_favourite_genre_is_clicked_more(events: pd.DataFrame, videos: pd.DataFrame) -> None:
    favourite = pd.Series(np.array(GENRES)[build_world(SMALL).favourite_genre], name="favourite")
    favourite.index = [f"u{u:06d}" for u in range(SMALL.n_users)]
    shown = with_flag(events[events.event_type == "impression"], events, "click")
    shown = shown.merge(videos[["video_id", "genres"]], on="video_id")
    shown = shown.join(favourite, on="user_id")
    in_favourite = [fav in genres for fav, genres in zip(shown.favourite, shown.genres, strict=False)]
    ctr = shown.groupby(np.array(in_favourite)).click.mean()
    assert ctr[True] > 1.5 * ctr[False]


def test_liked_videos_were_watched_further_than_disliked(events: pd.DataFrame, videos: pd.DataFrame) -> None:
    watches = events[events.event_type == "watch"].merge(videos[["video_id", "duration_s"]], on="video_id")
    watches = watches.assign(completion=watches.watch_time_s / watches.duration_s)
    reacted = with_flag(with_flag(watches, events, "like"), events, "dislike")
    liked = reacted.loc[reacted.like, "completion"]
    disliked = reacted.loc[reacted.dislike, "completion"]
    assert len(liked) > 50 and len(disliked) > 20
    assert liked.mean() > disliked.mean() + 0.2


def test_popularity_is_heavy_tailed(events: pd.DataFrame) -> None:
    impressions = events.loc[events.event_type == "impression", "video_id"].value_counts()
    top_tenth = impressions.iloc[: SMALL.n_videos // 10].sum()
    assert top_tenth / impressions.sum() > 0.4


def test_sessions_follow_the_device_clock(events: pd.DataFrame) -> None:
    """TV is watched in the evening, desktop in working hours (local time; all users' zones mixed)."""
    world = build_world(SMALL)
    offset_h = pd.Series(world.user_utc_offset_s / 3600, index=[f"u{u:06d}" for u in range(SMALL.n_users)])
    starts = events.groupby("session_id").agg(
        user_id=("user_id", "first"), device=("device", "first"), ts=("event_ts", "min")
    )
    local_hour = (starts.ts.dt.hour + starts.ts.dt.minute / 60 + starts.user_id.map(offset_h)) % 24
    evening = local_hour.between(18, 23)
    assert evening[starts.device == "tv"].mean() > evening[starts.device == "desktop"].mean() + 0.2


def test_start_and_window_are_respected(tmp_path: Path) -> None:
    start = datetime(2025, 6, 1, 12, tzinfo=UTC)
    config = SyntheticConfig(n_users=50, n_videos=40, n_events=3_000, start=start, days=2)
    generate(config, tmp_path)
    ts = read_events(tmp_path).event_ts
    assert ts.min() >= pd.Timestamp(start) and ts.max() < pd.Timestamp(start + timedelta(days=2))
