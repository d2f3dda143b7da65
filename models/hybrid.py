"""Hybrids over several candidate generators.

- `HybridUnion` is the retrieval stage in front of the ranker: it pools each generator's top
  `per_source_k` videos per user and keeps, per (user, video), every source's score and rank as
  features (a video several sources agree on is a strong candidate; the ranker learns how much).
- `WeightedBlend` is a plain `Recommender` whose score is a weighted sum of the generators'
  per-user normalised scores: a hybrid that needs no ranker, and a baseline for it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from models.base import NotFittedError, Recommender, check_positive_int
from models.interactions import Interactions

NORMALIZATIONS = ("minmax", "rank")
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def _check_generators(generators: Mapping[str, Recommender]) -> dict[str, Recommender]:
    """Non-empty, names usable as column suffixes, values Recommenders."""
    if not generators:
        raise ValueError("a hybrid needs at least one generator")
    for name, model in generators.items():
        if not isinstance(name, str) or not _SOURCE_NAME.match(name):
            raise ValueError(f"generator name {name!r} must be letters, digits, '_' or '-'")
        if not isinstance(model, Recommender):
            raise TypeError(f"generator {name!r} is a {type(model).__name__}, not a Recommender")
    return dict(generators)


def _check_same_data(generators: Mapping[str, Recommender]) -> Interactions:
    """All generators fitted, on matrices of one shape (indices must mean the same videos)."""
    shapes = {}
    for name, model in generators.items():
        if model.data is None:
            raise NotFittedError(f"generator {name!r} is not fitted: call fit() first")
        shapes[name] = model.data.matrix.shape
    if len(set(shapes.values())) > 1:
        raise ValueError(f"generators were fitted on different matrices: {shapes}")
    return next(iter(generators.values()))._require()


class HybridUnion:
    """Union of the generators' top lists, one row per (user, video) candidate.

    fit(data) fits every generator on the same interactions (generators fitted beforehand can be
    used directly). candidates(user_rows) returns columns user_row, video_row, then per source
    `score_<name>` and `rank_<name>` (rank 1 = that source's best; NaN when the source did not
    propose the video in its top `per_source_k`), and `n_sources` (how many proposed it).
    """

    def __init__(self, generators: Mapping[str, Recommender], per_source_k: int = 100):
        self.generators = _check_generators(generators)
        self.per_source_k = check_positive_int("per_source_k", per_source_k)

    def fit(self, data: Interactions) -> HybridUnion:
        self.fit_seconds: dict[str, float] = {}  # per generator, for the run's log at scale
        for name, model in self.generators.items():
            started = time.perf_counter()
            model.fit(data)
            self.fit_seconds[name] = time.perf_counter() - started
        return self

    @property
    def data(self) -> Interactions:
        return _check_same_data(self.generators)

    def candidates(
        self,
        user_rows: np.ndarray,
        filter_seen: bool = True,
        exclude: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Pooled candidates, sorted by user_row, then n_sources (desc), then best rank.

        Each user appears once however often it is listed in `user_rows`; `filter_seen` and
        `exclude` are passed to every generator's `recommend`.
        """
        _check_same_data(self.generators)
        user_rows = np.unique(np.asarray(user_rows, dtype=np.int64))
        per_source = [
            self._source_frame(name, model, user_rows, filter_seen, exclude) for name, model in self.generators.items()
        ]
        long = pd.concat(per_source, ignore_index=True)
        if long.empty:
            return self._empty_frame()
        wide = long.pivot(index=["user_row", "video_row"], columns="source", values=["score", "rank"])
        out = pd.DataFrame(index=wide.index)
        for name in self.generators:
            present = ("score", name) in wide.columns
            out[f"score_{name}"] = wide[("score", name)].astype(np.float64) if present else np.nan
            out[f"rank_{name}"] = wide[("rank", name)].astype(np.float64) if present else np.nan
        rank_cols = [f"rank_{name}" for name in self.generators]
        out["n_sources"] = out[rank_cols].notna().sum(axis=1).astype(np.int64)
        out = out.reset_index()
        best_rank = out[rank_cols].min(axis=1)
        order = np.lexsort((out["video_row"], best_rank, -out["n_sources"], out["user_row"]))
        out = out.iloc[order].reset_index(drop=True)
        out["user_row"] = out["user_row"].astype(np.int64)
        out["video_row"] = out["video_row"].astype(np.int64)
        return out

    def _empty_frame(self) -> pd.DataFrame:
        """The candidates frame with its columns and dtypes but no rows."""
        columns: dict[str, pd.Series] = {
            "user_row": pd.Series(dtype=np.int64),
            "video_row": pd.Series(dtype=np.int64),
        }
        for name in self.generators:
            columns[f"score_{name}"] = pd.Series(dtype=np.float64)
            columns[f"rank_{name}"] = pd.Series(dtype=np.float64)
        columns["n_sources"] = pd.Series(dtype=np.int64)
        return pd.DataFrame(columns)

    def _source_frame(
        self,
        name: str,
        model: Recommender,
        user_rows: np.ndarray,
        filter_seen: bool,
        exclude: np.ndarray | None,
    ) -> pd.DataFrame:
        """One source's top list as long rows (user_row, video_row, score, rank, source)."""
        ids, scores = model.recommend(user_rows, k=self.per_source_k, filter_seen=filter_seen, exclude=exclude)
        filled = ids >= 0
        rows, slots = np.nonzero(filled)
        return pd.DataFrame(
            {
                "user_row": user_rows[rows],
                "video_row": ids[filled],
                "score": scores[filled].astype(np.float64),
                "rank": (slots + 1).astype(np.float64),  # slots fill from the left: position = rank
                "source": name,
            }
        )


def _minmax_rows(scores: np.ndarray) -> np.ndarray:
    """Per row, (s - min) / (max - min) over the finite entries, in [0, 1].

    Non-finite entries (a generator's "cannot score") and rows with one distinct value map to 0,
    so such a generator adds nothing to the blend for that user instead of dominating it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    lo = np.where(finite, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        span = hi - lo  # NaN or -inf for rows without finite entries
    usable = finite & np.isfinite(span) & (span > 0)
    out = np.zeros_like(scores)
    np.divide(scores - np.where(np.isfinite(lo), lo, 0.0), span, out=out, where=usable)
    return out


def _rank_rows(scores: np.ndarray) -> np.ndarray:
    """Per row, the score's percentile rank in [0, 1] (best = 1; ties share their mean rank).

    Non-finite scores count as the lowest; with one column everything maps to 0.
    """
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    n = scores.shape[1]
    if n < 2:
        return np.zeros_like(scores, dtype=np.float64)
    return (rankdata(scores, axis=1, method="average") - 1.0) / (n - 1.0)


class WeightedBlend(Recommender):
    """score(u, v) = sum_g w_g * norm_g(u, v), with weights normalised to sum to 1.

    norm is per user over the catalog: "minmax" rescales each generator's scores to [0, 1]
    (sensitive to how peaked a generator's scores are), "rank" uses percentile ranks (only the
    order counts, robust to score scales that differ by orders of magnitude). Generators fit in
    `_fit` on the same interactions. similar_items uses the highest-weighted generator's vectors.
    """

    name = "hybrid-blend"

    def __init__(
        self,
        generators: Mapping[str, Recommender],
        weights: Mapping[str, float],
        normalization: str = "minmax",
    ):
        super().__init__()
        self.generators = _check_generators(generators)
        if set(weights) != set(self.generators):
            raise ValueError(f"weights name {sorted(weights)} but generators are {sorted(self.generators)}")
        values = np.array([float(weights[name]) for name in self.generators])
        if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero: {dict(weights)}")
        self.weights = dict(zip(self.generators, values / values.sum(), strict=True))
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}: expected one of {NORMALIZATIONS}")
        self.normalization = normalization

    def _fit(self, data: Interactions) -> None:
        for model in self.generators.values():
            model.fit(data)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        data = self._require()
        normalize = _minmax_rows if self.normalization == "minmax" else _rank_rows
        total = np.zeros((len(user_rows), data.n_videos), dtype=np.float64)
        for name, model in self.generators.items():
            if self.weights[name] > 0:
                total += self.weights[name] * normalize(model.score(user_rows))
        return total.astype(np.float32)

    def item_vectors(self) -> np.ndarray | sp.spmatrix:
        self._require()
        lead = max(self.weights, key=lambda name: self.weights[name])
        return self.generators[lead].item_vectors()
