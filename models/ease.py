"""EASE: embarrassingly shallow autoencoder (Steck, "Embarrassingly Shallow Autoencoders for
Sparse Data", WWW 2019).

An item-item weight matrix B with a zero diagonal is fitted in closed form to reconstruct the
interaction matrix X from itself, minimising ||X - X B||^2 + l2 ||B||^2 subject to diag(B) = 0:

    P = (X^T X + l2 I)^-1,    B = I - P / diag(P)   (column j divided by P_jj), then diag(B) = 0

and a user's scores are X_u @ B. There is no iteration and no seed: the same data always gives
the same model. The cost is one dense inverse of an (items x items) matrix, so only videos with at
least one interaction take part (the others could only get zero weights anyway), and above
`max_items` of them the model is fitted on the `max_items` most-engaged videos only (the long
tail gets no EASE score; the other generators still propose it), or refused if asked to be exact.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from models.base import Recommender, check_positive_int
from models.interactions import Interactions

log = logging.getLogger(__name__)
# Row blocks of the in-place symmetrisation: bounds its temporaries to block x n.
_BLOCK = 2048


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor.

    Cheaper and more stable than a general inverse; X^T X + l2 I with l2 > 0 is always SPD.
    """
    factor, info = scipy.linalg.lapack.dpotrf(matrix, lower=False, clean=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix is not positive definite (LAPACK dpotrf info={info})")
    upper, info = scipy.linalg.lapack.dpotri(factor, lower=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky inverse failed (LAPACK dpotri info={info})")
    return np.triu(upper) + np.triu(upper, 1).T  # dpotri fills only the upper triangle


def ease_weights(matrix: sp.spmatrix, l2: float) -> np.ndarray:
    """Steck's closed-form item-item weights B (float32, zero diagonal) for users x items `matrix`.

    In place where LAPACK allows: one float64 n x n buffer plus the float32 result, about
    12 n^2 bytes at the peak (15,000 items -> 2.7 GB).
    """
    gram = np.asarray((matrix.T @ matrix).toarray(), dtype=np.float64, order="F")
    gram[np.diag_indices_from(gram)] += l2
    factor, info = scipy.linalg.lapack.dpotrf(gram, lower=False, clean=True, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix is not positive definite (LAPACK dpotrf info={info})")
    del gram
    precision, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky inverse failed (LAPACK dpotri info={info})")
    del factor
    n = precision.shape[0]
    diagonal = np.diag(precision).copy()
    weights = np.empty((n, n), dtype=np.float32)
    for start in range(0, n, _BLOCK):  # dpotri fills only the upper triangle: mirror it by blocks
        stop = min(start + _BLOCK, n)
        block = precision[start:stop, :].copy()  # columns past the block: upper entries, as they are
        block[:, :start] = precision[:start, start:stop].T  # columns before it: the upper entry (j, i)
        square = precision[start:stop, start:stop]
        block[:, start:stop] = np.triu(square) + np.triu(square, 1).T
        block /= -diagonal  # B_ij = -P_ij / P_jj
        weights[start:stop] = block
    np.fill_diagonal(weights, 0.0)
    return weights


MAX_ITEMS = 15_000  # the dense inverse's default limit (2.7 GB at its peak)
PEAK_BYTES_PER_ITEM_SQUARED = 12  # the fit's peak: the float64 Gram matrix, its factor, the float32 weights


def fit_peak_bytes(n_items: int) -> int:
    """EASE's memory at the peak of a fit on `n_items` videos."""
    return PEAK_BYTES_PER_ITEM_SQUARED * n_items**2


class EASE(Recommender):
    """Linear item-item autoencoder with a closed-form fit.

    l2: ridge strength (> 0); larger shrinks the weights towards zero, which favours popular
      items less. Steck uses a few hundred on MovieLens-20M; small data wants less.
    max_items: the most videos the dense inverse takes (peak about 12 * max_items^2 bytes:
      15,000 -> 2.7 GB). Above it, `approximate` (the default) fits on the max_items videos with
      the most interacting users and leaves the rest unscored by EASE; `approximate=False`
      refuses with a message instead of risking the machine's memory.

    The matrix's weights are used as they are (binary, rating or engagement weighting is the
    Interactions' choice). Videos without interactions score 0. `similar_items` uses the base
    co-occurrence vectors; B itself is items x items and would be as large as the inverse.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = MAX_ITEMS, approximate: bool = True):
        super().__init__()
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 <= 0:
            raise ValueError(f"l2 must be a positive finite number, got {l2!r}")
        self.l2 = float(l2)
        self.max_items = check_positive_int("max_items", max_items)
        self.approximate = bool(approximate)

    def _fit(self, data: Interactions) -> None:
        matrix = sp.csr_matrix(data.matrix, dtype=np.float64)
        if matrix.nnz and not np.isfinite(matrix.data).all():
            raise ValueError("the interaction matrix contains NaN or infinite weights")
        support = matrix.getnnz(axis=0)
        active = np.flatnonzero(support > 0)
        if len(active) > self.max_items:
            if not self.approximate:
                raise ValueError(
                    f"EASE would invert a {len(active):,} x {len(active):,} matrix, above max_items={self.max_items:,} "
                    f"(about {fit_peak_bytes(len(active)) / 2**30:.1f} GB): leave approximate=True to fit it on the "
                    f"{self.max_items:,} most-engaged videos, drop 'ease' from the generators (item-cf and als "
                    "scale to any catalog), or raise max_items if the machine has the memory"
                )
            log.warning(
                "EASE: %s videos with interactions, above max_items=%s: fitting on the %s most-engaged only",
                f"{len(active):,}", f"{self.max_items:,}", f"{self.max_items:,}",
            )  # fmt: skip
            top = np.argsort(-support[active], kind="stable")[: self.max_items]
            active = np.sort(active[top])
        self.active_items_ = active
        self.weights_ = ease_weights(matrix[:, active], self.l2)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        data = self._require()
        rows = data.matrix[np.asarray(user_rows, dtype=np.int64)][:, self.active_items_]
        scores = np.zeros((rows.shape[0], data.n_videos), dtype=np.float32)
        scores[:, self.active_items_] = np.asarray(rows.astype(np.float32) @ self.weights_)
        return scores
