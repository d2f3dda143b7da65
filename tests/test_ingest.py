"""Validation, quarantine and the lake: every reason, reconciliation, atomicity, idempotence."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import DataFileError, MissingColumnError, open_source

GOOD = {
    "event_id": "e0",
    "user_id": "u1",
    "video_id": "v1",
    "event_ts": "2026-01-05T12:00:00Z",
    "event_type": "watch",
    "watch_time_s": "120",
    "rating": "",
    "device": "mobile",
    "session_id": "s1",
    "text": "",
}
# One row per quarantine reason, each otherwise valid.
BAD_ROWS = {
    "missing_user_id": {"user_id": ""},
    "missing_video_id": {"video_id": ""},
    "unparsable_timestamp": {"event_ts": "yesterday-ish"},
    "future_timestamp": {"event_ts": "2999-01-01T00:00:00Z"},
    "negative_watch_time": {"watch_time_s": "-5"},
    "rating_out_of_range": {"event_type": "rating", "rating": "7", "watch_time_s": ""},
    "unknown_video": {"video_id": "v404"},
    "unknown_event_type": {"event_type": "teleport"},
    "unknown_device": {"device": "fridge"},
    "invalid_number": {"watch_time_s": "abc"},
}


def write_logs(folder: Path, rows: list[dict], videos: list[str] = ("v1", "v2")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "events.csv", index=False)
    pd.DataFrame({"video_id": list(videos), "title": [f"Video {v}" for v in videos]}).to_csv(
        folder / "videos.csv", index=False
    )
    return folder


def good_rows(n: int) -> list[dict]:
    return [{**GOOD, "event_id": f"e{i}", "user_id": f"u{i % 3}", "video_id": f"v{1 + i % 2}"} for i in range(n)]


def read_quarantine(lake: Lake, table: str = "events") -> pd.DataFrame:
    files = sorted((lake.quarantine_dir / table).rglob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True) if files else pd.DataFrame()


def test_every_reason_is_quarantined_and_counts_reconcile(tmp_path):
    rows = good_rows(5)
    for i, change in enumerate(BAD_ROWS.values()):
        rows.append({**GOOD, "event_id": f"bad{i}", **change})
    rows.append(dict(rows[0]))  # exact duplicate of a good row
    rows.append({**rows[1], "watch_time_s": "999"})  # same event_id, other content
    rows.append({**GOOD, "event_id": "q1", "event_type": "search", "video_id": "", "text": "cats"})  # fine
    lake = Lake(tmp_path / "lake")
    summary = ingest(open_source("canonical", write_logs(tmp_path / "in", rows), tmp_path), lake)

    counts = summary.tables["events"]
    assert counts.rows_in == len(rows)
    assert counts.accepted == 6
    assert counts.rows_in == counts.accepted + counts.rejected
    expected = {reason: 1 for reason in BAD_ROWS} | {"duplicate_row": 1, "duplicate_id": 1}
    assert dict(counts.quarantined) == expected

    quarantined = read_quarantine(lake)
    assert sorted(quarantined.reason) == sorted(expected)
    unparsable = quarantined[quarantined.reason == "unparsable_timestamp"].iloc[0]
    assert unparsable.event_ts == "yesterday-ish"  # raw value kept as it arrived
    assert unparsable.source_file.endswith("events.csv") and unparsable.source_row == "7"
    stored = lake.read_events()
    assert len(stored) == 6 and stored.event_id.is_unique
    assert stored.set_index("event_id").loc["e1", "watch_time_s"] == 120  # first arrival wins


def test_typed_times_beyond_pandas_range_are_quarantined_not_a_crash(tmp_path):
    """A Parquet log stores microseconds (years 1-9999); pandas' nanoseconds stop at 1677-2262.
    The service once logged a slate for a request dated 9999-12-31: that row is quarantined."""
    import datetime as dt

    import pyarrow as pa

    folder = write_logs(tmp_path / "in", good_rows(2))
    (folder / "events.csv").unlink()
    times = [dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
             dt.datetime(1000, 1, 1, tzinfo=dt.UTC)]  # fmt: skip
    typed = {"watch_time_s": 120.0, "rating": None, "text": None}
    rows = pd.DataFrame([{**GOOD, **typed, "event_id": f"t{i}"} for i in range(3)]).drop(columns="event_ts")
    table = pa.Table.from_pandas(rows, preserve_index=False).append_column(
        "event_ts", pa.array(times, type=pa.timestamp("us", tz="UTC"))
    )
    pq.write_table(table, folder / "events.parquet")
    lake = Lake(tmp_path / "lake")
    counts = ingest(open_source("canonical", folder, tmp_path), lake).tables["events"]
    assert counts.accepted == 1 and dict(counts.quarantined) == {"future_timestamp": 1, "unparsable_timestamp": 1}
    assert lake.read_events()["event_id"].tolist() == ["t0"]


def test_row_breaking_two_rules_lists_both(tmp_path):
    rows = good_rows(1) + [{**GOOD, "event_id": "x", "watch_time_s": "-1", "device": "fridge"}]
    lake = Lake(tmp_path / "lake")
    ingest(open_source("canonical", write_logs(tmp_path / "in", rows), tmp_path), lake)
    assert read_quarantine(lake).reason.tolist() == ["negative_watch_time;unknown_device"]


def test_video_and_user_rows_are_validated(tmp_path):
    folder = write_logs(tmp_path / "in", good_rows(2))
    pd.DataFrame(
        {
            "video_id": ["v1", "v2", "v2", "", "v3", "v4"],
            "title": ["A", "B", "B", "C", None, "D"],
            "duration_s": ["10", "20", "20", "5", "5", "-3"],
        }
    ).to_csv(folder / "videos.csv", index=False)
    pd.DataFrame({"user_id": ["u0", "u1", "u1"], "signup_ts": ["2025-01-01", "not a date", "2025-02-01"]}).to_csv(
        folder / "users.csv", index=False
    )
    lake = Lake(tmp_path / "lake")
    summary = ingest(open_source("canonical", folder, tmp_path), lake)
    assert dict(summary.tables["videos"].quarantined) == {
        "duplicate_row": 1, "missing_video_id": 1, "missing_title": 1, "negative_duration": 1
    }  # fmt: skip
    assert dict(summary.tables["users"].quarantined) == {"unparsable_timestamp": 1}
    users = lake.read_table("users").set_index("user_id")
    # u1's unparsable first row is quarantined and its later valid row kept.
    assert sorted(users.index) == ["u0", "u1"] and summary.derived_users == 0
    assert users.loc["u1", "signup_ts"] == pd.Timestamp("2025-02-01", tz="UTC")


def test_movielens_small_ingest_and_idempotent_reingest(ml_small, tmp_path):
    lake = Lake(tmp_path / "lake")
    source = open_source("movielens-small", ml_small, tmp_path)
    first = ingest(source, lake)
    assert first.lake["events_by_type"]["rating"] == 100_836
    assert first.lake["videos"] == 9_742 and first.lake["users"] == 610
    assert first.derived_users == 610
    assert first.events.new == 104_519 and sum(first.tables["events"].quarantined.values()) == 0
    files_before = {p: p.stat().st_mtime_ns for p in lake.event_files()}
    events_before = lake.read_events().sort_values("event_id").reset_index(drop=True)
    users_before = lake.read_table("users")

    second = ingest(source, lake)
    assert second.events.new == 0 and second.events.unchanged == 104_519
    assert second.events.partitions_written == 0
    assert {p: p.stat().st_mtime_ns for p in lake.event_files()} == files_before
    pd.testing.assert_frame_equal(lake.read_events().sort_values("event_id").reset_index(drop=True), events_before)
    pd.testing.assert_frame_equal(lake.read_table("users"), users_before)
    # Partitioned by date: each file holds one day.
    one = lake.event_files()[100]
    day = pq.read_table(one).to_pandas().event_ts.dt.strftime("%Y-%m-%d").unique()
    assert list(day) == [one.parent.name.split("=")[1]]


def test_corrected_event_replaces_old_copy_even_across_dates(tmp_path):
    lake = Lake(tmp_path / "lake")
    ingest(open_source("canonical", write_logs(tmp_path / "a", good_rows(3)), tmp_path), lake)
    moved = {**good_rows(3)[0], "event_ts": "2026-01-09T08:00:00Z", "watch_time_s": "5"}
    summary = ingest(open_source("canonical", write_logs(tmp_path / "b", [moved]), tmp_path), lake)
    assert (summary.events.new, summary.events.updated) == (0, 1)
    stored = lake.read_events()
    assert len(stored) == 3 and stored.event_id.is_unique
    assert stored.set_index("event_id").loc["e0", "watch_time_s"] == 5


def test_reingest_does_not_pile_up_quarantine(tmp_path):
    rows = good_rows(2) + [{**GOOD, "event_id": "bad", "device": "fridge"}]
    folder = write_logs(tmp_path / "in", rows)
    lake = Lake(tmp_path / "lake")
    for _ in range(2):
        ingest(open_source("canonical", folder, tmp_path), lake)
    assert len(read_quarantine(lake)) == 1


def test_missing_column_stops_with_lake_untouched(tmp_path, ml_small):
    lake = Lake(tmp_path / "lake")
    ingest(open_source("canonical", write_logs(tmp_path / "ok", good_rows(4)), tmp_path), lake)
    before = sorted(p.relative_to(lake.root) for p in lake.root.rglob("*") if p.is_file())

    broken = tmp_path / "broken"
    broken.mkdir()
    pd.DataFrame(good_rows(2)).drop(columns=["event_type"]).to_csv(broken / "events.csv", index=False)
    with pytest.raises(MissingColumnError, match="event_type"):
        ingest(open_source("canonical", broken, tmp_path), lake)
    after = sorted(p.relative_to(lake.root) for p in lake.root.rglob("*") if p.is_file())
    assert after == before


def test_file_damaged_midway_leaves_nothing_half_written(tmp_path):
    folder = tmp_path / "in"
    (folder / "events").mkdir(parents=True)
    write_logs(folder, [])
    (folder / "events.csv").unlink()
    pd.DataFrame(good_rows(3)).to_csv(folder / "events" / "a.csv", index=False)
    (folder / "events" / "b.parquet").write_bytes(b"PAR1 truncated garbage")
    lake = Lake(tmp_path / "lake")
    source = open_source("canonical", folder, tmp_path)
    with pytest.raises(DataFileError, match="b.parquet"):
        ingest(source, lake)
    assert lake.event_files() == []
    assert not lake.table_path("videos").exists()
    assert not any(lake.staging_dir.iterdir()) if lake.staging_dir.exists() else True
