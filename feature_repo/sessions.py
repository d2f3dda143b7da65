"""What a viewer is doing right now: their current session and recent activity, folded from events.

One set of rules, used twice:

    batch   `session_table(lake, as_of_times)` writes `user_sessions.parquet`: each user's last
            session before each as-of time (the `user_session` view's batch source, materialized
            like every table)
    push    `fold_session(previous, events)` / `fold_recent(previous, events)` take a user's online
            row and the events `/feedback` just accepted and give the row to push (Feast push
            sources `user_session_push` and `user_recent_push`), so the next `/recommend` sees them

A session is a run of events with gaps of at most `SESSION_GAP`; the next event after a longer
gap starts a new one. Pushed rows are stamped with the newest event time they include (never
older than the row they replace): the online stores keep the newer of a pushed and a batch row
for a key (see `feature_repo.online_bulk`), so a later batch run does not roll a push back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from feature_repo.lake import Lake, write_parquet_atomic
from feature_repo.schema import LIST_SEPARATOR, utc_series

SESSION_GAP = timedelta(minutes=30)
SESSION_LOOKBACK = timedelta(days=1)  # the batch table looks this far back (the view's TTL)
MAX_IDS = 20  # per list, newest first
TOP_GENRES = 5
RECENT_IDS = 10  # `user_recent.last_video_ids`, as user_features.sql keeps it
# Which events put a video in which list of the session.
WATCHED = ("play", "watch", "rating")
LIKED = ("like",)
DISLIKED = ("dislike",)
SESSION_TABLE = "user_sessions"
SESSION_FIELDS = (
    "session_started_s",  # epoch seconds of the session's first event
    "last_active_s",  # epoch seconds of its newest event
    "session_events",
    "updated_s",  # when the row was made (a push: the wall clock; a batch: its as-of time)
    "watched_ids",
    "liked_ids",
    "disliked_ids",
    "genre_shares",  # 'Genre:share|...' over the session's watched and liked videos
)
RECENT_FIELDS = ("events_1d", "events_7d", "events_30d", "days_since_last_activity", "last_video_ids")

GenresOf = Callable[[str], Sequence[str]]


def split_ids(value) -> list[str]:
    """'v1|v2|...' -> ids (newest first); anything else -> []."""
    if not value or not isinstance(value, str):
        return []
    return [v for v in value.split(LIST_SEPARATOR) if v]


def _join_newest(new_first: Iterable[str], older: Iterable[str], limit: int = MAX_IDS) -> str:
    seen: list[str] = []
    for v in [*new_first, *older]:
        if v not in seen:
            seen.append(v)
        if len(seen) == limit:
            break
    return LIST_SEPARATOR.join(seen)


def _number(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _epoch(ts: pd.Timestamp) -> float:
    return ts.timestamp()


def _events_frame(events: pd.DataFrame) -> pd.DataFrame:
    frame = events[events["event_type"] != "impression"].copy()
    frame["event_ts"] = utc_series(frame["event_ts"])
    return frame.sort_values("event_ts", kind="stable")


def genre_shares(video_ids: Iterable[str], genres_of: GenresOf) -> str:
    """'Genre:share|...' (top `TOP_GENRES`, ties by name) of the videos' genres."""
    counts: dict[str, int] = {}
    for video in video_ids:
        for genre in genres_of(video):
            counts[genre] = counts.get(genre, 0) + 1
    total = sum(counts.values())
    if not total:
        return ""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_GENRES]
    return LIST_SEPARATOR.join(f"{g}:{round(n / total, 3)}" for g, n in top)


def fold_session(previous: dict | None, events: pd.DataFrame, genres_of: GenresOf, made_at: float) -> dict:
    """The session row after `events` (one user's, any order): `previous` continued, or a new one.

    `previous` holds SESSION_FIELDS (e.g. the online row, without view prefixes); None or
    empty for a user without a session; `made_at`: epoch seconds, for `updated_s`. Returns
    SESSION_FIELDS plus `event_timestamp` (the newest event's time).
    """
    previous = dict(previous or {})
    started, last = _number(previous.get("session_started_s")), _number(previous.get("last_active_s"))
    watched, liked = split_ids(previous.get("watched_ids")), split_ids(previous.get("liked_ids"))
    disliked = split_ids(previous.get("disliked_ids"))
    count = int(_number(previous.get("session_events")) or 0) if not math.isnan(last) else 0
    for row in _events_frame(events).itertuples(index=False):
        at, gap = _epoch(row.event_ts), SESSION_GAP.total_seconds()
        if not math.isnan(started) and at < started - gap:
            continue  # a late event of an earlier session does not reopen it
        if math.isnan(last) or at - last > gap:
            started, last, count, watched, liked, disliked = at, at, 0, [], [], []
        started, last = min(started, at), max(last, at)
        count += 1
        video = None if pd.isna(row.video_id) else str(row.video_id)
        if video is None:
            continue
        if row.event_type in WATCHED:
            watched = [video, *[v for v in watched if v != video]]
        elif row.event_type in LIKED:
            liked = [video, *[v for v in liked if v != video]]
            disliked = [v for v in disliked if v != video]
        elif row.event_type in DISLIKED:
            disliked = [video, *[v for v in disliked if v != video]]
            liked = [v for v in liked if v != video]
    positive = [*liked, *watched]
    return {
        "session_started_s": started,
        "last_active_s": last,
        "session_events": count,
        "updated_s": float(made_at),
        "watched_ids": _join_newest(watched, []),
        "liked_ids": _join_newest(liked, []),
        "disliked_ids": _join_newest(disliked, []),
        "genre_shares": genre_shares(dict.fromkeys(positive), genres_of),
        "event_timestamp": datetime.fromtimestamp(last, UTC) if not math.isnan(last) else None,
    }


def fold_recent(previous: dict | None, events: pd.DataFrame) -> dict:
    """`user_recent`'s row after `events`: counts added, last activity now, watched videos first.

    The day/week/month counts are those of the batch snapshot plus the new events (the next batch
    snapshot recounts them exactly). `event_timestamp`: the newest event's time.
    """
    previous = dict(previous or {})
    frame = _events_frame(events)
    watched = frame[frame["event_type"].isin(WATCHED) & frame["video_id"].notna()]
    new_ids = [str(v) for v in reversed(watched["video_id"].tolist())]
    counts = {}
    for name in ("events_1d", "events_7d", "events_30d"):
        before = _number(previous.get(name))
        counts[name] = (0 if math.isnan(before) else int(before)) + len(frame)
    return {
        **counts,
        "days_since_last_activity": 0.0,
        "last_video_ids": _join_newest(new_ids, split_ids(previous.get("last_video_ids")), RECENT_IDS),
        "event_timestamp": frame["event_ts"].max().to_pydatetime() if len(frame) else None,
    }


def push_stamp(stored_s: float | None, now: datetime) -> datetime:
    """The event time a pushed row carries: now, and later than the row it replaces.

    Feast's Redis store keeps a stored row that is as new or newer (its SQLite store and our bulk
    writer keep a newer one), and a batch snapshot may be stamped up to a day ahead (the midnight
    after its last event); the online read gives stored times in whole seconds, hence the +1 s.
    """
    floor = datetime.fromtimestamp(float(stored_s) + 1.0, UTC) if stored_s else None
    return max(now, floor) if floor is not None else now


def unprefixed(row: dict, view: str) -> dict:
    """{'view__field': v} -> {'field': v} for one view's fields."""
    prefix = f"{view}__"
    return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}


# ---- batch ---------------------------------------------------------------------------------------


def lake_genres(lake: Lake) -> GenresOf:
    videos = lake.read_table("videos")
    table = {
        str(v): split_ids(g) if isinstance(g, str) else [str(x) for x in (g if g is not None else [])]
        for v, g in zip(videos["video_id"], videos["genres"], strict=True)
    }  # the lake keeps genres as a list column
    return lambda video: table.get(video, [])


def session_table(lake: Lake, as_of_times: Iterable[pd.Timestamp], genres_of: GenresOf | None = None) -> pd.DataFrame:
    """Each user's last session before each as-of time (looking back `SESSION_LOOKBACK`)."""
    genres_of = genres_of or lake_genres(lake)
    columns = ["user_id", "video_id", "event_ts", "event_type"]
    rows = []
    for as_of in sorted(pd.Timestamp(t) for t in as_of_times):
        start = as_of - pd.Timedelta(SESSION_LOOKBACK)
        window = (ds.field("event_ts") >= pa.scalar(start.to_pydatetime(), pa.timestamp("us", tz="UTC"))) & (
            ds.field("event_ts") < pa.scalar(as_of.to_pydatetime(), pa.timestamp("us", tz="UTC"))
        )
        events = lake.read_events(columns=columns, filter=window) if lake.event_files() else pd.DataFrame()
        if events.empty:
            continue
        for user_id, group in events.groupby("user_id", sort=True):
            row = fold_session(None, group, genres_of, made_at=as_of.timestamp())
            if row["event_timestamp"] is None:
                continue
            # Stamped at the as-of time like every batch table (built from events before it).
            rows.append({"user_id": str(user_id), **row, "event_timestamp": as_of, "created_ts": as_of})
    frame = pd.DataFrame(rows, columns=["user_id", *SESSION_FIELDS, "event_timestamp", "created_ts"])
    frame["session_events"] = frame["session_events"].astype("int64")
    for column in ("event_timestamp", "created_ts"):
        frame[column] = utc_series(frame[column]).astype("datetime64[us, UTC]")
    return frame


def write_session_table(lake: Lake, as_of_times: Iterable[pd.Timestamp], out_dir: Path) -> int:
    """Write `user_sessions.parquet` under `out_dir`, merged by as-of time like the SQL tables."""
    times = sorted(pd.Timestamp(t) for t in as_of_times)
    fresh = session_table(lake, times)
    target = Path(out_dir) / f"{SESSION_TABLE}.parquet"
    if target.exists():
        kept = pd.read_parquet(target)
        kept = kept[~utc_series(kept["event_timestamp"]).isin(times)]
        fresh = pd.concat([kept, fresh], ignore_index=True) if len(kept) else fresh
    fresh = fresh.sort_values(["event_timestamp", "user_id"], kind="stable").reset_index(drop=True)
    write_parquet_atomic(pa.Table.from_pandas(fresh, preserve_index=False), target)
    return len(fresh)
