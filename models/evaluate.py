"""Evaluate one fitted model on a held-out window: every metric, one dict, names MLflow accepts.

    train, test = time_split(events)
    data = Interactions.from_events(train, catalog=videos.video_id)
    model = SomeRecommender().fit(data)
    relevant = relevant_sets(test, data)
    scores = evaluate_model(model, data, relevant, user_rows=None, k=10,
                            test_ratings=rating_triples(test, data))

Every model in a comparison must get the same `train`, `relevant`, `user_rows`, `item_vectors`
and `train_popularity`, so the numbers are comparable; the defaults are derived from `train`
alone (never from the model) for that reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models import metrics
from models.base import Recommender
from models.interactions import Interactions


def users_with_truth(relevant: Sequence[set[int]] | sp.spmatrix) -> np.ndarray:
    """User rows whose relevant set is non-empty: the users an accuracy metric can judge."""
    if sp.issparse(relevant):
        return np.flatnonzero(np.diff(sp.csr_matrix(relevant).indptr) > 0).astype(np.int64)
    return np.array([u for u, items in enumerate(relevant) if items], dtype=np.int64)


def _truth_for(relevant: Sequence[set[int]] | sp.spmatrix, user_rows: np.ndarray) -> list[set[int]] | sp.csr_matrix:
    if sp.issparse(relevant):
        return sp.csr_matrix(relevant)[user_rows]
    return [relevant[u] for u in user_rows.tolist()]


def _check_inputs(model: Recommender, train: Interactions, relevant, k: int) -> None:
    if model.data is None:
        raise ValueError(f"{type(model).__name__} is not fitted: fit it on the train interactions first")
    if model.data.matrix.shape != train.matrix.shape:
        raise ValueError(f"model was fitted on a {model.data.matrix.shape} matrix but train is {train.matrix.shape}")
    n_truth = relevant.shape[0] if sp.issparse(relevant) else len(relevant)
    if n_truth != train.n_users:
        raise ValueError(
            f"relevant has {n_truth} entries but train has {train.n_users} users: it must be indexed by "
            "user row (use protocols.relevant_sets)"
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def evaluate_model(
    model: Recommender,
    train: Interactions,
    relevant: Sequence[set[int]] | sp.spmatrix,
    user_rows: np.ndarray | None = None,
    k: int = 10,
    item_vectors: np.ndarray | sp.spmatrix | None = None,
    train_popularity: np.ndarray | None = None,
    test_ratings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    filter_seen: bool = True,
    recs: np.ndarray | None = None,
) -> dict[str, float]:
    """All offline metrics of a fitted model at cut-off k.

    relevant: per train user row, the relevant video rows (list of length train.n_users, or a
      CSR users x videos matrix), as `protocols.relevant_sets` builds it.
    user_rows: the users to recommend for; None means every user with non-empty truth. Accuracy
      metrics skip users with empty truth; beyond-accuracy metrics use every list.
    item_vectors: rows = videos, for intra-list diversity; default the train matrix's columns
      (each video as the vector of users who engaged with it). Pass content vectors (genres,
      text embeddings) to measure topical diversity; either way use the same for every model.
    train_popularity: per-video training interaction counts for novelty; default the number of
      train users who engaged with each video.
    test_ratings: (user_rows, video_rows, ratings) from `protocols.rating_triples`; with a model
      that has `predict(user_rows, video_rows)` it adds rmse and mse.
    recs: the model's lists for `user_rows` (at least k slots each), when the caller already has
      them (one longer list serves several cut-offs); recommend_s_per_1k_users is then ~0.

    Keys: precision_at_{k}, recall_at_{k}, f1_at_{k}, ndcg_at_{k}, map_at_{k} (AP normalised by
    min(k, R)), map_full_at_{k} (by R), mrr_at_{k}, hit_rate_at_{k}, coverage_at_{k},
    novelty_at_{k}, diversity_at_{k}, personalization_at_{k}, n_users (users with truth),
    n_lists, recommend_s_per_1k_users, and rmse/mse when computed. ("@" is not allowed in MLflow
    metric names, hence "_at_".)
    """
    _check_inputs(model, train, relevant, k)
    user_rows = users_with_truth(relevant) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
    if len(user_rows) == 0:
        raise ValueError("no users to evaluate: the test window has no relevant videos for train users")

    start = time.perf_counter()
    if recs is None:
        recs, _ = model.recommend(user_rows, k=k, filter_seen=filter_seen)
    elif len(recs) != len(user_rows) or recs.shape[1] < k:
        raise ValueError(f"recs must have one row of at least {k} slots per user, got shape {recs.shape}")
    recs = recs[:, :k]
    elapsed = time.perf_counter() - start

    accuracy = metrics.ranking_metrics(recs, _truth_for(relevant, user_rows), k)
    out = {"n_users": accuracy.pop("n_users")}
    out.update({f"{name}_at_{k}": value for name, value in accuracy.items()})
    out[f"coverage_at_{k}"] = metrics.catalog_coverage(recs, train.n_videos)
    popularity = train_popularity if train_popularity is not None else train.matrix.getnnz(axis=0)
    out[f"novelty_at_{k}"] = metrics.novelty(recs, popularity)
    vectors = item_vectors if item_vectors is not None else train.matrix.T.tocsr()
    out[f"diversity_at_{k}"] = metrics.intra_list_diversity(recs, vectors)
    out[f"personalization_at_{k}"] = metrics.personalization(recs, train.n_videos)
    out["n_lists"] = float(len(user_rows))
    out["recommend_s_per_1k_users"] = elapsed * 1000.0 / len(user_rows)
    out.update(_rating_metrics(model, test_ratings))
    return out


def _rating_metrics(
    model: Recommender, test_ratings: tuple[np.ndarray, np.ndarray, np.ndarray] | None
) -> dict[str, float]:
    """RMSE and MSE of `model.predict` on the test ratings; nothing for ranking-only models."""
    predict = getattr(model, "predict", None)
    if test_ratings is None or not callable(predict):
        return {}
    users, videos, ratings = (np.asarray(a) for a in test_ratings)
    if len(ratings) == 0:
        return {}
    predicted = np.asarray(predict(users.astype(np.int64), videos.astype(np.int64)), dtype=np.float64)
    return {"rmse": metrics.rmse(ratings, predicted), "mse": metrics.mse(ratings, predicted)}
