"""The feedback event log: validated batches appended durably, rejected rows quarantined.

Layout (a canonical-format folder: `vidrec ingest --dataset canonical --data-dir <root>` reads it):

    <root>/events/<YYYY-MM-DD>/<batch_id>.parquet        accepted events: the canonical columns plus
                                                         request_id and position (schema.FEEDBACK_EVENTS)
    <root>/quarantine/<YYYY-MM-DD>/<batch_id>.parquet    rejected rows: raw values as text, `reason`,
                                                         `batch_id`, `batch_index`

The date is the day (UTC) the batch arrived. One batch is one file, written under a temporary
name (that the canonical loader ignores), fsync'd, renamed into place and the folder fsync'd,
so a batch is in the log entirely or not at all, and a 200 answer means it is on disk.

Rows are checked by `feature_repo.validation.validate_events` (the same rules as ingestion);
a row without an `event_id` gets the content-derived id the canonical loader would give it, so
a client that retries a batch produces the same ids and the ingest deduplicates them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo import schema
from feature_repo.lake import write_parquet_atomic
from feature_repo.sources.base import with_canonical_columns
from feature_repo.sources.canonical import content_event_ids
from feature_repo.validation import validate_events

ATTRIBUTION = [name for name, _ in schema.ATTRIBUTION_COLUMNS]  # which answer an event responds to


@dataclass(frozen=True)
class Rejection:
    index: int
    event_id: str | None
    reasons: list[str]


@dataclass(frozen=True)
class FeedbackResult:
    batch_id: str
    accepted: pd.DataFrame  # rows written: canonical columns + request_id, position
    rejected: list[Rejection]
    log_file: Path | None
    quarantine_file: Path | None


class FeedbackLog:
    def __init__(self, root: Path, known_videos: Callable[[], Iterable[str]]):
        self.root = Path(root)
        self.events_dir = self.root / "events"
        self.quarantine_dir = self.root / "quarantine"
        self.known_videos = known_videos
        self._lock = threading.Lock()

    def append(self, events: list[dict], now: pd.Timestamp | None = None) -> FeedbackResult:
        now = now or pd.Timestamp.now(tz="UTC")
        batch_id = uuid.uuid4().hex
        raw = with_canonical_columns(pd.DataFrame.from_records(events, columns=schema.EVENTS.names), "events")
        raw["event_id"] = raw["event_id"].astype(object)
        missing = raw["event_id"].isna()
        if missing.any():
            raw.loc[missing, "event_id"] = content_event_ids(raw[missing])
        checked = validate_events(raw, self.known_videos(), now)
        attribution = pd.DataFrame.from_records(events, columns=ATTRIBUTION).iloc[checked.accepted_rows]
        accepted = checked.accepted.assign(**{c: attribution[c].to_numpy() for c in ATTRIBUTION})
        day = now.strftime("%Y-%m-%d")
        log_file = quarantine_file = None
        with self._lock:
            if len(accepted):
                log_file = self.events_dir / day / f"{batch_id}.parquet"
                table = schema.to_arrow(accepted.astype({"position": "Int32"}), schema.FEEDBACK_EVENTS)
                write_parquet_atomic(table, log_file, durable=True)
            if len(checked.rejected):
                quarantine_file = self.quarantine_dir / day / f"{batch_id}.parquet"
                rejected = checked.rejected.assign(batch_id=batch_id, batch_index=checked.rejected_rows.astype("int64"))
                table = pa.Table.from_pandas(
                    rejected.astype(object).where(rejected.notna(), None), preserve_index=False
                )
                write_parquet_atomic(table, quarantine_file, durable=True)
        rejections = [
            Rejection(
                int(i),
                None if pd.isna(raw.at[int(i), "event_id"]) else str(raw.at[int(i), "event_id"]),
                str(r).split(";"),
            )
            for i, r in zip(checked.rejected_rows, checked.rejected["reason"], strict=True)
        ]
        return FeedbackResult(batch_id, accepted, rejections, log_file, quarantine_file)

    def batches(self) -> list[Path]:
        return sorted(self.events_dir.glob("*/*.parquet"))

    def read_events(self) -> pd.DataFrame:
        files = self.batches()
        if not files:
            return schema.empty_frame("events")
        # Batches written before attribution was logged lack its columns: read them as nulls.
        return pa.concat_tables(
            [pq.read_table(p).select(schema.EVENTS.names).cast(schema.EVENTS) for p in files]
        ).to_pandas()
