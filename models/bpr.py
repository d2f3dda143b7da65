"""Bayesian Personalized Ranking (Rendle et al., "BPR: Bayesian Personalized Ranking from
Implicit Feedback", UAI 2009), fitted with implicit's CPU SGD.

BPR learns to rank rather than to reconstruct: for sampled triples (user u, watched video i,
unwatched video j) it raises sigma(x_ui - x_uj), the probability that u prefers i to j, with
x_ui = p_u . q_i + b_i. It only needs to know which cells are observed; the weights' sizes do
not matter (implicit treats every stored positive cell as "watched").

implicit's sampler draws from a per-thread RNG seeded from `random_state`; with one thread the
triples come in one fixed order, so the same seed gives the same model.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from implicit.cpu.bpr import BayesianPersonalizedRanking

from models.base import check_non_negative_float, check_positive_int, check_weights
from models.implicit_factors import FIT_THREADS, ImplicitFactorModel
from models.interactions import Interactions


class BPR(ImplicitFactorModel):
    """Pairwise-ranking matrix factorisation for implicit feedback.

    factors: latent dimensions (implicit adds one more column holding the video bias).
    learning_rate: SGD step (> 0). regularization: L2 strength. iterations: epochs, each one
      sampling as many triples as there are observed cells. seed: initial factors and sampling.

    score = user_factors @ item_factors.T (the bias enters through the users' constant 1 column).
    `item_vectors` are the video factors without the bias column, so `similar_items` compares
    taste, not popularity.
    """

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 42,
    ):
        super().__init__(seed)
        self.factors = check_positive_int("factors", factors)
        self.learning_rate = check_non_negative_float("learning_rate", learning_rate)
        if self.learning_rate == 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
        self.regularization = check_non_negative_float("regularization", regularization)
        self.iterations = check_positive_int("iterations", iterations)

    def _training_matrix(self, data: Interactions) -> sp.csr_matrix:
        observed = check_weights(data.matrix)
        if observed.nnz == 0:
            raise ValueError("BPR needs at least one interaction to sample positive videos from")
        # BPR reads only which cells are positive; negative weights would be sampled as likes.
        observed = observed.multiply(observed > 0).tocsr()
        observed.data[:] = 1.0
        return observed

    def _implicit_model(self) -> BayesianPersonalizedRanking:
        # One SGD thread: Hogwild updates from several threads would make the result depend on timing.
        return BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=FIT_THREADS,
            random_state=self.seed,
        )

    def item_vectors(self) -> np.ndarray:
        return super().item_vectors()[:, :-1]  # without the bias column
