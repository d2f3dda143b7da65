"""Batch recommendations: the champion's top-N for the users active in a window.

The `vidrec_batch_recs` DAG calls `vidrec.pipeline.precompute_recommendations`, which picks the
users with `active_users`, ranks them batch by batch with `ranked_batches` and streams each batch
to the service's writer (`serving.precomputed.write_recommendation_batches`: key
`vidrec:recs:<user_id>`, JSON value with video ids, scores, sources, model versions and the time
it was generated), so memory holds one batch of users, however many there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from feature_repo.lake import PARTITION, Lake
from models.ranker import FeatureLookup
from models.two_stage import Requests, TwoStage, prefetch_features

RESULT_COLUMNS = ["user_id", "video_id", "rank", "score", "sources"]


def active_users(lake: Lake, start: datetime, end: datetime) -> list[str]:
    """Users with at least one event in [start, end), sorted; reads only the partitions of those days."""
    start_ts, end_ts = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    first, last = start_ts.strftime("%Y-%m-%d"), end_ts.strftime("%Y-%m-%d")
    files = [p for p in lake.event_files() if first <= p.parent.name.removeprefix(f"{PARTITION}=") <= last]
    if not files:
        return []
    dataset = ds.dataset([str(p) for p in files], format="parquet")
    when = ds.field("event_ts")
    table = dataset.to_table(
        columns=["user_id"], filter=(when >= start_ts.to_pydatetime()) & (when < end_ts.to_pydatetime())
    )
    return sorted(set(table.column("user_id").to_pylist()))


def rank_users(
    system: TwoStage,
    user_ids: list[str],
    as_of: datetime,
    top_n: int,
    lookup: FeatureLookup | None = None,
    batch_users: int = 500,
) -> tuple[pd.DataFrame, int]:
    """`TwoStage.rank` for the users the system knows, requests at `as_of` on an unknown device.

    Returns (user_id, video_id, rank, score, sources) rows and how many users were unknown to the
    system (new since it was trained: the service's cold-start path serves them). For many users,
    `ranked_batches` streams the same rows batch by batch instead.
    """
    known, unknown = known_rows(system, user_ids)
    parts = list(ranked_batches(system, known, as_of, top_n, lookup, batch_users))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_COLUMNS)
    return frame, unknown


def known_rows(system: TwoStage, user_ids: list[str]) -> tuple[np.ndarray, int]:
    """The system's user rows of `user_ids` (unique, sorted) and how many ids it does not know."""
    rows = system.data.user_rows(pd.Index([str(u) for u in user_ids])) if user_ids else np.array([], dtype=int)
    return np.unique(rows[rows >= 0]), int((rows < 0).sum())


def ranked_batches(
    system: TwoStage,
    user_rows: np.ndarray,
    as_of: datetime,
    top_n: int,
    lookup: FeatureLookup | None = None,
    batch_users: int = 500,
    progress: Callable[[int], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """Top-N frames for `user_rows`, `batch_users` at a time: memory stays one batch's candidates."""
    when = pd.Timestamp(as_of).tz_convert("UTC")
    prefetch_features(lookup, system.data, Requests.at(user_rows, when))
    for i in range(0, len(user_rows), batch_users):
        chunk = user_rows[i : i + batch_users]
        ranked = system.rank(Requests.at(chunk, when), k=top_n, lookup=lookup)
        if progress is not None:
            progress(len(chunk))
        if len(ranked):
            yield ranked
