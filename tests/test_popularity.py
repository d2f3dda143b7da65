import numpy as np
import pandas as pd
from recommender_contract import RecommenderContract

from models.interactions import Interactions
from models.popularity import Popularity, Trending, decayed_counts


class TestPopularity(RecommenderContract):
    def make_model(self, videos):
        return Popularity()

    def test_most_watched_first(self, fitted, data):
        interactions, _ = data
        counts = np.asarray((interactions.matrix > 0).sum(axis=0)).ravel()
        ids, _ = fitted.recommend(np.array([0]), k=5, filter_seen=False)
        assert counts[ids[0, 0]] == counts.max()


class TestTrending(RecommenderContract):
    def make_model(self, videos):
        return Trending(half_life_days=30)


def test_trending_prefers_recent_over_old_popularity():
    now = pd.Timestamp("2026-06-01", tz="UTC")
    rows = [(f"u{i}", "old", now - pd.Timedelta(days=200)) for i in range(10)]
    rows += [(f"u{i}", "new", now - pd.Timedelta(days=1)) for i in range(4)]
    events = pd.DataFrame(rows, columns=["user_id", "video_id", "event_ts"]).assign(event_type="watch", rating=np.nan)
    data = Interactions.from_events(events, weighting="binary")
    trending_top = Trending(half_life_days=7).fit(data).recommend(np.array([0]), k=1, filter_seen=False)[0][0, 0]
    popular_top = Popularity().fit(data).recommend(np.array([0]), k=1, filter_seen=False)[0][0, 0]
    assert data.video_ids[trending_top] == "new"
    assert data.video_ids[popular_top] == "old"


def test_trending_ages_are_right_for_microsecond_timestamps():
    """The lake's parquet timestamps come back as datetime64[us]: ages must still be in real days."""
    now = pd.Timestamp("2026-06-01", tz="UTC")
    rows = [(f"u{i}", "old", now - pd.Timedelta(days=60)) for i in range(10)]
    rows += [(f"u{i}", "new", now - pd.Timedelta(days=1)) for i in range(4)]
    events = pd.DataFrame(rows, columns=["user_id", "video_id", "event_ts"]).assign(event_type="watch", rating=np.nan)
    events["event_ts"] = events["event_ts"].astype("datetime64[us, UTC]")
    data = Interactions.from_events(events, weighting="binary")
    assert data.timestamps.max() == int(now.timestamp()) - 86400  # epoch seconds, not a thousandth
    top = Trending(half_life_days=7).fit(data).recommend(np.array([0]), k=1, filter_seen=False)[0][0, 0]
    assert data.video_ids[top] == "new"  # 10 views 60 days ago weigh 10 * 0.5**(59/7) < 4


def test_decayed_counts_halve_per_half_life():
    now = pd.Timestamp("2026-06-01", tz="UTC")
    events = pd.DataFrame(
        [("a", "v", now), ("b", "v", now - pd.Timedelta(days=7)), ("c", "w", now - pd.Timedelta(days=14))],
        columns=["user_id", "video_id", "event_ts"],
    ).assign(event_type="watch", rating=np.nan)
    data = Interactions.from_events(events, weighting="binary")
    counts = dict(zip(data.video_ids, decayed_counts(data, half_life_days=7), strict=True))
    assert counts["v"] == 1.5 and counts["w"] == 0.25
