"""The real ml-latest-small as canonical frames and files: the one conversion the tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.schema import KNOWN_DEVICES


def movielens_frames(
    ml_dir: Path, max_user: int | None = None, *, devices: bool = False, durations: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings as canonical rating events (users up to `max_user`) and movies as videos.

    `devices`, `durations`: MovieLens has neither; a deterministic spread of devices over the events and
    of durations over the videos, for code whose rules read them (context features, device fit).
    """
    ratings = pd.read_csv(Path(ml_dir) / "ratings.csv")
    movies = pd.read_csv(Path(ml_dir) / "movies.csv")
    if max_user is not None:
        ratings = ratings[ratings.userId <= max_user]
    events = pd.DataFrame(
        {
            "event_id": "r" + ratings.index.astype(str),
            "user_id": ratings.userId.astype(str),
            "video_id": ratings.movieId.astype(str),
            "event_type": "rating",
            "rating": ratings.rating.astype(float),
            "event_ts": pd.to_datetime(ratings.timestamp, unit="s", utc=True),
        }
    )
    if devices:
        spread = np.array(KNOWN_DEVICES)
        events["device"] = spread[(ratings.userId.to_numpy() + ratings.movieId.to_numpy()) % len(spread)]
    videos = pd.DataFrame(
        {
            "video_id": movies.movieId.astype(str),
            "title": movies.title,
            "genres": movies.genres.str.split("|"),
            "tags": [[] for _ in range(len(movies))],
        }
    )
    if durations:
        videos["duration_s"] = 600.0 + (movies.movieId.to_numpy() * 7919 % 9000).astype(float)
    return events, videos


def write_canonical(events: pd.DataFrame, videos: pd.DataFrame, out_dir: Path) -> Path:
    """`events.parquet` + `videos.parquet`, what `open_source("canonical", out_dir)` reads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events.to_parquet(out_dir / "events.parquet")
    videos.to_parquet(out_dir / "videos.parquet")
    return out_dir
