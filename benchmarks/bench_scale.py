"""The whole pipeline at platform size: time and peak memory of every stage, 1M events by default.

    generate   `vidrec generate`-equivalent synthetic platform (users, videos, events with sessions)
    ingest     validation + lake (feature_repo.ingest)
    features   feature tables, TF-IDF video embeddings, feast apply, materialize (vidrec.pipeline.features_job)
    train      `vidrec train` with its defaults (models.lifecycle.train.train_and_gate): its own stages are
               printed below the table (generators per window, ranker rows and training, evaluation)
    batch      the vidrec_batch_recs precompute (vidrec.pipeline.precompute_recommendations) for the
               users active in the last 30 days, streamed into the SQLite precomputed store
    serve      what the service does at start and per request: load the champion from the registry,
               build the serving Engine, rank 200 known users (p50/p99 per request)

Baseline, in the same run: reading the lake's events and building the user x video matrix
(`Interactions.from_events`), the least any training step does with the data; every stage's
time is also printed as a multiple of it, since these machines differ 2-4x in speed.

Every stage runs in its own process, so its peak RSS is its own (VmHWM). Under the spark
profile a stage's Spark work runs in a JVM the stage starts (the driver; with `local[N]` the
executors too), whose peak is printed beside the Python process's (`jvm peak`). Prints a markdown
table and writes benchmarks/results/scale.json (scale-spark.json for the spark profile). Usage:

    python benchmarks/bench_scale.py [--events 1000000 --users 20000 --videos 5000 --days 60]
        [--keep DIR]    # keep (and reuse) the generated platform, lake and models in DIR
        [--profile spark [--spark-master local[2]] [--redis-db 13]]
        [--until features]  # stop after that stage (10M and up: train and batch take hours on 2 cores)

The spark profile runs features, training and the batch on Spark (VIDREC_SPARK_MASTER), with its
Feast registry in a PostgreSQL database the benchmark creates and drops (VIDREC_BENCH_PG, an admin
URL, default postgresql://postgres@127.0.0.1:5432/postgres), Redis db `--redis-db` (refused unless
empty; emptied afterwards) as the online and precomputed store, MLflow on SQLite in the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "ingest", "baseline", "features", "train", "batch", "serve")

STEP = r"""
import json, sys, time
from pathlib import Path
stage, args = sys.argv[1], json.loads(sys.argv[2])
folder = Path(args["folder"])
from vidrec.settings import Settings
settings = Settings.from_env()
out = {}
started = time.perf_counter()
if stage == "generate":
    from feature_repo.synthetic import SyntheticConfig, generate
    summary = generate(SyntheticConfig(n_users=args["users"], n_videos=args["videos"], n_events=args["events"],
                                       days=args["days"]), folder / "synthetic")
    out = {"events": summary.n_events}
elif stage == "ingest":
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import open_source
    summary = ingest(open_source("synthetic", folder / "synthetic", folder / "cache"), Lake(settings.lake_dir))
    out = {"events": summary.lake["events"], "users": summary.lake["users"], "videos": summary.lake["videos"]}
elif stage == "baseline":
    from feature_repo.lake import Lake
    from models.interactions import LEARNING_TYPES, Interactions
    lake = Lake(settings.lake_dir)
    events = lake.read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts"])
    events = events[events["event_type"].isin(LEARNING_TYPES)]
    data = Interactions.from_events(events, catalog=lake.read_table("videos")["video_id"], weighting="binary")
    out = {"learning_events": len(events), "pairs": int(data.matrix.nnz)}
elif stage == "features":
    from vidrec.pipeline import features_job
    steps = {}  # the job's tasks: transform, embeddings, feast_apply, materialize
    def step(name, result):
        steps[name] = time.perf_counter() - steps[name] if result is not None else time.perf_counter()
    run = features_job(None, 52, "W", embeddings="tfidf", step=step, settings=settings)
    out = {"as_of_times": len(run["transform"]["as_of"]), "step_seconds": {k: round(v, 1) for k, v in steps.items()}}
elif stage == "train":
    from models.lifecycle.config import TrainConfig
    from models.lifecycle.train import train_and_gate
    result = train_and_gate(settings, TrainConfig(), dataset="synthetic", progress=lambda m: print(m, file=sys.stderr, flush=True))
    row = result.table.loc["two-stage"]
    if not result.decision.promoted:  # the batch and serve stages need a champion, not a verdict
        from mlflow import MlflowClient
        from models.lifecycle import registry
        registry.promote(MlflowClient(), result.versions)
    out = {"ndcg_at_10": float(row["ndcg_at_10"]), "eval_users": float(row["n_users"]),
           "decision": result.decision.summary(), "versions": result.versions,
           "stages": [{"name": r.name, "seconds": r.seconds, "peak_rss_bytes": r.peak_rss_bytes} for r in result.stages],
           "table": {model: float(v) for model, v in result.table["ndcg_at_10"].items()}}
elif stage == "batch":
    import pandas as pd
    from feature_repo.lake import Lake
    from vidrec.pipeline import precompute_recommendations
    last = Lake(settings.lake_dir).read_events(columns=["event_ts"])["event_ts"].max()
    end = (pd.Timestamp(last).ceil("D")).isoformat()
    result = precompute_recommendations(end, store_url=args["precomputed_url"] or f"sqlite:///{folder / 'precomputed.db'}")
    out = {k: result[k] for k in ("active_users", "unknown_to_champion", "users_written", "rows")}
elif stage == "serve":
    from datetime import datetime, timezone
    import numpy as np
    from models.lifecycle import registry, tracking
    from serving.engine import Engine
    tracking.configure(settings)
    champion = registry.load_champion()
    engine = Engine(champion.system, champion.versions, "champion")
    loaded = time.perf_counter() - started
    rng = np.random.default_rng(0)
    rows = rng.choice(champion.system.data.n_users, size=min(200, champion.system.data.n_users), replace=False)
    now = datetime.now(timezone.utc)
    latencies = []
    for row in rows:
        t = time.perf_counter()
        engine.rank(int(row), None, now, "mobile")
        latencies.append(time.perf_counter() - t)
    out = {"load_seconds": loaded, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
           "p99_ms": 1000 * float(np.percentile(latencies, 99)), "requests": len(rows)}
out["seconds"] = time.perf_counter() - started
from vidrec.meter import peak_rss_bytes
# train's meter resets the high-water mark per stage: the process's peak is the largest of them
out["peak_rss_bytes"] = max([peak_rss_bytes()] + [s["peak_rss_bytes"] for s in out.get("stages", [])])
# A Spark stage's JVM is a child process: its own high-water mark, read before it exits with us.
jvm = 0
for children in Path("/proc/self/task").glob("*/children"):
    for pid in children.read_text().split():
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "java" in Path(f"/proc/{pid}/comm").read_text():
            jvm = max(jvm, next(int(l.split()[1]) for l in status.read_text().splitlines() if l.startswith("VmHWM")) * 1024)
if jvm:
    out["jvm_peak_rss_bytes"] = jvm
print("RESULT " + json.dumps(out, default=str))
"""


def run_stage(stage: str, args: dict, env: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STEP, stage, json.dumps(args)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode})")
    for line in proc.stderr.splitlines():
        if stage == "train" and line.strip():
            print(f"    train: {line.strip()}", flush=True)
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["wall_seconds"] = time.perf_counter() - started
    return result


@contextlib.contextmanager
def spark_stores(args, env: dict, stage_args: dict):
    """The spark profile's stores for one run: a fresh Feast registry database, an empty Redis db."""
    import uuid

    import psycopg
    import redis

    admin = os.environ.get("VIDREC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    client = redis.Redis(host="127.0.0.1", port=6379, db=args.redis_db)
    if client.dbsize():
        raise SystemExit(f"Redis db {args.redis_db} is not empty: pass --redis-db with an empty one")
    name = f"vidrec_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env.update({
        "VIDREC_SPARK_MASTER": args.spark_master,
        "VIDREC_FEAST_REGISTRY_URL": admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}",
        "VIDREC_FEAST_REDIS": f"127.0.0.1:6379,db={args.redis_db}",
        "VIDREC_MLFLOW_URI": f"sqlite:///{Path(stage_args['folder']) / 'home' / 'mlflow.db'}",
    })  # fmt: skip
    stage_args["precomputed_url"] = f"redis://127.0.0.1:6379/{args.redis_db}"
    try:
        yield
    finally:
        client.flushdb()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--videos", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep (and reuse) the platform in")
    parser.add_argument("--profile", choices=("local", "spark"), default="local")
    parser.add_argument("--spark-master", default="local[2]", help="VIDREC_SPARK_MASTER for the spark profile")
    parser.add_argument("--redis-db", type=int, default=13, help="spark profile: an empty Redis db to use")
    parser.add_argument(
        "--until", choices=STAGES[2:], default=STAGES[-1],
        help="the last stage to run (each needs the ones before it): for sizes where later stages take hours",
    )  # fmt: skip
    args = parser.parse_args()
    stages = STAGES[: STAGES.index(args.until) + 1]

    folder = args.keep or Path(tempfile.mkdtemp(prefix="vidrec-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VIDREC_HOME": str(folder / "home"), "VIDREC_CACHE_DIR": str(folder / "cache"),
           "VIDREC_PROFILE": args.profile, "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("VIDREC_LAKE_DIR", None)
    stage_args = {
        "folder": str(folder),
        "events": args.events,
        "users": args.users,
        "videos": args.videos,
        "days": args.days,
        "precomputed_url": None,
    }
    print(
        f"# scale: {args.events:,} events, {args.users:,} users, {args.videos:,} videos over {args.days} days "
        f"({folder}), profile {args.profile}" + (f" on {args.spark_master}" if args.profile == "spark" else "")
    )
    results = {}
    stores = spark_stores(args, env, stage_args) if args.profile == "spark" else contextlib.nullcontext()
    try:
        with stores:
            for stage in stages:
                if stage == "generate" and args.keep and (folder / "synthetic" / "videos.parquet").exists():
                    continue
                if stage == "ingest" and args.keep and (folder / "home" / "lake").exists():
                    continue
                print(f"  {stage} ...", flush=True)
                results[stage] = run_stage(stage, stage_args, env)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    base = results["baseline"]["seconds"]
    print()
    print("| stage | seconds | x baseline | peak RSS | detail |")
    print("|---|---:|---:|---:|---|")
    for stage, r in results.items():
        detail = {
            k: v
            for k, v in r.items()
            if k not in ("seconds", "wall_seconds", "peak_rss_bytes", "stages", "table", "versions")
        }
        jvm = f" (jvm peak {r['jvm_peak_rss_bytes'] / 2**30:.2f} GB)" if r.get("jvm_peak_rss_bytes") else ""
        detail = {k: v for k, v in detail.items() if k != "jvm_peak_rss_bytes"}
        print(
            f"| {stage} | {r['seconds']:.1f} | {r['seconds'] / base:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} GB{jvm} | {detail} |"
        )
    if "train" in results:
        print("\n| train stage | seconds | peak RSS |\n|---|---:|---:|")
        for s in results["train"]["stages"]:
            print(f"| {s['name']} | {s['seconds']:.1f} | {s['peak_rss_bytes'] / 2**30:.2f} GB |")
        print("\nheld-out nDCG@10: " + ", ".join(f"{m} {v:.4f}" for m, v in results["train"]["table"].items()))
    out = ROOT / "benchmarks" / "results" / ("scale.json" if args.profile == "local" else f"scale-{args.profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"config": vars(args) | {"keep": str(args.keep)}, "results": results}, indent=2, default=str)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
