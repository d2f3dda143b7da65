"""The canonical tables every loader produces and every later stage reads.

Column order, dtypes and allowed values live here once. The Arrow schemas are what the lake
stores; loaders hand over pandas frames in the same column order (see `empty_frame`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

# `tag` is not in DESIGN.md's list: MovieLens tag applications are kept as events of their own
# (text = the tag) rather than being squeezed into `comment`.
EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "click",
    "play",
    "watch",
    "like",
    "dislike",
    "rating",
    "comment",
    "share",
    "search",
    "tag",
)
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tv", "tablet", "unknown")
KNOWN_DEVICES: tuple[str, ...] = tuple(d for d in DEVICES if d != "unknown")  # what a client can say it is
RATING_MIN, RATING_MAX = 0.5, 5.0
# Events that are not about one video.
EVENTS_WITHOUT_VIDEO: tuple[str, ...] = ("search",)

_TS = pa.timestamp("us", tz="UTC")

USERS = pa.schema(
    [
        ("user_id", pa.string()),
        ("signup_ts", _TS),
        ("age_bucket", pa.string()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("country", pa.string()),
    ]
)

VIDEOS = pa.schema(
    [
        ("video_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("genres", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
        ("duration_s", pa.float64()),
        ("published_ts", _TS),
        ("language", pa.string()),
    ]
)

EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("video_id", pa.string()),
        ("event_ts", _TS),
        ("event_type", pa.string()),
        ("watch_time_s", pa.float64()),
        ("rating", pa.float64()),
        ("device", pa.string()),
        ("session_id", pa.string()),
        ("text", pa.string()),
    ]
)

# What the service showed: one row per (answer, slot), written by serving.impressions into
# `<feedback dir>/impressions/<day>/<batch>.parquet`. `position` is the 1-based rank shown;
# `model_versions` the served versions as JSON. The canonical loader turns each row into an
# `impression` event, so impressions reach the lake (and the ranker's negatives) on ingest.
IMPRESSIONS = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("video_id", pa.string()),
        ("position", pa.int32()),
        ("variant", pa.string()),
        ("experiment", pa.string()),
        ("model_versions", pa.string()),
        ("served_from", pa.string()),
        ("device", pa.string()),
        ("event_ts", _TS),
    ]
)
# Feedback batches keep, beside the canonical columns, the answer a click or watch responds to
# (both null when the client did not say); the canonical loader drops them on ingest.
ATTRIBUTION_COLUMNS = (("request_id", pa.string()), ("position", pa.int32()))
FEEDBACK_EVENTS = pa.schema([*EVENTS, *(pa.field(n, t) for n, t in ATTRIBUTION_COLUMNS)])

TABLES: dict[str, pa.Schema] = {"users": USERS, "videos": VIDEOS, "events": EVENTS}
ID_COLUMN = {"users": "user_id", "videos": "video_id", "events": "event_id"}

# What a platform's own files must carry at least; everything else is optional.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "videos": ("video_id", "title"),
    "events": ("user_id", "video_id", "event_ts", "event_type"),
}
LIST_COLUMNS = ("genres", "tags")
# How list columns are spelled in CSV files (MovieLens uses the same separator for genres).
LIST_SEPARATOR = "|"


def empty_frame(table: str) -> pd.DataFrame:
    """A zero-row frame with the table's columns and dtypes."""
    return TABLES[table].empty_table().to_pandas()


def to_arrow(df: pd.DataFrame, table: str | pa.Schema) -> pa.Table:
    """Cast a frame to a table's Arrow schema (a canonical table's name, or a schema such as
    IMPRESSIONS): column order and types enforced. Timestamps are floored to the stored
    microseconds, so a client's nanosecond time is kept (to the microsecond), not an error."""
    schema = TABLES[table] if isinstance(table, str) else table
    frame = df[schema.names]
    stamps = [
        f.name for f in schema if pa.types.is_timestamp(f.type) and isinstance(frame[f.name].dtype, pd.DatetimeTZDtype)
    ]
    if stamps:
        frame = frame.assign(**{name: frame[name].dt.floor("us") for name in stamps})
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


# ---- time: every timestamp is UTC ------------------------------------------------------------------


def utc_time(value: datetime | str | pd.Timestamp | None = None) -> datetime:
    """An aware UTC datetime from a datetime, pandas Timestamp or ISO string; naive values are taken
    as UTC; None is now."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_series(series: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC (naive values are taken as UTC)."""
    ts = pd.to_datetime(series)
    return ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
