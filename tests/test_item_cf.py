import numpy as np
import pytest
import scipy.sparse as sp
from movielens import movielens_frames
from recommender_contract import RecommenderContract
from toy_data import assert_sequels_near, two_communities

from models.interactions import Interactions
from models.item_cf import ItemKNN, cosine_knn

# ---- the model ------------------------------------------------------------------------------------


class TestItemKNN(RecommenderContract):
    model_class = ItemKNN
    bad_params = [
        {"k_neighbors": 0},
        {"k_neighbors": 2.5},
        {"k_neighbors": True},
        {"shrink": -1.0},
        {"shrink": float("nan")},
        {"shrink": "x"},
    ]
    beats_popularity_by, held_out_k = 1.2, 10

    def make_model(self, videos):
        return ItemKNN(k_neighbors=100)

    def held_out_model(self, videos):
        return ItemKNN(k_neighbors=100)

    def test_keeps_at_most_k_neighbours_and_never_itself(self, fitted, data):
        interactions, _ = data
        sim = fitted.similarity_
        assert sim.shape == (interactions.n_videos, interactions.n_videos)
        assert sim.getnnz(axis=1).max() <= 100
        assert sim.diagonal().max() == 0
        assert (sim.data > 0).all() and (sim.data <= 1 + 1e-5).all()

    def test_similar_items_are_the_learned_neighbours(self, fitted, data):
        interactions, _ = data
        video = int(np.argmax(interactions.matrix.getnnz(axis=0)))
        ids, scores = fitted.similar_items(np.array([video]), k=10)
        row = fitted.similarity_[video].toarray().ravel()
        np.testing.assert_allclose(scores[0], np.sort(row)[::-1][:10], rtol=1e-6)
        np.testing.assert_allclose(row[ids[0]], scores[0], rtol=1e-6)

    def test_sequels_are_similar(self, fitted, data):
        interactions, videos = data
        assert_sequels_near(fitted, interactions, videos)


def test_neighbours_match_brute_force_cosine():
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((30, 12)) < 0.3) * rng.integers(1, 5, (30, 12)), dtype=np.float32)
    dense = x.T.toarray().astype(np.float64)
    norms = np.linalg.norm(dense, axis=1)
    norms[norms == 0] = 1
    expected = dense @ dense.T / np.outer(norms, norms)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(cosine_knn(x.T, k=11).toarray(), expected, atol=1e-6)
    top3 = cosine_knn(x.T, k=3).toarray()
    for row in range(12):
        kept = np.flatnonzero(top3[row])
        assert len(kept) <= 3
        assert top3[row, kept].min() >= np.sort(expected[row])[-3] - 1e-6


def test_shrink_distrusts_small_support():
    # Videos 0 and 1 share 2 viewers, videos 2 and 3 share 20: both pairs have cosine 1.
    dense = np.zeros((22, 4), dtype=np.float32)
    dense[:2, :2] = 1
    dense[2:, 2:] = 1
    data = Interactions(sp.csr_matrix(dense), np.arange(22).astype(str), np.array(list("abcd")))
    plain = ItemKNN(k_neighbors=3).fit(data).similarity_
    assert plain[0, 1] == pytest.approx(1) and plain[2, 3] == pytest.approx(1)
    shrunk = ItemKNN(k_neighbors=3, shrink=10).fit(data).similarity_
    assert shrunk[0, 1] == pytest.approx(2 / 12)
    assert shrunk[2, 3] == pytest.approx(20 / 30)


def test_recommends_from_the_users_community():
    data = two_communities()
    ids, _ = ItemKNN(k_neighbors=5).fit(data).recommend(np.array([data.n_users - 1]), k=5)
    assert set(ids[0]) - {-1} <= set(range(1, 6)), "one video of the first half must lead to the first half"


def test_similar_items_pads_beyond_the_neighbour_list():
    data = two_communities()
    ids, scores = ItemKNN(k_neighbors=2).fit(data).similar_items(np.array([0]), k=4)
    assert (ids[0, :2] >= 0).all() and (ids[0, 2:] == -1).all()
    assert np.isneginf(scores[0, 2:]).all()


def test_scores_weight_votes_by_interaction_weight():
    # The bridge user watched video 0 (first community) intensely and video 6 (second) barely.
    data = two_communities()
    matrix = data.matrix.tolil()
    matrix[data.n_users - 1, 0] = 5.0
    matrix[data.n_users - 1, 6] = 0.1
    data = Interactions(matrix.tocsr(), data.user_ids, data.video_ids)
    ids, _ = ItemKNN().fit(data).recommend(np.array([data.n_users - 1]), k=3)
    assert set(ids[0]) <= set(range(1, 6))


def test_nan_weights_are_refused():
    data = two_communities()
    data.matrix.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ItemKNN().fit(data)


def test_fits_the_whole_small_movielens(ml_small):

    events, _ = movielens_frames(ml_small)
    data = Interactions.from_events(events, weighting="binary")
    model = ItemKNN(k_neighbors=50).fit(data)
    assert model.similarity_.getnnz(axis=1).max() <= 50
    ids, _ = model.recommend(np.arange(3), k=10)
    assert (ids >= 0).all()
