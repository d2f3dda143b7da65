"""The second stage: an XGBoost learning-to-rank model over the hybrid union's candidates.

One row per (user, candidate video, request time) carries:
- each generator's score and rank for the pair, and how many generators proposed it;
- Feast features of the user and the video as of the request time (point-in-time correct);
- cross features: content similarity of the video to the user's history, genre match,
  the video's popularity against what the user usually watches, and its share of recent
  activity over several horizons (a week to a year);
- context: hour of day, day of week, device, and how long the user has been away (a user back
  after a year has a stale history: what is popular now matters more than what they liked).
Labels are graded by engagement (see `grade_labels`). Training groups rows by query (a user in
one label window), picks the number of trees by cross-validation over users, refits on all of
them, and is deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb

from feature_repo.schema import DEVICES
from models.base import BATCH_USERS
from models.content import weighted_mean_profiles
from models.hybrid import HybridUnion
from models.interactions import Interactions
from models.lifecycle.config import RankerConfig
from models.popularity import decayed_counts
from vidrec import stop_request

# Horizons of the recent-activity features. One trending list has one horizon; which one
# predicts best moves with the data (on ml-latest-small a 365-day half-life beats 7 days in one
# window and loses in the next), so the ranker gets several and learns the mix.
TREND_HALF_LIVES_DAYS = (7, 30, 90, 365)
TREND_FEATURES = tuple(f"trend_{days}d" for days in TREND_HALF_LIVES_DAYS)
# Dense (users x catalog) float64 scores held at once for the z features: 2**24 -> 128 MiB.
Z_BLOCK_ELEMENTS = 2**24
# Rows of one query share this key (default: user_id). Several label windows use "<window>|<user>".
QUERY_COLUMN = "query_id"
# (entity rows: user_id, video_id, event_timestamp) -> the same rows with numeric feature columns.
FeatureLookup = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass
class CatalogSide:
    """What cross features need about the catalog, aligned with `Interactions.video_ids`."""

    content: np.ndarray | sp.csr_matrix  # one row per video (L2-normalised)
    genres: sp.csr_matrix  # videos x genres, 0/1

    @classmethod
    def build(cls, videos: pd.DataFrame, data: Interactions, content) -> CatalogSide:
        position = pd.Index(videos["video_id"]).get_indexer(data.video_ids)
        genre_lists = [
            list(videos["genres"].iloc[p]) if p >= 0 and videos["genres"].iloc[p] is not None else [] for p in position
        ]
        vocabulary = sorted({g for gs in genre_lists for g in gs})
        index = {g: i for i, g in enumerate(vocabulary)}
        rows = np.repeat(np.arange(len(genre_lists)), [len(gs) for gs in genre_lists])
        cols = [index[g] for gs in genre_lists for g in gs]
        genres = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (rows, cols)), shape=(len(genre_lists), len(vocabulary))
        )
        return cls(content=content, genres=genres)


def candidate_frame(union: HybridUnion, user_rows: np.ndarray, exclude_seen: bool = True) -> pd.DataFrame:
    """The union's candidates with ids added, and every generator's opinion of every candidate.

    A source that did not propose a video still has a score for it: `z_<name>` is that score as a
    per-user z-score over the catalog, which stays comparable when generators are refit on more
    data (raw scores grow with the data; the ranker is trained on one fit and applied to the next).
    Missing ranks become a rank past the list's end.
    """
    user_rows = np.asarray(user_rows)
    frame = union.candidates(user_rows, filter_seen=exclude_seen)
    data = union.data
    frame.insert(0, "user_id", data.user_ids[frame["user_row"].to_numpy()])
    frame.insert(1, "video_id", data.video_ids[frame["video_row"].to_numpy()])
    for column in [c for c in frame.columns if c.startswith("rank_")]:
        frame[column] = frame[column].fillna(union.per_source_k + 1)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("score_")])
    if frame.empty:
        return frame
    local = pd.Series(np.arange(len(user_rows)), index=user_rows).reindex(frame["user_row"].to_numpy()).to_numpy()
    videos = frame["video_row"].to_numpy()
    batch = max(1, min(BATCH_USERS, Z_BLOCK_ELEMENTS // max(data.n_videos, 1)))
    for name, model in union.generators.items():
        z = np.empty(len(frame), dtype=np.float32)
        for start in range(0, len(user_rows), batch):
            dense = np.asarray(model.score(user_rows[start : start + batch]), dtype=np.float64)
            dense[~np.isfinite(dense)] = np.nan
            mean = np.nanmean(dense, axis=1, keepdims=True)
            std = np.nanstd(dense, axis=1, keepdims=True)
            in_batch = (local >= start) & (local < start + batch)
            picked = dense[local[in_batch] - start, videos[in_batch]]
            row_of = local[in_batch] - start
            z[in_batch] = (picked - mean[row_of, 0]) / np.where(std[row_of, 0] > 0, std[row_of, 0], 1.0)
        frame[f"z_{name}"] = z
    return frame


@dataclass(frozen=True)
class HistoryStats:
    """What cross features read from the whole interaction matrix, computed once per fit."""

    popularity: np.ndarray  # per video: log1p(users who engaged)
    usual: np.ndarray  # per user: the mean popularity of what they engaged with
    counts: np.ndarray  # per user: history length
    trend: np.ndarray  # videos x TREND_FEATURES
    last_active: np.ndarray  # per user: epoch seconds of the latest interaction (NaN if none)

    @classmethod
    def of(cls, data: Interactions) -> HistoryStats:
        history = _binary(data.matrix)
        popularity = np.log1p(np.asarray((data.matrix > 0).sum(axis=0)).ravel())
        counts = np.asarray(history.sum(axis=1)).ravel()
        usual = np.where(counts > 0, (history @ popularity) / np.maximum(counts, 1), 0.0)
        return cls(popularity, usual, counts, trend_features(data), last_active(data))


def cross_features(
    frame: pd.DataFrame, data: Interactions, catalog: CatalogSide, stats: HistoryStats | None = None
) -> pd.DataFrame:
    """Content similarity, genre match and relative popularity for each (user_row, video_row).

    Profiles are built for the frame's users only, so a chunk of users costs what it holds.
    """
    stats = stats or HistoryStats.of(data)
    users, local = np.unique(frame["user_row"].to_numpy(), return_inverse=True)
    videos = frame["video_row"].to_numpy()
    out = pd.DataFrame(index=frame.index)

    history = _binary(data.matrix[users])
    profiles = weighted_mean_profiles(history, catalog.content)
    out["content_sim"] = _rowwise_dot(profiles, catalog.content, local, videos)

    genre_profile = history @ catalog.genres
    totals = np.asarray(genre_profile.sum(axis=1)).ravel()
    genre_profile = sp.diags(1.0 / np.where(totals > 0, totals, 1.0)) @ genre_profile
    out["genre_match"] = _rowwise_dot(sp.csr_matrix(genre_profile), catalog.genres, local, videos)

    rows = frame["user_row"].to_numpy()
    out["log_popularity"] = stats.popularity[videos]
    out["popularity_vs_usual"] = stats.popularity[videos] - stats.usual[rows]
    out["user_history_len"] = stats.counts[rows]
    for j, name in enumerate(TREND_FEATURES):
        out[name] = stats.trend[videos, j]
    return out


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    history = sp.csr_matrix(matrix, copy=True)
    history.data = np.ones_like(history.data)
    return history


def trend_features(data: Interactions) -> np.ndarray:
    """(videos x horizons) log share of the time-decayed activity, one column per TREND_HALF_LIVES_DAYS.

    A share (not a count) stays comparable when the ranker trained on one fit is applied to a
    later, larger one; the floor keeps videos nobody touched finite.
    """
    columns = []
    for days in TREND_HALF_LIVES_DAYS:
        counts = decayed_counts(data, days)
        total = counts.sum()
        columns.append(np.log(counts / total + 1e-9) if total > 0 else np.full(data.n_videos, np.log(1e-9)))
    return np.column_stack(columns) if columns else np.zeros((data.n_videos, 0))


def context_features(request_ts: pd.Series, device: pd.Series) -> pd.DataFrame:
    """Hour of day and day of week (cyclic and raw) and the device, one-hot."""
    ts = pd.to_datetime(request_ts, utc=True)
    hour = ts.dt.hour.to_numpy()
    out = pd.DataFrame(
        {
            "ctx_hour": hour,
            "ctx_hour_sin": np.sin(2 * np.pi * hour / 24),
            "ctx_hour_cos": np.cos(2 * np.pi * hour / 24),
            "ctx_dow": ts.dt.dayofweek.to_numpy(),
        },
        index=request_ts.index,
    )
    dev = device.fillna("unknown").astype(str).to_numpy()
    for name in DEVICES:
        out[f"ctx_device_{name}"] = (dev == name).astype(np.float32)
    return out


def last_active(data: Interactions) -> np.ndarray:
    """Per user row, the epoch seconds of the user's latest interaction in `data` (NaN if none)."""
    if data.timestamps is None:
        return np.full(data.n_users, np.nan)
    ts = data.timestamps.tocsr()
    latest = ts.max(axis=1).toarray().astype(np.float64).ravel()
    latest[np.diff(ts.indptr) == 0] = np.nan  # an empty row's max is 0, not 1970
    return latest


def days_away(last_seconds: np.ndarray, request_seconds: np.ndarray) -> np.ndarray:
    """log1p of the days between a user's latest interaction and the request (0 if not after it)."""
    return np.log1p(np.maximum(np.asarray(request_seconds, np.float64) - last_seconds, 0.0) / 86_400.0)


def grade_labels(frame: pd.DataFrame, label_events: pd.DataFrame, scheme: str = "graded") -> np.ndarray:
    """Relevance of each (user_id, video_id) row from what the user did in the label window.

    graded: 0 shown or proposed but ignored (or disliked), 1 watched/clicked/played,
    2 completed (>= 80%) or liked or rated >= 4, 3 rated >= 4.5 or shared. For MovieLens
    every rating is a watch (so at least 1), and the rating lifts the grade.
    watch_time: the fraction of the video watched (0..1, ratings map to rating / 5), as in
    YouTube's watch-time-weighted ranking.
    """
    return labels_for(frame, pair_grades(label_events, scheme))


def pair_grades(label_events: pd.DataFrame, scheme: str = "graded") -> pd.Series:
    """The best grade (see `grade_labels`) per (user_id, video_id) of a label window."""
    ev = label_events[label_events["video_id"].notna()]
    types = ev["event_type"].to_numpy()
    rating = ev["rating"].to_numpy(np.float64) if "rating" in ev else np.full(len(ev), np.nan)
    completion = ev["completion"].to_numpy(np.float64) if "completion" in ev else np.full(len(ev), np.nan)
    if scheme == "graded":
        grade = np.zeros(len(ev))
        grade = np.where(np.isin(types, ["watch", "click", "play", "comment", "rating", "tag"]), 1, grade)
        grade = np.where((types == "like") | (completion >= 0.8) | (rating >= 4.0), 2, grade)
        grade = np.where((types == "share") | (rating >= 4.5), 3, grade)
        grade = np.where(types == "dislike", 0, grade)
    elif scheme == "watch_time":
        grade = np.where(types == "rating", rating / 5.0, np.nan_to_num(completion, nan=0.0))
        grade = np.where(types == "dislike", 0.0, grade)
    else:
        raise ValueError(f"unknown label scheme {scheme!r}: expected graded or watch_time")
    keys = pd.MultiIndex.from_arrays([ev["user_id"].astype(str).to_numpy(), ev["video_id"].astype(str).to_numpy()])
    return pd.Series(grade, index=keys).groupby(level=[0, 1]).max()


def labels_for(frame: pd.DataFrame, grades: pd.Series) -> np.ndarray:
    keys = pd.MultiIndex.from_arrays(
        [frame["user_id"].astype(str).to_numpy(), frame["video_id"].astype(str).to_numpy()]
    )
    return grades.reindex(keys).fillna(0.0).to_numpy()


@dataclass(frozen=True)
class ScoreBlend:
    """The trees' score plus `weight` times one generator's z-score (`feature`, a ranker input
    such as `z_ease`), each standardised over the user's candidates first.

    Why: the ranker learns from generators fitted on part of the train data (label folds or
    windows) and ranks candidates of generators refitted on all of it, which rank better than
    the ones it learned to correct. `vidrec tune --generator ranker` chooses feature and weight on
    a validation split inside the train part: on ml-latest-small (stratified) the trees alone
    scored 0.2198 nDCG@10 there, the trees + 0.25 x EASE's z 0.2218.
    """

    feature: str | None = None
    weight: float = 0.0

    def apply(self, margin: np.ndarray, partner: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        """margin and partner (the feature's column) per candidate; groups: a query code per row
        (None: all one query). The margin unchanged when the blend is off."""
        if not self.weight or partner is None:
            return margin
        blended = standardize_within(margin, groups) + self.weight * standardize_within(partner, groups)
        return blended.astype(np.float32)


def standardize_within(values: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """(value - group mean) / group std per row; std 0 counts as 1, NaN rows become 0 (the mean)."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.zeros(len(values), dtype=np.int64) if groups is None else np.asarray(groups)
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    counts = np.maximum(np.bincount(groups, weights=finite.astype(np.float64)), 1.0)
    mean = np.bincount(groups, weights=clean) / counts
    std = np.sqrt(np.maximum(np.bincount(groups, weights=clean**2) / counts - mean**2, 0.0))
    std[std == 0] = 1.0
    return np.where(finite, (clean - mean[groups]) / std[groups], 0.0)


@dataclass
class RankerModel:
    """A fitted XGBoost ranker and the exact feature columns it expects, in order."""

    booster: xgb.XGBRanker
    features: list[str]
    config: RankerConfig
    best_iteration: int
    validation_ndcg: float
    blend: ScoreBlend = ScoreBlend()  # rankers pickled before blends existed load without one

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """One score per row. With a blend, rows are one query per `query_id`, else `user_row`,
        else `user_id` (all one query when the frame has none of these columns)."""
        missing = [c for c in self.features if c not in frame]
        if missing:
            raise KeyError(f"ranker input lacks feature columns {missing}")
        margin = self.booster.predict(frame[self.features].astype(np.float32))
        if not self.blend.weight:
            return margin
        key = next((c for c in (QUERY_COLUMN, "user_row", "user_id") if c in frame.columns), None)
        groups = None if key is None else pd.factorize(frame[key])[0]
        return self.blend.apply(margin, frame[self.blend.feature].to_numpy(), groups)

    def importance(self) -> pd.Series:
        gain = self.booster.get_booster().get_score(importance_type="gain")
        return pd.Series({f: gain.get(f, 0.0) for f in self.features}).sort_values(ascending=False)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every numeric (or boolean) column except ids, row indices, labels and timestamps."""
    skip = {"user_id", "video_id", "user_row", "video_row", "label", "event_timestamp", "request_ts", QUERY_COLUMN}
    return [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]


@dataclass
class TrainingRows:
    """Ranker training rows as float32 blocks, each holding whole queries, in query order.

    `add` takes one labelled ranking frame (a chunk of users) and keeps only what XGBoost needs:
    the feature matrix, labels and query numbers. `sample` keeps the first `sample_rows` rows as
    a frame, for the model's input example and for inspection.
    """

    features: list[str] | None = None
    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    qid: list[np.ndarray] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)  # query key (window start | user) per query number
    sample: pd.DataFrame | None = None
    sample_rows: int = 20_000

    def add(self, frame: pd.DataFrame, labels: np.ndarray) -> None:
        if len(frame) == 0:
            return
        if self.features is None:
            self.features = feature_columns(frame)
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"a chunk of ranking rows lacks feature columns {missing}")
        key = QUERY_COLUMN if QUERY_COLUMN in frame.columns else "user_id"
        keys = frame[key].astype(str).to_numpy()
        order = np.argsort(keys, kind="stable")  # XGBoost wants each query's rows contiguous
        unique, local = np.unique(keys[order], return_inverse=True)
        self.x.append(np.ascontiguousarray(frame[self.features].to_numpy(np.float32)[order]))
        self.y.append(np.asarray(labels, dtype=np.float32)[order])
        self.qid.append((local + len(self.queries)).astype(np.int64))
        self.queries.extend(unique.tolist())
        if self.sample is None or len(self.sample) < self.sample_rows:
            head = frame.iloc[order[: self.sample_rows]].assign(label=np.asarray(labels)[order[: self.sample_rows]])
            self.sample = (
                head
                if self.sample is None
                else pd.concat([self.sample, head], ignore_index=True).head(self.sample_rows)
            )

    @property
    def n_rows(self) -> int:
        return sum(len(y) for y in self.y)

    @property
    def n_queries(self) -> int:
        return len(self.queries)

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate(self.y) if self.y else np.zeros(0, np.float32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for blocks in (self.x, self.y, self.qid) for a in blocks)


class _Blocks(xgb.DataIter):
    """Hands TrainingRows to XGBoost block by block, optionally only the queries in `keep`."""

    def __init__(self, rows: TrainingRows, keep: np.ndarray | None = None):
        self.rows, self.keep, self.position = rows, keep, 0
        super().__init__(release_data=True)

    def next(self, input_data: Callable) -> bool:
        stop_request.raise_if_requested()  # XGBoost raises it again once the C call returns
        while self.position < len(self.rows.x):
            i = self.position
            self.position += 1
            x, y, qid = self.rows.x[i], self.rows.y[i], self.rows.qid[i]
            if self.keep is not None:
                mask = self.keep[qid]
                if not mask.any():
                    continue
                x, y, qid = x[mask], y[mask], qid[mask]
            input_data(data=x, label=y, qid=qid, feature_names=self.rows.features)
            return True
        return False

    def reset(self) -> None:
        self.position = 0


def _quantile_matrix(rows: TrainingRows, keep: np.ndarray | None = None, ref=None) -> xgb.QuantileDMatrix:
    return xgb.QuantileDMatrix(_Blocks(rows, keep), ref=ref, max_bin=MAX_BIN)


class _StopBetweenRounds(xgb.callback.TrainingCallback):
    """Raises a stop asked for while XGBoost trains, after the round (called from Python)."""

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        stop_request.raise_if_requested()
        return False


def train_ranker(frame: pd.DataFrame, labels: np.ndarray, config: RankerConfig = RankerConfig()) -> RankerModel:
    """Fit the ranker on one frame grouped by query (`query_id`, else `user_id`); see `train_ranker_rows`."""
    if len(frame) != len(labels):
        raise ValueError(f"{len(frame)} rows but {len(labels)} labels")
    rows = TrainingRows()
    rows.add(frame, labels)
    return train_ranker_rows(rows, config)


def train_ranker_rows(rows: TrainingRows, config: RankerConfig = RankerConfig()) -> RankerModel:
    """Fit an XGBoost ranker on chunked rows (QuantileDMatrix from a DataIter, float32).

    With early stopping, the number of trees comes from cross-validation over queries (seeded
    folds; each fold stops on its own held-out queries; the best round of the mean curve over
    the rounds every fold reached), and the final model is refit on every query with that many
    trees. Without, it is `n_estimators` trees on every query.
    """
    if rows.n_rows == 0 or rows.features is None:
        raise ValueError("no ranking rows to train the ranker on")
    blend = ScoreBlend(config.blend_feature, config.blend_weight) if config.blend_weight else ScoreBlend()
    if blend.weight and blend.feature not in rows.features:
        raise ValueError(
            f"the ranker's blend_feature {blend.feature!r} is not one of its features: "
            f"expected one of {[f for f in rows.features if f.startswith('z_')]}"
        )
    n_queries = rows.n_queries
    params = _booster_params(config)
    folds = min(config.cv_folds, n_queries)
    n_trees, cv_ndcg = config.n_estimators, float("nan")
    # XGBoost calls Python from C here (the data iterator, its log): a SIGTERM waits for the next
    # callback or round (`vidrec.stop_request`).
    stops = [_StopBetweenRounds()]
    with stop_request.callbacks_from_c():
        if config.early_stopping_rounds is not None and folds >= 2:
            rng = np.random.default_rng(config.seed)
            in_cv = min(n_queries, config.cv_max_queries or n_queries)
            fold_of_query = np.full(n_queries, -1, dtype=np.int64)  # -1: not in the cross-validation
            fold_of_query[rng.permutation(n_queries)[:in_cv]] = np.arange(in_cv) % folds
            curves = []
            for k in range(folds):
                train = _quantile_matrix(rows, (fold_of_query != k) & (fold_of_query >= 0))
                held = _quantile_matrix(rows, fold_of_query == k, ref=train)
                result: dict = {}
                xgb.train(
                    params, train, num_boost_round=config.n_estimators, evals=[(held, "validation_0")],
                    early_stopping_rounds=config.early_stopping_rounds, evals_result=result, verbose_eval=False,
                    callbacks=stops,
                )  # fmt: skip
                curves.append(result["validation_0"]["ndcg@10"])
                del train, held
            reached = min(len(c) for c in curves)
            mean = np.mean([c[:reached] for c in curves], axis=0)
            n_trees, cv_ndcg = int(np.argmax(mean)) + 1, float(np.max(mean))
        booster = xgb.train(params, _quantile_matrix(rows), num_boost_round=n_trees, callbacks=stops)
    # The sklearn wrapper is what the registry pickles and serving unwraps (get_booster()).
    model = xgb.XGBRanker()
    model.load_model(bytearray(booster.save_raw(raw_format="ubj")))
    return RankerModel(model, list(rows.features), config, n_trees - 1, cv_ndcg, blend)


# XGBoost's default histogram resolution, named because train and validation must share it.
MAX_BIN = 256


def _booster_params(config: RankerConfig) -> dict:
    return {
        "objective": config.objective,
        "learning_rate": config.learning_rate,
        "max_depth": config.max_depth,
        "min_child_weight": config.min_child_weight,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "seed": config.seed,
        "tree_method": "hist",
        "nthread": config.n_jobs,
        "eval_metric": "ndcg@10",
        "lambdarank_pair_method": "topk",
        "lambdarank_num_pair_per_sample": 10,
        **config.extra,
    }


def _rowwise_dot(left, right, left_rows: np.ndarray, right_rows: np.ndarray, batch: int = 50_000) -> np.ndarray:
    """sum(left[i] * right[j]) for each pair (i, j), in batches so memory stays small."""
    out = np.empty(len(left_rows), dtype=np.float64)
    for start in range(0, len(left_rows), batch):
        a = left[left_rows[start : start + batch]]
        b = right[right_rows[start : start + batch]]
        product = (
            a.multiply(b) if sp.issparse(a) else (np.asarray(a) * (b.toarray() if sp.issparse(b) else np.asarray(b)))
        )
        out[start : start + batch] = np.asarray(product.sum(axis=1)).ravel()
    return out
