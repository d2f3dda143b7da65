import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract
from toy_data import assert_sequels_near, two_communities

from models.als import ALS, confidence_matrix
from models.interactions import Interactions


class TestALS(RecommenderContract):
    model_class = ALS
    bad_params = [
        {"factors": 0},
        {"factors": 8.0},
        {"iterations": 0},
        {"regularization": -0.1},
        {"alpha": float("inf")},
        {"alpha": -1},
        {"seed": -1},
        {"seed": 1.5},
    ]
    beats_popularity_by, held_out_k = 1.2, 10

    def make_model(self, videos):
        return ALS(factors=32, iterations=10)

    def held_out_model(self, videos):
        return ALS(factors=32, iterations=10)

    def test_scores_are_factor_products(self, fitted, data):
        interactions, _ = data
        assert fitted.user_factors_.shape == (interactions.n_users, 32)
        assert fitted.item_vectors().shape == (interactions.n_videos, 32)
        np.testing.assert_allclose(
            fitted.score(np.arange(3)), fitted.user_factors_[:3] @ fitted.item_factors_.T, rtol=1e-5
        )

    def test_sequels_are_similar(self, fitted, data):
        interactions, videos = data
        assert_sequels_near(fitted, interactions, videos)


def test_confidence_is_one_plus_alpha_weight():
    weights = sp.csr_matrix(np.array([[0, 2.0, 0.5], [1.0, 0, 0]], dtype=np.float32))
    conf = confidence_matrix(weights, alpha=10.0)
    np.testing.assert_allclose(conf.toarray(), [[0, 21, 6], [11, 0, 0]])
    assert conf.dtype == np.float32
    assert weights[0, 1] == 2.0, "the caller's matrix is not modified"
    with pytest.raises(ValueError, match="non-negative"):
        confidence_matrix(sp.csr_matrix(np.array([[-1.0, 1.0]])), alpha=1.0)


def test_recommends_from_the_users_community():
    data = two_communities()
    ids, _ = ALS(factors=2, iterations=10).fit(data).recommend(np.array([data.n_users - 1]), k=3)
    assert set(ids[0]) <= set(range(1, 6))


def test_confidence_follows_interaction_weights():
    # The last user watched video 0 (first community) intensely and video 6 (second) barely:
    # with confidence 1 + alpha * w the first community wins, with equal weights it would be a toss.
    data = two_communities()
    matrix = data.matrix.tolil()
    matrix[data.n_users - 1, 0] = 5.0
    matrix[data.n_users - 1, 6] = 0.1
    data = Interactions(matrix.tocsr(), data.user_ids, data.video_ids)
    ids, _ = ALS(factors=2, iterations=10, alpha=20.0).fit(data).recommend(np.array([data.n_users - 1]), k=3)
    assert set(ids[0]) <= set(range(1, 6))


def test_seed_fixes_the_factors():
    data = two_communities()
    a = ALS(factors=8, iterations=5, seed=7).fit(data)
    b = ALS(factors=8, iterations=5, seed=7).fit(data)
    c = ALS(factors=8, iterations=5, seed=8).fit(data)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert not np.array_equal(a.item_factors_, c.item_factors_)
