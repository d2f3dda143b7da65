"""The `vidrec` command line: a thin layer over the package's stage functions."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vidrec.settings import Settings, SettingsError

app = typer.Typer(help="vidrec: video recommendations, from raw events to a served model.", no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option(help="local | prod | spark (default: $VIDREC_PROFILE or local)")] = None,
) -> None:
    try:
        ctx.obj = Settings.from_env(profile)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from exc


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
    dataset: Annotated[str, typer.Option(help="movielens-small|movielens-100k|movielens-1m|movielens-25m|movielens-32m|canonical|synthetic")] = "movielens-small",
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files (else the cache, downloading MovieLens)")] = None,
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: the profile's)")] = None,
    chunk_rows: Annotated[int, typer.Option(min=1000, help="Event rows validated at a time")] = 1_000_000,
) -> None:
    """Load a dataset, validate it, quarantine bad rows, and merge it into the lake."""
    from feature_repo.ingest import ingest as run_ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import DataFileError, DownloadError, open_source

    settings: Settings = ctx.obj
    if dataset == "synthetic" and data_dir is None:
        data_dir = _default_synthetic(settings)
    try:
        source = open_source(dataset, data_dir, settings.cache_dir / "datasets")
        lake = Lake(lake_dir or settings.lake_dir)
        with progress_bar(f"ingest {dataset}", source.event_rows()) as advance:
            summary = run_ingest(source, lake, chunk_rows=chunk_rows, progress=advance)
    except (DataFileError, DownloadError, ValueError) as exc:
        fail(str(exc))
    print_summary(summary, lake.root)


def _default_synthetic(settings: Settings) -> Path:
    from feature_repo.synthetic import SyntheticConfig, generate as run_generate

    config = SyntheticConfig()
    out = settings.cache_dir / "datasets" / f"synthetic-seed{config.seed}-{config.n_events}"
    if not (out / "videos.parquet").exists():
        with progress_bar("generate synthetic", config.n_events) as advance:
            run_generate(config, out, progress=advance)
    return out


def print_summary(summary, lake_root: Path) -> None:
    table = Table(title=f"ingest {summary.dataset} from {summary.location}")
    for column in ("table", "rows in", "accepted", "quarantined", "reasons"):
        table.add_column(column, justify="left" if column in ("table", "reasons") else "right")
    for name, counts in summary.tables.items():
        reasons = ", ".join(f"{r}: {n:,}" for r, n in counts.quarantined.most_common())
        table.add_row(name, f"{counts.rows_in:,}", f"{counts.accepted:,}", f"{counts.rejected:,}", reasons or "-")
    console.print(table)
    ev = summary.events
    console.print(
        f"events: {ev.new:,} new, {ev.updated:,} updated, {ev.unchanged:,} unchanged; "
        f"{ev.partitions_written:,} date partitions written; {summary.derived_users:,} users derived from events"
    )
    lake = summary.lake
    by_type = ", ".join(f"{t}: {n:,}" for t, n in lake["events_by_type"].items())
    console.print(
        f"lake {lake_root}: [bold]{lake['events']:,} events[/] ({by_type}), [bold]{lake['videos']:,} videos[/], "
        f"[bold]{lake['users']:,} users[/], {lake['partitions']:,} partitions, "
        f"{lake['first_event']} .. {lake['last_event']}"
    )
    console.print(f"quarantine: {lake_root / 'quarantine'}  ({summary.seconds:.1f} s)")


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
    from feature_repo.synthetic import SyntheticConfig, generate as run_generate

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
    dataset: Annotated[str, typer.Option(help="Dataset name, as for `vidrec ingest`")] = "movielens-small",
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files")] = None,
    protocol: Annotated[str, typer.Option(help="time (train on the past, test on the future) | user-time (each user's last 5 relevant videos) | stratified (75/25 per user)")] = "time",
    k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    out: Annotated[Path, typer.Option(help="Folder for split/, recs/, results.json, results.md")] = Path("benchmark-results"),
    split_dir: Annotated[Path | None, typer.Option(help="Evaluate on DIR/train.parquet and DIR/test.parquet instead of splitting")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated generator names (default: all)")] = None,
    encoder: Annotated[str, typer.Option(help="Content embedding for intra-list diversity: minilm | tfidf")] = "minilm",
    tuned: Annotated[bool, typer.Option("--tuned/--no-tuned", help="Use the dataset's tuned hyperparameters (`vidrec tune`) where its file exists")] = True,
    seed: int = 42,
) -> None:
    """Train every candidate generator on one split, print the metrics table, write results and recs."""
    from feature_repo.sources import DataFileError, DownloadError
    from models.benchmark import BenchmarkData, load_dataset, read_split, run_benchmark, split_events
    from models.protocols import PROTOCOLS

    settings: Settings = ctx.obj
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    try:
        events, videos = load_dataset(dataset, data_dir, settings.home / "benchmark-lakes" / dataset, settings.cache_dir / "datasets")
        train, test = read_split(split_dir) if split_dir else split_events(events, protocol, seed)
    except (DataFileError, DownloadError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    names = [m.strip() for m in models.split(",")] if models else None
    console.print(f"{dataset}: {len(train):,} train pairs, {len(test):,} test pairs ({'given split' if split_dir else protocol})")
    params = _tuned_params(dataset) if tuned else None
    with progress_bar("benchmark", len(names) if names else None) as advance:
        try:
            rows = run_benchmark(
                BenchmarkData(train, test, videos), out, k=k, models=names, encoder=encoder,
                protocol="stratified" if split_dir else protocol, tuned=params,
                progress=lambda name: (advance(1), console.print(f"  fitting {name}")),
            )
        except ValueError as exc:
            fail(str(exc))
    console.print((out / "results.md").read_text())
    console.print(f"wrote {out / 'results.json'}, {out / 'recs'}/, {out / 'split'}/ ({len(rows)} models)")


def _tuned_params(dataset: str) -> dict[str, dict] | None:
    """The dataset's tuned params ({generator: params}), saying which are used; None without a file."""
    from models.tuning import read_tuned, tuned_path

    path = tuned_path(dataset)
    try:
        entries = read_tuned(path)
    except ValueError as exc:
        fail(str(exc))
    if entries:
        used = ", ".join(f"{name} ({entry.get('protocol', '?')}, {entry.get('trials', '?')} trials)" for name, entry in entries.items())
        console.print(f"tuned hyperparameters from {path}: {used} (--no-tuned for the catalog's defaults)")
    return {name: dict(entry["params"]) for name, entry in entries.items()} or None


def _required_tuned(dataset: str) -> dict[str, dict]:
    from models.tuning import require_tuned

    try:
        return require_tuned(dataset)
    except ValueError as exc:
        fail(str(exc))


@app.command()
def tune(
    ctx: typer.Context,
    generator: Annotated[str, typer.Option(help="Generator(s) to tune, comma-separated (als, bpr, ease, item-cf, user-cf, svd, ...)")],
    dataset: Annotated[str, typer.Option(help="Dataset name, as for `vidrec benchmark`")] = "movielens-small",
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files")] = None,
    protocol: Annotated[str, typer.Option(help="The benchmark protocol whose train part is searched (its validation split follows it)")] = "time",
    trials: Annotated[int, typer.Option(min=1, help="Trials per generator; trial 0 runs the catalog's defaults")] = 30,
    timeout: Annotated[float | None, typer.Option(min=1, help="Stop a generator's search after this many seconds")] = None,
    out: Annotated[Path | None, typer.Option(help="Tuned file to update (default: models/tuned/<dataset>.json)")] = None,
    seed: int = 42,
) -> None:
    """Search generators' hyperparameters (Optuna TPE) on a validation split of the train part; save the best."""
    from feature_repo.sources import DataFileError, DownloadError
    from models.benchmark import load_dataset, split_events
    from models.protocols import PROTOCOLS
    from models.tuning import tunable, tune_generator, tuned_path

    settings: Settings = ctx.obj
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    names = [g.strip() for g in generator.split(",") if g.strip()]
    try:
        events, videos = load_dataset(dataset, data_dir, settings.home / "benchmark-lakes" / dataset, settings.cache_dir / "datasets")
        train, test = split_events(events, protocol, seed)
    except (DataFileError, DownloadError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    unknown = [g for g in names if g not in tunable(videos)]
    if unknown or not names:
        fail(f"cannot tune {unknown or generator!r}: tunable generators are {', '.join(tunable(videos))}")
    path = out or tuned_path(dataset)
    console.print(
        f"{dataset} ({protocol}): searching on a validation split of the {len(train):,} train pairs; "
        f"{trials} trials per generator, trial 0 = defaults; best -> {path}"
    )
    results = []
    for name in names:
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
    for column in ("generator", "trials", "min", "val\ndefault", "val\ntuned", "test\ndefault", "test\ntuned", "test\nchange"):
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
    protocol: Annotated[str, typer.Option(help="time (held-out window after a cut) | user-time (each user's last relevant videos) | stratified")] = "time",
    generators: Annotated[str | None, typer.Option(help="Comma-separated candidate generators (default: the standard set)")] = None,
    per_source_k: Annotated[int, typer.Option(min=10, max=1000, help="Candidates per generator per user")] = 100,
    feast: Annotated[bool, typer.Option(help="Join Feast point-in-time features (time protocol)")] = True,
    label_windows: Annotated[int, typer.Option(min=1, max=10, help="Rolling label windows the ranker learns from (time protocol)")] = 4,
    max_queries_per_window: Annotated[int | None, typer.Option(min=0, help="Memory bound: ranker queries (users) per label window, a seeded draw (0: every user; default: RankerConfig's)")] = None,
    max_eval_users: Annotated[int | None, typer.Option(min=0, help="Held-out users each model is evaluated on, a seeded draw (0: all; default: TrainConfig's)")] = None,
    min_test_users: Annotated[int, typer.Option(min=1, help="time protocol: move the cut earlier until the held-out window judges this many users")] = 200,
    min_gain: Annotated[float, typer.Option(help="Gate: the lower end of the 95% interval of the per-user nDCG@10 gain over the champion must reach this")] = 0.0,
    baseline_gain: Annotated[float, typer.Option(help="Gate: the same, over the best of popularity and trending, for a first model")] = 0.0,
    shuffle_labels: Annotated[bool, typer.Option(help="Sanity check: train the ranker on shuffled labels (must be blocked)")] = False,
    dataset: Annotated[str, typer.Option(help="Name recorded with the run")] = "lake",
    tuned_for: Annotated[str | None, typer.Option(help="Use the hyperparameters `vidrec tune` saved for this dataset (e.g. movielens-small)")] = None,
    seed: int = 42,
) -> None:
    """Train generators and the ranker on the lake, evaluate, register in MLflow, gate, promote."""
    from models.ranker import RankerConfig
    from models.registry import GatePolicy
    from models.train import DEFAULT_GENERATORS, TrainConfig, train_and_gate

    settings: Settings = ctx.obj
    config = TrainConfig(
        protocol=protocol,
        generators=tuple(g.strip() for g in generators.split(",")) if generators else DEFAULT_GENERATORS,
        per_source_k=per_source_k,
        label_windows=label_windows,
        min_test_users=min_test_users,
        max_eval_users=TrainConfig.max_eval_users if max_eval_users is None else (max_eval_users or None),
        ranker=RankerConfig(
            max_queries_per_window=RankerConfig.max_queries_per_window if max_queries_per_window is None else (max_queries_per_window or None)
        ),
        use_feast=feast,
        tuned=_required_tuned(tuned_for) if tuned_for else {},
        gate=GatePolicy(min_gain=min_gain, baseline_gain=baseline_gain),
        shuffle_labels=shuffle_labels,
        seed=seed,
    )
    with progress_bar("train", None) as advance:
        try:
            result = train_and_gate(settings, config, dataset=dataset, progress=lambda m: (advance(1), console.print(f"  {m}")))
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
    shown = ["precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage_at_10", "candidate_recall_at_200"]
    console.print(result.table[[c for c in shown if c in result.table]].to_string(float_format=lambda v: f"{v:.4f}"))
    style = "green" if result.decision.promoted else "yellow"
    console.print(f"[{style}]{result.decision.summary()}[/]")
    console.print(f"MLflow run {result.run_id}; registered {result.versions}")
    print_stages(result.stages)


def print_stages(stages) -> None:
    """Wall time and peak resident memory of each stage (vidrec.meter.StageRecord)."""
    from vidrec.meter import format_bytes

    table = Table(title="stages")
    for column in ("stage", "seconds", "peak memory"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for record in stages:
        table.add_row(record.name, f"{record.seconds:.1f}", format_bytes(record.peak_rss_bytes))
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

    from models import registry, tracking

    settings: Settings = ctx.obj
    tracking.configure(settings)
    client = MlflowClient()
    try:
        if rollback:
            restored = registry.rollback(client)
            console.print(f"rolled back: champion is now {restored}")
        elif candidates_version and ranker_version:
            old = registry.promote(client, {registry.CANDIDATES_MODEL: candidates_version, registry.RANKER_MODEL: ranker_version})
            console.print(f"promoted; previous champion {old}")
        else:
            fail("say --rollback, or give both --candidates-version and --ranker-version")
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"champion: {registry.champion_versions(client)}")


if __name__ == "__main__":
    app()


@app.command()
def features(
    ctx: typer.Context,
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: the profile's)")] = None,
    freq: Annotated[str, typer.Option(help="As-of times every day (D) or week (W), ending the midnight after the last event")] = "W",
    periods: Annotated[int, typer.Option(min=0, help="Keep the newest N as-of times (0: the lake's whole span)")] = 52,
    as_of: Annotated[list[str] | None, typer.Option(help="Explicit as-of time (UTC, repeatable); overrides --freq/--periods")] = None,
    embeddings: Annotated[str, typer.Option(help="Video content embeddings: minilm | tfidf | none")] = "minilm",
    end: Annotated[str | None, typer.Option(help="Materialize up to this time (UTC; default: the newest as-of time)")] = None,
) -> None:
    """Compute feature tables from the lake, register them in Feast, and materialize them online."""
    import time

    import pandas as pd
    from rich.progress import SpinnerColumn

    from feature_repo.lake import Lake
    from feature_repo.store import build_features, locations

    settings: Settings = ctx.obj
    if freq not in ("D", "W"):
        fail(f"--freq must be D or W, not {freq!r}")
    if embeddings not in ("minilm", "tfidf", "none"):
        fail(f"--embeddings must be minilm, tfidf or none, not {embeddings!r}")
    try:
        as_of_times = [pd.Timestamp(t) for t in as_of] if as_of else None
        end_time = pd.Timestamp(end).to_pydatetime() if end else None
    except ValueError as exc:
        fail(f"cannot read a time: {exc}")
    lake = Lake(lake_dir or settings.lake_dir)
    steps = 4 if embeddings != "none" else 3
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("features", total=steps)

        started: dict[str, float] = {}

        def step(name: str) -> None:
            started[name] = time.perf_counter()
            progress.update(task, description=f"features: {name}")

        def done(name: str, detail: str) -> None:
            seconds = time.perf_counter() - started.get(name, time.perf_counter())
            progress.console.print(f"[green]✓[/] {name} ({seconds:.1f} s): {detail}")
            progress.advance(task)

        try:
            run = build_features(
                settings,
                lake=lake,
                as_of_times=as_of_times,
                freq=freq,
                periods=periods or None,
                embeddings=embeddings,
                end=end_time,
                step=step,
                done=done,
            )
        except (LookupError, ValueError) as exc:
            fail(str(exc))
        progress.update(task, description="features", completed=steps)
    where = locations(settings)
    console.print(
        f"features {where.features_dir}: {len(run.as_of_times)} as-of times "
        f"{run.as_of_times[0]} .. {run.as_of_times[-1]}; Feast project vidrec ({settings.profile})"
    )
