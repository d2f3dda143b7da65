"""A platform's own logs in the canonical format, as parquet or CSV.

A folder holds `users.{parquet,csv}` and `videos.{parquet,csv}` (each optional: a log batch may
bring only events) and the events as `events.{parquet,csv}` or an `events/` folder of such
files. CSV values stay strings here; list columns (genres, tags) are `|`-separated in CSV.
Rows without an `event_id` get one derived from their content, so a re-ingest maps to the same id.

The service's log folder (serving.feedback, serving.impressions) is such a folder with one more:
`impressions/`, the slates it showed (schema.IMPRESSIONS). Each impression row becomes a canonical
`impression` event with id `imp:<request_id>:<position>`, so re-ingesting the log adds nothing and
the ranker gets what was shown and not clicked as negatives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from feature_repo import schema
from feature_repo.sources.base import (
    DataFileError,
    EventChunk,
    Source,
    csv_header,
    parquet_columns,
    require_columns,
    with_canonical_columns,
)

SUFFIXES = (".parquet", ".csv")
IMPRESSIONS = "impressions"  # the service's impression log folder


def table_files(location: Path, table: str) -> list[Path]:
    """The files holding `table` in a canonical folder, in a stable order."""
    files = [location / f"{table}{suffix}" for suffix in SUFFIXES if (location / f"{table}{suffix}").exists()]
    folder = location / table
    if folder.is_dir():
        files += sorted(p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    return files


def columns_of(path: Path) -> list[str]:
    return parquet_columns(path) if path.suffix == ".parquet" else csv_header(path)


def read_table_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Raw chunks of one file: typed as stored for parquet, strings for CSV."""
    try:
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            yield from pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows)
    except DataFileError:
        raise
    except Exception as exc:  # pyarrow and pandas raise many types for damaged files
        raise DataFileError(path, f"cannot be read: {exc}") from exc


def split_list_column(values: pd.Series) -> pd.Series:
    """CSV lists 'a|b' -> ['a', 'b']; parquet lists pass through; missing -> []."""

    def to_list(value):
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(schema.LIST_SEPARATOR) if part.strip()]
        return list(value)

    return values.map(to_list)


def content_event_ids(frame: pd.DataFrame) -> pd.Series:
    """A stable id from a row's content, for logs that carry none."""
    content = frame.drop(columns=["event_id"]).astype(str)
    hashes = pd.util.hash_pandas_object(content, index=False)
    return "h:" + hashes.map("{:016x}".format)


class CanonicalFiles(Source):
    def __init__(self, name: str, location: Path):
        self.name, self.location = name, Path(location)
        if not self.location.is_dir():
            raise DataFileError(self.location, "is not a folder with canonical users/videos/events files")

    def files(self) -> list[Path]:
        return [p for table in schema.TABLES for p in table_files(self.location, table)] + self.impression_files()

    def impression_files(self) -> list[Path]:
        folder = self.location / IMPRESSIONS
        return sorted(p for p in folder.glob("*/*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []

    def check(self) -> None:
        if not table_files(self.location, "events") and not self.impression_files():
            raise DataFileError(self.location, "holds no events.parquet, events.csv, events/ or impressions/ folder")
        for table in schema.TABLES:
            for path in table_files(self.location, table):
                require_columns(path, columns_of(path), table)

    def _whole_table(self, table: str) -> pd.DataFrame | None:
        paths = table_files(self.location, table)
        if not paths:
            return None
        frames = [chunk for path in paths for chunk in read_table_chunks(path, 1_000_000)]
        return with_canonical_columns(pd.concat(frames, ignore_index=True), table)

    def users(self) -> pd.DataFrame | None:
        return self._whole_table("users")

    def videos(self) -> pd.DataFrame | None:
        videos = self._whole_table("videos")
        if videos is not None:
            for column in schema.LIST_COLUMNS:
                videos[column] = split_list_column(videos[column])
        return videos

    def event_rows(self) -> int | None:
        paths = table_files(self.location, "events") + self.impression_files()
        if all(p.suffix == ".parquet" for p in paths):
            return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        return None

    def events(self, chunk_rows: int) -> Iterator[EventChunk]:
        for path in table_files(self.location, "events"):
            first = 0
            for raw in read_table_chunks(path, chunk_rows):
                frame = with_canonical_columns(raw.copy(), "events")
                missing = frame["event_id"].isna()
                if missing.any():
                    frame.loc[missing, "event_id"] = content_event_ids(frame[missing])
                yield EventChunk(frame, path, first)
                first += len(raw)
        for path in self.impression_files():
            first = 0
            for raw in read_table_chunks(path, chunk_rows):
                yield EventChunk(impression_events(raw), path, first)
                first += len(raw)


def impression_events(impressions: pd.DataFrame) -> pd.DataFrame:
    """Impression log rows (schema.IMPRESSIONS) as canonical `impression` events."""
    frame = pd.DataFrame(
        {
            "event_id": "imp:" + impressions["request_id"].astype(str) + ":" + impressions["position"].astype(str),
            "user_id": impressions["user_id"],
            "video_id": impressions["video_id"],
            "event_ts": impressions["event_ts"],
            "event_type": "impression",
            "device": impressions["device"],
        }
    )
    return with_canonical_columns(frame, "events")
