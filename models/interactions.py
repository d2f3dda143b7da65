"""The user x video interaction matrix, and the one place where ids become contiguous indices.

Every generator fits on an `Interactions`: a CSR matrix (users x catalog videos) of confidence
weights, plus the id <-> index maps. The video axis covers the whole catalog (not only watched
videos), so content-based models can recommend videos nobody has watched yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

# Events that say a user engaged with a video, and how strongly (for implicit confidence).
ENGAGEMENT_WEIGHTS = {
    "watch": 1.0, "play": 0.5, "click": 0.3, "like": 2.0, "share": 2.0, "comment": 1.0,
    "rating": 1.0, "tag": 1.0, "dislike": -2.0,
}  # fmt: skip
# The events models learn from and are judged on: wanting one video. Tags describe a video,
# dislikes and impressions are not wanting it, searches name no video.
LEARNING_TYPES = ("rating", "watch", "like", "share", "comment", "play", "click")
WEIGHTINGS = ("binary", "rating", "engagement")


@dataclass
class Interactions:
    matrix: sp.csr_matrix  # users x videos, float32 weights (> 0 means interacted)
    user_ids: np.ndarray  # index -> user id
    video_ids: np.ndarray  # index -> video id
    ratings: sp.csr_matrix | None = None  # explicit ratings where known (for SVD / RMSE)
    timestamps: sp.csr_matrix | None = None  # last interaction time, epoch seconds (for sequences)

    def __post_init__(self) -> None:
        self.user_index = pd.Index(self.user_ids)
        self.video_index = pd.Index(self.video_ids)

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_videos(self) -> int:
        return self.matrix.shape[1]

    def user_rows(self, user_ids) -> np.ndarray:
        """Indices of known users; -1 for users the matrix has never seen."""
        return self.user_index.get_indexer(pd.Index(user_ids))

    def video_rows(self, video_ids) -> np.ndarray:
        return self.video_index.get_indexer(pd.Index(video_ids))

    @classmethod
    def from_events(
        cls,
        events: pd.DataFrame,
        catalog: pd.Series | np.ndarray | None = None,
        weighting: str = "engagement",
        users: pd.Series | np.ndarray | None = None,
    ) -> Interactions:
        """Aggregate canonical events into per (user, video) weights.

        weighting: `binary` (1 per interacted pair), `rating` (the rating where given, else 1),
        `engagement` (sum of event weights, with completion scaling watch events, ratings centred
        at 3 so a 5 counts more than a 1; pairs whose total is not positive are dropped).
        """
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}: expected one of {WEIGHTINGS}")
        ev = events[events["video_id"].notna() & events["event_type"].isin(ENGAGEMENT_WEIGHTS)]
        video_ids = pd.Index(
            pd.unique(np.concatenate([np.asarray(catalog if catalog is not None else []), ev["video_id"].unique()]))
        )
        user_ids = pd.Index(
            pd.unique(np.concatenate([np.asarray(users if users is not None else []), ev["user_id"].unique()]))
        )

        weight = _event_weights(ev, weighting)
        pairs = pd.DataFrame(
            {
                "u": user_ids.get_indexer(ev["user_id"]),
                "v": video_ids.get_indexer(ev["video_id"]),
                "w": weight,
                "r": ev["rating"] if "rating" in ev else np.nan,
                "t": epoch_seconds(ev["event_ts"]) if len(ev) else pd.Series(dtype="int64"),
            }
        )
        agg = pairs.groupby(["u", "v"], sort=True).agg(w=("w", "sum"), r=("r", "last"), t=("t", "max")).reset_index()
        if weighting == "binary":
            agg["w"] = 1.0
        agg = agg[agg["w"] > 0]
        shape = (len(user_ids), len(video_ids))

        def csr(values) -> sp.csr_matrix:
            return sp.csr_matrix((np.asarray(values, dtype=np.float32), (agg["u"], agg["v"])), shape=shape)

        rated = agg[agg["r"].notna()]
        ratings = sp.csr_matrix((rated["r"].to_numpy(np.float32), (rated["u"], rated["v"])), shape=shape)
        return cls(
            matrix=csr(agg["w"]),
            user_ids=user_ids.to_numpy(),
            video_ids=video_ids.to_numpy(),
            ratings=ratings,
            timestamps=sp.csr_matrix((agg["t"].to_numpy(np.float64), (agg["u"], agg["v"])), shape=shape),
        )


def _event_weights(ev: pd.DataFrame, weighting: str) -> np.ndarray:
    base = ev["event_type"].map(ENGAGEMENT_WEIGHTS).to_numpy(np.float64)
    rating = ev["rating"].to_numpy(np.float64) if "rating" in ev else np.full(len(ev), np.nan)
    is_rating = ev["event_type"].to_numpy() == "rating"
    if weighting == "rating":
        return np.where(is_rating & ~np.isnan(rating), rating, 1.0)
    if weighting == "engagement":
        # A rating of 3 is a plain watch; each star above or below moves the weight by a half.
        w = np.where(is_rating & ~np.isnan(rating), 1.0 + (rating - 3.0) * 0.5, base)
        watch = ev.get("watch_time_s")
        if watch is not None and "duration_s" in ev:
            completion = (ev["watch_time_s"] / ev["duration_s"]).clip(0, 1).to_numpy(np.float64)
            w = np.where((ev["event_type"].to_numpy() == "watch") & ~np.isnan(completion), 0.2 + completion, w)
        return w
    return np.ones(len(ev))


def epoch_seconds(times: pd.Series) -> pd.Series:
    """Whole seconds since 1970 of a datetime column, whatever its resolution.

    Not `astype("int64") // 10**9`: that assumes nanoseconds, and the lake's parquet timestamps
    come back as microseconds (1000x too small: a week of history would look like ten minutes).
    """
    return (pd.to_datetime(times, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
