import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract
from toy_data import assert_sequels_near, two_communities

from models.bpr import BPR
from models.interactions import Interactions


class TestBPR(RecommenderContract):
    model_class = BPR
    bad_params = [
        {"factors": 0},
        {"learning_rate": 0},
        {"learning_rate": -0.1},
        {"regularization": float("nan")},
        {"iterations": 0},
        {"seed": "42"},
    ]
    beats_popularity_by, held_out_k = 1.1, 10

    def make_model(self, videos):
        return BPR(factors=32, iterations=100)

    def held_out_model(self, videos):
        return BPR(factors=32, iterations=100)

    def test_bias_column_scores_but_is_not_a_taste_vector(self, fitted, data):
        interactions, _ = data
        # implicit appends the video bias as a factor and gives every user a constant 1 for it.
        assert fitted.item_factors_.shape == (interactions.n_videos, 33)
        np.testing.assert_array_equal(fitted.user_factors_[:, -1], 1.0)
        assert fitted.item_vectors().shape == (interactions.n_videos, 32)
        np.testing.assert_allclose(
            fitted.score(np.arange(3)), fitted.user_factors_[:3] @ fitted.item_factors_.T, rtol=1e-5
        )

    def test_sequels_are_similar(self, fitted, data):
        interactions, videos = data
        assert_sequels_near(fitted, interactions, videos)


def test_ranks_watched_above_unwatched():
    # BPR's objective: each user's watched videos above their unwatched ones (AUC near 1 on train).
    data = two_communities()
    model = BPR(factors=4, iterations=200, learning_rate=0.05).fit(data)
    scores = model.score(np.arange(data.n_users - 1))
    watched = data.matrix[: data.n_users - 1].toarray() > 0
    aucs = [
        (scores[u, watched[u]][:, None] > scores[u, ~watched[u]][None, :]).mean()
        for u in range(len(scores))
        if watched[u].any() and (~watched[u]).any()
    ]
    assert np.mean(aucs) > 0.9


def test_recommends_from_the_users_community():
    data = two_communities()
    ids, _ = BPR(factors=2, iterations=200).fit(data).recommend(np.array([data.n_users - 1]), k=3)
    assert set(ids[0]) <= set(range(1, 6))


def test_only_which_videos_were_watched_matters():
    data = two_communities()
    reweighted = Interactions(data.matrix * 7.5, data.user_ids, data.video_ids)
    a = BPR(factors=4, iterations=20).fit(data)
    b = BPR(factors=4, iterations=20).fit(reweighted)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)


def test_seed_fixes_the_factors():
    data = two_communities()
    a = BPR(factors=8, iterations=20, seed=7).fit(data)
    b = BPR(factors=8, iterations=20, seed=7).fit(data)
    c = BPR(factors=8, iterations=20, seed=8).fit(data)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert not np.array_equal(a.item_factors_, c.item_factors_)


def test_empty_matrix_is_refused():
    data = Interactions(sp.csr_matrix((3, 4), dtype=np.float32), np.array(list("abc")), np.array(list("wxyz")))
    with pytest.raises(ValueError, match="at least one interaction"):
        BPR().fit(data)
