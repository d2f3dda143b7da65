"""In-session intent: what a viewer just watched, liked or disliked steers their next answer.

    fresh_rows(previous, events, ...)   the `user_recent` and `user_session` rows `/feedback`
                                        pushes for the users of an accepted batch
    SessionIntent.of(user row, ts)      the current session from the online row (None when the
                                        session ended more than `SESSION_GAP` before the request)
    steer(engine, listing, ...)         neighbours (content + co-watch, `Engine.similar`) of the
                                        session's watched and liked videos join the candidates as
                                        source "session" and rise; a disliked video goes, and its
                                        close neighbours are pushed down

The rows live in the online store (Feast push sources), so every worker sees them at once and
they survive a restart; the ranker's features are untouched (it never saw sessions in training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from feast.online_response import TIMESTAMP_POSTFIX  # a feature's stored time in to_dict(include_event_timestamps)

from feature_repo.sessions import (
    SESSION_GAP,
    GenresOf,
    fold_recent,
    fold_session,
    push_stamp,
    split_ids,
    unprefixed,
)
from serving.engine import Engine, Suggestions

SESSION_SOURCE = "session"
MAX_ANCHORS = 5  # newest session videos that steer
NEIGHBOURS = 30  # similar videos per anchor
LIKE_WEIGHT = 0.6  # boost = weight x similarity, on relevance in [0, 1]
WATCH_WEIGHT = 0.3
DISLIKE_PENALTY = 0.6  # relevance x (1 - penalty x similarity)


def fresh_rows(
    previous: dict[str, object], events: pd.DataFrame, genres_of: GenresOf, now: datetime
) -> dict[str, dict]:
    """{view: row to push} for one user: `previous` is their online row read with times."""
    out = {}
    for view, row in (
        ("user_recent", fold_recent(unprefixed(previous, "user_recent"), events)),
        ("user_session", fold_session(unprefixed(previous, "user_session"), events, genres_of, now.timestamp())),
    ):
        stored = [v for k, v in previous.items() if k.startswith(f"{view}__") and k.endswith(TIMESTAMP_POSTFIX)]
        row["event_timestamp"] = push_stamp(max(stored) if stored else None, now)
        out[view] = row
    return out


@dataclass(frozen=True)
class SessionIntent:
    liked: list[str]  # newest first
    watched: list[str]
    disliked: list[str]
    updated_s: float  # when the row was made (a push: wall clock)

    @classmethod
    def of(cls, user: dict[str, object] | None, ts: datetime) -> SessionIntent | None:
        row = unprefixed(user or {}, "user_session")
        last = row.get("last_active_s")
        if last is None or not np.isfinite(float(last)) or ts.timestamp() - float(last) > SESSION_GAP.total_seconds():
            return None
        return cls(
            split_ids(row.get("liked_ids")),
            split_ids(row.get("watched_ids")),
            split_ids(row.get("disliked_ids")),
            float(row.get("updated_s") or 0.0),
        )

    @property
    def seen(self) -> list[str]:
        return [*self.liked, *self.watched, *self.disliked]


def session_updated_at(user: dict[str, object] | None) -> float:
    """When the user's session row was last made (0 when none): precomputed lists older than this
    were made before the user's latest events."""
    value = (user or {}).get("user_session__updated_s")
    return float(value) if value is not None and np.isfinite(float(value)) else 0.0


class SteeredSources:
    """Sources of a steered listing: the original rows' (with "session" first where it boosted
    them), then ["session"] for the rows the session added."""

    def __init__(self, base, base_rows: np.ndarray, boosted: np.ndarray, kept: np.ndarray):
        self.base, self.base_rows, self.boosted, self.kept = base, base_rows, boosted, kept

    def __getitem__(self, position: int) -> list[str]:
        i = int(self.kept[position])
        if i >= self.base_rows:
            return [SESSION_SOURCE]
        sources = list(self.base[i])
        return [SESSION_SOURCE, *sources] if self.boosted[i] else sources

    def __len__(self) -> int:
        return len(self.kept)


def _neighbours(engine: Engine, video_ids: list[str], weight: Callable[[str], float]) -> dict[int, float]:
    """row -> the largest weight x similarity over the anchors' neighbours."""
    out: dict[int, float] = {}
    for video in video_ids[:MAX_ANCHORS]:
        row = engine.video_row(video)
        if row is None:
            continue
        similar = engine.similar(row, NEIGHBOURS)
        w = weight(video)
        for r, s in zip(similar.rows, similar.relevance, strict=True):
            out[int(r)] = max(out.get(int(r), 0.0), w * float(s))
    return out


def steer(
    engine: Engine, listing: Suggestions, ranker_scores: np.ndarray | None, intent: SessionIntent, blocked: np.ndarray
) -> tuple[Suggestions, np.ndarray | None]:
    """The listing moved by the session (see the module doc); rows in `blocked` are dropped."""
    liked = set(intent.liked)
    positive = list(dict.fromkeys([*intent.liked, *intent.watched]))
    boost = _neighbours(engine, positive, lambda v: LIKE_WEIGHT if v in liked else WATCH_WEIGHT)
    penalty = _neighbours(engine, intent.disliked, lambda v: DISLIKE_PENALTY)
    n = len(listing.rows)
    added = np.array(sorted(set(boost) - set(listing.rows.tolist())), dtype=np.int64)
    rows = np.concatenate([listing.rows, added])
    relevance = np.concatenate([listing.relevance, np.zeros(len(added))])
    lift = np.array([boost.get(int(r), 0.0) for r in rows])
    drop = np.array([penalty.get(int(r), 0.0) for r in rows])
    relevance = (relevance + lift) * (1.0 - np.clip(drop, 0.0, 1.0))
    keep = ~np.isin(rows, blocked) if len(blocked) else np.ones(len(rows), dtype=bool)
    kept = np.flatnonzero(keep)
    top = relevance[kept].max() if len(kept) else 1.0
    scores = None
    if ranker_scores is not None:
        scores = np.concatenate([np.asarray(ranker_scores, dtype=np.float64), np.full(len(added), np.nan)])[kept]
    return (
        Suggestions(rows[kept], relevance[kept] / top if top > 0 else relevance[kept],
                    SteeredSources(listing.sources, n, lift[:n] > 0, kept)),
        scores,
    )  # fmt: skip
