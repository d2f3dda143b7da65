"""`vidrec benchmark` end to end on real MovieLens: outputs that anyone can recompute."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vidrec.cli import app

pytestmark = pytest.mark.slow  # whole `vidrec benchmark` runs on ml-latest-small

runner = CliRunner()
MODELS = "popularity,trending,ease,two-stage"


@pytest.fixture(scope="module")
def stratified_run(ml_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = runner.invoke(
        app,
        ["benchmark", "--dataset", "movielens-small", "--data-dir", str(ml_small), "--protocol", "stratified",
         "--models", MODELS, "--encoder", "tfidf", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


def test_outputs_table_results_recs_and_split(stratified_run):
    out, output = stratified_run
    assert "| model |" in output and "ndcg_at_10" in output
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results["rows"]] == MODELS.split(",")
    versus = results["two_stage_vs_best"]  # a paired interval against the best generator (EASE here)
    assert versus["metric"] == "ndcg_at_10 vs ease" and versus["n_users"] == results["users"]
    assert versus["low"] <= versus["diff"] <= versus["high"] and "two-stage against the best single generator" in output
    for name in MODELS.split(","):
        recs = pd.read_parquet(out / "recs" / f"{name}.parquet")
        assert list(recs.columns) == ["user_id", "video_id", "rank", "score"]
        assert recs.groupby("user_id")["rank"].max().max() == 10
    train = pd.read_parquet(out / "split" / "train.parquet")
    test = pd.read_parquet(out / "split" / "test.parquet")
    assert list(train.columns) == ["user_id", "video_id", "rating", "timestamp"]
    assert len(train) + len(test) == 100_836
    # Epoch seconds within MovieLens' span (1996-2018), whatever the lake's timestamp resolution.
    assert train["timestamp"].min() > 820_000_000 and train["timestamp"].max() < 1_540_000_000
    assert not set(zip(train.user_id, train.video_id, strict=False)) & set(
        zip(test.user_id, test.video_id, strict=False)
    )


def test_precision_recomputes_from_written_files(stratified_run):
    out, _ = stratified_run
    results = {r["model"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    test = pd.read_parquet(out / "split" / "test.parquet")
    truth = test.groupby("user_id")["video_id"].agg(set)
    recs = pd.read_parquet(out / "recs" / "ease.parquet")
    hits = recs.apply(lambda r: r.video_id in truth.get(r.user_id, set()), axis=1)
    precision = hits.groupby(recs.user_id).sum().div(10).mean()
    assert precision == pytest.approx(results["ease"]["precision_at_10"], abs=1e-9)


def test_ease_beats_popularity_directionally(stratified_run):
    out, _ = stratified_run
    results = {r["model"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert results["ease"]["ndcg_at_10"] > results["popularity"]["ndcg_at_10"] * 1.3
    assert results["popularity"]["personalization_at_10"] < results["ease"]["personalization_at_10"]


def test_split_dir_reproduces_results(stratified_run, ml_small, tmp_path):
    out, _ = stratified_run
    result = runner.invoke(
        app,
        ["benchmark", "--data-dir", str(ml_small), "--split-dir", str(out / "split"), "--models", "popularity,ease",
         "--encoder", "tfidf", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    again = {r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    first = {r["model"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for name in ("popularity", "ease"):
        assert again[name]["ndcg_at_10"] == pytest.approx(first[name]["ndcg_at_10"])


def test_bad_split_dir_and_unknown_model_fail_clearly(ml_small, tmp_path):
    result = runner.invoke(app, ["benchmark", "--data-dir", str(ml_small), "--split-dir", str(tmp_path)])
    assert result.exit_code == 2 and "train.parquet is missing" in result.output
    result = runner.invoke(
        app, ["benchmark", "--data-dir", str(ml_small), "--models", "popularity,magic", "--encoder", "tfidf",
              "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert result.exit_code == 2 and "unknown model(s) ['magic']" in result.output


def test_time_protocol_trains_on_the_past(ml_small, tmp_path):
    result = runner.invoke(
        app, ["benchmark", "--data-dir", str(ml_small), "--protocol", "time", "--models", "popularity,two-stage",
              "--encoder", "tfidf", "--out", str(tmp_path)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    train = pd.read_parquet(tmp_path / "split" / "train.parquet")
    test = pd.read_parquet(tmp_path / "split" / "test.parquet")
    assert train.timestamp.max() <= test.timestamp.min()
    results = {r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert np.isfinite(results["popularity"]["recall_at_10"])
    # Directional: the ranker, trained on rolling windows inside the train split, uses what
    # popularity knows and more (on this window it is about 0.24 against 0.11).
    assert results["two-stage"]["ndcg_at_10"] > 1.5 * results["popularity"]["ndcg_at_10"]
    assert len(pd.read_parquet(tmp_path / "recs" / "two-stage.parquet")) > 0


def test_user_time_protocol_judges_every_user(ml_small, tmp_path):
    result = runner.invoke(
        app, ["benchmark", "--data-dir", str(ml_small), "--protocol", "user-time", "--models", "popularity,ease",
              "--encoder", "tfidf", "--out", str(tmp_path)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    train = pd.read_parquet(tmp_path / "split" / "train.parquet")
    test = pd.read_parquet(tmp_path / "split" / "test.parquet")
    assert test.groupby("user_id").size().eq(5).all() and test.user_id.nunique() == 610
    latest_train = train.groupby("user_id").timestamp.max()
    assert (latest_train.reindex(test.user_id).to_numpy() <= test.timestamp.to_numpy()).all()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["users"] > 600
    rows = {r["model"]: r for r in results["rows"]}
    assert rows["ease"]["ndcg_at_10"] > rows["popularity"]["ndcg_at_10"]
