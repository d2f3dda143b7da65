"""Faults on the write paths, with real processes: what a kill -9 leaves behind is whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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
