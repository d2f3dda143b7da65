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
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb

from models.content import weighted_mean_profiles
from models.base import BATCH_USERS
from models.hybrid import HybridUnion
from models.interactions import Interactions
from models.popularity import decayed_counts

DEVICES = ("mobile", "desktop", "tv", "tablet", "unknown")
# Horizons of the recent-activity features. One trending list has one horizon; which one
# predicts best moves with the data (on ml-latest-small a 365-day half-life beats 7 days in one
# window and loses in the next), so the ranker gets several and learns the mix.
TREND_HALF_LIVES_DAYS = (7, 30, 90, 365)
TREND_FEATURES = tuple(f"trend_{days}d" for days in TREND_HALF_LIVES_DAYS)
# Rows of one query share this key (default: user_id). Several label windows use "<window>|<user>".
QUERY_COLUMN = "query_id"
# (entity rows: user_id, video_id, event_timestamp) -> the same rows with numeric feature columns.
FeatureLookup = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class RankerConfig:
    objective: str = "rank:ndcg"
    # Shallow trees with a floor on leaf weight: chosen on ml-latest-small's inner split, where
    # deeper trees early-stopped after a handful of rounds and ranked worse (see the note).
    n_estimators: int = 400
    learning_rate: float = 0.1
    max_depth: int = 4
    min_child_weight: float = 10.0
    subsample: float = 0.9
    colsample_bytree: float = 0.9
    # The number of trees is chosen by `cv_folds`-fold cross-validation over queries: each fold
    # early-stops on its held-out fifth, the mean curve's best round is refit on every query.
    # (One random validation split of a few dozen users moved nDCG@10 by +-0.04 between seeds.)
    # None: no validation, all n_estimators trees.
    early_stopping_rounds: int | None = 40
    cv_folds: int = 5
    label_scheme: str = "graded"  # graded | watch_time
    seed: int = 42
    extra: dict = field(default_factory=dict)

    def params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra


@dataclass
class CatalogSide:
    """What cross features need about the catalog, aligned with `Interactions.video_ids`."""

    content: np.ndarray | sp.csr_matrix  # one row per video (L2-normalised)
    genres: sp.csr_matrix  # videos x genres, 0/1

    @classmethod
    def build(cls, videos: pd.DataFrame, data: Interactions, content) -> CatalogSide:
        position = pd.Index(videos["video_id"]).get_indexer(data.video_ids)
        genre_lists = [list(videos["genres"].iloc[p]) if p >= 0 and videos["genres"].iloc[p] is not None else [] for p in position]
        vocabulary = sorted({g for gs in genre_lists for g in gs})
        index = {g: i for i, g in enumerate(vocabulary)}
        rows = np.repeat(np.arange(len(genre_lists)), [len(gs) for gs in genre_lists])
        cols = [index[g] for gs in genre_lists for g in gs]
        genres = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(genre_lists), len(vocabulary)))
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
    for name, model in union.generators.items():
        z = np.empty(len(frame), dtype=np.float32)
        for start in range(0, len(user_rows), BATCH_USERS):
            dense = np.asarray(model.score(user_rows[start : start + BATCH_USERS]), dtype=np.float64)
            dense[~np.isfinite(dense)] = np.nan
            mean = np.nanmean(dense, axis=1, keepdims=True)
            std = np.nanstd(dense, axis=1, keepdims=True)
            standard = (dense - mean) / np.where(std > 0, std, 1.0)
            in_batch = (local >= start) & (local < start + BATCH_USERS)
            z[in_batch] = standard[local[in_batch] - start, videos[in_batch]]
        frame[f"z_{name}"] = z
    return frame


def cross_features(frame: pd.DataFrame, data: Interactions, catalog: CatalogSide) -> pd.DataFrame:
    """Content similarity, genre match and relative popularity for each (user_row, video_row)."""
    users = frame["user_row"].to_numpy()
    videos = frame["video_row"].to_numpy()
    out = pd.DataFrame(index=frame.index)

    history = data.matrix.copy()
    history.data = np.ones_like(history.data)
    profiles = weighted_mean_profiles(history, catalog.content)
    out["content_sim"] = _rowwise_dot(profiles, catalog.content, users, videos)

    genre_profile = history @ catalog.genres
    totals = np.asarray(genre_profile.sum(axis=1)).ravel()
    genre_profile = sp.diags(1.0 / np.where(totals > 0, totals, 1.0)) @ genre_profile
    out["genre_match"] = _rowwise_dot(sp.csr_matrix(genre_profile), catalog.genres, users, videos)

    popularity = np.log1p(np.asarray((data.matrix > 0).sum(axis=0)).ravel())
    seen_pop = history @ popularity
    counts = np.asarray(history.sum(axis=1)).ravel()
    usual = np.where(counts > 0, seen_pop / np.maximum(counts, 1), 0.0)
    out["log_popularity"] = popularity[videos]
    out["popularity_vs_usual"] = popularity[videos] - usual[users]
    out["user_history_len"] = counts[users]
    trend = trend_features(data)
    for j, name in enumerate(TREND_FEATURES):
        out[name] = trend[videos, j]
    return out


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
    ev = label_events[label_events["video_id"].notna()].copy()
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
    ev["grade"] = grade
    best = ev.groupby(["user_id", "video_id"])["grade"].max()
    keys = pd.MultiIndex.from_arrays([frame["user_id"], frame["video_id"]])
    return best.reindex(keys).fillna(0.0).to_numpy()


@dataclass
class RankerModel:
    """A fitted XGBoost ranker and the exact feature columns it expects, in order."""

    booster: xgb.XGBRanker
    features: list[str]
    config: RankerConfig
    best_iteration: int
    validation_ndcg: float

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features if c not in frame]
        if missing:
            raise KeyError(f"ranker input lacks feature columns {missing}")
        return self.booster.predict(frame[self.features].astype(np.float32))

    def importance(self) -> pd.Series:
        gain = self.booster.get_booster().get_score(importance_type="gain")
        return pd.Series({f: gain.get(f, 0.0) for f in self.features}).sort_values(ascending=False)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every numeric (or boolean) column except ids, row indices, labels and timestamps."""
    skip = {"user_id", "video_id", "user_row", "video_row", "label", "event_timestamp", "request_ts", QUERY_COLUMN}
    return [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]


def train_ranker(frame: pd.DataFrame, labels: np.ndarray, config: RankerConfig = RankerConfig()) -> RankerModel:
    """Fit XGBRanker grouped by query (`query_id`, else `user_id`).

    With early stopping, the number of trees comes from cross-validation over queries (seeded
    folds; each fold stops on its own held-out queries; the best round of the mean curve over
    the rounds every fold reached), and the final model is refit on every query with that many
    trees. Without, it is `n_estimators` trees on every query.
    """
    if len(frame) != len(labels):
        raise ValueError(f"{len(frame)} rows but {len(labels)} labels")
    features = feature_columns(frame)
    key = QUERY_COLUMN if QUERY_COLUMN in frame.columns else "user_id"
    queries = frame[key].astype(str).to_numpy()
    order = np.argsort(queries, kind="stable")  # XGBoost wants each query's rows contiguous
    queries = queries[order]
    x = frame[features].astype(np.float32).iloc[order].reset_index(drop=True)
    y = np.asarray(labels)[order]
    unique, qid = np.unique(queries, return_inverse=True)

    folds = min(config.cv_folds, len(unique))
    n_trees, cv_ndcg = config.n_estimators, float("nan")
    if config.early_stopping_rounds is not None and folds >= 2:
        rng = np.random.default_rng(config.seed)
        fold_of_query = np.empty(len(unique), dtype=np.int64)
        fold_of_query[rng.permutation(len(unique))] = np.arange(len(unique)) % folds
        fold = fold_of_query[qid]
        curves = []
        for k in range(folds):
            held = fold == k
            model = _ranker(config, config.n_estimators, early_stopping=True)
            model.fit(
                x[~held], y[~held], qid=qid[~held],
                eval_set=[(x[held], y[held])], eval_qid=[qid[held]], verbose=False,
            )
            curves.append(model.evals_result()["validation_0"]["ndcg@10"])
        reached = min(len(c) for c in curves)
        mean = np.mean([c[:reached] for c in curves], axis=0)
        n_trees, cv_ndcg = int(np.argmax(mean)) + 1, float(np.max(mean))
    model = _ranker(config, n_trees, early_stopping=False)
    model.fit(x, y, qid=qid)
    return RankerModel(model, features, config, n_trees - 1, cv_ndcg)


def _ranker(config: RankerConfig, n_trees: int, early_stopping: bool) -> xgb.XGBRanker:
    return xgb.XGBRanker(
        objective=config.objective,
        n_estimators=n_trees,
        learning_rate=config.learning_rate,
        max_depth=config.max_depth,
        min_child_weight=config.min_child_weight,
        subsample=config.subsample,
        colsample_bytree=config.colsample_bytree,
        random_state=config.seed,
        tree_method="hist",
        n_jobs=1,  # determinism: one thread gives bit-identical trees
        eval_metric="ndcg@10",
        early_stopping_rounds=config.early_stopping_rounds if early_stopping else None,
        lambdarank_pair_method="topk",
        lambdarank_num_pair_per_sample=10,
        **config.extra,
    )


def _rowwise_dot(left, right, left_rows: np.ndarray, right_rows: np.ndarray, batch: int = 50_000) -> np.ndarray:
    """sum(left[i] * right[j]) for each pair (i, j), in batches so memory stays small."""
    out = np.empty(len(left_rows), dtype=np.float64)
    for start in range(0, len(left_rows), batch):
        a = left[left_rows[start : start + batch]]
        b = right[right_rows[start : start + batch]]
        product = a.multiply(b) if sp.issparse(a) else (np.asarray(a) * (b.toarray() if sp.issparse(b) else np.asarray(b)))
        out[start : start + batch] = np.asarray(product.sum(axis=1)).ravel()
    return out
