"""The XGBoost ranker: labels, context, determinism, and that ranking beats its inputs on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.interactions import Interactions
from models.ranker import (
    TREND_FEATURES,
    RankerConfig,
    ScoreBlend,
    context_features,
    feature_columns,
    grade_labels,
    standardize_within,
    train_ranker,
    trend_features,
)


def test_grade_labels_order_engagement():
    frame = pd.DataFrame(
        {"user_id": ["u"] * 6, "video_id": ["ignored", "watched", "completed", "liked", "shared", "disliked"]}
    )
    events = pd.DataFrame(
        {
            "user_id": ["u"] * 6,
            "video_id": ["watched", "completed", "liked", "liked", "shared", "disliked"],
            "event_type": ["watch", "watch", "watch", "like", "share", "dislike"],
            "rating": np.nan,
            "completion": [0.3, 0.95, 0.5, np.nan, np.nan, np.nan],
        }
    )
    assert grade_labels(frame, events).tolist() == [0, 1, 2, 2, 3, 0]


def test_grade_labels_from_movielens_ratings():
    frame = pd.DataFrame({"user_id": ["u"] * 4, "video_id": list("abcd")})
    events = pd.DataFrame(
        {"user_id": ["u"] * 3, "video_id": list("abc"), "event_type": "rating", "rating": [1.5, 3.0, 5.0]}
    )
    assert grade_labels(frame, events).tolist() == [1, 1, 3, 0]
    assert grade_labels(frame, events, "watch_time").tolist() == pytest.approx([0.3, 0.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="unknown label scheme"):
        grade_labels(frame, events, "clicks")


def test_context_features():
    ts = pd.Series(pd.to_datetime(["2026-01-05T21:30:00Z", "2026-01-10T08:00:00Z"]))
    ctx = context_features(ts, pd.Series(["tv", None]))
    assert ctx["ctx_hour"].tolist() == [21, 8]
    assert ctx["ctx_dow"].tolist() == [0, 5]  # Monday, Saturday
    assert ctx["ctx_device_tv"].tolist() == [1, 0] and ctx["ctx_device_unknown"].tolist() == [0, 1]


def synthetic_ranking(seed: int, n_users: int = 200, per_user: int = 30) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    frame = pd.DataFrame(
        {
            "user_id": np.repeat([f"u{i}" for i in range(n_users)], per_user),
            "video_id": [f"v{i}" for i in range(n)],
            "signal": rng.normal(size=n),
            "noise": rng.normal(size=n),
        }
    )
    labels = (frame["signal"] + 0.3 * rng.normal(size=n) > 1.0).astype(float).to_numpy()
    return frame, labels


def test_ranker_learns_the_signal_and_is_deterministic():
    frame, labels = synthetic_ranking(0)
    config = RankerConfig(n_estimators=60, seed=3)
    model = train_ranker(frame, labels, config)
    again = train_ranker(frame, labels, config)
    np.testing.assert_array_equal(model.predict(frame), again.predict(frame))
    assert model.features == ["signal", "noise"]
    assert model.importance().index[0] == "signal"
    test_frame, test_labels = synthetic_ranking(1)
    scores = model.predict(test_frame)
    assert np.corrcoef(scores, test_labels)[0, 1] > 0.5
    # Invariance: the ranking does not depend on the order the rows arrive in.
    shuffled = test_frame.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(model.predict(shuffled), scores[shuffled.index.to_numpy()])


def test_trees_are_chosen_by_cross_validation_then_refit_on_every_query():
    frame, labels = synthetic_ranking(0)
    model = train_ranker(
        frame, labels, RankerConfig(n_estimators=300, learning_rate=0.3, early_stopping_rounds=10, seed=1)
    )
    trees = model.booster.get_booster().num_boosted_rounds()
    assert trees == model.best_iteration + 1 < 300  # stopped early, and predict uses every tree it kept
    assert 0.5 < model.validation_ndcg <= 1.0  # the mean held-out nDCG@10 of the folds
    # Another seed draws other folds but finds the same signal.
    other = train_ranker(
        frame, labels, RankerConfig(n_estimators=300, learning_rate=0.3, early_stopping_rounds=10, seed=2)
    )
    test_frame, test_labels = synthetic_ranking(1)
    assert np.corrcoef(other.predict(test_frame), test_labels)[0, 1] > 0.5
    # Without early stopping: every tree, no validation.
    full = train_ranker(frame, labels, RankerConfig(n_estimators=30, early_stopping_rounds=None))
    assert full.booster.get_booster().num_boosted_rounds() == 30 and np.isnan(full.validation_ndcg)


def test_a_blend_adds_a_generators_z_score_over_each_users_candidates():
    frame, labels = synthetic_ranking(0, n_users=60)
    frame = frame.rename(columns={"noise": "z_other"})
    config = RankerConfig(n_estimators=20, early_stopping_rounds=None, blend_feature="z_other", blend_weight=0.5)
    model = train_ranker(frame, labels, config)
    assert model.blend == ScoreBlend("z_other", 0.5)
    scores = model.predict(frame)
    margin = model.booster.predict(frame[model.features].astype(np.float32))
    for user in ("u0", "u7"):
        rows = (frame["user_id"] == user).to_numpy()
        expected = standardize_within(margin[rows], None) + 0.5 * standardize_within(frame["z_other"][rows], None)
        np.testing.assert_allclose(scores[rows], expected, rtol=1e-5, atol=1e-5)
        # One user's scores do not depend on who else is in the frame (serving ranks one user).
        np.testing.assert_allclose(model.predict(frame[rows]), scores[rows], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="blend_feature 'z_missing' is not one of its features.*z_other"):
        train_ranker(frame, labels, RankerConfig(n_estimators=5, blend_feature="z_missing", blend_weight=1.0))


def test_standardize_within_groups():
    values = np.array([1.0, 2.0, 3.0, 5.0, 5.0, np.nan])
    out = standardize_within(values, np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(out, [-1.2247449, 0.0, 1.2247449, 0.0, 0.0, 0.0], atol=1e-6)  # constant: 0, NaN: 0


def test_query_id_groups_rows_instead_of_user_id():
    """A user in two label windows is two queries: labels of one window do not rank the other's rows."""
    frame, labels = synthetic_ranking(0, n_users=40)
    one_query_per_user = train_ranker(frame, labels, RankerConfig(n_estimators=20, early_stopping_rounds=None))
    windows = frame.assign(query_id=frame["user_id"] + "|" + (np.arange(len(frame)) % 2).astype(str))
    two_per_user = train_ranker(windows, labels, RankerConfig(n_estimators=20, early_stopping_rounds=None))
    assert two_per_user.features == one_query_per_user.features == ["signal", "noise"]  # query_id is no feature
    assert not np.array_equal(two_per_user.predict(frame), one_query_per_user.predict(frame))


def test_trend_features_are_activity_shares_by_horizon():
    now = pd.Timestamp("2026-06-01", tz="UTC")
    rows = [(f"u{i}", "classic", now - pd.Timedelta(days=300)) for i in range(40)]
    rows += [(f"u{i}", "hit", now - pd.Timedelta(days=2)) for i in range(5)]
    rows += [("u0", "untouched-since", now - pd.Timedelta(days=3000))]
    events = pd.DataFrame(rows, columns=["user_id", "video_id", "event_ts"]).assign(event_type="watch", rating=np.nan)
    data = Interactions.from_events(events, weighting="binary")
    trend = pd.DataFrame(trend_features(data), index=data.video_ids, columns=list(TREND_FEATURES))
    assert trend.loc["hit", "trend_7d"] > trend.loc["classic", "trend_7d"]  # this week's hit
    assert trend.loc["classic", "trend_365d"] > trend.loc["hit", "trend_365d"]  # this year's favourite
    assert (trend.loc["untouched-since"] < trend.loc["hit"]).all()
    # Shares: the same activity twice over (a bigger fit of the same mix) gives the same features.
    doubled = pd.concat([events, events.assign(user_id=events["user_id"] + "b")])
    again = trend_features(Interactions.from_events(doubled, weighting="binary"))
    np.testing.assert_allclose(again, trend.to_numpy(), atol=1e-9)


def test_feature_columns_skip_ids_and_labels():
    frame = pd.DataFrame(
        {
            "user_id": ["a"],
            "video_id": ["b"],
            "user_row": [0],
            "label": [1.0],
            "x": [1.0],
            "flag": [True],
            "s": ["t"],
            "query_id": ["w|a"],
        }
    )
    assert feature_columns(frame) == ["x", "flag"]


def test_missing_feature_column_is_named():
    frame, labels = synthetic_ranking(0, n_users=20)
    model = train_ranker(frame, labels, RankerConfig(n_estimators=5))
    with pytest.raises(KeyError, match="noise"):
        model.predict(frame.drop(columns=["noise"]))
