"""The service's pure parts, without BentoML: A/B assignment, re-ranking, precomputed lists,
the feedback log (ingested back through the real canonical loader), the breaker, the HTTP guard."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from feature_repo import schema
from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.schema import utc_time
from feature_repo.sources import open_source
from serving import ab, precomputed
from serving.breaker import CircuitBreaker
from serving.config import RerankConfig, ServingConfig
from serving.feedback import FeedbackLog
from serving.guard import RequestGuard
from serving.impressions import ImpressionLog, RequestIds, impression_rows, write_impressions
from serving.online import parse_genre_shares, parse_video_list, request_features
from serving.rerank import ItemSignals, context_fit, freshness, minmax, mmr_order, percentile, reason, rerank
from vidrec.settings import Settings, SettingsError

# ---- A/B -------------------------------------------------------------------------------------------


def test_assignment_is_deterministic_and_splits_by_share():
    users = [f"u{i}" for i in range(20_000)]
    first = [ab.assign(u, "exp-1", 0.3) for u in users]
    assert first == [ab.assign(u, "exp-1", 0.3) for u in users]  # same input, same variant
    share = sum(v == ab.CHALLENGER for v in first) / len(users)
    assert share == pytest.approx(0.3, abs=0.015)
    assert {ab.assign(u, "exp-1", 0.0) for u in users[:500]} == {ab.CHAMPION}
    assert {ab.assign(u, "exp-1", 1.0) for u in users[:500]} == {ab.CHALLENGER}
    # Ramping the share up only moves champion users over; a new experiment reshuffles.
    wider = [ab.assign(u, "exp-1", 0.5) for u in users]
    assert all(w == ab.CHALLENGER for f, w in zip(first, wider, strict=True) if f == ab.CHALLENGER)
    other = [ab.assign(u, "exp-2", 0.3) for u in users]
    overlap = sum(a == b == ab.CHALLENGER for a, b in zip(first, other, strict=True)) / len(users)
    assert overlap == pytest.approx(0.09, abs=0.015)  # independent: 0.3 * 0.3
    with pytest.raises(ValueError):
        ab.assign("u", "exp", 1.5)


# ---- re-ranking ------------------------------------------------------------------------------------


def test_percentile_minmax_freshness():
    assert percentile(np.array([3.0, 1.0, np.nan, 2.0])).tolist() == [1.0, 0.0, 0.0, 0.5]
    assert minmax(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax(np.array([5.0, 5.0])).tolist() == [1.0, 1.0]
    assert freshness(np.array([0.0, 30.0, np.nan]), 30.0).tolist() == [1.0, 0.5, 0.0]


def test_context_fit_uses_device_and_hour_rules():
    config = RerankConfig()
    durations = np.array([600.0, 5400.0, np.nan])
    assert context_fit(durations, "mobile", 13, config).tolist() == [1.0, -1.0, 0.0]
    assert context_fit(durations, "tv", 13, config).tolist() == [-1.0, 1.0, 0.0]
    assert context_fit(durations, "desktop", 13, config).tolist() == [0.0, 0.0, 0.0]  # no rule applies
    # At 21:00 evenings favour long videos: on mobile the two rules disagree and cancel out.
    assert context_fit(durations, "mobile", 21, config).tolist() == [0.0, 0.0, 0.0]
    # The catalog-wide arrays a request reads are kept per set of rules, and per half-life.
    signals = ItemSignals(np.zeros(3), np.array([0.0, 30.0, np.nan]), durations)
    for device in ("mobile", "tv", "desktop", "unknown"):
        for hour in range(24):
            expected = context_fit(durations, device, hour, config)
            assert signals.catalog_context_fit(device, hour, config).tolist() == expected.tolist()
    assert len(signals._kept) < 4 * 24
    assert signals.catalog_freshness(30.0).tolist() == [1.0, 0.5, 0.0]
    assert signals.catalog_freshness(15.0).tolist() == [1.0, 0.25, 0.0]


def test_mmr_trades_relevance_for_diversity():
    scores = np.array([1.0, 0.99, 0.9])
    similarity = np.array([[1.0, 0.95, 0.0], [0.95, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert mmr_order(scores, similarity, 3, 1.0).tolist() == [0, 1, 2]
    assert mmr_order(scores, similarity, 3, 0.7).tolist() == [0, 2, 1]  # the near-duplicate waits
    assert mmr_order(scores, similarity, 5, 0.7).tolist() == [0, 2, 1]


def test_rerank_applies_boosts_and_context():
    rows = np.array([0, 1, 2, 3])
    relevance = np.array([1.0, 0.98, 0.5, 0.0])
    signals = ItemSignals(
        trending=np.array([0.0, 1.0, 0.0, 1.0]),
        age_days=np.array([np.nan, np.nan, 0.0, np.nan]),
        duration_s=np.array([5400.0, 600.0, 600.0, 600.0]),
    )
    vectors = sp.identity(4, format="csr")
    plain = rerank(rows, relevance, signals, vectors, 4, RerankConfig(trending_boost=0, fresh_boost=0, context_boost=0))
    assert plain.rows.tolist() == [0, 1, 2, 3]
    boosted = rerank(rows, relevance, signals, vectors, 2, RerankConfig(), device="mobile", hour=13)
    assert boosted.rows.tolist() == [1, 0]  # trending + short on a phone beats a 2% relevance gap
    assert boosted.scores[0] == pytest.approx(0.98 + 0.05 + 0.05)
    assert rerank(rows[:0], relevance[:0], signals, vectors, 3, RerankConfig()).rows.tolist() == []
    text = reason("ease", 1.0, 0.8, 1.0, RerankConfig(), "mobile")
    assert text == "viewers with similar taste watched it; trending now; new; suits watching on mobile"
    assert reason("content-tfidf", 0, 0, 0, RerankConfig(), "tv") == "similar to videos you watched"


def test_request_features_and_feature_strings():
    at = utc_time(pd.Timestamp("2024-03-03T15:00:00Z").to_pydatetime())  # a Sunday afternoon
    user = {"user_profile__share_afternoon": 0.4, "user_profile__share_mobile": 0.7, "user_profile__share_tv": 0.1}
    values = request_features(user, at, "mobile")
    assert values == {
        "request_features__hour_of_day": 15.0,
        "request_features__day_of_week": 6.0,
        "request_features__is_weekend": 1.0,
        "request_features__daypart_affinity": 0.4,
        "request_features__device_affinity": 0.7,
    }
    assert request_features(user, at, "unknown")["request_features__device_affinity"] == 0.0
    assert np.isnan(request_features({}, at, "mobile")["request_features__device_affinity"])
    assert parse_video_list("v3|v1|") == ["v3", "v1"] and parse_video_list(None) == []
    assert parse_genre_shares("Comedy:0.5|Sci-Fi:0.25") == {"Comedy": 0.5, "Sci-Fi": 0.25}


# ---- precomputed lists -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving' / 'precomputed.db'}"
    return request.getfixturevalue("redis_url")


def test_precomputed_lists_are_served_only_when_fresh(store_url):
    versions = {"vidrec-candidates": "3", "vidrec-ranker": "3"}
    recs = pd.DataFrame(
        {
            "user_id": ["7", "7", "8"],
            "video_id": ["b", "a", "c"],
            "rank": [2, 1, 1],
            "score": [0.5, 0.9, 0.7],
            "sources": [["ease"], ["popularity", "ease"], ["trending"]],
        }
    )
    assert precomputed.write_recommendations(store_url, recs, versions, ttl_s=60) == 2
    store = precomputed.open_store(store_url)
    got = store.get("7", max_age_s=60, versions=versions)
    assert got.video_ids == ["a", "b"] and got.scores == [0.9, 0.5] and got.sources[0] == ["popularity", "ease"]
    assert json.loads(store.get_raw("8"))["versions"] == versions
    assert precomputed.key("7") == "vidrec:recs:7"
    assert store.get("9", max_age_s=60) is None  # never written
    assert (
        store.get("7", max_age_s=60, versions={"vidrec-candidates": "4", "vidrec-ranker": "4"}) is None
    )  # other model
    assert store.get("7", max_age_s=60, now=time.time() + 120) is None  # too old for the reader
    store.put_many([precomputed.PrecomputedList("7", ["a"], [1.0], [[]], versions, time.time())], ttl_s=1)
    time.sleep(2.1)
    assert store.get_raw("7") is None  # expired for the writer's TTL too
    store.close()
    with pytest.raises(ValueError, match="unsupported"):
        precomputed.open_store("mysql://nope")


def _open_at_once(url: str, start, results) -> None:
    start.wait()
    try:
        precomputed.open_store(url).close()
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))


def test_workers_starting_together_all_open_a_new_sqlite_store(tmp_path):
    """The service's workers open the store as they start. Before the WAL switch was retried, 3
    processes racing on a new file gave "database is locked" in about 1 start in 12, and the losing
    worker served no precomputed list until it restarted."""
    context = multiprocessing.get_context("fork")
    outcomes = []
    for attempt in range(30):
        url = f"sqlite:///{tmp_path / str(attempt) / 'precomputed.db'}"
        start, results = context.Barrier(3), context.Queue()
        workers = [context.Process(target=_open_at_once, args=(url, start, results)) for _ in range(3)]
        for worker in workers:
            worker.start()
        outcomes += [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(10)
    failed = [o for o in outcomes if o != "ok"]
    print(f"{len(outcomes)} opens of 30 new stores by 3 processes at once: {len(failed)} failed")
    assert not failed, failed[:3]


# ---- the feedback log ------------------------------------------------------------------------------


def feedback_batch() -> list[dict]:
    return [
        {
            "event_id": "f1",
            "user_id": "u1",
            "video_id": "v1",
            "event_ts": "2024-03-01T10:00:00Z",
            "event_type": "watch",
            "watch_time_s": 120,
            "device": "tv",
        },
        {
            "user_id": "u2",
            "video_id": "v2",
            "event_ts": "2024-03-01T11:00:00+01:00",
            "event_type": "like",
            "device": "mobile",
        },
        {
            "event_id": "bad1",
            "user_id": "u1",
            "video_id": "nope",
            "event_ts": "2024-03-01T10:00:00Z",
            "event_type": "watch",
        },
        {
            "event_id": "bad2",
            "user_id": "u1",
            "video_id": "v1",
            "event_ts": "2024-03-01T10:00:00Z",
            "event_type": "rating",
            "rating": 9,
        },
        {"event_id": "bad3", "user_id": "u1", "video_id": "v1", "event_ts": "yesterday", "event_type": "teleport"},
        {"event_id": "q1", "user_id": "u3", "event_ts": "2024-03-01T12:00:00Z", "event_type": "search", "text": "cats"},
    ]


def test_feedback_is_validated_written_durably_and_ingestible(tmp_path):
    log = FeedbackLog(tmp_path / "feedback", lambda: ["v1", "v2"])
    now = pd.Timestamp("2024-03-02T08:00:00Z")
    result = log.append(feedback_batch(), now=now)
    assert len(result.accepted) == 3
    assert [(r.index, r.event_id) for r in result.rejected] == [(2, "bad1"), (3, "bad2"), (4, "bad3")]
    assert result.rejected[0].reasons == ["unknown_video"]
    assert result.rejected[1].reasons == ["rating_out_of_range"]
    assert set(result.rejected[2].reasons) == {"unparsable_timestamp", "unknown_event_type"}
    assert result.log_file == tmp_path / "feedback" / "events" / "2024-03-02" / f"{result.batch_id}.parquet"
    assert not list((tmp_path / "feedback").rglob("*.tmp"))  # nothing half-written left behind

    quarantined = pq.read_table(result.quarantine_file).to_pandas()
    assert quarantined["event_id"].tolist() == ["bad1", "bad2", "bad3"]
    assert quarantined["batch_index"].tolist() == [2, 3, 4] and (quarantined["batch_id"] == result.batch_id).all()

    # A retried batch without ids gets the same content-derived ids (so ingestion deduplicates).
    again = log.append(feedback_batch()[1:2], now=now)
    ids = log.read_events()["event_id"].tolist()
    assert ids.count(again.accepted["event_id"].iloc[0]) == 2

    # The log is a canonical folder: the real loader ingests it into a lake that knows the videos.
    source_dir = tmp_path / "catalog"
    source_dir.mkdir()
    pd.DataFrame({"video_id": ["v1", "v2"], "title": ["One", "Two"]}).to_parquet(source_dir / "videos.parquet")
    pd.DataFrame(
        {
            "event_id": ["seed"],
            "user_id": ["u0"],
            "video_id": ["v1"],
            "event_ts": ["2024-02-01T00:00:00Z"],
            "event_type": ["watch"],
        }
    ).to_parquet(source_dir / "events.parquet")
    lake = Lake(tmp_path / "lake")
    ingest(open_source("canonical", source_dir, tmp_path / "cache"), lake)
    summary = ingest(open_source("canonical", log.root, tmp_path / "cache"), lake)
    assert summary.tables["events"].accepted == 3 and summary.events.duplicate_rows == 1
    events = lake.read_events()
    assert {"f1", "q1"} <= set(events["event_id"]) and len(events) == 4
    assert events.loc[events["event_id"] == "f1", "device"].iloc[0] == "tv"


# ---- request ids and the impression log ---------------------------------------------------------


def test_request_ids_name_their_variant_and_refuse_foreign_or_malformed_ids(tmp_path):
    ids = RequestIds.shared(tmp_path)
    other_worker = RequestIds.shared(tmp_path)  # same deployment: the key file is shared
    issued = {ids.new(v): v for v in ab.VARIANTS for _ in range(50)}
    assert len(issued) == 100 and all(len(i) == 32 for i in issued)
    assert all(other_worker.check(i) == (v, None) for i, v in issued.items())
    foreign = RequestIds.shared(tmp_path / "elsewhere").new(ab.CHAMPION)
    variant, why = ids.check(foreign)
    assert variant is None and why.startswith("unknown request_id")
    for bad in ("not-an-id", "", "0" * 31, 42):
        variant, why = ids.check(bad)
        assert variant is None and why.startswith("malformed request_id")


def _slate(request_id: str, user: str, n: int = 3, ts: str = "2024-03-02T08:00:00Z") -> list[dict]:
    videos = [f"v{i}" for i in range(1, n + 1)]
    return impression_rows(request_id, user, videos, ab.CHAMPION, "exp", {"m": "1"}, "realtime", "tv", pd.Timestamp(ts))


def test_impression_log_writes_batches_and_counts_what_it_cannot_keep(tmp_path):
    dropped = []
    log = ImpressionLog(tmp_path / "feedback", flush_rows=1000, max_rows=5, on_dropped=dropped.append)
    log.record(_slate("r1", "u1"))
    log.record(_slate("r2", "u2"))  # 6 rows > 5: the last one does not fit
    assert log.pending() == 5 and dropped == [1]
    result = log.flush()
    assert result.written == 5 and log.pending() == 0
    table = pq.read_table(result.path)
    assert table.schema.equals(schema.IMPRESSIONS)
    rows = table.to_pandas()
    assert rows["position"].tolist() == [1, 2, 3, 1, 2]
    assert (rows["model_versions"] == '{"m": "1"}').all() and not list(tmp_path.rglob("*.tmp"))

    # A disk that refuses the write: rows are dropped and counted, nothing raises.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be")
    broken = ImpressionLog(blocked, on_dropped=dropped.append)
    broken.record(_slate("r3", "u3"))
    assert broken.flush().dropped == 3 and broken.dropped == 3 and dropped[-1] == 3

    # The background writer flushes within a second; close() writes what is left.
    live = ImpressionLog(tmp_path / "live", flush_s=0.1)
    live.start()
    live.record(_slate("r4", "u4"))
    deadline = time.monotonic() + 5
    while live.written < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.written == 3
    live.record(_slate("r5", "u5"))
    live.close()
    assert live.written == 6 and live.pending() == 0


def test_feedback_keeps_attribution_and_impressions_reach_the_lake_once(tmp_path):
    root = tmp_path / "feedback"
    log = FeedbackLog(root, lambda: ["v1", "v2", "v3"])
    now = pd.Timestamp("2024-03-02T09:00:00Z")
    # A client clock with nanoseconds is kept to the stored microsecond, not an error.
    click = {"user_id": "u1", "video_id": "v2", "event_ts": "2024-03-02T08:00:05.123456789Z", "event_type": "click"}
    result = log.append([{**click, "request_id": "r1", "position": 2}, {**click, "event_type": "play"}], now=now)
    stored = pq.read_table(result.log_file)
    assert stored.schema.equals(schema.FEEDBACK_EVENTS)
    assert stored.column("request_id").to_pylist() == ["r1", None] and stored.column("position").to_pylist() == [
        2,
        None,
    ]
    write_impressions(root, _slate("r1", "u1"), now=now)

    source_dir = tmp_path / "catalog"
    source_dir.mkdir()
    pd.DataFrame({"video_id": ["v1", "v2", "v3"], "title": ["One", "Two", "Three"]}).to_parquet(
        source_dir / "videos.parquet"
    )
    pd.DataFrame(
        {"user_id": ["u0"], "video_id": ["v1"], "event_ts": ["2024-02-01T00:00:00Z"], "event_type": ["watch"]}
    ).to_parquet(source_dir / "events.parquet")
    lake = Lake(tmp_path / "lake")
    ingest(open_source("canonical", source_dir, tmp_path / "cache"), lake)
    ingest(open_source("canonical", root, tmp_path / "cache"), lake)
    again = ingest(open_source("canonical", root, tmp_path / "cache"), lake)  # re-running adds nothing
    events = lake.read_events()
    shown = events[events["event_type"] == "impression"].sort_values("event_id")
    assert shown["event_id"].tolist() == ["imp:r1:1", "imp:r1:2", "imp:r1:3"]
    assert shown["video_id"].tolist() == ["v1", "v2", "v3"] and (shown["device"] == "tv").all()
    assert len(events) == 6 and again.events.new == 0 and again.events.unchanged == 5
    assert "request_id" not in events.columns  # the lake keeps the canonical columns


# ---- breaker, guard, config ------------------------------------------------------------------------


def test_breaker_pauses_after_a_failure_then_retries():
    now = [100.0]
    breaker = CircuitBreaker("store", retry_after=5.0, clock=lambda: now[0])
    assert breaker.allow() and breaker.status() == "ok"
    breaker.failure(ConnectionError("refused"))
    assert not breaker.allow() and breaker.status() == "unreachable: ConnectionError: refused"
    now[0] += 5.1
    assert breaker.allow()  # half-open: one try
    breaker.success()
    assert breaker.allow() and breaker.status() == "ok"


def run_guard(guard, path="/recommend", body=b"{}", headers=None, chunks=None, client=("127.0.0.1", 5000)):
    sent = []
    messages = (
        [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        if chunks
        else [{"type": "http.request", "body": body, "more_body": False}]
    )

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    raw_headers = [
        (k.encode(), v.encode())
        for k, v in (headers or {"content-type": "application/json", "content-length": str(len(body))}).items()
    ]
    asyncio.run(
        guard({"type": "http", "method": "POST", "path": path, "headers": raw_headers, "client": client}, receive, send)
    )
    return sent


def test_guard_refuses_oversized_and_non_json_bodies():
    seen = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = RequestGuard(app, max_bytes=10, api_paths=("/recommend",))
    assert run_guard(guard, body=b'{"a": 1}')[0]["status"] == 200 and seen == [b'{"a": 1}']
    assert run_guard(guard, body=b"x" * 11)[0]["status"] == 413
    assert (
        run_guard(guard, headers={"content-type": "application/json"}, chunks=[b"x" * 6, b"x" * 6])[0]["status"] == 413
    )
    refused = run_guard(guard, headers={"content-type": "multipart/form-data; boundary=b"})
    assert refused[0]["status"] == 415 and b"application/json" in refused[1]["body"]
    assert run_guard(guard, path="/livez", body=b"x" * 50)[0]["status"] == 200  # other paths untouched

    # Keep-alive connections are closed after `recycle_after` requests, so they spread over workers.
    recycling = RequestGuard(app, api_paths=("/recommend",), recycle_after=3)
    closes = [(b"connection", b"close") in run_guard(recycling, body=b"{}")[0]["headers"] for _ in range(7)]
    assert closes == [False, False, True, False, False, True, False]
    assert (b"connection", b"close") not in run_guard(recycling, client=("127.0.0.1", 5001))[0]["headers"]


def test_serving_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path))
    monkeypatch.setenv("VIDREC_AB_CHALLENGER_SHARE", "0.25")
    monkeypatch.setenv("VIDREC_PRECOMPUTED_URL", "off")
    monkeypatch.setenv("VIDREC_RELOAD_TOKEN", "s3cret")
    config = ServingConfig.from_env(Settings.from_env())
    assert config.challenger_share == 0.25 and config.precomputed_url is None and config.reload_token == "s3cret"
    assert config.feedback_dir == (tmp_path / "feedback").resolve()
    monkeypatch.setenv("VIDREC_AB_CHALLENGER_SHARE", "2")
    with pytest.raises(SettingsError, match="VIDREC_AB_CHALLENGER_SHARE"):
        ServingConfig.from_env(Settings.from_env())
    monkeypatch.setenv("VIDREC_AB_CHALLENGER_SHARE", "0.5")
    monkeypatch.setenv("VIDREC_LOG_IMPRESSIONS", "0")
    assert ServingConfig.from_env(Settings.from_env()).log_impressions is False
    monkeypatch.setenv("VIDREC_LOG_IMPRESSIONS", "sometimes")
    with pytest.raises(SettingsError, match="VIDREC_LOG_IMPRESSIONS"):
        ServingConfig.from_env(Settings.from_env())


def test_bentofile_names_the_service():
    import yaml

    bentofile = yaml.safe_load((Path(__file__).resolve().parents[1] / "serving" / "bentofile.yaml").read_text())
    assert bentofile["service"] == "serving.service:Vidrec"
    assert any("serving" in pattern for pattern in bentofile["include"])
