"""Load benchmark of the online service: POST /recommend (k=10) at 4 and 32 connections.

Starts `bentoml serve serving.service:Vidrec` on 127.0.0.1 against a champion trained on the full
ml-latest-small (popularity, trending, item-cf, EASE and TF-IDF content generators, 100 candidates
each; a 200-tree XGBoost ranker on 59 features incl. Feast user, request and video features),
materialized into the SQLite online store. Every request takes the real-time path: one Feast online
read of the user row, the generators' candidates (>= 200 per request, checked), features, the
ranker, the re-rank. Precomputed lists are switched off so none is served from the batch store.

Load comes from wrk (apt-get install wrk) with a Lua script cycling over 500 known users and the
devices; without wrk a bounded asyncio httpx client runs instead. Two server configurations:

    cache on   the default: a user's pooled candidates (and their user x video cross features)
               are reused for VIDREC_CANDIDATE_CACHE_S; every request still reads the user's
               online row, builds the features and ranks >= 200 candidates with the ranker
    cache off  every request also scores the whole catalog with every generator

Every answer's slate goes to the impression log (serving.impressions) as in production; one more
run of the first cache configuration with VIDREC_LOG_IMPRESSIONS=0 measures what that logging
costs: the p50 with logging on over the p50 with it off, at each concurrency (target: <= 1.10).

The same-run baseline: before vidrec, a trivial BentoML endpoint (benchmarks/trivial_service.py:
async, pydantic output, access log off, the same workers) takes the same load at each concurrency;
vidrec's req/s is printed as a share of its req/s and vidrec's p99 as a multiple of its p99 (targets
at 32 connections: >= 35% cache off, >= 50% cache on, p99 <= 3x).

Last, `/feedback` -> visible: for 40 users a like of their top video is posted and /recommend asked
until the answer is steered by the session (the like pushed to the online store) and the video is
gone; p50/p99 of that time, beside a plain /recommend round trip of the same run.

Then the soak (--soak SECONDS, 300 by default in the SQLite profile, 0 = none): a fresh server in
the default configuration (cache on, impressions on) takes --soak seconds of load at 32 connections
while every BentoML worker's RSS is sampled every few seconds. After a warm-up (the first 60 s, or
20% of a shorter soak) a worker's RSS may grow by less than 20% to the end (BentoML's per-request
traffic-timeout timers are a known source of growth); one line gives requests, errors (non-2xx
included), the worst worker's RSS at warm-up end -> end and "ok" or "FAIL".

Prints p50/p95/p99 latency and requests/s per configuration and concurrency and writes
benchmarks/results/serving.json (the soak's RSS samples under "soak").

    python benchmarks/bench_serving.py [--duration 15] [--connections 4 32] [--workers 2] [--cache on off]
                                       [--impressions on off] [--soak 300]

The first run builds the champion into benchmarks/results/serving-home (a few minutes); later runs
reuse it (--rebuild to start over).

With `--online-store redis` the same measurement runs in the prod profile, as infra/compose.yaml
deploys it: the Feast online store is the Redis at --redis (a claimed empty database number), the
Feast SQL registry and the MLflow backend store are fresh PostgreSQL databases at --pg. The
champion is built into them every run (a few minutes) and everything is removed after; figures go
to benchmarks/results/serving-redis.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_repo.schema import KNOWN_DEVICES  # noqa: E402
from serving.process import ServerProcess  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ML_SMALL = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
GENERATORS = ("popularity", "trending", "item-cf", "ease", "content-tfidf")
SOAK_CONNECTIONS = 32
SOAK_GROWTH_TARGET = 0.20

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users = {%(users)s}
local devices = {%(devices)s}
local counter = 0
request = function()
  counter = counter + 1
  local user = users[(counter %% #users) + 1]
  local device = devices[(counter %% #devices) + 1]
  return wrk.format(nil, "/recommend", nil, '{"user_id":"' .. user .. '","k":10,"context":{"device":"' .. device .. '"}}')
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format('RESULT {"requests": %%d, "seconds": %%.3f, "errors": %%d, "non_2xx": %%d, "p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f, "mean_ms": %%.3f}\n',
    summary.requests, summary.duration / 1e6, errors, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
"""


def build_champion(home: Path, data_dir: Path, store_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "VIDREC_HOME": str(home), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(store_env or {})}
    code = (
        "import json; from pathlib import Path; from vidrec.settings import Settings; "
        "import sys, time; sys.path.insert(0, 'tests'); from champion import build_champion as b; t = time.perf_counter(); "
        f"c = b(Settings.from_env(), Path({str(data_dir)!r}), generators={GENERATORS!r}, ranker={{'n_estimators': 200, 'early_stopping_rounds': None}}); "
        "print('RESULT ' + json.dumps({'versions': c.versions, 'build_s': round(time.perf_counter() - t, 1), 'features': len(c.system.ranker.features), "
        "'trees': c.system.ranker.booster.get_booster().num_boosted_rounds(), 'users': int(c.system.data.n_users), 'videos': int(c.system.data.n_videos)}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"building the champion failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    (home / "champion.json").write_text(json.dumps(result, indent=2))
    return result


def known_users(home: Path, n: int = 500) -> list[str]:
    import pyarrow.parquet as pq

    users = pq.read_table(home / "lake" / "users" / "users.parquet", columns=["user_id"]).column(0).to_pylist()
    return sorted(users, key=lambda u: (len(u), u))[:n]


def run_wrk(url: str, users: list[str], connections: int, seconds: float, threads: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(
            WRK_SCRIPT
            % {"users": ", ".join(f'"{u}"' for u in users), "devices": ", ".join(f'"{d}"' for d in KNOWN_DEVICES)}
        )
        script = fh.name
    try:
        proc = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "5s", "-s", script, url],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        os.unlink(script)
    if "RESULT " not in proc.stdout:
        raise SystemExit(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    result["requests_per_s"] = result["requests"] / result["seconds"]
    return result


def run_httpx(url: str, users: list[str], connections: int, seconds: float) -> dict:
    """Fallback load generator: `connections` closed-loop clients on one event loop."""
    import httpx

    latencies: list[float] = []
    errors = non_2xx = 0

    async def client(index: int, stop_at: float, http: httpx.AsyncClient) -> None:
        nonlocal errors, non_2xx
        i = index
        while time.perf_counter() < stop_at:
            body = {
                "user_id": users[i % len(users)],
                "k": 10,
                "context": {"device": KNOWN_DEVICES[i % len(KNOWN_DEVICES)]},
            }
            started = time.perf_counter()
            try:
                response = await http.post(url + "/recommend", json=body)
                if not 200 <= response.status_code < 300:
                    errors += 1
                    non_2xx += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - started)
            i += connections

    async def main() -> float:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=5.0) as http:
            started = time.perf_counter()
            await asyncio.gather(*(client(i, started + seconds, http) for i in range(connections)))
            return time.perf_counter() - started

    elapsed = asyncio.run(main())
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "requests": len(latencies), "seconds": elapsed, "errors": errors, "non_2xx": non_2xx,
        "p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000, "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000, "requests_per_s": len(latencies) / elapsed,
    }  # fmt: skip


def run_load(client: str, url: str, users: list[str], connections: int, seconds: float, threads: int = 0) -> dict:
    """`connections` closed-loop clients for `seconds`: wrk, or the httpx fallback."""
    if client == "wrk":
        return run_wrk(url, users, connections, seconds, threads=threads or (1 if connections <= 4 else 2))
    return run_httpx(url, users, connections, seconds)


def check_requests(url: str, users: list[str]) -> dict:
    """A few requests through the real path: enough candidates ranked, the online read used."""
    import httpx

    ranked, paths = [], set()
    for user in users[:20]:
        body = httpx.post(url + "/recommend", json={"user_id": user, "k": 10}, timeout=10).raise_for_status().json()
        ranked.append(body["candidates"])
        paths.add((body["served_from"], body["degraded"]))
        assert len(body["items"]) == 10, body
    if paths != {("realtime", False)}:
        raise SystemExit(f"requests did not all take the real-time path with the online read: {paths}")
    if min(ranked) < 200:
        raise SystemExit(f"only {min(ranked)} candidates ranked for some users (need >= 200)")
    return {"candidates_min": min(ranked), "candidates_mean": statistics.fmean(ranked)}


@contextlib.contextmanager
def prod_stores(pg_admin: str, redis_address: str) -> Iterator[dict[str, str]]:
    """The prod profile's stores for one run: two fresh PostgreSQL databases and a claimed Redis db."""
    from bench_redis import claim_redis_db, empty_db, pg_connect

    host, _, port = redis_address.rpartition(":")
    db, client = claim_redis_db(host or "127.0.0.1", int(port))
    suffix = uuid.uuid4().hex[:8]
    names = {"mlflow": f"vidrec_bench_serving_mlflow_{suffix}", "feast": f"vidrec_bench_serving_feast_{suffix}"}
    base = pg_admin.rsplit("/", 1)[0]
    try:
        with pg_connect(pg_admin) as conn:
            for name in names.values():
                conn.execute(f'CREATE DATABASE "{name}"')
        yield {
            "VIDREC_PROFILE": "prod",
            "VIDREC_MLFLOW_URI": f"{base}/{names['mlflow']}".replace("postgresql://", "postgresql+psycopg://"),
            "VIDREC_FEAST_REGISTRY_URL": f"{base}/{names['feast']}".replace("postgresql://", "postgresql+psycopg://"),
            "VIDREC_FEAST_REDIS": f"{host or '127.0.0.1'}:{port},db={db}",
        }
    finally:
        empty_db(client)
        with pg_connect(pg_admin) as conn:
            for name in names.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--home", type=Path, default=RESULTS / "serving-home")
    parser.add_argument("--data-dir", type=Path, default=ML_SMALL)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument(
        "--cache", nargs="+", choices=["on", "off"], default=["on", "off"], help="candidate cache configurations"
    )
    parser.add_argument(
        "--impressions", nargs="+", choices=["on", "off"], default=["on", "off"],
        help="impression logging: 'off' adds a run of the first cache configuration without it",
    )  # fmt: skip
    parser.add_argument(
        "--soak", type=float, default=None, metavar="SECONDS",
        help="seconds of load at 32 connections watching worker RSS (default: 300 with sqlite, 0 with redis; 0 = none)",
    )  # fmt: skip
    parser.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite",
                        help="sqlite: the local profile; redis: the prod profile (Redis + PostgreSQL)")  # fmt: skip
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Redis for --online-store redis")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL admin URL for --online-store redis")  # fmt: skip
    args = parser.parse_args()
    if args.soak is None:
        args.soak = 300.0 if args.online_store == "sqlite" else 0.0

    if args.online_store == "redis":
        # Its databases are dropped after each run, so the champion is built anew in a scratch home.
        home = Path(tempfile.mkdtemp(prefix="vidrec-bench-serving-redis-"))
        with prod_stores(args.pg, args.redis) as store_env:
            print(f"prod profile: Redis {store_env['VIDREC_FEAST_REDIS']}, PostgreSQL {args.pg}", flush=True)
            print(f"building the benchmark champion in {home} ...", flush=True)
            champion = build_champion(home, args.data_dir, store_env)
            try:
                measure(args, home, champion, store_env, RESULTS / "serving-redis.json")
            finally:
                shutil.rmtree(home, ignore_errors=True)
        return

    if args.rebuild and args.home.exists():
        shutil.rmtree(args.home)
    if not (args.home / "champion.json").exists():
        print(f"building the benchmark champion in {args.home} ...", flush=True)
        args.home.mkdir(parents=True, exist_ok=True)
        champion = build_champion(args.home, args.data_dir)
    else:
        champion = json.loads((args.home / "champion.json").read_text())
    measure(args, args.home, champion, {}, RESULTS / "serving.json")


def measure(args: argparse.Namespace, home: Path, champion: dict, store_env: dict[str, str], out: Path) -> None:
    print(f"champion: {champion}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    users = known_users(home)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    if client == "httpx":
        print("wrk not found (apt-get install wrk): the Python load client takes CPU from the server, "
              "so requests/s come out at about half of what wrk measures", flush=True)  # fmt: skip

    rows = []
    checked: dict = {}
    visibility: dict = {}
    baseline = measure_baseline(args, client, users)
    configurations = [(cache, "on") for cache in args.cache] if "on" in args.impressions else []
    if "off" in args.impressions:
        configurations.append((args.cache[0], "off"))
    for cache, impressions in configurations:
        env = server_env(home, store_env, args.workers, cache, impressions)
        with ServerProcess(
            env=env, log_path=RESULTS / f"serving-server-{args.online_store}-cache-{cache}-imp-{impressions}.log"
        ) as server:
            checked = check_requests(server.url, users)
            label = f"candidate cache {cache}, impressions {impressions}"
            print(f"[{label}] server ready at {server.url}; {checked}", flush=True)
            # Warm up both workers (lazy imports, allocator growth; with the cache on, fills it).
            run_load(client, server.url, users, 8, 4, threads=1)
            for connections in args.connections:
                result = run_load(client, server.url, users, connections, args.duration)
                rows.append(
                    {"candidate_cache": cache, "impressions": impressions, "connections": connections,
                     "client": client, **result}
                )  # fmt: skip
                base = baseline[connections]
                rows[-1]["vs_trivial"] = {
                    "requests_per_s": round(result["requests_per_s"] / base["requests_per_s"], 3),
                    "p99": round(result["p99_ms"] / base["p99_ms"], 2),
                }
                print(
                    f"[{label}] {connections:>3} connections: {result['requests_per_s']:7.1f} req/s  "
                    f"p50 {result['p50_ms']:6.2f} ms  p95 {result['p95_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                    f"max {result['max_ms']:7.2f} ms  errors {result['errors']}  | "
                    f"{rows[-1]['vs_trivial']['requests_per_s']:.0%} of the trivial endpoint's req/s, "
                    f"p99 {rows[-1]['vs_trivial']['p99']:.1f}x its",
                    flush=True,
                )
            if (cache, impressions) == configurations[-1]:
                # Last, so the sessions these likes open do not change the load runs' work.
                visibility = feedback_visibility(server.url, users[-40:])
                print(
                    f"[{label}] /feedback -> visible in /recommend: p50 {visibility['visible_p50_ms']:.1f} ms  "
                    f"p99 {visibility['visible_p99_ms']:.1f} ms  ({visibility['visible_p50_vs_plain_recommend']:.2f}x a "
                    f"plain /recommend, p50 {visibility['plain_recommend_p50_ms']:.1f} ms, same run)",
                    flush=True,
                )
    soaked = soak(args, client, users, home, store_env) if args.soak > 0 else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "endpoint": "POST /recommend k=10",
        "online_store": args.online_store,
        "workers": args.workers,
        "duration_s": args.duration,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "champion": champion,
        **checked,
        "results": rows,
        "impression_logging_p50_ratio": impression_cost(rows),
        "feedback_visibility": visibility,
        "trivial_endpoint": {str(c): r for c, r in baseline.items()},
        "soak": soaked,
    }
    out.write_text(json.dumps(report, indent=2))
    print(
        "\n| candidate cache | impressions | connections | req/s | % of trivial | p50 ms | p99 ms | p99 / trivial | errors |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['candidate_cache']} | {r['impressions']} | {r['connections']} | {r['requests_per_s']:.0f} | "
            f"{r['vs_trivial']['requests_per_s']:.0%} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['vs_trivial']['p99']:.1f}x | {r['errors']} |"
        )
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; load client {client}")
    for connections, ratio in report["impression_logging_p50_ratio"].items():
        print(f"impression logging on/off, p50 at {connections} connections: {ratio:.3f} (target <= 1.10)")
    if soaked:
        print(soaked["line"])


def server_env(home: Path, store_env: dict[str, str], workers: int, cache: str, impressions: str) -> dict[str, str]:
    """The service's environment for one configuration: the real-time path only (no precomputed lists)."""
    return {
        **store_env,
        "VIDREC_HOME": str(home),
        "VIDREC_SERVE_WORKERS": str(workers),
        "VIDREC_PRECOMPUTED_URL": "off",
        "VIDREC_RELOAD_POLL_S": "30",
        "VIDREC_CANDIDATE_CACHE": "5000" if cache == "on" else "0",
        "VIDREC_LOG_IMPRESSIONS": "1" if impressions == "on" else "0",
    }


def worker_processes(server_pid: int) -> list:
    """The BentoML workers under `bentoml serve` (circusd): its `_bentoml_impl.worker` children."""
    import psutil

    workers = []
    for child in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("_bentoml_impl.worker" in part for part in child.cmdline()):
                workers.append(child)
    return workers


def soak(args: argparse.Namespace, client: str, users: list[str], home: Path, store_env: dict[str, str]) -> dict:
    """--soak seconds at 32 connections on a fresh default-configuration server, sampling each
    worker's RSS every few seconds; growth = RSS at the end over RSS at the end of warm-up, per worker."""
    import psutil

    seconds = args.soak
    warmup_s = min(60.0, 0.2 * seconds)
    interval_s = min(5.0, max(1.0, seconds / 30))
    env = server_env(home, store_env, args.workers, "on", "on")
    samples: list[dict] = []
    with ServerProcess(env=env, log_path=RESULTS / f"serving-server-{args.online_store}-soak.log") as server:
        check_requests(server.url, users)
        started_pids = sorted(w.pid for w in worker_processes(server.proc.pid))
        if not started_pids:
            raise SystemExit(f"no BentoML worker processes found under the server (pid {server.proc.pid})")
        print(f"[soak] {seconds:g} s at {SOAK_CONNECTIONS} connections, workers {started_pids}, "
              f"RSS every {interval_s:g} s, warm-up {warmup_s:g} s ...", flush=True)  # fmt: skip
        stop = threading.Event()
        started = time.perf_counter()

        def take() -> float:
            at = round(time.perf_counter() - started, 2)
            for worker in worker_processes(server.proc.pid):
                with contextlib.suppress(psutil.Error):
                    samples.append({"t_s": at, "pid": worker.pid, "rss_bytes": worker.memory_info().rss})
            return at

        def sampler() -> None:
            take()
            while not stop.wait(interval_s):
                take()

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        try:
            result = run_load(client, server.url, users, SOAK_CONNECTIONS, seconds)
        finally:
            stop.set()
            thread.join()
        ended_at = take()

    per_worker = {}
    for pid in sorted({s["pid"] for s in samples}):
        mine = [s for s in samples if s["pid"] == pid]
        after = [s for s in mine if s["t_s"] >= warmup_s]
        if not after or after[0] is mine[-1]:
            continue  # a worker that was not there from warm-up end to the end
        base, end = after[0]["rss_bytes"], mine[-1]["rss_bytes"]
        per_worker[str(pid)] = {"warmup_rss_bytes": base, "end_rss_bytes": end, "growth": round((end - base) / base, 4),
                                "first_rss_bytes": mine[0]["rss_bytes"], "peak_rss_bytes": max(s["rss_bytes"] for s in mine)}  # fmt: skip
    ended_pids = sorted({s["pid"] for s in samples if s["t_s"] == ended_at})
    restarted = ended_pids != started_pids or sorted(map(int, per_worker)) != started_pids
    worst = max(per_worker.items(), key=lambda kv: kv[1]["growth"]) if per_worker else None
    growth = worst[1]["growth"] if worst else float("nan")
    errors = result["errors"]
    problems = []
    if not growth < SOAK_GROWTH_TARGET:
        problems.append("RSS growth")
    if errors:
        problems.append("errors")
    if restarted:
        problems.append(f"workers changed {started_pids} -> {ended_pids}")
    verdict = "ok" if not problems else "FAIL (" + ", ".join(problems) + ")"
    mib = 1 << 20
    rss = (
        f"{worst[1]['warmup_rss_bytes'] / mib:.0f} MiB -> {worst[1]['end_rss_bytes'] / mib:.0f} MiB ({growth:+.1%}"
        if worst
        else "n/a (no worker sampled from warm-up end to the end"
    )
    line = (
        f"soak: {seconds:g} s at {SOAK_CONNECTIONS} connections, {result['requests']:,} requests, {errors:,} errors "
        f"({result['non_2xx']:,} non-2xx); worker RSS after warm-up {rss}, target < {SOAK_GROWTH_TARGET:.0%}): {verdict}"
    )
    print(f"[soak] {line}", flush=True)
    return {
        "seconds": seconds,
        "connections": SOAK_CONNECTIONS,
        "client": client,
        "candidate_cache": "on",
        "impressions": "on",
        "warmup_s": warmup_s,
        "sample_interval_s": interval_s,
        "load": result,
        "workers": per_worker,
        "max_rss_growth": growth,
        "target_rss_growth": SOAK_GROWTH_TARGET,
        "ok": not problems,
        "line": line,
        "samples": samples,
    }


def measure_baseline(args: argparse.Namespace, client: str, users: list[str]) -> dict[int, dict]:
    """The trivial BentoML endpoint (benchmarks/trivial_service.py) under the same load, per concurrency."""
    out = {}
    env = {"VIDREC_SERVE_WORKERS": str(args.workers)}
    with ServerProcess(
        env=env, log_path=RESULTS / "serving-trivial.log", service="benchmarks.trivial_service:Trivial"
    ) as server:
        run_load(client, server.url, users, 8, 4, threads=1)
        for connections in args.connections:
            result = run_load(client, server.url, users, connections, args.duration)
            out[connections] = result
            print(
                f"[trivial BentoML endpoint] {connections:>3} connections: {result['requests_per_s']:7.1f} req/s  "
                f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}",
                flush=True,
            )
    return out


def feedback_visibility(url: str, users: list[str], timeout_s: float = 5.0) -> dict:
    """How long until a like shows: POST /feedback (a like of the user's top video), then
    /recommend until the answer is steered by the session and the video is gone. Baseline of the
    same run: one plain /recommend round trip of the same users."""
    import httpx

    seen, plain = [], []
    with httpx.Client(timeout=10) as http:
        for user in users:
            started = time.perf_counter()
            first = http.post(url + "/recommend", json={"user_id": user, "k": 10}).raise_for_status().json()
            plain.append(time.perf_counter() - started)
            video = first["items"][0]["video_id"]
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            event = {"user_id": user, "video_id": video, "event_ts": now, "event_type": "like",
                     "request_id": first["request_id"], "position": 1}  # fmt: skip
            started = time.perf_counter()
            http.post(url + "/feedback", json={"events": [event]}).raise_for_status()
            while time.perf_counter() - started < timeout_s:
                answer = http.post(url + "/recommend", json={"user_id": user, "k": 10}).raise_for_status().json()
                if answer["in_session"] and video not in [i["video_id"] for i in answer["items"]]:
                    seen.append(time.perf_counter() - started)
                    break
            else:
                raise SystemExit(f"a like of {video} by user {user} was not visible after {timeout_s} s")
    quantile = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000  # noqa: E731
    out = {
        "users": len(users),
        "visible_p50_ms": round(quantile(seen, 0.5), 2),
        "visible_p99_ms": round(quantile(seen, 0.99), 2),
        "plain_recommend_p50_ms": round(quantile(plain, 0.5), 2),
    }
    out["visible_p50_vs_plain_recommend"] = round(out["visible_p50_ms"] / out["plain_recommend_p50_ms"], 2)
    return out


def impression_cost(rows: list[dict]) -> dict[str, float]:
    """p50 with impression logging over p50 without, per concurrency, for the same cache setting."""
    off = {(r["candidate_cache"], r["connections"]): r["p50_ms"] for r in rows if r["impressions"] == "off"}
    return {
        str(r["connections"]): round(r["p50_ms"] / off[(r["candidate_cache"], r["connections"])], 3)
        for r in rows
        if r["impressions"] == "on" and (r["candidate_cache"], r["connections"]) in off
    }


if __name__ == "__main__":
    main()
