"""Ingest one source into the lake: read, validate, quarantine, commit, summarise.

Nothing reaches the lake before the whole source has been read and validated: chunks are staged
in a private folder and committed at the end, so an unreadable file stops the run with the lake
untouched. Re-running on the same source leaves the same lake and the same quarantine.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo import schema
from feature_repo.defaults import CHUNK_ROWS
from feature_repo.lake import EventCommit, Lake, LakeChanges
from feature_repo.sources import Source
from feature_repo.validation import Validated, validate_events, validate_users, validate_videos

# Staged events: canonical columns plus arrival order, provenance and the partition key.
STAGED_EVENTS = schema.EVENTS.append(pa.field("_seq", pa.int64())).append(pa.field("_file", pa.string()))
STAGED_EVENTS = STAGED_EVENTS.append(pa.field("_row", pa.int64())).append(pa.field("event_date", pa.string()))


class ReconciliationError(RuntimeError):
    """Rows in != accepted + quarantined: a bug, never a data problem."""


@dataclass
class TableCounts:
    rows_in: int = 0
    accepted: int = 0
    quarantined: Counter = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return sum(self.quarantined.values())

    def add(self, validated: Validated) -> None:
        self.rows_in += len(validated.accepted) + len(validated.rejected)
        self.accepted += len(validated.accepted)
        self.quarantined.update(_primary_reasons(validated.rejected))


@dataclass
class IngestSummary:
    dataset: str
    location: str
    source_key: str
    tables: dict[str, TableCounts]
    events: EventCommit
    derived_users: int
    lake: dict
    seconds: float

    def reconcile(self) -> None:
        for name, counts in self.tables.items():
            if counts.rows_in != counts.accepted + counts.rejected:
                raise ReconciliationError(
                    f"{name}: {counts.rows_in} rows in != {counts.accepted} accepted + {counts.rejected} quarantined"
                )


def source_key(source: Source) -> str:
    """Names this source's quarantine: the same dataset from the same folder maps to the same key."""
    digest = hashlib.sha1(str(Path(source.location).resolve()).encode()).hexdigest()[:10]
    return f"{source.name}-{digest}"


def ingest(
    source: Source,
    lake: Lake,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Validate `source` and merge it into `lake`; `progress(n)` is told of each chunk's rows."""
    started = time.perf_counter()
    source.check()
    key = source_key(source)
    counts = {table: TableCounts() for table in schema.TABLES}

    with lake.locked(), lake.staging() as run:
        changes = LakeChanges(lake, run)
        videos = _validated_table(source.videos(), validate_videos, counts["videos"], run, "videos")
        users = _validated_table(source.users(), validate_users, counts["users"], run, "users")
        known_videos = set(lake.read_table("videos")["video_id"])
        if videos is not None:
            known_videos |= set(videos["video_id"])

        first_seen = _stage_events(source, known_videos, chunk_rows, run, counts["events"], progress)
        commit = lake.merge_events(str(run / "accepted" / "*.parquet"), run, run / "quarantine" / "events", changes)
        counts["events"].accepted -= commit.duplicate_rows + commit.duplicate_ids
        counts["events"].quarantined.update(
            {"duplicate_row": commit.duplicate_rows, "duplicate_id": commit.duplicate_ids} if
            commit.duplicate_rows + commit.duplicate_ids else {}
        )  # fmt: skip

        if videos is not None:
            changes.write_table("videos", upsert(lake.read_table("videos"), videos, "video_id"))
        merged_users, derived = merge_users(lake.read_table("users"), users, first_seen)
        changes.write_table("users", merged_users)
        for table in schema.TABLES:
            changes.replace_quarantine(table, key, run / "quarantine" / table)
        changes.apply()  # events, tables and quarantine together: a kill leaves the old lake or the new

    summary = IngestSummary(
        dataset=source.name,
        location=str(source.location),
        source_key=key,
        tables=counts,
        events=commit,
        derived_users=derived,
        lake=lake.stats(),
        seconds=time.perf_counter() - started,
    )
    summary.reconcile()
    return summary


def _validated_table(raw, validate, counts: TableCounts, run: Path, table: str) -> pd.DataFrame | None:
    if raw is None:
        return None
    validated = validate(raw)
    counts.add(validated)
    _write_quarantine(validated.rejected, run / "quarantine" / table / "part-0.parquet", table, validated.rejected_rows)
    return validated.accepted


def _stage_events(
    source: Source,
    known_videos: set[str],
    chunk_rows: int,
    run: Path,
    counts: TableCounts,
    progress: Callable[[int], None] | None,
) -> pd.Series:
    """Validate every chunk; stage accepted rows for the commit. Returns each user's first event time."""
    now = pd.Timestamp.now(tz="UTC")
    first_seen = pd.Series(dtype="datetime64[ns, UTC]")
    seq = 0
    for index, chunk in enumerate(source.events(chunk_rows)):
        validated = validate_events(chunk.frame, known_videos, now)
        counts.add(validated)
        accepted = validated.accepted
        staged = accepted.assign(
            _seq=seq + validated.accepted_rows,
            _file=str(chunk.file),
            _row=chunk.first_row + validated.accepted_rows,
            event_date=accepted["event_ts"].dt.strftime("%Y-%m-%d"),
        )
        seq += len(chunk.frame)
        (run / "accepted").mkdir(exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(staged, schema=STAGED_EVENTS, preserve_index=False),
            run / "accepted" / f"chunk-{index:05d}.parquet",
        )
        _write_quarantine(
            validated.rejected,
            run / "quarantine" / "events" / f"part-{index:05d}.parquet",
            str(chunk.file),
            validated.rejected_rows + chunk.first_row,
        )
        user_first = accepted.groupby("user_id")["event_ts"].min()
        first_seen = pd.concat([first_seen, user_first]).groupby(level=0).min()
        if progress:
            progress(len(chunk.frame))
    return first_seen


def _write_quarantine(rejected: pd.DataFrame, path: Path, source_file: str, row_numbers: np.ndarray) -> None:
    """Rejected rows as text, with the file and 0-based row they came from."""
    if rejected.empty:
        return
    out = rejected.copy()
    out["source_file"] = source_file
    out["source_row"] = row_numbers.astype(str)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(out.astype(object).where(out.notna(), None), preserve_index=False), path)


def _primary_reasons(rejected: pd.DataFrame) -> Counter:
    """Count each rejected row once, under its first reason (the rest stay in its `reason` text)."""
    if rejected.empty:
        return Counter()
    return Counter(rejected["reason"].str.split(";").str[0])


def upsert(existing: pd.DataFrame, incoming: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """Incoming rows replace existing rows with the same id; others are kept."""
    if existing.empty:
        return incoming.reset_index(drop=True)
    kept = existing[~existing[id_column].isin(incoming[id_column])]
    return pd.concat([kept, incoming], ignore_index=True)


def merge_users(
    existing: pd.DataFrame, incoming: pd.DataFrame | None, first_seen: pd.Series
) -> tuple[pd.DataFrame, int]:
    """Upsert users, add users known only from events, and date signups no later than first activity.

    Returns the merged table and how many users were derived from events alone.
    """
    users = upsert(existing, incoming, "user_id") if incoming is not None else existing
    known = set(users["user_id"])
    unseen = [u for u in first_seen.index if u not in known]
    if unseen:
        derived = schema.empty_frame("users").reindex(range(len(unseen)))
        derived["user_id"] = unseen
        users = pd.concat([users, derived], ignore_index=True) if len(users) else derived
    first = users["user_id"].map(first_seen)
    signup = pd.to_datetime(users["signup_ts"], utc=True)
    users["signup_ts"] = signup.where(signup.notna() & (signup <= first.fillna(signup)), first)
    return users, len(unseen)
