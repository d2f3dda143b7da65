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


if __name__ == "__main__":
    app()
