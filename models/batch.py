"""Batch recommendations: the champion's top-N for the users active in a window.

The `vidrec_batch_recs` DAG calls `vidrec.pipeline.precompute_recommendations`, which picks the
users with `active_users`, ranks them with `rank_users` and hands the frame to the service's
writer (`serving.precomputed.write_recommendations`: key `vidrec:recs:<user_id>`, JSON value with
video ids, scores, sources, model versions and the time it was generated).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from feature_repo.lake import PARTITION, Lake
from models.ranker import FeatureLookup
from models.two_stage import Requests, TwoStage

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
    table = dataset.to_table(columns=["user_id"], filter=(when >= start_ts.to_pydatetime()) & (when < end_ts.to_pydatetime()))
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
    system (new since it was trained: the service's cold-start path serves them). Users go in
    batches of `batch_users` to bound memory.
    """
    when = pd.Timestamp(as_of).tz_convert("UTC")
    rows = system.data.user_rows(pd.Index([str(u) for u in user_ids])) if user_ids else np.array([], dtype=int)
    known = np.unique(rows[rows >= 0])
    parts = []
    for i in range(0, len(known), batch_users):
        chunk = known[i : i + batch_users]
        ranked = system.rank(Requests.at(chunk, when), k=top_n, lookup=lookup)
        if len(ranked):
            parts.append(ranked)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_COLUMNS)
    return frame, int((rows < 0).sum())
