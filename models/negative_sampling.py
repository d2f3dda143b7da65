"""Uniform negative sampling for implicit feedback: the unobserved videos that BPR and NeuMF
learn to rank below a user's observed ones."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def observed_keys(observed: sp.csr_matrix) -> np.ndarray:
    """The sorted keys user * n_videos + video of a users x videos matrix's stored cells."""
    users, items = observed.nonzero()
    return np.sort(users.astype(np.int64) * observed.shape[1] + items.astype(np.int64))


def sample_unseen(
    users: np.ndarray, n_videos: int, seen_keys: np.ndarray, rng: np.random.Generator, tries: int = 5
) -> np.ndarray:
    """One uniformly drawn video row per entry of `users`, avoiding that user's observed videos.

    `seen_keys` is the sorted array of user * n_videos + video of observed pairs (`observed_keys`);
    a sorted search checks every draw at once. Collisions are redrawn a few times; a rare leftover
    (a user who has seen almost the whole catalog) only adds a little label noise.
    """
    negatives = rng.integers(0, n_videos, size=len(users))
    for _ in range(tries):
        hit = _contains(seen_keys, users * n_videos + negatives)
        if not hit.any():
            break
        negatives[hit] = rng.integers(0, n_videos, size=int(hit.sum()))
    return negatives


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each key is in `sorted_keys`."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return sorted_keys[pos] == keys
