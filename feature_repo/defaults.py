"""The data stages' names and defaults, one home each: the loaders, the `vidrec` options and the
`vidrec_features` DAG's Params read them. Standard library only: DAG files import it at parse time."""

from __future__ import annotations

DATASETS = ("movielens-small", "movielens-100k", "movielens-1m", "movielens-25m", "movielens-32m",
            "canonical", "synthetic")  # fmt: skip
DEFAULT_DATASET = "movielens-small"
EMBEDDING_METHODS = ("minilm", "tfidf")  # video content embeddings; "none" keeps the table there
DEFAULT_EMBEDDINGS = "minilm"
CHUNK_ROWS = 1_000_000  # event rows validated at a time: bounds ingest memory
MAX_QUARANTINE_RATE = 0.05  # validation fails a table that quarantines more than this share of its rows
