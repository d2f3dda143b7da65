"""Implicit-feedback ALS on Spark MLlib, for interaction data that outgrows one machine.

The same model as `models.als` (Hu, Koren & Volinsky, ICDM 2008): preference p = 1 where the user
interacted, trusted with confidence c = 1 + alpha * w (w = the Interactions weight), confidence 1
elsewhere. Spark's `ALS(implicitPrefs=True)` builds that confidence itself from the rating column
(1 + alpha * |r|), so the weights go in unchanged; only the solver is Spark's (a blocked, exact
Cholesky solve per user / video, where implicit runs conjugate-gradient steps on one core).

Parameters, against `models.als.ALS`:

    factors         rank
    iterations      maxIter (one user sweep and one video sweep each)
    alpha           alpha (same meaning: c = 1 + alpha * w)
    seed            seed
    regularization  regParam, on another scale: Spark multiplies it by the number of
                    interactions of the user (or video) being solved ("ALS-WR", Zhou et al. 2008;
                    spark.ml collaborative-filtering guide, "Scaling of the regularization
                    parameter"), while implicit adds it as is. No scalar maps one onto the other:
                    regParam r regularises a user with n interactions by r * n.

The default regularization is Spark's own default, 1.0 (on ml-latest-small's stratified train split,
~124 interactions per user and ~9 per watched video, that is a flat ~124 per user, ~9 per video).
Matching models.als' flat 0.05 instead (r ~ 0.05 / n, 0.0003-0.002) gave the same nDCG@10 as
models.als at the catalog settings (64 factors, alpha 20): 0.283 vs 0.285 on `vidrec benchmark
--protocol stratified`; r = 0.3 / 1.0 / 2.0 / 4.0 gave 0.319 / 0.349 / 0.349 / 0.310, while
models.als stays at 0.29 for any flat value from 0.05 to 5. With models.als' tuned settings (23 factors, alpha 2.7, 16 sweeps) r from 0.00015 to 0.05
all give 0.363-0.364, as models.als does (0.363). These are figures on the benchmark's own test split,
so 1.0 is a starting point, not a tuned value.

Fitting needs Spark; the fitted model does not. `_fit` trains on a SparkSession (taken through
`feature_repo.transforms.spark.spark_session`, so an existing session is reused), copies the factor
tables into numpy arrays aligned with Interactions rows (users and videos without interactions get
zero vectors, as in `models.als`) and keeps no Spark object: scoring, pickling and serving run
without a JVM. Spark's ALS is deterministic given the seed and a fixed partitioning, so the block
counts are set here (not left to Spark's defaults); a refit then gives the same recommendations.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import numpy as np
import pandas as pd

from models.base import FactorModel, check_non_negative_float, check_positive_int, check_seed, check_weights
from models.interactions import Interactions

# Spark's regParam is per interaction (see the module docstring); Spark's default, measured there.
DEFAULT_REGULARIZATION = 1.0
APP_NAME = "vidrec-spark-als"
CHECKPOINT_INTERVAL = 5
_LOCAL_CHECKPOINTS: str | None = None  # this process's checkpoint folder for local sessions


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


class SparkALS(FactorModel):
    """Weighted matrix factorisation for implicit feedback, trained by Spark MLlib's ALS.

    factors, iterations, alpha, seed: as `models.als.ALS`. regularization: Spark's regParam,
      scaled by each user's / video's interaction count (module docstring).
    blocks: user blocks = video blocks = shuffle partitions of the fit; fixed so that the same
      seed gives the same factors whatever the master's core count.
    master: the Spark master when no session is running yet (default: the settings'
      `spark_master`, VIDREC_SPARK_MASTER, "local[2]"). driver_memory: likewise, for a new session
      (default: `spark_driver_memory`, VIDREC_SPARK_DRIVER_MEMORY, "4g").

    score = user_factors_ @ item_factors_.T; `item_vectors` are the video factors.
    """

    name = "spark-als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = DEFAULT_REGULARIZATION,
        iterations: int = 15,
        alpha: float = 20.0,
        seed: int = 42,
        blocks: int = 4,
        master: str | None = None,
        driver_memory: str | None = None,
    ):
        super().__init__()
        self.factors = check_positive_int("factors", factors)
        self.regularization = check_non_negative_float("regularization", regularization)
        self.iterations = check_positive_int("iterations", iterations)
        self.alpha = check_non_negative_float("alpha", alpha)
        self.seed = check_seed(seed)
        self.blocks = check_positive_int("blocks", blocks)
        if master is None or driver_memory is None:
            from vidrec.settings import Settings

            settings = Settings.from_env()
            master = settings.spark_master if master is None else master
            driver_memory = settings.spark_driver_memory if driver_memory is None else driver_memory
        self.master = _check_text("master", master)
        self.driver_memory = _check_text("driver_memory", driver_memory)

    def _fit(self, data: Interactions) -> None:
        from pyspark.ml.recommendation import ALS as SparkMLlibALS
        from pyspark.sql import SparkSession
        from pyspark.sql.types import FloatType, IntegerType, StructField, StructType

        from feature_repo.transforms.spark import spark_session

        matrix = check_weights(data.matrix)
        if matrix.nnz and (matrix.data < 0).any():
            # Spark would read a negative weight as a dislike (p = 0, confidence 1 + alpha * |w|).
            raise ValueError("SparkALS expects non-negative interaction weights")
        coo = matrix.tocoo()
        # Stop only a session this fit started: one the caller holds (tests, feature jobs) stays.
        started_here = SparkSession.getActiveSession() is None
        spark = spark_session(
            self.master,
            app_name=APP_NAME,
            **{
                "spark.sql.shuffle.partitions": str(self.blocks),
                "spark.driver.memory": self.driver_memory,
                # pandas <-> Spark through Arrow: row-by-row pickling is the slow part otherwise.
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.ui.showConsoleProgress": "false",  # progress bars would interleave with the CLI's
            },
        )
        if started_here:
            spark.sparkContext.setLogLevel("ERROR")
        try:
            # The session's own master: a reused session may run elsewhere than self.master says.
            _ensure_checkpoint_dir(spark.sparkContext, spark.sparkContext.master)
            schema = StructType(
                [
                    StructField("user", IntegerType(), False),
                    StructField("video", IntegerType(), False),
                    StructField("weight", FloatType(), False),
                ]
            )
            ratings = spark.createDataFrame(
                pd.DataFrame(
                    {
                        "user": coo.row.astype(np.int32),
                        "video": coo.col.astype(np.int32),
                        "weight": coo.data.astype(np.float32),
                    }
                ),
                schema=schema,
            )
            estimator = SparkMLlibALS(
                rank=self.factors,
                maxIter=self.iterations,
                regParam=self.regularization,
                alpha=self.alpha,
                implicitPrefs=True,
                nonnegative=False,
                seed=self.seed,
                numUserBlocks=self.blocks,
                numItemBlocks=self.blocks,
                coldStartStrategy="drop",
                # Without a cut every few sweeps the factors' lineage grows with each iteration, and
                # from ~16 iterations on deserialising a task overflows the JVM stack (seen here).
                checkpointInterval=CHECKPOINT_INTERVAL,
                userCol="user",
                itemCol="video",
                ratingCol="weight",
            )
            model = estimator.fit(ratings)
            self.user_factors_ = _dense_factors(model.userFactors.toPandas(), data.n_users, self.factors)
            self.item_factors_ = _dense_factors(model.itemFactors.toPandas(), data.n_videos, self.factors)
        finally:
            if started_here:
                spark.stop()


def _ensure_checkpoint_dir(context, master: str) -> None:
    """Give a local session without a checkpoint dir one in a temporary folder, removed at exit.

    Spark ALS only checkpoints where the context has a dir. On a cluster it must be shared storage
    (HDFS, an object store), which the job that builds the session sets; a local temp path would not do.
    """
    global _LOCAL_CHECKPOINTS
    if context.getCheckpointDir() is not None or not master.startswith("local"):
        return
    if _LOCAL_CHECKPOINTS is None:
        _LOCAL_CHECKPOINTS = tempfile.mkdtemp(prefix="vidrec-spark-als-checkpoints-")
        atexit.register(shutil.rmtree, _LOCAL_CHECKPOINTS, ignore_errors=True)
    context.setCheckpointDir(_LOCAL_CHECKPOINTS)


def _dense_factors(table: pd.DataFrame, n_rows: int, rank: int) -> np.ndarray:
    """Spark's (id, features) factor table as an (n_rows, rank) float32 array; missing ids stay zero."""
    out = np.zeros((n_rows, rank), dtype=np.float32)
    if len(table):
        out[table["id"].to_numpy(dtype=np.int64)] = np.stack(table["features"].to_numpy()).astype(np.float32)
    return out
