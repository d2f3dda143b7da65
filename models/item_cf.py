"""Item-based collaborative filtering: "people who watched this also watched" (Sarwar et al.,
"Item-Based Collaborative Filtering Recommendation Algorithms", WWW 2001; the neighbourhood form
of implicit's `CosineRecommender`).

Two videos are similar when the same users interacted with them: the cosine of their columns of
the users x videos matrix, optionally shrunk towards zero when they share little support
(Koren's shrinkage, dot / (|a| |b| + shrink)). Only each video's `k_neighbors` most similar videos
are kept, as a sparse videos x videos matrix S, and a user's scores are `user_row @ S`: every
watched video votes for its neighbours, weighted by the interaction weight and the similarity.

The similarity is computed here with scipy rather than with implicit's `all_pairs_knn` because
implicit has no shrinkage and keeps each item as its own neighbour; the block-wise top-k below
bounds memory the same way (one dense block of rows at a time, never the full n x n product).
`cosine_knn` is shared with the user-based model, which needs the same thing over users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.base import Recommender, check_non_negative_float, check_positive_int, check_weights, top_k
from models.interactions import Interactions

# Dense similarity entries materialised per block (float32): 2**23 -> 32 MiB, whatever the size.
BLOCK_ELEMENTS = 2**23


def _top_k_block(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, value) of each row's k largest positive entries of a dense block."""
    kk = min(k, block.shape[1])
    cols = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
    values = np.take_along_axis(block, cols, axis=1)
    rows = np.broadcast_to(np.arange(block.shape[0])[:, None], cols.shape)
    keep = values > 0
    return rows[keep], cols[keep], values[keep]


def cosine_knn(vectors: sp.spmatrix, k: int, shrink: float = 0.0) -> sp.csr_matrix:
    """Sparse (n x n) matrix holding, per row, its k most cosine-similar other rows of `vectors`.

    Similarity = a.b / (|a| |b| + shrink); a row is never its own neighbour and only positive
    similarities are kept, so rows without any co-occurrence stay empty. Rows with no entries
    at all take no part (they can be nobody's neighbour), which keeps the blocks narrow.
    """
    vectors = sp.csr_matrix(vectors, dtype=np.float32)
    n = vectors.shape[0]
    active = np.flatnonzero(vectors.getnnz(axis=1) > 0)
    sub = vectors[active]
    sub_t = sub.T.tocsc()
    norms = np.sqrt(np.asarray(sub.multiply(sub).sum(axis=1), dtype=np.float32)).ravel()
    block_rows = max(1, BLOCK_ELEMENTS // max(len(active), 1))
    rows, cols, values = [], [], []
    for start in range(0, len(active), block_rows):
        stop = min(start + block_rows, len(active))
        sims = (sub[start:stop] @ sub_t).toarray()
        sims /= np.outer(norms[start:stop], norms) + np.float32(shrink)
        sims[np.arange(stop - start), np.arange(start, stop)] = 0.0  # not its own neighbour
        r, c, v = _top_k_block(sims, k)
        rows.append(active[r + start])
        cols.append(active[c])
        values.append(v)
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32
    )


class ItemKNN(Recommender):
    """Item-item cosine neighbourhood model.

    k_neighbors: similar videos kept per video; fewer makes recommendations more local and the
      model smaller (nnz <= n_videos * k_neighbors).
    shrink: support shrinkage added to the cosine denominator; > 0 distrusts similarities built
      on few common users (pairs watched by two people who happen to overlap).

    The matrix's weights (binary, rating or engagement) enter both the cosine and the votes.
    `similar_items` reads the learned neighbour lists directly: a video's similar videos are its
    kept neighbours, best first, and slots beyond its neighbour count are -1 with score -inf.
    `item_vectors` stays the base's matrix columns, the very vectors whose cosine the neighbours
    come from, so callers that compare videos by vectors (hybrid, diversity) see the same measure.
    """

    name = "item-cf"

    def __init__(self, k_neighbors: int = 100, shrink: float = 0.0):
        super().__init__()
        self.k_neighbors = check_positive_int("k_neighbors", k_neighbors)
        self.shrink = check_non_negative_float("shrink", shrink)

    def _fit(self, data: Interactions) -> None:
        matrix = check_weights(data.matrix)
        self.similarity_ = cosine_knn(matrix.T, self.k_neighbors, self.shrink)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        data = self._require()
        rows = data.matrix[np.asarray(user_rows, dtype=np.int64)].astype(np.float32)
        return (rows @ self.similarity_).toarray()

    def similar_items(self, video_rows: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest kept neighbours of each video by the learned (shrunk) cosine."""
        self._require()
        video_rows = np.asarray(video_rows, dtype=np.int64)
        neighbours = self.similarity_[video_rows].tocoo()
        sims = np.full((len(video_rows), self.similarity_.shape[1]), -np.inf, dtype=np.float32)
        sims[neighbours.row, neighbours.col] = neighbours.data
        return top_k(sims, k)
