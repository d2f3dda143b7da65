"""The feature tables of a profile: which engine writes them, in the layout its offline store reads.

local and prod: DuckDB (`run.compute_features`: one parquet file per table). spark: Spark SQL on the
settings' `spark_master` (`spark.write_features`: a folder per table, one partition per as-of time,
which the spark profile's SparkSources read). The SQL text is the same; so are the rows
(tests/test_spark_transforms.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from feature_repo.lake import Lake
from feature_repo.transforms.run import TABLES, TIMESTAMP_FIELD, compute_features, normalize_as_of
from vidrec.settings import Settings


def write_feature_tables(
    lake: Lake,
    as_of_times: Iterable[pd.Timestamp],
    settings: Settings,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Path]:
    """Every feature table as of `as_of_times` under the settings' features folder; {table: path}.

    Rows of these as-of times replace earlier rows of the same times, others stay, with either
    engine. `progress(table, rows)` is told the rows written per table.
    """
    as_of = normalize_as_of(as_of_times)
    if settings.profile != "spark":
        return compute_features(lake, as_of, settings.features_dir, progress=progress)
    from pyspark.sql import functions as F

    from feature_repo.transforms.spark import memory_errors_named, profile_session, write_features

    spark = profile_session(settings, app_name="vidrec-features")
    with lake.locked(), memory_errors_named("the feature tables", settings):
        written = write_features(spark, lake, as_of, settings.features_dir)
    if progress is not None:
        stamps = [t.to_pydatetime() for t in as_of]
        for table, folder in written.items():  # parquet footers: cheap to count
            progress(table, spark.read.parquet(folder).where(F.col(TIMESTAMP_FIELD).isin(stamps)).count())
    return {table: Path(written[table]) for table in TABLES}
