"""Training runs through the real MLflow client on a local SQLite backend: gate, promote, rollback.

Data: the first 200 users of the real ml-latest-small, ingested into a fresh lake.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from movielens import movielens_frames, write_canonical

from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from models.lifecycle import registry
from models.lifecycle.config import GatePolicy, TrainConfig
from models.lifecycle.registry import CANDIDATES_MODEL, CHALLENGER, CHAMPION, PREVIOUS, RANKER_MODEL
from models.lifecycle.train import train_and_gate, with_engagement
from vidrec import pipeline
from vidrec.settings import Settings

pytestmark = pytest.mark.slow  # whole training runs with the gate, on real MovieLens


@pytest.fixture(scope="module")
def settings(ml_small, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    raw = tmp_path_factory.mktemp("raw")
    events, videos = movielens_frames(ml_small, 200)
    write_canonical(events, videos.drop(columns="tags"), raw)
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(home))
    s = Settings.from_env()
    ingest(open_source("canonical", raw, home), Lake(s.lake_dir))
    yield s
    mp.undo()


def stratified(generators, **kwargs) -> TrainConfig:
    return TrainConfig(protocol="stratified", generators=tuple(generators), use_feast=False, label_folds=2, **kwargs)


FULL = ["popularity", "trending", "ease"]


@pytest.fixture(scope="module")
def runs(settings):
    """Runs in order, each gated against the champion the one before left:

    first      the full system, no champion yet: judged against the best of popularity/trending
    identical  the same configuration again: no difference on any user, blocked
    shuffled   the ranker trained on shuffled labels, with the engagement check: blocked
    weak       a popularity-only system: worse, blocked; then promoted by hand in the registry
    better     the full system against that popularity champion: promoted
    """
    first = train_and_gate(settings, stratified(FULL))
    identical = train_and_gate(settings, stratified(FULL))
    # With the engagement check: simulated viewers (truth: EASE on every event) also judge it.
    shuffled = train_and_gate(
        settings,
        stratified(FULL, shuffle_labels=True, gate=GatePolicy(engagement_check=True, engagement_users=150)),
        engagement=pipeline.engagement_checker(settings),
    )
    weak = train_and_gate(settings, stratified(["popularity"]))
    registry.promote(MlflowClient(), weak.versions)  # a reviewer promotes by hand, as in the MLflow UI
    better = train_and_gate(settings, stratified(FULL))
    return {"first": first, "identical": identical, "shuffled": shuffled, "weak": weak, "better": better}


def aliases(client: MlflowClient, alias: str) -> dict[str, str | None]:
    return {model: registry.alias_version(client, model, alias) for model in registry.MODELS}


def test_first_model_is_judged_against_the_best_non_personalized_baseline(runs):
    first = runs["first"]
    table = first.table
    best = max(("popularity", "trending"), key=lambda name: table.loc[name, "ndcg_at_10"])
    assert first.decision.against == f"baseline ({best})"
    interval = first.decision.intervals["ndcg_at_10"]
    assert interval.reference == pytest.approx(table.loc[best, "ndcg_at_10"])
    assert interval.low > 0 and first.decision.promoted, first.decision.summary()
    assert interval.n_users == table.loc["two-stage", "n_users"]


def test_identical_challenger_is_blocked(runs):
    decision = runs["identical"].decision
    assert decision.against == "champion" and not decision.promoted
    interval = decision.intervals["ndcg_at_10"]
    assert interval.low <= 0 <= interval.high and abs(interval.diff) < 1e-9, decision.summary()
    assert "inconclusive" in decision.reasons[0]


def test_shuffled_labels_are_blocked_and_champion_stays(runs):
    shuffled = runs["shuffled"]
    assert not shuffled.decision.promoted
    assert shuffled.decision.intervals["ndcg_at_10"].diff < 0
    run = MlflowClient().get_run(shuffled.run_id)
    assert run.data.tags["gate.decision"] == "blocked"
    assert "CI" in run.data.tags["gate.reasons"] and int(run.data.tags["gate.n_users"]) > 100
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{shuffled.run_id}/gate_report.json"))  # strict JSON
    assert report["promoted"] is False and report["versions"] == shuffled.versions
    assert report["intervals"]["ndcg_at_10"]["high"] < 0.05 and report["n_users"] > 100


def test_the_engagement_check_plays_simulated_viewers_and_reports_them(runs):
    shuffled = runs["shuffled"]
    found = shuffled.decision.engagement
    assert found is not None and found["metric"] == "watch_time_per_session" and found["users"] > 50
    assert found["diff"] < 0 and found["low"] <= found["diff"] <= found["high"]  # viewers watch less of it
    assert any(r.startswith("engagement: simulated watch_time_per_session") for r in shuffled.decision.reasons)
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{shuffled.run_id}/gate_report.json"))
    assert report["engagement"]["verdict"] == found["verdict"] and "favours" in report["engagement"]["caveat"]
    assert runs["first"].decision.engagement is None  # off by default


def test_a_significant_engagement_loss_blocks_a_promotion():
    passed = registry.GateDecision(True, ["ndcg better"], {}, {}, "champion", GatePolicy())
    figures = {"metric": "watch_time_per_session", "champion": 700.0, "challenger": 500.0, "diff": -200.0,
               "low": -300.0, "high": -100.0, "users": 300}  # fmt: skip
    blocked = with_engagement(passed, {**figures, "verdict": "challenger worse"})
    assert not blocked.promoted and blocked.reasons[-1].endswith("challenger worse: blocked")
    unclear = with_engagement(passed, {**figures, "high": 10.0, "verdict": "inconclusive"})
    assert unclear.promoted and unclear.engagement["verdict"] == "inconclusive"


def test_weaker_model_is_blocked_as_worse(runs):
    decision = runs["weak"].decision
    assert not decision.promoted and decision.intervals["ndcg_at_10"].high < 0, decision.summary()
    assert "worse" in decision.reasons[0]


def test_better_model_is_promoted_over_a_popularity_champion(runs):
    weak, better = runs["weak"], runs["better"]
    decision = better.decision
    assert decision.promoted and decision.against == "champion", decision.summary()
    assert decision.intervals["ndcg_at_10"].low > 0
    client = MlflowClient()
    assert aliases(client, CHAMPION) == better.versions
    assert aliases(client, PREVIOUS) == weak.versions
    # `challenger` marks the newest model under review; promoting it clears the alias.
    assert aliases(client, CHALLENGER) == {CANDIDATES_MODEL: None, RANKER_MODEL: None}
    assert (
        client.get_model_version(RANKER_MODEL, runs["shuffled"].versions[RANKER_MODEL]).tags["gate.decision"]
        == "blocked"
    )
    ranker = client.get_model_version(RANKER_MODEL, better.versions[RANKER_MODEL])
    assert ranker.tags[registry.TAG_CANDIDATES_VERSION] == better.versions[CANDIDATES_MODEL]
    assert ranker.tags["gate.decision"] == "promoted"
    assert "every event" in ranker.description and "evaluation fit" in ranker.description
    run = client.get_run(better.run_id)
    assert run.data.tags["gate.decision"] == "promoted"
    assert "PROMOTED" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["gate.ndcg_at_10.low"] > 0
    assert "two-stage.ndcg_at_10" in run.data.metrics and "ease.ndcg_at_10" not in run.data.metrics
    # Every evaluated model is a nested run with its metrics under plain names (MLflow's compare view).
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{better.run_id}'"
    )
    by_model = {c.data.tags["vidrec.model"]: c for c in children}
    assert set(by_model) == set(better.table.index) and {"two-stage", "ease", "popularity"} <= set(by_model)
    for model, child in by_model.items():
        assert child.data.metrics["ndcg_at_10"] == pytest.approx(better.table.loc[model, "ndcg_at_10"])
    assert "data.fingerprint" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(better.run_id, "plots")}
    assert {"plots/metrics_by_model.png", "plots/ndcg_at_k.png", "plots/ranker_importance.png"} <= artifacts


def test_served_champion_knows_every_user_with_history(runs, settings):
    """Registered versions are refit on every event: no user with history is cold start."""
    champion = registry.load_champion()
    events = Lake(settings.lake_dir).read_events(columns=["user_id"])
    assert set(events["user_id"].astype(str)) <= set(champion.system.data.user_ids.astype(str))


def test_champion_loads_back_and_ranks(runs):
    better = runs["better"]
    champion = registry.load_champion()
    assert champion.versions == better.versions
    from models.two_stage import Requests

    users = champion.system.data.user_rows(["1", "2"])
    recs = champion.system.rank(Requests.at(users, pd.Timestamp("2018-01-01", tz="UTC")), k=5)
    assert recs.groupby("user_id").size().tolist() == [5, 5]
    seen = set(champion.system.data.video_ids[champion.system.data.matrix[users[0]].indices])
    assert not seen & set(recs[recs.user_id == "1"].video_id)


def test_rollback_restores_previous_and_can_be_undone(runs):
    weak, better = runs["weak"], runs["better"]
    client = MlflowClient()
    registry.rollback(client)
    assert aliases(client, CHAMPION) == weak.versions
    assert aliases(client, PREVIOUS) == better.versions
    registry.rollback(client)
    assert aliases(client, CHAMPION) == better.versions


def test_rollback_without_previous_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path))
    from models.lifecycle import tracking

    tracking.configure(Settings.from_env())
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(MlflowClient())


def test_time_protocol_learns_from_rolling_label_windows(settings):
    """Last in this module: it trains (and may promote) one more model."""
    from models.lifecycle.train import split_windows

    events = Lake(settings.lake_dir).read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts"])
    one = split_windows(events, TrainConfig(label_windows=1))
    three = split_windows(events, TrainConfig(label_windows=3))
    assert len(one.label_sets) == 1 and len(three.label_sets) == 3
    assert three.label_sets[-1][1].equals(one.label)  # the main window is the same
    for fit, label in three.label_sets:
        assert fit["event_ts"].max() < label["event_ts"].min()
        assert label["event_ts"].max() < one.test["event_ts"].min()  # never a held-out event
    # The final refit sees every held-out user's history (fit + label would lose the users the
    # fit window never saw: on ml-latest-small, 22 of the 28 held-out users).
    assert set(one.test["user_id"]) <= set(one.train["user_id"])
    assert one.train["event_ts"].max() < one.test["event_ts"].min()
    starts = [label["event_ts"].min() for _, label in three.label_sets]
    assert starts == sorted(starts)
    with pytest.raises(ValueError, match="label_windows must be at least 1"):
        split_windows(events, TrainConfig(label_windows=0))

    result = train_and_gate(
        settings, TrainConfig(generators=("popularity", "trending", "ease"), use_feast=False, label_windows=3)
    )
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["data.label_windows"] == "3" and run.data.params["label_windows"] == "3"
    assert run.data.metrics["ranker.training_rows"] > 0
    assert "two-stage" in result.table.index
    # Served: refit on every event, so the held-out window's users (and any after it) are known.
    served = registry.load_system(result.versions)
    assert set(events["user_id"].astype(str)) <= set(served.data.user_ids.astype(str))
    assert int(run.data.params["data.test_users"]) == one.test["user_id"].nunique()


def test_guards_block_a_gain_that_costs_too_much_coverage():
    """A challenger better on nDCG whose lists collapse onto a few videos: the coverage guard stops it."""
    from models.lifecycle.significance import PerUser

    rng = np.random.default_rng(0)
    users = np.array([f"u{i:03d}" for i in range(300)])
    varied = rng.integers(0, 500, size=(300, 10))
    narrow = np.tile(np.arange(10), (300, 1))
    champion = PerUser(users, {"ndcg_at_10": rng.uniform(0.1, 0.3, 300)}, varied, 500)
    challenger = PerUser(users, {"ndcg_at_10": champion.values["ndcg_at_10"] + 0.05}, narrow, 500)
    policy = GatePolicy(guards={"coverage_at_10": 0.05}, n_boot=300)
    decision = registry.decide(challenger, champion, "champion", policy)
    assert not decision.promoted and decision.intervals["ndcg_at_10"].low > 0
    assert decision.intervals["coverage_at_10"].diff < -0.5 and "guard coverage_at_10" in decision.summary()
    assert registry.decide(challenger, champion, "champion", GatePolicy(guards={}, n_boot=300)).promoted


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_artifact_of_a_run_is_strict_json(runs):
    """NaN/Infinity are not JSON: every .json a training run logs (gate report, tables, model
    metadata) must parse with a strict parser, for the MLflow UI and for any client."""
    client = MlflowClient()
    for name in ("first", "shuffled", "better"):
        run_id = runs[name].run_id
        pending, checked = [""], 0
        while pending:
            folder = pending.pop()
            for item in client.list_artifacts(run_id, folder or None):
                if item.is_dir:
                    pending.append(item.path)
                elif item.path.endswith(".json"):
                    _strict_json(mlflow.artifacts.load_text(f"runs:/{run_id}/{item.path}"))
                    checked += 1
        assert checked >= 1, name
