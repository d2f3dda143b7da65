"""`vidrec tune`: an Optuna search on a validation split of the benchmark's train part.

Data: the first 150 users of the real ml-latest-small, split as `vidrec benchmark` splits it.
MLflow: a SQLite store under a temporary VIDREC_HOME, as in test_train_gate.py.
"""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from models.catalog import generator_factories, init_params
from models.lifecycle import registry
from models.lifecycle.benchmark import load_dataset, split_events
from models.lifecycle.config import RankerConfig
from models.lifecycle.ranker_tuning import tune_ranker
from models.lifecycle.tuning import (
    SEARCH_SPACES,
    VALIDATION_METRIC,
    default_params,
    ranker_entry,
    save_tuned,
    space_names,
    split_tuned,
    tunable,
    tune_generator,
    tuned_params,
    validation_split,
)
from vidrec import pipeline
from vidrec.cli import app
from vidrec.settings import Settings

USERS = 150
runner = CliRunner()


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"], frame["video_id"], strict=True))


@pytest.fixture(scope="module")
def subset(ml_small, tmp_path_factory):
    """(events, videos, raw folder): real ratings of the first USERS users, canonical and as files."""
    ratings = pd.read_csv(ml_small / "ratings.csv")
    ratings = ratings[ratings.userId <= USERS]
    movies = pd.read_csv(ml_small / "movies.csv")
    raw = tmp_path_factory.mktemp("ml-subset")
    ratings.to_csv(raw / "ratings.csv", index=False)
    movies.to_csv(raw / "movies.csv", index=False)
    events = pd.DataFrame(
        {
            "user_id": ratings.userId.astype(str),
            "video_id": ratings.movieId.astype(str),
            "event_type": "rating",
            "rating": ratings.rating,
            "event_ts": pd.to_datetime(ratings.timestamp, unit="s", utc=True),
        }
    )
    videos = pd.DataFrame({"video_id": movies.movieId.astype(str), "title": movies.title})
    return events, videos, raw


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(tmp_path_factory.mktemp("home")))
    yield Settings.from_env()
    mp.undo()


@pytest.fixture(scope="module")
def study(subset, settings, tmp_path_factory):
    """A 3-trial study of item-cf on the stratified protocol, written to a temporary tuned file."""
    events, videos, _ = subset
    train, test = split_events(events, "stratified", seed=42)
    path = tmp_path_factory.mktemp("tuned") / "subset.json"
    seen = []
    result = tune_generator(
        "item-cf", train, test, videos, dataset="subset", protocol="stratified", trials=3,
        settings=settings, path=path, progress=seen.append,
    )  # fmt: skip
    return result, path, seen, videos


def test_study_writes_file_whose_params_round_trip(study):
    result, path, seen, videos = study
    entry = json.loads(path.read_text())["item-cf"]
    assert set(entry["params"]) == {"k_neighbors", "shrink"} == set(result.best_params)
    assert entry["trials"] == 3 and entry["protocol"] == "stratified" and entry["tuned_at"].endswith("Z")
    assert entry[VALIDATION_METRIC] == pytest.approx(max(t.value for t in seen))
    # Trial 0 is the catalog default, so the best is never below it on validation.
    assert seen[0].params == default_params("item-cf", videos, space_names("item-cf"))
    assert result.validation_after >= result.validation_before > 0
    assert 0 < result.test_before <= 1 and 0 < result.test_after <= 1

    model = generator_factories(videos, tuned=tuned_params("subset", path=path))["item-cf"]()
    assert {name: init_params(model)[name] for name in entry["params"]} == pytest.approx(entry["params"])


def test_saving_another_generator_keeps_the_first(study, subset, settings):
    _, path, _, videos = study
    events, _, _ = subset
    train, test = split_events(events, "stratified", seed=42)
    tune_generator("user-cf", train, test, videos, dataset="subset", protocol="stratified", trials=1, path=path)
    assert set(json.loads(path.read_text())) == {"item-cf", "user-cf"}


def test_trials_are_nested_mlflow_runs(study, settings):
    result, _, seen, _ = study
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == 3
    by_trial = {int(run.data.tags["trial"]): run for run in children}
    for trial in seen:
        run = by_trial[trial.number]
        assert run.data.metrics[VALIDATION_METRIC] == pytest.approx(trial.value)
        assert set(run.data.params) == {"k_neighbors", "shrink"}
    parent = client.get_run(result.run_id)
    assert parent.data.tags["vidrec.kind"] == "tune" and parent.data.params["generator"] == "item-cf"
    assert parent.data.metrics[f"{VALIDATION_METRIC}.tuned"] == pytest.approx(result.validation_after)


def test_ranker_blend_is_chosen_on_validation_and_read_by_training(study, subset, settings, monkeypatch, tmp_path):
    _, path, _, _ = study
    _, _, raw = subset
    # The two-stage system's cross features read canonical videos (genres): ingest the files as `benchmark` does.
    events, videos = load_dataset("movielens-small", raw, tmp_path / "lake", tmp_path / "cache")
    train, test = split_events(events[events["user_id"].astype(int) <= 60], "stratified", seed=42)  # 60: fast
    tuned = tune_ranker(train, test, videos, dataset="subset", protocol="stratified", settings=settings, path=path)
    content = json.loads(path.read_text())
    assert "item-cf" in content  # the generators' entries stay
    entry = content["ranker@stratified"]  # kept per protocol
    grid = entry["validation_grid"]  # the trees alone, and every (z_<generator>, weight)
    assert entry["trials"] == len(grid) > 20 and "none x 0" in grid and "z_item-cf x 0.5" in grid
    assert entry[VALIDATION_METRIC] == pytest.approx(max(grid.values()), abs=1e-6) == tuned.validation_after
    assert entry[f"{VALIDATION_METRIC}_defaults"] == pytest.approx(grid["none x 0"], abs=1e-6)
    assert 0 < tuned.test_before <= 1 and 0 < tuned.test_after <= 1
    params = entry["params"]
    chosen = f"{params['blend_feature'] or 'none'} x {params['blend_weight']:g}"
    assert grid[chosen] == max(grid.values())
    run = MlflowClient(tracking_uri=settings.mlflow_uri).get_run(tuned.run_id)
    assert run.data.params["best.blend_weight"] == str(params["blend_weight"])

    # Generators and the ranker take their own parts of the file; `train --tuned-for` reads both.
    generators, ranker = split_tuned(tuned_params("subset", path=path, protocol="stratified"))
    assert "ranker" not in generators and ranker == params
    monkeypatch.setenv("VIDREC_TUNED_DIR", str(path.parent))
    config = pipeline.train_config({"tuned_for": "subset", "protocol": "stratified", "ranker": {"seed": 3}})
    assert "ranker" not in config.tuned and config.ranker == RankerConfig(seed=3, **params)


def test_ranker_settings_are_kept_per_protocol(tmp_path):
    """Tuning the ranker under one protocol keeps the other's blend; each run reads its own, and a
    file from before the per-protocol keys is still read for the protocol its entry names."""
    path = tmp_path / "d.json"
    save_tuned(path, "item-cf", {"params": {"k_neighbors": 50}})
    save_tuned(
        path,
        ranker_entry("stratified"),
        {"params": {"blend_feature": "z_ease", "blend_weight": 0.25}, "protocol": "stratified"},
    )
    save_tuned(
        path,
        ranker_entry("user-time"),
        {"params": {"blend_feature": "z_als", "blend_weight": 1.0}, "protocol": "user-time"},
    )
    assert set(json.loads(path.read_text())) == {"item-cf", "ranker@stratified", "ranker@user-time"}
    for protocol, feature in (("stratified", "z_ease"), ("user-time", "z_als")):
        generators, ranker = split_tuned(tuned_params("d", path=path, protocol=protocol))
        assert generators == {"item-cf": {"k_neighbors": 50}} and ranker["blend_feature"] == feature
    assert split_tuned(tuned_params("d", path=path, protocol="time"))[1] == {}  # none tuned under time
    assert "ranker" not in tuned_params("d", path=path)  # no protocol: the generators only

    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"ranker": {"params": {"blend_weight": 0.5}, "protocol": "stratified"}}))
    assert tuned_params("legacy", path=legacy, protocol="stratified") == {"ranker": {"blend_weight": 0.5}}
    assert tuned_params("legacy", path=legacy, protocol="user-time") == {}


@pytest.mark.parametrize("protocol", ["stratified", "time", "user-time"])
def test_validation_split_is_carved_from_train_only(subset, protocol):
    events, _, _ = subset
    train, test = split_events(events, protocol, seed=42)
    fit, validation = validation_split(train, protocol, seed=42)
    assert len(validation) > 0 and len(fit) > 0
    assert not pairs(validation) & pairs(test)
    assert pairs(validation) | pairs(fit) <= pairs(train)
    assert not pairs(validation) & pairs(fit)
    if protocol == "time":
        assert fit["timestamp"].max() < validation["timestamp"].min()


def test_a_test_part_overlapping_validation_is_refused(subset, tmp_path):
    events, videos, _ = subset
    train, _ = split_events(events, "stratified", seed=42)
    with pytest.raises(ValueError, match="validation pairs are in the test part"):
        tune_generator("user-cf", train, train, videos, dataset="x", protocol="stratified", trials=1,
                       path=tmp_path / "x.json")  # fmt: skip
    assert not (tmp_path / "x.json").exists()


def test_bad_tuned_params_name_generator_and_parameter(subset):
    _, videos, _ = subset
    with pytest.raises(ValueError, match=r"generator 'als': unknown parameter\(s\) \['factor'\]"):
        generator_factories(videos, tuned={"als": {"factor": 8}})
    with pytest.raises(ValueError, match="unknown generator 'magic'"):
        generator_factories(videos, tuned={"magic": {"k": 1}})
    with pytest.raises(ValueError, match="generator 'bpr'.*learning_rate"):
        generator_factories(videos, tuned={"bpr": {"learning_rate": 0.0}})
    assert set(generator_factories(videos, tuned=None)) == set(generator_factories(videos))
    assert tuned_params("nothing-tuned") is None


def test_catalog_defaults_lie_inside_every_search_space(subset):
    _, videos, _ = subset
    assert {"als", "bpr", "ease", "item-cf", "user-cf", "svd"} <= set(tunable(videos))
    for generator in tunable(videos):
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(0)).ask()
        SEARCH_SPACES[generator](trial)
        defaults = default_params(generator, videos, list(trial.distributions))
        for name, distribution in trial.distributions.items():
            assert distribution._contains(distribution.to_internal_repr(defaults[name])), (generator, name)


def test_cli_tune_then_benchmark_uses_the_file(subset, tmp_path, monkeypatch):
    _, _, raw = subset
    monkeypatch.setenv("VIDREC_TUNED_DIR", str(tmp_path / "tuned"))
    common = ["--dataset", "movielens-small", "--data-dir", str(raw), "--protocol", "stratified"]
    result = runner.invoke(app, ["tune", "--generator", "user-cf", "--trials", "2", *common])
    assert result.exit_code == 0, result.output
    assert "user-cf #1" in result.output and "catalog defaults -> tuned" in result.output
    saved = json.loads((tmp_path / "tuned" / "ml-latest-small.json").read_text())["user-cf"]

    bench = ["benchmark", *common, "--models", "user-cf", "--encoder", "tfidf", "--out", str(tmp_path / "b")]
    result = runner.invoke(app, bench)
    assert result.exit_code == 0, result.output
    assert "tuned hyperparameters from" in result.output
    assert json.loads((tmp_path / "b" / "results.json").read_text())["tuned"] == {"user-cf": saved["params"]}
    result = runner.invoke(app, [*bench, "--no-tuned"])
    assert result.exit_code == 0 and json.loads((tmp_path / "b" / "results.json").read_text())["tuned"] == {}

    saved["params"]["neighbours"] = 3
    (tmp_path / "tuned" / "ml-latest-small.json").write_text(json.dumps({"user-cf": saved}))
    result = runner.invoke(app, bench)
    assert result.exit_code == 2 and "'user-cf'" in result.output and "'neighbours'" in result.output
