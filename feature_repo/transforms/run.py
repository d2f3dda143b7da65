"""Run the feature SQL over the lake with DuckDB and write one parquet table per entity kind.

The transforms themselves live once, as SQL (`user_features.sql`, `video_features.sql`), written
in the dialect DuckDB and Spark SQL share. This runner only prepares their inputs as views:

    events, users, videos      the lake's canonical tables
    video_genres               one row per (video_id, genre): the engine-specific explode
    as_of_times(as_of_ts)      the times to compute features at

and defines, as DuckDB macros, the two Spark built-ins DuckDB lacks (`unix_seconds`,
`array_join`). A Spark runner registers the same views and runs the same text.

Each output row carries `event_timestamp` = its as-of time (only events strictly before it count)
and `created_ts` = the same time: the earliest moment the row could have existed, so that re-runs
write identical files and Feast's `filter_by_created_timestamp` never hides a backfilled row.

Output tables are merged by as-of time: rows of the as-of times computed now replace any earlier
rows for those times, rows of other times are kept (so a daily run adds one snapshot), and the
file is written under a temporary name and renamed. Re-running gives the same file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from feature_repo import schema
from feature_repo.lake import Lake

SQL_DIR = Path(__file__).resolve().parent
# table name -> (SQL file, entity join key)
TABLES: dict[str, tuple[str, str]] = {
    "user_features": ("user_features.sql", "user_id"),
    "video_features": ("video_features.sql", "video_id"),
}
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created_ts"
FREQUENCIES = {"D": pd.Timedelta(days=1), "W": pd.Timedelta(days=7)}

# Spark SQL built-ins the transforms use that DuckDB spells differently.
DUCKDB_MACROS = (
    "CREATE OR REPLACE MACRO unix_seconds(ts) AS CAST(floor(epoch(ts)) AS BIGINT)",
    "CREATE OR REPLACE MACRO array_join(l, sep) AS array_to_string(l, sep)",
)


def sql_text(table: str) -> str:
    """The SQL of one feature table (one SELECT statement)."""
    return (SQL_DIR / TABLES[table][0]).read_text()


def table_path(out_dir: Path, table: str) -> Path:
    return Path(out_dir) / f"{table}.parquet"


def normalize_as_of(as_of_times: Iterable) -> list[pd.Timestamp]:
    """UTC timestamps, unique and sorted; naive times are taken as UTC."""
    out = set()
    for t in as_of_times:
        ts = pd.Timestamp(t)
        if pd.isna(ts):
            raise ValueError("as-of times must not be missing")
        out.add(ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC"))
    if not out:
        raise ValueError("at least one as-of time is needed")
    return sorted(out)


def default_as_of_times(lake: Lake, freq: str = "W", periods: int | None = 52) -> list[pd.Timestamp]:
    """Midnights (UTC) every day (`D`) or week (`W`) over the lake's event span.

    The last one is the midnight after the last event, so the newest snapshot sees every event;
    the others step back from it. `periods` keeps only the newest N (None or 0: the whole span).
    Empty when the lake has no events.
    """
    if freq not in FREQUENCIES:
        raise ValueError(f"unknown frequency {freq!r}: expected one of {', '.join(FREQUENCIES)}")
    first, last = _event_span(lake)
    if first is None:
        return []
    end = last.floor("D") + pd.Timedelta(days=1)
    step = FREQUENCIES[freq]
    n = int((end - first.floor("D")) / step) + 1
    if periods:
        n = min(n, periods)
    return [end - step * i for i in reversed(range(n))]


def _event_span(lake: Lake) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    if not lake.event_files():
        return None, None
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        first, last = con.execute(
            f"SELECT min(event_ts), max(event_ts) FROM read_parquet('{lake.events_glob()}', hive_partitioning = false)"
        ).fetchone()
    finally:
        con.close()
    return pd.Timestamp(first).tz_convert("UTC"), pd.Timestamp(last).tz_convert("UTC")


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One writer per output folder: two runs merging into the same table must not race."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def connect(lake: Lake, as_of: list[pd.Timestamp], work_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the transforms' input views over `lake` and `as_of`."""
    con = duckdb.connect(config={"memory_limit": os.environ.get("VIDREC_DUCKDB_MEMORY", "2GB")})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if work_dir is not None:
        con.execute(f"SET temp_directory = '{work_dir}'")
    for macro in DUCKDB_MACROS:
        con.execute(macro)

    cols = ", ".join(schema.EVENTS.names)
    if lake.event_files():
        con.execute(
            f"CREATE VIEW events AS SELECT {cols} FROM read_parquet('{lake.events_glob()}', hive_partitioning = false)"
        )
    else:
        con.register("_events_empty", schema.EVENTS.empty_table())
        con.execute(f"CREATE VIEW events AS SELECT {cols} FROM _events_empty")
    for table in ("users", "videos"):
        path = lake.table_path(table)
        names = ", ".join(schema.TABLES[table].names)
        if path.exists():
            con.execute(f"CREATE VIEW {table} AS SELECT {names} FROM read_parquet('{path}')")
        else:
            con.register(f"_{table}_empty", schema.TABLES[table].empty_table())
            con.execute(f"CREATE VIEW {table} AS SELECT {names} FROM _{table}_empty")
    con.execute("CREATE VIEW video_genres AS SELECT video_id, unnest(genres) AS genre FROM videos")

    as_of_table = pa.table(
        {"as_of_ts": pa.array([t.to_pydatetime() for t in as_of], type=pa.timestamp("us", tz="UTC"))}
    )
    con.register("_as_of_times", as_of_table)
    con.execute("CREATE VIEW as_of_times AS SELECT as_of_ts FROM _as_of_times")
    return con


def query_features(lake: Lake, table: str, as_of_times: Iterable) -> pd.DataFrame:
    """One feature table for the given as-of times, in memory (for inspection and tests)."""
    as_of = normalize_as_of(as_of_times)
    con = connect(lake, as_of)
    try:
        key = TABLES[table][1]
        return con.execute(f"SELECT * FROM ({sql_text(table)}) ORDER BY {TIMESTAMP_FIELD}, {key}").df()
    finally:
        con.close()


def compute_features(
    lake: Lake,
    as_of_times: list[pd.Timestamp],
    out_dir: Path,
    *,
    tables: Iterable[str] | None = None,
    replace: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Path]:
    """Compute the feature tables as of each time and write them under `out_dir`.

    Returns {table name: parquet path}. Rows of the given as-of times replace earlier rows for
    the same times; rows of other times stay unless `replace` (then the file holds only these
    times). `progress(table, rows)` is told of each table written.
    """
    as_of = normalize_as_of(as_of_times)
    out_dir = Path(out_dir)
    names = list(tables) if tables is not None else list(TABLES)
    unknown = set(names) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown feature tables: {sorted(unknown)}")

    written: dict[str, Path] = {}
    with _locked(out_dir), lake.locked():
        work = out_dir / f".work-{uuid.uuid4().hex}"
        work.mkdir(parents=True)
        con = connect(lake, as_of, work / "duckdb-tmp")
        try:
            for table in names:
                rows = _write_table(con, table, table_path(out_dir, table), work, replace)
                written[table] = table_path(out_dir, table)
                if progress:
                    progress(table, rows)
        finally:
            con.close()
            shutil.rmtree(work, ignore_errors=True)
    return written


def _write_table(con: duckdb.DuckDBPyConnection, table: str, target: Path, work: Path, replace: bool) -> int:
    key = TABLES[table][1]
    con.execute(f"CREATE OR REPLACE TEMP TABLE _new AS {sql_text(table)}")
    select = "SELECT * FROM _new"
    if target.exists() and not replace:
        new_cols = [r[0] for r in con.execute("DESCRIBE _new").fetchall()]
        old_cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{target}')").fetchall()]
        # A changed definition invalidates older snapshots: they are dropped, not mixed in.
        if new_cols == old_cols:
            select += (
                f" UNION ALL SELECT * FROM read_parquet('{target}')"
                f" WHERE {TIMESTAMP_FIELD} NOT IN (SELECT as_of_ts FROM as_of_times)"
            )
    tmp = work / f"{table}.parquet"
    con.execute(f"COPY ({select} ORDER BY {TIMESTAMP_FIELD}, {key}) TO '{tmp}' (FORMAT parquet)")
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{tmp}')").fetchone()[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return rows
