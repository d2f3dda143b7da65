"""The ranker trained on Spark: `xgboost.spark.SparkXGBRanker` over the same rows, objective and params.

Why an ordinary booster comes out: Spark only spreads the training. The fitted model's booster is
copied into a plain `xgb.XGBRanker` (UBJSON bytes, as `models.ranker.train_ranker_rows` does), so
the result is the same `RankerModel` the registry pickles and serving unwraps; neither needs Spark
or even pyspark to load or score it.

How queries are partitioned: lambdarank compares rows of one query, and each XGBoost worker builds
its DMatrix from one Spark partition, so a query split over two partitions would be two queries.
The rows are hash-partitioned on the query number into `num_workers` partitions (every row of
a query lands in the same one) and sorted by it within each (XGBoost wants a query's rows
contiguous and qids ascending), then by row position, which fixes the order XGBoost reads rows in.
SparkXGBRanker would range-partition when the partition count differs from `num_workers`; its
range bounds come from a sample that changes between runs, hash partitioning does not.

Number of trees: without early stopping, `n_estimators`. With it, a seeded `1 / cv_folds` share of
queries is held out (`validation_indicator_col`), training stops `early_stopping_rounds` after the
best held-out nDCG@10, and the model is refit on every query with the best number of trees. One
split, not the single-machine trainer's k-fold cross-validation: each fold is a whole distributed
fit, and at the scale this trainer is for a held-out share has thousands of queries, far more than
the few dozen whose noise made ml-latest-small need folds. With too few queries to give every
worker held-out ones, it is `n_estimators` trees and no validation score, as the single-machine
trainer does with fewer than two folds.

Determinism: the same rows, seed and `num_workers` give the same trees; another worker count
reduces histograms in another order and may differ slightly (XGBoost threads per worker are
`spark.task.cpus`, which SparkXGBRanker uses instead of `n_jobs`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xgboost as xgb

from models.lifecycle.config import RankerConfig
from models.ranker import MAX_BIN, RankerModel, ScoreBlend, TrainingRows, _booster_params

LABEL, QID, VALID, ROW = "label", "qid", "is_validation", "row"


def train_ranker_spark(
    rows: TrainingRows, config: RankerConfig = RankerConfig(), spark=None, num_workers: int = 2
) -> RankerModel:
    """Fit the ranker with `num_workers` Spark tasks; the same `RankerModel` as `train_ranker_rows`.

    `spark`: a SparkSession (None: one for `Settings.from_env().spark_master`). The rows are sent
    to Spark block by block from the driver's float32 blocks, which bounds this to what one driver
    holds anyway. A cluster deployment would instead write the ranking rows as parquet (one file
    per chunk of users: features, label, qid) to the lake and `spark.read.parquet` them, so the
    driver never holds the rows; everything from the DataFrame on is unchanged.
    """
    if rows.n_rows == 0 or rows.features is None:
        raise ValueError("no ranking rows to train the ranker on")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    blend = ScoreBlend(config.blend_feature, config.blend_weight) if config.blend_weight else ScoreBlend()
    if blend.weight and blend.feature not in rows.features:
        raise ValueError(
            f"the ranker's blend_feature {blend.feature!r} is not one of its features: "
            f"expected one of {[f for f in rows.features if f.startswith('z_')]}"
        )
    if spark is None:
        from feature_repo.transforms.spark import profile_session
        from vidrec.settings import Settings

        spark = profile_session(Settings.from_env(), app_name="vidrec-ranker")
    # An empty partition has no DMatrix to build: no more workers than queries.
    num_workers = min(num_workers, rows.n_queries)
    n_queries = rows.n_queries
    held_out = None
    if config.early_stopping_rounds is not None:
        share = max(1, n_queries // max(config.cv_folds, 2))
        # Every worker needs held-out queries of its own (checked per partition in _spark_rows).
        if share >= num_workers and n_queries - share >= num_workers:
            held_out = np.zeros(n_queries, dtype=bool)
            held_out[np.random.default_rng(config.seed).permutation(n_queries)[:share]] = True
    frame = _spark_rows(spark, rows, held_out, num_workers)

    try:
        n_trees, validation_ndcg = config.n_estimators, float("nan")
        if held_out is not None:
            stopped = _fit(frame, rows, config, num_workers, config.n_estimators, validate=True).get_booster()
            n_trees, validation_ndcg = stopped.best_iteration + 1, float(stopped.best_score)
        # The refit learns from every query, the held-out ones included (no indicator column set).
        booster = _fit(frame, rows, config, num_workers, n_trees).get_booster()
    finally:
        frame.unpersist()
    # Spark saw positional column names; serving selects the real ones by name.
    booster.feature_names = list(rows.features)
    model = xgb.XGBRanker()
    model.load_model(bytearray(booster.save_raw(raw_format="ubj")))
    return RankerModel(model, list(rows.features), config, n_trees - 1, validation_ndcg, blend)


def _columns(n_features: int) -> list[str]:
    # Positional names: real feature names carry '-' (z_item-cf) and could carry '.', which
    # Spark's column resolution would read as struct access.
    return [f"f{i}" for i in range(n_features)]


def _spark_rows(spark, rows: TrainingRows, held_out: np.ndarray | None, num_workers: int):
    """The rows as one DataFrame (feature columns, label, qid, row position, and the validation
    flag when `held_out` marks queries), hash-partitioned by qid, sorted by qid and row, cached."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    names = _columns(len(rows.features))
    frame, offset = None, 0
    for x, y, qid in zip(rows.x, rows.y, rows.qid, strict=True):
        position = np.arange(offset, offset + len(y), dtype=np.int64)
        offset += len(y)
        arrays = [pa.array(x[:, j]) for j in range(x.shape[1])] + [pa.array(y), pa.array(qid), pa.array(position)]
        columns = [*names, LABEL, QID, ROW]
        if held_out is not None:
            arrays.append(pa.array(held_out[qid]))
            columns.append(VALID)
        block = spark.createDataFrame(pa.Table.from_arrays(arrays, names=columns))
        frame = block if frame is None else frame.unionByName(block)
    # Hash, not range, partitioning: range bounds come from a sample seeded by the RDD's id, so
    # the same rows split differently from one call to the next (and so give other trees).
    # Shuffle blocks arrive in any order, and row subsampling depends on the order inside a
    # query: sorted by row too, and cached, because SparkXGBRanker sorts by qid again and Spark
    # drops an inner sort under an outer one; over the cache the outer one is a no-op.
    ordered = frame.repartition(num_workers, QID).sortWithinPartitions(QID, ROW)
    ordered = ordered.persist(StorageLevel.MEMORY_AND_DISK)
    counts = ordered.groupBy(F.spark_partition_id().alias("part")).agg(
        F.count("*").alias("rows"), *([F.sum(F.col(VALID).cast("int")).alias("held")] if held_out is not None else [])
    )
    counts = {r["part"]: r for r in counts.collect()}
    for part in range(num_workers):
        # A worker without rows (or, early-stopping, without held-out rows) has no DMatrix to build.
        if part not in counts or (held_out is not None and not 0 < counts[part]["held"] < counts[part]["rows"]):
            ordered.unpersist()
            raise ValueError(
                f"{rows.n_queries} queries do not give each of {num_workers} Spark workers rows to train"
                f"{' and validate' if held_out is not None else ''} on: use fewer workers or more queries"
            )
    return ordered


def _fit(frame, rows: TrainingRows, config: RankerConfig, num_workers: int, n_trees: int, validate: bool = False):
    from xgboost.spark import SparkXGBRanker

    # SparkXGBRanker refuses nthread: each worker uses spark.task.cpus threads.
    params = {k: v for k, v in _booster_params(config).items() if k != "nthread"}
    if validate:
        params |= {"validation_indicator_col": VALID, "early_stopping_rounds": config.early_stopping_rounds}
    ranker = SparkXGBRanker(
        features_col=_columns(len(rows.features)),
        label_col=LABEL,
        qid_col=QID,
        num_workers=num_workers,
        n_estimators=n_trees,
        max_bin=MAX_BIN,
        **params,
    )
    return ranker.fit(frame)
