"""User-based collaborative filtering: "people like you watched" (Resnick et al., GroupLens 1994;
Herlocker et al., SIGIR 1999, in its implicit-feedback form).

Two users are similar when their rows of the users x videos matrix point the same way (cosine).
Each user keeps only their `k_neighbors` most similar users, as a sparse users x users matrix N,
and their scores are `N[user] @ X`: the neighbours' interaction rows summed, each weighted by how
similar that neighbour is. The neighbour search is the same block-wise cosine top-k as the
item-based model's, run over users instead of videos.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.base import Recommender, check_positive_int, check_weights
from models.interactions import Interactions
from models.item_cf import cosine_knn


class UserKNN(Recommender):
    """User-user cosine neighbourhood model.

    k_neighbors: similar users kept per user. Few neighbours give personal but noisy lists;
      many drift towards popularity (with every user as a neighbour it is popularity weighted
      by similarity).

    The model only scores the users it was fitted on (their neighbours are found at fit time);
    a user with no co-occurring neighbour gets all-zero scores. `similar_items` keeps the base
    behaviour, cosine over the videos' columns of the interaction matrix: user neighbourhoods say
    nothing about video-to-video similarity.
    """

    name = "user-cf"

    def __init__(self, k_neighbors: int = 50):
        super().__init__()
        self.k_neighbors = check_positive_int("k_neighbors", k_neighbors)

    def _fit(self, data: Interactions) -> None:
        self.matrix_ = check_weights(data.matrix)
        self.neighbours_ = cosine_knn(self.matrix_, self.k_neighbors)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        self._require()
        weights = self.neighbours_[np.asarray(user_rows, dtype=np.int64)]
        return sp.csr_matrix(weights @ self.matrix_).toarray()
