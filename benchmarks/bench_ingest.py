"""Time and peak memory to generate and ingest synthetic events (1M and 10M by default).

Each step runs in its own process so its peak RSS is its own. Prints a markdown table and writes
benchmarks/results/ingest.json. Usage: python benchmarks/bench_ingest.py [--events 1000000 ...]
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

STEP = r"""
import json, resource, sys, time
from pathlib import Path
step, events, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
if step == "generate":
    from feature_repo.synthetic import SyntheticConfig, generate
    users = max(1_000, events // 100)
    config = SyntheticConfig(n_users=users, n_videos=max(500, users // 5), n_events=events, days=90)
    generate(config, folder / "data")
else:
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import open_source
    summary = ingest(open_source("synthetic", folder / "data", folder / "cache"), Lake(folder / "lake"))
    assert summary.lake["events"] + summary.tables["events"].rejected == events
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_step(step: str, events: int, folder: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", STEP, step, str(events), str(folder)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{step} of {events:,} events failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    rows = []
    for events in args.events:
        folder = Path(tempfile.mkdtemp(prefix=f"vidrec-bench-{events}-", dir=args.work_dir))
        try:
            for step in ("generate", "ingest"):
                result = run_step(step, events, folder)
                rows.append({"step": step, "events": events, **result, "events_per_s": events / result["seconds"]})
                print(
                    f"{step:8s} {events:>12,} events  {result['seconds']:8.1f} s  "
                    f"{events / result['seconds']:>10,.0f} ev/s  peak RSS {result['peak_rss_mb']:,.0f} MB",
                    flush=True,
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    print("\n| step | events | seconds | events/s | peak RSS (MB) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['step']} | {r['events']:,} | {r['seconds']:.1f} | {r['events_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |"
        )
    out = Path(__file__).parent / "results" / "ingest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
