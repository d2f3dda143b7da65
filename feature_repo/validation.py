"""Row-level validation: parse raw values, check them with pandera, split accepted from rejected.

Every rejected row keeps its raw values and gets a reason (several joined by ';' when it breaks
several rules), so quarantine loses nothing. Reasons are the check names below.
Exact duplicates are found later, across chunks, when the lake commits (see lake.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from feature_repo import schema

# Clocks drift; an event a few minutes "in the future" is a skewed client, not a bad row.
FUTURE_TOLERANCE = pd.Timedelta(minutes=5)

MISSING = {
    "user_id": "missing_user_id",
    "video_id": "missing_video_id",
    "event_id": "missing_event_id",
    "event_ts": "unparsable_timestamp",
    "event_type": "unknown_event_type",
    "title": "missing_title",
}


@dataclass
class Validated:
    accepted: pd.DataFrame  # typed, canonical columns
    rejected: pd.DataFrame  # raw values as strings + `reason`
    accepted_rows: np.ndarray  # positions of accepted rows in the input
    rejected_rows: np.ndarray  # positions of rejected rows in the input


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Any timestamp spelling -> UTC; what cannot be parsed becomes NaT (and is caught by a check)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize("UTC")
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


# The latest time pandas holds (nanoseconds, UTC): a later event time is clamped to it, so the
# future-timestamp check names the row.
LATEST = pd.Timestamp.max.tz_localize("UTC")


def in_nanoseconds(values: pd.Series) -> pd.Series:
    """UTC timestamps at pandas' nanosecond unit. A typed time outside its range (a Parquet column
    in microseconds holds years 1 to 9999) is not an error here: a later one becomes the largest
    time pandas holds, which the future-timestamp check names, an earlier one NaT (unparsable)."""
    if values.dt.unit == "ns":
        return values
    latest, earliest = LATEST.floor("us"), pd.Timestamp.min.tz_localize("UTC").ceil("us")
    values = values.mask(values > latest, latest).mask(values < earliest, pd.NaT)
    return values.astype("datetime64[ns, UTC]")


def beyond_timestamp_range(raw: pd.Series, parsed: pd.Series) -> pd.Series:
    """Rows whose value is a real date past what pandas can hold (year 2262+): far future, not garbage."""
    candidates = raw[raw.notna() & parsed.isna()]
    if candidates.empty:
        return pd.Series(False, index=raw.index)

    def is_far_future(value) -> bool:
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).year > 2262
        except ValueError:
            return False

    return candidates.map(is_far_future).astype(bool).reindex(raw.index, fill_value=False)


def parse_numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _string(values: pd.Series) -> pd.Series:
    """Ids and categories as str (MovieLens ids arrive as numbers); nulls stay null."""
    out = values.astype(object)
    present = out.notna()
    out[present] = out[present].astype(str).str.strip()
    out[present & (out == "")] = None
    return out


def _unparsed(raw: pd.Series, parsed: pd.Series) -> pd.Series:
    """Rows that had a value the parser could not read."""
    return raw.notna() & parsed.isna()


def events_schema(known_videos: Iterable[str], now: pd.Timestamp) -> pa.DataFrameSchema:
    known = pd.Index(pd.Series(list(known_videos), dtype=object).unique())
    latest = now + FUTURE_TOLERANCE
    return pa.DataFrameSchema(
        {
            "event_id": pa.Column(object, nullable=False),
            "user_id": pa.Column(object, nullable=False),
            "video_id": pa.Column(
                object,
                nullable=True,
                checks=pa.Check(lambda s: s.isna() | s.isin(known), name="unknown_video"),
            ),
            "event_ts": pa.Column(
                pd.DatetimeTZDtype("ns", "UTC"),
                nullable=False,
                checks=pa.Check(lambda s: s <= latest, name="future_timestamp"),
            ),
            "event_type": pa.Column(
                object, nullable=False, checks=pa.Check(lambda s: s.isin(schema.EVENT_TYPES), name="unknown_event_type")
            ),
            "watch_time_s": pa.Column(
                float, nullable=True, checks=pa.Check(lambda s: s.isna() | (s >= 0), name="negative_watch_time")
            ),
            "rating": pa.Column(
                float,
                nullable=True,
                checks=pa.Check(
                    lambda s: s.isna() | s.between(schema.RATING_MIN, schema.RATING_MAX), name="rating_out_of_range"
                ),
            ),
            "device": pa.Column(object, checks=pa.Check(lambda s: s.isin(schema.DEVICES), name="unknown_device")),
        },
        checks=pa.Check(
            lambda df: df["video_id"].notna() | df["event_type"].isin(schema.EVENTS_WITHOUT_VIDEO),
            name="missing_video_id",
        ),
        strict=False,
    )


def videos_schema() -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "video_id": pa.Column(object, nullable=False),
            "title": pa.Column(object, nullable=False),
            "duration_s": pa.Column(
                float, nullable=True, checks=pa.Check(lambda s: s.isna() | (s >= 0), name="negative_duration")
            ),
        }
    )


def users_schema() -> pa.DataFrameSchema:
    return pa.DataFrameSchema({"user_id": pa.Column(object, nullable=False)})


def failure_reasons(df: pd.DataFrame, checks: pa.DataFrameSchema) -> pd.Series:
    """Per row, the names of the checks it fails joined by ';' ('' when it passes)."""
    reasons = pd.Series("", index=df.index, dtype=object)
    try:
        checks.validate(df, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases.dropna(subset=["index"])
        names = [
            MISSING.get(column, f"missing_{column}") if check == "not_nullable" else check
            for column, check in zip(cases["column"], cases["check"], strict=False)
        ]
        # A frame-wide check reports each failing row once per column: keep one (row, reason).
        pairs = pd.DataFrame({"row": cases["index"].astype(int).to_numpy(), "reason": names}).drop_duplicates()
        joined = pairs.groupby("row", sort=False)["reason"].agg(";".join)
        reasons.loc[joined.index] = joined
    return reasons


def _split(raw: pd.DataFrame, typed: pd.DataFrame, reasons: pd.Series, table: str) -> Validated:
    bad = reasons != ""
    rejected = raw.loc[bad].astype(str).where(raw.loc[bad].notna(), None)
    rejected = rejected.assign(reason=reasons[bad].values)
    accepted = typed.loc[~bad, schema.TABLES[table].names].reset_index(drop=True)
    positions = np.arange(len(raw))
    return Validated(accepted, rejected.reset_index(drop=True), positions[~bad.to_numpy()], positions[bad.to_numpy()])


def validate_events(raw: pd.DataFrame, known_videos: Iterable[str], now: pd.Timestamp | None = None) -> Validated:
    """Parse and check one chunk of raw events."""
    now = now or pd.Timestamp.now(tz="UTC")
    raw = raw.reset_index(drop=True)
    typed = raw.copy()
    for column in ("event_id", "user_id", "video_id", "event_type", "session_id", "text"):
        typed[column] = _string(raw[column])
    typed["event_type"] = typed["event_type"].str.lower()
    typed["device"] = _string(raw["device"]).str.lower().fillna("unknown")
    typed["event_ts"] = in_nanoseconds(parse_timestamps(raw["event_ts"]))
    typed.loc[beyond_timestamp_range(raw["event_ts"], typed["event_ts"]), "event_ts"] = LATEST
    typed["watch_time_s"] = parse_numbers(raw["watch_time_s"])
    typed["rating"] = parse_numbers(raw["rating"])

    reasons = failure_reasons(typed, events_schema(known_videos, now))
    unreadable = _unparsed(raw["watch_time_s"], typed["watch_time_s"]) | _unparsed(raw["rating"], typed["rating"])
    reasons[unreadable] = (reasons[unreadable] + ";invalid_number").str.lstrip(";")
    return _split(raw, typed, reasons, "events")


def validate_videos(raw: pd.DataFrame) -> Validated:
    raw = raw.reset_index(drop=True)
    typed = raw.copy()
    for column in ("video_id", "title", "description", "language"):
        typed[column] = _string(raw[column])
    typed["duration_s"] = parse_numbers(raw["duration_s"])
    typed["published_ts"] = parse_timestamps(raw["published_ts"])
    reasons = failure_reasons(typed, videos_schema())
    reasons = _add(reasons, _unparsed(raw["published_ts"], typed["published_ts"]), "unparsable_timestamp")
    reasons = _add(reasons, _unparsed(raw["duration_s"], typed["duration_s"]), "invalid_number")
    reasons = _add_duplicates(reasons, typed, "video_id")
    rejected_raw = raw.assign(genres=raw["genres"].map(_join), tags=raw["tags"].map(_join))
    return _split(rejected_raw, typed, reasons, "videos")


def validate_users(raw: pd.DataFrame) -> Validated:
    raw = raw.reset_index(drop=True)
    typed = raw.copy()
    for column in ("user_id", "age_bucket", "gender", "occupation", "country"):
        typed[column] = _string(raw[column])
    typed["signup_ts"] = parse_timestamps(raw["signup_ts"])
    reasons = failure_reasons(typed, users_schema())
    reasons = _add(reasons, _unparsed(raw["signup_ts"], typed["signup_ts"]), "unparsable_timestamp")
    reasons = _add_duplicates(reasons, typed, "user_id")
    return _split(raw, typed, reasons, "users")


def _add(reasons: pd.Series, mask: pd.Series, reason: str) -> pd.Series:
    reasons = reasons.copy()
    reasons[mask] = (reasons[mask] + ";" + reason).str.lstrip(";")
    return reasons


def _add_duplicates(reasons: pd.Series, typed: pd.DataFrame, id_column: str) -> pd.Series:
    """Repeats of an id after its first valid row: exact copies are `duplicate_row`, others `duplicate_id`.

    Only rows that passed every other check compete, so one valid row per id is always kept.
    """
    valid = reasons == ""
    comparable = typed[valid].map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)
    repeated = typed[id_column].notna() & valid & typed[id_column].where(valid).duplicated(keep="first")
    exact = comparable.duplicated(keep="first").reindex(typed.index, fill_value=False)
    reasons = _add(reasons, repeated & exact, "duplicate_row")
    return _add(reasons, repeated & ~exact, "duplicate_id")


def _join(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return schema.LIST_SEPARATOR.join(map(str, value)) if not isinstance(value, str) else value
