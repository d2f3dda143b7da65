"""Implicit-feedback matrix factorisation by alternating least squares (Hu, Koren & Volinsky,
"Collaborative Filtering for Implicit Feedback Datasets", ICDM 2008), fitted with implicit's CPU
solver (conjugate-gradient variant, Takacs et al. 2011).

Every (user, video) cell is a preference p = 1 if the user interacted, else 0, trusted with
confidence c = 1 + alpha * w, where w is the Interactions weight (binary, rating, or engagement
with completion / watch time). Unobserved cells keep confidence 1. ALS minimises
sum c (p - x_u . y_i)^2 + reg (|x|^2 + |y|^2) by solving for all users, then all videos, in turn.

implicit stores the confidence itself in the matrix it is given (its solver adds (c - 1) y y^T
per observed cell), and its own `alpha` only multiplies the matrix (c = alpha * w, which for
binary data is alpha and never the paper's 1 + alpha). So the paper's confidence is built here and
implicit's `alpha` is left at 1. The CPU class is used explicitly, with one thread and a seeded
random state (`models.implicit_factors`), so the same data and seed give the same factors.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

from models.base import check_non_negative_float, check_positive_int, check_weights
from models.implicit_factors import FIT_THREADS, ImplicitFactorModel
from models.interactions import Interactions


def confidence_matrix(weights: sp.spmatrix, alpha: float) -> sp.csr_matrix:
    """Hu et al.'s confidence 1 + alpha * w on the observed cells (float32 CSR, same pattern).

    Negative weights would read as dislikes in implicit's solver; Interactions never produces
    them, and a silent change of meaning is worse than an error.
    """
    matrix = check_weights(weights)
    if matrix.nnz and (matrix.data < 0).any():
        raise ValueError("ALS expects non-negative interaction weights (Interactions drops pairs whose total is <= 0)")
    matrix.data = (1.0 + alpha * matrix.data).astype(np.float32)
    return matrix


class ALS(ImplicitFactorModel):
    """Weighted matrix factorisation for implicit feedback.

    factors: latent dimensions. regularization: L2 strength on both factor matrices.
    iterations: full user + video sweeps. alpha: how much more an interaction is trusted than
      an absence (confidence 1 + alpha * w); 0 weighs observed and unobserved cells alike.
    seed: initial factors; with the single solver thread the fit is reproducible.

    score = user_factors @ item_factors.T; `item_vectors` are the video factors, so
    `similar_items` is cosine in the learned taste space. Videos nobody interacted with end up
    with (near) zero factors and scores.
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 20.0,
        seed: int = 42,
    ):
        super().__init__(seed)
        self.factors = check_positive_int("factors", factors)
        self.regularization = check_non_negative_float("regularization", regularization)
        self.iterations = check_positive_int("iterations", iterations)
        self.alpha = check_non_negative_float("alpha", alpha)

    def _training_matrix(self, data: Interactions) -> sp.csr_matrix:
        return confidence_matrix(data.matrix, self.alpha)

    def _implicit_model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=1.0,  # the confidence matrix already holds 1 + alpha * w
            iterations=self.iterations,
            num_threads=FIT_THREADS,
            random_state=self.seed,
        )
