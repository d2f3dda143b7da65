"""The split protocols on the real ml-latest-small ratings (plus tiny hand-made cases)."""

import numpy as np
import pandas as pd
import pytest
from movielens import movielens_frames

from models.interactions import Interactions
from models.protocols import (
    rating_triples,
    relevant_sets,
    rolling_time_splits,
    stratified_folds,
    stratified_split,
    time_cut,
    time_split,
    user_time_split,
)


@pytest.fixture(scope="module")
def events(ml_small) -> pd.DataFrame:
    events, _ = movielens_frames(ml_small)
    return events


def test_time_split_default_cutoff(events):
    train, test = time_split(events, test_fraction=0.2)
    assert train.event_ts.max() < test.event_ts.min(), "no test event at or before the last train event"
    # about 20% of events are after the quantile cutoff, fewer once cold users/videos are dropped
    after = len(events) - len(train)
    assert after / len(events) == pytest.approx(0.2, abs=0.01)
    assert 0 < len(test) <= after
    assert set(test.user_id) <= set(train.user_id)
    assert set(test.video_id) <= set(train.video_id)


def test_time_split_explicit_cutoff_and_cold_users_dropped(events):
    cutoff = pd.Timestamp("2015-01-01", tz="UTC")
    train, test = time_split(events, cutoff=cutoff)
    assert (train.event_ts < cutoff).all() and (test.event_ts >= cutoff).all()
    raw_after = events[events.event_ts >= cutoff]
    assert raw_after.user_id.nunique() > test.user_id.nunique(), "users who joined after the cutoff are cold"
    # a naive cutoff means UTC
    naive_train, _ = time_split(events, cutoff=pd.Timestamp("2015-01-01"))
    assert len(naive_train) == len(train)


def test_time_split_rejects_bad_fraction(events):
    with pytest.raises(ValueError, match="test_fraction"):
        time_split(events, test_fraction=1.0)
    with pytest.raises(ValueError, match="lack column"):
        time_split(events.drop(columns="event_ts"))


def test_stratified_split_ratio_per_user(events):
    train, test = stratified_split(events, ratio=0.75, seed=42)
    assert len(train) + len(test) == len(events)  # ratings are one event per pair: nothing lost
    n_train = train.groupby("user_id").size()
    n_all = events.groupby("user_id").size()
    n_train = n_train.reindex(n_all.index, fill_value=0)
    # rank r of n goes to train when r / n <= 0.75, i.e. floor(0.75 n) pairs per user
    assert (n_train == np.floor(0.75 * n_all + 1e-9).astype(int)).all()
    assert (np.abs(n_train / n_all - 0.75) < 1 / n_all).all()


def test_stratified_split_disjoint_pairs_and_deterministic(events):
    train, test = stratified_split(events, seed=7)
    train_pairs = set(zip(train.user_id, train.video_id, strict=True))
    test_pairs = set(zip(test.user_id, test.video_id, strict=True))
    assert not train_pairs & test_pairs
    again_train, _ = stratified_split(events, seed=7)
    pd.testing.assert_frame_equal(train, again_train)
    other_train, _ = stratified_split(events, seed=8)
    assert not train.index.equals(other_train.index), "a different seed draws a different split"


def test_stratified_split_keeps_a_pair_together_and_filters_small_users():
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    rows = [("a", f"v{i}", "rating") for i in range(8)] + [
        ("a", "v0", "tag"),
        ("a", None, "search"),
        ("b", "v1", "rating"),
    ]
    ev = pd.DataFrame(rows, columns=["user_id", "video_id", "event_type"]).assign(event_ts=ts, rating=3.0)
    train, test = stratified_split(ev, ratio=0.75, seed=1, min_interactions=2)
    assert "b" not in set(train.user_id) | set(test.user_id), "user b has 1 pair < min_interactions"
    v0_sides = {side for side, df in (("train", train), ("test", test)) if "v0" in set(df.video_id)}
    assert len(v0_sides) == 1, "the rating and the tag of one pair stay on the same side"
    assert (train.event_type == "search").sum() == 1, "events without a video stay in train"
    assert train.video_id.nunique() == 6 and test.video_id.nunique() == 2  # floor(0.75 * 8) = 6
    with pytest.raises(ValueError, match="ratio"):
        stratified_split(ev, ratio=1.5)


def test_relevant_sets_map_onto_train_indices(events):
    train, test = time_split(events, test_fraction=0.2)
    data = Interactions.from_events(train, weighting="binary")
    truth = relevant_sets(test, data)
    assert len(truth) == data.n_users
    n_pairs = sum(len(t) for t in truth)
    assert n_pairs == len(test.drop_duplicates(["user_id", "video_id"]))
    some_user = next(u for u, t in enumerate(truth) if t)
    expected = set(data.video_rows(test[test.user_id == data.user_ids[some_user]].video_id))
    assert truth[some_user] == expected
    liked = relevant_sets(test, data, min_rating=4.0)
    assert sum(len(t) for t in liked) == test[test.rating >= 4].drop_duplicates(["user_id", "video_id"]).shape[0]


def test_relevant_sets_exclude_seen_and_negative_events():
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    train = pd.DataFrame(
        {"user_id": ["u", "u"], "video_id": ["a", "b"], "event_type": "watch", "event_ts": ts, "rating": np.nan}
    )
    data = Interactions.from_events(train, catalog=np.array(["a", "b", "c", "d", "e"]), weighting="binary")
    test = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u", "stranger"],
            "video_id": ["a", "c", "d", "e", "c"],  # a: re-watch of a train pair; d: impression; e: dislike
            "event_type": ["watch", "like", "impression", "dislike", "watch"],
            "event_ts": ts, "rating": np.nan,
        }
    )  # fmt: skip
    u = data.user_rows(["u"])[0]
    assert relevant_sets(test, data)[u] == {data.video_rows(["c"])[0]}
    assert relevant_sets(test, data, exclude_seen=False)[u] == set(data.video_rows(["a", "c"]))


def test_rating_triples_keep_latest_rating(events):
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    train = pd.DataFrame({"user_id": ["u"], "video_id": ["a"], "event_type": "rating", "event_ts": ts, "rating": 4.0})
    data = Interactions.from_events(train, catalog=np.array(["a", "b"]))
    test = pd.DataFrame(
        {
            "user_id": ["u", "u", "x"], "video_id": ["b", "b", "b"], "event_type": "rating",
            "event_ts": [ts + pd.Timedelta(days=2), ts + pd.Timedelta(days=1), ts], "rating": [2.0, 5.0, 1.0],
        }
    )  # fmt: skip
    users, videos, ratings = rating_triples(test, data)
    assert users.tolist() == [0] and videos.tolist() == [data.video_rows(["b"])[0]] and ratings.tolist() == [2.0]


def test_rolling_time_splits_train_on_the_past_of_each_origin(events):
    windows = rolling_time_splits(events, origins=(0.5, 0.7, 0.9))
    assert len(windows) == 3
    sizes = [len(train) for train, _ in windows]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3  # later origins see more history
    starts = [test.event_ts.min() for _, test in windows]
    assert starts == sorted(starts)
    for (train, test), q in zip(windows, (0.5, 0.7, 0.9), strict=True):
        assert train.event_ts.max() < test.event_ts.min()
        assert len(train) / len(events) == pytest.approx(q, abs=0.01)
        assert set(test.user_id) <= set(train.user_id)


def test_rolling_time_splits_reject_bad_origins(events):
    for origins in ((), (0.0, 0.5), (0.5, 1.2)):
        with pytest.raises(ValueError, match="origins must be quantiles"):
            rolling_time_splits(events, origins=origins)


def judged_users(train: pd.DataFrame, test: pd.DataFrame) -> int:
    return len(set(test.user_id) & set(train.user_id))


def test_time_cut_judges_min_test_users_where_the_data_allows(events):
    # ml-latest-small: users rate in bursts, so no cut has many users on both sides; the cut
    # then judges as many as any cut does, and is never later than the default quantile's.
    default = events.event_ts.quantile(0.8)
    cut = time_cut(events, test_fraction=0.2, min_test_users=200)
    assert cut <= default
    best = judged_users(*time_split(events, cutoff=cut))
    for q in (0.5, 0.6, 0.7, 0.75, 0.8):
        assert best >= judged_users(*time_split(events, cutoff=events.event_ts.quantile(q)))
    # A reachable target: the latest cut that judges it.
    few = time_cut(events, test_fraction=0.2, min_test_users=20)
    assert few == default and judged_users(*time_split(events, cutoff=few)) >= 20
    # More users than one cut can give (every user spanning some cut): a dense synthetic case.
    rng = np.random.default_rng(0)
    dense = pd.DataFrame(
        {
            "user_id": rng.integers(0, 400, 20_000).astype(str),
            "video_id": rng.integers(0, 300, 20_000).astype(str),
            "event_ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, 30, 20_000), unit="D"),
            "event_type": "rating",
        }
    )
    assert judged_users(*time_split(dense, cutoff=time_cut(dense, min_test_users=300))) >= 300


def test_user_time_split_holds_out_each_users_latest_videos(events):
    train, test = user_time_split(events, n=5)
    per_user = test.groupby("user_id").video_id.nunique()
    assert len(per_user) == events.user_id.nunique() and (per_user == 5).all()  # every user is judged
    latest_train = train.groupby("user_id").event_ts.max()
    earliest_test = test.groupby("user_id").event_ts.min()
    assert (latest_train.reindex(earliest_test.index) <= earliest_test).all()
    pairs = lambda f: set(zip(f.user_id, f.video_id, strict=True))  # noqa: E731
    assert not pairs(train) & pairs(test) and len(train) + len(test) == len(events)
    # A user with two relevant videos keeps one; with one, keeps it (nothing to judge).
    tiny = pd.DataFrame(
        {"user_id": ["a", "a", "b"], "video_id": ["1", "2", "3"], "event_type": "rating",
         "event_ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-01"], utc=True)}
    )  # fmt: skip
    tiny_train, tiny_test = user_time_split(tiny, n=5)
    assert list(tiny_test.video_id) == ["2"] and sorted(tiny_train.video_id) == ["1", "3"]
    with pytest.raises(ValueError, match="n must be at least 1"):
        user_time_split(events, n=0)


def test_stratified_folds_label_every_pair_once_with_generators_that_never_saw_it(events):
    windows = stratified_folds(events, n_folds=4, seed=1)
    pairs = lambda f: set(zip(f.user_id, f.video_id, strict=True))  # noqa: E731
    labels = [pairs(label) for _, label in windows]
    for (fit, label), labelled in zip(windows, labels, strict=True):
        assert not pairs(fit) & labelled and len(fit) + len(label) == len(events)
    assert set().union(*labels) == pairs(events) and sum(map(len, labels)) == len(pairs(events))
    # Folds are dealt per user: each user's pairs split about evenly.
    sizes = pd.DataFrame([(u, f) for f, (_, label) in enumerate(windows) for u in label.user_id], columns=["u", "f"])
    per_user = sizes.groupby(["u", "f"]).size().unstack(fill_value=0)
    assert (per_user.max(axis=1) - per_user.min(axis=1)).max() <= 1
    assert [len(label) for _, label in stratified_folds(events, 4, seed=1)] == [len(label) for _, label in windows]
    with pytest.raises(ValueError, match="n_folds must be at least 2"):
        stratified_folds(events, n_folds=1)
