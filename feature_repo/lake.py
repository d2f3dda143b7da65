"""The lake: canonical tables as parquet, events partitioned by date, quarantine beside them.

    <lake>/users/users.parquet
    <lake>/videos/videos.parquet
    <lake>/events/event_date=YYYY-MM-DD/part-0.parquet
    <lake>/quarantine/<table>/<source_key>/part-*.parquet     (raw values + reason)

Every file is written under a temporary name and renamed into place, so a reader sees the old
file or the new one, never half of one. A run's changes (partitions, tables, quarantine) are
staged in `<lake>/_staging/<run>/` and applied as one unit through a journal (`LakeChanges`): a
writer killed while applying them is rolled forward by the next one to open the lake, so the lake
holds the old run or the new one, never a mix. Events are keyed by `event_id`: committing the
same events again rewrites identical partitions, so re-ingesting leaves the lake as it was.
Merging runs in DuckDB, which spills to disk, so memory stays bounded for 10M+ events.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feature_repo import schema
from feature_repo.schema import utc_time

PARTITION = "event_date"
EVENT_COLUMNS = schema.EVENTS.names
JOURNAL = "COMMIT.json"


@dataclass(frozen=True)
class EventCommit:
    new: int
    updated: int
    unchanged: int
    duplicate_rows: int
    duplicate_ids: int
    partitions_written: int


# ---- atomic writes: a reader sees the old file or the new one, never a part ---------------------------


@contextmanager
def replacing(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block succeeds,
    removed when it fails. `durable`: the file and the folder entries are fsynced too, so an
    acknowledged write survives a power cut (the feedback log)."""
    path = Path(path)
    if durable:
        _make_dirs_durably(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(table: pa.Table, path: Path, durable: bool = False) -> None:
    with replacing(path, durable) as tmp:
        pq.write_table(table, tmp)


def write_text_atomic(text: str, path: Path) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(path: Path) -> None:
    """Create `path` (and parents), fsyncing each parent whose entries changed."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            pass
        fsync_dir(folder.parent)


class Lake:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.events_dir = self.root / "events"
        self.quarantine_dir = self.root / "quarantine"
        self.staging_dir = self.root / "_staging"
        self._holding_lock = False

    def table_path(self, table: str) -> Path:
        return self.root / table / f"{table}.parquet"

    # ---- reading -------------------------------------------------------------------------------

    def read_table(self, table: str) -> pd.DataFrame:
        """Users or videos (whole table; both fit in memory even for the largest MovieLens)."""
        self._finish_interrupted_commit()
        path = self.table_path(table)
        if not path.exists():
            return schema.empty_frame(table)
        return pq.read_table(path, schema=schema.TABLES[table]).to_pandas()

    def event_files(self) -> list[Path]:
        self._finish_interrupted_commit()
        return sorted(self.events_dir.glob(f"{PARTITION}=*/part-0.parquet"))

    def events_dataset(self) -> ds.Dataset:
        """All events as a pyarrow dataset (hive-partitioned by date) for scans and filters."""
        return ds.dataset(
            [str(p) for p in self.event_files()],
            schema=schema.EVENTS,
            format="parquet",
        )

    def read_events(self, columns: list[str] | None = None, filter: ds.Expression | None = None) -> pd.DataFrame:
        if not self.event_files():
            return schema.empty_frame("events")[columns or EVENT_COLUMNS]
        return self.events_dataset().to_table(columns=columns, filter=filter).to_pandas()

    def events_glob(self) -> str:
        return str(self.events_dir / f"{PARTITION}=*" / "part-0.parquet")

    # ---- writing -------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time: two ingests merging the same partition must not race. Whoever
        takes the lock first finishes a commit that a killed writer left half-applied."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._holding_lock = True
            try:
                self._recover()
                yield
            finally:
                self._holding_lock = False
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private folder for one run (take `locked()` first); removed whatever happens, so
        failures leave no trace, unless it holds a commit that could not be finished."""
        run = self.staging_dir / uuid.uuid4().hex
        run.mkdir(parents=True)
        try:
            yield run
        finally:
            if (run / JOURNAL).exists():
                LakeChanges.finish(self, run)  # raised mid-apply: finish it, or leave it for recovery
            shutil.rmtree(run, ignore_errors=True)

    def _recover(self) -> None:
        """Under the lock, every staged run is a dead writer's: roll its journal forward, drop the rest."""
        if not self.staging_dir.exists():
            return
        for run in sorted(self.staging_dir.iterdir()):
            if (run / JOURNAL).exists():
                LakeChanges.finish(self, run)
            shutil.rmtree(run, ignore_errors=True)

    def _finish_interrupted_commit(self) -> None:
        """A reader that finds a journal waits for its commit (or finishes a dead writer's) first."""
        if not self._holding_lock and any(self.staging_dir.glob(f"*/{JOURNAL}")):
            with self.locked():
                pass

    def merge_events(self, staged_glob: str, work_dir: Path, quarantine_dir: Path, changes: LakeChanges) -> EventCommit:
        """Merge staged events with the lake's by event_id into new partitions, added to `changes`
        (the lake itself is untouched until they are applied); exact and id duplicates go to quarantine.

        Staged files carry canonical columns plus `_seq` (arrival order), `_file`, `_row` and the
        `event_date` partition key. The first arrival of an event_id wins within a batch; a batch
        wins over what the lake held (a corrected event replaces the old one).
        """
        con = duckdb.connect(config={"memory_limit": os.environ.get("VIDREC_DUCKDB_MEMORY", "2GB")})
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET temp_directory = '{work_dir / 'duckdb-tmp'}'")
            cols = ", ".join(EVENT_COLUMNS)
            con.execute(
                f"""
                CREATE TEMP TABLE ranked AS
                SELECT *,
                  row_number() OVER (PARTITION BY {cols} ORDER BY _seq) AS _copy,
                  row_number() OVER (PARTITION BY event_id ORDER BY _seq) AS _idn
                FROM read_parquet('{staged_glob}')
                """
            )
            quarantine_dir.mkdir(parents=True, exist_ok=True)
            as_text = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in EVENT_COLUMNS)
            con.execute(
                f"""
                COPY (
                  SELECT {as_text},
                    CASE WHEN _copy > 1 THEN 'duplicate_row' ELSE 'duplicate_id' END AS reason,
                    _file AS source_file, CAST(_row AS VARCHAR) AS source_row
                  FROM ranked WHERE _idn > 1 ORDER BY _seq
                ) TO '{quarantine_dir / "duplicates.parquet"}' (FORMAT parquet)
                """
            )
            duplicate_rows, duplicate_ids = con.execute(
                "SELECT count(*) FILTER (_copy > 1), count(*) FILTER (_copy = 1 AND _idn > 1) FROM ranked"
            ).fetchone()
            if duplicate_rows + duplicate_ids == 0:
                (quarantine_dir / "duplicates.parquet").unlink()
            con.execute(f"CREATE TEMP TABLE batch AS SELECT {cols}, {PARTITION} FROM ranked WHERE _idn = 1")
            con.execute("DROP TABLE ranked")

            files = self.event_files()
            if files:
                con.execute(
                    f"""CREATE TEMP VIEW lake AS
                    SELECT {cols}, {PARTITION} FROM read_parquet('{self.events_glob()}', hive_partitioning = true, hive_types_autocast = false)"""
                )
            else:
                con.execute(f"CREATE TEMP TABLE lake AS SELECT {cols}, {PARTITION} FROM batch LIMIT 0")
            b_row = "row(" + ", ".join(f"b.{c}" for c in EVENT_COLUMNS) + ")"
            l_row = "row(" + ", ".join(f"l.{c}" for c in EVENT_COLUMNS) + ")"
            con.execute(
                f"""
                CREATE TEMP TABLE changed AS
                SELECT b.event_id, b.{PARTITION}, l.{PARTITION} AS old_{PARTITION}
                FROM batch b LEFT JOIN lake l USING (event_id)
                WHERE l.event_id IS NULL OR {b_row} IS DISTINCT FROM {l_row}
                """
            )
            new, updated = con.execute(
                f"SELECT count(*) FILTER (old_{PARTITION} IS NULL), count(*) FILTER (old_{PARTITION} IS NOT NULL) "
                "FROM changed"
            ).fetchone()
            unchanged = con.execute("SELECT count(*) FROM batch").fetchone()[0] - new - updated
            # Partitions to rewrite: where changed rows land, and where older copies of them live.
            # Partitions holding only unchanged rows are left alone, so a re-ingest writes nothing.
            con.execute(
                f"""
                CREATE TEMP TABLE touched AS
                SELECT DISTINCT {PARTITION} FROM changed
                UNION SELECT DISTINCT old_{PARTITION} FROM changed WHERE old_{PARTITION} IS NOT NULL
                """
            )
            out_dir = work_dir / "events-out"
            con.execute(
                f"""
                COPY (
                  SELECT {cols}, {PARTITION} FROM batch
                  WHERE {PARTITION} IN (SELECT {PARTITION} FROM touched)
                  UNION ALL
                  SELECT {cols}, {PARTITION} FROM lake l
                  WHERE l.{PARTITION} IN (SELECT {PARTITION} FROM touched)
                    AND l.event_id NOT IN (SELECT event_id FROM batch)
                  ORDER BY {PARTITION}, event_ts, event_id
                ) TO '{out_dir}' (FORMAT parquet, PARTITION_BY ({PARTITION}), FILENAME_PATTERN 'part-{{i}}')
                """
            )
            touched = [row[0] for row in con.execute(f"SELECT {PARTITION} FROM touched").fetchall()]
        finally:
            con.close()
        for date in touched:
            key = f"{PARTITION}={date}"
            produced = sorted((out_dir / key).glob("part-*.parquet")) if (out_dir / key).exists() else []
            target = self.events_dir / key / "part-0.parquet"
            if not produced:  # every row of this date moved to another date
                changes.remove(target)
                continue
            if len(produced) > 1:  # keep one file per partition so a swap is one rename
                merged = pa.concat_tables([pq.read_table(p) for p in produced])
                write_parquet_atomic(merged, produced[0])
            changes.replace(produced[0], target)
        return EventCommit(new, updated, unchanged, duplicate_rows, duplicate_ids, len(touched))

    # ---- describing ----------------------------------------------------------------------------

    def stats(self) -> dict:
        """Row counts and the event time range, read from parquet metadata and one DuckDB scan."""
        files = self.event_files()
        out = {
            "users": len(self.read_table("users")),
            "videos": len(self.read_table("videos")),
            "events": sum(pq.ParquetFile(p).metadata.num_rows for p in files),
            "partitions": len(files),
            "events_by_type": {},
            "first_event": None,
            "last_event": None,
        }
        if files:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            rows = con.execute(
                f"SELECT event_type, count(*), min(event_ts), max(event_ts) FROM read_parquet('{self.events_glob()}') "
                "GROUP BY event_type ORDER BY 2 DESC"
            ).fetchall()
            con.close()
            out["events_by_type"] = {r[0]: r[1] for r in rows}
            out["first_event"] = min(r[2] for r in rows)
            out["last_event"] = max(r[3] for r in rows)
        return out


class LakeChanges:
    """The changes of one run, staged in its folder and applied to the lake as one unit.

    `apply()` first writes the list of renames to `<run>/COMMIT.json` (fsynced), then renames;
    each step can be repeated (a staged file that is gone was moved already), so a writer killed
    in the middle is finished by `Lake.locked()` in whoever opens the lake next.
    """

    def __init__(self, lake: Lake, run: Path):
        self.lake, self.run = lake, run
        self.ops: list[dict] = []

    def replace(self, staged: Path, target: Path) -> None:
        """`target` (file or folder) becomes `staged`."""
        self.ops.append({"op": "replace", "staged": self._rel(staged), "target": self._rel(target)})

    def remove(self, target: Path) -> None:
        self.ops.append({"op": "remove", "target": self._rel(target)})

    def write_table(self, table: str, df: pd.DataFrame) -> None:
        ordered = df.sort_values(schema.ID_COLUMN[table], kind="stable").reset_index(drop=True)
        staged = self.run / "tables" / f"{table}.parquet"
        staged.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.to_arrow(ordered, table), staged)
        self.replace(staged, self.lake.table_path(table))

    def replace_quarantine(self, table: str, source_key: str, staged: Path) -> None:
        """Quarantine of one source is replaced as a whole, so re-ingesting does not pile up rows."""
        target = self.lake.quarantine_dir / table / source_key
        if staged.exists() and any(staged.iterdir()):
            self.replace(staged, target)
        elif target.exists():
            self.remove(target)

    def apply(self) -> None:
        with replacing(self.run / JOURNAL, durable=True) as tmp:
            tmp.write_text(json.dumps(self.ops))
        LakeChanges.finish(self.lake, self.run)

    @staticmethod
    def finish(lake: Lake, run: Path) -> None:
        """Apply (or finish applying) the journal in `run`; then the journal goes."""
        journal = run / JOURNAL
        ops = json.loads(journal.read_text())
        displaced = run / "displaced"
        for i, op in enumerate(ops):
            target = lake.root / op["target"]
            staged = lake.root / op["staged"] if op["op"] == "replace" else None
            if staged is not None and not staged.exists():
                continue  # moved in before the interruption
            if target.is_dir():  # a folder cannot be renamed over or unlinked: aside, gone with the run
                displaced.mkdir(exist_ok=True)
                os.replace(target, displaced / str(i))
            elif staged is None:
                target.unlink(missing_ok=True)
            if staged is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
        journal.unlink()

    def _rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.lake.root))


@contextmanager
def lake_as_of(lake_dir: Path, end: datetime, work_root: Path) -> Iterator[Path]:
    """A private view of the lake holding only events strictly before `end`.

    Whole day partitions before `end`'s day are hard links (the lake replaces files by rename, so
    a link keeps the content it had); the partition of `end`'s day, when `end` is not midnight,
    is filtered. Users and videos are linked as they are. Removed on exit.
    """
    import pyarrow.compute as pc

    source = Lake(lake_dir)
    end = utc_time(end)
    day = end.strftime("%Y-%m-%d")
    midnight = end.hour == end.minute == end.second == end.microsecond == 0
    root = Path(work_root) / f"lake-asof-{end.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"

    def link(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        with source.locked():
            for table in ("users", "videos"):
                if source.table_path(table).exists():
                    link(source.table_path(table), root / table / f"{table}.parquet")
            for path in source.event_files():
                date = path.parent.name.split("=", 1)[1]
                target = root / "events" / f"{PARTITION}={date}" / "part-0.parquet"
                if date < day:
                    link(path, target)
                elif date == day and not midnight:
                    table = pq.read_table(path)
                    kept = table.filter(pc.less(table["event_ts"], end))
                    if kept.num_rows:
                        write_parquet_atomic(kept, target)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
