"""The service in the prod profile for real: user features from Redis, and Redis dying under load and coming back.

Real parts: a private `redis-server` on a free port (the shared one on 6379 is left alone), the Feast
SQL registry and the MLflow backend store in fresh PostgreSQL databases, a champion trained on the
first 150 users of the real ml-latest-small (tests/champion.py, through the pipeline) with its features materialized
into that Redis, and `bentoml serve` (serving.process.ServerProcess, two workers) with VIDREC_PROFILE=prod
and its precomputed lists in the same Redis, as infra/compose.yaml runs it.

Under a steady load of /recommend calls the Redis process is killed (SIGKILL, a crash): every answer
must still be a 200, marked `degraded: true` while Redis is gone, with /readyz at 503. Redis then
restarts on the same port from the RDB snapshot taken before the crash (the prod Redis persists), and
the service must recover by itself: /readyz 200 and real-time, non-degraded answers again. The Redis
process is stopped, the databases dropped at the end.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from champion import build_champion
from services import pg_connect, temp_database

from serving.process import ServerProcess, free_port
from vidrec.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 150  # the first MovieLens users: every one is known to the champion
# The prod profile serves only clients with keys: one for the tests (every endpoint, no limit) and
# one with a small rate limit, shared by both workers through Redis.
CLIENT_KEY = "vk_tests_" + secrets.token_urlsafe(18)  # pragma: allowlist secret (made per run)
LIMITED_KEY = "vk_limited_" + secrets.token_urlsafe(18)
ADMIN_TOKEN = "prod-admin-" + secrets.token_hex(8)
API_KEYS = json.dumps([
    {"name": "tests", "key": CLIENT_KEY, "endpoints": ["*"]},
    {"name": "limited", "key": LIMITED_KEY, "endpoints": ["/recommend"], "rate_per_s": 2, "burst": 3},
])  # fmt: skip
CLIENT = {"X-API-Key": CLIENT_KEY}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LOAD_USERS = [str(u) for u in range(1, 41)]


class RedisServer:
    """A redis-server of this module's own, in its own process group; restarts on the same port and data dir."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> RedisServer:
        # No automatic snapshots, no AOF: what survives a crash is the RDB file an explicit SAVE wrote,
        # which redis-server loads from --dir/--dbfilename when it starts.
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.data_dir), "--dbfilename", "dump.rdb", "--logfile", str(self.log_path)]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001 - still starting (or loading the RDB file)
                pass
            time.sleep(0.1)
        raise TimeoutError(f"redis-server on port {self.port} not answering after {timeout:.0f}s:\n{self.log_tail()}")

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_connect_timeout=2, socket_timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@dataclass
class Prod:
    settings: Settings
    champion: object
    redis: RedisServer
    server: ServerProcess
    feast_db: str


@pytest.fixture(scope="module")
def prod(ml_small, tmp_path_factory):
    """Redis, PostgreSQL databases, a trained champion in the prod profile, and the service on them."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from feature_repo import store

    tmp = tmp_path_factory.mktemp("prod-serving")
    home = tmp / "home"
    with ExitStack() as stack:  # torn down in reverse: the service, the databases, Redis
        redis_server = RedisServer(tmp / "redis").start()
        stack.callback(redis_server.stop)
        mlflow_url = stack.enter_context(temp_database("mlflow"))
        feast_url = stack.enter_context(temp_database("feast"))
        env = {
            "VIDREC_PROFILE": "prod",
            "VIDREC_HOME": str(home),
            "VIDREC_CACHE_DIR": str(tmp / "cache"),
            "VIDREC_MLFLOW_URI": mlflow_url,
            "VIDREC_FEAST_REGISTRY_URL": feast_url,
            "VIDREC_FEAST_REDIS": f"127.0.0.1:{redis_server.port},db=0",
            "VIDREC_PRECOMPUTED_URL": f"redis://127.0.0.1:{redis_server.port}/1",
        }
        before = (tracking_utils._tracking_uri, registry_utils._registry_uri)  # unset stays unset
        mp = pytest.MonkeyPatch()
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # recorded, so that undo() restores them
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        settings = Settings.from_env()
        try:
            champion = build_champion(settings, ml_small, max_users=USERS)
        finally:
            mlflow.set_tracking_uri(before[0])
            mlflow.set_registry_uri(before[1])
            mp.undo()
            cached = store._STORES.pop(store.locations(settings), None)  # and its registry's connections
            engine = getattr(getattr(cached, "registry", None), "write_engine", None)
            if engine is not None:
                engine.dispose()
        assert settings.profile == "prod" and champion.feature_service

        server_env = {**env, "VIDREC_STORE_RETRY_S": "1", "VIDREC_SERVE_WORKERS": "2", "VIDREC_RELOAD_POLL_S": "0",
                      "VIDREC_API_KEYS": API_KEYS, "VIDREC_RELOAD_TOKEN": ADMIN_TOKEN, "VIDREC_OPS_ADMIN_ONLY": "1"}  # fmt: skip
        server = ServerProcess(env=server_env, log_path=home / "server.log")
        stack.callback(server.stop)
        server.start()
        yield Prod(settings, champion, redis_server, server, feast_url.rsplit("/", 1)[1])
    assert server.proc is None, "the service is still running"
    assert redis_server.proc.poll() is not None, "redis-server is still running"


def recommend(prod: Prod, user_id: str) -> httpx.Response:
    return httpx.post(f"{prod.server.url}/recommend", json={"user_id": user_id, "k": 10}, headers=CLIENT, timeout=30)


def readyz(prod: Prod) -> int:
    """The readiness probe's status; -1 when it gives no answer within 5 s (a probe timeout)."""
    try:
        return httpx.get(f"{prod.server.url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return -1


def eventually(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def registry_connections(prod: Prod) -> int:
    """Open PostgreSQL connections to the Feast registry database (the service's, and ours)."""
    with pg_connect() as conn:
        return conn.execute("select count(*) from pg_stat_activity where datname = %s", (prod.feast_db,)).fetchone()[0]


def keyspace(prod: Prod) -> tuple[int, int]:
    stats = prod.redis.client().info("stats")
    return stats["keyspace_hits"], stats["keyspace_misses"]


def test_the_service_reads_user_features_from_redis(prod):
    assert readyz(prod) == 200
    status = httpx.post(f"{prod.server.url}/status", json={}, headers=ADMIN, timeout=30).json()
    assert status["ready"] and status["online_store"] == "ok", status
    assert status["precomputed"].startswith(f"redis://127.0.0.1:{prod.redis.port}/1"), status
    assert status["model_versions"]["champion"] == prod.champion.versions
    # Feast materialized one hash per entity into the private Redis (db 0).
    assert prod.redis.client(0).dbsize() >= USERS

    hits, misses = keyspace(prod)
    users = ["1", "2", "3", "42", "150"]
    for user in users:
        response = recommend(prod, user)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["degraded"] is False and body["served_from"] == "realtime", body
        assert len(body["items"]) == 10 and body["model_versions"] == prod.champion.versions
    # Each request read the user's row from Redis (a hit: the user is there) and looked for a
    # precomputed list there (a miss: the batch DAG has not written any).
    after_hits, after_misses = keyspace(prod)
    assert after_hits - hits >= len(users) and after_misses - misses >= len(users), (
        hits,
        after_hits,
        misses,
        after_misses,
    )


def test_a_like_is_pushed_to_redis_and_steers_the_next_answer(prod):
    """/feedback pushes the session to Redis through Feast's push source: every worker's next answer
    for the user is steered by it (the liked video gone, its neighbours proposed as "session")."""
    user = "120"  # not one of LOAD_USERS: their load run stays as it was
    first = recommend(prod, user).json()
    liked = first["items"][0]["video_id"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    event = {"user_id": user, "video_id": liked, "event_ts": now, "event_type": "like",
             "request_id": first["request_id"], "position": 1}  # fmt: skip
    answer = httpx.post(f"{prod.server.url}/feedback", json={"events": [event]}, headers=CLIENT, timeout=30).json()
    assert answer["accepted"] == 1 and answer["pushed_users"] == 1, answer
    for _ in range(4):  # two workers
        after = recommend(prod, user).json()
        ids = [item["video_id"] for item in after["items"]]
        assert after["in_session"] is True and liked not in ids
        assert any("session" in item["sources"] for item in after["items"])


def test_clients_need_a_key_that_allows_the_endpoint(prod):
    url, body = prod.server.url, {"user_id": "1", "k": 5}
    cases = [
        ({}, 401, "needs an API key"),
        ({"X-API-Key": "vk_tests_not-the-secret"}, 401, "not valid"),
        ({"Authorization": "Bearer " + CLIENT_KEY[:-1]}, 401, "not valid"),
        ({"X-API-Key": "some-other-token"}, 401, "not valid"),
    ]
    for headers, status, says in cases:
        response = httpx.post(f"{url}/recommend", json=body, headers=headers, timeout=30)
        assert response.status_code == status and says in response.json()["error"], (headers, response.text)
    assert (
        httpx.post(
            f"{url}/recommend", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30
        ).status_code
        == 200
    )
    refused = httpx.post(f"{url}/similar", json={"video_id": "1"}, headers={"X-API-Key": LIMITED_KEY}, timeout=30)
    assert refused.status_code == 403 and "'limited' may not call /similar" in refused.json()["error"]
    # Operations endpoints: the admin token only (VIDREC_OPS_ADMIN_ONLY=1); probes stay open.
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{url}/metrics", headers=CLIENT, timeout=30).status_code == 401
    metrics = httpx.get(f"{url}/metrics", headers=ADMIN, timeout=30).text
    assert 'vidrec_access_refused_total{reason="invalid key"}' in metrics
    assert httpx.get(f"{url}/livez", timeout=30).status_code == 200
    # Nothing secret reaches the log.
    log = prod.server.log_tail(2_000_000)
    for secret in (CLIENT_KEY, LIMITED_KEY, ADMIN_TOKEN, CLIENT_KEY.split("_", 2)[2]):
        assert secret not in log


def test_a_keys_rate_limit_holds_across_both_workers(prod):
    """2/s with a burst of 3, counted in Redis: 20 requests as fast as they go, on fresh
    connections (so both workers answer), get at most burst + rate x elapsed through."""
    url = prod.server.url
    started = time.monotonic()
    answers = []
    for i in range(20):
        with httpx.Client(timeout=30) as fresh:  # a new connection each time: either worker takes it
            answers.append(
                fresh.post(f"{url}/recommend", json={"user_id": str(1 + i % 5)}, headers={"X-API-Key": LIMITED_KEY})
            )
    elapsed = time.monotonic() - started
    allowed = [a for a in answers if a.status_code == 200]
    limited = [a for a in answers if a.status_code == 429]
    print(f"rate limit 2/s burst 3: {len(allowed)} of 20 allowed in {elapsed:.2f} s, {len(limited)} answered 429")
    assert len(allowed) + len(limited) == 20
    assert 3 <= len(allowed) <= 3 + 2 * elapsed + 1, (len(allowed), elapsed)
    assert limited and all(int(a.headers["retry-after"]) >= 1 for a in limited)
    assert "over its rate limit (2/s, burst 3)" in limited[0].json()["error"]
    time.sleep(1.2)  # the bucket refills
    assert (
        httpx.post(
            f"{url}/recommend", json={"user_id": "1"}, headers={"X-API-Key": LIMITED_KEY}, timeout=30
        ).status_code
        == 200
    )


def test_the_prod_profile_refuses_to_start_without_keys(prod, tmp_path):
    env = {k: v for k, v in prod.server.env.items() if k.startswith("VIDREC_") and k not in ("VIDREC_API_KEYS",)}
    lonely = ServerProcess(env=env, log_path=tmp_path / "no-keys.log")
    with pytest.raises(RuntimeError, match="the server exited"):
        lonely.start(ready_timeout=120)
    assert "serves only clients with API keys, and none is configured" in lonely.log_tail(20_000)


@dataclass
class Outcome:
    user: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    degraded: bool | None = None
    served_from: str | None = None
    error: str | None = None


class Load:
    """A few threads calling /recommend back to back, each with its own keep-alive connection."""

    def __init__(self, url: str, users: list[str], threads: int = 3):
        self.url, self.users, self.n_threads = url, users, threads
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, index: int) -> None:
        i = index
        with httpx.Client(timeout=30, headers=CLIENT) as client:
            while not self._stop.is_set():
                user = self.users[i % len(self.users)]
                i += self.n_threads
                started = time.monotonic()
                try:
                    response = client.post(f"{self.url}/recommend", json={"user_id": user, "k": 10})
                    outcome = Outcome(user, started, time.monotonic(), response.status_code)
                    try:
                        body = response.json()
                        outcome.degraded, outcome.served_from = body.get("degraded"), body.get("served_from")
                        if response.status_code != 200:
                            outcome.error = str(body)[:300]
                    except ValueError:
                        outcome.error = response.text[:300]
                except httpx.HTTPError as exc:
                    outcome = Outcome(user, started, time.monotonic(), None, error=repr(exc))
                with self._lock:
                    self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def since(self, t: float) -> list[Outcome]:
        return [o for o in self.snapshot() if o.started >= t]


def tally(outcomes: list[Outcome]) -> str:
    """Counts of (status, degraded, served_from), and the median and slowest latency."""
    counts = dict(collections.Counter((o.status, o.degraded, o.served_from) for o in outcomes))
    latencies = sorted(o.ended - o.started for o in outcomes)
    if not latencies:
        return "none"
    return f"{counts} (median {latencies[len(latencies) // 2] * 1000:.0f} ms, slowest {latencies[-1] * 1000:.0f} ms)"


def slowest(outcomes: list[Outcome]) -> float:
    return max((o.ended - o.started for o in outcomes), default=0.0)


def test_redis_dies_mid_load_the_service_degrades_and_recovers(prod):
    redis = prod.redis
    keys_before = redis.client(0).dbsize()
    redis.client().save()  # the snapshot the restarted server comes back with (the prod Redis persists)
    assert readyz(prod) == 200
    connections_before = registry_connections(prod)

    with Load(prod.server.url, LOAD_USERS) as load:
        assert eventually(lambda: len(load.snapshot()) >= 30, 60), tally(load.snapshot())
        killing = time.monotonic()
        redis.kill(signal.SIGKILL)  # a crash, mid-load
        killed = time.monotonic()

        not_ready = eventually(lambda: readyz(prod) == 503, 30)
        # Serve degraded for a while: long enough for every worker's breaker to open and retry.
        eventually(lambda: len(load.since(killed)) >= 40 and time.monotonic() - killed >= 5, 60)
        outage_readyz = readyz(prod)
        connections_during = registry_connections(prod)
        restarting = time.monotonic()
        redis.start()
        restarted = time.monotonic()
        keys_after = redis.client(0).dbsize()

        # Recovered: /readyz is 200 again and then 20 answers in a row, all begun after that, none degraded.
        recovered_at = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and recovered_at is None:
            if readyz(prod) != 200:
                time.sleep(0.25)
                continue
            mark = time.monotonic()
            eventually(lambda mark=mark: len(load.since(mark)) >= 20, 30)
            streak = load.since(mark)
            if len(streak) >= 20 and all(o.degraded is False for o in streak):
                recovered_at = mark

    outcomes = load.snapshot()
    before = [o for o in outcomes if o.ended <= killing]
    during = [o for o in outcomes if o.started >= killed and o.ended <= restarting]
    after = [o for o in outcomes if recovered_at is not None and o.started >= recovered_at]
    summary = (
        f"{len(outcomes)} requests; all: {tally(outcomes)}; before the crash: {tally(before)}; while Redis was down: "
        f"{tally(during)}; after recovery: {tally(after)}; readyz while down: {outage_readyz}; "
        f"Redis keys {keys_before} before, {keys_after} after the restart; connections to the Feast registry database: "
        f"{connections_before} before, {connections_during} during, {registry_connections(prod)} after the outage"
    )
    failures = [o for o in outcomes if o.status is None or o.status >= 500]
    assert not failures, (
        f"{len(failures)} failed requests, e.g. {failures[:3]}; {summary}\n{prod.server.log_tail(6000)}"
    )
    assert all(o.status == 200 for o in outcomes), summary
    assert len(before) >= 20 and all(o.degraded is False for o in before), summary
    assert not_ready and outage_readyz == 503, summary
    assert len(during) >= 20, summary
    assert all(o.degraded is True and o.served_from in ("cache", "popular") for o in during), summary
    # Degrading is fast: no answer waits on a dead Redis (the service's own request timeout is 5 s).
    assert slowest(during) < 3.0, summary
    assert keys_after == keys_before, summary  # the restarted Redis holds what was materialized
    assert recovered_at is not None, f"no recovery within 90 s of the restart; {summary}\n{prod.server.log_tail(4000)}"
    assert len(after) >= 20 and all(o.degraded is False and o.served_from == "realtime" for o in after), summary
    log = prod.server.log_path.read_text(errors="replace")
    assert "feast online store is unreachable" in log and "feast online store is reachable again" in log
    print(f"\n{summary}; recovered {recovered_at - restarted:.1f} s after the restart")

    # After the outage: real-time answers from Redis, and no database connections piled up (the service
    # reconnects to the online store after each failure).
    body = recommend(prod, "7").json()
    assert body["degraded"] is False and body["served_from"] == "realtime", body
    assert max(connections_during, registry_connections(prod)) <= connections_before + 2, summary
