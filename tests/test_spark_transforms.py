"""The feature SQL is written once: Spark SQL and DuckDB give the same rows from the same text.

A real local SparkSession (pyspark 4, the JVM of the machine) runs `feature_repo.transforms.spark`
over the same lakes as the DuckDB runner: the hand-made lake of test_features (hand-checked values)
and the real ml-latest-small at three as-of times. Every column of every row must match.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_platform import T2, T, tiny_lake

from feature_repo.lake import Lake
from feature_repo.transforms import TABLES, TIMESTAMP_FIELD, query_features
from feature_repo.transforms.spark import SparkOutOfMemory, memory_errors_named, spark_features, write_features
from vidrec.settings import Settings

pytestmark = pytest.mark.slow


def spark_frame(spark, lake: Lake, table: str, as_of) -> pd.DataFrame:
    frame = spark_features(spark, lake, table, as_of).toPandas()
    for column in (TIMESTAMP_FIELD, "created_ts"):
        frame[column] = (
            pd.to_datetime(frame[column]).dt.tz_localize("UTC") if frame[column].dt.tz is None else frame[column]
        )
    return frame


def assert_same_rows(duck: pd.DataFrame, spark: pd.DataFrame, key: str) -> None:
    assert list(spark.columns) == list(duck.columns)
    order = [TIMESTAMP_FIELD, key]
    duck = duck.sort_values(order).reset_index(drop=True)
    spark = spark.sort_values(order).reset_index(drop=True)
    assert len(duck) == len(spark) > 0
    for column in duck.columns:
        want, got = duck[column], spark[column]
        if column in (TIMESTAMP_FIELD, "created_ts"):
            assert (pd.to_datetime(got, utc=True) == pd.to_datetime(want, utc=True)).all(), column
        elif pd.api.types.is_numeric_dtype(want):
            np.testing.assert_allclose(
                got.to_numpy(float), want.to_numpy(float), rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=column
            )
        else:
            assert got.fillna("<null>").tolist() == want.fillna("<null>").tolist(), column


@pytest.mark.parametrize("table", sorted(TABLES))
def test_spark_matches_duckdb_on_the_hand_made_lake(spark, tmp_path, table):
    lake = tiny_lake(tmp_path)
    key = TABLES[table][1]
    assert_same_rows(query_features(lake, table, [T, T2]), spark_frame(spark, lake, table, [T, T2]), key)


AS_OF = [
    pd.Timestamp("2017-01-01", tz="UTC"),
    pd.Timestamp("2018-06-01", tz="UTC"),
    pd.Timestamp("2018-09-25", tz="UTC"),
]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_spark_matches_duckdb_on_movielens(spark, movielens_lake, table):
    key = TABLES[table][1]
    duck = query_features(movielens_lake, table, AS_OF)
    assert_same_rows(duck, spark_frame(spark, movielens_lake, table, AS_OF), key)


def test_write_features_replaces_only_the_as_of_times_it_computes(spark, tmp_path):
    lake = tiny_lake(tmp_path)
    out = tmp_path / "features"
    write_features(spark, lake, [T, T2], out)
    first = spark.read.parquet(str(out / "user_features")).toPandas()
    assert sorted(first[TIMESTAMP_FIELD].unique()) == sorted(pd.to_datetime([T, T2]).tz_localize(None))
    write_features(spark, lake, [T2], out)  # re-run one day: that partition is rewritten, T stays
    again = spark.read.parquet(str(out / "user_features")).toPandas()
    assert len(again) == len(first)
    columns = [c for c in first.columns if c != "as_of"]
    pd.testing.assert_frame_equal(
        again[columns].sort_values(["event_timestamp", "user_id"]).reset_index(drop=True),
        first[columns].sort_values(["event_timestamp", "user_id"]).reset_index(drop=True),
    )


def test_spark_running_out_of_memory_is_named_with_what_to_change(monkeypatch):
    """At 10M events the feature SQL failed on Spark's default 1g heap with a JVM trace
    (SparkOutOfMemoryError: [UNABLE_TO_ACQUIRE_MEMORY]); the step now says what to change."""
    monkeypatch.setenv("VIDREC_SPARK_DRIVER_MEMORY", "6g")
    monkeypatch.setenv("VIDREC_SPARK_MASTER", "local[2]")
    settings = Settings.from_env("spark")
    assert settings.spark_driver_memory == "6g"
    jvm_text = "An error occurred while calling o123.parquet.\n: org.apache.spark.SparkException: Job aborted ... Caused by: org.apache.spark.memory.SparkOutOfMemoryError: [UNABLE_TO_ACQUIRE_MEMORY] Unable to acquire 262144 bytes of memory, got 0."
    with pytest.raises(
        SparkOutOfMemory,
        match=r"the feature tables ran out of memory on Spark \(local\[2\], driver memory 6g\): set VIDREC_SPARK_DRIVER_MEMORY",
    ) as raised:
        with memory_errors_named("the feature tables", settings):
            raise RuntimeError(jvm_text)
    assert "UNABLE_TO_ACQUIRE_MEMORY" in str(raised.value.__cause__)  # the trace stays chained for the log
    with pytest.raises(KeyError):  # any other failure passes through unchanged
        with memory_errors_named("the feature tables", settings):
            raise KeyError("user_id")
