"""Training time of the candidate generators on synthetic interactions (1M events by default).

Prints seconds per model and per ALS iteration, and peak RSS; writes benchmarks/results/models.json.
Usage: python benchmarks/bench_models.py [--events 1000000] [--models als,bpr,item-cf,ease]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from feature_repo.synthetic import SyntheticConfig, generate
from models.catalog import generator_factories
from models.interactions import Interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--models", default="popularity,item-cf,als,bpr,ease")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        users = max(1_000, args.events // 100)
        config = SyntheticConfig(n_users=users, n_videos=max(500, users // 5), n_events=args.events, days=60)
        generate(config, Path(tmp))
        events = pd.read_parquet(Path(tmp) / "events")
        videos = pd.read_parquet(Path(tmp) / "videos.parquet")
    started = time.perf_counter()
    data = Interactions.from_events(events.merge(videos[["video_id", "duration_s"]], on="video_id", how="left"),
                                    catalog=videos["video_id"], weighting="engagement")  # fmt: skip
    build_s = time.perf_counter() - started
    print(f"{args.events:,} events -> {data.n_users:,} users x {data.n_videos:,} videos, {data.matrix.nnz:,} pairs "
          f"(matrix built in {build_s:.1f} s)")  # fmt: skip
    factories = generator_factories(videos)
    rows = []
    for name in args.models.split(","):
        model = factories[name]()
        started = time.perf_counter()
        model.fit(data)
        seconds = time.perf_counter() - started
        extra = ""
        if name == "als":
            extra = f"  ({seconds / model.iterations:.2f} s per iteration, {model.factors} factors)"
        print(f"{name:12s} fit {seconds:7.2f} s{extra}", flush=True)
        rows.append({"model": name, "fit_seconds": seconds})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB")
    out = Path(__file__).parent / "results" / "models.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"events": args.events, "pairs": int(data.matrix.nnz), "rows": rows, "peak_rss_mb": peak}, indent=2)
    )


if __name__ == "__main__":
    main()
