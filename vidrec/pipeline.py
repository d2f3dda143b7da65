"""The stage functions the Airflow DAGs call: one per task, ids and paths in, small JSON dicts out.

Each function is a plain function of the package (it runs and is tested without Airflow), reads
its locations from `Settings.from_env()` and returns only what fits in an XCom: ids, paths,
counts, versions. Every one is idempotent: running it again for the same interval leaves the
same lake, feature tables, registry and precomputed store.

    vidrec_features    ingest_sources -> validate_ingest -> compute_feature_tables
                       (+ compute_video_embeddings) -> apply_feature_repo -> materialize_online
    vidrec_training    check_lake_validated -> train_models -> champion_state -> reload_serving
    vidrec_batch_recs  precompute_recommendations

Heavy libraries (pandas, Feast, MLflow, xgboost) are imported inside the functions, so that
importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from feature_repo.defaults import CHUNK_ROWS, DEFAULT_EMBEDDINGS, EMBEDDING_METHODS
from feature_repo.schema import utc_time
from vidrec import stop_request
from vidrec.meter import StageMeter
from vidrec.settings import Settings

log = logging.getLogger("vidrec.pipeline")

VALIDATION_FILE = "lake_validation.json"
RUN_KEY_TAG = "vidrec.run_key"
# Which process on which machine runs a training: the next training on that machine closes the
# runs whose process is gone (`close_orphaned_runs`).
HOST_TAG, PID_TAG = "vidrec.host", "vidrec.pid"


# (description, total or None) -> the function told how much more is done: a progress bar's task.
ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


class ValidationFailed(RuntimeError):
    """The data of a run must not go further: the message says which file or table and why."""


class TrainingStopped(BaseException):
    """The training process got SIGTERM (Airflow marking the task failed or killing it, `kill`):
    a BaseException, so no `except Exception` on the way swallows it."""


@contextmanager
def _closing_runs_on_sigterm(client, run_key: str) -> Iterator[Callable[[], None]]:
    """Turn SIGTERM into TrainingStopped while training, and mark the MLflow runs this training
    opened KILLED on the way out: Airflow 3 only calls the operator's on_kill on SIGTERM and
    kills the process later, which left the run RUNNING forever. Airflow's own handler still runs.

    While C code calls back into Python (XGBoost's data iterator) the handler only records the
    stop, which the callbacks raise (`vidrec.stop_request`): a raise that left a callback through
    C aborted the process. Yields a checkpoint to call between stages: it raises the stop again
    where something swallowed it, so the training goes no stage further, and its run is not
    closed FINISHED with its models registered."""
    import signal
    import threading

    def checkpoint() -> None:
        if stop_request.requested():
            raise TrainingStopped("stopped by SIGTERM")

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield checkpoint
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        stop_request.request("stopped by SIGTERM")
        if callable(previous):
            previous(signum, frame)
        if not stop_request.in_c_callbacks():
            raise TrainingStopped("stopped by SIGTERM")

    stop_request.clear()
    signal.signal(signal.SIGTERM, stop)
    began_ms = int(time.time() * 1000)
    try:
        yield checkpoint
    except BaseException as error:
        # Once SIGTERM came, any way out is the stop (a StopRequested from a callback included).
        if not stop_request.requested():
            raise
        _close_on_stop(client, run_key, began_ms)
        if isinstance(error, TrainingStopped):
            raise
        raise TrainingStopped("stopped by SIGTERM") from error
    else:
        if stop_request.requested():
            _close_on_stop(client, run_key, began_ms)
            raise TrainingStopped("stopped by SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_request.clear()


def _close_on_stop(client, run_key: str, began_ms: int) -> None:
    why = "stopped by SIGTERM while training"
    closed = _close_runs(client, run_key, ("RUNNING", "FAILED"), why, since_ms=began_ms)
    log.warning("training stopped by SIGTERM: MLflow run(s) %s marked KILLED", closed)


def _close_runs(
    client,
    run_key: str,
    statuses: tuple[str, ...],
    why: str,
    airflow_run_id: str | None = None,
    since_ms: int = 0,
) -> list[str]:
    """Mark KILLED the runs of `vidrec` tagged with this run key (and Airflow run), in `statuses`,
    started at or after `since_ms`."""
    from models.lifecycle import registry

    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    if experiment is None:
        return []
    query = f"tags.`{RUN_KEY_TAG}` = '{run_key}'"
    if airflow_run_id is not None:
        query += f" and tags.`airflow.run_id` = '{airflow_run_id}'"
    closed = []
    for run in client.search_runs([experiment.experiment_id], filter_string=query):
        if run.info.status in statuses and run.info.start_time >= since_ms:
            client.set_tag(run.info.run_id, "vidrec.killed", why)
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def close_orphaned_runs(client) -> list[str]:
    """Mark KILLED the RUNNING runs started on this machine by a process that is gone: one killed
    hard, or one that failed while the tracking store was down and so could not close its run.
    Called when a training starts; runs of live processes (another training now) stay."""
    from models.lifecycle import registry

    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    if experiment is None:
        return []
    query = f"tags.`{HOST_TAG}` = '{socket.gethostname()}' and attributes.status = 'RUNNING'"
    closed = []
    for run in client.search_runs([experiment.experiment_id], filter_string=query):
        pid = int(run.data.tags.get(PID_TAG, "0") or 0)
        if pid <= 0 or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
            continue
        except ProcessLookupError:
            pass
        except PermissionError:  # exists, under another user
            continue
        client.set_tag(run.info.run_id, "vidrec.killed", f"its process {pid} was gone; closed by the next training")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


class NotReady(LookupError):
    """What this step needs does not exist yet (no champion, no events): nothing to do."""


# ---- helpers ---------------------------------------------------------------------------------------


def _write_json_atomic(data: dict, path: Path) -> Path:
    from feature_repo.lake import write_text_atomic

    return write_text_atomic(json.dumps(data, indent=2, default=str), path)


def _videos_digest(lake) -> str:
    """What the embeddings are computed from: each video's id, text and publication time."""
    from feature_repo.text import video_text

    videos = lake.read_table("videos").sort_values("video_id", kind="stable")
    content = {
        "video_id": videos["video_id"].astype(str).tolist(),
        "text": [str(t) for t in video_text(videos)] if len(videos) else [],
        "published_ts": videos["published_ts"].astype(str).tolist(),
    }
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def run_dir(settings: Settings, dag_id: str, as_of: datetime) -> Path:
    """Where a DAG run keeps its reports: one folder per DAG and interval end (re-runs overwrite)."""
    return settings.home / "runs" / dag_id / utc_time(as_of).strftime("%Y-%m-%dT%H%M%SZ")


def feedback_dir(settings: Settings) -> Path:
    """The serving feedback log the service writes (`serving.config.ServingConfig.feedback_dir`)."""
    from serving.config import ServingConfig

    return ServingConfig.from_env(settings).feedback_dir


# ---- vidrec_features ---------------------------------------------------------------------------------


def ingest_sources(
    dataset: str | None,
    data_dir: str | None,
    report_path: str,
    *,
    include_feedback: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    progress: ProgressFactory | None = None,
    settings: Settings | None = None,
) -> dict:
    """Ingest the dataset (if any) and the serving feedback log (if it holds events) into the lake.

    A source whose files cannot be read (or lack a required column) is recorded in the report with
    the lake untouched by it, so that `validate_ingest` fails the run naming the file; every
    other error (a download, a bug) propagates. Writes the report to `report_path`.
    `progress(description, total_rows)` gives the function told of each chunk's rows.
    """
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import DataFileError, open_source

    settings = settings or Settings.from_env()
    lake = Lake(settings.lake_dir)
    planned: list[tuple[str, str, Path | None]] = []
    if dataset and dataset != "none":
        path = Path(data_dir).expanduser().resolve() if data_dir else None
        if dataset == "synthetic" and path is None:
            path = default_synthetic(settings, progress)
        planned.append(("dataset", dataset, path))
    feedback = feedback_dir(settings)
    if include_feedback:
        if any(
            any((feedback / log).rglob("*.parquet")) for log in ("events", "impressions") if (feedback / log).is_dir()
        ):
            planned.append(("feedback", "canonical", feedback))
        else:
            log.info("no feedback events under %s: only the dataset is ingested", feedback)
    if not planned:
        raise ValueError("nothing to ingest: no dataset given and no feedback log")

    sources = []
    for role, name, path in planned:
        entry: dict = {"role": role, "dataset": name, "location": str(path) if path else None}
        try:
            source = open_source(name, path, settings.cache_dir / "datasets")
            advance = progress(f"ingest {role} {name}", source.event_rows()) if progress else None
            summary = ingest(source, lake, chunk_rows=chunk_rows, progress=advance)
        except DataFileError as exc:
            log.error("%s %s not ingested: %s", role, name, exc)
            entry["error"] = str(exc)
        else:
            entry["tables"] = {
                table: {
                    "rows_in": counts.rows_in,
                    "accepted": counts.accepted,
                    "quarantined": counts.rejected,
                    "reasons": dict(counts.quarantined.most_common()),
                }
                for table, counts in summary.tables.items()
            }
            entry["events"] = {
                "new": summary.events.new,
                "updated": summary.events.updated,
                "unchanged": summary.events.unchanged,
                "partitions_written": summary.events.partitions_written,
            }
            entry["derived_users"] = summary.derived_users
            entry["quarantine_key"] = summary.source_key
            entry["seconds"] = round(summary.seconds, 2)
            log.info("%s %s: %s", role, name, entry["tables"]["events"])
        sources.append(entry)
    stats = lake.stats()
    report = {
        "lake": str(lake.root),
        "sources": sources,
        "lake_stats": {
            k: stats[k]
            for k in ("events", "events_by_type", "videos", "users", "partitions", "first_event", "last_event")
        },
    }
    _write_json_atomic(report, Path(report_path))
    return {
        "report": str(report_path),
        "sources": [s["role"] for s in sources],
        "errors": sum(1 for s in sources if "error" in s),
        "lake_events": stats["events"],
    }


def default_synthetic(settings: Settings, progress: ProgressFactory | None = None) -> Path:
    """The default synthetic platform (`SyntheticConfig()`), generated once into the cache."""
    from feature_repo.synthetic import SyntheticConfig, generate

    config = SyntheticConfig()
    out = settings.cache_dir / "datasets" / f"synthetic-seed{config.seed}-{config.n_events}"
    if not (out / "videos.parquet").exists():
        generate(config, out, progress=progress("generate synthetic", config.n_events) if progress else None)
    return out


def validate_ingest(report_path: str, max_quarantine_rate: float, *, settings: Settings | None = None) -> dict:
    """Fail (ValidationFailed) when a source could not be read, a table quarantined more than
    `max_quarantine_rate` of its rows, or the lake holds no events. On success, record the lake's
    fingerprint as validated (`<home>/lake_validation.json`), which training checks.
    """
    from feature_repo.lake import Lake
    from models.lifecycle.tracking import lake_fingerprint

    settings = settings or Settings.from_env()
    report = json.loads(Path(report_path).read_text())
    problems: list[str] = []
    rates: dict[str, float] = {}
    for source in report["sources"]:
        label = f"{source['role']} ({source['dataset']} at {source['location']})"
        if "error" in source:
            problems.append(f"{label}: {source['error']}")
            continue
        for table, counts in source["tables"].items():
            if not counts["rows_in"]:
                continue
            rate = counts["quarantined"] / counts["rows_in"]
            rates[f"{source['role']}.{table}"] = round(rate, 6)
            if rate > max_quarantine_rate:
                reasons = ", ".join(f"{r}: {n}" for r, n in counts["reasons"].items())
                problems.append(
                    f"{label}: {table} quarantined {counts['quarantined']:,} of {counts['rows_in']:,} rows "
                    f"({rate:.1%} > {max_quarantine_rate:.1%}; {reasons}); see {report['lake']}/quarantine/{table}/"
                    f"{source.get('quarantine_key', '')}"
                )
    lake = Lake(settings.lake_dir)
    if not lake.event_files():
        problems.append(f"the lake at {lake.root} holds no events")
    record_path = settings.home / VALIDATION_FILE
    checked_at = datetime.now(UTC).isoformat()
    if problems:
        _write_json_atomic(
            {"status": "failed", "problems": problems, "report": report_path, "checked_at": checked_at}, record_path
        )
        raise ValidationFailed("validation failed: " + " | ".join(problems))
    fingerprint = lake_fingerprint(lake.event_files())
    _write_json_atomic(
        {
            "status": "passed",
            "fingerprint": fingerprint,
            "report": report_path,
            "checked_at": checked_at,
            "rates": rates,
        },
        record_path,
    )
    return {"fingerprint": fingerprint, "quarantine_rates": rates, "lake_events": report["lake_stats"]["events"]}


def as_of_times(end: datetime, snapshots: int = 1, freq: str = "D") -> list[datetime]:
    """`snapshots` as-of times stepping back from `end` by a day (D) or a week (W), oldest first."""
    step = {"D": timedelta(days=1), "W": timedelta(days=7)}[freq]
    end = utc_time(end)
    return [end - step * i for i in reversed(range(max(1, snapshots)))]


def compute_feature_tables(
    end: str | None,
    snapshots: int = 1,
    freq: str = "D",
    *,
    as_of: list[str] | None = None,
    settings: Settings | None = None,
) -> dict:
    """The feature tables as of `end` (and `snapshots - 1` earlier times a day or a week apart),
    merged by as-of time.

    `end` None: the midnight after the lake's last event (`snapshots` 0: back to its first).
    `as_of`: explicit times instead. Raises NotReady when the lake holds no events.
    """
    import pandas as pd

    from feature_repo.lake import Lake
    from feature_repo.sessions import SESSION_TABLE, write_session_table
    from feature_repo.transforms import default_as_of_times
    from feature_repo.transforms.tables import write_feature_tables

    settings = settings or Settings.from_env()
    lake = Lake(settings.lake_dir)
    if as_of:
        times = sorted(pd.Timestamp(utc_time(t)) for t in as_of)
    elif end is None:
        times = default_as_of_times(lake, freq=freq, periods=snapshots or None)
    else:
        times = [pd.Timestamp(t) for t in as_of_times(utc_time(end), snapshots, freq)]
    if not times or not lake.event_files():
        raise NotReady(f"the lake at {lake.root} has no events: ingest data first")
    rows: dict[str, int] = {}
    tables = write_feature_tables(lake, times, settings, progress=rows.__setitem__)
    # The session table: each user's last session before each as-of time (its rows are what
    # /feedback pushes between runs; feature_repo.sessions holds the rules of both).
    rows[SESSION_TABLE] = write_session_table(lake, times, settings.features_dir)
    tables[SESSION_TABLE] = settings.features_dir / f"{SESSION_TABLE}.parquet"
    return {"as_of": [t.isoformat() for t in times], "rows": rows, "tables": {k: str(v) for k, v in tables.items()}}


def compute_video_embeddings(method: str, *, settings: Settings | None = None) -> dict:
    """Content embeddings of every video (`minilm`, `tfidf`, or `none` to keep what is there)."""
    from feature_repo.lake import Lake
    from feature_repo.sources.download import sha256_of
    from feature_repo.store import locations

    if method == "none":
        return {"method": "none", "table": None}
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown embedding method {method!r}: expected {', '.join(EMBEDDING_METHODS)} or none")
    from feature_repo.transforms.embeddings import compute_embeddings

    settings = settings or Settings.from_env()
    lake = Lake(settings.lake_dir)
    features_dir = locations(settings).features_dir
    # The catalog rarely changes between daily runs, and MiniLM over all of it is the slowest step
    # of the DAG: skip it when the videos' content and the method are those of the table there.
    source = {"method": method, "videos_sha256": _videos_digest(lake)}
    marker = features_dir / ".video_embeddings.source.json"
    target = features_dir / "video_embeddings.parquet"
    if (
        target.exists()
        and marker.exists()
        and json.loads(marker.read_text()) == {**source, "table_sha256": sha256_of(target)}
    ):
        log.info("videos unchanged since %s embeddings were computed: keeping %s", method, target)
        return {"method": method, "table": str(target), "reused": True}
    path = compute_embeddings(lake, features_dir, method=method)
    _write_json_atomic({**source, "table_sha256": sha256_of(path)}, marker)
    return {"method": method, "table": str(path), "reused": False}


def apply_feature_repo(*, settings: Settings | None = None) -> dict:
    """`feast apply` of feature_repo/feast_repo (idempotent; ranker feature services are kept)."""
    from feature_repo.store import apply_repo

    report = apply_repo(settings or Settings.from_env())
    return {"applied": len(report.applied), "deleted": report.deleted}


def materialize_online(end: str, *, settings: Settings | None = None) -> dict:
    """Offline -> online store up to the interval end (Feast `materialize_incremental`)."""
    from feature_repo.store import materialize

    done = materialize(settings or Settings.from_env(), utc_time(end))
    return {
        "end": utc_time(end).isoformat(),
        "views": {m.view: {"mode": m.mode, "start": str(m.start) if m.start else None} for m in done},
    }


def features_job(
    end: str | None = None,
    snapshots: int = 1,
    freq: str = "D",
    *,
    as_of: list[str] | None = None,
    embeddings: str = DEFAULT_EMBEDDINGS,
    materialize_end: str | None = None,
    step: Callable[[str, dict | None], None] | None = None,
    settings: Settings | None = None,
) -> dict:
    """The vidrec_features DAG's feature tasks in order, for callers without Airflow (`vidrec
    features`, the scale benchmark): tables -> embeddings -> feast apply -> materialize.

    Materializes up to `materialize_end` (default: the newest as-of time). `step(name, None)` is
    told when a task starts and `step(name, result)` when it ends.
    """
    settings = settings or Settings.from_env()
    step = step or (lambda name, result: None)
    out: dict = {}
    tasks = [
        ("transform", lambda: compute_feature_tables(end, snapshots, freq, as_of=as_of, settings=settings)),
        ("embeddings", lambda: compute_video_embeddings(embeddings, settings=settings)),
        ("feast_apply", lambda: apply_feature_repo(settings=settings)),
        (
            "materialize",
            lambda: materialize_online(materialize_end or out["transform"]["as_of"][-1], settings=settings),
        ),
    ]
    for name, run in tasks:
        step(name, None)
        out[name] = run()
        step(name, out[name])
    return out


# ---- vidrec_training ---------------------------------------------------------------------------------


def check_lake_validated(*, settings: Settings | None = None) -> dict:
    """Refuse to train on a lake that changed since its last passed validation (or failed it)."""
    from feature_repo.lake import Lake
    from models.lifecycle.tracking import lake_fingerprint

    settings = settings or Settings.from_env()
    path = settings.home / VALIDATION_FILE
    if not path.exists():
        raise ValidationFailed(
            f"the lake at {settings.lake_dir} was never validated: run the vidrec_features DAG or `vidrec ingest` first"
        )
    record = json.loads(path.read_text())
    if record["status"] != "passed":
        raise ValidationFailed(
            f"the last validation of the lake failed ({record['checked_at']}): " + " | ".join(record["problems"])
        )
    current = lake_fingerprint(Lake(settings.lake_dir).event_files())
    if current != record["fingerprint"]:
        raise ValidationFailed(
            f"the lake at {settings.lake_dir} changed since its last validation ({record['checked_at']}): "
            "run the vidrec_features DAG (or trigger training with require_validated_lake=false)"
        )
    return {"fingerprint": current, "validated_at": record["checked_at"]}


def train_config(params: dict):
    """A `TrainConfig` from the DAG's Params or the CLI's options (`models.lifecycle.config.train_config`),
    with `tuned_for` read from the dataset's saved tuning (`models/tuned/<dataset>.json`)."""
    from models.lifecycle.config import TrainConfig
    from models.lifecycle.config import train_config as config_from
    from models.lifecycle.tuning import require_tuned, split_tuned

    protocol = params.get("protocol") or TrainConfig.protocol
    tuned = require_tuned(params["tuned_for"], protocol) if params.get("tuned_for") else {}
    generators, ranker = split_tuned(tuned)
    config = config_from({**params, "tuned": generators, "ranker": {**ranker, **(params.get("ranker") or {})}})
    partner = (config.ranker.blend_feature or "").removeprefix("z_")
    if partner and partner not in config.generators:  # a tuned blend with a generator this run leaves out
        log.warning("the ranker's tuned blend needs generator %r, which this run does not train: blend off", partner)
        config = replace(config, ranker=replace(config.ranker, blend_feature=None, blend_weight=0.0))
    return config


def train_models(
    params: dict,
    end: str,
    *,
    run_tags: dict | None = None,
    progress: Callable[[str], None] | None = None,
    settings: Settings | None = None,
) -> dict:
    """Train generators + ranker on the events before `end`, evaluate, register, gate (models.lifecycle.train).

    Idempotent: a finished MLflow run with the same key (the training data's fingerprint and the
    configuration) is reused instead of registering new versions, unless `params['force_retrain']`.
    `run_tags` (e.g. the Airflow dag and run ids) are set on the MLflow run when it is created.
    `progress` is told each step as it starts (the CLI prints it; the DAG logs it).
    """
    from mlflow import MlflowClient

    from feature_repo.lake import Lake, lake_as_of
    from models.lifecycle import registry, tracking
    from models.lifecycle.train import train_and_gate

    settings = settings or Settings.from_env()
    config = train_config(params)
    if settings.profile == "spark" and "engine" not in (params.get("ranker") or {}):
        config = replace(config, ranker=replace(config.ranker, engine="spark"))
    end_time = utc_time(end)
    tracking.configure(settings)
    client = MlflowClient()
    work = settings.home / "snapshots"
    with lake_as_of(settings.lake_dir, end_time, work) as snapshot:
        files = Lake(snapshot).event_files()
        if not files:
            raise NotReady(f"the lake at {settings.lake_dir} holds no events before {end_time.isoformat()}")
        fingerprint = tracking.lake_fingerprint(files)
        key = hashlib.sha256(
            json.dumps({"data": fingerprint, "config": config.params()}, sort_keys=True, default=str).encode()
        ).hexdigest()[:32]
        airflow_run = (run_tags or {}).get("airflow.run_id")
        if airflow_run:  # an earlier attempt of this task was killed hard (SIGKILL): close its run
            stale = _close_runs(client, key, ("RUNNING",), "closed by the next attempt", str(airflow_run))
            if stale:
                log.warning("marked KILLED the MLflow run(s) %s that an earlier attempt left RUNNING", stale)
        # Then any other run this machine left RUNNING from a process that is gone (any run key).
        orphaned = close_orphaned_runs(client)
        if orphaned:
            log.warning("marked KILLED the MLflow run(s) %s, left RUNNING by a process that is gone", orphaned)
        if not params.get("force_retrain"):
            found = registry.finished_run(client, RUN_KEY_TAG, key)
            if found is not None:
                log.info("training data and configuration unchanged: reusing MLflow run %s", found["run_id"])
                return {**found, "reused": True, "run_key": key, "as_of": end_time.isoformat()}
        tags = {
            RUN_KEY_TAG: key,
            HOST_TAG: socket.gethostname(),
            PID_TAG: str(os.getpid()),
            "vidrec.as_of": end_time.isoformat(),
            **{k: str(v) for k, v in (run_tags or {}).items()},
        }
        dataset = str(params.get("dataset") or "lake")
        snapshot_settings = replace(settings, lake_dir=snapshot)
        with _closing_runs_on_sigterm(client, key) as checkpoint:

            def step(message: str) -> None:  # told at every stage's end, and between steps
                checkpoint()
                (progress or log.info)(message)

            result = train_and_gate(
                snapshot_settings, config, dataset=dataset, progress=step, run_tags=tags,
                engagement=engagement_checker(snapshot_settings),
            )  # fmt: skip
    table = result.table
    row = table.loc["two-stage"] if "two-stage" in table.index else {}
    return {
        "run_id": result.run_id,
        "versions": result.versions,
        "promoted": bool(result.decision.promoted),
        "summary": result.decision.summary(),
        "ndcg_at_10": _finite(row.get("ndcg_at_10")),
        "metrics": {
            str(model): {m: _finite(table.loc[model, m]) for m in SHOWN_METRICS if m in table.columns}
            for model in table.index
        },
        "stages": [
            {"stage": r.name, "seconds": round(r.seconds, 2), "peak_rss_bytes": int(r.peak_rss_bytes)}
            for r in result.stages
        ],
        "reused": False,
        "run_key": key,
        "as_of": end_time.isoformat(),
        "champion": registry.champion_versions(client),
    }


def engagement_checker(settings: Settings):
    """The gate's simulated A/B check (serving.simulation.engagement_check), for train_and_gate:
    viewers whose truth is EASE on every event of the lake (snapshot) it trains on."""

    def check(champion: tuple, challenger: tuple, users, start, policy) -> dict:
        from feature_repo.lake import Lake
        from serving import simulation

        lake = Lake(settings.lake_dir)
        audience = simulation.movielens_audience(
            lake.read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts"]),
            lake.read_table("videos"),
        )

        def servable(pair: tuple):  # features as of the sessions' start, as the evaluation reads them
            system, lookup = pair
            return system if lookup is None else simulation.FeatureRanked(system, lookup, start)

        return simulation.engagement_check(
            servable(champion), servable(challenger), audience, users, start,
            n_users=policy.engagement_users, alpha=1.0 - policy.confidence, seed=policy.seed,
        )  # fmt: skip

    return check


# The held-out figures a training run reports per model (the MLflow run has all of them).
SHOWN_METRICS = (
    "precision_at_10",
    "recall_at_10",
    "ndcg_at_10",
    "map_at_10",
    "coverage_at_10",
    "candidate_recall_at_200",
)


def _finite(value) -> float | None:
    """A float for JSON: NaN (a metric a model does not have) becomes null."""
    import math

    return None if value is None or not math.isfinite(float(value)) else float(value)


def champion_state(versions: dict[str, str], *, settings: Settings | None = None) -> dict:
    """Whether `versions` hold the `champion` alias now (raises NotReady when the champion moved on)."""
    from mlflow import MlflowClient

    from models.lifecycle import registry, tracking

    tracking.configure(settings or Settings.from_env())
    champion = registry.champion_versions(MlflowClient())
    if champion != versions:
        raise NotReady(f"the champion is {champion}, not {versions}: it moved on since this run")
    return {"champion": champion}


def reload_serving(url: str, token: str | None, timeout_s: float = 60.0) -> dict:
    """POST <url>/reload with the bearer token; returns the service's answer (serving.admin_client)."""
    from serving.admin_client import post_reload

    return post_reload(url, token, timeout_s)


# ---- vidrec_batch_recs -----------------------------------------------------------------------------


def precompute_recommendations(
    end: str,
    *,
    active_days: int = 30,
    top_n: int = 100,
    store_url: str | None = None,
    ttl_s: float | None = None,
    settings: Settings | None = None,
) -> dict:
    """Top-N of the champion for users active in the `active_days` before `end`, into the
    service's precomputed store (serving.precomputed: key `vidrec:recs:<user_id>`).

    Features come from Feast's offline store as of `end` (what `materialize` put online for that
    time). Raises NotReady when there is no champion yet.
    """
    from mlflow import MlflowClient

    from feature_repo.lake import Lake
    from models.lifecycle import batch, registry, tracking
    from serving.config import ServingConfig
    from serving.precomputed import write_recommendation_batches

    settings = settings or Settings.from_env()
    serving = ServingConfig.from_env(settings)
    url = store_url or serving.precomputed_url
    if not url:
        raise NotReady("the precomputed store is off (VIDREC_PRECOMPUTED_URL=off)")
    tracking.configure(settings)
    if registry.champion_versions(MlflowClient()) is None:
        raise NotReady("no champion in the MLflow registry yet: run vidrec_training first")
    champion = registry.load_champion()
    end_time = utc_time(end)
    users = batch.active_users(Lake(settings.lake_dir), end_time - timedelta(days=active_days), end_time)
    lookup = None
    if champion.feature_service:
        from models.lifecycle.train import feast_lookup

        lookup = feast_lookup(settings, champion.feature_service)
    ttl_s = ttl_s or serving.precomputed_ttl_s
    meter = StageMeter(report=log.info)
    with meter.stage("precompute"):
        if settings.profile == "spark":
            written, rows, unknown = _precompute_on_spark(
                settings, champion, users, end_time, top_n, url, ttl_s, lookup
            )
        else:
            known, unknown = batch.known_rows(champion.system, users)
            batches = batch.ranked_batches(champion.system, known, end_time, top_n, lookup)
            written, rows = write_recommendation_batches(url, batches, champion.versions, ttl_s=ttl_s)
    record = meter.records[-1]
    return {
        "store": url,
        "versions": champion.versions,
        "as_of": end_time.isoformat(),
        "active_users": len(users),
        "unknown_to_champion": unknown,
        "users_written": written,
        "rows": int(rows),
        "seconds": round(record.seconds, 1),
        "peak_rss_mb": round(record.peak_rss_bytes / 2**20),
    }


def _precompute_on_spark(settings, champion, users, end_time, top_n, url, ttl_s, lookup) -> tuple[int, int, int]:
    """The spark profile's batch: users ranked per partition on `VIDREC_SPARK_MASTER`'s workers."""
    from functools import partial

    from feature_repo.transforms.spark import memory_errors_named, profile_session
    from models.lifecycle.batch_spark import precompute_on_spark, prefetched_lookup
    from serving.precomputed import write_recommendation_batches

    spark = profile_session(settings, app_name="vidrec-batch-recs")
    with memory_errors_named("the batch recommendations", settings):
        totals = precompute_on_spark(
            spark, settings, champion.versions, users, end_time, top_n,
            partial(write_recommendation_batches, url, versions=champion.versions, ttl_s=ttl_s),
            prefetched_lookup(champion.system, lookup, users, end_time),
        )  # fmt: skip
    log.info("precomputed on Spark (%s): %s", settings.spark_master, totals)
    return totals["users_written"], totals["rows"], totals["unknown"]


# ---- vidrec_experiment_report ------------------------------------------------------------------------


def experiment_report(
    experiment: str | None = None,
    *,
    end: str | None = None,
    window_days: float = 7.0,
    significance: float = 0.05,
    challenger_share: float | None = None,
    promote_if_winning: bool = False,
    out_dir: str | None = None,
    log_dir: str | None = None,
    on_report: Callable | None = None,
    settings: Settings | None = None,
) -> dict:
    """The A/B report of `experiment` (default: the service's VIDREC_AB_EXPERIMENT) over the
    `window_days` before `end` (default: now), from the service's impression and feedback logs.

    Writes report.json and plots (models.lifecycle.experiments) to `out_dir` (default: this run's
    folder), logs them to MLflow experiment `vidrec-experiments`, and with `promote_if_winning`
    moves `champion` to the challenger when the report says promote (`previous` keeps the old
    champion for `vidrec promote --rollback`). Raises experiments.NoImpressions when there is
    nothing to report, ValueError for a bad argument.
    """
    from mlflow import MlflowClient

    from models.lifecycle import experiments, registry, tracking
    from serving.config import ServingConfig

    settings = settings or Settings.from_env()
    serving = ServingConfig.from_env(settings)
    experiment = experiment or serving.experiment
    share = serving.challenger_share if challenger_share is None else challenger_share
    if not 0.0 < share < 1.0:
        raise ValueError(
            f"challenger share {share} is not inside (0, 1): set VIDREC_AB_CHALLENGER_SHARE as the service "
            "had it, or pass the share the experiment ran with"
        )
    if window_days <= 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    end_time = utc_time(end)
    start_time = end_time - timedelta(days=window_days)
    logs = experiments.read_logs(Path(log_dir) if log_dir else serving.feedback_dir, experiment, start_time, end_time)
    report = experiments.analyze(logs, share, alpha=significance)
    if on_report is not None:
        on_report(report)
    out = Path(out_dir) if out_dir else run_dir(settings, "vidrec_experiment_report", end_time) / experiment
    paths = experiments.write_report(report, out)
    tracking.configure(settings)
    run_id = experiments.log_to_mlflow(report, paths, settings.mlflow_uri)
    result = {
        "experiment": experiment,
        "window": [start_time.isoformat(), end_time.isoformat()],
        "decision": report.decision(),
        "report": str(out / "report.json"),
        "files": [str(p) for p in paths],
        "mlflow_run_id": run_id,
        "promoted": None,
        "previous": None,
    }
    if promote_if_winning and report.decision() == "promote":
        client = MlflowClient()
        served = experiments.served_versions(logs, "challenger")
        current = {model: registry.alias_version(client, model, registry.CHALLENGER) for model in registry.MODELS}
        if served != current:
            raise registry.RegistryError(
                f"the experiment's challenger served {served}, but the `challenger` alias is now {current}: "
                "not promoting a model the experiment did not measure"
            )
        result["previous"] = registry.promote(client, current)
        result["promoted"] = current
    return result


def simulate_audience(
    *,
    url: str | None = "http://127.0.0.1:3000",
    audience: str = "synthetic",
    users: int = 200,
    sessions_per_user: int = 3,
    k: int = 10,
    concurrency: int = 4,
    seed: int = 0,
    experiment: str | None = None,
    challenger_share: float | None = None,
    log_dir: str | None = None,
    world_seed: int = 42,
    world_users: int = 2_000,
    world_videos: int = 1_000,
    progress: ProgressFactory | None = None,
    settings: Settings | None = None,
) -> dict:
    """Simulated viewers against the live service at `url` (it logs what they do like real
    traffic), or with `url=None` against the registry's champion and challenger loaded here,
    writing the same logs under `log_dir` (default: the service's feedback folder).

    `audience`: `synthetic` (the world `vidrec generate --seed world_seed` draws; its tastes are
    the truth) or `movielens` (truth: a model fitted on all of the lake's events; see its caveat).
    """
    from serving import simulation
    from serving.config import ServingConfig

    settings = settings or Settings.from_env()
    serving = ServingConfig.from_env(settings)
    experiment = experiment or serving.experiment
    if users < 1 or sessions_per_user < 1 or not 1 <= k <= 100 or concurrency < 1:
        raise ValueError("users, sessions_per_user and concurrency must be >= 1, and k in 1..100")
    if audience == "synthetic":
        from feature_repo.synthetic import SyntheticConfig

        viewers = simulation.synthetic_audience(
            SyntheticConfig(n_users=world_users, n_videos=world_videos, seed=world_seed)
        )
    elif audience == "movielens":
        from feature_repo.lake import Lake

        lake = Lake(settings.lake_dir)
        viewers = simulation.movielens_audience(
            lake.read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts"]),
            lake.read_table("videos"),
        )
    else:
        raise ValueError(f"audience must be synthetic or movielens, got {audience!r}")
    share = serving.challenger_share if challenger_share is None else challenger_share
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"challenger share must be in [0, 1], got {share}")
    # The timeline ends now: the service refuses future events, and the report's window ends now.
    start = simulation.latest_start(sessions_per_user)
    if url:
        target = simulation.HttpTarget(url)
    else:
        target = _offline_target(experiment, share, Path(log_dir) if log_dir else serving.feedback_dir, start, settings)
    users = min(users, len(viewers.user_ids))
    try:
        summary = simulation.simulate(
            viewers,
            target,
            users=users,
            sessions_per_user=sessions_per_user,
            k=k,
            concurrency=concurrency,
            seed=seed,
            start=start,
            progress=progress("simulate", users) if progress else None,
        )
    finally:
        if url:
            target.close()
    return {
        **summary.as_dict(),
        "experiment": experiment,
        "target": url or "offline",
        "caveat": viewers.caveat,
        "window_start": start.isoformat(),
    }


def _offline_target(experiment: str, share: float, log_root: Path, as_of, settings: Settings):
    from mlflow import MlflowClient

    from models.lifecycle import registry, tracking
    from serving import simulation

    tracking.configure(settings)
    client = MlflowClient()
    if registry.champion_versions(client) is None:
        raise NotReady("no champion in the MLflow registry yet: train one first (vidrec train)")
    aliases = {"champion": registry.CHAMPION}
    if share > 0:
        if any(registry.alias_version(client, m, registry.CHALLENGER) is None for m in registry.MODELS):
            raise NotReady("a challenger share was given but no model holds the `challenger` alias")
        aliases["challenger"] = registry.CHALLENGER
    loaded = {variant: registry.load_champion(alias) for variant, alias in aliases.items()}
    systems = {variant: simulation.registered_system(c, settings, as_of) for variant, c in loaded.items()}
    return simulation.OfflineTarget(systems, experiment, share, log_root, {v: c.versions for v, c in loaded.items()})
