"""Batch recommendations on Spark: the champion ranked per partition of users, written in bulk.

Under the spark profile, `vidrec.pipeline.precompute_recommendations` calls `precompute_on_spark`
instead of ranking on the driver. The active users become a DataFrame of `partitions` parts, and
`mapInPandas` hands each part to a Python worker, which
- loads the champion's registered versions from MLflow once (kept per worker process, which Spark
  reuses across tasks; a cluster's executors must reach the tracking server and artifact store),
- ranks its users with the embedded path's own `ranked_batches`, `batch_users` at a time,
- writes them with the writer it is given (the service's bulk writer) and returns counts only,
so neither the model nor the lists pass through the driver.

Features: a worker cannot open a Spark session of its own, so the driver retrieves every active
user's and video's point-in-time features once, through the profile's offline store (Spark's
under this profile), and the workers receive that lookup with its rows. It holds one row per
active user and per video: about 40 floats each, some 300 MB for a million users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import numpy as np
import pandas as pd

from models.lifecycle.batch import known_rows, ranked_batches
from models.ranker import FeatureLookup
from models.two_stage import Requests, TwoStage, prefetch_features
from vidrec.settings import Settings

# (batches of ranked rows) -> (users written, rows written): the service's bulk writer, bound to
# its store URL, versions and TTL (serving.precomputed.write_recommendation_batches).
BatchWriter = Callable[[Iterable[pd.DataFrame]], tuple[int, int]]
COUNTS_SCHEMA = "users_written long, rows long, unknown long"

# Per Python worker: the champion it loaded, by (tracking URI, versions).
_loaded: dict[tuple, TwoStage] = {}


def worker_system(settings: Settings, versions: dict[str, str]) -> TwoStage:
    """The registered system of `versions`, loaded once per worker process."""
    from models.lifecycle import registry, tracking

    key = (settings.mlflow_uri, tuple(sorted(versions.items())))
    if key not in _loaded:
        tracking.configure(settings)
        _loaded.clear()  # one champion at a time: a new one replaces the old
        _loaded[key] = registry.load_system(versions)
    return _loaded[key]


def prefetched_lookup(
    system: TwoStage, lookup: FeatureLookup | None, user_ids: list[str], as_of: datetime
) -> FeatureLookup | None:
    """`lookup` after one retrieval of everything the users' ranking will ask of it."""
    rows, _ = known_rows(system, user_ids)
    prefetch_features(lookup, system.data, Requests.at(rows, pd.Timestamp(as_of).tz_convert("UTC")))
    return lookup


def precompute_on_spark(
    spark,
    settings: Settings,
    versions: dict[str, str],
    user_ids: list[str],
    as_of: datetime,
    top_n: int,
    write: BatchWriter,
    lookup: FeatureLookup | None = None,
    partitions: int | None = None,
    batch_users: int = 500,
) -> dict[str, int]:
    """Rank `user_ids` with the champion of `versions` on Spark's workers and write each part with `write`.

    `lookup` should already hold the users' features (`prefetched_lookup`). Returns the totals of
    users written, rows and users unknown to the champion.
    """
    if not user_ids:
        return {"users_written": 0, "rows": 0, "unknown": 0}
    parts = partitions or spark.sparkContext.defaultParallelism
    users = spark.createDataFrame(pd.DataFrame({"user_id": sorted(map(str, user_ids))})).repartition(parts)
    shipped = spark.sparkContext.broadcast(lookup) if lookup is not None else None
    when = pd.Timestamp(as_of).tz_convert("UTC")

    def rank_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        system = worker_system(settings, versions)
        part_lookup = shipped.value if shipped is not None else None
        for frame in frames:
            rows, unknown = known_rows(system, frame["user_id"].tolist())
            written, n_rows = write(ranked_batches(system, rows, when, top_n, part_lookup, batch_users))
            yield pd.DataFrame({"users_written": [written], "rows": [n_rows], "unknown": [unknown]}, dtype=np.int64)

    totals = users.mapInPandas(rank_partition, COUNTS_SCHEMA).groupBy().sum().collect()[0]
    if shipped is not None:
        shipped.unpersist()
    return {
        "users_written": int(totals["sum(users_written)"] or 0),
        "rows": int(totals["sum(rows)"] or 0),
        "unknown": int(totals["sum(unknown)"] or 0),
    }
