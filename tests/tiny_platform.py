"""A hand-made platform (3 users, 4 videos, a few days of events) whose features are computed by hand
in test_features; other feature and Feast tests reuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import store
from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from vidrec.settings import Settings

T = pd.Timestamp("2024-03-01", tz="UTC")  # the as-of time the numbers below are computed by hand for


T2 = pd.Timestamp("2024-03-03", tz="UTC")


VIDEOS = [
    # video_id, genres, duration_s, published_ts
    ("v1", "Comedy|Drama", "100", "2024-01-01T00:00:00Z"),
    ("v2", "Drama", "200", "2024-02-20T00:00:00Z"),
    ("v3", "Action", "", "2024-03-05T00:00:00Z"),  # published after T: not a video yet at T
    ("v4", "", "", ""),  # publication unknown, never watched
]


USERS = [
    ("u1", "2024-01-01T00:00:00Z"),
    ("u2", "2024-02-01T00:00:00Z"),
    ("u3", "2024-02-28T12:00:00Z"),
    ("u4", "2024-03-10T00:00:00Z"),
]


EVENTS = [
    # event_id, user, video, ts, type, watch_time_s, rating, device
    ("e1", "u1", "v1", "2024-02-29T08:00:00Z", "watch", "50", "", "mobile"),
    ("e2", "u1", "v1", "2024-02-29T20:00:00Z", "like", "", "", "mobile"),
    ("e3", "u1", "v2", "2024-02-25T14:00:00Z", "rating", "", "4", "desktop"),
    ("e4", "u1", "v2", "2024-02-10T02:00:00Z", "watch", "300", "", "tv"),
    ("e5", "u1", "v2", "2024-01-15T10:00:00Z", "dislike", "", "", "tablet"),
    ("e6", "u1", "v1", "2024-02-29T09:00:00Z", "impression", "", "", "mobile"),  # not activity
    ("e7", "u1", "v2", "2024-03-01T00:00:00Z", "watch", "10", "", "mobile"),  # at T: not before T
    ("e8", "u1", "v1", "2024-03-02T00:00:00Z", "rating", "", "5", "mobile"),  # after T
    ("f1", "u2", "v2", "2024-02-20T12:00:00Z", "play", "", "", "mobile"),
    ("f2", "u2", "v2", "2024-02-20T12:30:00Z", "watch", "100", "", "mobile"),
    ("f3", "u2", "v1", "2024-02-16T12:00:00Z", "rating", "", "2", "mobile"),
    ("f4", "u2", "v2", "2024-02-27T18:00:00Z", "rating", "", "3", "mobile"),
]


def write_tiny_source(folder: Path, events=EVENTS, with_catalog: bool = True) -> Path:
    """The hand-made platform above as canonical CSV logs."""
    folder.mkdir(parents=True, exist_ok=True)
    if with_catalog:
        pd.DataFrame(
            [
                {"video_id": v, "title": f"Video {v}", "genres": g, "duration_s": d, "published_ts": p}
                for v, g, d, p in VIDEOS
            ]
        ).to_csv(folder / "videos.csv", index=False)
        pd.DataFrame([{"user_id": u, "signup_ts": s} for u, s in USERS]).to_csv(folder / "users.csv", index=False)
    pd.DataFrame(
        [
            {"event_id": e, "user_id": u, "video_id": v, "event_ts": ts, "event_type": kind, "watch_time_s": w,
             "rating": r, "device": d, "session_id": "", "text": ""}
            for e, u, v, ts, kind, w, r, d in events
        ]
    ).to_csv(folder / "events.csv", index=False)  # fmt: skip
    return folder


def tiny_lake(tmp: Path) -> Lake:
    lake = Lake(tmp / "lake")
    summary = ingest(open_source("canonical", write_tiny_source(tmp / "logs"), tmp / "cache"), lake)
    assert summary.tables["events"].accepted == len(EVENTS), summary.tables["events"].quarantined
    return lake


def settings_for(home: Path, lake: Path) -> Settings:
    return Settings(
        profile="local", home=home, lake_dir=lake, cache_dir=home / "cache", features_dir=home / "features",
        mlflow_uri=f"sqlite:///{home / 'mlflow.db'}", mlflow_artifacts=str(home / "mlartifacts"),
    )  # fmt: skip


def view_columns(view: str) -> list[str]:
    from feature_repo.feast_repo import feature_views

    return [f.name for f in getattr(feature_views, view).features]


def assert_same_values(got: pd.Series, want: pd.Series, what: str) -> None:
    """Equal values, NaN == NaN, ints == floats (online values of a column with gaps are floats)."""
    got, want = got.reset_index(drop=True), want.reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(want):
        np.testing.assert_allclose(
            pd.to_numeric(got, errors="coerce").to_numpy(float),
            want.to_numpy(float),
            rtol=1e-9,
            equal_nan=True,
            err_msg=what,
        )
    else:
        assert got.fillna("").tolist() == want.fillna("").tolist(), what


def prod_settings(tmp) -> Settings:
    return Settings(
        profile="prod", home=tmp / "home", lake_dir=tmp / "lake", cache_dir=tmp / "cache",
        features_dir=tmp / "features", mlflow_uri="unused://", mlflow_artifacts=str(tmp / "mlartifacts"),
    )  # fmt: skip


def forget_stores(settings: Settings) -> None:
    """Drop the cached FeatureStore of these locations (and its database connections)."""
    where = store.locations(settings)
    cached = store._STORES.pop(where, None)
    engine = getattr(getattr(cached, "registry", None), "write_engine", None)
    if engine is not None:
        engine.dispose()
