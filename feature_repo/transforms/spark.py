"""The same feature SQL on Spark SQL, for data that outgrows one machine.

`run.py` runs `user_features.sql` / `video_features.sql` with DuckDB; this module registers the
same input views on a SparkSession and runs the same text, unchanged:

    events, users, videos      the lake's canonical parquet tables
    video_genres               `explode(genres)` (DuckDB: `unnest`)
    as_of_times(as_of_ts)      the times to compute features at

`unix_seconds` and `array_join` are Spark built-ins (DuckDB gets them as macros). The session runs
in UTC, as the DuckDB runner does. tests/test_spark_transforms.py checks both engines give the same
rows on the hand-made lake and on ml-latest-small.

    spark = spark_session()                                   # local[*]; a cluster URL at scale
    frame = spark_features(spark, lake, "user_features", as_of)   # a Spark DataFrame
    write_features(spark, lake, as_of, out_dir)               # <out_dir>/<table>/ parquet

The spark profile's Feast store (feast_repo/feature_store.spark.yaml) reads these folders with
Feast's Spark offline store (`SparkSource(path=<out_dir>/<table>)`, data_sources.for_spark); the DuckDB
writer's merge of snapshots by as-of time is then the table format's job (one partition per as-of
time, which Feast also uses to prune). At scale the lake and `out_dir` are object-store paths.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from feature_repo import schema
from feature_repo.lake import Lake
from feature_repo.transforms.run import TABLES, TIMESTAMP_FIELD, normalize_as_of, sql_text

if TYPE_CHECKING:
    from vidrec.settings import Settings

# What a JVM out of memory looks like through py4j (a task's or the driver's).
_OUT_OF_MEMORY = ("SparkOutOfMemoryError", "UNABLE_TO_ACQUIRE_MEMORY", "java.lang.OutOfMemoryError")


class SparkOutOfMemory(RuntimeError):
    """A Spark step ran out of memory; the message says which knobs to turn."""


def spark_session(master: str = "local[*]", app_name: str = "vidrec-features", **conf: str):
    """A SparkSession in UTC with adaptive execution; `conf` adds spark.* settings."""
    import logging

    from pyspark.sql import SparkSession

    # py4j logs at INFO from __del__ while the interpreter shuts down, into closed streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.enabled", "false")
    )
    if master.startswith("local"):
        # Python workers (pandas UDFs, xgboost.spark) run this interpreter, whose packages they
        # import; PySpark's default is whatever `python3` is on PATH, read from the environment
        # when the context starts. A cluster's executors use their own.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def profile_session(settings: Settings, app_name: str, **conf: str):
    """The spark profile's session: `settings.spark_master`, with `settings.spark_driver_memory`
    as the driver's heap (in local[N] mode the executors run in the driver; on a cluster their
    memory is the cluster's `spark.executor.memory`)."""
    return spark_session(
        settings.spark_master, app_name, **{"spark.driver.memory": settings.spark_driver_memory, **conf}
    )


@contextmanager
def memory_errors_named(step: str, settings: Settings) -> Iterator[None]:
    """Turns Spark's out-of-memory failure (a JVM stack trace through py4j) into a SparkOutOfMemory
    that names the step, the master and the heap, and what to change."""
    try:
        yield
    except Exception as exc:
        if not any(marker in str(exc) for marker in _OUT_OF_MEMORY):
            raise
        raise SparkOutOfMemory(
            f"{step} ran out of memory on Spark ({settings.spark_master}, driver memory "
            f"{settings.spark_driver_memory}): set VIDREC_SPARK_DRIVER_MEMORY higher (local mode), or "
            "VIDREC_SPARK_MASTER to a cluster with more executor memory"
        ) from exc


def register_inputs(spark, lake: Lake, as_of_times: Iterable) -> None:
    """The transforms' input views, as temporary views of the session."""
    from pyspark.sql.types import StructField, StructType, TimestampType

    as_of = normalize_as_of(as_of_times)
    if lake.event_files():
        spark.read.parquet(*[str(p) for p in lake.event_files()]).select(*schema.EVENTS.names).createOrReplaceTempView(
            "events"
        )
    else:
        spark.createDataFrame(schema.EVENTS.empty_table().to_pandas()).createOrReplaceTempView("events")
    for table in ("users", "videos"):
        path = lake.table_path(table)
        names = schema.TABLES[table].names
        frame = (
            spark.read.parquet(str(path))
            if path.exists()
            else spark.createDataFrame(schema.TABLES[table].empty_table().to_pandas())
        )
        frame.select(*names).createOrReplaceTempView(table)
    spark.sql("SELECT video_id, explode(genres) AS genre FROM videos").createOrReplaceTempView("video_genres")
    rows = [(t.to_pydatetime(),) for t in as_of]
    spark.createDataFrame(rows, StructType([StructField("as_of_ts", TimestampType(), False)])).createOrReplaceTempView(
        "as_of_times"
    )


def spark_features(spark, lake: Lake, table: str, as_of_times: Iterable):
    """One feature table as of the given times: the SQL of `table`, run by Spark."""
    if table not in TABLES:
        raise ValueError(f"unknown feature table {table!r}: expected one of {', '.join(TABLES)}")
    register_inputs(spark, lake, as_of_times)
    return spark.sql(sql_text(table))


def write_features(
    spark, lake: Lake, as_of_times: Iterable, out_dir: Path | str, tables: Iterable[str] | None = None
) -> dict[str, str]:
    """Each table as parquet under `<out_dir>/<table>/`, one partition folder per as-of time.

    Partitions of the given as-of times are replaced; others stay (dynamic partition overwrite), so
    re-running a day rewrites that day only, as the DuckDB writer does for its single file.
    """
    names = list(tables or TABLES)
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown feature tables {unknown}: expected some of {', '.join(TABLES)}")
    register_inputs(spark, lake, as_of_times)
    # Every table's SQL reads the events; read the lake's files once (spilling to disk when large).
    events = spark.table("events").persist()
    events.createOrReplaceTempView("events")
    try:
        return {table: write_partitioned(spark, spark.sql(sql_text(table)), out_dir, table) for table in names}
    finally:
        events.unpersist()


def write_partitioned(spark, frame, out_dir: Path | str, table: str) -> str:
    """A feature table (Spark DataFrame with `event_timestamp`) as `<out_dir>/<table>/`, one partition
    folder `as_of=<yyyy-MM-ddTHH-mm-ss>` per as-of time, the layout the spark profile's Feast sources
    read; partitions in `frame` are replaced, others stay. Returns the folder."""
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    target = f"{str(out_dir).rstrip('/')}/{table}"
    frame.withColumn("as_of", _partition_value(TIMESTAMP_FIELD)).write.mode("overwrite").partitionBy("as_of").parquet(
        target
    )
    return target


def _partition_value(column: str):
    from pyspark.sql import functions as F

    return F.date_format(F.col(column), "yyyy-MM-dd'T'HH-mm-ss")
