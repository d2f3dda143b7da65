"""The stage functions behind the DAG tasks (vidrec.pipeline, models.lifecycle.batch), without Airflow.

Real lake, real ingest, on a small seeded synthetic platform.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from feature_repo.ingest import ingest
from feature_repo.lake import Lake, lake_as_of
from feature_repo.sources import open_source
from feature_repo.synthetic import SyntheticConfig, generate
from models.lifecycle.batch import active_users
from vidrec import pipeline
from vidrec.settings import Settings


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(n_users=80, n_videos=50, n_events=3_000, days=10, seed=3), out)
    return out


@pytest.fixture
def lake(synthetic, tmp_path) -> Lake:
    lake = Lake(tmp_path / "lake")
    ingest(open_source("synthetic", synthetic, tmp_path), lake)
    return lake


def events_before(lake: Lake, end: pd.Timestamp) -> int:
    events = lake.read_events(columns=["event_ts"])
    return int((events["event_ts"] < end).sum())


@pytest.mark.parametrize("end", ["2026-01-06T00:00:00Z", "2026-01-06T13:30:00Z", "2027-01-01T00:00:00Z"])
def test_lake_as_of_holds_exactly_the_events_before_the_end(lake, tmp_path, end):
    end_ts = pd.Timestamp(end)
    with lake_as_of(lake.root, end_ts.to_pydatetime(), tmp_path / "snapshots") as root:
        view = Lake(root)
        got = view.read_events(columns=["event_ts", "event_id"])
        assert len(got) == events_before(lake, end_ts)
        assert (got["event_ts"] < end_ts).all()
        assert len(view.read_table("videos")) == len(lake.read_table("videos"))
    assert not root.exists()
    assert len(lake.read_events(columns=["event_id"])) == 3_000  # the lake itself is untouched


def test_lake_as_of_is_not_changed_by_a_later_commit(lake, tmp_path, synthetic):
    with lake_as_of(lake.root, datetime(2027, 1, 1, tzinfo=UTC), tmp_path / "snap") as root:
        before = Lake(root).read_events(columns=["event_id"])["event_id"].tolist()
        # Another ingest rewrites partitions by rename: the view keeps what it linked.
        extra = tmp_path / "extra"
        (extra / "events").mkdir(parents=True)
        events = pd.concat([pd.read_parquet(p) for p in sorted((synthetic / "events").glob("*.parquet"))]).head(50)
        events = events.assign(event_id="x-" + events["event_id"].astype(str))
        events.to_parquet(extra / "events" / "part-0.parquet")
        ingest(open_source("canonical", extra, tmp_path), lake)
        assert Lake(root).read_events(columns=["event_id"])["event_id"].tolist() == before
    assert len(lake.read_events(columns=["event_id"])) == 3_050


def test_active_users_are_those_with_an_event_in_the_window(lake):
    start, end = pd.Timestamp("2026-01-08T00:00:00Z"), pd.Timestamp("2026-01-10T12:00:00Z")
    events = lake.read_events(columns=["user_id", "event_ts"])
    expected = sorted(set(events[(events["event_ts"] >= start) & (events["event_ts"] < end)]["user_id"]))
    assert active_users(lake, start.to_pydatetime(), end.to_pydatetime()) == expected
    assert active_users(lake, datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC)) == []


def test_validation_passes_records_the_lake_and_fails_above_the_threshold(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    report = tmp_path / "ingest.json"
    out = pipeline.ingest_sources("synthetic", str(synthetic), str(report))
    assert out["errors"] == 0 and out["sources"] == ["dataset"]
    checked = pipeline.validate_ingest(str(report), 0.05)
    assert checked["quarantine_rates"]["dataset.events"] == 0.0
    assert pipeline.check_lake_validated()["fingerprint"] == checked["fingerprint"]

    # A report with 10% quarantined rows fails at 5% and passes at 20%.
    data = json.loads(report.read_text())
    data["sources"][0]["tables"]["events"].update(quarantined=300, reasons={"missing_user_id": 300})
    report.write_text(json.dumps(data))
    with pytest.raises(
        pipeline.ValidationFailed, match=r"events quarantined 300 of 3,000 rows \(10.0% > 5.0%; missing_user_id: 300\)"
    ):
        pipeline.validate_ingest(str(report), 0.05)
    with pytest.raises(pipeline.ValidationFailed, match="last validation of the lake failed"):
        pipeline.check_lake_validated()
    pipeline.validate_ingest(str(report), 0.2)
    pipeline.check_lake_validated()

    # The lake changes behind validation's back: training refuses it.
    (settings.lake_dir / "events").joinpath(
        sorted(p.name for p in (settings.lake_dir / "events").iterdir())[0], "part-0.parquet"
    ).unlink()
    with pytest.raises(pipeline.ValidationFailed, match="changed since its last validation"):
        pipeline.check_lake_validated()


def test_an_unreadable_file_is_reported_not_ingested(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad"
    (bad / "events").mkdir(parents=True)
    (bad / "events" / "part-0.parquet").write_bytes(b"not parquet")
    report = tmp_path / "ingest.json"
    out = pipeline.ingest_sources("canonical", str(bad), str(report))
    assert out == {"report": str(report), "sources": ["dataset"], "errors": 1, "lake_events": 0}
    with pytest.raises(pipeline.ValidationFailed, match="part-0.parquet"):
        pipeline.validate_ingest(str(report), 0.05)


def test_train_config_from_params():
    config = pipeline.train_config(
        {"protocol": "stratified", "generators": ["popularity", "ease"], "per_source_k": 30, "ranker": {"max_depth": 6},
         "min_gain": 0.01, "guards": {"coverage_at_10": 0.5}}
    )  # fmt: skip
    assert config.protocol == "stratified" and config.generators == ("popularity", "ease")
    assert config.ranker.max_depth == 6 and config.gate.min_gain == 0.01
    assert config.gate.guards == {"coverage_at_10": 0.5}
    assert pipeline.train_config({"generators": "popularity, item-cf"}).generators == ("popularity", "item-cf")
    with pytest.raises(ValueError, match="unknown ranker hyperparameter"):
        pipeline.train_config({"ranker": {"depth": 3}})
    with pytest.raises(ValueError, match="unknown protocol 'random'"):
        pipeline.train_config({"protocol": "random"})
    user_time = pipeline.train_config({"protocol": "user-time", "min_test_users": 50})
    assert user_time.protocol == "user-time" and user_time.min_test_users == 50
    # The tuned hyperparameters saved under version control for ml-latest-small, by dataset name.
    tuned = pipeline.train_config({"tuned_for": "movielens-small", "protocol": "stratified"})
    assert tuned.tuned["als"]["factors"] > 0 and "tuned.als.factors" in tuned.params()
    from models.catalog import generator_factories

    videos = pd.DataFrame({"video_id": ["1"], "title": ["t"], "genres": [["Drama"]]})
    assert generator_factories(videos, tuned=tuned.tuned)["als"]().factors == tuned.tuned["als"]["factors"]
    assert tuned.ranker.blend_feature == "z_ease" and tuned.ranker.blend_weight > 0  # `vidrec tune --generator ranker`
    # Without the generator the blend reads, training leaves the blend off instead of failing late.
    without_ease = pipeline.train_config(
        {"tuned_for": "movielens-small", "protocol": "stratified", "generators": "popularity,item-cf"}
    )
    assert without_ease.ranker.blend_weight == 0 and without_ease.ranker.blend_feature is None
    # The blend was chosen under the stratified protocol: the time protocol trains without it.
    time_config = pipeline.train_config({"tuned_for": "movielens-small", "protocol": "time"})
    assert time_config.ranker.blend_weight == 0 and time_config.tuned["als"] == tuned.tuned["als"]
    with pytest.raises(ValueError, match="no tuned hyperparameters for 'nowhere'"):
        pipeline.train_config({"tuned_for": "nowhere"})


def test_as_of_times_step_back_from_the_interval_end():
    end = datetime(2026, 2, 1, tzinfo=UTC)
    assert pipeline.as_of_times(end, 3) == [datetime(2026, 1, 30, tzinfo=UTC), datetime(2026, 1, 31, tzinfo=UTC), end]
    assert pipeline.as_of_times("2026-02-01T00:00:00+00:00", 1) == [end]
