"""Candidates, then ranking: the system the registry versions and serving runs.

`TwoStage` holds the fitted generators (as a `HybridUnion`), the catalog side for cross
features and the XGBoost ranker. Feature lookup is passed in per call, so the same object ranks
with point-in-time features offline and with online features in serving.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from models.base import Recommender
from models.hybrid import HybridUnion
from models.interactions import Interactions, epoch_seconds
from models.ranker import (
    QUERY_COLUMN,
    CatalogSide,
    FeatureLookup,
    HistoryStats,
    RankerConfig,
    RankerModel,
    TrainingRows,
    candidate_frame,
    context_features,
    cross_features,
    days_away,
    labels_for,
    pair_grades,
    train_ranker_rows,
)


@dataclass(frozen=True)
class Requests:
    """Per user row: when the request happens and on which device."""

    user_rows: np.ndarray
    request_ts: pd.Series  # UTC timestamps, aligned with user_rows (context: hour, weekday)
    device: pd.Series
    # When features are looked up as of (defaults to request_ts). Offline windows use the window
    # start, so every row's features come from events strictly before the window.
    feature_ts: pd.Series | None = None

    @classmethod
    def at(cls, user_rows: np.ndarray, when: pd.Timestamp, device: str = "unknown") -> Requests:
        n = len(user_rows)
        return cls(np.asarray(user_rows), pd.Series([when] * n), pd.Series([device] * n))

    @classmethod
    def first_events(cls, data: Interactions, events: pd.DataFrame, as_of: pd.Timestamp | None = None) -> Requests:
        """Each user's first event in a window: the moment their session starts, and its device.

        `as_of`: the window's start, when features are looked up (default: each request's time).
        """
        first = events.sort_values("event_ts", kind="stable").groupby("user_id").first()
        rows = data.user_rows(first.index)
        known = rows >= 0
        device = first["device"] if "device" in first else pd.Series("unknown", index=first.index)
        request_ts = first["event_ts"][known].reset_index(drop=True)
        feature_ts = None if as_of is None else pd.Series([as_of] * int(known.sum()))
        return cls(rows[known], request_ts, device[known].reset_index(drop=True), feature_ts)

    @classmethod
    def arrivals(cls, data: Interactions, events: pd.DataFrame, default_ts: pd.Timestamp) -> Requests:
        """Every user row of `data`: when (and on which device) the user shows up in `events`,
        at `default_ts` on an unknown device for users who do not."""
        first = cls.first_events(data, events)
        rest = np.setdiff1d(np.arange(data.n_users), first.user_rows)
        other = cls.at(rest, default_ts)
        return cls(
            np.concatenate([first.user_rows, rest]),
            pd.concat(
                [pd.to_datetime(first.request_ts, utc=True), pd.to_datetime(other.request_ts, utc=True)],
                ignore_index=True,
            ),
            pd.concat([first.device, other.device], ignore_index=True),
        )

    def subset(self, user_rows: np.ndarray) -> Requests:
        at = pd.Series(np.arange(len(self.user_rows)), index=self.user_rows)
        chosen = at.reindex(np.asarray(user_rows)).to_numpy()
        if np.isnan(chosen.astype(float)).any():
            raise KeyError("some users have no request (time, device) set for two-stage scoring")
        pick = lambda s: None if s is None else s.iloc[chosen.astype(int)].reset_index(drop=True)  # noqa: E731
        return Requests(np.asarray(user_rows), pick(self.request_ts), pick(self.device), pick(self.feature_ts))


def ranking_frame(
    union: HybridUnion,
    catalog: CatalogSide,
    requests: Requests,
    lookup: FeatureLookup | None,
    stats: HistoryStats | None = None,
) -> pd.DataFrame:
    """Every candidate row with generator, cross, context and (when given) Feast features.

    `stats`: `HistoryStats.of(union.data)`, computed once by callers that rank in chunks.
    """
    stats = stats or HistoryStats.of(union.data)
    frame = candidate_frame(union, requests.user_rows)
    if frame.empty:
        return frame
    position = pd.Series(np.arange(len(requests.user_rows)), index=requests.user_rows)
    per_row = position.reindex(frame["user_row"].to_numpy()).to_numpy()
    request_ts = pd.Series(pd.to_datetime(requests.request_ts, utc=True).to_numpy()[per_row], index=frame.index)
    device = pd.Series(requests.device.to_numpy()[per_row], index=frame.index)
    frame = pd.concat(
        [frame, cross_features(frame, union.data, catalog, stats), context_features(request_ts, device)], axis=1
    )
    last = stats.last_active[frame["user_row"].to_numpy()]
    frame["ctx_log_days_away"] = days_away(last, epoch_seconds(request_ts).to_numpy())
    if lookup is not None:
        as_of = requests.feature_ts if requests.feature_ts is not None else requests.request_ts
        feature_ts = pd.Series(pd.to_datetime(as_of, utc=True).to_numpy()[per_row], index=frame.index)
        entities = frame[["user_id", "video_id"]].assign(
            event_timestamp=feature_ts, request_ts=request_ts, device=device
        )
        looked_up = lookup(entities)
        added = [c for c in looked_up.columns if c not in frame.columns]
        frame = pd.concat([frame, looked_up[added].set_axis(frame.index)], axis=1)
    return frame


def prefetch_features(lookup: FeatureLookup | None, data: Interactions, requests: Requests) -> None:
    """Give a lookup that can prefetch (`FeastLookup`) every entity row `requests` will ask for:
    each user as of its feature time with its request context, and every video as of each
    distinct feature time. One retrieval instead of one per chunk of users."""
    prefetch = getattr(lookup, "prefetch", None)
    if prefetch is None or len(requests.user_rows) == 0:
        return
    request_ts = pd.to_datetime(requests.request_ts, utc=True).reset_index(drop=True)
    as_of = (
        request_ts
        if requests.feature_ts is None
        else pd.to_datetime(requests.feature_ts, utc=True).reset_index(drop=True)
    )
    users = pd.DataFrame(
        {
            "user_id": data.user_ids[requests.user_rows],
            "video_id": data.video_ids[0],
            "event_timestamp": as_of,
            "request_ts": request_ts,
            "device": requests.device.reset_index(drop=True),
        }
    )
    first = users.iloc[0]
    videos = pd.concat(
        [
            pd.DataFrame({"user_id": first["user_id"], "video_id": data.video_ids, "event_timestamp": when,
                          "request_ts": first["request_ts"], "device": first["device"]})
            for when in as_of.unique()
        ],
        ignore_index=True,
    )  # fmt: skip
    prefetch(pd.concat([users, videos], ignore_index=True))


@dataclass
class TwoStage:
    union: HybridUnion
    catalog: CatalogSide
    ranker: RankerModel

    @property
    def data(self) -> Interactions:
        return self.union.data

    @cached_property
    def stats(self) -> HistoryStats:
        return HistoryStats.of(self.union.data)

    @classmethod
    def train(
        cls,
        union: HybridUnion,
        catalog: CatalogSide,
        label_events: pd.DataFrame,
        lookup: FeatureLookup | None = None,
        config: RankerConfig = RankerConfig(),
    ) -> tuple[TwoStage, TrainingRows]:
        """Fit the ranker on the candidates of users active in the label window.

        Returns the system and its training rows (with a sample frame), for logging and inspection.
        """
        ranker, rows = train_on_windows([(union, catalog, label_events)], lookup, config)
        return cls(union, catalog, ranker), rows

    def rank(self, requests: Requests, k: int, lookup: FeatureLookup | None = None) -> pd.DataFrame:
        """Top-k per user: user_id, video_id, rank, score, and which generators proposed it."""
        frame = ranking_frame(self.union, self.catalog, requests, lookup, self.stats)
        if frame.empty:
            return pd.DataFrame(columns=["user_id", "video_id", "rank", "score", "sources"])
        frame["score"] = self.ranker.predict(frame)
        frame = frame.sort_values(["user_row", "score"], ascending=[True, False], kind="stable")
        frame["rank"] = frame.groupby("user_row").cumcount() + 1
        top = frame[frame["rank"] <= k]
        rank_cols = [c for c in frame.columns if c.startswith("rank_")]
        sources = top[rank_cols].le(self.union.per_source_k).to_numpy()
        names = np.array([c.removeprefix("rank_") for c in rank_cols])
        top = top.assign(sources=[list(names[row]) for row in sources])
        return top[["user_id", "video_id", "rank", "score", "sources"]].reset_index(drop=True)


class EmptyWindowError(ValueError):
    """A label window none of whose users has a candidate."""


def window_queries(data: Interactions, label_events: pd.DataFrame, max_queries: int | None, seed: int) -> Requests:
    """The label window's requests (each user's first event, features as of the window start),
    at most `max_queries` of them: a seeded draw over the sorted user ids, so the same window and
    seed always give the same users."""
    start = pd.to_datetime(label_events["event_ts"], utc=True).min()
    requests = Requests.first_events(data, label_events, as_of=start)
    if max_queries is None or len(requests.user_rows) <= max_queries:
        return requests
    order = np.argsort(data.user_ids[requests.user_rows].astype(str), kind="stable")
    chosen = np.sort(order[np.random.default_rng(seed).permutation(len(order))[:max_queries]])
    return requests.subset(requests.user_rows[chosen])


def labeled_chunks(
    union: HybridUnion,
    catalog: CatalogSide,
    label_events: pd.DataFrame,
    lookup: FeatureLookup | None = None,
    config: RankerConfig = RankerConfig(),
) -> Iterator[pd.DataFrame]:
    """The ranking frames of one label window's queries, `config.chunk_users` users at a time,
    with `label` and `query_id`.

    Each user's request is their first event in the window; features are as of the window's
    start. The query id (window start | user) keeps a user's rows of different windows apart.
    Raises EmptyWindowError when none of the window's users has a candidate.
    """
    start = pd.to_datetime(label_events["event_ts"], utc=True).min()
    requests = window_queries(union.data, label_events, config.max_queries_per_window, config.seed)
    grades = pair_grades(label_events, config.label_scheme)
    stats = HistoryStats.of(union.data)
    prefetch_features(lookup, union.data, requests)
    any_rows = False
    for first in range(0, len(requests.user_rows), config.chunk_users):
        chunk = requests.subset(requests.user_rows[first : first + config.chunk_users])
        frame = ranking_frame(union, catalog, chunk, lookup, stats)
        if frame.empty:
            continue
        any_rows = True
        frame["label"] = labels_for(frame, grades)
        frame[QUERY_COLUMN] = f"{start.isoformat()}|" + frame["user_id"].astype(str)
        yield frame
    if not any_rows:
        raise EmptyWindowError(
            f"no candidates for the users of the label window from {start}: nothing to train the ranker on"
        )


def labeled_frame(
    union: HybridUnion,
    catalog: CatalogSide,
    label_events: pd.DataFrame,
    lookup: FeatureLookup | None = None,
    label_scheme: str = "graded",
) -> pd.DataFrame:
    """Every query of one label window as one frame (`labeled_chunks` joined: for small windows)."""
    config = RankerConfig(label_scheme=label_scheme, max_queries_per_window=None)
    return pd.concat(list(labeled_chunks(union, catalog, label_events, lookup, config)), ignore_index=True)


def train_on_windows(
    windows: Sequence[tuple[HybridUnion, CatalogSide, pd.DataFrame]],
    lookup: FeatureLookup | None = None,
    config: RankerConfig = RankerConfig(),
) -> tuple[RankerModel, TrainingRows]:
    """One ranker from several (generators fitted before the window, catalog side, label window).

    Rolling origins: each window's generators saw only what came before it, as at serving time,
    and more windows mean more users to learn from than one recent window holds. Rows are built
    chunk by chunk into float32 blocks (`TrainingRows`), at most `max_queries_per_window`
    queries per window.
    """
    rows, empty = TrainingRows(), None
    for union, catalog, label in windows:
        try:
            for frame in labeled_chunks(union, catalog, label, lookup, config):
                rows.add(frame.drop(columns="label"), frame["label"].to_numpy())
        except EmptyWindowError as exc:  # an early window can be quiet; all of them cannot
            empty = exc
    if rows.n_rows == 0:
        raise empty or ValueError("no label window to train the ranker on")
    if not (rows.labels > 0).any():
        raise ValueError("no candidate of any label-window user was engaged with: labels are all zero")
    if config.engine == "spark":
        from models.spark_ranker import train_ranker_spark

        return train_ranker_spark(rows, config), rows
    return train_ranker_rows(rows, config), rows


class TwoStageRecommender(Recommender):
    """A fitted `TwoStage` behind the generator interface, so one evaluation serves all models."""

    name = "two-stage"

    def __init__(self, system: TwoStage, requests: Requests, lookup: FeatureLookup | None = None):
        super().__init__()
        self.system, self.requests, self.lookup = system, requests, lookup
        self.data = system.data

    def _fit(self, data: Interactions) -> None:
        raise TypeError("a TwoStageRecommender wraps an already trained system; train it with TwoStage.train")

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Ranker scores on each user's candidates, -inf elsewhere (so only candidates are listed)."""
        frame = ranking_frame(
            self.system.union, self.system.catalog, self.requests.subset(user_rows), self.lookup, self.system.stats
        )
        scores = np.full((len(user_rows), self.data.n_videos), -np.inf, dtype=np.float32)
        if frame.empty:
            return scores
        local = pd.Series(np.arange(len(user_rows)), index=np.asarray(user_rows))
        rows = local.reindex(frame["user_row"].to_numpy()).to_numpy()
        scores[rows, frame["video_row"].to_numpy()] = self.system.ranker.predict(frame)
        return scores
