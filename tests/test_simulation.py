"""The simulated audience: seeded viewers with position bias, the service's wire format and logs,
and an offline A/B test in which a trained two-stage system must beat popularity and a ranker
trained on shuffled labels.

Seeds of the acceptance test: synthetic world `SyntheticConfig(n_users=300, n_videos=300,
n_events=40_000, seed=7)`; ranker `RankerConfig(n_estimators=60, early_stopping_rounds=10)` (its
seed 42); label shuffle seed 5; simulations seed 11 (300 users x 3 sessions, k=10, share 0.5,
simulated from 2026-03-03, the day after the world's events end). Run with -s to see the figures.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from movielens import movielens_frames

from feature_repo import schema
from feature_repo.synthetic import SyntheticConfig, build_world, generate
from feature_repo.text import tfidf_vectors, video_text
from models.ease import EASE
from models.hybrid import HybridUnion
from models.interactions import Interactions
from models.item_cf import ItemKNN
from models.lifecycle import experiments
from models.lifecycle.config import RankerConfig
from models.popularity import Popularity
from models.protocols import rolling_time_splits
from models.ranker import CatalogSide, TrainingRows, train_ranker_rows
from models.two_stage import TwoStage, train_on_windows
from serving import ab
from serving.feedback import FeedbackLog
from serving.schemas import FeedbackRequest
from serving.simulation import (
    SESSION_GAP_S,
    Audience,
    GeneratorSystem,
    HttpTarget,
    OfflineTarget,
    Slate,
    ViewerModel,
    affinity_scale,
    movielens_audience,
    simulate,
    synthetic_audience,
)

START = pd.Timestamp("2026-03-03", tz="UTC")  # after every synthetic event of the default window


class RankingTarget:
    """A test double of the *target* (not of our stack): serves `order(user_index, ts)` minus the
    excluded videos, with the service's A/B assignment and deterministic request ids."""

    def __init__(self, audience: Audience, order: Callable[[int, pd.Timestamp], list[str]], share: float = 0.5):
        self.index = {u: i for i, u in enumerate(audience.user_ids)}
        self.order, self.share = order, share
        self.events: list[dict] = []
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def recommend(self, user_id: str, k: int, device: str, ts: pd.Timestamp, exclude: list[str]) -> Slate:
        blocked = set(exclude)
        videos = [v for v in self.order(self.index[user_id], ts) if v not in blocked][:k]
        return Slate(f"{user_id}@{ts.isoformat()}", ab.assign(user_id, "sim-test", self.share), videos)

    def send(self, events: list[dict]) -> None:
        with self._lock:
            self.events.extend(events)
            self.batches.append(len(events))


def by_affinity(audience: Audience, best_first: bool) -> Callable[[int, pd.Timestamp], list[str]]:
    def order(user_index: int, ts: pd.Timestamp) -> list[str]:
        affinity = audience.affinity(user_index, audience.video_ids)
        rows = np.argsort(-affinity if best_first else affinity, kind="stable")
        return list(audience.video_ids[rows])

    return order


@pytest.fixture(scope="module")
def audience() -> Audience:
    return synthetic_audience(SyntheticConfig(n_users=400, n_videos=200, n_events=0, seed=3))


def sorted_events(events: list[dict]) -> list[tuple]:
    return sorted(tuple(e.values()) for e in events)


# ---- the viewer model ---------------------------------------------------------------------------


def test_same_seed_same_events_whatever_the_concurrency(audience):
    def run(concurrency: int, seed: int = 1) -> tuple[RankingTarget, dict]:
        target = RankingTarget(audience, lambda user, ts: list(audience.video_ids))
        summary = simulate(audience, target, users=80, concurrency=concurrency, seed=seed, start=START, batch_size=200)
        return target, summary.as_dict()

    one, one_summary = run(1)
    four, four_summary = run(4)
    assert one.events and sorted_events(one.events) == sorted_events(four.events)
    one_summary.pop("elapsed_s"), four_summary.pop("elapsed_s")
    assert one_summary == four_summary
    assert max(four.batches) < 200 + 60  # a batch goes out once it passes batch_size
    other, _ = run(1, seed=2)
    assert sorted_events(other.events) != sorted_events(one.events)


def test_events_are_canonical_feedback_on_one_timeline(audience, tmp_path):
    target = RankingTarget(audience, by_affinity(audience, best_first=True))
    viewer = ViewerModel()
    summary = simulate(audience, target, users=60, sessions_per_user=4, k=10, seed=4, start=START)
    events = pd.DataFrame(target.events)
    assert len(events) == summary.total.clicks + summary.total.plays + summary.total.watches + (
        summary.total.likes + summary.total.dislikes
    )
    # What the service's /feedback and the feedback log take, every row of it.
    FeedbackRequest.model_validate({"events": target.events[:1000]})
    latest = pd.to_datetime(events["event_ts"], utc=True).max()
    logged = FeedbackLog(tmp_path, lambda: audience.video_ids).append(target.events, now=latest)
    assert not logged.rejected and len(logged.accepted) == len(events)
    assert set(events["event_type"]) <= {"click", "play", "watch", "like", "dislike"}
    assert events["watch_time_s"].notna().eq(events["event_type"] == "watch").all()
    assert events["position"].between(1, 10).all() and events["event_id"].isna().all()
    ts = pd.to_datetime(events["event_ts"], utc=True)
    end = START + pd.Timedelta(seconds=4 * viewer.session_spacing_s)
    assert ts.min() >= START and ts.max() < end
    # Sessions of a user never overlap or run into each other (> 30 minutes apart).
    spans = events.assign(ts=ts).groupby(["user_id", "session_id"])["ts"].agg(["min", "max"]).reset_index()
    spans = spans.sort_values(["user_id", "min"])
    gaps = (spans.groupby("user_id")["min"].shift(-1) - spans["max"]).dropna().dt.total_seconds()
    assert len(gaps) and (gaps > SESSION_GAP_S).all()
    assert (spans["max"] - spans["min"]).dt.total_seconds().max() <= viewer.max_session_s + 10


def test_better_slates_earn_more_clicks_watch_time_and_sessions(audience):
    runs = {}
    for name, best_first in (("best", True), ("worst", False)):
        target = RankingTarget(audience, by_affinity(audience, best_first))
        runs[name] = simulate(audience, target, sessions_per_user=3, seed=5, start=START).total
    best, worst = runs["best"], runs["worst"]
    print(f"\nbest-affinity slates: {best.as_dict()}\nworst-affinity slates: {worst.as_dict()}")
    assert best.ctr > 3 * worst.ctr
    assert best.watch_time_s > 3 * worst.watch_time_s
    assert best.slates / best.sessions > 1.2 * (worst.slates / worst.sessions)  # satisfied viewers ask again


def test_clicks_fall_with_position(audience):
    def shuffled(user_index: int, ts: pd.Timestamp) -> list[str]:
        # Every slate in a random order (seeded by the request): affinity is the same at every slot.
        key = hashlib.sha256(f"{user_index}@{ts.isoformat()}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(key[:8], "big"))
        return list(rng.permutation(audience.video_ids))

    target = RankingTarget(audience, shuffled)
    simulate(audience, target, sessions_per_user=4, seed=6, start=START)
    events = pd.DataFrame(target.events)
    clicks = events[events["event_type"] == "click"]["position"].value_counts().reindex(range(1, 11), fill_value=0)
    print(f"\nclicks per position: {clicks.to_dict()}")
    examination = ViewerModel().examination(np.arange(1, 11))
    assert np.corrcoef(clicks.to_numpy(), examination)[0, 1] > 0.9
    assert clicks[1] > 2 * clicks[10] and clicks.iloc[:3].sum() > clicks.iloc[-3:].sum() * 1.6


def test_viewer_model_refuses_sessions_that_could_merge():
    with pytest.raises(ValueError, match="sessionising gap"):
        ViewerModel(min_session_gap_s=20 * 60)
    with pytest.raises(ValueError, match="session_spacing_s"):
        ViewerModel(max_session_s=8 * 3600)


# ---- audiences ----------------------------------------------------------------------------------


def test_movielens_audience_is_ease_truth_on_the_synthetic_scale(ml_small):
    events, videos = movielens_frames(ml_small, max_user=40)
    audience = movielens_audience(events, videos)
    scale = affinity_scale()
    assert "EASE" in audience.caveat and "optimistic" in audience.caveat
    assert len(audience.user_ids) == events["user_id"].nunique()
    catalog = audience.affinity(0, list(audience.video_ids))
    assert catalog.mean() == pytest.approx(scale.mean, abs=0.15) and catalog.max() <= scale.high
    for user_index in range(5):  # what a user rated is what the truth says they like
        rated = events.loc[events["user_id"] == audience.user_ids[user_index], "video_id"].unique()
        everything = audience.affinity(user_index, list(audience.video_ids))
        assert audience.affinity(user_index, list(rated)).mean() > everything.mean() + 1
    assert audience.affinity(0, ["no-such-movie"])[0] == scale.low
    assert (audience.duration_s(list(audience.video_ids[:3])) > 3000).all()


def test_synthetic_audience_is_the_world_itself():
    config = SyntheticConfig(n_users=20, n_videos=30, n_events=0, seed=9)
    audience, world = synthetic_audience(config), build_world(config)
    np.testing.assert_allclose(
        audience.affinity(3, list(world.videos["video_id"])), world.affinity(np.full(30, 3), np.arange(30))
    )
    np.testing.assert_allclose(audience.duration_s(list(world.videos["video_id"])), world.video_duration_s)
    assert audience.caveat == "synthetic world, seed 9"


# ---- targets ------------------------------------------------------------------------------------


def test_a_live_target_refuses_a_timeline_that_ends_in_the_future(audience):
    # The service rejects future events, so this is refused before any request is made
    # (tests/test_serving.py runs HttpTarget against the real BentoML service).
    target = HttpTarget("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="after now"):
        simulate(audience, target, users=1, start=pd.Timestamp.now(tz="UTC"))
    target.close()


@pytest.fixture(scope="module")
def small_platform(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Audience]:
    config = SyntheticConfig(n_users=80, n_videos=100, n_events=8_000, seed=5)
    out = generate(config, tmp_path_factory.mktemp("world")).out_dir
    events = pa.concat_tables([pq.read_table(p) for p in sorted((out / "events").glob("*.parquet"))]).to_pandas()
    videos = pq.read_table(out / "videos.parquet").to_pandas()
    return events, videos, synthetic_audience(config)


def test_offline_target_writes_what_the_service_writes(small_platform, tmp_path):
    events, videos, audience = small_platform
    newcomer = audience.user_ids[0]  # unknown to the systems: served their popularity order
    known = events[events["user_id"] != newcomer]
    data = Interactions.from_events(known, catalog=videos["video_id"], weighting="binary")
    systems = {
        "champion": GeneratorSystem(Popularity().fit(data)),
        "challenger": GeneratorSystem(EASE(100.0).fit(data)),
    }
    target = OfflineTarget(systems, "sim-offline", 0.5, tmp_path)
    summary = simulate(audience, target, sessions_per_user=2, seed=3, start=START)
    assert set(summary.per_variant) == {"champion", "challenger"}

    shown = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "impressions").rglob("*.parquet")]).to_pandas()
    assert len(shown) == summary.total.impressions and shown.columns.tolist() == schema.IMPRESSIONS.names
    assert (shown["variant"] == [ab.assign(u, "sim-offline", 0.5) for u in shown["user_id"]]).all()
    assert (shown.loc[shown["user_id"] == newcomer, "served_from"] == "popular").all()
    unknown = ~shown["user_id"].isin(data.user_ids)  # the newcomer, and users with no events at all
    assert (shown.loc[unknown, "served_from"] == "popular").all() and (
        shown.loc[~unknown, "served_from"] == "realtime"
    ).all()
    assert target.fallback_slates == shown.loc[unknown, "request_id"].nunique() > 0
    feedback = target.feedback.read_events()
    logged = pa.concat_tables([pq.read_table(p) for p in target.feedback.batches()]).to_pandas()
    assert len(feedback) == summary.total.clicks + summary.total.plays + summary.total.watches + (
        summary.total.likes + summary.total.dislikes
    )
    # Every event names the slot that caused it: same video at that request's position.
    joined = logged.merge(shown, on=["request_id", "position"], how="left", suffixes=("", "_shown"))
    assert (joined["video_id"] == joined["video_id_shown"]).all()
    # Each slate excludes what the session already showed: no video twice in one session.
    per_session = logged[logged["event_type"] == "click"].groupby("session_id")["video_id"]
    assert (per_session.nunique() == per_session.size()).all()

    end = START + pd.Timedelta(seconds=2 * ViewerModel().session_spacing_s)
    report = experiments.analyze(experiments.read_logs(tmp_path, "sim-offline", START, end), 0.5)
    assert report.counts.impressions == summary.total.impressions and report.counts.unattributed_events == 0
    assert report.counts.users == summary.total.users


# ---- acceptance: an offline A/B test on the synthetic world -------------------------------------------


def fitted(events: pd.DataFrame, videos: pd.DataFrame, vectors) -> tuple[HybridUnion, CatalogSide]:
    data = Interactions.from_events(events, catalog=videos["video_id"], weighting="binary")
    generators = {"popularity": Popularity(), "ease": EASE(l2=100.0), "item-cf": ItemKNN()}
    union = HybridUnion(generators, per_source_k=30).fit(data)
    return union, CatalogSide.build(videos, data, vectors)


def shuffled_labels(rows: TrainingRows, seed: int) -> TrainingRows:
    """The same rows and queries, labels permuted across all rows: a ranker that learns nothing."""
    labels = np.random.default_rng(seed).permutation(rows.labels)
    out = copy.copy(rows)
    out.y = np.split(labels, np.cumsum([len(y) for y in rows.y])[:-1])
    return out


def ab_test(audience, systems, experiment: str, root: Path) -> experiments.ExperimentReport:
    target = OfflineTarget(systems, experiment, 0.5, root)
    summary = simulate(audience, target, sessions_per_user=3, k=10, concurrency=2, seed=11, start=START)
    end = START + pd.Timedelta(seconds=3 * ViewerModel().session_spacing_s)
    report = experiments.analyze(experiments.read_logs(root, experiment, START, end), 0.5)
    print(f"\n{experiment}: {summary.total.slates} slates in {summary.elapsed_s:.1f} s; {report.verdict()}")
    for name, m in report.metrics.items():
        print(
            f"  {name:26s} champion {m.champion.value:9.4f}  challenger {m.challenger.value:9.4f}  "
            f"diff {m.diff:+9.4f} [{m.diff_low:+.4f}, {m.diff_high:+.4f}]  p={m.p_value:.3g}"
        )
    assert not report.srm.flagged and report.counts.unattributed_events == 0
    return report


@pytest.mark.slow
def test_offline_ab_test_ranks_the_trained_two_stage_first(tmp_path):
    config = SyntheticConfig(n_users=300, n_videos=300, n_events=40_000, seed=7)
    out = generate(config, tmp_path / "world").out_dir
    events = pa.concat_tables([pq.read_table(p) for p in sorted((out / "events").glob("*.parquet"))]).to_pandas()
    videos = pq.read_table(out / "videos.parquet").to_pandas()
    vectors = tfidf_vectors(video_text(videos).tolist())

    windows = [(*fitted(fit, videos, vectors), label) for fit, label in rolling_time_splits(events, (0.7, 0.8, 0.9))]
    ranker_config = RankerConfig(n_estimators=60, early_stopping_rounds=10)
    ranker, rows = train_on_windows(windows, config=ranker_config)
    noise = train_ranker_rows(shuffled_labels(rows, seed=5), ranker_config)
    union, catalog = fitted(events, videos, vectors)  # served like production: generators refit on everything
    two_stage = TwoStage(union, catalog, ranker)
    popularity = GeneratorSystem(union.generators["popularity"])
    audience = synthetic_audience(config)

    first = ab_test(audience, {"champion": popularity, "challenger": two_stage}, "sim-popularity", tmp_path / "a")
    for metric in ("ctr", "watch_time_per_session"):
        assert first.metrics[metric].verdict == experiments.BETTER and first.metrics[metric].diff_low > 0, metric

    shuffled = TwoStage(union, catalog, noise)
    second = ab_test(audience, {"champion": two_stage, "challenger": shuffled}, "sim-shuffled", tmp_path / "b")
    assert second.metrics["ctr"].verdict == experiments.WORSE and second.metrics["ctr"].diff_high < 0
    assert second.metrics["watch_time_per_session"].diff < 0
