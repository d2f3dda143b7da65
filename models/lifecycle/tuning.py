"""`vidrec tune`: an Optuna search over one generator's hyperparameters, on a validation split
carved from the benchmark's train part (never its test part).

    train, test = split_events(events, protocol, seed)        # the benchmark's split, unchanged
    fit, validation = validation_split(train, protocol, seed)  # inside train, by the same protocol
    each trial: fit the generator on `fit`, nDCG@10 on `validation`
    best params -> models/tuned/<dataset>.json, read by `vidrec benchmark` (catalog `tuned=`)

The validation split follows the outer protocol: with `stratified`, a per-user 75/25 stratified
split of the train pairs; with `time`, a time split of them (train on the past of the train part,
validate on its last 20%). The test part is read only after the search, to report the tuned and
the default configuration side by side; it never steers a trial.

Trial 0 always runs the catalog's defaults, so the study's best is never worse than them on
validation and the "before" number comes from the same run. The sampler is TPE, seeded; every
generator here fits with a fixed seed on one thread, so the same data, trials and seed give the
same file.

Every trial is a nested MLflow run (its params and `validation_ndcg_at_10`) under one parent
run per generator, in experiment `vidrec`; the parent holds the best params, the before/after
numbers, and the tuned file as an artifact.

The tuned file, one per dataset, under version control (`models/tuned/`; `VIDREC_TUNED_DIR`
points elsewhere, e.g. in tests):

    {"als": {"params": {...}, "validation_ndcg_at_10": 0.41, "trials": 30, "protocol": "stratified",
             "tuned_at": "2026-...Z", ...}, "bpr": {...}}
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.lake import write_text_atomic
from models import metrics, protocols
from models.evaluate import users_with_truth
from models.interactions import Interactions

K = 10
METRIC = f"ndcg_at_{K}"
VALIDATION_METRIC = f"validation_{METRIC}"
# The inner stratified split draws with a seed of its own, so it is not the outer draw's twin.
VALIDATION_SEED_OFFSET = 1
TUNED_DIR_ENV = "VIDREC_TUNED_DIR"
# The two-stage ranker's settings (models/lifecycle/ranker_tuning.py) are kept per protocol, under
# "ranker@<protocol>" in the tuned file, and handed to a run as its "ranker" entry; every other
# entry is a generator's.
RANKER_ENTRY = "ranker"


def ranker_entry(protocol: str) -> str:
    """The tuned file's key of the ranker's settings chosen under `protocol`."""
    return f"{RANKER_ENTRY}@{protocol}"


def is_ranker_entry(name: str) -> bool:
    return name == RANKER_ENTRY or name.startswith(RANKER_ENTRY + "@")


PACKAGE_TUNED_DIR = Path(__file__).resolve().parents[1] / "tuned"

SearchSpace = Callable[[Any], dict[str, Any]]  # optuna.Trial -> constructor params


# ---- search spaces ---------------------------------------------------------------------------
# Every range holds the catalog default (trial 0 runs it). Log scales where the effect is
# multiplicative. Only constructor arguments: the names are checked against the class.


def _als(trial) -> dict[str, Any]:
    return {
        "factors": trial.suggest_int("factors", 16, 256, log=True),
        "regularization": trial.suggest_float("regularization", 1e-3, 50.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 100.0, log=True),
        "iterations": trial.suggest_int("iterations", 5, 40),
    }


def _bpr(trial) -> dict[str, Any]:
    # Uniform negatives with Adam (models/bpr.py): on ml-latest-small the good fits are wide
    # (100-250 factors), take steps near 1e-3 and want 100+ epochs; a trial's time grows with
    # factors x epochs (200 x 150: about a minute on 56k fit pairs, one thread).
    return {
        "factors": trial.suggest_int("factors", 16, 256, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True),
        "regularization": trial.suggest_float("regularization", 1e-4, 3e-2, log=True),
        "iterations": trial.suggest_int("iterations", 20, 200, log=True),
    }


def _ease(trial) -> dict[str, Any]:
    return {"l2": trial.suggest_float("l2", 1.0, 10_000.0, log=True)}


def _item_cf(trial) -> dict[str, Any]:
    return {
        "k_neighbors": trial.suggest_int("k_neighbors", 5, 1000, log=True),
        "shrink": trial.suggest_float("shrink", 0.0, 200.0),
    }


def _user_cf(trial) -> dict[str, Any]:
    return {
        "k_neighbors": trial.suggest_int("k_neighbors", 5, 600, log=True),
        "shrink": trial.suggest_float("shrink", 0.0, 50.0),
        "alpha": trial.suggest_float("alpha", 1.0, 4.0),
    }


def _svd(trial) -> dict[str, Any]:
    # SVD is the benchmark's rating predictor (RMSE). nDCG@10 pulls it towards its biases, a
    # popularity-like ranker (ml-latest-small, stratified: nDCG@10 0.081 -> 0.198 but RMSE
    # 0.877 -> 0.920), so its tuned entry is a choice between the two, not a free gain.
    return {
        "factors": trial.suggest_int("factors", 8, 256, log=True),
        "epochs": trial.suggest_int("epochs", 5, 60),
        "lr": trial.suggest_float("lr", 1e-3, 0.05, log=True),
        "reg": trial.suggest_float("reg", 1e-3, 0.5, log=True),
    }


def _mult_vae(trial) -> dict[str, Any]:
    return {
        "hidden": trial.suggest_int("hidden", 200, 1000, log=True),
        "latent": trial.suggest_int("latent", 50, 400, log=True),
        "dropout": trial.suggest_float("dropout", 0.1, 0.7),
        "epochs": trial.suggest_int("epochs", 20, 100, log=True),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "beta_max": trial.suggest_float("beta_max", 0.0, 0.5),
    }


def _sasrec(trial) -> dict[str, Any]:
    return {
        "hidden": trial.suggest_int("hidden", 32, 128, step=16),  # a multiple of the 2 heads
        "layers": trial.suggest_int("layers", 1, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "epochs": trial.suggest_int("epochs", 10, 60, log=True),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
    }


def _ncf(trial) -> dict[str, Any]:
    return {
        "factors": trial.suggest_int("factors", 8, 128, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "n_negatives": trial.suggest_int("n_negatives", 1, 10),
        "epochs": trial.suggest_int("epochs", 3, 40, log=True),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "l2": trial.suggest_float("l2", 0.0, 1e-4),
    }


def _gru4rec(trial) -> dict[str, Any]:
    return {
        "embedding": trial.suggest_int("embedding", 16, 256, log=True),
        "hidden": trial.suggest_int("hidden", 32, 256, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "epochs": trial.suggest_int("epochs", 3, 40, log=True),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
    }


SEARCH_SPACES: dict[str, SearchSpace] = {
    "als": _als,
    "bpr": _bpr,
    "ease": _ease,
    "item-cf": _item_cf,
    "user-cf": _user_cf,
    "svd": _svd,
    "mult-vae": _mult_vae,
    "sasrec": _sasrec,
    "ncf": _ncf,  # searched once the catalog has them
    "gru4rec": _gru4rec,
}


def tunable(videos: pd.DataFrame | None = None) -> list[str]:
    """Generators with a search space that the catalog has."""
    from models.catalog import generator_factories

    catalog = generator_factories(videos if videos is not None else pd.DataFrame({"video_id": []}))
    return sorted(set(SEARCH_SPACES) & set(catalog))


# ---- the tuned file ----------------------------------------------------------------------------


def tuned_dir() -> Path:
    return Path(os.environ.get(TUNED_DIR_ENV) or PACKAGE_TUNED_DIR)


def tuned_name(dataset: str) -> str:
    """The file's name for a dataset: MovieLens by its GroupLens release (movielens-small ->
    ml-latest-small), anything else by the name `vidrec` knows it by."""
    from feature_repo.sources.download import ARCHIVES

    archive = ARCHIVES.get(dataset)
    return archive.filename.removesuffix(".zip") if archive else dataset


def tuned_path(dataset: str) -> Path:
    return tuned_dir() / f"{tuned_name(dataset)}.json"


def read_tuned(path: Path) -> dict[str, dict[str, Any]]:
    """The whole file ({generator: entry}); an empty dict when it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"tuned file {path} is not valid JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise ValueError(f"tuned file {path} must hold an object {{generator: {{params: ...}}}}")  # noqa: TRY004
    for generator, entry in content.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
            raise ValueError(f"tuned file {path}: entry {generator!r} needs a 'params' object")  # noqa: TRY004
    return content


def tuned_params(
    dataset: str, path: Path | None = None, protocol: str | None = None
) -> dict[str, dict[str, Any]] | None:
    """{generator: params} saved for `dataset`, as `generator_factories(tuned=...)` takes it (and
    the ranker's, see `split_tuned`); None when the dataset has no tuned file. With `protocol`,
    see `entries_for`."""
    path = Path(path) if path else tuned_path(dataset)
    if not path.exists():
        return None
    return {name: dict(entry["params"]) for name, entry in entries_for(read_tuned(path), protocol).items()}


def entries_for(entries: Mapping[str, dict[str, Any]], protocol: str | None) -> dict[str, dict[str, Any]]:
    """The tuned file's entries a run under `protocol` uses: every generator's, and the ranker's
    chosen under that protocol, as "ranker" (None: the generators' only). The best blend depends
    on the protocol: on ml-latest-small EASE leads the stratified protocol and trending the time
    protocol, where the blend with EASE tuned on stratified gave two-stage 0.208 against 0.274
    without, on 28 users. A file from before the per-protocol keys holds one "ranker" entry that
    names its protocol."""
    chosen = {name: entry for name, entry in entries.items() if not is_ranker_entry(name)}
    if protocol is None:
        return chosen
    ranker = entries.get(ranker_entry(protocol))
    legacy = entries.get(RANKER_ENTRY)
    if ranker is None and legacy is not None and legacy.get("protocol") == protocol:
        ranker = legacy
    return chosen | ({RANKER_ENTRY: ranker} if ranker is not None else {})


def split_tuned(tuned: Mapping[str, Mapping[str, Any]] | None) -> tuple[dict[str, dict], dict[str, Any]]:
    """(generators' params, the ranker's params) of `tuned_params`' answer, as `generator_factories`
    and `RankerConfig` take them."""
    generators = {name: dict(params) for name, params in (tuned or {}).items() if name != RANKER_ENTRY}
    return generators, dict((tuned or {}).get(RANKER_ENTRY) or {})


def require_tuned(dataset: str, protocol: str | None = None) -> dict[str, dict[str, Any]]:
    """`tuned_params(dataset, protocol=protocol)`, or a ValueError naming the missing file and how to make it."""
    params = tuned_params(dataset, protocol=protocol)
    if params is None:
        raise ValueError(
            f"no tuned hyperparameters for {dataset!r}: {tuned_path(dataset)} does not exist (run `vidrec tune`)"
        )
    return params


def save_tuned(path: Path, generator: str, entry: dict[str, Any]) -> None:
    """Set one generator's entry, keeping the others; readers see the old or the new file.

    Read-modify-write under an exclusive lock on the folder, so two tunes of the same dataset
    (different generators) do not drop each other's entry.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        content = read_tuned(path)
        content[generator] = entry
        write_text_atomic(json.dumps(dict(sorted(content.items())), indent=2) + "\n", path)
    finally:
        os.close(folder)  # releases the lock


# ---- splits and the objective ------------------------------------------------------------------


def validation_split(train: pd.DataFrame, protocol: str, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation) carved from the benchmark's train part by the outer protocol.

    `train` is a split frame (user_id, video_id, rating, timestamp), as `split_events` returns.
    time: a time split at the latest cut whose window judges enough users (`time_cut`, as
    `vidrec train` cuts); stratified: per user 75/25 (another seed than the outer split);
    user-time: each user's last 5 videos of the train part.
    """
    events = _split_to_events(train)
    if protocol == "time":
        fit, validation = protocols.time_split(events, cutoff=protocols.time_cut(events))
    elif protocol == "stratified":
        fit, validation = protocols.stratified_split(events, ratio=0.75, seed=seed + VALIDATION_SEED_OFFSET)
    elif protocol == "user-time":
        fit, validation = protocols.user_time_split(events)
    else:
        raise ValueError(f"unknown protocol {protocol!r}: expected time, stratified or user-time")
    if validation.empty:
        raise ValueError("the train part is too small to carve a validation split from")
    columns = list(train.columns)
    return fit[columns].reset_index(drop=True), validation[columns].reset_index(drop=True)


def check_disjoint(validation: pd.DataFrame, test: pd.DataFrame) -> None:
    """Guard: the validation split must not hold a single test-part pair."""
    keys = ["user_id", "video_id"]
    leaked = validation[keys].merge(test[keys].drop_duplicates(), on=keys)
    if len(leaked):
        raise ValueError(f"{len(leaked)} validation pairs are in the test part: tuning would see the test set")


@dataclass
class Holdout:
    """A fit matrix and the truth to score against: what one nDCG@10 needs."""

    data: Interactions
    relevant: list[set[int]]
    users: np.ndarray

    @classmethod
    def build(cls, fit: pd.DataFrame, held_out: pd.DataFrame, catalog: pd.Series) -> Holdout:
        data = Interactions.from_events(_split_to_events(fit), catalog=catalog, weighting="binary")
        relevant = protocols.relevant_sets(_split_to_events(held_out), data)
        users = users_with_truth(relevant)
        if len(users) == 0:
            raise ValueError("no held-out user has a relevant video the fit part knows")
        return cls(data, relevant, users)

    def ndcg(self, model) -> float:
        """nDCG@10 of a fitted model, as `evaluate_model` computes it for the benchmark."""
        recs, _ = model.recommend(self.users, k=K)
        return float(metrics.ndcg_at_k(recs, [self.relevant[u] for u in self.users.tolist()], K))


def _split_to_events(split: pd.DataFrame) -> pd.DataFrame:
    # models.lifecycle.benchmark.split_to_events, inlined: benchmark imports the catalog, which imports this.
    return split.assign(event_type="rating", event_ts=pd.to_datetime(split["timestamp"], unit="s", utc=True))


def default_params(generator: str, videos: pd.DataFrame, names: list[str]) -> dict[str, Any]:
    """The catalog's value of each searched parameter (what `vidrec benchmark` uses untuned)."""
    from models.catalog import generator_factories, init_params

    model = generator_factories(videos)[generator]()
    current = init_params(model)
    return {name: current[name] for name in names}


def space_names(generator: str) -> list[str]:
    """The parameter names `generator`'s search space suggests (drawn once on a throwaway study)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return list(SEARCH_SPACES[generator](optuna.create_study(sampler=optuna.samplers.RandomSampler(0)).ask()))


# ---- the study ---------------------------------------------------------------------------------


@dataclass
class TrialReport:
    number: int
    params: dict[str, Any]
    value: float
    best_value: float
    seconds: float


@dataclass
class TuneResult:
    generator: str
    dataset: str
    protocol: str
    trials: int
    default_params: dict[str, Any]
    best_params: dict[str, Any]
    validation_before: float
    validation_after: float
    test_before: float
    test_after: float
    seconds: float
    run_id: str | None
    path: Path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def tune_generator(
    generator: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    videos: pd.DataFrame,
    *,
    dataset: str,
    protocol: str,
    trials: int,
    seed: int = 42,
    timeout_s: float | None = None,
    settings=None,
    path: Path | None = None,
    progress: Callable[[TrialReport], None] | None = None,
) -> TuneResult:
    """Search `generator`'s space on a validation split of `train`; save and return the best.

    train, test: the benchmark's split frames for `protocol`. settings: where MLflow lives (its
    tracking store gets the parent and nested trial runs; default `Settings.from_env()`).
    path: the tuned file (default `tuned_path(dataset)`).
    """
    import mlflow
    import optuna

    from models.catalog import generator_factories

    if generator not in SEARCH_SPACES or generator not in generator_factories(videos):
        raise ValueError(f"no search space for {generator!r}: tunable generators are {tunable(videos)}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    space = SEARCH_SPACES[generator]
    path = Path(path) if path else tuned_path(dataset)
    started = time.perf_counter()

    fit, validation = validation_split(train, protocol, seed)
    check_disjoint(validation, test)
    catalog = videos["video_id"]
    inner = Holdout.build(fit, validation, catalog)
    defaults = default_params(generator, videos, space_names(generator))

    def build(params: Mapping[str, Any]):
        return generator_factories(videos, tuned={generator: dict(params)})[generator]()

    from models.lifecycle import tracking
    from vidrec.settings import Settings

    tracking.configure(settings or Settings.from_env())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)), multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name=f"{dataset}-{generator}")
    study.enqueue_trial(defaults, user_attrs={"defaults": True})

    with mlflow.start_run(run_name=f"tune {generator} on {dataset}", nested=mlflow.active_run() is not None) as parent:
        mlflow.set_tags({"vidrec.kind": "tune", "generator": generator, "dataset": dataset, "protocol": protocol})
        mlflow.log_params({"generator": generator, "dataset": dataset, "protocol": protocol, "trials": trials,
                           "seed": seed, "fit_pairs": len(fit), "validation_pairs": len(validation)})  # fmt: skip

        def objective(trial) -> float:
            params = space(trial)
            trial_started = time.perf_counter()
            with mlflow.start_run(run_name=f"{generator} trial {trial.number}", nested=True):
                mlflow.set_tags({"vidrec.kind": "tune-trial", "generator": generator, "trial": str(trial.number)})
                mlflow.log_params(params)
                model = build(params).fit(inner.data)
                value = inner.ndcg(model)
                seconds = time.perf_counter() - trial_started
                mlflow.log_metrics({VALIDATION_METRIC: value, "fit_and_eval_s": seconds})
            trial.set_user_attr("seconds", seconds)
            if not math.isfinite(value):
                raise ValueError(f"trial {trial.number} of {generator} scored {value}")
            return value

        def report(study, trial) -> None:
            if progress and trial.value is not None:
                progress(TrialReport(trial.number, dict(trial.params), trial.value, study.best_value,
                                     trial.user_attrs.get("seconds", float("nan"))))  # fmt: skip

        study.optimize(objective, n_trials=trials, timeout=timeout_s, callbacks=[report])
        best = {name: _jsonable(value) for name, value in study.best_params.items()}
        validation_before = float(study.trials[0].value)
        validation_after = float(study.best_value)

        # Only now the test part: the default and the tuned configuration, fitted on the whole train part.
        outer = Holdout.build(train, test, catalog)
        test_before = outer.ndcg(build(defaults).fit(outer.data))
        test_after = test_before if best == defaults else outer.ndcg(build(best).fit(outer.data))
        seconds = time.perf_counter() - started
        done = len(study.trials)
        entry = {
            "params": best,
            VALIDATION_METRIC: validation_after,
            f"{VALIDATION_METRIC}_defaults": validation_before,
            f"test_{METRIC}": test_after,
            f"test_{METRIC}_defaults": test_before,
            "trials": done,
            "protocol": protocol,
            "seed": seed,
            "tuned_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        save_tuned(path, generator, entry)
        mlflow.log_params({f"best.{name}": value for name, value in best.items()})
        mlflow.log_metrics({
            f"{VALIDATION_METRIC}.defaults": validation_before, f"{VALIDATION_METRIC}.tuned": validation_after,
            f"test_{METRIC}.defaults": test_before, f"test_{METRIC}.tuned": test_after,
            "trials_run": done, "tune_s": seconds,
        })  # fmt: skip
        mlflow.log_dict({generator: entry}, f"tuned/{path.name}")
        run_id = parent.info.run_id

    return TuneResult(
        generator=generator, dataset=dataset, protocol=protocol, trials=done, default_params=defaults,
        best_params=best, validation_before=validation_before, validation_after=validation_after,
        test_before=test_before, test_after=test_after, seconds=seconds, run_id=run_id, path=path,
    )  # fmt: skip
