"""What the web page shows about people and videos, read from the lake.

The page needs titles and genres for the ids the service answers with, the user ids to search,
and one user's history. Videos are read once per process (the catalog changes with a feature
run, not per request); user ids are re-read when the lake's event files change; a history reads
one user's rows of a few columns, with the filter pushed down to the parquet scan.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from feature_repo.lake import Lake

HISTORY_COLUMNS = ["event_ts", "video_id", "event_type", "rating", "watch_time_s", "device"]
# What the service showed a user is not something the user did: the history leaves it out.
NOT_HISTORY = ("impression",)


@dataclass(frozen=True)
class Video:
    video_id: str
    title: str
    genres: list[str]
    duration_s: float | None

    def as_dict(self) -> dict:
        return {"video_id": self.video_id, "title": self.title, "genres": self.genres, "duration_s": self.duration_s}


def _id_order(user_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ("2" before "10"), then the others alphabetically."""
    return (0, int(user_id), "") if user_id.isdigit() else (1, 0, user_id)


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


class Catalog:
    def __init__(self, lake: Lake):
        self.lake = lake
        self._lock = threading.Lock()
        self._videos: dict[str, Video] | None = None
        self._users: list[str] = []
        self._users_key: tuple | None = None

    # ---- videos ---------------------------------------------------------------------------------

    def videos(self) -> dict[str, Video]:
        with self._lock:
            if self._videos is None:
                self._videos = self._read_videos()
            return self._videos

    def _read_videos(self) -> dict[str, Video]:
        frame = self.lake.read_table("videos")[["video_id", "title", "genres", "duration_s"]]
        return {
            str(row.video_id): Video(
                video_id=str(row.video_id),
                title=str(row.title) if isinstance(row.title, str) else str(row.video_id),
                genres=[str(g) for g in row.genres] if row.genres is not None else [],
                duration_s=_number(row.duration_s),
            )
            for row in frame.itertuples(index=False)
        }

    def lookup(self, video_ids: list[str]) -> tuple[dict[str, dict], list[str]]:
        """(known videos by id, the ids the catalog does not hold)."""
        videos = self.videos()
        found = {v: videos[v].as_dict() for v in video_ids if v in videos}
        return found, [v for v in video_ids if v not in videos]

    # ---- users ----------------------------------------------------------------------------------

    def user_ids(self) -> list[str]:
        files = self.lake.event_files()
        key = (len(files), max((f.stat().st_mtime_ns for f in files), default=0), self._users_table_mtime())
        with self._lock:
            if key != self._users_key:
                self._users = self._read_user_ids()
                self._users_key = key
            return self._users

    def _users_table_mtime(self) -> int:
        path: Path = self.lake.table_path("users")
        return path.stat().st_mtime_ns if path.exists() else 0

    def _read_user_ids(self) -> list[str]:
        # Everyone with an event, and the users table's people too (some have no events yet).
        ids = set(self.lake.read_events(columns=["user_id"])["user_id"].dropna().astype(str))
        ids.update(self.lake.read_table("users")["user_id"].dropna().astype(str))
        return sorted(ids, key=_id_order)

    def search_users(self, query: str, limit: int) -> list[str]:
        """Ids starting with `query` first, then ids containing it."""
        users = self.user_ids()
        query = query.strip().lower()
        if not query:
            return users[:limit]
        starts = [u for u in users if u.lower().startswith(query)]
        if len(starts) >= limit:
            return starts[:limit]
        contains = [u for u in users if query in u.lower() and not u.lower().startswith(query)]
        return (starts + contains)[:limit]

    # ---- history --------------------------------------------------------------------------------

    def history(self, user_id: str, limit: int) -> tuple[list[dict], int]:
        """(the user's newest `limit` events with titles and genres, how many events they have)."""
        events = self.lake.read_events(columns=HISTORY_COLUMNS, filter=ds.field("user_id") == user_id)
        events = events[~events["event_type"].isin(NOT_HISTORY)]
        newest = events.sort_values("event_ts", ascending=False, kind="stable").head(limit)
        videos = self.videos()
        rows = []
        for e in newest.itertuples(index=False):
            video = videos.get(str(e.video_id)) if isinstance(e.video_id, str) else None
            rows.append(
                {
                    "event_ts": pd.Timestamp(e.event_ts).isoformat(),
                    "event_type": e.event_type,
                    "video_id": e.video_id if isinstance(e.video_id, str) else None,
                    "title": video.title if video else (e.video_id or ""),
                    "genres": video.genres if video else [],
                    "rating": _number(e.rating),
                    "watch_time_s": _number(e.watch_time_s),
                    "duration_s": video.duration_s if video else None,
                    "device": e.device,
                }
            )
        return rows, len(events)
