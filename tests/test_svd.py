import numpy as np
import pytest
import scipy.sparse as sp
from movielens import movielens_frames
from recommender_contract import RecommenderContract, small_movielens

from models.interactions import Interactions
from models.metrics import rmse
from models.svd import SVD, batch_size


def hold_out_ratings(data: Interactions, fraction: float = 0.1, seed: int = 0):
    """(train interactions without the held-out ratings, (users, videos, ratings) held out)."""
    coo = data.ratings.tocoo()
    held = np.random.default_rng(seed).random(coo.nnz) < fraction
    kept = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=coo.shape)
    train = Interactions(data.matrix, data.user_ids, data.video_ids, ratings=kept)
    return train, (coo.row[held], coo.col[held], coo.data[held].astype(np.float64))


class TestSVD(RecommenderContract):
    model_class = SVD
    bad_params = [
        {"factors": 0},
        {"epochs": 0},
        {"lr": 0},
        {"lr": -0.01},
        {"reg": -1},
        {"reg": float("inf")},
        {"seed": None},
    ]

    def make_model(self, videos):
        return SVD(factors=50, epochs=20)

    def test_beats_the_global_mean_on_held_out_ratings(self, data):
        train, (users, videos, truth) = hold_out_ratings(data[0])
        model = SVD(factors=50, epochs=20).fit(train)
        predicted = model.predict(users, videos)
        model_rmse = rmse(truth, predicted)
        baseline_rmse = rmse(truth, np.full(len(truth), train.ratings.data.mean()))
        assert model_rmse < 0.95 * baseline_rmse, f"svd rmse {model_rmse:.3f} vs global mean {baseline_rmse:.3f}"
        assert predicted.min() >= 0.5 and predicted.max() <= 5.0

    def test_score_is_the_unclipped_prediction_for_the_catalog(self, fitted, data):
        interactions, _ = data
        scores = fitted.score(np.array([0, 1]))
        assert scores.shape == (2, interactions.n_videos)
        videos = np.arange(interactions.n_videos)
        raw = fitted._raw(np.zeros_like(videos), videos)
        np.testing.assert_allclose(scores[0], raw, rtol=1e-5)
        np.testing.assert_allclose(fitted.predict(np.zeros_like(videos), videos), np.clip(raw, 0.5, 5.0), rtol=1e-5)

    def test_unrated_videos_predict_mean_plus_user_bias(self, fitted, data):
        interactions, _ = data
        unrated = np.flatnonzero(interactions.ratings.getnnz(axis=0) == 0)[:5]
        expected = fitted.global_mean_ + fitted.user_bias_[3]
        np.testing.assert_allclose(fitted.predict(np.full(5, 3), unrated), np.clip(expected, 0.5, 5.0))


def toy_ratings(rows: list[tuple[int, int, float]], n_users: int, n_videos: int) -> Interactions:
    users, videos, values = (np.array(col) for col in zip(*rows, strict=False))
    ratings = sp.csr_matrix((values.astype(np.float32), (users, videos)), shape=(n_users, n_videos))
    matrix = ratings.copy()
    matrix.data[:] = 1.0
    return Interactions(matrix, np.arange(n_users).astype(str), np.arange(n_videos).astype(str), ratings=ratings)


def test_learns_that_a_loved_video_beats_a_hated_one():
    # Video 0 is rated 5 by everyone who saw it, video 1 is rated 1; user 0 has seen neither.
    rows = [(u, 0, 5.0) for u in range(1, 30)] + [(u, 1, 1.0) for u in range(1, 30)]
    rows += [(0, v, 3.0) for v in range(2, 6)] + [(u, 2 + u % 4, 3.0) for u in range(1, 30)]
    data = toy_ratings(rows, 30, 6)
    model = SVD(factors=4, epochs=60, lr=0.01).fit(data)
    loved, hated = model.predict(np.array([0, 0]), np.array([0, 1]))
    assert loved > 4.0 and hated < 2.0
    ids, _ = model.recommend(np.array([0]), k=1)
    assert ids[0, 0] == 0


def test_generous_users_get_higher_predictions():
    rng = np.random.default_rng(0)
    rows = []
    for user in range(40):
        offset = 1.0 if user < 20 else -1.0
        for video in rng.choice(30, size=15, replace=False):
            rows.append((user, int(video), float(np.clip(3.0 + offset + rng.normal(0, 0.3), 0.5, 5.0))))
    model = SVD(factors=4, epochs=40).fit(toy_ratings(rows, 40, 30))
    assert model.user_bias_[:20].min() > model.user_bias_[20:].max()


def test_unknown_rows_fall_back_to_known_biases():
    rows = [(u, v, float(1 + (u + v) % 5)) for u in range(10) for v in range(8)]
    model = SVD(factors=3, epochs=5).fit(toy_ratings(rows, 10, 8))
    both_unknown, unknown_user = model.predict(np.array([-1, -1]), np.array([-1, 2]))
    assert both_unknown == pytest.approx(model.global_mean_)
    assert unknown_user == pytest.approx(model.global_mean_ + model.item_bias_[2])
    with pytest.raises(ValueError, match="align"):
        model.predict(np.arange(3), np.arange(2))


def test_no_ratings_is_a_clear_error():
    matrix = sp.csr_matrix(np.eye(3, dtype=np.float32))
    ids = np.array(list("abc"))
    for ratings in (None, sp.csr_matrix((3, 3), dtype=np.float32)):
        with pytest.raises(ValueError, match="explicit ratings"):
            SVD().fit(Interactions(matrix, ids, ids, ratings=ratings))


def test_batch_size_keeps_the_busiest_row_stable():
    # One user holds half of 10,000 ratings: a batch may hold it only STEP_BUDGET / lr times.
    users = np.concatenate([np.zeros(5000, dtype=np.int64), np.arange(1, 5001)])
    videos = np.arange(10_000) % 700
    # Expected occurrences of that user in a batch of B: 0.5 * B; lr * 0.5 * B <= 0.5 -> B = 200.
    assert batch_size(users, videos, lr=0.005) == 200
    assert batch_size(np.arange(10_000), np.arange(10_000), lr=0.005) == 4096  # capped


def test_seed_fixes_the_model(ml_small):
    data, _ = small_movielens(ml_small)
    a = SVD(factors=10, epochs=3, seed=1).fit(data)
    b = SVD(factors=10, epochs=3, seed=1).fit(data)
    c = SVD(factors=10, epochs=3, seed=2).fit(data)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert not np.array_equal(a.item_factors_, c.item_factors_)


def test_predicts_held_out_ratings_of_all_of_small_movielens(ml_small):
    events, _ = movielens_frames(ml_small)
    data = Interactions.from_events(events, weighting="binary")
    train, (users, videos, truth) = hold_out_ratings(data)
    model = SVD().fit(train)
    # Surprise's SVD reaches about 0.87 here; the global mean about 1.04.
    assert rmse(truth, model.predict(users, videos)) < 0.9
