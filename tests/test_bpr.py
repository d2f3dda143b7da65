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
        {"batch_size": 0},
        {"seed": "42"},
    ]
    beats_popularity_by, held_out_k = 1.1, 10

    def make_model(self, videos):
        return BPR(factors=32, iterations=100)

    def held_out_model(self, videos):
        return BPR(factors=32, iterations=100)

    def test_scores_are_factors_plus_the_video_bias(self, fitted, data):
        interactions, _ = data
        assert fitted.item_factors_.shape == (interactions.n_videos, 32)
        assert fitted.item_vectors() is fitted.item_factors_  # taste only, without the bias
        np.testing.assert_allclose(
            fitted.score(np.arange(3)), fitted.user_factors_[:3] @ fitted.item_factors_.T + fitted.item_bias_, rtol=1e-5
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
    ids, _ = BPR(factors=2, iterations=200, learning_rate=0.05).fit(data).recommend(np.array([data.n_users - 1]), k=3)
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


def test_a_user_without_history_is_scored_by_the_bias_alone():
    data = two_communities()
    dense = data.matrix.toarray()
    dense[0] = 0
    blank = Interactions(sp.csr_matrix(dense), data.user_ids, data.video_ids)
    model = BPR(factors=4, iterations=20).fit(blank)
    np.testing.assert_array_equal(model.user_factors_[0], 0.0)
    np.testing.assert_allclose(model.score(np.array([0]))[0], model.item_bias_)


def test_losses_fall():
    model = BPR(factors=4, iterations=30, learning_rate=0.05).fit(two_communities())
    assert len(model.losses) == 30
    assert model.losses[-1] < 0.5 * model.losses[0]


def test_empty_matrix_is_refused():
    data = Interactions(sp.csr_matrix((3, 4), dtype=np.float32), np.array(list("abc")), np.array(list("wxyz")))
    with pytest.raises(ValueError, match="at least one interaction"):
        BPR().fit(data)
