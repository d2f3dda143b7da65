"""Two-stage training on rolling label windows, and the request context, on real MovieLens events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from recommender_contract import movielens_frames

from feature_repo.text import tfidf_vectors, video_text
from models.hybrid import HybridUnion
from models.interactions import Interactions
from models.item_cf import ItemKNN
from models.lifecycle.config import RankerConfig
from models.popularity import Popularity, Trending
from models.protocols import rolling_time_splits
from models.ranker import QUERY_COLUMN, TREND_FEATURES, CatalogSide, days_away, last_active
from models.two_stage import Requests, TwoStage, labeled_frame, train_on_windows


@pytest.fixture(scope="module")
def movielens(ml_small):
    events, videos = movielens_frames(ml_small)
    return events, videos, tfidf_vectors(video_text(videos).tolist())


def fitted(events: pd.DataFrame, videos: pd.DataFrame, vectors) -> tuple[HybridUnion, CatalogSide]:
    data = Interactions.from_events(events, catalog=videos["video_id"], weighting="binary")
    union = HybridUnion(
        {"popularity": Popularity(), "trending": Trending(30), "item-cf": ItemKNN()}, per_source_k=30
    ).fit(data)
    return union, CatalogSide.build(videos, data, vectors)


def test_labeled_frame_has_queries_labels_and_context(movielens):
    events, videos, vectors = movielens
    fit, label = rolling_time_splits(events, origins=(0.9,))[0]
    union, catalog = fitted(fit, videos, vectors)
    frame = labeled_frame(union, catalog, label)
    start = label["event_ts"].min()
    assert frame[QUERY_COLUMN].str.startswith(f"{start.isoformat()}|").all()
    assert set(frame["user_id"]) == set(label["user_id"])  # every returning user is a query
    assert (frame["label"] > 0).any() and (frame["label"] == 0).any()
    assert set(TREND_FEATURES) <= set(frame.columns)
    # Each user's request is their first event in the window: after everything the generators saw.
    away = frame.groupby("user_id")["ctx_log_days_away"].first()
    assert (away >= 0).all()
    first = label.groupby("user_id")["event_ts"].min()
    last = fit.groupby("user_id")["event_ts"].max()
    some = away.index[0]
    expected = np.log1p((first[some] - last[some]).total_seconds() // 1 / 86_400)
    assert away[some] == pytest.approx(expected, abs=1e-6)


def test_rolling_windows_make_one_query_per_user_and_window(movielens):
    events, videos, vectors = movielens
    windows = [(*fitted(fit, videos, vectors), label) for fit, label in rolling_time_splits(events, origins=(0.8, 0.9))]
    ranker, rows = train_on_windows(windows, config=RankerConfig(n_estimators=40, early_stopping_rounds=10))
    per_user = pd.Series([q.split("|", 1)[1] for q in rows.queries]).value_counts()
    assert per_user.max() == 2  # a user active in both windows is two queries
    assert rows.n_queries == len(set(rows.queries)) == sum(label["user_id"].nunique() for *_, label in windows)
    assert QUERY_COLUMN not in ranker.features and "ctx_log_days_away" in ranker.features
    assert all(x.dtype == np.float32 for x in rows.x) and rows.n_rows == sum(len(label) for label in rows.y)
    assert 0 < ranker.validation_ndcg <= 1


def test_train_refuses_a_window_nobody_engaged_in(movielens):
    events, videos, vectors = movielens
    fit, label = rolling_time_splits(events, origins=(0.9,))[0]
    union, catalog = fitted(fit, videos, vectors)
    disliked = label.assign(event_type="dislike", rating=np.nan)
    with pytest.raises(ValueError, match="labels are all zero"):
        TwoStage.train(union, catalog, disliked)


def test_arrivals_cover_every_user_with_their_first_event():
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "video_id": ["x", "y", "x"],
            "event_type": "watch",
            "event_ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
        }
    )
    data = Interactions.from_events(events, weighting="binary")
    later = pd.DataFrame(
        {
            "user_id": ["b", "b", "zed"],
            "video_id": ["x", "y", "x"],
            "event_type": "watch",
            "event_ts": pd.to_datetime(["2026-02-05 20:00", "2026-02-01 09:00", "2026-02-02 00:00"], utc=True),
            "device": ["tv", "mobile", "tv"],
        }
    )
    default = pd.Timestamp("2026-01-31", tz="UTC")
    requests = Requests.arrivals(data, later, default)
    assert sorted(requests.user_rows.tolist()) == [0, 1, 2]  # "zed" is unknown to the model
    b = requests.subset(data.user_rows(pd.Series(["b"])))
    assert b.request_ts.iloc[0] == pd.Timestamp("2026-02-01 09:00", tz="UTC") and b.device.iloc[0] == "mobile"
    a = requests.subset(data.user_rows(pd.Series(["a"])))
    assert a.request_ts.iloc[0] == default and a.device.iloc[0] == "unknown"
    # Days away, from the model's data: "b" last acted on 2026-01-02.
    away = days_away(last_active(data), np.full(data.n_users, pd.Timestamp("2026-01-12", tz="UTC").timestamp()))
    assert away[data.user_rows(pd.Series(["b"]))[0]] == pytest.approx(np.log1p(10))
    assert away[data.user_rows(pd.Series(["c"]))[0]] == pytest.approx(np.log1p(9))
