"""`vidrec benchmark`: train every candidate generator on one split and compare them.

Writes, under the output folder:
    split/train.parquet, split/test.parquet   (user_id, video_id, rating, timestamp)
    recs/<model>.parquet                       (user_id, video_id, rank, score), the top-k per test user
    results.json, results.md                   every metric, train seconds, recommend seconds per 1k users
so anyone can recompute the metrics, or rerun another library on the identical split (`--split-dir`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from feature_repo.ingest import ingest
from feature_repo.lake import Lake, write_parquet_atomic
from feature_repo.sources import open_source
from models.base import Recommender
from models.catalog import generator_factories
from models.evaluate import evaluate_model, users_with_truth
from models.hybrid import HybridUnion
from models.interactions import LEARNING_TYPES, Interactions, epoch_seconds
from models.lifecycle.config import PROTOCOLS, RankerConfig
from models.lifecycle.significance import Interval, PerUser, paired_intervals
from models.lifecycle.tuning import split_tuned
from models.metrics import per_user_ndcg
from models.protocols import (
    rating_triples,
    relevant_sets,
    rolling_time_splits,
    stratified_folds,
    stratified_split,
    time_split,
    user_time_split,
)  # fmt: skip

TWO_STAGE = "two-stage"
SPLIT_COLUMNS = ["user_id", "video_id", "rating", "timestamp"]


@dataclass
class BenchmarkData:
    train: pd.DataFrame  # split columns
    test: pd.DataFrame
    videos: pd.DataFrame  # canonical videos (content models need them)


def load_dataset(
    dataset: str, data_dir: Path | None, lake_root: Path, cache_dir: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ingest (validated, idempotent) into a lake of its own; return interaction events and videos."""
    source = open_source(dataset, data_dir, cache_dir)
    lake = Lake(lake_root)
    ingest(source, lake)
    events = lake.read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts"])
    events = events[events["event_type"].isin(LEARNING_TYPES) & events["video_id"].notna()]
    return events, lake.read_table("videos")


def to_split_frame(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, video): the latest rating if any, and the last interaction time."""
    ordered = events.sort_values("event_ts", kind="stable")
    grouped = ordered.groupby(["user_id", "video_id"], sort=True)
    frame = grouped.agg(rating=("rating", "last"), timestamp=("event_ts", "max")).reset_index()
    frame["timestamp"] = epoch_seconds(frame["timestamp"])
    return frame[SPLIT_COLUMNS]


def split_events(events: pd.DataFrame, protocol: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    pairs = to_split_frame(events)
    as_events = pairs.assign(event_ts=pd.to_datetime(pairs["timestamp"], unit="s", utc=True), event_type="rating")
    if protocol == "time":
        train, test = time_split(as_events)
    elif protocol == "user-time":
        train, test = user_time_split(as_events)
    elif protocol == "stratified":
        train, test = stratified_split(as_events, ratio=0.75, seed=seed)
    else:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")
    return train[SPLIT_COLUMNS].reset_index(drop=True), test[SPLIT_COLUMNS].reset_index(drop=True)


def read_split(split_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames = []
    for name in ("train", "test"):
        path = Path(split_dir) / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: --split-dir needs train.parquet and test.parquet")
        frame = pd.read_parquet(path)
        missing = [c for c in ("user_id", "video_id") if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; expected {SPLIT_COLUMNS}")
        frame = frame.assign(user_id=frame["user_id"].astype(str), video_id=frame["video_id"].astype(str))
        for column in ("rating", "timestamp"):
            if column not in frame:
                frame[column] = np.nan if column == "rating" else 0
        frames.append(frame[SPLIT_COLUMNS])
    return frames[0], frames[1]


def split_to_events(split: pd.DataFrame) -> pd.DataFrame:
    return split.assign(
        event_type="rating",
        event_ts=pd.to_datetime(split["timestamp"], unit="s", utc=True),
    )


def write_recs(path: Path, data: Interactions, user_rows: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
    k = ids.shape[1]
    valid = ids >= 0
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(data.user_ids[user_rows], k)[valid.ravel()],
            "video_id": data.video_ids[np.where(valid, ids, 0)].ravel()[valid.ravel()],
            "rank": np.tile(np.arange(1, k + 1), len(user_rows))[valid.ravel()],
            "score": scores.ravel()[valid.ravel()].astype(np.float64),
        }
    )
    write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), path)


def train_events_of(data: BenchmarkData) -> pd.DataFrame:
    return split_to_events(data.train)


def two_stage_model(
    data: BenchmarkData, train_events: pd.DataFrame, protocol: str, vectors, factories, ranker_config=None
) -> Recommender:
    """The generators' union plus the XGBoost ranker, trained inside the train split only.

    The ranker learns from label windows inside the train split, each with generators fitted
    on what came before it: with the time protocol, rolling origins (`rolling_time_splits`);
    with the others, one inner split of the same kind. Then the generators are refit on the
    whole train split and the ranker ranks their candidates for the test users, each request
    at the user's first test event (its hour, day and device are the request's context).
    No Feast features here: the benchmark compares models on the split alone (`vidrec train`
    adds them). `ranker_config`: a `RankerConfig` (default: the defaults), e.g. with a tuned blend.
    """
    from models.lifecycle.config import DEFAULT_GENERATORS, RankerConfig, TrainConfig
    from models.ranker import CatalogSide
    from models.two_stage import Requests, TwoStage, TwoStageRecommender, train_on_windows

    if protocol == "time":
        windows = rolling_time_splits(train_events)
    elif protocol == "user-time":
        windows = [user_time_split(train_events)]
    elif TrainConfig.label_folds > 1:  # cross-fitted labels, as `vidrec train` learns them
        windows = stratified_folds(train_events, TrainConfig.label_folds, seed=7)
    else:
        windows = [stratified_split(train_events, ratio=0.75, seed=7)]
    if not windows:
        raise ValueError("the train split has no label window with returning users to train the ranker on")

    def union_on(events: pd.DataFrame):
        interactions = Interactions.from_events(events, catalog=data.videos["video_id"], weighting="binary")
        union = HybridUnion({name: factories[name]() for name in DEFAULT_GENERATORS}, per_source_k=100).fit(
            interactions
        )
        return union, CatalogSide.build(
            data.videos, interactions, align_rows(vectors, data.videos["video_id"], interactions.video_ids)
        )

    ranker, _ = train_on_windows(
        ((*union_on(fit), label) for fit, label in windows), config=ranker_config or RankerConfig()
    )  # one union at a time
    final_union, final_catalog = union_on(train_events)
    system = TwoStage(final_union, final_catalog, ranker)
    train_end = pd.to_datetime(train_events["event_ts"], utc=True).max()
    return TwoStageRecommender(system, Requests.arrivals(final_union.data, split_to_events(data.test), train_end))


def run_benchmark(
    data: BenchmarkData,
    out_dir: Path,
    k: int = 10,
    models: list[str] | None = None,
    encoder: str = "minilm",
    progress: Callable[[str], None] | None = None,
    protocol: str = "stratified",
    tuned: dict[str, dict] | None = None,
) -> list[dict]:
    """Fit every generator on `data.train`, evaluate on `data.test`, write recs and results.

    `tuned`: {generator: params} over the catalog's settings (`models.lifecycle.tuning.tuned_params`),
    and the ranker's under "ranker" (`vidrec tune --generator ranker`).

    `encoder` (minilm | tfidf) embeds the catalog for intra-list diversity.
    """
    out_dir = Path(out_dir)
    for name, frame in (("train", data.train), ("test", data.test)):
        write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), out_dir / "split" / f"{name}.parquet")

    train = Interactions.from_events(split_to_events(data.train), catalog=data.videos["video_id"], weighting="binary")
    test_events = split_to_events(data.test)
    relevant = relevant_sets(test_events, train)
    user_rows = users_with_truth(relevant)
    test_ratings = rating_triples(test_events, train)
    vectors = content_vectors(data.videos, encoder)
    generator_params, ranker_params = split_tuned(tuned)
    factories = generator_factories(
        data.videos, minilm=vectors if encoder == "minilm" else None, tuned=generator_params or None
    )
    item_vectors = align_rows(vectors, data.videos["video_id"], train.video_ids)
    ranker_config = RankerConfig(**ranker_params)
    factories[TWO_STAGE] = lambda: two_stage_model(
        data, train_events_of(data), protocol, vectors, factories, ranker_config
    )
    names = models or list(factories)
    unknown = sorted(set(names) - set(factories))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}: available {sorted(factories)}")
    rows = []
    per_user: dict[str, PerUser] = {}  # for the paired interval of two-stage against the best generator
    truth = [relevant[u] for u in user_rows]
    users = train.user_ids[user_rows].astype(str)
    for name in names:
        if progress:
            progress(name)
        started = time.perf_counter()
        model: Recommender = factories[name]()
        if name != TWO_STAGE:  # the two-stage factory trains its own generators and ranker
            model.fit(train)
        train_seconds = time.perf_counter() - started
        metrics = evaluate_model(
            model, train, relevant, user_rows, k=k, item_vectors=item_vectors, test_ratings=test_ratings
        )
        ids, scores = model.recommend(user_rows, k=k)
        write_recs(out_dir / "recs" / f"{name}.parquet", train, user_rows, ids, scores)
        rows.append({"model": name, "train_s": train_seconds, **metrics})
        per_user[name] = PerUser.of(users, {f"ndcg_at_{k}": per_user_ndcg(ids, truth, k)}, ids, train.n_videos)
    summary = {"k": k, "users": int(len(user_rows)), "rows": rows, "tuned": tuned or {}}
    markdown = markdown_table(rows, k)
    versus = two_stage_versus_best(rows, per_user, k)
    if versus is not None:
        summary["two_stage_vs_best"] = versus.as_dict()
        markdown += f"\ntwo-stage against the best single generator, paired over users: {versus.words()}\n"
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "results.md").write_text(markdown)
    return rows


def two_stage_versus_best(rows: list[dict], per_user: dict[str, PerUser], k: int) -> Interval | None:
    """The two-stage system's nDCG@k gain over the best other model, with a paired bootstrap interval."""
    metric = f"ndcg_at_{k}"
    others = [r for r in rows if r["model"] != TWO_STAGE and np.isfinite(r.get(metric, np.nan))]
    if TWO_STAGE not in per_user or not others:
        return None
    best = max(others, key=lambda r: r[metric])["model"]
    interval = paired_intervals(per_user[TWO_STAGE], per_user[best], [metric]).get(metric)
    return None if interval is None else replace(interval, metric=f"{metric} vs {best}")


def content_vectors(videos: pd.DataFrame, encoder: str) -> np.ndarray | sp.csr_matrix:
    """Content vectors of the catalog: they define intra-list diversity (and feed content-minilm)."""
    from feature_repo.text import minilm_vectors, tfidf_vectors, video_text

    texts = video_text(videos).tolist()
    return minilm_vectors(texts) if encoder == "minilm" else tfidf_vectors(texts)


def align_rows(vectors, ids: pd.Series, order: np.ndarray):
    """Rows of `vectors` (aligned with `ids`) re-ordered to `order`; unknown ids get zero rows."""
    position = pd.Index(ids).get_indexer(order)
    if sp.issparse(vectors):
        padded = sp.vstack([sp.csr_matrix(vectors), sp.csr_matrix((1, vectors.shape[1]))]).tocsr()
        return padded[np.where(position >= 0, position, vectors.shape[0])]
    aligned = np.zeros((len(order), vectors.shape[1]), dtype=np.float32)
    aligned[position >= 0] = vectors[position[position >= 0]]
    return aligned


def markdown_table(rows: list[dict], k: int) -> str:
    columns = [c for c in rows[0] if c not in ("model", "n_lists")] if rows else []
    header = "| model | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
    lines = [f"| {row['model']} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return f"metrics at k={k}\n\n" + header + "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
