"""Train, evaluate, register and gate: one training run, as the `vidrec_training` DAG runs it.

Windows (time protocol, the default; every window ends where the next starts):

    fit window ──────────────▶│ label window ─▶│ held-out window ─▶
    generators learn here       ranker learns    every model is evaluated here
                                 labels here      (generators refit on all before it)

With `label_windows` > 1 (time protocol), the ranker also learns from earlier label windows
(rolling origins from 30% of the train part on), each with generators fitted on what came before
it: more users to learn from than one recent window holds.

The user-time protocol holds out each user's last relevant videos, and the stratified one a
random share per user (its ranker labels cross-fitted over `label_folds` folds). Feast features
are then left out, because snapshots as of any one time would contain test events.

The gate compares the challenger with the champion (refit on the same events, scored on the same
users) or, for a first model, with the better of popularity and trending, by a paired bootstrap
interval over users (models/lifecycle/significance.py). What is registered and served is the same
configuration refit on every event, so that every user with history is known.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from feature_repo.lake import Lake
from feature_repo.text import tfidf_vectors, video_text
from models.base import Recommender
from models.catalog import generator_factories
from models.content import align_vectors
from models.evaluate import evaluate_model, users_with_truth
from models.hybrid import HybridUnion
from models.interactions import LEARNING_TYPES, Interactions
from models.lifecycle import registry, tracking
from models.lifecycle.capacity import check_train_fits, ease_fit_size
from models.lifecycle.config import NON_PERSONALIZED, PROTOCOLS, GatePolicy, TrainConfig
from models.lifecycle.significance import PerUser
from models.metrics import list_diversity, ndcg_at_k, per_user_ndcg
from models.protocols import (
    ROLLING_ORIGINS,
    relevant_sets,
    rolling_time_splits,
    stratified_folds,
    stratified_split,
    time_cut,
    time_split,
    user_time_split,
)  # fmt: skip
from models.ranker import CatalogSide, FeatureLookup, RankerModel, TrainingRows
from models.two_stage import Requests, TwoStage, TwoStageRecommender, prefetch_features, train_on_windows
from vidrec.meter import StageMeter
from vidrec.settings import Settings

log = logging.getLogger(__name__)

GUARD_K = 200
CURVE_KS = (1, 3, 5, 10, 20, 50)  # cut-offs of the nDCG@k curve plotted per run


@dataclass
class Windows:
    fit: pd.DataFrame
    label: pd.DataFrame
    test: pd.DataFrame
    # Everything before the held-out window: the generators' final refit. Not fit + label: the
    # label side drops users the fit window never saw, and with them their whole history.
    train: pd.DataFrame
    label_start: pd.Timestamp | None
    test_start: pd.Timestamp | None
    earlier: list[tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=list)  # (fit, label), oldest first

    @property
    def label_sets(self) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
        """Every (fit, label) window the ranker learns from, the main one last."""
        return [*self.earlier, (self.fit, self.label)]


@dataclass
class TrainResult:
    run_id: str
    versions: dict[str, str]
    decision: registry.GateDecision
    table: pd.DataFrame  # one row per model, metrics as columns
    stages: list = field(default_factory=list)  # vidrec.meter.StageRecord per stage: time and peak memory

    def summary(self) -> str:
        return f"run {self.run_id}: versions {self.versions}; {self.decision.summary()}"


def split_windows(events: pd.DataFrame, config: TrainConfig) -> Windows:
    """Fit / label / held-out windows by the configured protocol."""
    if config.protocol == "time":
        if config.label_windows < 1:
            raise ValueError(f"label_windows must be at least 1, got {config.label_windows}")
        cut = time_cut(events, config.test_fraction, config.min_test_users)
        train, test = time_split(events, cutoff=cut)
        test_share = 1.0 - len(train) / len(events)
        last_origin = 1 - config.label_fraction / (1 - test_share)
        fit, label = time_split(train, test_fraction=1 - last_origin)
        origins = np.linspace(ROLLING_ORIGINS[0], last_origin, config.label_windows)[:-1]
        earlier = rolling_time_splits(train, tuple(float(q) for q in origins)) if len(origins) else []
        return Windows(fit, label, test, train, label["event_ts"].min(), test["event_ts"].min(), earlier)
    if config.protocol == "user-time":
        train, test = user_time_split(events, n=config.holdout_per_user)
        fit, label = user_time_split(train, n=config.holdout_per_user)
        return Windows(fit, label, test, train, None, None)
    if config.protocol == "stratified":
        train, test = stratified_split(events, ratio=1 - config.test_fraction, seed=config.seed)
        if config.label_folds > 1:
            *earlier, (fit, label) = stratified_folds(train, config.label_folds, seed=config.seed + 1)
            return Windows(fit, label, test, train, None, None, earlier)
        fit, label = stratified_split(train, ratio=1 - config.label_fraction, seed=config.seed + 1)
        return Windows(fit, label, test, train, None, None)
    raise ValueError(f"unknown protocol {config.protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def fit_union(
    events: pd.DataFrame, videos: pd.DataFrame, config: TrainConfig, content, users: np.ndarray | None = None
) -> tuple[HybridUnion, CatalogSide]:
    """The configured generators fitted on `events`; `users`: ids to know even without an interaction."""
    data = Interactions.from_events(events, catalog=videos["video_id"], weighting="binary", users=users)
    factories = generator_factories(videos, tuned=config.tuned or None)
    unknown = sorted(set(config.generators) - set(factories))
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}: available {sorted(factories)}")
    union = HybridUnion({name: factories[name]() for name in config.generators}, per_source_k=config.per_source_k)
    union.fit(data)
    vectors = align_vectors(content, videos["video_id"].to_numpy(), data.video_ids)
    return union, CatalogSide.build(videos, data, vectors)


class FeastLookup:
    """Point-in-time features from Feast's offline store, for the rows of a ranking frame.

    Rows are ranked in chunks, and each offline retrieval re-reads the feature tables, so
    distinct entity rows are kept once retrieved, and `prefetch` asks for every user and video a
    job will need in one retrieval before the chunks start (see `two_stage.prefetch_features`).
    """

    def __init__(self, settings: Settings, service: str):
        self.settings, self.service = settings, service
        self.cache: dict = {}

    def __call__(self, entities: pd.DataFrame) -> pd.DataFrame:
        from feature_repo.store import training_frame

        frame = training_frame(entities, features=self.service, settings=self.settings, cache=self.cache)
        return frame.drop(columns=[c for c in entities.columns if c in frame.columns])

    def prefetch(self, entities: pd.DataFrame) -> None:
        self(entities)


def feast_lookup(settings: Settings, service: str) -> FeatureLookup:
    return FeastLookup(settings, service)


def prepare_features(settings: Settings, lake: Lake, as_of: list[pd.Timestamp], ranker_version: int) -> str:
    """Feature snapshots at the window starts, applied to Feast, and this version's feature service."""
    from feature_repo.store import apply_repo, register_ranker_service
    from feature_repo.transforms.tables import write_feature_tables

    write_feature_tables(lake, as_of, settings)
    apply_repo(settings)
    return register_ranker_service(ranker_version, settings=settings).name


def candidate_recall(
    union: HybridUnion, relevant: list[set[int]], user_rows: np.ndarray, cap: int = GUARD_K, batch_users: int = 1024
) -> np.ndarray:
    """Per user (aligned with `user_rows`), the share of held-out engagements the union proposes
    within its best `cap` candidates; NaN for users without any."""
    recalls = np.full(len(user_rows), np.nan)
    for first in range(0, len(user_rows), batch_users):
        batch = user_rows[first : first + batch_users]
        frame = union.candidates(batch)
        rank_cols = [c for c in frame.columns if c.startswith("rank_")]
        frame["best_rank"] = frame[rank_cols].min(axis=1)
        frame = frame.sort_values(["user_row", "n_sources", "best_rank"], ascending=[True, False, True])
        top = frame.groupby("user_row").head(cap).groupby("user_row")["video_row"].agg(set)
        for i, u in enumerate(batch.tolist()):
            if relevant[u]:
                recalls[first + i] = len(relevant[u] & top.get(u, set())) / len(relevant[u])
    return recalls


def held_out_sample(test: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """The held-out events of at most `limit` users: a seeded draw over the sorted user ids, so
    the challenger and the champion are judged on the same users."""
    users = np.sort(test["user_id"].astype(str).unique())
    if limit is None or len(users) <= limit:
        return test
    chosen = np.random.default_rng(seed).choice(users, size=limit, replace=False)
    return test[test["user_id"].astype(str).isin(chosen)]


@dataclass
class Evaluation:
    """Every model's results on the same held-out users: one row per model, the nDCG@k curves,
    and per user what the gate's paired intervals read."""

    table: pd.DataFrame  # one row per model, metrics as columns
    curves: dict[str, dict[int, float]]
    per_user: dict[str, PerUser]  # model -> its figures per judged user


def evaluate_all(
    union: HybridUnion,
    system: TwoStage,
    test: pd.DataFrame,
    requests: Requests,
    lookup: FeatureLookup | None,
    k: int,
    baselines: dict[str, Recommender] | None = None,
) -> Evaluation:
    """Every generator, the two-stage system and `baselines` (models fitted on the same data
    outside the union) on the same held-out users."""
    data = union.data
    relevant = relevant_sets(test, data)
    users = np.intersect1d(users_with_truth(relevant), requests.user_rows)
    prefetch_features(lookup, data, requests.subset(users))
    vectors = system.catalog.content
    models = {**(baselines or {}), **union.generators, "two-stage": TwoStageRecommender(system, requests, lookup)}
    rows, curves, per_user = {}, {}, {}
    truth = [relevant[u] for u in users]
    depth = max(k, max(CURVE_KS))
    ids_of_users = data.user_ids[users].astype(str)
    recall = candidate_recall(union, relevant, users)
    for name, model in models.items():
        started = time.perf_counter()
        ids, _ = model.recommend(users, k=depth)  # one list serves the metrics at k and the curve
        seconds = time.perf_counter() - started
        rows[name] = evaluate_model(model, data, relevant, users, k=k, item_vectors=vectors, recs=ids)
        rows[name]["recommend_s_per_1k_users"] = seconds * 1000.0 / max(len(users), 1)
        curves[name] = {kk: ndcg_at_k(ids, truth, kk) for kk in CURVE_KS}
        values = {
            f"ndcg_at_{k}": per_user_ndcg(ids, truth, k),
            f"diversity_at_{k}": list_diversity(ids[:, :k], vectors),
        }
        if name == "two-stage":
            values[f"candidate_recall_at_{GUARD_K}"] = recall
        per_user[name] = PerUser.of(ids_of_users, values, ids[:, :k], data.n_videos)
    table = pd.DataFrame(rows).T
    table[f"candidate_recall_at_{GUARD_K}"] = np.nan
    table.loc["two-stage", f"candidate_recall_at_{GUARD_K}"] = (
        float(np.nanmean(recall)) if np.isfinite(recall).any() else np.nan
    )
    return Evaluation(table, curves, per_user)


def baseline_models(union: HybridUnion) -> dict[str, Recommender]:
    """Popularity and trending fitted on the union's data, for those the union lacks: a first
    model must beat the better of the two."""
    factories = generator_factories(pd.DataFrame({"video_id": union.data.video_ids}))
    return {name: factories[name]().fit(union.data) for name in NON_PERSONALIZED if name not in union.generators}


def refit_champion(
    champion: registry.Champion,
    events: pd.DataFrame,
    videos: pd.DataFrame,
    content,
    settings: Settings,
    use_feast: bool,
) -> tuple[TwoStage, FeatureLookup | None]:
    """The champion's generators (their own hyperparameters) refit on `events`, with its ranker.

    Served champions are fitted on every event up to their as-of time, which includes this run's
    held-out window: scored as registered they would have seen (and filtered out) the very videos
    they are judged on. Refit on the challenger's training events, both are judged on equal terms.
    """
    union = champion.system.union
    data = Interactions.from_events(events, catalog=videos["video_id"], weighting="binary")
    union.fit(data)
    catalog = CatalogSide.build(videos, data, align_vectors(content, videos["video_id"].to_numpy(), data.video_ids))
    lookup = feast_lookup(settings, champion.feature_service) if use_feast and champion.feature_service else None
    return TwoStage(union, catalog, champion.system.ranker), lookup


def model_card(config: TrainConfig, events: pd.DataFrame, windows: Windows, n_judged: int) -> str:
    """What the registered versions are, for their MLflow description."""
    as_of = pd.to_datetime(events["event_ts"], utc=True).max()
    return (
        f"Serves: generators refit on every event up to {as_of:%Y-%m-%d %H:%M} UTC ({len(events):,} events, "
        f"{events['user_id'].nunique():,} users), so every user with history is known; the XGBoost ranker as "
        f"trained on label windows before the held-out window (refitting it there would leave it unjudged).\n"
        f"Judged: the gate's figures come from the evaluation fit (generators fitted on the {len(windows.train):,} "
        f"events before the held-out window, protocol {config.protocol}, {n_judged:,} held-out users)."
    )


def train_and_gate(
    settings: Settings,
    config: TrainConfig = TrainConfig(),
    dataset: str = "lake",
    progress: Callable[[str], None] | None = None,
    run_tags: dict[str, str] | None = None,
    engagement: EngagementCheck | None = None,
) -> TrainResult:
    """The whole run: windows, generators, ranker, evaluation, gate, then the served refit,
    MLflow and the registry. `run_tags` are set on the MLflow run when it starts. `engagement`:
    the simulated A/B check `config.gate.engagement_check` asks for (vidrec.pipeline passes
    `serving.simulation`'s; this layer cannot import it)."""
    if config.gate.engagement_check and engagement is None:
        raise ValueError("the gate's engagement check needs a simulator: train through vidrec.pipeline.train_models")
    step = progress or (lambda message: log.info(message))
    meter = StageMeter(report=lambda summary: step(f"  done: {summary}"))
    lake = Lake(settings.lake_dir)
    if not lake.event_files():
        raise FileNotFoundError(f"the lake at {lake.root} holds no events: run `vidrec ingest` first")
    videos = lake.read_table("videos")
    plan = check_train_fits(lake.events_dataset().count_rows(), ease_fit_size(config, len(videos)), settings)
    step(f"memory: {plan.summary()}")
    with meter.stage("read and split events"):
        events = lake.read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts", "device"])
        everyone = np.sort(events["user_id"].astype(str).unique())  # searches and impressions included
        events = events[events["event_type"].isin(LEARNING_TYPES) & events["video_id"].notna()]
        windows = split_windows(events, config)
    tracking.configure(settings)
    client = MlflowClient()

    # A failure of MLflow in the run raises tracking.TrackingFailed, saying whether aliases moved.
    with tracking.training_run(settings.mlflow_uri, run_name=f"train-{config.protocol}", tags=run_tags) as tracked:
        run = tracked.run
        mlflow.log_params(config.params())
        mlflow.set_tags({"dataset": dataset, "protocol": config.protocol})
        mlflow.log_params(
            {
                "data.fingerprint": tracking.lake_fingerprint(lake.event_files()),
                "data.events": len(events),
                "data.videos": len(videos),
                "data.users": events["user_id"].nunique(),
                "data.fit_events": len(windows.fit),
                "data.label_events": len(windows.label),
                "data.label_windows": len(windows.label_sets),
                "data.test_events": len(windows.test),
                "data.test_users": windows.test["user_id"].nunique(),
                "data.label_start": str(windows.label_start),
                "data.test_start": str(windows.test_start),
            }
        )
        use_feast = config.use_feast and config.protocol == "time"
        service = None
        lookup = None
        if use_feast:
            with meter.stage("feature snapshots"):
                step("feature snapshots at the window starts, feast apply")
                next_version = _next_ranker_version(client)
                starts = [label["event_ts"].min() for _, label in windows.earlier] + [
                    windows.label_start,
                    windows.test_start,
                ]
                service = prepare_features(settings, lake, starts, next_version)
                lookup = feast_lookup(settings, service)

        with meter.stage("content vectors"):
            content = tfidf_vectors(video_text(videos).tolist())

        def label_windows():
            # One window's generators at a time: each union is dropped once its rows are built.
            for number, (fit, label) in enumerate(windows.label_sets, start=1):
                with meter.stage(f"generators on fit window {number}"):
                    step(f"generators on fit window {number}/{len(windows.label_sets)} ({len(fit):,} events)")
                    if config.shuffle_labels:
                        rng = np.random.default_rng(config.seed + number - 1)
                        label = label.assign(video_id=rng.permutation(label["video_id"].to_numpy()))
                    union, catalog = fit_union(fit, videos, config, content)
                    step("    fit seconds: " + ", ".join(f"{n} {s:.1f}" for n, s in union.fit_seconds.items()))
                yield union, catalog, label

        step(
            f"ranker on {len(windows.label_sets)} label window(s) ({sum(len(label) for _, label in windows.label_sets):,} events)"
        )
        started = time.perf_counter()
        with meter.stage("ranker rows and training"):
            ranker, rows = train_on_windows(label_windows(), lookup, config.ranker)
        mlflow.log_metric("ranker.train_seconds", time.perf_counter() - started)
        mlflow.log_metric("ranker.best_iteration", ranker.best_iteration)
        mlflow.log_metric("ranker.validation_ndcg_at_10", ranker.validation_ndcg)
        mlflow.log_metric("ranker.training_rows", rows.n_rows)
        mlflow.log_metric("ranker.training_queries", rows.n_queries)
        mlflow.log_metric("ranker.training_rows_mb", rows.nbytes / 2**20)
        mlflow.log_metric("ranker.blend_weight", ranker.blend.weight)
        mlflow.set_tag("ranker.blend_feature", ranker.blend.feature or "none")
        blend = f", blended with {ranker.blend.weight:g} x {ranker.blend.feature}" if ranker.blend.weight else ""
        step(
            f"ranker: {rows.n_queries:,} queries, {rows.n_rows:,} rows ({rows.nbytes / 2**20:.0f} MB float32), "
            f"{ranker.best_iteration + 1} trees{blend}"
        )

        with meter.stage("generators refit before the held-out window"):
            step(f"generators refit on everything before the held-out window ({len(windows.train):,} events)")
            eval_union, eval_catalog = fit_union(windows.train, videos, config, content)
            system = TwoStage(eval_union, eval_catalog, ranker)

        test = held_out_sample(windows.test, config.max_eval_users, config.seed)
        with meter.stage("evaluation"):
            requests = Requests.first_events(system.data, test, as_of=windows.test_start)
            evaluation = evaluate_all(eval_union, system, test, requests, lookup, config.k, baseline_models(eval_union))
            judged = len(evaluation.per_user["two-stage"].users)
            step(
                f"evaluation on the held-out window: {judged:,} users judged ({config.protocol} protocol, {len(test):,} events)"
            )
        table = evaluation.table
        # The parent keeps the two-stage system's figures (the gate's and the registry's); every
        # model gets a nested run with its own, so MLflow's compare view lines the models up.
        for metric, value in table.loc["two-stage"].items():
            if pd.notna(value):
                mlflow.log_metric(tracking.metric_name("two-stage", metric), float(value))
        tracking.log_model_runs(table, {name: config.tuned.get(name, {}) for name in table.index})
        _log_artifacts(table, evaluation.curves, ranker, rows)
        # The served refit below needs the memory; the engagement check needs this system.
        challenger_system = (system, lookup) if config.gate.engagement_check else None
        del system, eval_union, eval_catalog

        step("gate against the champion on the same users")
        challenger = evaluation.per_user["two-stage"]
        champion_versions = registry.champion_versions(client)
        challenger_row = gate_metrics(table.loc["two-stage"])
        champion = registry.load_champion() if champion_versions is not None else None
        if champion is None:
            best = max(NON_PERSONALIZED, key=lambda name: table.loc[name, "ndcg_at_10"])
            decision = registry.decide(
                challenger, evaluation.per_user[best], best, config.gate, challenger_row, gate_metrics(table.loc[best])
            )
        elif champion.feature_service and not use_feast:
            # Its ranker reads Feast features that this protocol does not snapshot: no fair comparison.
            decision = registry.GateDecision(
                False, [(f"the champion {champion_versions} ranks with Feast features ({champion.feature_service}), which the "
                         f"{config.protocol} protocol leaves out: compare by hand, or train with the time protocol")],
                challenger_row, {}, "champion", config.gate,
            )  # fmt: skip
        else:
            with meter.stage("champion refit and evaluation"):
                step(f"champion {champion_versions}: its generators refit on the same events, scored on the same users")
                champion_system, champion_lookup = refit_champion(
                    champion, windows.train, videos, content, settings, use_feast
                )
                champion_requests = Requests.first_events(champion_system.data, test, as_of=windows.test_start)
                champion_eval = evaluate_all(
                    champion_system.union, champion_system, test, champion_requests, champion_lookup, config.k
                )
                if challenger_system is None:
                    del champion_system
            reference_row = gate_metrics(champion_eval.table.loc["two-stage"])
            for metric, value in reference_row.items():
                if value is not None and pd.notna(value):
                    mlflow.log_metric(tracking.metric_name("champion", metric), float(value))
            decision = registry.decide(
                challenger, champion_eval.per_user["two-stage"], "champion", config.gate, challenger_row, reference_row
            )
            if challenger_system is not None:
                with meter.stage("engagement check (simulated viewers)"):
                    step("engagement check: simulated viewers, champion vs challenger")
                    found = engagement(
                        (champion_system, champion_lookup), challenger_system,
                        np.sort(test["user_id"].astype(str).unique()),
                        # Sessions start where the held-out window does (or after the last event).
                        windows.test_start if windows.test_start is not None else events["event_ts"].max(),
                        config.gate,
                    )  # fmt: skip
                decision = with_engagement(decision, found)
                del champion_system
        if config.gate.engagement_check and decision.engagement is None:
            decision.reasons.append("engagement check skipped: there is no champion it could be compared with")
        del champion, challenger_system
        step(f"gate: {decision.summary()}")

        with meter.stage("generators refit on every event (served)"):
            step(f"generators refit on every event for serving ({len(events):,} events, {len(everyone):,} users)")
            served_union, served_catalog = fit_union(events, videos, config, content, users=everyone)
            served = TwoStage(served_union, served_catalog, ranker)

        step("register vidrec-candidates and vidrec-ranker")
        with meter.stage("register"):
            versions = registry.register_system(
                served,
                rows.sample,
                service,
                tags={"run_id": run.info.run_id, "dataset": dataset, "protocol": config.protocol,
                      "data.fingerprint": tracking.lake_fingerprint(lake.event_files())[:16],
                      "fitted_on": "every event up to the run's as-of time"},
            )  # fmt: skip
        tracked.aliases_touched = True
        registry.mark_challenger(client, versions)
        if decision.promoted:
            registry.promote(client, versions)
        registry.record_decision(
            client, run.info.run_id, decision, versions, model_card(config, events, windows, judged)
        )
        mlflow.log_metrics(meter.metrics())
        return TrainResult(run.info.run_id, versions, decision, table, meter.records)


# (champion, challenger) as (system, Feast lookup), the held-out users, the window start, the
# policy -> figures of simulated watch time per session (serving.simulation.engagement_check).
EngagementCheck = Callable[[tuple, tuple, np.ndarray, pd.Timestamp, GatePolicy], dict]


def with_engagement(decision: registry.GateDecision, found: dict) -> registry.GateDecision:
    """The decision with the engagement check's figures; a significant loss blocks the promotion."""
    words = (
        f"engagement: simulated {found['metric']} {found['challenger']:.1f} vs {found['champion']:.1f} "
        f"({found['diff']:+.1f}, CI {found['low']:+.1f} to {found['high']:+.1f}, {found['users']} simulated users): "
        f"{found['verdict']}"
    )
    worse = found["verdict"] == "challenger worse"
    return replace(
        decision,
        promoted=decision.promoted and not worse,
        reasons=[*decision.reasons, words + (": blocked" if worse else "")],
        engagement=found,
    )


def gate_metrics(row: pd.Series | dict) -> dict[str, float]:
    row = dict(row)
    return {
        "ndcg_at_10": row.get("ndcg_at_10"),
        f"candidate_recall_at_{GUARD_K}": row.get(f"candidate_recall_at_{GUARD_K}"),
        "coverage_at_10": row.get("coverage_at_10"),
        "diversity_at_10": row.get("diversity_at_10"),
    }


def _next_ranker_version(client: MlflowClient) -> int:
    try:
        versions = client.search_model_versions(f"name='{registry.RANKER_MODEL}'")
    except Exception:  # the registered model does not exist yet
        versions = []
    return 1 + max((int(v.version) for v in versions), default=0)


def _log_artifacts(table: pd.DataFrame, curves: dict, ranker: RankerModel, rows: TrainingRows) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "metrics.md").write_text(table.to_markdown(floatfmt=".4f") if _has_tabulate() else table.to_string())
        table.to_csv(folder / "metrics.csv")
        (folder / "ndcg_curves.json").write_text(json.dumps(curves, indent=2))
        tracking.plot_metrics_by_model(
            table, ["precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage_at_10", "diversity_at_10"],
            folder / "plots" / "metrics_by_model.png",
        )  # fmt: skip
        tracking.plot_ndcg_curve(curves, folder / "plots" / "ndcg_at_k.png")
        importance = ranker.importance()
        importance.to_csv(folder / "ranker_importance.csv")
        tracking.plot_importance(importance, folder / "plots" / "ranker_importance.png")
        booster = ranker.booster.get_booster()
        scores = np.concatenate([booster.inplace_predict(x) for x in rows.x])
        tracking.plot_score_distributions(scores, rows.labels, folder / "plots" / "score_distributions.png")
        mlflow.log_artifacts(str(folder))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
