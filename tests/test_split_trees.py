"""SplitTrees: the ranker's trees split by per-request features give the whole booster's margin.

Real XGBoost rankers on a seeded learning-to-rank problem (the ranker's own objective); the
served champion's split is checked against the offline system in tests/test_serving.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from serving.split_trees import SplitTrees

N_FEATURES = 12
PER_REQUEST = [9, 10, 11]  # e.g. hour, device, days away: one value for all rows of a request


def ranking_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    # Relevance depends on item columns and on their interaction with the request's columns.
    signal = np.nan_to_num(x[:, 0] + 0.8 * x[:, 1] + 0.6 * x[:, 2] + 0.5 * x[:, 3] * (x[:, 9] > 0.5))
    labels = np.digitize(signal, [0.0, 1.0, 2.0])
    return x, labels, np.repeat(np.arange(150), 20)


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    x, y, qid = ranking_problem()
    model = xgb.XGBRanker(n_estimators=60, max_depth=3, objective="rank:ndcg", random_state=7, n_jobs=1)
    return model.fit(x, y, qid=qid).get_booster()


def request_rows(seed: int, n: int = 300) -> np.ndarray:
    """One request's candidates: item columns vary per row, request columns are one value each."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[:, PER_REQUEST] = rng.normal(size=len(PER_REQUEST)).astype(np.float32)
    return x


def whole(booster: xgb.Booster, x: np.ndarray, iteration_range=(0, 0)) -> np.ndarray:
    return booster.inplace_predict(x, iteration_range=iteration_range, missing=np.nan, validate_features=False)


def test_static_plus_per_request_trees_is_the_whole_margin(booster):
    split = SplitTrees.of(booster, (0, 0), PER_REQUEST, request_rows(0))
    assert split is not None
    assert split.n_static > 0 and split.n_per_request > 0
    assert split.n_static + split.n_per_request == booster.num_boosted_rounds()
    for seed in range(1, 6):
        x = request_rows(seed)
        np.testing.assert_allclose(split.margin(split.static_margin(x), x), whole(booster, x), atol=1e-5)


def test_an_iteration_range_keeps_only_its_trees(booster):
    split = SplitTrees.of(booster, (0, 40), PER_REQUEST, request_rows(0))
    assert split.n_static + split.n_per_request == 40
    x = request_rows(3)
    np.testing.assert_allclose(split.margin(split.static_margin(x), x), whole(booster, x, (0, 40)), atol=1e-5)


def test_equal_signatures_take_the_same_leaves_and_different_ones_can_differ(booster):
    """Moving the request's values within the intervals between the trees' thresholds leaves the
    margin unchanged, bit for bit; crossing a threshold is seen by the signature."""
    split = SplitTrees.of(booster, (0, 0), PER_REQUEST, request_rows(0))
    x = request_rows(7)
    static = split.static_margin(x)
    base = split.margin(static, x)
    moved_within, crossed = 0, 0
    for column, thresholds in zip(split.columns, split.thresholds, strict=True):
        value = float(x[0, column])
        upper = min([t for t in thresholds if t > value], default=value + 1.0)
        nudged = x.copy()
        nudged[:, column] = np.nextafter(np.float32(upper), np.float32(-np.inf))  # just below the next threshold
        assert split.signature(nudged[0]) == split.signature(x[0])
        np.testing.assert_array_equal(split.margin(static, nudged), base)
        moved_within += 1
        if thresholds:
            beyond = x.copy()
            beyond[:, column] = np.float32(upper)  # on the threshold: the other branch
            crossed += split.signature(beyond[0]) != split.signature(x[0])
    assert moved_within == len(PER_REQUEST) and crossed >= 1
    missing = x.copy()
    missing[:, PER_REQUEST[0]] = np.nan
    assert split.signature(missing[0]) != split.signature(x[0])


def test_a_booster_whose_trees_all_read_the_request_or_whose_output_is_transformed_is_not_split(booster):
    assert SplitTrees.of(booster, (0, 0), list(range(N_FEATURES)), request_rows(0)) is None
    x, y, _ = ranking_problem()
    logistic = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, (y > 0).astype(int)).get_booster()
    assert SplitTrees.of(logistic, (0, 0), PER_REQUEST, request_rows(0)) is None  # value != margin
