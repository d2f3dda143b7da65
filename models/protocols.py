"""Evaluation protocols: how canonical events become a train window and a held-out truth.

Three splits, one purpose each (see DESIGN.md, "evaluate like production"):

- `time_split` is the default: train on the past, predict the future, as the deployed system has
  to. Every model in a comparison is evaluated on the same window. `time_cut` moves the cut
  earlier until the held-out window judges enough users.
- `user_time_split` holds out each user's last `n` relevant videos: every user with history is
  judged. Caveat: the cut differs per user, so train holds other users' (and the user's own
  non-relevant) events from after a user's held-out ones; it leaks the future a little, and
  figures from it read higher than the deployed system's.
- `stratified_split` is the per-user random 75/25 split of the Microsoft Recommenders benchmark
  (`python_stratified_split`), kept only to compare with published tables.

`relevant_sets` and `rating_triples` turn the test events into what the metrics read, expressed in
the train `Interactions`' indices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.interactions import ENGAGEMENT_WEIGHTS, Interactions

REQUIRED = ("user_id", "video_id", "event_ts")
# Event types that say the user wanted the video (a dislike or an impression is not relevance).
POSITIVE_EVENT_TYPES = frozenset(t for t, w in ENGAGEMENT_WEIGHTS.items() if w > 0)


def _require_columns(events: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}: expected canonical events")


def _timestamps(events: pd.DataFrame) -> pd.Series:
    ts = events["event_ts"]
    return ts if pd.api.types.is_datetime64_any_dtype(ts) else pd.to_datetime(ts, utc=True)


def _aligned_cutoff(cutoff: pd.Timestamp, ts: pd.Series) -> pd.Timestamp:
    """The cutoff in the events' time zone convention (naive cutoffs are read as UTC)."""
    cutoff = pd.Timestamp(cutoff)
    aware = getattr(ts.dt, "tz", None) is not None
    if aware and cutoff.tzinfo is None:
        return cutoff.tz_localize("UTC")
    if not aware and cutoff.tzinfo is not None:
        return cutoff.tz_convert("UTC").tz_localize(None)
    return cutoff


def time_split(
    events: pd.DataFrame, cutoff: pd.Timestamp | None = None, test_fraction: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train = events strictly before `cutoff`; test = events at or after it.

    Without a cutoff, it is the (1 - test_fraction) quantile of event_ts, so about `test_fraction`
    of the events fall in test (ties at the cutoff all go to test).

    The test side keeps only users and videos that appear in the train events: a collaborative
    generator cannot score a user or video it never saw, and those are the cold-start path's job
    (content features, popularity fallback), evaluated separately. Keeping them here would
    measure how many users are new, not how good the model is.
    """
    _require_columns(events, REQUIRED)
    if cutoff is None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if events.empty:
        raise ValueError("cannot split an empty events table")
    ts = _timestamps(events)
    cutoff = ts.quantile(1.0 - test_fraction) if cutoff is None else _aligned_cutoff(cutoff, ts)
    before = (ts < cutoff).to_numpy()
    train = events[before].copy()
    test = events[~before]
    known = test["user_id"].isin(set(train["user_id"])) & test["video_id"].isin(set(train["video_id"].dropna()))
    return train, test[known].copy()


def time_cut(
    events: pd.DataFrame, test_fraction: float = 0.2, min_test_users: int = 200, floor: float = 0.5
) -> pd.Timestamp:
    """The latest cut whose held-out window judges at least `min_test_users` users.

    A user is judged when they have an event before the cut and a relevant one at or after it.
    Cuts are tried at event-time quantiles from 1 - `test_fraction` down to `floor`; when none
    reaches `min_test_users` (ml-latest-small's users rate in bursts: never more than 28 span a
    cut), the cut judging the most users wins, the latest among equals.
    """
    _require_columns(events, REQUIRED)
    if events.empty:
        raise ValueError("cannot split an empty events table")
    ts = _timestamps(events)
    first = ts.groupby(events["user_id"].to_numpy()).min()
    positive = _positive(events, None)
    last = _timestamps(positive).groupby(positive["user_id"].to_numpy()).max().reindex(first.index)
    quantiles = np.arange(1.0 - test_fraction, floor - 1e-9, -0.01)
    cuts = ts.quantile(quantiles).to_numpy()
    first_v, last_v = first.to_numpy(), last.to_numpy()
    judged = [int(((first_v < c) & (last_v >= c)).sum()) for c in cuts]
    for cut, n in zip(cuts, judged, strict=True):
        if n >= min_test_users:
            return pd.Timestamp(cut)
    return pd.Timestamp(cuts[int(np.argmax(judged))])


def user_time_split(events: pd.DataFrame, n: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last `n` relevant videos (by their first relevant event) go to test.

    A user keeps at least one relevant video in train, so a user with m <= n relevant videos
    holds out m - 1 of them (none with one). Every event of a held-out (user, video) pair goes to
    test, so no pair is on both sides; all other events train (see the module's leakage caveat).
    """
    _require_columns(events, REQUIRED)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    positive = _positive(events, None)
    pairs = (
        positive.assign(_ts=_timestamps(positive))
        .groupby(["user_id", "video_id"], sort=False)["_ts"].min().reset_index()
        .sort_values(["user_id", "_ts", "video_id"], kind="mergesort")
    )  # fmt: skip
    groups = pairs.groupby("user_id", sort=False)
    from_end = groups.cumcount(ascending=False)
    held = from_end < np.minimum(n, groups["video_id"].transform("size") - 1)
    test_pairs = pd.MultiIndex.from_frame(pairs.loc[held, ["user_id", "video_id"]])
    in_test = pd.MultiIndex.from_frame(events[["user_id", "video_id"]]).isin(test_pairs)
    return events[~in_test].copy(), events[in_test].copy()


# Origins of the rolling windows a ranker learns from inside a train split: quantiles of event time.
ROLLING_ORIGINS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def rolling_time_splits(
    events: pd.DataFrame, origins: tuple[float, ...] = ROLLING_ORIGINS
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """`time_split` at several origins (quantiles of event time), each window running to the end.

    Windows whose test side is empty (no returning users) are left out.
    """
    if not origins or not all(0.0 < q < 1.0 for q in origins):
        raise ValueError(f"origins must be quantiles in (0, 1), got {origins}")
    splits = [time_split(events, test_fraction=1.0 - q) for q in origins]
    return [(train, test) for train, test in splits if not test.empty]


def stratified_split(
    events: pd.DataFrame, ratio: float = 0.75, seed: int = 42, min_interactions: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, a random `ratio` of the user's distinct (user, video) pairs go to train.

    Follows Microsoft Recommenders' `python_stratified_split(data, ratio=0.75, min_rating=1,
    filter_by="user", seed=42)`: each pair draws a uniform number from
    `np.random.RandomState(seed)` in order of first appearance; within a user, pairs are ranked by
    that number and the pair of rank r among n goes to train when r / n <= ratio. So a user keeps
    floor(ratio * n) pairs in train, and a user with a single pair has it in test only (and is
    then dropped by `relevant_sets`, since train never saw them). For a ratings table with one
    row per pair this reproduces their split exactly.

    Differences, on purpose: the unit is the pair, not the row, so every event of a pair (a rating
    and later tags, say) lands on the same side and no pair is in both train and test; events
    without a video (searches) stay in train as context. `min_interactions` is their `min_rating`
    (a count of pairs, not a rating value): users with fewer distinct pairs are dropped.
    """
    _require_columns(events, ("user_id", "video_id"))
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if min_interactions < 1:
        raise ValueError(f"min_interactions must be >= 1, got {min_interactions}")
    has_video = events["video_id"].notna()
    pairs = events.loc[has_video, ["user_id", "video_id"]].drop_duplicates(ignore_index=True)
    pairs["draw"] = np.random.RandomState(seed).rand(len(pairs))
    pairs = pairs.sort_values(["user_id", "draw"], kind="mergesort")
    groups = pairs.groupby("user_id", sort=False)
    count = groups["video_id"].transform("size")
    rank = groups.cumcount() + 1
    pairs["in_train"] = rank / count <= ratio
    pairs = pairs[count >= min_interactions]

    keyed = events.merge(pairs[["user_id", "video_id", "in_train"]], on=["user_id", "video_id"], how="left")
    keyed.index = events.index
    kept_users = set(pairs["user_id"])
    context = ~has_video & events["user_id"].isin(kept_users)
    train_mask = (keyed["in_train"] == True) | context  # noqa: E712 (NaN means dropped)
    test_mask = keyed["in_train"] == False  # noqa: E712
    return events[train_mask].copy(), events[test_mask].copy()


def stratified_folds(events: pd.DataFrame, n_folds: int = 4, seed: int = 42) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Cross-fitting windows: per user, the distinct (user, video) pairs are dealt into `n_folds`
    folds at random; window f trains on every other fold and labels with fold f.

    A ranker learning from all windows sees every user's every pair once as a label, with
    candidates scored by generators that never saw it, as at inference.
    """
    _require_columns(events, ("user_id", "video_id"))
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    has_video = events["video_id"].notna()
    pairs = events.loc[has_video, ["user_id", "video_id"]].drop_duplicates(ignore_index=True)
    pairs["draw"] = np.random.RandomState(seed).rand(len(pairs))
    pairs = pairs.sort_values(["user_id", "draw"], kind="mergesort")
    # Deal from a random offset per user, so users with fewer pairs than folds spread over all folds.
    offset = pairs.groupby("user_id", sort=False)["draw"].transform("first").mul(n_folds).astype(int)
    pairs["fold"] = (pairs.groupby("user_id", sort=False).cumcount() + offset) % n_folds
    keyed = events.merge(pairs[["user_id", "video_id", "fold"]], on=["user_id", "video_id"], how="left")
    fold = keyed["fold"].to_numpy()
    windows = []
    for f in range(n_folds):
        label = fold == f
        windows.append((events[~label].copy(), events[label].copy()))  # events without a video stay in fit
    return windows


def _positive(test: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    """Test events that signal relevance: positive engagement, ratings at least `min_rating`."""
    keep = pd.Series(True, index=test.index)
    if "event_type" in test.columns:
        keep &= test["event_type"].isin(POSITIVE_EVENT_TYPES)
        if min_rating is not None and "rating" in test.columns:
            low = (test["event_type"] == "rating") & ~(test["rating"] >= min_rating)
            keep &= ~low
    return test[keep & test["video_id"].notna()]


def relevant_sets(
    test: pd.DataFrame,
    interactions: Interactions,
    exclude_seen: bool = True,
    min_rating: float | None = None,
) -> list[set[int]]:
    """Per train user row, the set of video rows the user engaged with in the test window.

    The list has one entry per row of `interactions` (length n_users), so `relevant[u]` is user
    row u's truth and users without test activity hold an empty set (the metrics skip them).
    Test users or videos unknown to `interactions` are dropped: they cannot be indexed.

    A test event counts when its type is a positive engagement (watch, play, click, like, share,
    comment, rating, tag; not impression or dislike) and, if `min_rating` is given, a rating event
    only when its rating is at least that. With `exclude_seen` (the default), pairs the user
    already has in train are left out: recommenders filter seen videos, so such a pair could
    never be hit and would only lower recall for every model alike.
    """
    _require_columns(test, ("user_id", "video_id"))
    positive = _positive(test, min_rating)
    users = interactions.user_rows(positive["user_id"])
    videos = interactions.video_rows(positive["video_id"])
    known = (users >= 0) & (videos >= 0)
    users, videos = users[known], videos[known]
    if exclude_seen and len(users):
        seen = np.asarray(interactions.matrix[users, videos]).ravel() != 0
        users, videos = users[~seen], videos[~seen]
    truth: list[set[int]] = [set() for _ in range(interactions.n_users)]
    for user, video in zip(users.tolist(), videos.tolist(), strict=True):
        truth[user].add(video)
    return truth


def rating_triples(test: pd.DataFrame, interactions: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_rows, video_rows, ratings) of the test ratings on known users and videos, for RMSE.

    A pair rated more than once in the window keeps its latest rating, like `Interactions`.
    """
    _require_columns(test, ("user_id", "video_id", "rating"))
    rated = test[test["rating"].notna() & test["video_id"].notna()]
    if "event_type" in rated.columns:
        rated = rated[rated["event_type"] == "rating"]
    if "event_ts" in rated.columns:
        rated = rated.sort_values("event_ts", kind="mergesort")
    rated = rated.drop_duplicates(["user_id", "video_id"], keep="last")
    users = interactions.user_rows(rated["user_id"])
    videos = interactions.video_rows(rated["video_id"])
    known = (users >= 0) & (videos >= 0)
    return users[known].astype(np.int64), videos[known].astype(np.int64), rated["rating"].to_numpy(np.float64)[known]
