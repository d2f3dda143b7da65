"""The one interface every candidate generator implements, in the spirit of `implicit`.

    model = SomeRecommender(**params).fit(interactions)
    ids, scores = model.recommend(user_rows, k=10)          # seen videos excluded by default
    ids, scores = model.similar_items(video_rows, k=10)
    model.save(path); model = SomeRecommender.load(path)

Rows and ids are indices into `Interactions.user_ids` / `video_ids`. A subclass implements
`_fit` and `score` (users x catalog); top-k selection and filtering live here, once.
"""

from __future__ import annotations

import abc
import math
import pickle
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from models.interactions import Interactions

# Users scored at once: bounds the dense (batch x catalog) score block.
BATCH_USERS = 1024


class NotFittedError(RuntimeError):
    pass


# ---- parameter checks every generator's constructor uses ---------------------------------------------


def check_positive_int(name: str, value: object) -> int:
    """A count parameter (neighbours, factors, epochs): an int >= 1, never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_float(name: str, value: object) -> float:
    """A strength parameter (shrink, regularisation): a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def check_weights(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The interaction matrix as float32 CSR without explicit zeros; NaN/inf weights are refused.

    A NaN weight would silently poison every similarity or factor it touches, so fail early.
    """
    matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if matrix.nnz and not np.isfinite(matrix.data).all():
        raise ValueError("the interaction matrix contains NaN or infinite weights")
    matrix.eliminate_zeros()
    return matrix


def check_seed(value: object) -> int:
    """A random seed: an int >= 0, never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


class Recommender(abc.ABC):
    name: str = "base"

    def __init__(self) -> None:
        self.data: Interactions | None = None

    # ---- what a generator implements -----------------------------------------------------------

    @abc.abstractmethod
    def _fit(self, data: Interactions) -> None:
        """Learn from the training interactions."""

    @abc.abstractmethod
    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Dense scores, shape (len(user_rows), n_videos); higher is better."""

    def item_vectors(self) -> np.ndarray | sp.spmatrix:
        """Vectors whose cosine similarity defines `similar_items` (rows = videos)."""
        return self._require().matrix.T.tocsr()

    # ---- the shared interface -----------------------------------------------------------------

    def fit(self, data: Interactions) -> Self:
        self.data = data
        self._fit(data)
        return self

    def recommend(
        self,
        user_rows: np.ndarray,
        k: int = 10,
        filter_seen: bool = True,
        exclude: np.ndarray | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k video rows and scores per user, best first; shape (n_users, k).

        `exclude`: video rows never recommended; `candidates`: only these video rows are eligible.
        Slots that cannot be filled (tiny catalogs) hold -1 with score -inf.
        """
        data = self._require()
        user_rows = np.asarray(user_rows, dtype=np.int64)
        if (user_rows < 0).any() or (user_rows >= data.n_users).any():
            raise IndexError("user rows outside the fitted matrix; map unknown users to a cold-start path")
        ids = np.full((len(user_rows), k), -1, dtype=np.int64)
        scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
        blocked = np.zeros(data.n_videos, dtype=bool)
        if exclude is not None:
            blocked[np.asarray(exclude, dtype=np.int64)] = True
        if candidates is not None:
            allowed = np.zeros(data.n_videos, dtype=bool)
            allowed[np.asarray(candidates, dtype=np.int64)] = True
            blocked |= ~allowed
        for start in range(0, len(user_rows), BATCH_USERS):
            batch = user_rows[start : start + BATCH_USERS]
            block = np.asarray(self.score(batch), dtype=np.float32)
            block[:, blocked] = -np.inf
            if filter_seen:
                seen = data.matrix[batch]
                block[seen.nonzero()] = -np.inf
            top_ids, top_scores = top_k(block, k)
            ids[start : start + len(batch)] = top_ids
            scores[start : start + len(batch)] = top_scores
        return ids, scores

    def similar_items(self, video_rows: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar videos to each given video (itself excluded), by cosine."""
        vectors = self.item_vectors()
        normed = unit_rows(vectors)
        query = normed[np.asarray(video_rows, dtype=np.int64)]
        sims = query @ normed.T
        sims = sims.toarray() if sp.issparse(sims) else np.asarray(sims)
        sims = sims.astype(np.float32)
        sims[np.arange(len(video_rows)), video_rows] = -np.inf
        return top_k(sims, k)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Self:
        with open(path, "rb") as fh:
            model = pickle.load(fh)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def _require(self) -> Interactions:
        if self.data is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() first")
        return self.data


class FactorModel(Recommender):
    """A generator scored by learned factors: a subclass's `_fit` sets `user_factors_` and
    `item_factors_` (float32, rows aligned with Interactions); scores are their dot products and
    the video factors are its `similar_items` vectors."""

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        self._require()
        return self.user_factors_[np.asarray(user_rows, dtype=np.int64)] @ self.item_factors_.T

    def item_vectors(self) -> np.ndarray:
        self._require()
        return self.item_factors_


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best columns (best first); -inf entries become id -1."""
    n, m = scores.shape
    kk = min(k, m)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(part_scores, order, axis=1)
    ids = np.where(np.isneginf(best), -1, ids)
    if kk < k:
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return ids.astype(np.int64), best.astype(np.float32)


def unit_rows(vectors, dtype=np.float32):
    """Rows scaled to unit L2 norm (cosine = dot product); zero rows stay zero. Sparse stays sparse."""
    if sp.issparse(vectors):
        vectors = sp.csr_matrix(vectors, dtype=dtype)
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1))).ravel()
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sp.csr_matrix(sp.diags(scale.astype(dtype)) @ vectors)
    vectors = np.asarray(vectors, dtype=dtype)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
