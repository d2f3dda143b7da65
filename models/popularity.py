"""Popularity and trending: the baselines every results table starts from."""

from __future__ import annotations

import numpy as np

from models.base import Recommender
from models.interactions import Interactions


class Popularity(Recommender):
    """Score = number of users who interacted with the video; the same list for everyone."""

    name = "popularity"

    def _fit(self, data: Interactions) -> None:
        self.counts = np.asarray((data.matrix > 0).sum(axis=0)).ravel().astype(np.float32)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(user_rows), len(self.counts))).copy()


class Trending(Recommender):
    """Time-decayed popularity: each interaction counts 0.5 ** (age / half_life).

    Age is measured from the latest interaction in the training data, so the same data always
    gives the same ranking (no dependence on the wall clock).
    """

    name = "trending"

    def __init__(self, half_life_days: float = 7.0):
        super().__init__()
        self.half_life_days = half_life_days

    def _fit(self, data: Interactions) -> None:
        self.counts = decayed_counts(data, self.half_life_days).astype(np.float32)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(user_rows), len(self.counts))).copy()


def decayed_counts(data: Interactions, half_life_days: float) -> np.ndarray:
    """Per video, the sum of 0.5 ** (age / half_life) over its interactions (float64).

    Ages count back from the latest interaction in `data`, not from the wall clock.
    """
    ts = data.timestamps.tocoo()
    now = ts.data.max() if ts.nnz else 0.0
    age_days = (now - ts.data) / 86_400.0
    weights = np.power(0.5, age_days / half_life_days)
    return np.bincount(ts.col, weights=weights, minlength=data.n_videos)
