import numpy as np
import scipy.sparse as sp
import torch
from recommender_contract import RecommenderContract
from toy_data import two_clusters

from models.interactions import Interactions
from models.ncf import NCF
from models.negative_sampling import sample_unseen


class TestNCF(RecommenderContract):
    model_class = NCF
    bad_params = [
        {"factors": 0},
        {"mlp_dims": (15, 8)},
        {"mlp_dims": ()},
        {"dropout": 1.0},
        {"n_negatives": 0},
        {"lr": 0},
        {"l2": -1.0},
        {"epochs": 2.5},
    ]
    beats_popularity_by, held_out_k = 1.15, 20

    def make_model(self, videos):
        return NCF(factors=16, mlp_dims=(32, 16, 8), epochs=3, batch_size=512, seed=7)

    def held_out_model(self, videos):
        return NCF(factors=16, mlp_dims=(32, 16, 8), epochs=8, batch_size=512, seed=7)


def test_scoring_the_catalog_matches_the_pairwise_network():
    """score_all splits the first MLP layer into user and video parts; it must equal forward()."""
    data = two_clusters(n_users=12)
    model = NCF(factors=8, mlp_dims=(16, 8), dropout=0.3, epochs=2, batch_size=64).fit(data)
    users = np.arange(data.n_users)
    pairs_u, pairs_i = np.repeat(users, data.n_videos), np.tile(np.arange(data.n_videos), len(users))
    with torch.no_grad():
        pairwise = model.net(torch.from_numpy(pairs_u), torch.from_numpy(pairs_i)).numpy()
    np.testing.assert_allclose(model.score(users).ravel(), pairwise, rtol=1e-5, atol=1e-5)


def test_negatives_avoid_the_users_videos():
    data = two_clusters()
    users, items = data.matrix.nonzero()
    keys = np.sort(users.astype(np.int64) * data.n_videos + items)
    drawn_for = np.repeat(np.arange(data.n_users), 50)
    negatives = sample_unseen(drawn_for, data.n_videos, keys, np.random.default_rng(0))
    assert not np.asarray(data.matrix[drawn_for, negatives]).any()


def test_empty_users_and_unwatched_videos_do_not_crash():
    data = two_clusters(n_users=20)
    data = Interactions(
        sp.vstack([data.matrix, sp.csr_matrix((1, data.n_videos), dtype=np.float32)]).tocsr(),
        np.append(data.user_ids, "lurker"),
        data.video_ids,
    )
    model = NCF(factors=4, mlp_dims=(8,), epochs=1).fit(data)
    scores = model.score(np.arange(data.n_users))
    assert scores.shape == (data.n_users, data.n_videos) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores[-1], np.asarray(data.matrix.sum(axis=0)).ravel())  # popularity
