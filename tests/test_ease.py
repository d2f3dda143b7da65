import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract

from models.ease import EASE, ease_weights, spd_inverse
from models.interactions import Interactions


class TestEASE(RecommenderContract):
    model_class = EASE
    bad_params = [{"l2": 0}, {"l2": -5.0}, {"l2": float("nan")}, {"l2": "big"}, {"max_items": 0}, {"max_items": 2.5}]
    beats_popularity_by, held_out_k = 1.5, 10

    def make_model(self, videos):
        return EASE(l2=100.0)

    def held_out_model(self, videos):
        return EASE(l2=100.0)

    def test_only_videos_with_interactions_take_part(self, fitted, data):
        interactions, _ = data
        active = interactions.matrix.getnnz(axis=0) > 0
        assert fitted.weights_.shape == (active.sum(), active.sum())
        assert active.sum() < interactions.n_videos  # the slice's catalog is the full movie list
        scores = fitted.score(np.arange(10))
        assert scores.shape == (10, interactions.n_videos)
        assert (scores[:, ~active] == 0).all()

    def test_max_items_refused_when_exact(self, data):
        interactions, _ = data
        with pytest.raises(ValueError, match=r"max_items=100 .*drop 'ease'"):
            EASE(max_items=100, approximate=False).fit(interactions)

    def test_above_max_items_fits_the_most_engaged_videos(self, data):
        interactions, _ = data
        model = EASE(l2=100.0, max_items=100).fit(interactions)
        support = interactions.matrix.getnnz(axis=0)
        assert model.weights_.shape == (100, 100)
        assert support[model.active_items_].min() >= np.sort(support)[-100]  # the 100 most-engaged
        scores = model.score(np.arange(20))
        outside = np.setdiff1d(np.arange(interactions.n_videos), model.active_items_)
        assert (scores[:, outside] == 0).all() and (scores[:, model.active_items_] != 0).any()
        exact = EASE(l2=100.0).fit(interactions)
        # the same closed form on the kept videos' columns: weights equal the exact fit's on them
        sub = ease_weights(interactions.matrix[:, model.active_items_], 100.0)
        np.testing.assert_allclose(model.weights_, sub, rtol=1e-5, atol=1e-6)
        assert exact.weights_.shape[0] > 100


def random_binary(n_users: int = 40, n_items: int = 15, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


def test_weights_match_steck_reference_and_optimality():
    x = random_binary()
    l2 = 7.0
    ours = ease_weights(x, l2).astype(np.float64)
    # Steck's reference code, verbatim in numpy.
    gram = (x.T @ x).toarray().astype(np.float64)
    g = gram + l2 * np.eye(gram.shape[0])
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    np.testing.assert_allclose(ours, b, atol=1e-6)
    # Constrained ridge optimum: the gradient (G + l2 I) B - G is zero off the diagonal.
    gradient = g @ ours - gram
    off_diagonal = gradient - np.diag(np.diag(gradient))
    assert np.abs(off_diagonal).max() < 1e-4
    assert (np.diag(ours) == 0).all()


def test_spd_inverse_inverts():
    a = np.random.default_rng(1).normal(size=(20, 20))
    spd = a @ a.T + 20 * np.eye(20)
    np.testing.assert_allclose(spd_inverse(spd) @ spd, np.eye(20), atol=1e-10)
    with pytest.raises(np.linalg.LinAlgError):
        spd_inverse(-np.eye(3))


def test_co_watched_video_ranks_first():
    # Everyone who watched item 0 also watched item 1; item 2 is more popular but unrelated.
    rows = [[1, 1, 0, 0]] * 10 + [[0, 0, 1, 1]] * 15 + [[1, 0, 0, 0]]
    matrix = sp.csr_matrix(np.array(rows, dtype=np.float32))
    data = Interactions(matrix, np.array([f"u{i}" for i in range(len(rows))]), np.array(["a", "b", "c", "d"]))
    ids, _ = EASE(l2=1.0).fit(data).recommend(np.array([len(rows) - 1]), k=1)
    assert data.video_ids[ids[0, 0]] == "b"
