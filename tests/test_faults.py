"""Faults on the write paths, with real processes: what a kill -9 leaves behind is whole."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from movielens import movielens_frames, write_canonical
from tiny_platform import settings_for

from feature_repo import store
from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from feature_repo.transforms import compute_features
from serving.feedback import FeedbackLog

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2000

# Appends feedback batches back to back, saying each one's number once `append` returned (the
# service answers 200 at that point).
WRITER = r"""
import sys
from pathlib import Path
from serving.feedback import FeedbackLog

root, batches, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
videos = [str(v) for v in range(1, 51)]
log = FeedbackLog(root, lambda: videos)
for b in range(batches):
    events = [{"event_id": f"b{b}-e{i}", "user_id": str(i % 97), "video_id": videos[i % 50], "event_type": "watch",
               "event_ts": "2026-01-01T00:00:00Z", "watch_time_s": 30.0} for i in range(size)]
    log.append(events)
    print(b, flush=True)
"""


@pytest.mark.parametrize("delay_fraction", [0.1, 0.5, 0.9])
def test_kill_9_during_feedback_writes_leaves_only_whole_batches(tmp_path, delay_fraction):
    """Killed at a point inside a batch write: every batch in the log is whole, every acknowledged
    batch is there, and at most the one in flight was lost (its client saw no answer and retries)."""
    root = tmp_path / "feedback"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), "1000", str(BATCH)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked, stamps = [], []
    try:
        while len(acked) < 4:
            line = writer.stdout.readline()
            assert line, "the writer stopped before it wrote four batches"
            acked.append(int(line))
            stamps.append(time.monotonic())
        per_batch = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        time.sleep(per_batch * delay_fraction)  # somewhere inside the next batch's write
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        acked.extend(int(line) for line in writer.stdout.read().split())  # said before the kill
    finally:
        if writer.poll() is None:
            writer.kill()

    files = sorted((root / "events").glob("*/*.parquet"))
    tables = [pq.read_table(f) for f in files]  # each one reads: none is half-written
    assert all(t.num_rows == BATCH for t in tables), [t.num_rows for t in tables]
    batches = {t.column("event_id")[0].as_py().split("-")[0] for t in tables}
    assert {f"b{b}" for b in acked} <= batches  # nothing acknowledged is lost
    assert len(batches) <= len(acked) + 1  # only the batch in flight may be there unacknowledged
    # What the service and the ingest read back: the whole batches, not a half-written temporary file.
    assert len(FeedbackLog(root, lambda: []).read_events()) == BATCH * len(files)
    print(
        f"kill -9 at {delay_fraction:.0%} into a batch write: {len(acked)} acknowledged, {len(files)} whole batches "
        f"in the log, {len(list((root / 'events').glob('*/.*.tmp')))} temporary file(s) left (ignored by readers)"
    )


# Ingests a canonical source into a lake, killing itself with SIGKILL right after the `kill_after`-th
# rename that moves a staged file into the lake (0: just before the journal is in place; -1: never),
# so the kill lands at an exact point of the commit.
INGESTER = r"""
import os, signal, sys
from pathlib import Path
from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source

lake_dir, source_dir, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
staging = str(lake_dir / "_staging")
moved, real_replace = 0, os.replace

def replace(src, dst):
    global moved
    if kill_after == 0 and str(dst).endswith("COMMIT.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if str(src).startswith(staging) and not str(dst).startswith(staging):
        moved += 1
        if moved == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
summary = ingest(open_source("canonical", source_dir, lake_dir.parent / "cache"), Lake(lake_dir))
print(summary.events.partitions_written, moved, flush=True)
"""


def _lake_content(root: Path) -> dict[str, str]:
    """Every parquet file of the lake (staging aside), by path, as a digest of its rows."""
    Lake(root).event_files()  # what any reader does first: finish a commit a killed writer left
    files = sorted(p for p in root.rglob("*.parquet") if "_staging" not in p.parts and not p.name.startswith("."))
    return {
        str(p.relative_to(root)): hashlib.sha1(repr(pq.read_table(p).to_pylist()).encode()).hexdigest() for p in files
    }


def _run_ingester(lake_dir: Path, source_dir: Path, kill_after: int = -1):
    done = subprocess.run(
        [sys.executable, "-c", INGESTER, str(lake_dir), str(source_dir), str(kill_after)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    return done


@pytest.fixture(scope="module")
def ingest_states(ml_small, tmp_path_factory):
    """A lake holding source A (ml-latest-small, users up to 150, a few rows it quarantines), and
    source B in the same folder: every rating changed, titles changed, other rows quarantined;
    `after` is what an uninterrupted ingest of B makes of that lake."""
    tmp = tmp_path_factory.mktemp("ingest-kill")
    events, videos = movielens_frames(ml_small, max_user=150)
    events_a = pd.concat([events, events.head(7).assign(event_id=lambda d: d.event_id + "x", video_id="no-such-video")])
    source = write_canonical(events_a, videos, tmp / "source-a")
    lake_a = tmp / "a" / "lake"
    assert _run_ingester(lake_a, source).returncode == 0
    before = _lake_content(lake_a)

    events_b = events.assign(rating=6.0 - events.rating.clip(lower=1.0))
    events_b = pd.concat([events_b, events.head(11).assign(event_id=lambda d: d.event_id + "y", rating=9.0)])
    source_b = tmp / "source-b"
    write_canonical(events_b, videos.assign(title=videos.title + " (remastered)"), source_b)
    shutil.rmtree(source)
    shutil.copytree(source_b, source)  # same folder, so B's quarantine replaces A's
    lake_b = tmp / "b" / "lake"
    shutil.copytree(lake_a, lake_b)
    done = _run_ingester(lake_b, source)
    assert done.returncode == 0, done.stderr[-2000:]
    partitions, renames = map(int, done.stdout.split())
    after = _lake_content(lake_b)
    assert after != before
    return {"lake": lake_a, "source": source, "before": before, "after": after, "renames": renames,
            "partitions": partitions}  # fmt: skip


@pytest.mark.parametrize("point", ["the journal's write", "the first rename", "half the renames", "the last rename"])
def test_kill_9_during_ingest_leaves_the_old_lake_or_the_new(ingest_states, tmp_path, point):
    """Killed anywhere in an ingest: the next reader finds the lake before or after it, never a mix
    (a commit killed halfway is finished), and re-running the ingest gives what an uninterrupted run gives."""
    states = ingest_states
    lake_dir = tmp_path / "lake"
    shutil.copytree(states["lake"], lake_dir)
    kill_after = {"the journal's write": 0, "the first rename": 1, "half the renames": states["renames"] // 2,
                  "the last rename": states["renames"]}[point]  # fmt: skip
    killed = _run_ingester(lake_dir, states["source"], kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    found = _lake_content(lake_dir)
    assert found in (states["before"], states["after"]), "the lake holds a mix of two ingests"
    # Before the journal nothing of the run is in the lake; after it, the commit is finished, not lost.
    assert found == (states["before"] if kill_after == 0 else states["after"])
    ingest(open_source("canonical", states["source"], tmp_path / "cache"), Lake(lake_dir))
    assert _lake_content(lake_dir) == states["after"]
    assert not list((lake_dir / "_staging").iterdir())
    print(
        f"kill -9 at {point} of an ingest ({states['renames']} renames, {states['partitions']} partitions): "
        f"the lake read back {'new' if found == states['after'] else 'old'} and whole; re-run equal to an "
        f"uninterrupted one"
    )


# Materializes the home's features into its SQLite online store in batches of 100 rows, killing
# itself with SIGKILL right after the `kill_after`-th batch committed, or (`kill_after` < 0) that
# many tenths of a second after the first batch began: inside a write, most likely (0: never).
MATERIALIZER = r"""
import os, signal, sys, threading
from pathlib import Path
import pandas as pd
from tiny_platform import settings_for
from feature_repo import online_bulk, store

home, lake, end, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), pd.Timestamp(sys.argv[3]), int(sys.argv[4])
online_bulk.BATCH_ROWS = 100
written, real_write = 0, online_bulk._write_sqlite

def write(*args):
    global written
    if written == 0 and kill_after < 0:
        timer = threading.Timer(-kill_after / 10, lambda: os.kill(os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
    real_write(*args)
    written += 1
    if written == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

online_bulk._write_sqlite = write
store.materialize(settings_for(home, lake), end=end, bulk=True)
print(written, flush=True)
"""
AS_OF_OLD, AS_OF_NEW = pd.Timestamp("2017-01-01", tz="UTC"), pd.Timestamp("2018-10-01", tz="UTC")


def _online_rows(settings) -> dict[tuple[str, bytes], tuple]:
    """Every entity's stored rows, per online table: what one entity's read returns."""
    import sqlite3

    con = sqlite3.connect(store.locations(settings).values["VIDREC_FEAST_ONLINE_PATH"])
    try:
        tables = [name for (name,) in con.execute("select name from sqlite_master where type = 'table'")]
        rows: dict[tuple[str, bytes], list] = {}
        for table in tables:
            for row in con.execute(f'select * from "{table}" order by entity_key, feature_name'):
                rows.setdefault((table, row[0]), []).append(row[1:])
        return {key: tuple(value) for key, value in rows.items()}
    finally:
        con.close()


def _materialized_to(settings) -> dict[str, datetime | None]:
    """Where the registry says each view's materialization ends: where the next run starts."""
    fs = store.feature_store(settings)
    fs.refresh_registry()
    return {v.name: v.most_recent_end_time for v in fs.list_feature_views()}


def _materialized_before(features: Path, tmp: Path, lake: Lake):
    """A home whose online store holds the older snapshot, its features folder the newer one too."""
    settings = settings_for(tmp, lake.root)
    shutil.copytree(features / "old", settings.features_dir)
    store.apply_repo(settings)
    store.materialize(settings, end=AS_OF_OLD, bulk=True)
    shutil.rmtree(settings.features_dir)
    shutil.copytree(features / "new", settings.features_dir)
    return settings


def _run_materializer(settings, kill_after: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            MATERIALIZER,
            str(settings.home),
            str(settings.lake_dir),
            AS_OF_NEW.isoformat(),
            str(kill_after),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def materialized_states(movielens_lake, tmp_path_factory):
    """ml-latest-small's features as of 2017 (old) and 2018 (new); the online store with the old
    materialized, and what an uninterrupted materialization of the new makes of it."""
    tmp = tmp_path_factory.mktemp("materialize-kill")
    compute_features(movielens_lake, [AS_OF_OLD], tmp / "features" / "old")
    compute_features(movielens_lake, [AS_OF_OLD, AS_OF_NEW], tmp / "features" / "new")
    reference = _materialized_before(tmp / "features", tmp / "reference", movielens_lake)
    before, ends_before = _online_rows(reference), _materialized_to(reference)
    done = _run_materializer(reference, 0)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _online_rows(reference)
    changed = sum(before.get(key) != rows for key, rows in after.items())
    assert changed > 1000  # most entities differ between the snapshots
    return {"features": tmp / "features", "lake": movielens_lake, "before": before, "after": after,
            "ends_before": ends_before, "ends_after": _materialized_to(reference),
            "batches": int(done.stdout.split()[-1]), "changed": changed}  # fmt: skip


@pytest.mark.parametrize("point", ["after the first batch", "after half the batches", "0.3 s into the writes"])
def test_kill_9_during_materialization_leaves_every_entity_old_or_new(materialized_states, tmp_path, point):
    """Killed while materializing: each entity's online row is the old one or the new one (a batch
    commits in one SQLite transaction), the registry still says the old window for the view that was
    cut short, so the next run writes it again and ends where an uninterrupted one ends."""
    states = materialized_states
    settings = _materialized_before(states["features"], tmp_path / "home", states["lake"])
    kill_after = {"after the first batch": 1, "after half the batches": states["batches"] // 2,
                  "0.3 s into the writes": -3}[point]  # fmt: skip
    killed = _run_materializer(settings, kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    found = _online_rows(settings)
    mixed = [key for key, rows in found.items() if rows not in (states["before"].get(key), states["after"].get(key))]
    assert not mixed, f"{len(mixed)} entities hold rows of neither materialization"
    # A view is marked materialized once all its batches are in: the one cut short is redone next run.
    ends = _materialized_to(settings)
    assert all(ends[v] in (states["ends_before"][v], states["ends_after"][v]) for v in ends)
    new = sum(rows == states["after"][key] != states["before"].get(key) for key, rows in found.items())

    store.materialize(settings, end=AS_OF_NEW, bulk=True)
    assert _online_rows(settings) == states["after"]
    assert _materialized_to(settings) == states["ends_after"]
    print(
        f"kill -9 {point} of a materialization ({states['batches']} batches of 100): {new} of "
        f"{states['changed']} changed entities new, the rest old, none mixed; re-run equal to an uninterrupted one"
    )
