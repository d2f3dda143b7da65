"""The online service for real: a champion trained on real MovieLens data and registered in MLflow
(SQLite), features materialized into Feast's SQLite online store, and `bentoml serve` on a free
127.0.0.1 port, called with `bentoml.SyncHTTPClient` and raw HTTP.

One server and one registry per module: read-only checks first, then the feedback log across a
restart, the online store going away and coming back, and last the registry moving (hot reload)
and an A/B test between two versions. Each test leaves the champion as it found it, and what a
test needs comes from a fixture (`second_version`), so any test also runs alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from bentoml.exceptions import BentoMLException
from champion import build_champion, local_settings, train_champion
from mlflow import MlflowClient
from typer.testing import CliRunner

from feature_repo import store as feast_store
from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from models.lifecycle import experiments, registry, tracking
from models.ranker import RankerModel, ScoreBlend
from models.two_stage import Requests, TwoStage, ranking_frame
from serving import ab, precomputed
from serving.app import RecommenderApp
from serving.config import ServingConfig
from serving.engine import Engine
from serving.online import OnlineFeatures, VideoTable
from serving.process import ServerProcess
from vidrec import cli, pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "test-reload-token"
AT = datetime(2024, 5, 7, 13, 0, tzinfo=UTC)  # a Tuesday, 13:00 UTC: no time-of-day rule


@pytest.fixture(scope="module")
def champion(ml_small, tmp_path_factory):
    """The first 200 MovieLens users: lake, features, online store, a registered champion."""
    yield build_champion(local_settings(tmp_path_factory.mktemp("serving-home")), ml_small, max_users=200)


@pytest.fixture(scope="module")
def server(champion):
    env = {
        "VIDREC_HOME": str(champion.settings.home),
        "VIDREC_RELOAD_TOKEN": TOKEN,
        "VIDREC_RELOAD_POLL_S": "2",
        "VIDREC_STORE_RETRY_S": "1",
        "VIDREC_SERVE_WORKERS": "2",
    }
    with ServerProcess(env=env, log_path=champion.settings.home / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with bentoml.SyncHTTPClient(server.url, server_ready_timeout=60) as c:
        yield c


def post(server, path: str, body=None, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


def seen_ids(champion, user_id: str) -> set[str]:
    data = champion.system.data
    row = data.user_rows([user_id])[0]
    return set(data.video_ids[data.matrix[row].indices].astype(str))


def feast_online_lookup(champion):
    """Features for ranking-frame rows through Feast's own online API (the reference for parity)."""

    def lookup(entities: pd.DataFrame) -> pd.DataFrame:
        rows = entities[["user_id", "video_id", "request_ts", "device"]].assign(
            request_ts=pd.to_datetime(entities["request_ts"], utc=True)
        )
        return feast_store.online_features(
            rows.to_dict("records"), champion.feature_service, settings=champion.settings
        )

    return lookup


def local_app(champion, **changes) -> RecommenderApp:
    config = dataclasses.replace(
        ServingConfig.from_env(champion.settings), precomputed_url=None, poll_seconds=0, **changes
    )
    app = RecommenderApp(config)
    assert app.load() is not None, app.load_error
    return app


# ---- the online path equals the offline two-stage system ---------------------------------------------


def test_online_ranking_equals_the_offline_two_stage_system(champion):
    """Same candidates, same features (Feast online + on-demand request features), same scores."""
    settings = champion.settings
    tracking.configure(settings)
    system = champion.system
    online = OnlineFeatures(settings)
    engine = Engine(system, champion.versions, "champion", online.video_table(system.data.video_ids))

    feast_online = feast_online_lookup(champion)
    assert any(f.startswith("request_features__") for f in engine.features)  # the parity covers them
    for user_id, device in (("1", "tv"), ("42", "mobile"), ("150", "unknown")):
        row = system.data.user_rows([user_id])[0]
        ranked = engine.rank(row, online.user_row(user_id), AT, device)
        assert len(ranked.rows) >= 150
        requests = Requests(np.array([row]), pd.Series([pd.Timestamp(AT)]), pd.Series([device]))
        frame = ranking_frame(system.union, system.catalog, requests, feast_online).set_index("video_row")
        assert sorted(frame.index) == ranked.rows.tolist()
        frame = frame.loc[ranked.rows]
        offline = frame[engine.features].astype(np.float32).to_numpy()
        np.testing.assert_allclose(ranked.features, offline, rtol=1e-6, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ranked.scores, system.ranker.predict(frame), rtol=1e-6, atol=1e-6)

    # With the candidate cache on, the pool's margins are kept (serving/split_trees.py): the same
    # scores as the whole booster's, for a first request, a repeat (kept margins), another device
    # and another hour. The champion's early-stopped ranker is one tree: this one has 40, some
    # reading the request's device and hour.
    all_trees = TwoStage(system.union, system.catalog, context_ranker(system, feast_online))
    videos = online.video_table(system.data.video_ids)
    cached = Engine(all_trees, champion.versions, "champion", videos, candidate_cache=50)
    whole = Engine(all_trees, champion.versions, "champion", videos)
    assert whole.split is None and cached.split is not None
    assert cached.split.n_static > 0 and cached.split.n_per_request > 0
    row = system.data.user_rows(["42"])[0]
    signatures = set()
    for device, at in (("tv", AT), ("tv", AT), ("mobile", AT), ("mobile", AT.replace(hour=21)), ("tv", AT)):
        ranked = cached.rank(row, online.user_row("42"), at, device)
        expected = whole.rank(row, online.user_row("42"), at, device)
        assert ranked.rows.tolist() == expected.rows.tolist()
        np.testing.assert_allclose(ranked.scores, expected.scores, rtol=1e-5, atol=1e-5)
        signatures.add(cached.split.signature(ranked.features[0]))
    assert 1 < len(cached.candidate_cache.fresh(row).margins[3]) == len(signatures) < 5  # repeats reuse margins

    # The kept blend partner and margins, with videos excluded (the session's recent videos): a
    # cached pool leaves them out after ranking, the whole booster's pool before choosing candidates.
    partner = next(f for f in engine.features if f.startswith("z_"))
    ranker = dataclasses.replace(all_trees.ranker, blend=ScoreBlend(partner, 0.5))
    blended = TwoStage(system.union, system.catalog, ranker)
    cached = Engine(blended, champion.versions, "champion", videos, candidate_cache=50)
    whole = Engine(blended, champion.versions, "champion", videos)
    exclude = np.sort(cached.rank(row, online.user_row("42"), AT, "tv").rows[::7])
    for device, at, out in (("tv", AT, None), ("tv", AT, exclude), ("mobile", AT, exclude), ("tv", AT, None)):
        ranked = cached.rank(row, online.user_row("42"), at, device, out)
        expected = whole.rank(row, online.user_row("42"), at, device)
        keep = ~np.isin(expected.rows, out if out is not None else [])
        assert out is None or 0 < keep.sum() < len(keep)
        assert ranked.rows.tolist() == expected.rows[keep].tolist()
        np.testing.assert_allclose(ranked.features, expected.features[keep], rtol=1e-6, atol=1e-6, equal_nan=True)
        # the blend standardizes over the candidates that are left
        np.testing.assert_allclose(ranked.scores, whole.score(expected.features[keep]), rtol=1e-5, atol=1e-5)

    # A ranker with a blend (`vidrec tune --generator ranker`) scores the same online and offline.
    blended = TwoStage(system.union, system.catalog, dataclasses.replace(system.ranker, blend=ScoreBlend(partner, 0.5)))
    blended_engine = Engine(blended, champion.versions, "champion", online.video_table(system.data.video_ids))
    row = system.data.user_rows(["42"])[0]
    ranked = blended_engine.rank(row, online.user_row("42"), AT, "tv")
    requests = Requests(np.array([row]), pd.Series([pd.Timestamp(AT)]), pd.Series(["tv"]))
    frame = ranking_frame(system.union, system.catalog, requests, feast_online).set_index("video_row").loc[ranked.rows]
    expected = blended.ranker.predict(frame.reset_index())
    np.testing.assert_allclose(ranked.scores, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected, system.ranker.predict(frame.reset_index()))


def context_ranker(system: TwoStage, lookup) -> RankerModel:
    """A 40-tree ranker over the champion's features, taught a target that depends on the
    request's device and hour, for 30 users at two contexts."""
    users = system.data.user_rows([str(u) for u in range(1, 31)])
    frames = []
    for hour, device in ((8, "tv"), (20, "mobile")):
        at = pd.Series([pd.Timestamp(AT.replace(hour=hour))] * len(users))
        requests = Requests(users, at, pd.Series([device] * len(users)))
        frames.append(ranking_frame(system.union, system.catalog, requests, lookup))
    frame = pd.concat(frames, ignore_index=True)
    assert {"log_popularity", "ctx_device_tv", "ctx_hour"} <= set(system.ranker.features)
    target = frame["log_popularity"] * np.where(frame["ctx_device_tv"] > 0, 1.0, -1.0) + frame["ctx_hour"] / 24
    labels = pd.qcut(target.rank(method="first"), 4, labels=False).to_numpy()
    queries = pd.factorize(frame["user_id"].astype(str) + "|" + frame["ctx_hour"].astype(str))[0]
    order = np.argsort(queries, kind="stable")
    model = xgb.XGBRanker(n_estimators=40, max_depth=3, n_jobs=1, random_state=0)
    model.fit(frame[system.ranker.features].astype(np.float32).iloc[order], labels[order], qid=queries[order])
    return dataclasses.replace(system.ranker, booster=model, best_iteration=-1)


def test_the_online_user_read_equals_feasts_get_online_features(champion):
    """`OnlineFeatures.user_rows` reads one level below `get_online_features`: the same values (and
    stored times), for known users and for one the store has never seen."""
    settings = champion.settings
    online = OnlineFeatures(settings)
    store = online.store
    refs = [f"{name}:{f.name}" for name in feast_store.USER_VIEWS for f in store.get_feature_view(name).features]
    users = ["1", "42", "150", "no-such-user"]
    for with_times in (False, True):
        ours = online.user_rows(users, with_times=with_times)
        response = store.get_online_features(
            features=refs, entity_rows=[{"user_id": u} for u in users], full_feature_names=True
        )
        columns = response.to_dict(include_event_timestamps=with_times)
        columns.pop("user_id__ts", None)  # the entity's own "time": not a feature
        for i, row in enumerate(ours):
            assert row.keys() == columns.keys()
            for name, values in columns.items():
                assert row[name] == values[i] or (row[name] != row[name] and values[i] != values[i]), name
    assert sum(v is not None for k, v in ours[0].items() if k != "user_id") > 10
    assert all(v is None for k, v in ours[3].items() if k != "user_id" and not k.endswith("__ts"))


# ---- recommend, similar, health over HTTP -------------------------------------------------------------


def test_recommendations_exclude_seen_and_excluded_videos(champion, client):
    user = "1"
    first = client.recommend(user_id=user, k=10, context={"device": "tv", "timestamp": AT.isoformat()})
    ids = [item["video_id"] for item in first["items"]]
    assert len(ids) == 10 == len(set(ids))
    assert not set(ids) & seen_ids(champion, user)
    assert first["served_from"] == "realtime" and first["degraded"] is False
    assert first["candidates"] >= 150
    assert first["variant"] == "champion" and first["model_versions"] == champion.versions
    assert [item["rank"] for item in first["items"]] == list(range(1, 11))
    for item in first["items"]:
        assert item["sources"] and set(item["sources"]) <= set(champion.system.union.generators)
        assert item["reason"] and item["ranker_score"] is not None
    second = client.recommend(
        user_id=user, k=10, exclude=ids[:3], context={"device": "tv", "timestamp": AT.isoformat()}
    )
    assert not {item["video_id"] for item in second["items"]} & set(ids[:3])


def test_cold_start_adapts_to_the_context(champion, server):
    videos = Lake(champion.settings.lake_dir).read_table("videos").set_index("video_id")
    durations = {}
    for device in ("tv", "mobile"):
        body = post(
            server,
            "/recommend",
            {"user_id": "someone-new", "k": 10, "context": {"device": device, "timestamp": AT.isoformat()}},
        ).json()
        assert body["served_from"] == "cold_start" and body["degraded"] is False and len(body["items"]) == 10
        durations[device] = videos.loc[[i["video_id"] for i in body["items"]], "duration_s"].mean()
    assert durations["tv"] > durations["mobile"]  # long videos on the TV, short ones on the phone


def test_similar_videos_and_unknown_video(champion, client, server):
    found = client.similar(video_id="1", k=5)  # Toy Story
    assert len(found["items"]) == 5 and "1" not in [i["video_id"] for i in found["items"]]
    assert all(set(i["sources"]) <= {"content", "collaborative"} and i["sources"] for i in found["items"])
    missing = post(server, "/similar", {"video_id": "no-such-video", "k": 5})
    assert missing.status_code == 404 and "no-such-video" in missing.json()["error"]
    with pytest.raises(BentoMLException) as err:
        client.similar(video_id="no-such-video", k=5)
    assert err.value.error_code == 404


def test_health_readiness_and_metrics(server):
    assert httpx.get(server.url + "/livez").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    status = post(server, "/status", {}).json()
    assert status["ready"] and status["models_loaded"] and status["online_store"] == "ok"
    post(server, "/recommend", {"user_id": "2"})
    metrics = httpx.get(server.url + "/metrics").text
    assert "vidrec_recommendations_total" in metrics and 'served_from="realtime"' in metrics
    assert "bentoml_service_request_duration_seconds" in metrics
    # No challenger, no experiment: no per-request assignment line (test_ab_split... sees them).
    assert "user=2 experiment=ranker-ab" not in server.log_tail(500_000)


BAD_INPUTS = [
    ("/recommend", {"user_id": "1", "k": 0}, 400, "k"),
    ("/recommend", {"user_id": "1", "k": 101}, 400, "less than or equal to 100"),
    ("/recommend", {"user_id": "1", "k": "10"}, 400, "valid integer"),
    ("/recommend", {"user_id": "1", "k": 2.5}, 400, "k"),
    ("/recommend", {"user_id": 1}, 400, "user_id"),
    ("/recommend", {"k": 5}, 400, "user_id"),
    ("/recommend", {"user_id": ""}, 400, "user_id"),
    ("/recommend", {"user_id": "1", "colour": "red"}, 400, "colour"),
    ("/recommend", {"user_id": "1", "context": {"device": "fridge"}}, 400, "device"),
    ("/recommend", {"user_id": "1", "context": {"timestamp": "next tuesday"}}, 400, "timestamp"),
    ("/recommend", {"user_id": "1", "context": {"device": "tv", "mood": "happy"}}, 400, "mood"),
    ("/recommend", {"user_id": "1", "exclude": "1"}, 400, "exclude"),
    ("/recommend", {"user_id": "1", "exclude": ["x"] * 1001}, 400, "exclude"),
    ("/recommend", [1, 2, 3], 400, "validation error"),
    ("/similar", {"video_id": "1", "k": -1}, 400, "k"),
    ("/similar", {"video_id": None}, 400, "video_id"),
    ("/feedback", {"events": []}, 400, "events"),
    ("/feedback", {"events": [{"user_id": "1", "video_id": "1", "event_type": "watch"}] * 1001}, 400, "events"),
    ("/feedback", {"events": [{"user_id": "1", "when": "now"}]}, 400, "when"),
    ("/feedback", {"events": [{"user_id": "1", "rating": "five"}]}, 400, "rating"),
    ("/feedback", {"event": []}, 400, "event"),
    ("/reload", {"force": True}, 400, "force"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"), BAD_INPUTS, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD_INPUTS)]
)
def test_bad_input_gets_a_4xx_naming_the_problem(server, path, body, status, says):
    response = post(server, path, body)
    assert response.status_code == status, response.text
    assert says in response.text


def test_malformed_bodies_get_4xx_never_500(server):
    cases = [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b"", {"content-type": "application/json"}, 400),
        (b"\xff\xfe\x00", {"content-type": "application/json"}, 400),
        (b'{"user_id": "1"}', {"content-type": "multipart/form-data; boundary=x"}, 415),
        (b"user_id=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b'{"user_id": "' + b"x" * 1_100_000 + b'"}', {"content-type": "application/json"}, 413),
    ]
    for body, headers, status in cases:
        response = httpx.post(server.url + "/recommend", content=body, headers=headers, timeout=30)
        assert response.status_code == status, (body[:40], response.text[:300])
    # Odd but valid inputs are served, not crashed on.
    for body in ({"user_id": "ünïcødé ✓", "k": 100}, {"user_id": "1", "context": {"timestamp": "9999-12-31T23:59:59Z"}},
                 {"user_id": "1", "exclude": ["1", "1", "unknown"]}, {"user_id": " 1 "}):  # fmt: skip
        assert post(server, "/recommend", body).status_code == 200, body


# ---- precomputed lists --------------------------------------------------------------------------------


def test_fresh_precomputed_lists_are_served(champion, server):
    settings = champion.settings
    url = f"sqlite:///{settings.home / 'serving' / 'precomputed.db'}"
    user = "7"
    row = champion.system.data.user_rows([user])[0]
    recs = champion.system.rank(
        Requests.at(np.array([row]), pd.Timestamp(AT)), k=40, lookup=feast_online_lookup(champion)
    )
    precomputed.write_recommendations(url, recs, champion.versions)
    body = post(server, "/recommend", {"user_id": user, "k": 10, "exclude": [recs["video_id"].iloc[0]]}).json()
    assert body["served_from"] == "precomputed" and body["degraded"] is False
    ids = [i["video_id"] for i in body["items"]]
    assert set(ids) <= set(recs["video_id"]) and recs["video_id"].iloc[0] not in ids
    # Lists from another model, or too old, are ignored: the real-time path answers.
    other = {m: str(int(v) + 100) for m, v in champion.versions.items()}
    precomputed.write_recommendations(url, recs, other)
    assert post(server, "/recommend", {"user_id": user}).json()["served_from"] == "realtime"
    store = precomputed.open_store(url)
    stale = precomputed.lists_from_frame(recs, champion.versions, generated_at=time.time() - 3 * 86_400)
    store.put_many(stale, ttl_s=7 * 86_400)
    store.close()
    assert post(server, "/recommend", {"user_id": user}).json()["served_from"] == "realtime"


# ---- feedback: validated, durable, ingestible ---------------------------------------------------------


def test_feedback_is_durable_across_a_restart_and_ingestible(champion, server):
    user = "3"
    candidates = [v for v in champion.system.data.video_ids.astype(str) if v not in seen_ids(champion, user)][:2]
    now = pd.Timestamp.now(tz="UTC").floor("s")
    events = [
        {
            "event_id": "fb-1",
            "user_id": user,
            "video_id": candidates[0],
            "event_ts": now.isoformat(),
            "event_type": "watch",
            "watch_time_s": 300,
            "device": "tv",
        },
        {
            "event_id": "fb-2",
            "user_id": user,
            "video_id": candidates[1],
            "event_ts": now.isoformat(),
            "event_type": "like",
            "device": "mobile",
        },
        {"user_id": "brand-new", "event_ts": now.isoformat(), "event_type": "search", "text": "space documentaries"},
        {
            "event_id": "fb-bad-1",
            "user_id": user,
            "video_id": "no-such-video",
            "event_ts": now.isoformat(),
            "event_type": "watch",
        },
        {
            "event_id": "fb-bad-2",
            "user_id": user,
            "video_id": candidates[0],
            "event_ts": (now + pd.Timedelta(days=3)).isoformat(),
            "event_type": "watch",
        },
        {
            "event_id": "fb-bad-3",
            "user_id": user,
            "video_id": candidates[0],
            "event_ts": now.isoformat(),
            "event_type": "rating",
            "rating": 11,
        },
    ]
    response = post(server, "/feedback", {"events": events})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert [(r["index"], r["event_id"], r["reasons"]) for r in body["rejected"]] == [
        (3, "fb-bad-1", ["unknown_video"]), (4, "fb-bad-2", ["future_timestamp"]), (5, "fb-bad-3", ["rating_out_of_range"]),
    ]  # fmt: skip
    log_file = body["log_file"]
    assert post(server, "/recommend", {"user_id": user}).status_code == 200  # a slate the shutdown writes out

    server.restart()  # a restart (or a crash after the answer) loses nothing accepted

    written = pq.read_table(log_file).to_pandas()
    assert written["event_id"].tolist()[:2] == ["fb-1", "fb-2"] and len(written) == 3
    quarantined = pq.read_table(body["quarantine_file"]).to_pandas()
    assert quarantined["event_id"].tolist() == ["fb-bad-1", "fb-bad-2", "fb-bad-3"]
    assert post(server, "/recommend", {"user_id": user}).status_code == 200  # serving again

    lake = Lake(champion.settings.lake_dir)
    summary = ingest(open_source("canonical", champion.settings.home / "feedback", champion.settings.cache_dir), lake)
    ingested = lake.read_events()
    shown = int((ingested["event_type"] == "impression").sum())  # the log also holds every answer's slate
    assert summary.tables["events"].accepted == 3 + shown and shown > 0
    assert {"fb-1", "fb-2"} <= set(ingested["event_id"]) and (ingested["user_id"] == "brand-new").sum() == 1
    assert ingested.loc[ingested["event_id"] == "fb-1", "device"].iloc[0] == "tv"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting the small tmpfs that plays the full disk needs root")
def test_a_full_disk_refuses_feedback_with_503_and_recommendations_go_on(champion, tmp_path):
    """The feedback log's disk fills up: batches get 503 naming the cause, nothing half-written is
    left, every batch acknowledged before is whole, /recommend keeps answering, and once there is
    room again /feedback takes batches again. Its viewers are new users, so the sessions its
    feedback pushes to the shared online store change no other test's answers."""
    disk = tmp_path / "feedback"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    # Its own BentoML home: `bentoml serve` clears the metrics folder there, which the module's server uses.
    env = {"VIDREC_HOME": str(champion.settings.home), "VIDREC_FEEDBACK_DIR": str(disk), "VIDREC_SERVE_WORKERS": "1",
           "BENTOML_HOME": str(tmp_path / "bentoml")}  # fmt: skip
    videos = champion.system.data.video_ids.astype(str)[:50]
    now = pd.Timestamp.now(tz="UTC").floor("s").isoformat()

    def batch(b: int) -> dict:
        return {"events": [{"event_id": f"disk-{b}-{i}", "user_id": f"disk-viewer-{i % 90}", "video_id": videos[i % 50],
                            "event_ts": now, "event_type": "watch", "watch_time_s": 30.0} for i in range(200)]}  # fmt: skip

    try:
        with ServerProcess(env=env, log_path=tmp_path / "server.log") as running:
            answers = []
            for b in range(200):  # a bounded number of batches: 256 KiB holds a few dozen
                answers.append(post(running, "/feedback", batch(b)))
                if answers[-1].status_code != 200:
                    break
            acknowledged = sum(a.status_code == 200 for a in answers)
            refused = answers[-1]
            assert refused.status_code == 503 and acknowledged > 0, refused.text
            assert "No space left on device" in refused.json()["error"], refused.text
            recommended = [post(running, "/recommend", {"user_id": str(u), "k": 10}) for u in (1, 2, 3)]
            assert all(r.status_code == 200 and len(r.json()["items"]) == 10 for r in recommended)

            logged = sorted((disk / "events").glob("*/*.parquet"))
            assert len(logged) == acknowledged and all(pq.read_table(f).num_rows == 200 for f in logged)
            assert not list((disk / "events").glob("*/.*.tmp"))  # the refused write left nothing behind

            subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
            assert post(running, "/feedback", batch(1000)).status_code == 200
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    print(
        f"feedback log disk full (256 KiB tmpfs): {acknowledged} batches acknowledged and whole, batch "
        f"{acknowledged + 1} refused with 503 ({refused.json()['error']!r}), 3/3 /recommend answered, accepted "
        "again once space was freed"
    )


def _impressions_of(champion, request_id: str, timeout: float = 10.0) -> pd.DataFrame:
    """The impression rows of one answer, once the background writer has flushed them."""
    deadline = time.monotonic() + timeout
    folder = champion.settings.home / "feedback" / "impressions"
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*/*.parquet")) if folder.is_dir() else []
        if files:
            rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
            found = rows[rows["request_id"] == request_id]
            if len(found):
                return found.sort_values("position")
        time.sleep(0.2)
    raise AssertionError(f"no impressions of {request_id} under {folder} after {timeout} s")


def test_answers_are_logged_as_impressions_and_feedback_is_attributed(champion, server):
    answer = post(server, "/recommend", {"user_id": "6", "k": 5, "context": {"device": "tv"}}).json()
    request_id, shown = answer["request_id"], [i["video_id"] for i in answer["items"]]
    assert len(request_id) == 32 and len(shown) == 5
    rows = _impressions_of(champion, request_id)
    assert rows["video_id"].tolist() == shown and rows["position"].tolist() == [1, 2, 3, 4, 5]
    assert set(rows["variant"]) == {"champion"} and set(rows["experiment"]) == {"ranker-ab"}
    assert set(rows["device"]) == {"tv"} and json.loads(rows["model_versions"].iloc[0]) == answer["model_versions"]

    now = pd.Timestamp.now(tz="UTC").isoformat()
    click = {"user_id": "6", "video_id": shown[1], "event_ts": now, "event_type": "click"}
    events = [
        {**click, "request_id": request_id, "position": 2},
        {**click, "event_type": "watch", "watch_time_s": 600.0, "request_id": request_id, "position": 2},
        {**click, "request_id": "not-a-request"},
        {**click, "request_id": "0" * 32},
        {**click},  # no request id: accepted, simply not attributed to an answer
    ]
    body = post(server, "/feedback", {"events": events}).json()
    assert body["accepted"] == 5 and body["attributed"] == 2
    assert [(u["index"], u["reason"].split(" ")[0]) for u in body["unattributed"]] == [(2, "malformed"), (3, "unknown")]
    stored = pq.read_table(body["log_file"]).to_pandas()
    assert stored["request_id"].tolist()[:2] == [request_id, request_id] and stored["position"].tolist()[:2] == [2, 2]
    assert post(server, "/feedback", {"events": [{**click, "position": 0}]}).status_code == 400

    metrics = httpx.get(server.url + "/metrics").text
    assert 'vidrec_impressions_total{variant="champion"}' in metrics
    assert 'vidrec_clicks_total{variant="champion"} 1.0' in metrics


def test_attribution_checks_the_slot_when_the_worker_holds_the_slate(champion):
    app = local_app(champion)
    answer = app.recommend("7", 3, "desktop", AT)
    first, second = (i.video_id for i in answer.items[:2])
    now = pd.Timestamp.now(tz="UTC").isoformat()
    event = {"user_id": "7", "event_ts": now, "event_type": "click", "request_id": answer.request_id}
    result = app.feedback([{**event, "video_id": second, "position": 1}, {**event, "video_id": first, "position": 9}])
    assert result.attributed == 0
    assert "showed" in result.unattributed[0].reason and "past the 3 videos" in result.unattributed[1].reason
    assert app.feedback([{**event, "video_id": first, "position": 1}]).attributed == 1
    fallback = app.fallback("7", 3)
    assert fallback.request_id != answer.request_id and app.request_ids.check(fallback.request_id) == ("champion", None)
    assert app.impressions.pending() == 6  # both answers queued (this app's writer thread is not started)
    app.stop()
    assert app.impressions.pending() == 0 and app.impressions.written == 6


def test_feedback_hides_what_was_just_watched(champion):
    app = local_app(champion)
    user = "4"
    first = app.recommend(user, 5, "desktop", AT)
    top = first.items[0].video_id
    now = pd.Timestamp.now(tz="UTC").isoformat()
    result = app.feedback(
        [{"event_id": "fb-x", "user_id": user, "video_id": top, "event_ts": now, "event_type": "watch"}]
    )
    assert result.accepted == 1
    again = app.recommend(user, 5, "desktop", AT)
    assert top not in [i.video_id for i in again.items]


def _ask(server, user: str, k: int = 20) -> dict:
    body = {"user_id": user, "k": k, "context": {"device": "desktop", "timestamp": AT.isoformat()}}
    response = post(server, "/recommend", body)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(answer: dict) -> list[str]:
    return [item["video_id"] for item in answer["items"]]


def test_a_like_steers_the_next_answer_on_every_worker_and_after_a_restart(champion, server):
    """The like goes to the online store (Feast push), so whichever worker answers next, and a
    restarted service, sees it: the video is gone, its neighbours rise, a precomputed list older
    than the like is bypassed."""
    user = "12"
    url = f"sqlite:///{champion.settings.home / 'serving' / 'precomputed.db'}"
    row = champion.system.data.user_rows([user])[0]
    recs = champion.system.rank(
        Requests.at(np.array([row]), pd.Timestamp(AT)), k=40, lookup=feast_online_lookup(champion)
    )
    precomputed.write_recommendations(url, recs, champion.versions)
    before = _ask(server, user)
    assert before["served_from"] == "precomputed" and before["in_session"] is False
    liked = _ids(before)[3]
    neighbours = set(_ids(post(server, "/similar", {"video_id": liked, "k": 30}).json()))
    event = {"user_id": user, "video_id": liked, "event_ts": AT.isoformat(), "event_type": "like", "device": "desktop",
             "request_id": before["request_id"], "position": 4}  # fmt: skip
    started = time.perf_counter()
    feedback = post(server, "/feedback", {"events": [event]}).json()
    assert feedback["accepted"] == 1 and feedback["pushed_users"] == 1, feedback

    def steered(answer: dict) -> None:
        ids = _ids(answer)
        assert answer["in_session"] is True and answer["served_from"] == "realtime", answer["served_from"]
        assert liked not in ids
        assert len(neighbours & set(ids)) > len(neighbours & set(_ids(before))), (ids, neighbours)
        assert any("session" in item["sources"] for item in answer["items"])

    answers = [_ask(server, user) for _ in range(6)]  # two workers: each answers some of them
    print(f"like -> steered answer: {1000 * (time.perf_counter() - started):.0f} ms for 6 answers after the push")
    for answer in answers:
        steered(answer)
    server.restart()  # nothing lived only in a worker's memory
    steered(_ask(server, user))


def test_a_dislike_removes_the_video_and_pushes_its_neighbours_down(champion, server):
    user = "15"
    before = _ask(server, user, k=30)
    ids = _ids(before)
    # The shown video with the most shown neighbours: the penalty has something to move.
    similar = {v: set(_ids(post(server, "/similar", {"video_id": v, "k": 30}).json())) for v in ids[:10]}
    disliked = max(similar, key=lambda v: len(similar[v] & set(ids)))
    near = similar[disliked] & set(ids)
    assert near, "no shown video has a shown neighbour"
    event = {
        "user_id": user,
        "video_id": disliked,
        "event_ts": AT.isoformat(),
        "event_type": "dislike",
        "device": "desktop",
    }
    assert post(server, "/feedback", {"events": [event]}).json()["pushed_users"] == 1
    after = _ask(server, user, k=30)
    after_ids = _ids(after)
    assert after["in_session"] is True and disliked not in after_ids
    old_rank = {v: i for i, v in enumerate(ids)}
    new_rank = {v: after_ids.index(v) if v in after_ids else len(after_ids) for v in near}
    assert sum(new_rank[v] - old_rank[v] for v in near) > 0, (old_rank, new_rank)


# ---- degraded: the online store goes away and comes back ---------------------------------------------


def test_degraded_answers_when_the_online_store_is_gone(champion, server):
    online_db = champion.settings.home / "feast" / "online.db"
    user = "5"
    assert post(server, "/recommend", {"user_id": user}).json()["degraded"] is False
    saved = online_db.read_bytes()
    with open(online_db, "r+b") as fh:  # the store loses everything (same file, as a crash would)
        fh.truncate(0)
    try:
        for _ in range(4):  # both workers, first failure and the breaker's pause
            response = post(server, "/recommend", {"user_id": user, "k": 10})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["degraded"] is True and body["served_from"] in ("cache", "popular")
            assert len(body["items"]) == 10 and not {i["video_id"] for i in body["items"]} & seen_ids(champion, user)
        cold = post(server, "/recommend", {"user_id": "nobody-yet"}).json()
        assert cold["degraded"] is True and cold["served_from"] == "cold_start" and len(cold["items"]) == 10
        assert _eventually(lambda: httpx.get(server.url + "/readyz").status_code == 503)
        assert 'degraded="true"' in httpx.get(server.url + "/metrics").text
        assert "unreachable" in server.log_tail(200_000)  # logged
    finally:
        with open(online_db, "r+b") as fh:
            fh.write(saved)
    assert _eventually(lambda: httpx.get(server.url + "/readyz").status_code == 200)
    assert _eventually(
        lambda: all(not post(server, "/recommend", {"user_id": user}).json()["degraded"] for _ in range(4))
    )


def _eventually(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


# ---- the registry moves: hot reload, then an A/B test ------------------------------------------------


@pytest.fixture(scope="module")
def second_version(champion) -> dict[str, str]:
    """Another version, trained by the pipeline without Feast on two generators, left a challenger."""
    ranker = {"n_estimators": 10, "early_stopping_rounds": None}
    trained = train_champion(
        champion.settings, champion.end, generators=("popularity", "trending"), ranker=ranker, use_feast=False,
        promote=False,
    )  # fmt: skip
    return trained.versions


def test_reload_picks_up_a_newly_promoted_model(champion, server, second_version):
    settings = champion.settings
    new = second_version
    assert new != champion.versions
    tracking.configure(settings)
    registry.promote(MlflowClient(), new)

    def serving_new() -> bool:
        bodies = [post(server, "/recommend", {"user_id": "1"}).json() for _ in range(6)]
        return all(b["model_versions"] == new for b in bodies)

    assert _eventually(serving_new, timeout=90)  # the poller saw the alias move, in every worker
    body = post(server, "/recommend", {"user_id": "1"}).json()
    assert all(set(i["sources"]) <= {"popularity", "trending"} for i in body["items"])

    # The token-protected endpoint: refused without the token, then reloads at once.
    assert post(server, "/reload", {}).status_code == 401
    assert post(server, "/reload", {}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    tracking.configure(settings)
    registry.rollback(MlflowClient())  # champion back to the first version
    reloaded = post(server, "/reload", {}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reloaded.status_code == 200, reloaded.text
    answer = reloaded.json()
    if answer["reloaded"]:
        assert answer["model_versions"]["champion"] == champion.versions
    else:  # loading took longer than the endpoint waits (a busy 2-core machine): it goes on behind
        assert "still loading" in answer["detail"], answer
    assert _eventually(
        lambda: all(
            post(server, "/recommend", {"user_id": "1"}).json()["model_versions"] == champion.versions for _ in range(6)
        ),
        60,
    )


def test_ab_split_between_champion_and_challenger(champion, second_version, caplog):
    caplog.set_level(logging.INFO, logger="vidrec.ab")
    tracking.configure(champion.settings)
    registry.mark_challenger(MlflowClient(), second_version)
    app = local_app(champion, challenger_share=0.5, experiment="ranker-v2-test")
    assert app.state.versions() == {"champion": champion.versions, "challenger": second_version}
    counts = {"champion": 0, "challenger": 0}
    for i in range(60):
        user = str(i + 1)
        response = app.recommend(user, 5, "mobile", AT)
        assert response.variant == ab.assign(user, "ranker-v2-test", 0.5)
        assert response.model_versions == app.state.versions()[response.variant]
        assert app.recommend(user, 5, "mobile", AT).variant == response.variant  # sticky
        counts[response.variant] += 1
    assert min(counts.values()) >= 15
    assert f"user=60 experiment=ranker-v2-test variant={ab.assign('60', 'ranker-v2-test', 0.5)}" in caplog.text


def test_cold_start_uses_what_the_online_store_knows(champion):
    app = local_app(champion)
    engine = app.state.engines["champion"]
    anchor = "1"  # a user known to the store; as if the model had never seen them
    user = app.online.user_row(anchor)
    recent = user["user_recent__last_video_ids"].split("|")
    listing = engine.cold_start(user, engine.rows_of(recent))
    assert any("similar-to-recent" in s for s in listing.sources)
    assert not set(engine.video_ids[listing.rows]) & set(recent)
    assert isinstance(app.state.videos, VideoTable) and app.state.videos.columns


@pytest.mark.slow
def test_bentoml_build_makes_a_bento(tmp_path):
    root = Path(__file__).resolve().parents[1]
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    result = subprocess.run(
        [str(bentoml_cli), "build", "-f", "serving/bentofile.yaml", ".", "-o", "tag"],
        cwd=root, env={**os.environ, "BENTOML_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vidrec:" in result.stdout
    bento = next((tmp_path / "bentos" / "vidrec").glob("*/bento.yaml"))
    assert "serving.service:Vidrec" in bento.read_text()
    assert (bento.parent / "src" / "serving" / "service.py").exists() and (
        bento.parent / "src" / "models" / "two_stage.py"
    ).exists()


# ---- experiments: simulated viewers, over HTTP and in-process, and the report ---------------------------


def test_simulated_viewers_over_http_are_logged_like_real_traffic(champion, server):
    root = champion.settings.home / "feedback"
    time.sleep(1.5)  # the workers' writers flush every second: earlier tests' impressions are out
    before = set(root.glob("impressions/*/*.parquet"))
    summary = pipeline.simulate_audience(
        url=server.url, audience="movielens", users=20, sessions_per_user=2, k=5, concurrency=2, seed=3,
        settings=champion.settings,
    )  # fmt: skip
    assert summary["impressions"] > 0 and summary["clicks"] > 0 and "favours" in summary["caveat"]

    def simulated() -> pd.DataFrame:
        new = sorted(set(root.glob("impressions/*/*.parquet")) - before)
        return pa.concat_tables([pq.read_table(f) for f in new]).to_pandas() if new else pd.DataFrame()

    assert _eventually(lambda: len(simulated()) >= summary["impressions"], timeout=30)
    shown = simulated()
    assert len(shown) == summary["impressions"] and set(shown["variant"]) == {"champion"}
    assert pd.to_datetime(shown["event_ts"]).min() >= pd.Timestamp(summary["window_start"])  # simulated time
    logs = experiments.read_logs(root, "ranker-ab", pd.Timestamp(summary["window_start"]), pd.Timestamp.now(tz="UTC"))
    clicks = logs.events[(logs.events["event_type"] == "click") & logs.events["request_id"].isin(shown["request_id"])]
    assert len(clicks) == summary["clicks"]  # every simulated click came back with its request_id
    # Without a challenger there is nothing to compare: the report says why and exits 2.
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(champion.settings.home))
    try:
        result = CliRunner().invoke(cli.app, ["experiment", "report", "--days", "2"])
    finally:
        mp.undo()
    assert result.exit_code == 2 and "challenger share 0.0" in result.output


def test_offline_ab_test_is_reported_and_the_winner_promoted(champion, second_version, tmp_path):
    """The weaker model (popularity + trending) is made champion, the real one challenger; simulated
    MovieLens viewers (truth: EASE on all their events) prefer the challenger, and
    `--promote-if-winning` gives it back `champion`, the weaker one keeping `previous`."""
    tracking.configure(champion.settings)
    client = MlflowClient()
    registry.promote(client, second_version)
    registry.mark_challenger(client, champion.versions)
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(champion.settings.home))
    logs, out = tmp_path / "logs", tmp_path / "report"
    try:
        simulated = CliRunner().invoke(
            cli.app,
            ["simulate", "--offline", "--audience", "movielens", "--users", "150", "--sessions", "2", "--share", "0.5",
             "--experiment", "offline-ab", "--log-dir", str(logs), "--seed", "1"],
        )  # fmt: skip
        assert simulated.exit_code == 0, simulated.output
        assert "favours" in simulated.output and "150/150" in simulated.output
        reported = CliRunner().invoke(
            cli.app,
            ["experiment", "report", "--experiment", "offline-ab", "--share", "0.5", "--log-dir", str(logs),
             "--days", "2", "--out", str(out), "--promote-if-winning"],
        )  # fmt: skip
        assert reported.exit_code == 0, reported.output
        report = json.loads((out / "report.json").read_text())
        assert report["srm"]["flagged"] is False
        assert report["metrics"]["watch_time_per_session"]["verdict"] == "challenger better", report["metrics"]
        assert "promoted the challenger" in reported.output
        assert registry.champion_versions(client) == champion.versions
        assert {m: registry.alias_version(client, m, registry.PREVIOUS) for m in registry.MODELS} == second_version
        runs = client.search_runs([client.get_experiment_by_name(experiments.MLFLOW_EXPERIMENT).experiment_id])
        assert any(r.data.tags.get("decision") == "promote" for r in runs)
        assert {"report.json", "metrics.png", "cumulative_lift.png"} <= {p.name for p in out.iterdir()}
        missing = CliRunner().invoke(
            cli.app, ["experiment", "report", "--experiment", "no-such-test", "--share", "0.5", "--log-dir", str(logs)]
        )
        assert missing.exit_code == 2 and "no impressions" in missing.output.lower()
    finally:
        mp.undo()
        registry.promote(client, champion.versions)  # leave the registry as the other tests expect it


# ---- fuzzing: last, since it posts whatever the schema admits ---------------------------------------


def test_fuzzed_requests_get_no_5xx_and_answers_keep_their_schema(server, tmp_path):
    """schemathesis (its `st` command) over the service's own /docs.json: valid and invalid bodies
    alike, never a 5xx, and every documented answer matches its schema; seeded, bounded."""
    st = Path(sys.executable).with_name("st")
    report = tmp_path / "schemathesis.ndjson"
    run = subprocess.run(
        [str(st), "run", f"{server.url}/docs.json", "--url", server.url,
         "--checks", "not_a_server_error,response_schema_conformance",
         "--include-path-regex", "^/(recommend|similar|feedback|status|reload)$",
         "--max-examples", "40", "--seed", "20261203", "--workers", "1", "--request-timeout", "30",
         "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its .schemathesis cache goes there
    )  # fmt: skip
    summary = [line for line in run.stdout.splitlines() if "passed" in line or "failed" in line or "cases" in line]
    print("schemathesis:", " | ".join(summary[-3:]))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
