"""Content-based candidate generation: videos described by their text, users by what they watched.

`ContentBased` is a `Recommender` whose user profile is the interaction-weighted mean of the
vectors of the videos the user engaged with, and whose score is the cosine between that profile
and every catalog video. Because the score needs only a video's content, videos nobody has
watched yet are recommended as readily as popular ones: the cold-start path for new videos.
The text and its encoders (TF-IDF, MiniLM) live in `feature_repo.text`, which the feature
pipeline uses for video embeddings too.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feature_repo.text import ENCODERS, encode_texts, video_text
from models.base import Recommender, unit_rows
from models.interactions import Interactions

ContentVectors: TypeAlias = np.ndarray | sp.csr_matrix


# ---- the recommender ------------------------------------------------------------------------------


def _as_vectors(vectors, n_rows: int) -> ContentVectors:
    """Precomputed vectors as float32 CSR or 2-D ndarray, one row per video row."""
    if sp.issparse(vectors):
        out = sp.csr_matrix(vectors, dtype=np.float32)
    else:
        out = np.asarray(vectors, dtype=np.float32)
        if out.ndim != 2:
            raise ValueError(f"vectors must be 2-D (videos x dims), got shape {out.shape}")
    if out.shape[0] != n_rows:
        raise ValueError(f"vectors have {out.shape[0]} rows but videos has {n_rows}: they must be aligned")
    values = out.data if sp.issparse(out) else out
    if not np.isfinite(values).all():
        raise ValueError("vectors contain NaN or infinite values")
    return out


def align_vectors(vectors: ContentVectors, ids: np.ndarray, order: np.ndarray) -> ContentVectors:
    """Rows of `vectors` (aligned with `ids`) re-ordered to `order`; ids not in `ids` get zero rows."""
    position = pd.Index(ids).get_indexer(pd.Index(order))
    known = position >= 0
    if sp.issparse(vectors):
        # Selecting through a sparse 0/1 matrix keeps everything sparse, zero rows included.
        select = sp.csr_matrix(
            (np.ones(known.sum(), dtype=np.float32), (np.flatnonzero(known), position[known])),
            shape=(len(order), vectors.shape[0]),
        )
        return sp.csr_matrix(select @ vectors)
    aligned = np.zeros((len(order), vectors.shape[1]), dtype=np.float32)
    aligned[known] = vectors[position[known]]
    return aligned


def weighted_mean_profiles(weights: sp.csr_matrix, vectors: ContentVectors) -> ContentVectors:
    """Per user, the mean of the video vectors weighted by the user's interaction weights.

    Divided by the sum of absolute weights, so a negative weight (a dislike) pulls away from a
    video without flipping the scale. Users with no interactions get a zero profile.
    """
    weights = sp.csr_matrix(weights, dtype=np.float32)
    totals = np.asarray(abs(weights).sum(axis=1), dtype=np.float64).ravel()
    inverse = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
    profiles = sp.diags(inverse) @ (weights @ vectors)
    return (
        sp.csr_matrix(profiles, dtype=np.float32) if sp.issparse(profiles) else np.asarray(profiles, dtype=np.float32)
    )


class ContentBased(Recommender):
    """Score = cosine(user profile, video vector), from video text alone.

    videos: canonical video rows (video_id, title, and optionally genres, tags, description).
    encoder: `tfidf` (lexical; fast, good at series and shared genre words) or `minilm` (semantic
      sentence embeddings). The model's name is `content-<encoder>`.
    vectors: optional precomputed vectors aligned with `videos` rows (so the MiniLM pass can be
      shared with features or metrics); when given, `encoder` only names the model.

    The catalog is encoded on the first fit and kept, so refits on new interactions are cheap.
    After fit, `vectors_` holds the L2-normalised vectors aligned with `data.video_ids` (zero rows
    for videos missing from `videos`) and `profiles_` the users' weighted-mean profiles.
    """

    def __init__(self, videos: pd.DataFrame, encoder: str = "tfidf", vectors: ContentVectors | None = None):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}: expected one of {ENCODERS}")
        if not isinstance(videos, pd.DataFrame) or "video_id" not in videos.columns:
            raise ValueError("videos must be a DataFrame of canonical video rows with a 'video_id' column")
        duplicated = videos["video_id"][videos["video_id"].duplicated()]
        if len(duplicated):
            raise ValueError(f"videos has duplicate video_id values, e.g. {duplicated.iloc[:3].tolist()}")
        self.encoder = encoder
        self.name = f"content-{encoder}"
        self.catalog_ids = videos["video_id"].to_numpy()
        if vectors is not None:
            self.catalog_vectors: ContentVectors | None = _as_vectors(vectors, len(videos))
            self._texts: list[str] | None = None
        else:
            self.catalog_vectors = None
            self._texts = video_text(videos).tolist()  # only what encoding needs, not the frame

    def _encoded(self) -> ContentVectors:
        """The catalog's vectors, encoding once (the texts are dropped afterwards)."""
        if self.catalog_vectors is None:
            if self._texts is None:  # only reachable if the object was tampered with
                raise RuntimeError("ContentBased has neither vectors nor texts to encode")
            self.catalog_vectors = encode_texts(self._texts, self.encoder)
            self._texts = None
        return self.catalog_vectors

    def _fit(self, data: Interactions) -> None:
        vectors = self._encoded()
        if data.n_videos and not pd.Index(data.video_ids).isin(self.catalog_ids).any():
            raise ValueError(
                "none of the interaction matrix's video ids is in the videos frame: "
                "check that both use the same ids (and the same type, e.g. str)"
            )
        self.vectors_ = unit_rows(align_vectors(vectors, self.catalog_ids, data.video_ids))
        if sp.issparse(self.vectors_):
            self.vectors_ = sp.csr_matrix(self.vectors_, dtype=np.float32)
        self.profiles_ = weighted_mean_profiles(data.matrix, self.vectors_)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        self._require()
        profiles = unit_rows(self.profiles_[np.asarray(user_rows, dtype=np.int64)])
        sims = profiles @ self.vectors_.T
        sims = sims.toarray() if sp.issparse(sims) else np.asarray(sims)
        return sims.astype(np.float32, copy=False)

    def item_vectors(self) -> ContentVectors:
        """The content vectors: similar_items is pure content similarity, watched or not."""
        self._require()
        return self.vectors_
