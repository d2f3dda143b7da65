"""The `vidrec` command line: a thin layer over the package's stage functions."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_repo.defaults import (
    CHUNK_ROWS,
    DATASETS,
    DEFAULT_DATASET,
    DEFAULT_EMBEDDINGS,
    EMBEDDING_METHODS,
    MAX_QUARANTINE_RATE,
)
from models.lifecycle.config import DEFAULT_GENERATORS, GENERATORS, PROTOCOLS, GatePolicy, RankerConfig, TrainConfig
from vidrec.settings import Settings, SettingsError

app = typer.Typer(help="vidrec: video recommendations, from raw events to a served model.", no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option(help="local | prod | spark (default: $VIDREC_PROFILE or local)")
    ] = None,
) -> None:
    try:
        ctx.obj = Settings.from_env(profile)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from exc


@contextmanager
def progress_tasks():
    """A progress bar per task: yields (description, total) -> advance(n), what the stage functions take."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:

        def start(description: str, total: int | None):
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield start


@contextmanager
def progress_bar(description: str, total: int | None):
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def ingest(
    ctx: typer.Context,
    dataset: Annotated[
        str,
        typer.Option(help=f"{'|'.join(DATASETS)}|none (only the feedback log)"),
    ] = DEFAULT_DATASET,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder with the dataset's files (else the cache, downloading MovieLens)")
    ] = None,
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: the profile's)")] = None,
    feedback: Annotated[
        bool, typer.Option(help="Also ingest the serving feedback log (<home>/feedback) when it holds events")
    ] = True,
    chunk_rows: Annotated[int, typer.Option(min=1000, help="Event rows validated at a time")] = CHUNK_ROWS,
    max_quarantine_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fail when a table quarantines more than this share of its rows")
    ] = MAX_QUARANTINE_RATE,
) -> None:
    """Load a dataset, validate it, quarantine bad rows, and merge it into the lake.

    The vidrec_features DAG's ingest and validate tasks (vidrec.pipeline.ingest_sources and
    validate_ingest): a passed validation is what `vidrec train` (like the training DAG) checks.
    """
    from datetime import UTC, datetime

    from feature_repo.sources import DownloadError
    from vidrec.pipeline import ValidationFailed, ingest_sources, run_dir, validate_ingest

    settings: Settings = ctx.obj
    if lake_dir:
        settings = replace(settings, lake_dir=lake_dir.resolve())
    report_path = run_dir(settings, "cli-ingest", datetime.now(UTC)) / "ingest.json"
    try:
        with progress_tasks() as progress:
            ingest_sources(
                dataset,
                str(data_dir) if data_dir else None,
                str(report_path),
                include_feedback=feedback,
                chunk_rows=chunk_rows,
                progress=progress,
                settings=settings,
            )
    except (DownloadError, ValueError) as exc:
        fail(str(exc))
    report = json.loads(report_path.read_text())
    for source in report["sources"]:
        if "error" in source:
            fail(f"{source['role']} {source['dataset']} not ingested: {source['error']}")
        print_summary(source)
    print_lake(report)
    try:
        validate_ingest(str(report_path), max_quarantine_rate, settings=settings)
    except ValidationFailed as exc:
        fail(str(exc))
    console.print(f"[green]validated[/]: no table quarantined more than {max_quarantine_rate:.1%} of its rows")


def print_summary(source: dict) -> None:
    """One source's counts, as `vidrec.pipeline.ingest_sources` reports them."""
    table = Table(title=f"ingest {source['dataset']} from {source['location']}")
    for column in ("table", "rows in", "accepted", "quarantined", "reasons"):
        table.add_column(column, justify="left" if column in ("table", "reasons") else "right")
    for name, counts in source["tables"].items():
        reasons = ", ".join(f"{r}: {n:,}" for r, n in counts["reasons"].items())
        table.add_row(
            name, f"{counts['rows_in']:,}", f"{counts['accepted']:,}", f"{counts['quarantined']:,}", reasons or "-"
        )
    console.print(table)
    ev = source["events"]
    console.print(
        f"events: {ev['new']:,} new, {ev['updated']:,} updated, {ev['unchanged']:,} unchanged; "
        f"{ev['partitions_written']:,} date partitions written; {source['derived_users']:,} users derived from events "
        f"({source['seconds']:.1f} s)"
    )


def print_lake(report: dict) -> None:
    lake = report["lake_stats"]
    by_type = ", ".join(f"{t}: {n:,}" for t, n in lake["events_by_type"].items())
    console.print(
        f"lake {report['lake']}: [bold]{lake['events']:,} events[/] ({by_type}), [bold]{lake['videos']:,} videos[/], "
        f"[bold]{lake['users']:,} users[/], {lake['partitions']:,} partitions, "
        f"{lake['first_event']} .. {lake['last_event']}"
    )
    console.print(f"quarantine: {Path(report['lake']) / 'quarantine'}")


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder to write users.parquet, videos.parquet and events/")],
    users: Annotated[int, typer.Option(min=1)] = 2_000,
    videos: Annotated[int, typer.Option(min=1)] = 1_000,
    events: Annotated[int, typer.Option(min=1)] = 200_000,
    days: Annotated[int, typer.Option(min=1)] = 60,
    seed: int = 42,
) -> None:
    """Generate a seeded synthetic video platform in the canonical format."""
    from feature_repo.synthetic import SyntheticConfig
    from feature_repo.synthetic import generate as run_generate

    config = SyntheticConfig(n_users=users, n_videos=videos, n_events=events, days=days, seed=seed)
    with progress_bar("generate", events) as advance:
        summary = run_generate(config, out, progress=advance)
    by_type = ", ".join(f"{t}: {n:,}" for t, n in sorted(summary.events_by_type.items(), key=lambda kv: -kv[1]))
    console.print(
        f"wrote {summary.n_users:,} users, {summary.n_videos:,} videos, {summary.n_events:,} events "
        f"in {summary.event_files} files to {summary.out_dir}\n{by_type}"
    )


@app.command()
def benchmark(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="Dataset name, as for `vidrec ingest`")] = DEFAULT_DATASET,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files")] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="time (train on the past, test on the future) | user-time (each user's last 5 relevant videos) | stratified (75/25 per user)"
        ),
    ] = "time",
    k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    out: Annotated[Path, typer.Option(help="Folder for split/, recs/, results.json, results.md")] = Path(
        "benchmark-results"
    ),
    split_dir: Annotated[
        Path | None, typer.Option(help="Evaluate on DIR/train.parquet and DIR/test.parquet instead of splitting")
    ] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated generator names (default: all)")] = None,
    encoder: Annotated[str, typer.Option(help="Content embedding for intra-list diversity: minilm | tfidf")] = "minilm",
    tuned: Annotated[
        bool,
        typer.Option(
            "--tuned/--no-tuned", help="Use the dataset's tuned hyperparameters (`vidrec tune`) where its file exists"
        ),
    ] = True,
    seed: int = 42,
) -> None:
    """Train every candidate generator on one split, print the metrics table, write results and recs."""
    from feature_repo.sources import DataFileError, DownloadError
    from models.lifecycle.benchmark import BenchmarkData, load_dataset, read_split, run_benchmark, split_events

    settings: Settings = ctx.obj
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    try:
        events, videos = load_dataset(
            dataset, data_dir, settings.home / "benchmark-lakes" / dataset, settings.cache_dir / "datasets"
        )
        train, test = read_split(split_dir) if split_dir else split_events(events, protocol, seed)
    except (DataFileError, DownloadError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    names = [m.strip() for m in models.split(",")] if models else None
    console.print(
        f"{dataset}: {len(train):,} train pairs, {len(test):,} test pairs ({'given split' if split_dir else protocol})"
    )
    params = _tuned_params(dataset, "stratified" if split_dir else protocol) if tuned else None
    with progress_bar("benchmark", len(names) if names else None) as advance:
        try:
            rows = run_benchmark(
                BenchmarkData(train, test, videos),
                out,
                k=k,
                models=names,
                encoder=encoder,
                protocol="stratified" if split_dir else protocol,
                tuned=params,
                progress=lambda name: (advance(1), console.print(f"  fitting {name}")),
            )
        except ValueError as exc:
            fail(str(exc))
    console.print((out / "results.md").read_text())
    console.print(f"wrote {out / 'results.json'}, {out / 'recs'}/, {out / 'split'}/ ({len(rows)} models)")


def _tuned_params(dataset: str, protocol: str) -> dict[str, dict] | None:
    """The dataset's tuned params ({generator: params}) a run under `protocol` uses, saying which;
    None without a file."""
    from models.lifecycle.tuning import RANKER_ENTRY, entries_for, is_ranker_entry, read_tuned, tuned_path

    path = tuned_path(dataset)
    try:
        everything = read_tuned(path)
    except ValueError as exc:
        fail(str(exc))
    entries = entries_for(everything, protocol)
    others = sorted({e.get("protocol", "?") for n, e in everything.items() if is_ranker_entry(n)} - {protocol})
    if others and RANKER_ENTRY not in entries:
        console.print(
            f"the tuned ranker blend in {path} was chosen under {', '.join(others)}, not {protocol}: "
            f"the ranker trains without one (`vidrec tune --generator ranker --protocol {protocol}` makes it)"
        )
    if entries:
        used = ", ".join(
            f"{name} ({entry.get('protocol', '?')}, {entry.get('trials', '?')} trials)"
            for name, entry in entries.items()
        )
        console.print(f"tuned hyperparameters from {path}: {used} (--no-tuned for the catalog's defaults)")
    return {name: dict(entry["params"]) for name, entry in entries.items()} or None


@app.command()
def tune(
    ctx: typer.Context,
    generator: Annotated[
        str,
        typer.Option(
            help="Generator(s) to tune, comma-separated (als, bpr, ease, item-cf, user-cf, svd, ...), "
            "and/or ranker: the two-stage ranker's blend with a generator"
        ),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name, as for `vidrec benchmark`")] = DEFAULT_DATASET,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files")] = None,
    protocol: Annotated[
        str, typer.Option(help="The benchmark protocol whose train part is searched (its validation split follows it)")
    ] = "time",
    trials: Annotated[int, typer.Option(min=1, help="Trials per generator; trial 0 runs the catalog's defaults")] = 30,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop a generator's search after this many seconds")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Tuned file to update (default: models/tuned/<dataset>.json)")
    ] = None,
    seed: int = 42,
) -> None:
    """Search generators' hyperparameters (Optuna TPE) on a validation split of the train part; save the best."""
    from feature_repo.sources import DataFileError, DownloadError
    from models.lifecycle.benchmark import load_dataset, split_events
    from models.lifecycle.ranker_tuning import tune_ranker
    from models.lifecycle.tuning import RANKER_ENTRY, tunable, tune_generator, tuned_path

    settings: Settings = ctx.obj
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    names = [g.strip() for g in generator.split(",") if g.strip()]
    try:
        events, videos = load_dataset(
            dataset, data_dir, settings.home / "benchmark-lakes" / dataset, settings.cache_dir / "datasets"
        )
        train, test = split_events(events, protocol, seed)
    except (DataFileError, DownloadError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    unknown = [g for g in names if g not in tunable(videos) and g != RANKER_ENTRY]
    if unknown or not names:
        fail(
            f"cannot tune {unknown or generator!r}: tunable generators are {', '.join(tunable(videos))}, "
            f"and {RANKER_ENTRY} (the two-stage ranker's blend)"
        )
    # The ranker's blend is chosen over the tuned generators, so it goes last.
    names = sorted(names, key=lambda name: name == RANKER_ENTRY)
    path = out or tuned_path(dataset)
    console.print(
        f"{dataset} ({protocol}): searching on a validation split of the {len(train):,} train pairs; "
        + (f"{trials} trials per generator, trial 0 = defaults; " if names != [RANKER_ENTRY] else "")
        + f"best -> {path}"
    )
    results = []
    for name in names:
        if name == RANKER_ENTRY:
            console.print("  ranker: the two-stage system on the validation split, then each blend of the grid")
            try:
                results.append(tune_ranker(
                    train, test, videos, dataset=dataset, protocol=protocol, seed=seed, settings=settings, path=path
                ))  # fmt: skip
            except ValueError as exc:
                fail(str(exc))
            continue
        with progress_bar(f"tune {name}", trials) as advance:

            def report(t, name=name, advance=advance) -> None:
                advance(1)
                console.print(
                    f"  {name} #{t.number:<3} val nDCG@10 {t.value:.4f} (best {t.best_value:.4f}) {t.seconds:5.1f}s  "
                    f"{_shown_params(t.params)}"
                )

            try:
                results.append(tune_generator(
                    name, train, test, videos, dataset=dataset, protocol=protocol, trials=trials, seed=seed,
                    timeout_s=timeout, settings=settings, path=path, progress=report,
                ))  # fmt: skip
            except ValueError as exc:
                fail(str(exc))
    table = Table(title=f"nDCG@10, catalog defaults -> tuned ({dataset}, {protocol})")
    for column in (
        "generator",
        "trials",
        "min",
        "val\ndefault",
        "val\ntuned",
        "test\ndefault",
        "test\ntuned",
        "test\nchange",
    ):
        table.add_column(column, justify="left" if column == "generator" else "right", no_wrap=True)
    for r in results:
        change = f"{(r.test_after / r.test_before - 1) * 100:+.1f}%" if r.test_before else "-"
        table.add_row(r.generator, str(r.trials), f"{r.seconds / 60:.1f}", f"{r.validation_before:.4f}", f"{r.validation_after:.4f}",
                      f"{r.test_before:.4f}", f"{r.test_after:.4f}", change)  # fmt: skip
    console.print(table)
    for r in results:
        console.print(f"  {r.generator}: {_shown_params(r.best_params)}")
    console.print(f"wrote {path}; MLflow parent runs: {', '.join(f'{r.generator} {r.run_id}' for r in results)}")


def _shown_params(params: dict) -> str:
    return " ".join(f"{p}={v:.4g}" if isinstance(v, float) else f"{p}={v}" for p, v in params.items())


@app.command()
def train(
    ctx: typer.Context,
    protocol: Annotated[
        str,
        typer.Option(
            help="time (held-out window after a cut) | user-time (each user's last relevant videos) | stratified"
        ),
    ] = TrainConfig.protocol,
    generators: Annotated[
        str, typer.Option(help=f"Comma-separated candidate generators, of: {', '.join(GENERATORS)}")
    ] = ",".join(DEFAULT_GENERATORS),
    per_source_k: Annotated[
        int, typer.Option(min=10, max=1000, help="Candidates per generator per user")
    ] = TrainConfig.per_source_k,
    feast: Annotated[
        bool, typer.Option(help="Join Feast point-in-time features (time protocol)")
    ] = TrainConfig.use_feast,
    label_windows: Annotated[
        int, typer.Option(min=1, max=10, help="Rolling label windows the ranker learns from (time protocol)")
    ] = TrainConfig.label_windows,
    max_queries_per_window: Annotated[
        int,
        typer.Option(
            min=0, help="Memory bound: ranker queries (users) per label window, a seeded draw (0: every user)"
        ),
    ] = RankerConfig.max_queries_per_window or 0,
    max_eval_users: Annotated[
        int, typer.Option(min=0, help="Held-out users each model is evaluated on, a seeded draw (0: all)")
    ] = TrainConfig.max_eval_users or 0,
    min_test_users: Annotated[
        int,
        typer.Option(
            min=1, help="time protocol: move the cut earlier until the held-out window judges this many users"
        ),
    ] = TrainConfig.min_test_users,
    min_gain: Annotated[
        float,
        typer.Option(
            help="Gate: the lower end of the 95% interval of the per-user nDCG@10 gain over the champion must reach this"
        ),
    ] = GatePolicy.min_gain,
    baseline_gain: Annotated[
        float, typer.Option(help="Gate: the same, over the best of popularity and trending, for a first model")
    ] = GatePolicy.baseline_gain,
    shuffle_labels: Annotated[
        bool, typer.Option(help="Sanity check: train the ranker on shuffled labels (must be blocked)")
    ] = TrainConfig.shuffle_labels,
    engagement_check: Annotated[
        bool,
        typer.Option(help="Gate: simulated viewers too; a significant loss of watch time per session blocks"),
    ] = GatePolicy.engagement_check,
    dataset: Annotated[str, typer.Option(help="Name recorded with the run")] = "lake",
    tuned_for: Annotated[
        str | None,
        typer.Option(help="Use the hyperparameters `vidrec tune` saved for this dataset (e.g. movielens-small)"),
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Train on the events before this time (UTC; default: now, the whole lake)")
    ] = None,
    require_validated_lake: Annotated[
        bool, typer.Option(help="Refuse a lake that changed since its last passed validation (`vidrec ingest`)")
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", help="Train even when a run with the same data and configuration exists")
    ] = False,
    seed: int = TrainConfig.seed,
) -> None:
    """Train generators and the ranker on the lake, evaluate, register in MLflow, gate, promote.

    The same stage as the vidrec_training DAG's train_and_gate task (vidrec.pipeline.train_models):
    a rerun on unchanged data and configuration reuses the finished MLflow run.
    """
    from datetime import UTC, datetime

    from vidrec.pipeline import (
        NotReady,
        TrainingStopped,
        ValidationFailed,
        check_lake_validated,
        train_config,
        train_models,
    )

    settings: Settings = ctx.obj
    params = {
        "protocol": protocol, "generators": generators, "per_source_k": per_source_k, "use_feast": feast,
        "label_windows": label_windows, "max_queries_per_window": max_queries_per_window,
        "max_eval_users": max_eval_users, "min_test_users": min_test_users, "min_gain": min_gain,
        "baseline_gain": baseline_gain, "shuffle_labels": shuffle_labels, "dataset": dataset,
        "engagement_check": engagement_check,
        "tuned_for": tuned_for, "force_retrain": force, "seed": seed,
    }  # fmt: skip
    try:
        train_config(params)  # a bad option fails before anything else is looked at
        if require_validated_lake:
            check_lake_validated(settings=settings)
    except (ValueError, ValidationFailed) as exc:
        fail(str(exc))
    end = as_of or datetime.now(UTC).isoformat()
    from models.lifecycle.tracking import TrackingFailed  # after the checks above: it loads MLflow

    with progress_bar("train", None) as advance:
        try:
            result = train_models(
                params, end, progress=lambda m: (advance(1), console.print(f"  {m}")), settings=settings
            )
        except (FileNotFoundError, ValueError, NotReady, TrackingFailed) as exc:
            fail(str(exc))
        except TrainingStopped:
            fail("training stopped by SIGTERM: nothing registered; its MLflow run is marked KILLED", code=143)
    if result["reused"]:
        console.print(
            f"training data and configuration unchanged: reusing MLflow run {result['run_id']} (--force to train anyway)"
        )
    else:
        print_metrics(result["metrics"])
    style = "green" if result["promoted"] else "yellow"
    console.print(f"[{style}]{result['summary']}[/]")
    console.print(f"MLflow run {result['run_id']}; registered {result['versions']}; champion {result['champion']}")
    print_stages(result.get("stages", []))


def print_metrics(metrics: dict[str, dict[str, float | None]]) -> None:
    """Held-out figures, one row per model."""
    table = Table(title="held-out evaluation", box=box.SIMPLE_HEAD)
    columns = list(next(iter(metrics.values()), {}))
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(column.replace("candidate_", "cand. ").replace("_at_", "@"), justify="right")
    for model, row in metrics.items():
        table.add_row(model, *("-" if row.get(c) is None else f"{row[c]:.4f}" for c in columns))
    console.print(table)


def print_stages(stages: list[dict]) -> None:
    """Wall time and peak resident memory of each stage (as `vidrec.pipeline.train_models` reports them)."""
    from vidrec.meter import format_bytes

    if not stages:
        return
    table = Table(title="stages")
    for column in ("stage", "seconds", "peak memory"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for record in stages:
        table.add_row(record["stage"], f"{record['seconds']:.1f}", format_bytes(record["peak_rss_bytes"]))
    console.print(table)


@app.command()
def promote(
    ctx: typer.Context,
    rollback: Annotated[bool, typer.Option("--rollback", help="Restore the previous champion")] = False,
    candidates_version: Annotated[str | None, typer.Option(help="vidrec-candidates version to promote by hand")] = None,
    ranker_version: Annotated[str | None, typer.Option(help="vidrec-ranker version to promote by hand")] = None,
) -> None:
    """Move the `champion` alias: roll back to `previous`, or promote given versions by hand."""
    from mlflow import MlflowClient

    from models.lifecycle import registry, tracking

    settings: Settings = ctx.obj
    tracking.configure(settings)
    client = MlflowClient()
    try:
        if rollback:
            restored = registry.rollback(client)
            console.print(f"rolled back: champion is now {restored}")
        elif candidates_version and ranker_version:
            old = registry.promote(
                client, {registry.CANDIDATES_MODEL: candidates_version, registry.RANKER_MODEL: ranker_version}
            )
            console.print(f"promoted; previous champion {old}")
        else:
            fail("say --rollback, or give both --candidates-version and --ranker-version")
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"champion: {registry.champion_versions(client)}")


@app.command()
def features(
    ctx: typer.Context,
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: the profile's)")] = None,
    freq: Annotated[
        str, typer.Option(help="As-of times every day (D) or week (W), ending the midnight after the last event")
    ] = "W",
    periods: Annotated[int, typer.Option(min=0, help="Keep the newest N as-of times (0: the lake's whole span)")] = 52,
    as_of: Annotated[
        list[str] | None, typer.Option(help="Explicit as-of time (UTC, repeatable); overrides --freq/--periods")
    ] = None,
    embeddings: Annotated[
        str, typer.Option(help="Video content embeddings: minilm | tfidf | none")
    ] = DEFAULT_EMBEDDINGS,
    end: Annotated[
        str | None, typer.Option(help="Materialize up to this time (UTC; default: the newest as-of time)")
    ] = None,
) -> None:
    """Compute feature tables from the lake, register them in Feast, and materialize them online.

    The vidrec_features DAG's transform, embeddings, feast_apply and materialize tasks, in order
    (vidrec.pipeline.features_job), over a span of as-of times instead of one interval.
    """
    import time

    from feature_repo.transforms.spark import SparkOutOfMemory
    from vidrec.pipeline import NotReady, features_job

    settings: Settings = ctx.obj
    if lake_dir:
        settings = replace(settings, lake_dir=lake_dir.resolve())
    if freq not in ("D", "W"):
        fail(f"--freq must be D or W, not {freq!r}")
    if embeddings not in (*EMBEDDING_METHODS, "none"):
        fail(f"--embeddings must be minilm, tfidf or none, not {embeddings!r}")
    started: dict[str, float] = {}

    def step(name: str, result: dict | None) -> None:
        if result is None:
            started[name] = time.perf_counter()
            return
        console.print(f"[green]✓[/] {name} ({time.perf_counter() - started[name]:.1f} s): {_step_detail(name, result)}")

    try:
        with progress_bar("features", 4) as advance:
            out = features_job(
                None, periods, freq, as_of=as_of, embeddings=embeddings, materialize_end=end,
                step=lambda name, result: (step(name, result), result is not None and advance(1)), settings=settings,
            )  # fmt: skip
    except (NotReady, ValueError, SparkOutOfMemory) as exc:
        fail(str(exc))
    times = out["transform"]["as_of"]
    console.print(
        f"features {settings.features_dir}: {len(times)} as-of times {times[0]} .. {times[-1]}; "
        f"Feast project vidrec ({settings.profile})"
    )


def _step_detail(name: str, result: dict) -> str:
    if name == "transform":
        return (
            ", ".join(f"{t}: {n:,} rows" for t, n in result["rows"].items())
            + f" over {len(result['as_of'])} as-of times"
        )
    if name == "embeddings":
        return (
            "skipped"
            if result["method"] == "none"
            else f"{result['method']} -> {result['table']}" + (" (unchanged)" if result.get("reused") else "")
        )
    if name == "feast_apply":
        return f"{result['applied']} objects" + (
            f", removed {', '.join(result['deleted'])}" if result["deleted"] else ""
        )
    return "; ".join(f"{view}: {v['mode']}" for view, v in result["views"].items())


@app.command()
def batch(
    ctx: typer.Context,
    end: Annotated[
        str | None,
        typer.Option(
            help="As-of time (UTC): users active in the days before it (default: the midnight after the lake's last event)"
        ),
    ] = None,
    active_days: Annotated[int, typer.Option(min=1, help="Users active in this many days before --end")] = 30,
    top_n: Annotated[int, typer.Option(min=1, max=1000, help="Recommendations stored per user")] = 100,
    store_url: Annotated[
        str | None, typer.Option(help="Precomputed store (redis://..., sqlite path; default: the service's)")
    ] = None,
) -> None:
    """Precompute the champion's top-N for recently active users (the vidrec_batch_recs DAG's task)."""
    from feature_repo.lake import Lake
    from feature_repo.transforms import default_as_of_times
    from feature_repo.transforms.spark import SparkOutOfMemory
    from vidrec.pipeline import NotReady, precompute_recommendations

    settings: Settings = ctx.obj
    if end is None:  # the midnight after the lake's last event, as `vidrec features` takes it
        newest = default_as_of_times(Lake(settings.lake_dir), freq="D", periods=1)
        if not newest:
            fail(f"the lake at {settings.lake_dir} holds no events: run `vidrec ingest` first")
        end = newest[-1].isoformat()
    try:
        result = precompute_recommendations(
            end, active_days=active_days, top_n=top_n, store_url=store_url, settings=settings
        )
    except (NotReady, ValueError, SparkOutOfMemory) as exc:
        fail(str(exc))
    console.print(
        f"{result['users_written']:,} of {result['active_users']:,} active users written to {result['store']} "
        f"({result['rows']:,} rows, champion {result['versions']}, {result['unknown_to_champion']:,} unknown to it; "
        f"{result['seconds']} s, peak {result['peak_rss_mb']} MiB)"
    )


experiment_app = typer.Typer(help="A/B experiments: the engagement report of a running test.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("report")
def experiment_report(
    ctx: typer.Context,
    experiment: Annotated[
        str | None, typer.Option(help="Experiment name (default: the service's VIDREC_AB_EXPERIMENT)")
    ] = None,
    days: Annotated[float, typer.Option(min=0.001, help="Window: this many days before --end")] = 7.0,
    end: Annotated[str | None, typer.Option(help="End of the window, UTC ISO time (default: now)")] = None,
    significance: Annotated[float, typer.Option(min=0.0001, max=0.5, help="Significance level of the verdicts")] = 0.05,
    share: Annotated[
        float | None,
        typer.Option(help="Challenger share the test ran with (default: $VIDREC_AB_CHALLENGER_SHARE)"),
    ] = None,
    log_dir: Annotated[
        Path | None, typer.Option(help="The service's log folder (default: its VIDREC_FEEDBACK_DIR)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for report.json and the plots")] = None,
    promote_if_winning: Annotated[
        bool, typer.Option(help="Move `champion` to the challenger when it wins and no guard metric loses")
    ] = False,
) -> None:
    """CTR, watch time and session length per variant, with intervals, p-values and a verdict."""
    from models.lifecycle import experiments, registry
    from vidrec.pipeline import experiment_report as run_report

    settings: Settings = ctx.obj
    try:
        result = run_report(
            experiment,
            end=end,
            window_days=days,
            significance=significance,
            challenger_share=share,
            promote_if_winning=promote_if_winning,
            out_dir=str(out) if out else None,
            log_dir=str(log_dir) if log_dir else None,
            on_report=lambda report: console.print(experiments.report_table(report)),
            settings=settings,
        )
    except (ValueError, registry.RegistryError) as exc:  # experiments.NoImpressions is a ValueError
        fail(str(exc))
    console.print(
        f"decision: [bold]{result['decision']}[/]  ({result['report']}; MLflow run {result['mlflow_run_id']})"
    )
    if result["promoted"]:
        console.print(f"promoted the challenger {result['promoted']}; previous champion {result['previous']}")


@app.command()
def simulate(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="The running service")] = "http://127.0.0.1:3000",
    offline: Annotated[
        bool, typer.Option("--offline", help="No server: the registry's champion/challenger, loaded here")
    ] = False,
    audience: Annotated[str, typer.Option(help="synthetic | movielens (whose truth is a model: see the caveat)")] = (
        "synthetic"
    ),
    users: Annotated[int, typer.Option(min=1)] = 200,
    sessions: Annotated[int, typer.Option(min=1, help="Sessions per user")] = 3,
    k: Annotated[int, typer.Option(min=1, max=100, help="Videos asked for per slate")] = 10,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Users simulated at once")] = 4,
    seed: int = 0,
    experiment: Annotated[str | None, typer.Option(help="Experiment name (default: the service's)")] = None,
    share: Annotated[
        float | None, typer.Option(help="Challenger share, --offline only (the service has its own)")
    ] = None,
    log_dir: Annotated[Path | None, typer.Option(help="--offline: where the logs go (default: the service's)")] = None,
    world_seed: Annotated[int, typer.Option(help="synthetic: the seed the platform was generated with")] = 42,
    world_users: Annotated[int, typer.Option(min=1, help="synthetic: its --users")] = 2_000,
    world_videos: Annotated[int, typer.Option(min=1, help="synthetic: its --videos")] = 1_000,
) -> None:
    """Viewers whose tastes are known watch what the recommender shows; their clicks and watches
    go to the service's logs, for `vidrec experiment report`."""
    from serving.simulation import TargetError
    from vidrec.pipeline import NotReady, simulate_audience

    settings: Settings = ctx.obj
    if share is not None and not offline:
        fail("--share applies to --offline only: the service splits by its VIDREC_AB_CHALLENGER_SHARE")
    try:
        with progress_tasks() as progress:
            result = simulate_audience(
                url=None if offline else url,
                audience=audience,
                users=users,
                sessions_per_user=sessions,
                k=k,
                concurrency=concurrency,
                seed=seed,
                experiment=experiment,
                challenger_share=share,
                log_dir=str(log_dir) if log_dir else None,
                world_seed=world_seed,
                world_users=world_users,
                world_videos=world_videos,
                progress=progress,
                settings=settings,
            )
    except (NotReady, ValueError, OSError, TargetError) as exc:
        fail(str(exc))
    if result.get("caveat"):
        err_console.print(f"[yellow]note:[/] {result['caveat']}")
    table = Table(box=box.SIMPLE_HEAD, title=f"simulated against {result['target']} (seed {seed})")
    for column in ("variant", "users", "sessions", "slates", "impressions", "clicks", "ctr", "watch time h", "likes"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, c in result["per_variant"].items():
        table.add_row(
            variant, f"{c['users']:,}", f"{c['sessions']:,}", f"{c['slates']:,}", f"{c['impressions']:,}",
            f"{c['clicks']:,}", f"{c['ctr']:.4f}", f"{c['watch_time_s'] / 3600:.1f}", f"{c['likes']:,}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"next: vidrec experiment report --experiment {result['experiment']} --days 2"
        + (" --log-dir " + str(log_dir) if log_dir else "")
    )


keys_app = typer.Typer(help="Client API keys of the service (salted hashes in a key file).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


KeyName = Annotated[str, typer.Option("--name", help="Who the key is for (logs and metrics name it)")]
KeyEndpoints = Annotated[str, typer.Option(help="Comma-separated: /recommend,/similar,/feedback,/ui/api, or * for all")]
KeyRate = Annotated[float, typer.Option(min=0.0, help="Requests per second (0: unlimited)")]
KeyBurst = Annotated[int, typer.Option(min=0, help="Bucket size (default: one second's worth)")]


def _new_key(name: str, endpoints: str, rate: float, burst: int) -> tuple[str, dict]:
    from serving.keys import new_key
    from vidrec.settings import SettingsError

    try:
        return new_key(name, [e.strip() for e in endpoints.split(",") if e.strip()], rate, burst)
    except SettingsError as exc:
        fail(str(exc))
        raise AssertionError("unreachable: fail() exits") from exc


@keys_app.command("add")
def keys_add(
    name: KeyName,
    file: Annotated[Path, typer.Option(help="The key file the service reads (VIDREC_API_KEYS_FILE)")],
    endpoints: KeyEndpoints = "/recommend,/similar",
    rate: KeyRate = 0.0,
    burst: KeyBurst = 0,
) -> None:
    """Make a key: its salted hash goes into the key file, the key itself is printed once."""
    from serving.keys import add_to_file
    from vidrec.settings import SettingsError

    key, entry = _new_key(name, endpoints, rate, burst)
    try:
        add_to_file(file, entry)
    except SettingsError as exc:
        fail(str(exc))
    console.print(f"key {name!r} (id {entry['key_id']}) added to {file}; give the client this key, shown only now:")
    print(key)


@keys_app.command("new")
def keys_new(
    name: KeyName, endpoints: KeyEndpoints = "/recommend,/similar", rate: KeyRate = 0.0, burst: KeyBurst = 0
) -> None:
    """Make a key for a secret store: prints VIDREC_API_KEYS's JSON (plain key; nothing written)."""
    import json

    key, entry = _new_key(name, endpoints, rate, burst)
    print(json.dumps([{"name": name, "key": key, "endpoints": entry["endpoints"], "rate_per_s": rate, "burst": burst}]))


@keys_app.command("list")
def keys_list(file: Annotated[Path, typer.Option(help="The key file")]) -> None:
    """The keys of a key file: names, ids, endpoints, limits (never secrets)."""
    import json

    if not file.exists():
        fail(f"no key file at {file}")
    for entry in json.loads(file.read_text()).get("keys", []):
        console.print(
            f"{entry['name']}  id {entry['key_id']}  endpoints {','.join(entry['endpoints'])}  "
            f"rate {entry.get('rate_per_s', 0)}/s burst {entry.get('burst', 0)}"
        )


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
) -> None:
    """Serve the champion with BentoML (`bentoml serve serving.service:Vidrec`), in the foreground."""
    import os
    import sys

    from serving.process import ROOT, SERVICE

    settings: Settings = ctx.obj
    bentoml = Path(sys.executable).with_name("bentoml")
    console.print(f"serving the champion of {settings.mlflow_uri} on http://{host}:{port} (Ctrl-C stops)")
    os.chdir(ROOT)
    env = {**os.environ, "VIDREC_PROFILE": settings.profile}
    os.execve(str(bentoml), [str(bentoml), "serve", SERVICE, "--host", host, "--port", str(port)], env)


if __name__ == "__main__":
    app()
