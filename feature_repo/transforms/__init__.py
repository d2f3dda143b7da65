"""Feature transforms: SQL written once (DuckDB here, Spark SQL at scale), run as of given times."""

from feature_repo.transforms.run import (
    CREATED_FIELD,
    TABLES,
    TIMESTAMP_FIELD,
    compute_features,
    default_as_of_times,
    normalize_as_of,
    query_features,
    sql_text,
    table_path,
)

__all__ = [
    "CREATED_FIELD",
    "TABLES",
    "TIMESTAMP_FIELD",
    "compute_features",
    "default_as_of_times",
    "normalize_as_of",
    "query_features",
    "sql_text",
    "table_path",
]
