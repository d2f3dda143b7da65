import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract
from toy_data import two_communities

from models.interactions import Interactions
from models.user_cf import UserKNN


class TestUserKNN(RecommenderContract):
    model_class = UserKNN
    bad_params = [{"alpha": 0}, {"alpha": -1.0}, {"shrink": -1.0}, {"alpha": float("inf")}]
    beats_popularity_by, held_out_k = 1.2, 10

    def make_model(self, videos):
        return UserKNN(k_neighbors=50)

    def held_out_model(self, videos):
        return UserKNN(k_neighbors=50)

    def test_neighbour_lists(self, fitted, data):
        interactions, _ = data
        neighbours = fitted.neighbours_
        assert neighbours.shape == (interactions.n_users, interactions.n_users)
        assert neighbours.getnnz(axis=1).max() <= 50
        assert neighbours.diagonal().max() == 0


def test_scores_are_similarity_weighted_neighbour_rows():
    # Continuous weights: no two users tie in similarity, so the top-3 neighbours are unique.
    rng = np.random.default_rng(5)
    dense = (rng.random((15, 25)) < 0.4) * rng.uniform(0.5, 3.0, (15, 25))
    data = Interactions(sp.csr_matrix(dense.astype(np.float32)), np.arange(15).astype(str), np.arange(25).astype(str))
    model = UserKNN(k_neighbors=3).fit(data)
    norms = np.linalg.norm(dense, axis=1)
    cos = dense @ dense.T / np.outer(norms, norms)
    np.fill_diagonal(cos, 0)
    for user in range(15):
        top = np.argsort(-cos[user])[:3]
        expected = cos[user, top] @ dense[top]
        assert model.neighbours_[user].nnz == 3
        np.testing.assert_allclose(model.score(np.array([user]))[0], expected, rtol=1e-4, atol=1e-6)


def test_alpha_raises_each_kept_similarity_to_its_power():
    # alpha only reweights the neighbours the cosine kept: same lists, similarities ** alpha.
    rng = np.random.default_rng(5)
    dense = (rng.random((15, 25)) < 0.4) * rng.uniform(0.5, 3.0, (15, 25))
    data = Interactions(sp.csr_matrix(dense.astype(np.float32)), np.arange(15).astype(str), np.arange(25).astype(str))
    plain, amplified = UserKNN(k_neighbors=4).fit(data), UserKNN(k_neighbors=4, alpha=3.0).fit(data)
    np.testing.assert_array_equal(plain.neighbours_.indices, amplified.neighbours_.indices)
    np.testing.assert_allclose(amplified.neighbours_.data, plain.neighbours_.data**3, rtol=1e-5)
    np.testing.assert_allclose(
        amplified.score(np.arange(15)), (plain.neighbours_.power(3) @ dense), rtol=1e-4, atol=1e-6
    )


def test_recommends_what_similar_users_watched():
    data = two_communities()
    ids, _ = UserKNN(k_neighbors=10).fit(data).recommend(np.array([data.n_users - 1]), k=5)
    assert set(ids[0]) - {-1} <= set(range(1, 6))


def test_user_without_neighbours_scores_zero():
    dense = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 0]], dtype=np.float32)
    data = Interactions(sp.csr_matrix(dense), np.array(["a", "b", "c"]), np.array(["x", "y", "z"]))
    model = UserKNN(k_neighbors=2).fit(data)
    assert (model.score(np.array([0])) == 0).all()
    assert model.score(np.array([2]))[0, 2] > 0  # c's neighbour b watched z


@pytest.mark.parametrize("k", [0, -3, 1.5, "10", None])
def test_bad_neighbour_counts_are_refused(k):
    with pytest.raises(ValueError):
        UserKNN(k_neighbors=k)
