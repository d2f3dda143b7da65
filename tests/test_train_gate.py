"""Training runs through the real MLflow client on a local SQLite backend: gate, promote, rollback.

Data: the first 200 users of the real ml-latest-small, ingested into a fresh lake.
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from models import registry
from models.registry import CANDIDATES_MODEL, CHALLENGER, CHAMPION, PREVIOUS, RANKER_MODEL
from models.train import TrainConfig, train_and_gate
from vidrec.settings import Settings


@pytest.fixture(scope="module")
def settings(ml_small, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    raw = tmp_path_factory.mktemp("raw")
    ratings = pd.read_csv(ml_small / "ratings.csv")
    ratings = ratings[ratings.userId <= 200]
    pd.DataFrame(
        {
            "event_id": "r" + ratings.index.astype(str),
            "user_id": ratings.userId.astype(str),
            "video_id": ratings.movieId.astype(str),
            "event_ts": pd.to_datetime(ratings.timestamp, unit="s", utc=True),
            "event_type": "rating",
            "rating": ratings.rating,
        }
    ).to_parquet(raw / "events.parquet")
    movies = pd.read_csv(ml_small / "movies.csv")
    pd.DataFrame(
        {"video_id": movies.movieId.astype(str), "title": movies.title, "genres": movies.genres.str.split("|")}
    ).to_parquet(raw / "videos.parquet")
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(home))
    s = Settings.from_env()
    ingest(open_source("canonical", raw, home), Lake(s.lake_dir))
    yield s
    mp.undo()


def stratified(generators, **kwargs) -> TrainConfig:
    return TrainConfig(protocol="stratified", generators=tuple(generators), use_feast=False, **kwargs)


@pytest.fixture(scope="module")
def runs(settings):
    """Three runs in order: a weak first model, a degraded one, a better one."""
    # Popularity + trending barely beat popularity alone: a small first margin lets it in.
    first = train_and_gate(settings, stratified(["popularity", "trending"], gate=registry.GatePolicy(baseline_gain=0.005)))
    degraded = train_and_gate(settings, stratified(["popularity", "trending", "ease"], shuffle_labels=True))
    better = train_and_gate(settings, stratified(["popularity", "trending", "ease"]))
    return first, degraded, better


def aliases(client: MlflowClient, alias: str) -> dict[str, str | None]:
    return {model: registry.alias_version(client, model, alias) for model in registry.MODELS}


def test_first_model_is_promoted_against_the_baseline(runs):
    first, _, _ = runs
    assert first.decision.promoted and first.decision.against == "baseline"
    assert first.table.loc["two-stage", "ndcg_at_10"] > first.table.loc["popularity", "ndcg_at_10"]


def test_degraded_model_is_blocked_and_champion_stays(runs, settings):
    first, degraded, _ = runs
    assert not degraded.decision.promoted
    assert degraded.decision.against == "champion"
    assert "ndcg_at_10" in degraded.decision.reasons[0]
    run = MlflowClient().get_run(degraded.run_id)
    assert run.data.tags["gate.decision"] == "blocked"
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{degraded.run_id}/gate_report.json"))
    assert report["promoted"] is False and report["versions"] == degraded.versions


def test_better_model_is_promoted_and_aliases_match_the_gate(runs):
    first, degraded, better = runs
    assert better.decision.promoted, better.decision.summary()
    client = MlflowClient()
    assert aliases(client, CHAMPION) == better.versions
    assert aliases(client, PREVIOUS) == first.versions
    # `challenger` marks the newest model under review; promoting it clears the alias.
    assert aliases(client, CHALLENGER) == {CANDIDATES_MODEL: None, RANKER_MODEL: None}
    assert client.get_model_version(RANKER_MODEL, degraded.versions[RANKER_MODEL]).tags["gate.decision"] == "blocked"
    ranker = client.get_model_version(RANKER_MODEL, better.versions[RANKER_MODEL])
    assert ranker.tags[registry.TAG_CANDIDATES_VERSION] == better.versions[CANDIDATES_MODEL]
    assert ranker.tags["gate.decision"] == "promoted"
    run = client.get_run(better.run_id)
    assert run.data.tags["gate.decision"] == "promoted"
    assert "two-stage.ndcg_at_10" in run.data.metrics and "ease.ndcg_at_10" in run.data.metrics
    assert "data.fingerprint" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(better.run_id, "plots")}
    assert {"plots/metrics_by_model.png", "plots/ndcg_at_k.png", "plots/ranker_importance.png"} <= artifacts


def test_champion_loads_back_and_ranks(runs):
    _, _, better = runs
    champion = registry.load_champion()
    assert champion.versions == better.versions
    from models.two_stage import Requests

    users = champion.system.data.user_rows(["1", "2"])
    recs = champion.system.rank(Requests.at(users, pd.Timestamp("2018-01-01", tz="UTC")), k=5)
    assert recs.groupby("user_id").size().tolist() == [5, 5]
    seen = set(champion.system.data.video_ids[champion.system.data.matrix[users[0]].indices])
    assert not seen & set(recs[recs.user_id == "1"].video_id)


def test_rollback_restores_previous_and_can_be_undone(runs):
    first, _, better = runs
    client = MlflowClient()
    registry.rollback(client)
    assert aliases(client, CHAMPION) == first.versions
    assert aliases(client, PREVIOUS) == better.versions
    registry.rollback(client)
    assert aliases(client, CHAMPION) == better.versions


def test_rollback_without_previous_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path))
    from models import tracking

    tracking.configure(Settings.from_env())
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(MlflowClient())


def test_gate_policy_guards():
    policy = registry.GatePolicy(min_gain=0.01, guards={"coverage_at_10": 0.02})
    champion = {"ndcg_at_10": 0.30, "coverage_at_10": 0.10}
    assert registry.decide({"ndcg_at_10": 0.32, "coverage_at_10": 0.09}, champion, {}, policy).promoted
    blocked = registry.decide({"ndcg_at_10": 0.35, "coverage_at_10": 0.05}, champion, {}, policy)
    assert not blocked.promoted and "guard coverage_at_10 regressed" in blocked.summary()
    assert not registry.decide({"ndcg_at_10": 0.305, "coverage_at_10": 0.1}, champion, {}, policy).promoted


def test_time_protocol_learns_from_rolling_label_windows(settings):
    """Last in this module: it trains (and may promote) one more model."""
    from models.train import split_windows

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

    result = train_and_gate(settings, TrainConfig(generators=("popularity", "trending", "ease"), use_feast=False, label_windows=3))
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["data.label_windows"] == "3" and run.data.params["label_windows"] == "3"
    assert run.data.metrics["ranker.training_rows"] > 0
    assert "two-stage" in result.table.index
