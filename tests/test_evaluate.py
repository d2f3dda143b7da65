"""evaluate_model on a time split of the real ml-latest-small data."""

import numpy as np
import pytest
import scipy.sparse as sp
from movielens import movielens_frames

from models.base import Recommender
from models.evaluate import evaluate_model, users_with_truth
from models.interactions import Interactions
from models.popularity import Popularity
from models.protocols import rating_triples, relevant_sets, time_split

K = 10
BOUNDED = [
    "precision",
    "recall",
    "f1",
    "ndcg",
    "map",
    "map_full",
    "mrr",
    "hit_rate",
    "coverage",
    "diversity",
    "personalization",
]


@pytest.fixture(scope="module")
def split(ml_small):
    events, videos = movielens_frames(ml_small)
    train, test = time_split(events, test_fraction=0.2)
    data = Interactions.from_events(train, catalog=videos["video_id"], weighting="binary")
    return data, test, relevant_sets(test, data)


@pytest.fixture(scope="module")
def popularity_report(split):
    data, _, relevant = split
    return evaluate_model(Popularity().fit(data), data, relevant, None, k=K)


class Oracle(Recommender):
    """Scores exactly the held-out videos: an upper bound that checks the plumbing end to end."""

    name = "oracle"

    def __init__(self, relevant):
        super().__init__()
        self.relevant = relevant

    def _fit(self, data):
        pass

    def score(self, user_rows):
        out = np.zeros((len(user_rows), self.data.n_videos), dtype=np.float32)
        for i, u in enumerate(user_rows):
            out[i, list(self.relevant[u])] = 1.0
        return out


class RandomScores(Recommender):
    name = "random"

    def _fit(self, data):
        self.rng = np.random.default_rng(0)

    def score(self, user_rows):
        return self.rng.random((len(user_rows), self.data.n_videos))


class GlobalMean(Popularity):
    """Popularity ranking plus a rating predictor that always answers the train mean rating."""

    def _fit(self, data):
        super()._fit(data)
        self.mean = float(data.ratings.data.mean())

    def predict(self, user_rows, video_rows):
        return np.full(len(user_rows), self.mean)


def test_metrics_in_range_and_popularity_shape(popularity_report, split):
    data, _, relevant = split
    report = popularity_report
    for name in BOUNDED:
        assert 0.0 <= report[f"{name}_at_{K}"] <= 1.0, name
    assert report["n_users"] == len(users_with_truth(relevant)) > 0
    assert report[f"precision_at_{K}"] > 0, "popularity hits something in the future window"
    assert report[f"coverage_at_{K}"] < 0.01  # a few dozen of ~9.7k videos
    # The users a time split can judge are heavy users (28 here, with up to 2.5k train ratings),
    # who have seen different parts of the head, so seen-filtering alone makes their lists differ
    # (personalization ~0.68). Without it everyone gets the identical list: exactly 0.
    same_list = evaluate_model(Popularity().fit(data), data, relevant, None, k=K, filter_seen=False)
    assert same_list[f"personalization_at_{K}"] == pytest.approx(0.0, abs=1e-9)
    assert same_list[f"coverage_at_{K}"] == pytest.approx(K / data.n_videos)
    assert report[f"novelty_at_{K}"] > 0
    assert report["recommend_s_per_1k_users"] > 0
    assert "rmse" not in report


def test_oracle_is_perfect_and_random_is_worse_than_popularity(split, popularity_report):
    data, _, relevant = split
    oracle = evaluate_model(Oracle(relevant).fit(data), data, relevant, None, k=K)
    # every list holds min(k, R) relevant videos first: nDCG = MAP = MRR = hit rate = 1
    for name in ("ndcg", "map", "mrr", "hit_rate"):
        assert oracle[f"{name}_at_{K}"] == pytest.approx(1.0), name
    users = users_with_truth(relevant)
    expected_recall = np.mean([min(K, len(relevant[u])) / len(relevant[u]) for u in users])
    assert oracle[f"recall_at_{K}"] == pytest.approx(expected_recall)
    assert oracle[f"personalization_at_{K}"] > popularity_report[f"personalization_at_{K}"]

    rand = evaluate_model(RandomScores().fit(data), data, relevant, None, k=K)
    assert rand[f"ndcg_at_{K}"] < popularity_report[f"ndcg_at_{K}"]
    assert rand[f"coverage_at_{K}"] > popularity_report[f"coverage_at_{K}"]
    assert rand[f"novelty_at_{K}"] > popularity_report[f"novelty_at_{K}"]
    assert rand[f"personalization_at_{K}"] > popularity_report[f"personalization_at_{K}"]


def test_rmse_for_models_with_predict(split):
    data, test, relevant = split
    triples = rating_triples(test, data)
    model = GlobalMean().fit(data)
    users = users_with_truth(relevant)[:20]
    report = evaluate_model(model, data, relevant, users, k=K, test_ratings=triples)
    # predicting the constant mu gives MSE = mean((r - mu)^2) over the test ratings
    ratings = triples[2]
    assert report["mse"] == pytest.approx(np.mean((ratings - model.mean) ** 2))
    assert report["rmse"] == pytest.approx(np.sqrt(report["mse"]))
    assert report["n_lists"] == 20


def test_explicit_inputs_and_errors(split):
    data, _, relevant = split
    model = Popularity().fit(data)
    genre_like = np.eye(data.n_videos, 4, dtype=np.float32)  # most videos all-zero: distance 1
    report = evaluate_model(
        model, data, relevant, np.arange(30), k=5, item_vectors=genre_like, train_popularity=np.ones(data.n_videos)
    )
    assert "ndcg_at_5" in report
    # uniform popularity: every recommended video has share 1 / n_videos
    assert report["novelty_at_5"] == pytest.approx(np.log2(data.n_videos))
    rows = np.repeat(np.arange(len(relevant)), [len(t) for t in relevant])
    cols = np.array([v for t in relevant for v in t], dtype=np.int64)
    as_csr = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=data.matrix.shape)
    csr_report = evaluate_model(
        model, data, as_csr, np.arange(30), k=5, item_vectors=genre_like, train_popularity=np.ones(data.n_videos)
    )
    assert csr_report["ndcg_at_5"] == pytest.approx(report["ndcg_at_5"])
    assert csr_report["n_users"] == report["n_users"]
    with pytest.raises(ValueError, match="indexed by user row"):
        evaluate_model(model, data, relevant[:10], None)
    with pytest.raises(ValueError, match="not fitted"):
        evaluate_model(Popularity(), data, relevant, None)
    with pytest.raises(ValueError, match="k must be"):
        evaluate_model(model, data, relevant, None, k=0)
