"""Every loader layout maps onto the canonical tables; the download path fails clearly offline."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import FIXTURES

from feature_repo.sources import DataFileError, DownloadError, MissingColumnError, open_source
from feature_repo.sources.canonical import CanonicalFiles
from feature_repo.sources.download import ARCHIVES
from feature_repo.sources.movielens import MovieLens100k, MovieLensCsv, MovieLensDat


def all_events(source) -> pd.DataFrame:
    return pd.concat([c.frame for c in source.events(1000)], ignore_index=True)


def test_movielens_small_real_counts(ml_small, tmp_path):
    source = open_source("movielens-small", ml_small, tmp_path)
    assert isinstance(source, MovieLensCsv)
    events = all_events(source)
    ratings = events[events.event_type == "rating"]
    assert len(ratings) == 100_836
    assert ratings.user_id.nunique() == 610
    assert ratings.rating.between(0.5, 5).all()
    assert len(events[events.event_type == "tag"]) == 3_683
    videos = source.videos()
    assert len(videos) == 9_742
    toy = videos.set_index("video_id").loc["1"]
    assert toy.title == "Toy Story"
    assert toy.published_ts == pd.Timestamp("1995-01-01", tz="UTC")
    assert "Animation" in toy.genres and "pixar" in toy.tags
    assert events.event_id.is_unique


def test_movielens_csv_layout_fixture(tmp_path):
    source = open_source("movielens-25m", FIXTURES / "ml-csv", tmp_path)
    videos = source.videos().set_index("video_id")
    assert videos.loc["2", "title"] == "American President, The"
    assert videos.loc["3", "genres"] == []  # "(no genres listed)"
    assert pd.isna(videos.loc["3", "published_ts"])
    assert videos.loc["1", "tags"] == ["pixar", "funny"]  # lower-cased, most applied first
    events = all_events(source)
    assert sorted(events.event_type.value_counts().items()) == [("rating", 5), ("tag", 4)]
    assert events.loc[events.event_type == "tag", "text"].tolist() == ["pixar", "Pixar", "funny", "war"]
    assert source.users() is None


def test_movielens_1m_dat_layout(tmp_path):
    source = open_source("movielens-1m", FIXTURES / "ml-1m", tmp_path)
    assert isinstance(source, MovieLensDat)
    videos = source.videos().set_index("video_id")
    assert videos.loc["3", "title"] == "Star Wars: Episode IV - A New Hope"  # ':' inside the title
    assert videos.loc["3", "genres"] == ["Action", "Adventure", "Fantasy", "Sci-Fi"]
    assert videos.loc["4", "title"] == "Café au lait"  # latin-1
    users = source.users().set_index("user_id")
    assert users.loc["1"].tolist()[1:4] == ["under-18", "f", "K-12 student"]
    assert users.loc["2", "age_bucket"] == "56+"
    events = all_events(source)
    assert len(events) == 6 and set(events.rating) == {1, 2, 3, 4, 5}
    assert events.event_ts.min() == pd.Timestamp(978294008, unit="s", tz="UTC")


def test_movielens_100k_layout(tmp_path):
    source = open_source("movielens-100k", FIXTURES / "ml-100k", tmp_path)
    assert isinstance(source, MovieLens100k)
    videos = source.videos().set_index("video_id")
    assert videos.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert videos.loc["2", "genres"] == ["Action", "Adventure", "Thriller"]
    assert videos.loc["3", "genres"] == []  # only the 'unknown' flag
    assert videos.loc["1", "published_ts"] == pd.Timestamp("1995-01-01", tz="UTC")
    users = source.users().set_index("user_id")
    assert users.loc["1", "age_bucket"] == "18-24"
    assert users.loc["3", "age_bucket"] == "under-18"
    assert users.loc["2", "occupation"] == "other"
    assert len(all_events(source)) == 5


def test_canonical_parquet_and_csv(tmp_path):
    events = pd.DataFrame(
        {
            "event_id": ["e1", None],
            "user_id": ["u1", "u2"],
            "video_id": ["v1", "v1"],
            "event_ts": ["2026-01-01T10:00:00Z", "2026-01-02T11:00:00Z"],
            "event_type": ["watch", "like"],
            "watch_time_s": ["30", ""],
        }
    )
    videos = pd.DataFrame({"video_id": ["v1"], "title": ["A clip"], "genres": ["Comedy|Drama"]})
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    events.to_csv(csv_dir / "events.csv", index=False)
    videos.to_csv(csv_dir / "videos.csv", index=False)
    source = open_source("canonical", csv_dir, tmp_path)
    assert source.videos().loc[0, "genres"] == ["Comedy", "Drama"]
    loaded = all_events(source)
    assert loaded.loc[0, "event_id"] == "e1"
    assert loaded.loc[1, "event_id"].startswith("h:")  # derived from content, stable
    assert loaded.loc[1, "event_id"] == all_events(source).loc[1, "event_id"]

    pq_dir = tmp_path / "pq"
    (pq_dir / "events").mkdir(parents=True)
    events.assign(event_ts=pd.to_datetime(events.event_ts)).to_parquet(pq_dir / "events" / "a.parquet")
    videos.assign(genres=[["Comedy"]]).to_parquet(pq_dir / "videos.parquet")
    source = CanonicalFiles("canonical", pq_dir)
    assert source.event_rows() == 2
    assert all_events(source).event_ts.dt.tz is not None


def test_missing_required_column_names_file_and_column(tmp_path):
    pd.DataFrame({"user_id": ["u1"], "video_id": ["v1"], "event_type": ["watch"]}).to_csv(
        tmp_path / "events.csv", index=False
    )
    with pytest.raises(MissingColumnError) as info:
        open_source("canonical", tmp_path, tmp_path).check()
    assert info.value.column == "event_ts"
    assert "events.csv" in str(info.value) and "event_ts" in str(info.value)


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "events.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataFileError, match="events.parquet"):
        open_source("canonical", tmp_path, tmp_path).check()


def test_movielens_folder_without_ratings(tmp_path):
    with pytest.raises(DataFileError, match="no MovieLens ratings file"):
        open_source("movielens-small", tmp_path, tmp_path)


def test_download_offline_error_says_what_to_do(tmp_path, monkeypatch):
    # Port 9 (discard) on loopback refuses connections: the same failure as a machine without internet.
    monkeypatch.setenv("VIDREC_MOVIELENS_URL", "http://127.0.0.1:9/datasets/movielens")
    with pytest.raises(DownloadError) as info:
        open_source("movielens-100k", None, tmp_path / "cache")
    message = str(info.value)
    assert "could not download movielens-100k" in message
    assert "--data-dir" in message and "ml-100k.zip" in message
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_download_checksum_mismatch_is_rejected(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "ml-latest-small.zip").write_bytes(b"not the real archive")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("VIDREC_MOVIELENS_URL", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(DownloadError, match="checksum mismatch") as info:
            open_source("movielens-small", None, tmp_path / "cache")
    finally:
        server.shutdown()
    assert hashlib.sha256(b"not the real archive").hexdigest() in str(info.value)
    assert ARCHIVES["movielens-small"].sha256 in str(info.value)
    assert not list((tmp_path / "cache").glob("ml-latest-small*"))


def test_download_uses_cache_when_present(tmp_path, ml_small):
    cache = tmp_path / "cache"
    (cache / "ml-latest-small").mkdir(parents=True)
    for name in ("ratings.csv", "movies.csv"):
        (cache / "ml-latest-small" / name).write_bytes((ml_small / name).read_bytes())
    source = open_source("movielens-small", None, cache)
    assert Path(source.location) == cache / "ml-latest-small"
