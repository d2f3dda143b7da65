"""`vidrec tune --generator ranker`: choose the ranker's blend with a generator (`ScoreBlend`) on a
validation split carved from the benchmark's train part, as `tuning.tune_generator` does for a
generator's hyperparameters.

    fit, validation = validation_split(train, protocol, seed)
    the two-stage system trained on `fit` exactly as `vidrec benchmark` trains it (label folds or
    windows inside `fit`, the dataset's tuned generators), its trees' scores on the validation
    users' candidates computed once; every (z_<generator>, weight) of the grid re-ranks them
    best validation nDCG@10 -> the tuned file's "ranker" entry, read by `benchmark` and `train`

Why a validation split and not the ranker's own cross-validation: the trees learn from
generators fitted on part of the train data and rank candidates of generators refitted on all
of it. Held-out queries of the ranker's training rows do not have that shift (their generators
are the partial ones), so they cannot see what a blend corrects; a split with a refit can.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from models.lifecycle.benchmark import BenchmarkData, content_vectors, split_to_events, two_stage_model
from models.lifecycle.config import RankerConfig
from models.lifecycle.tuning import (
    METRIC,
    RANKER_ENTRY,
    VALIDATION_METRIC,
    K,
    TuneResult,
    check_disjoint,
    ranker_entry,
    save_tuned,
    split_tuned,
    tuned_params,
    tuned_path,
    validation_split,
)
from models.metrics import ndcg_at_k
from models.protocols import relevant_sets
from models.ranker import ScoreBlend
from models.two_stage import ranking_frame

# Weights of the partner's z-score, against the trees' standardised score (weight 1: equal say).
BLEND_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
CHUNK_USERS = 256


def blend_grid(data: BenchmarkData, protocol: str, tuned: dict, encoder: str) -> dict[ScoreBlend, float]:
    """nDCG@K on `data.test` of the two-stage system trained on `data.train` (blend off), for
    no blend and every (z_<generator>, weight) of the grid."""
    from models.catalog import generator_factories

    vectors = content_vectors(data.videos, encoder)
    factories = generator_factories(data.videos, minilm=vectors if encoder == "minilm" else None, tuned=tuned)
    model = two_stage_model(data, split_to_events(data.train), protocol, vectors, factories, RankerConfig())
    system = model.system
    relevant = relevant_sets(split_to_events(data.test), system.data)
    users = np.flatnonzero([len(r) > 0 for r in relevant])
    if len(users) == 0:
        raise ValueError("no held-out user has a relevant video the train part knows")
    partners = [f for f in system.ranker.features if f.startswith("z_")]
    grid = [ScoreBlend()] + [ScoreBlend(f, w) for f in partners for w in BLEND_WEIGHTS]
    tops: dict[ScoreBlend, list[np.ndarray]] = {blend: [] for blend in grid}
    for start in range(0, len(users), CHUNK_USERS):
        chunk = users[start : start + CHUNK_USERS]
        frame = ranking_frame(system.union, system.catalog, model.requests.subset(chunk), None, system.stats)
        margin = system.ranker.booster.predict(frame[system.ranker.features].astype(np.float32))
        groups = pd.Index(chunk).get_indexer(frame["user_row"].to_numpy())
        for blend in grid:
            scores = blend.apply(margin, frame[blend.feature].to_numpy() if blend.feature else None, groups)
            tops[blend].append(top_k_of(groups, frame["video_row"].to_numpy(), scores, len(chunk), K))
    truth = [relevant[u] for u in users]
    return {blend: float(ndcg_at_k(np.concatenate(parts), truth, K)) for blend, parts in tops.items()}


def top_k_of(groups: np.ndarray, videos: np.ndarray, scores: np.ndarray, n_groups: int, k: int) -> np.ndarray:
    """(n_groups x k) video rows, best score first per group; -1 pads groups with fewer rows."""
    order = np.lexsort((-np.asarray(scores, dtype=np.float64), groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    position = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    keep = position < k
    out = np.full((n_groups, k), -1, dtype=np.int64)
    out[g[keep], position[keep]] = videos[order][keep]
    return out


def tune_ranker(
    train: pd.DataFrame,
    test: pd.DataFrame,
    videos: pd.DataFrame,
    *,
    dataset: str,
    protocol: str,
    seed: int = 42,
    encoder: str = "tfidf",
    settings=None,
    path: Path | None = None,
) -> TuneResult:
    """Choose the blend on a validation split of `train`, save it as the tuned file's
    "ranker@<protocol>" entry (the other protocols' stay), and report the test part's nDCG@K with
    and without it (read only after the choice).

    The generators use the tuned file's entries (tune them first). `encoder`: the content
    vectors of the ranker's cross features (tfidf: fast; minilm: what `benchmark` uses by default).
    """
    import mlflow

    from models.lifecycle import tracking
    from vidrec.settings import Settings

    path = Path(path) if path else tuned_path(dataset)
    started = time.perf_counter()
    fit, validation = validation_split(train, protocol, seed)
    check_disjoint(validation, test)
    generators, _ = split_tuned(tuned_params(dataset, path))
    grid = blend_grid(BenchmarkData(fit, validation, videos), protocol, generators, encoder)
    alone = grid[ScoreBlend()]
    # Ties keep the simpler setting: no blend, then the smaller weight (the grid's order).
    best = max(grid, key=lambda blend: (round(grid[blend], 6), -list(grid).index(blend)))
    outer = blend_grid(BenchmarkData(train, test, videos), protocol, generators, encoder)
    params = {"blend_feature": best.feature, "blend_weight": best.weight}
    seconds = time.perf_counter() - started
    entry = {
        "params": params,
        VALIDATION_METRIC: grid[best],
        f"{VALIDATION_METRIC}_defaults": alone,
        f"test_{METRIC}": outer[best],
        f"test_{METRIC}_defaults": outer[ScoreBlend()],
        "trials": len(grid),
        "validation_grid": {f"{b.feature or 'none'} x {b.weight:g}": round(v, 6) for b, v in grid.items()},
        "protocol": protocol,
        "seed": seed,
        "encoder": encoder,
        "tuned_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    save_tuned(path, ranker_entry(protocol), entry)
    tracking.configure(settings or Settings.from_env())
    with mlflow.start_run(run_name=f"tune ranker on {dataset}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"vidrec.kind": "tune", "generator": RANKER_ENTRY, "dataset": dataset, "protocol": protocol})
        mlflow.log_params({"dataset": dataset, "protocol": protocol, "seed": seed, "encoder": encoder,
                           "best.blend_feature": best.feature or "none", "best.blend_weight": best.weight})  # fmt: skip
        mlflow.log_metrics({
            f"{VALIDATION_METRIC}.defaults": alone, f"{VALIDATION_METRIC}.tuned": grid[best],
            f"test_{METRIC}.defaults": outer[ScoreBlend()], f"test_{METRIC}.tuned": outer[best], "tune_s": seconds,
        })  # fmt: skip
        mlflow.log_dict({ranker_entry(protocol): entry}, f"tuned/{path.name}")
        run_id = run.info.run_id
    return TuneResult(
        generator=RANKER_ENTRY, dataset=dataset, protocol=protocol, trials=len(grid),
        default_params={"blend_feature": None, "blend_weight": 0.0}, best_params=params,
        validation_before=alone, validation_after=grid[best], test_before=outer[ScoreBlend()],
        test_after=outer[best], seconds=seconds, run_id=run_id, path=path,
    )  # fmt: skip
