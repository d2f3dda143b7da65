"""What every data source hands to ingestion: users, videos, and events in chunks.

Frames use the canonical column names (feature_repo.schema) but may still hold raw values
(strings from CSV files); validation parses and checks them, so a rejected row can be kept
in quarantine exactly as it arrived.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from feature_repo import schema


class DataFileError(Exception):
    """A data file cannot be used at all; names the file (and the column, when one is missing)."""

    def __init__(self, path: Path, problem: str, column: str | None = None):
        self.path, self.problem, self.column = Path(path), problem, column
        super().__init__(f"{path}: {problem}")


class MissingColumnError(DataFileError):
    def __init__(self, path: Path, column: str, table: str):
        super().__init__(path, f"required column {column!r} of the {table} table is missing", column)


@dataclass(frozen=True)
class EventChunk:
    frame: pd.DataFrame
    file: Path
    first_row: int  # 0-based row number of the chunk's first row within `file`


class Source(abc.ABC):
    """A dataset on disk, read into the canonical tables."""

    name: str
    location: Path

    @abc.abstractmethod
    def files(self) -> list[Path]:
        """Every file this source reads."""

    @abc.abstractmethod
    def check(self) -> None:
        """Fail fast, before anything is written: every file readable with its required columns."""

    @abc.abstractmethod
    def users(self) -> pd.DataFrame | None:
        """Users with canonical columns, or None when the source has no user table."""

    @abc.abstractmethod
    def videos(self) -> pd.DataFrame | None:
        """Videos with canonical columns, or None when the source has no video table."""

    @abc.abstractmethod
    def events(self, chunk_rows: int) -> Iterator[EventChunk]:
        """Events with canonical columns, at most `chunk_rows` rows at a time."""

    def event_rows(self) -> int | None:
        """Number of event rows if cheap to know (drives the progress bar), else None."""
        return None


def with_canonical_columns(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Add missing optional columns as nulls and put columns in canonical order."""
    for name in schema.TABLES[table].names:
        if name not in df.columns:
            df[name] = None
    return df[schema.TABLES[table].names]


def require_columns(path: Path, present: list[str], table: str) -> None:
    for column in schema.REQUIRED_COLUMNS[table]:
        if column not in present:
            raise MissingColumnError(path, column, table)


def csv_header(path: Path, **read_csv_kwargs) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0, **read_csv_kwargs).columns)
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataFileError(path, f"cannot be read as CSV: {exc}") from exc


def parquet_columns(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataFileError(path, f"cannot be read as parquet: {exc}") from exc
