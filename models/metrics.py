"""Offline evaluation metrics: pure functions over recommendation arrays.

Conventions shared by every function here:

- `recs` is an int array (n_users, n_slots) of video indices, best first; -1 is an empty slot
  (the base recommender pads with -1 when it cannot fill a list). Metrics "at k" read the first
  k slots; a list shorter than k is treated as padded with empty slots. An empty slot is never a
  hit, and a video repeated within one list counts only at its first position.
- `truth` is, per row of `recs`, the set of relevant video indices: a sequence of sets (or any
  iterables of ints) or a CSR matrix whose row i's non-zero columns are user i's relevant videos.
- Accuracy metrics are per-user values averaged over the users whose truth is NOT empty: a user
  with nothing relevant in the test window has undefined recall/nDCG/AP, so (as in the Microsoft
  Recommenders library, which averages over users present in the test set) such users are skipped
  rather than counted as zeros. When no user has any truth the result is NaN, never a fake 0.
- Beyond-accuracy metrics (coverage, novelty, diversity, personalization) look only at `recs`.

Formulas are written with hits h_i (1 if the video at 1-based position i is relevant, else 0),
R = |truth| and k the cut-off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp

from models.base import unit_rows

Truth: TypeAlias = Sequence[Iterable[int]] | sp.spmatrix
MAP_NORMALIZATIONS = ("min_k", "relevant")


# ---- shared helpers ------------------------------------------------------------------------------


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _recs_at_k(recs: np.ndarray, k: int) -> np.ndarray:
    """The first k slots of each list as int64, padded with -1 when lists are shorter than k."""
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be a 2-d array (n_users, k), got shape {recs.shape}")
    if recs.size and not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must hold integer video indices, got dtype {recs.dtype}")
    recs = recs[:, :k].astype(np.int64, copy=False)
    if recs.shape[1] < k:
        recs = np.pad(recs, ((0, 0), (0, k - recs.shape[1])), constant_values=-1)
    return recs


def _valid_mask(recs: np.ndarray) -> np.ndarray:
    """Filled slots that hold a video not already seen earlier in the same list."""
    valid = recs >= 0
    if recs.shape[1] < 2:
        return valid
    order = np.argsort(recs, axis=1, kind="stable")  # stable: earlier position first among equals
    ranked = np.take_along_axis(recs, order, axis=1)
    repeat_sorted = np.zeros_like(valid)
    repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    repeat = np.zeros_like(valid)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    return valid & ~repeat


def _truth_pairs(truth: Truth, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, video) arrays of every relevant pair, from sets or a CSR matrix."""
    if sp.issparse(truth):
        coo = sp.coo_matrix(truth)
        if coo.shape[0] != n_rows:
            raise ValueError(f"truth has {coo.shape[0]} rows but recs has {n_rows}")
        keep = coo.data != 0
        return coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64)
    if len(truth) != n_rows:
        raise ValueError(f"truth has {len(truth)} users but recs has {n_rows}")
    items = [np.fromiter(set(t), dtype=np.int64) for t in truth]
    lengths = np.array([len(t) for t in items], dtype=np.int64)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    cols = np.concatenate(items) if items else np.empty(0, dtype=np.int64)
    if (cols < 0).any():
        raise ValueError("truth holds negative video indices")
    return rows, cols


def hit_matrix(recs: np.ndarray, truth: Truth, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user, which of the first k slots are hits, and how many relevant videos they have.

    Returns (hits: bool (n_users, k), n_relevant: int (n_users,)). Vectorised by encoding each
    (row, video) pair as one integer key, so it costs one `np.isin` whatever the truth format.
    """
    k = _check_k(k)
    recs = _recs_at_k(recs, k)
    n = recs.shape[0]
    rows, cols = _truth_pairs(truth, n)
    n_relevant = np.bincount(rows, minlength=n).astype(np.int64)
    width = int(max(cols.max(initial=-1), recs.max(initial=-1))) + 1
    truth_keys = rows * width + cols
    rec_keys = np.arange(n, dtype=np.int64)[:, None] * width + recs
    hits = np.isin(rec_keys, truth_keys) & _valid_mask(recs)
    return hits, n_relevant


def _mean_over_users(values: np.ndarray, n_relevant: np.ndarray) -> float:
    """Average of per-user values over users with non-empty truth; NaN when there are none."""
    has_truth = n_relevant > 0
    if not has_truth.any():
        return float("nan")
    return float(values[has_truth].mean())


def _per_user(recs: np.ndarray, truth: Truth, k: int) -> dict[str, np.ndarray]:
    """Every accuracy metric per user, from one hit matrix (undefined users hold 0)."""
    hits, n_rel = hit_matrix(recs, truth, k)
    safe_rel = np.maximum(n_rel, 1).astype(np.float64)
    n_hits = hits.sum(axis=1).astype(np.float64)
    positions = np.arange(1, k + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(positions + 1.0)

    precision = n_hits / k
    recall = n_hits / safe_rel
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)

    dcg = (hits * discounts).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(n_rel, k)]
    ndcg = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)

    precision_at_i = np.cumsum(hits, axis=1) / positions
    ap_sum = (precision_at_i * hits).sum(axis=1)

    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    rr = np.divide(1.0, first, out=np.zeros(len(first)), where=first > 0)

    return {
        "n_relevant": n_rel,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ndcg": ndcg,
        "ap_min_k": ap_sum / np.minimum(safe_rel, k),
        "ap_relevant": ap_sum / safe_rel,
        "rr": rr,
        "hit": (n_hits > 0).astype(np.float64),
    }


# ---- accuracy at k -------------------------------------------------------------------------------


def precision_at_k(recs: np.ndarray, truth: Truth, k: int = 10) -> float:
    """Precision@k = mean over users of (sum_{i<=k} h_i) / k.

    The denominator is always k, so empty slots count as misses: a model that cannot fill its
    list is not rewarded for it (same as Microsoft Recommenders' `precision_at_k`).
    """
    per = _per_user(recs, truth, k)
    return _mean_over_users(per["precision"], per["n_relevant"])


def recall_at_k(recs: np.ndarray, truth: Truth, k: int = 10) -> float:
    """Recall@k = mean over users of (sum_{i<=k} h_i) / R."""
    per = _per_user(recs, truth, k)
    return _mean_over_users(per["recall"], per["n_relevant"])


def f1_at_k(recs: np.ndarray, truth: Truth, k: int = 10) -> float:
    """F1@k = mean over users of 2 P_u R_u / (P_u + R_u), with P_u, R_u the user's precision@k
    and recall@k (0 when the user has no hit).

    Averaging the per-user F1 (rather than taking F1 of the averaged P and R) keeps it a per-user
    quantity like every other metric here.
    """
    per = _per_user(recs, truth, k)
    return _mean_over_users(per["f1"], per["n_relevant"])


def ndcg_at_k(recs: np.ndarray, truth: Truth, k: int = 10) -> float:
    """nDCG@k with binary relevance and log2 discount.

    DCG = sum_{i<=k} h_i / log2(i + 1); IDCG = sum_{i=1}^{min(k, R)} 1 / log2(i + 1);
    nDCG = mean over users of DCG / IDCG. (The log base cancels in the ratio, so this equals
    Microsoft Recommenders' default natural-log version.)
    """
    per = _per_user(recs, truth, k)
    return _mean_over_users(per["ndcg"], per["n_relevant"])


def map_at_k(recs: np.ndarray, truth: Truth, k: int = 10, normalize: str = "min_k") -> float:
    """MAP@k = mean over users of AP@k, AP@k = (sum_{i<=k} h_i * P@i) / D, P@i = hits in top i / i.

    normalize picks D:
    - "min_k" (default): D = min(k, R). A user with more than k relevant videos can still reach
      AP = 1 with a perfect list. This is Microsoft Recommenders' current `map_at_k` (and Spark's
      `meanAveragePrecisionAt`, and the Kaggle `apk`).
    - "relevant": D = R. This is Microsoft Recommenders' `map` (their `map_at_k` also divided by R
      before release 1.2), for comparing with tables computed that way.
    """
    if normalize not in MAP_NORMALIZATIONS:
        raise ValueError(f"unknown MAP normalization {normalize!r}: expected one of {MAP_NORMALIZATIONS}")
    per = _per_user(recs, truth, k)
    return _mean_over_users(per[f"ap_{normalize}"], per["n_relevant"])


def mrr_at_k(recs: np.ndarray, truth: Truth, k: int = 10) -> float:
    """MRR@k = mean over users of 1 / (position of the first hit within the top k), 0 if none."""
    per = _per_user(recs, truth, k)
    return _mean_over_users(per["rr"], per["n_relevant"])


def hit_rate_at_k(recs: np.ndarray, truth: Truth, k: int = 10) -> float:
    """HitRate@k = fraction of users with at least one relevant video in their top k."""
    per = _per_user(recs, truth, k)
    return _mean_over_users(per["hit"], per["n_relevant"])


def per_user_ndcg(recs: np.ndarray, truth: Truth, k: int = 10) -> np.ndarray:
    """nDCG@k of each user (see `ndcg_at_k`); NaN for users with empty truth."""
    per = _per_user(recs, truth, k)
    return np.where(per["n_relevant"] > 0, per["ndcg"], np.nan)


def ranking_metrics(recs: np.ndarray, truth: Truth, k: int = 10) -> dict[str, float]:
    """Every accuracy metric at k from one hit matrix (cheaper than calling each function).

    Keys: precision, recall, f1, ndcg, map (normalised by min(k, R)), map_full (by R), mrr,
    hit_rate, and n_users (users with non-empty truth, the denominator of every mean).
    """
    per = _per_user(recs, truth, k)
    n_rel = per["n_relevant"]
    names = {
        "precision": "precision", "recall": "recall", "f1": "f1", "ndcg": "ndcg",
        "map": "ap_min_k", "map_full": "ap_relevant", "mrr": "rr", "hit_rate": "hit",
    }  # fmt: skip
    out = {name: _mean_over_users(per[key], n_rel) for name, key in names.items()}
    out["n_users"] = float((n_rel > 0).sum())
    return out


# ---- rating prediction ---------------------------------------------------------------------------


def _rating_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no ratings to compare")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("ratings and predictions must be finite")
    return y_true, y_pred


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """MSE = (1/n) sum_j (y_j - yhat_j)^2 over the n rated test pairs."""
    y_true, y_pred = _rating_pair(y_true, y_pred)
    return float(np.mean((y_true - y_pred) ** 2))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """RMSE = sqrt(MSE)."""
    return float(np.sqrt(mse(y_true, y_pred)))


# ---- beyond accuracy -----------------------------------------------------------------------------


def _selection_matrix(recs: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Binary (n_lists x n_items) matrix of each list's distinct videos (empty slots dropped)."""
    recs = np.asarray(recs, dtype=np.int64)
    if recs.ndim != 2:
        raise ValueError(f"recs must be a 2-d array (n_users, k), got shape {recs.shape}")
    if recs.size and recs.max() >= n_items:
        raise ValueError(f"recs holds video index {recs.max()} outside a catalog of {n_items}")
    valid = _valid_mask(recs)
    rows = np.nonzero(valid)[0]
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, recs[valid])), shape=(recs.shape[0], n_items))


def _row_sq_norms(matrix: np.ndarray | sp.spmatrix) -> np.ndarray:
    if isinstance(matrix, np.ndarray):
        return np.einsum("ij,ij->i", matrix, matrix)
    return np.asarray(sp.csr_matrix(matrix).multiply(matrix).sum(axis=1)).ravel()


def list_diversity(recs: np.ndarray, item_vectors: np.ndarray | sp.spmatrix) -> np.ndarray:
    """ILD per list (see `intra_list_diversity`); NaN for lists of fewer than two videos.

    Computed without forming m x m blocks: with unit vectors u_i,
    sum_{i != j} u_i . u_j = ||sum_i u_i||^2 - sum_i ||u_i||^2, so one sparse product gives
    every list's sum. `item_vectors` rows are videos (dense array or scipy sparse).
    """
    n_items = item_vectors.shape[0]
    select = _selection_matrix(recs, n_items)
    unit = unit_rows(item_vectors, np.float64)
    sums = select @ unit  # stays sparse for sparse vectors: users x vocabulary would not fit densely
    self_sims = select @ _row_sq_norms(unit)  # 1 per video with a non-zero vector
    m = np.asarray(select.sum(axis=1)).ravel()
    pair_sum = _row_sq_norms(sums) - self_sims  # = 2 * sum_{i<j} cos
    ok = m >= 2
    out = np.full(len(m), np.nan)
    out[ok] = 1.0 - pair_sum[ok] / (m[ok] * (m[ok] - 1))
    return out


def intra_list_diversity(recs: np.ndarray, item_vectors: np.ndarray | sp.spmatrix) -> float:
    """Mean over lists of the mean pairwise cosine distance between the list's videos.

    ILD(list) = 1 - (2 / (m (m - 1))) sum_{i<j} cos(v_i, v_j), over the list's m distinct videos;
    the result averages ILD over lists with m >= 2 (shorter lists have no pairs and are skipped;
    NaN if no list qualifies). A video with an all-zero vector has cosine 0 with everything.
    """
    per_list = list_diversity(recs, item_vectors)
    ok = np.isfinite(per_list)
    return float(per_list[ok].mean()) if ok.any() else float("nan")


def catalog_coverage(recs: np.ndarray, n_items: int) -> float:
    """Coverage = |distinct videos recommended to anyone| / n_items (empty slots ignored)."""
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items}")
    recs = np.asarray(recs, dtype=np.int64)
    if recs.size and recs.max() >= n_items:
        raise ValueError(f"recs holds video index {recs.max()} outside a catalog of {n_items}")
    return float(len(np.unique(recs[recs >= 0])) / n_items)


def novelty(recs: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean self-information of the recommended videos (Castells et al., ECIR 2011, choice model).

    novelty = mean over filled slots of -log2(p_v), p_v = max(c_v, 1) / sum_w c_w, where c_v is
    the number of training interactions with video v. The same definition as Microsoft
    Recommenders' `novelty`, except that a video never seen in training counts as seen once (the
    most novel finite value) instead of being dropped: cold videos are exactly what novelty is
    meant to reward. NaN when no slot is filled.
    """
    counts = np.asarray(item_counts, dtype=np.float64).ravel()
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError("item_counts must be finite and non-negative")
    total = counts.sum()
    if total <= 0:
        raise ValueError("item_counts is all zero: novelty needs training popularity")
    recs = np.asarray(recs, dtype=np.int64)
    if recs.size and recs.max() >= len(counts):
        raise ValueError(f"recs holds video index {recs.max()} outside a catalog of {len(counts)}")
    filled = recs[recs >= 0]
    if filled.size == 0:
        return float("nan")
    share = np.maximum(counts[filled], 1.0) / total
    return float(np.mean(-np.log2(share)))


def personalization(recs: np.ndarray, n_items: int | None = None) -> float:
    """1 - mean over user pairs of the cosine similarity of their binary recommendation vectors.

    For lists A and B, cos = |A n B| / sqrt(|A| |B|); the mean runs over all n (n - 1) / 2 pairs
    of users with a non-empty list. 0 means everyone gets the same videos, values near 1 mean
    lists barely overlap. NaN with fewer than two non-empty lists.

    No pair sampling is needed: with unit rows r_u, sum_{u != w} r_u . r_w = ||sum_u r_u||^2 - n,
    so the exact mean over all pairs costs one pass over the lists, whatever the number of users.
    """
    recs = np.asarray(recs, dtype=np.int64)
    width = int(recs.max(initial=-1)) + 1 if n_items is None else int(n_items)
    select = _selection_matrix(recs, max(width, 1))
    select = select[np.diff(select.indptr) > 0]
    n = select.shape[0]
    if n < 2:
        return float("nan")
    unit = unit_rows(select, np.float64)
    total = np.asarray(unit.sum(axis=0)).ravel()
    mean_cos = (float(total @ total) - n) / (n * (n - 1))
    return float(1.0 - mean_cos)
