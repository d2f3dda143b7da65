"""The `vidrec` command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from conftest import FIXTURES
from vidrec.cli import app

runner = CliRunner()
VIDREC = [sys.executable, "-m", "vidrec.cli"]


def test_ingest_movielens_1m_prints_summary(tmp_path):
    result = runner.invoke(
        app, ["ingest", "--dataset", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"), "--lake-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "6 events" in result.output and "4 videos" in result.output and "3 users" in result.output
    assert (tmp_path / "users" / "users.parquet").exists()


def test_malformed_file_exits_nonzero_naming_file_and_column(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    pd.DataFrame({"user_id": ["u1"], "video_id": ["v1"], "event_ts": ["2026-01-01"]}).to_csv(
        data / "events.csv", index=False
    )
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [*VIDREC, "ingest", "--dataset", "canonical", "--data-dir", str(data), "--lake-dir", str(lake)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert str(data / "events.csv") in proc.stderr and "'event_type'" in proc.stderr
    assert not lake.exists() or not any(p.is_file() and p.name != ".lock" for p in lake.rglob("*"))


def test_unknown_profile_is_rejected():
    result = runner.invoke(app, ["--profile", "cloud", "ingest"])
    assert result.exit_code != 0
    assert "unknown profile 'cloud'" in result.output


def test_offline_download_error_exits_nonzero(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_MOVIELENS_URL", "http://127.0.0.1:9")
    result = runner.invoke(app, ["ingest", "--dataset", "movielens-1m", "--lake-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "could not download movielens-1m" in result.output


def test_generate_then_ingest_synthetic(tmp_path):
    out = tmp_path / "synthetic"
    result = runner.invoke(app, ["generate", "--out", str(out), "--users", "200", "--videos", "100", "--events", "20000"])
    assert result.exit_code == 0, result.output
    assert "20,000 events" in result.output
    lake = tmp_path / "lake"
    result = runner.invoke(app, ["ingest", "--dataset", "synthetic", "--data-dir", str(out), "--lake-dir", str(lake)])
    assert result.exit_code == 0, result.output
    from feature_repo.lake import Lake

    stats = Lake(lake).stats()
    assert stats["events"] == 20_000 and stats["videos"] == 100
    assert {"impression", "click", "watch", "search"} <= set(stats["events_by_type"])
