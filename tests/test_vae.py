import numpy as np
import scipy.sparse as sp
from recommender_contract import RecommenderContract
from toy_data import two_clusters

from models.interactions import Interactions
from models.vae import MultVAE


class TestMultVAE(RecommenderContract):
    model_class = MultVAE
    bad_params = [
        {"hidden": 0},
        {"latent": -1},
        {"dropout": 1.0},
        {"lr": -1e-3},
        {"beta_max": -0.1},
        {"anneal_steps": 0},
    ]
    beats_popularity_by, held_out_k = 1.15, 20

    def make_model(self, videos):
        return MultVAE(hidden=64, latent=32, epochs=10, batch_size=32, lr=3e-3, seed=7)

    def held_out_model(self, videos):
        return MultVAE(hidden=100, latent=32, epochs=30, batch_size=32, lr=3e-3)


def test_recommends_within_the_users_cluster():
    data = two_clusters()
    model = MultVAE(hidden=32, latent=8, dropout=0.5, epochs=150, batch_size=16, lr=3e-3).fit(data)
    ids, _ = model.recommend(np.arange(data.n_users), k=5)
    for user in range(data.n_users):
        cluster = data.video_ids[data.matrix[user].indices[0]][0]
        picks = [data.video_ids[i] for i in ids[user]]
        assert all(p.startswith(cluster) for p in picks), f"user {user} ({cluster}) got {picks}"


def test_similar_items_stay_in_cluster():
    data = two_clusters()
    model = MultVAE(hidden=32, latent=8, epochs=150, batch_size=16, lr=3e-3).fit(data)
    a0 = data.video_rows(["a0"])
    ids, _ = model.similar_items(a0, k=5)
    assert all(data.video_ids[i].startswith("a") for i in ids[0]), [data.video_ids[i] for i in ids[0]]


def test_empty_users_and_unwatched_videos_do_not_crash():
    data = two_clusters(n_users=20)
    data = Interactions(
        sp.vstack([data.matrix, sp.csr_matrix((1, data.n_videos), dtype=np.float32)]).tocsr(),
        np.append(data.user_ids, "lurker"),
        data.video_ids,
    )
    model = MultVAE(hidden=16, latent=4, epochs=2).fit(data)
    scores = model.score(np.arange(data.n_users))
    assert scores.shape == (data.n_users, data.n_videos) and np.isfinite(scores).all()
    assert (model.recommend(np.array([data.n_users - 1]), k=5)[0] >= 0).all()
