"""Feast with Redis as the online store (the prod profile): materialization throughput and read latency.

Writes synthetic feature snapshots in the exact schema of the transforms' output (`user_features`,
`video_features`: 1M entity rows by default, 800k users + 200k videos, one as-of time), registers
the repo with the prod profile (SQL registry in a fresh PostgreSQL database) and materializes into
an empty Redis database number claimed for the run. Then reads one user row at a time, the way the
service does per request (`feature_repo.store.online_user_features`: user_profile + user_recent),
and reports p50/p99. Everything it created (database, Redis keys, parquet files) is removed after.

Prints a markdown table and writes benchmarks/results/redis.json. Usage:

    python benchmarks/bench_redis.py [--users 800000 --videos 200000 --reads 2000] [--writer bulk|feast]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--redis 127.0.0.1:6379]

"Rows" are feature-table rows (one entity at one as-of time). The user table feeds two views, so
each user row is written to Redis twice (one hash field set per view); view-rows/s counts those.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AS_OF = pd.Timestamp("2024-06-01", tz="UTC")
CLAIM_KEY = "vidrec:bench-redis:claim"
GENRES = np.array(["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Documentary"])


# ---- synthetic feature snapshots -----------------------------------------------------------------


def _shares(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.dirichlet(np.ones(k), size=n)


def user_table(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    total = rng.integers(0, 2_000, n)
    last_30 = np.minimum(total, rng.integers(0, 200, n))
    last_7 = np.minimum(last_30, rng.integers(0, 60, n))
    last_1 = np.minimum(last_7, rng.integers(0, 15, n))
    ratings = np.minimum(total, rng.integers(0, 300, n))
    g = rng.integers(0, len(GENRES), (n, 3))
    top = (
        pd.Series(GENRES[g[:, 0]]).str.cat([pd.Series(GENRES[g[:, 1]]), pd.Series(GENRES[g[:, 2]])], sep=":0.3|")
        + ":0.2"
    )
    videos = rng.integers(0, 200_000, (n, 10)).astype(str)
    last_videos = pd.Series(["v" + "|v".join(row) for row in videos])
    day = _shares(rng, n, 4)
    dev = _shares(rng, n, 4)
    frame = pd.DataFrame(
        {
            "user_id": np.char.add("u", np.arange(n).astype(str)),
            "event_timestamp": AS_OF,
            "created_ts": AS_OF,
            "events_1d": last_1, "events_7d": last_7, "events_30d": last_30, "events_total": total,
            "ratings_count": ratings,
            "avg_rating": np.where(ratings > 0, rng.uniform(0.5, 5.0, n).round(2), np.nan),
            "like_ratio": rng.uniform(0, 1, n),
            "avg_completion": rng.uniform(0, 1, n),
            "top_genres": top,
            "days_since_last_activity": rng.exponential(5.0, n),
            "share_night": day[:, 0], "share_morning": day[:, 1], "share_afternoon": day[:, 2], "share_evening": day[:, 3],
            "share_mobile": dev[:, 0], "share_desktop": dev[:, 1], "share_tv": dev[:, 2], "share_tablet": dev[:, 3],
            "last_video_ids": last_videos,
        }
    )  # fmt: skip
    return pa.Table.from_pandas(frame, preserve_index=False)


def video_table(n: int, seed: int = 2) -> pa.Table:
    rng = np.random.default_rng(seed)
    total = rng.integers(0, 50_000, n)
    v30 = np.minimum(total, rng.integers(0, 5_000, n))
    v7 = np.minimum(v30, rng.integers(0, 1_500, n))
    prev7 = np.minimum(v30 - v7, rng.integers(0, 1_500, n))
    v1 = np.minimum(v7, rng.integers(0, 300, n))
    g = rng.integers(0, len(GENRES), (n, 2))
    frame = pd.DataFrame(
        {
            "video_id": np.char.add("v", np.arange(n).astype(str)),
            "event_timestamp": AS_OF,
            "created_ts": AS_OF,
            "views_1d": v1, "views_7d": v7, "views_30d": v30, "views_prev_7d": prev7, "views_total": total,
            "trending_score": np.log((1 + v7) / (1 + prev7)),
            "completion_rate": rng.uniform(0, 1, n),
            "like_ratio": rng.uniform(0, 1, n),
            "avg_rating": rng.uniform(0.5, 5.0, n).round(2),
            "ratings_count": rng.integers(0, 10_000, n),
            "age_days": rng.uniform(0, 3_000, n),
            "duration_s": rng.uniform(30, 10_800, n).round(),
            "genres": pd.Series(GENRES[g[:, 0]]).str.cat(pd.Series(GENRES[g[:, 1]]), sep="|"),
        }
    )  # fmt: skip
    return pa.Table.from_pandas(frame, preserve_index=False)


# ---- the servers ---------------------------------------------------------------------------------


def claim_redis_db(host: str, port: int):
    """An empty Redis database (1..15) marked with a claim key; the caller empties it after."""
    import redis

    token = uuid.uuid4().hex
    databases = int(redis.Redis(host=host, port=port).config_get("databases").get("databases", 16))
    for db in range(1, databases):
        client = redis.Redis(host=host, port=port, db=db)
        if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=6 * 3600):
            if client.dbsize() == 1:
                return db, client
            if client.get(CLAIM_KEY) == token.encode():
                client.delete(CLAIM_KEY)
    raise SystemExit(f"no empty Redis database at {host}:{port}")


def empty_db(client) -> None:
    batch = []
    for key in client.scan_iter(count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def pg_connect(admin: str):
    import psycopg

    return psycopg.connect(admin.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=5)


# ---- the benchmark -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace) -> dict:
    import os

    from feature_repo import store
    from vidrec.settings import Settings

    host, _, port = args.redis.rpartition(":")
    host, port = host or "127.0.0.1", int(port or 6379)
    db, client = claim_redis_db(host, port)
    database = f"vidrec_bench_{uuid.uuid4().hex[:8]}"
    with pg_connect(args.pg) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    work = Path(tempfile.mkdtemp(prefix="vidrec-bench-redis-"))
    registry_url = "postgresql+psycopg://" + args.pg.split("://", 1)[1].rsplit("/", 1)[0] + f"/{database}"
    os.environ["VIDREC_FEAST_REGISTRY_URL"] = registry_url
    os.environ["VIDREC_FEAST_REDIS"] = f"{host}:{port},db={db}"
    settings = Settings(
        profile="prod", home=work / "home", lake_dir=work / "lake", cache_dir=work / "cache",
        features_dir=work / "features", mlflow_uri="unused://", mlflow_artifacts=str(work / "mlartifacts"),
    )  # fmt: skip
    try:
        features = settings.features_dir
        features.mkdir(parents=True)
        started = time.perf_counter()
        users, videos = user_table(args.users), video_table(args.videos)
        pq.write_table(users, features / "user_features.parquet")
        pq.write_table(videos, features / "video_features.parquet")
        generate_s = time.perf_counter() - started
        print(f"wrote {args.users:,} user + {args.videos:,} video feature rows in {generate_s:.1f}s", flush=True)

        started = time.perf_counter()
        store.apply_repo(settings)
        apply_s = time.perf_counter() - started

        views: dict[str, dict] = {}
        rows_of = {"user_profile": args.users, "user_recent": args.users, "video_stats": args.videos}
        mark = time.perf_counter()

        def progress(m) -> None:
            nonlocal mark
            now = time.perf_counter()
            if not m.mode.startswith("skipped"):
                rows = rows_of[m.view]
                views[m.view] = {"rows": rows, "seconds": now - mark, "rows_per_s": rows / (now - mark)}
                print(f"  {m.view}: {rows:,} rows in {now - mark:.1f}s ({rows / (now - mark):,.0f} rows/s)", flush=True)
            mark = now

        started = time.perf_counter()
        store.materialize(settings, AS_OF.to_pydatetime(), progress=progress, bulk=args.writer == "bulk")
        materialize_s = time.perf_counter() - started
        table_rows = args.users + args.videos
        view_rows = sum(v["rows"] for v in views.values())

        keys = client.dbsize() - 1  # less the claim key
        assert keys == table_rows, f"{keys} keys in Redis db {db}, expected {table_rows}"
        memory_mb = client.info("memory")["used_memory"] / 2**20

        # Spot check: online values equal the parquet rows.
        rng = np.random.default_rng(3)
        sample = [f"u{i}" for i in rng.integers(0, args.users, 20)]
        online = store.online_user_features(sample, settings=settings).set_index("user_id")
        want = users.to_pandas().set_index("user_id").loc[sample]
        np.testing.assert_allclose(
            online["user_profile__avg_completion"].to_numpy(float), want["avg_completion"].to_numpy(float)
        )
        assert online["user_recent__last_video_ids"].tolist() == want["last_video_ids"].tolist()

        latencies = {}
        for name, reader, ids in (
            (
                "user (user_profile + user_recent)",
                store.online_user_features,
                [f"u{i}" for i in rng.integers(0, args.users, args.reads)],
            ),
            (
                "video (video_stats)",
                store.online_video_features,
                [f"v{i}" for i in rng.integers(0, args.videos, args.reads)],
            ),
        ):
            for uid in ids[:50]:  # warm-up: registry cache, connection pool
                reader([uid], settings=settings)
            times = []
            for uid in ids:
                t0 = time.perf_counter()
                reader([uid], settings=settings)
                times.append((time.perf_counter() - t0) * 1000)
            latencies[name] = {
                "reads": len(times), "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                "mean_ms": statistics.fmean(times), "max_ms": max(times),
            }  # fmt: skip
        return {
            "writer": args.writer,
            "redis": f"{host}:{port} db={db}",
            "table_rows": table_rows,
            "users": args.users,
            "videos": args.videos,
            "generate_s": generate_s,
            "apply_s": apply_s,
            "materialize_s": materialize_s,
            "table_rows_per_s": table_rows / materialize_s,
            "view_rows": view_rows,
            "view_rows_per_s": view_rows / materialize_s,
            "views": views,
            "redis_keys": keys,
            "redis_used_memory_mb": memory_mb,
            "online_read": latencies,
        }
    finally:
        where = store.locations(settings)
        cached = store._STORES.pop(where, None)
        engine = getattr(getattr(cached, "registry", None), "write_engine", None)
        if engine is not None:
            engine.dispose()
        empty_db(client)
        with pg_connect(args.pg) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=800_000)
    parser.add_argument("--videos", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=2_000, help="one-row online reads per entity kind")
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin URL (creates a database)"
    )
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--writer", choices=["bulk", "feast"], default="bulk",
                        help="bulk: feature_repo.online_bulk (the default of `vidrec features`); feast: Feast's own writer")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "redis.json")
    args = parser.parse_args()

    result = run(args)
    print()
    print(f"| Feast -> Redis ({result['redis']}), {result['writer']} writer | value |")
    print("|---|---|")
    print(
        f"| feature-table rows | {result['table_rows']:,} ({result['users']:,} users + {result['videos']:,} videos) |"
    )
    print(f"| feast apply (SQL registry on PostgreSQL) | {result['apply_s']:.1f} s |")
    print(f"| materialize | {result['materialize_s']:.1f} s |")
    print(f"| throughput, table rows | {result['table_rows_per_s']:,.0f} rows/s |")
    print(f"| throughput, view rows (user rows feed 2 views) | {result['view_rows_per_s']:,.0f} rows/s |")
    for view, v in result["views"].items():
        print(f"| {view} | {v['rows']:,} rows, {v['seconds']:.1f} s, {v['rows_per_s']:,.0f} rows/s |")
    print(
        f"| Redis keys / instance used memory | {result['redis_keys']:,} / {result['redis_used_memory_mb']:,.0f} MiB |"
    )
    for name, lat in result["online_read"].items():
        print(
            f"| one-row online read, {name} | p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms over {lat['reads']:,} reads |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
