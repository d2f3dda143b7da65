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
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from vidrec.meter import StageMeter
from vidrec.settings import Settings

log = logging.getLogger("vidrec.pipeline")

VALIDATION_FILE = "lake_validation.json"
RUN_KEY_TAG = "vidrec.run_key"


class ValidationFailed(RuntimeError):
    """The data of a run must not go further: the message says which file or table and why."""


class NotReady(LookupError):
    """What this step needs does not exist yet (no champion, no events): nothing to do."""


# ---- helpers ---------------------------------------------------------------------------------------


def utc_time(value) -> datetime:
    """An aware UTC datetime from a datetime or an ISO string (naive values are taken as UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _write_json_atomic(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _videos_digest(lake) -> str:
    """What the embeddings are computed from: each video's id, text and publication time."""
    from models.content import video_text

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
    """The serving feedback log (serving.config's default): `VIDREC_FEEDBACK_DIR` or `<home>/feedback`."""
    return Path(os.environ.get("VIDREC_FEEDBACK_DIR", settings.home / "feedback")).resolve()


# ---- vidrec_features ---------------------------------------------------------------------------------


def ingest_sources(
    dataset: str | None,
    data_dir: str | None,
    report_path: str,
    *,
    include_feedback: bool = True,
    chunk_rows: int = 1_000_000,
    settings: Settings | None = None,
) -> dict:
    """Ingest the dataset (if any) and the serving feedback log (if it holds events) into the lake.

    A source whose files cannot be read (or lack a required column) is recorded in the report with
    the lake untouched by it, so that `validate_ingest` fails the run naming the file; every
    other error (a download, a bug) propagates. Writes the report to `report_path`.
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
            path = _default_synthetic(settings)
        planned.append(("dataset", dataset, path))
    feedback = feedback_dir(settings)
    if include_feedback:
        if (feedback / "events").is_dir() and any((feedback / "events").rglob("*.parquet")):
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
            summary = ingest(source, lake, chunk_rows=chunk_rows)
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
            }
            entry["quarantine_key"] = summary.source_key
            entry["seconds"] = round(summary.seconds, 2)
            log.info("%s %s: %s", role, name, entry["tables"]["events"])
        sources.append(entry)
    stats = lake.stats()
    report = {
        "lake": str(lake.root),
        "sources": sources,
        "lake_stats": {k: stats[k] for k in ("events", "videos", "users", "partitions", "first_event", "last_event")},
    }
    _write_json_atomic(report, Path(report_path))
    return {
        "report": str(report_path),
        "sources": [s["role"] for s in sources],
        "errors": sum(1 for s in sources if "error" in s),
        "lake_events": stats["events"],
    }


def _default_synthetic(settings: Settings) -> Path:
    from feature_repo.synthetic import SyntheticConfig, generate

    config = SyntheticConfig()
    out = settings.cache_dir / "datasets" / f"synthetic-seed{config.seed}-{config.n_events}"
    if not (out / "videos.parquet").exists():
        generate(config, out)
    return out


def validate_ingest(report_path: str, max_quarantine_rate: float, *, settings: Settings | None = None) -> dict:
    """Fail (ValidationFailed) when a source could not be read, a table quarantined more than
    `max_quarantine_rate` of its rows, or the lake holds no events. On success, record the lake's
    fingerprint as validated (`<home>/lake_validation.json`), which training checks.
    """
    from feature_repo.lake import Lake
    from models.tracking import lake_fingerprint

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
    checked_at = datetime.now(timezone.utc).isoformat()
    if problems:
        _write_json_atomic({"status": "failed", "problems": problems, "report": report_path, "checked_at": checked_at}, record_path)
        raise ValidationFailed("validation failed: " + " | ".join(problems))
    fingerprint = lake_fingerprint(lake.event_files())
    _write_json_atomic(
        {"status": "passed", "fingerprint": fingerprint, "report": report_path, "checked_at": checked_at, "rates": rates},
        record_path,
    )
    return {"fingerprint": fingerprint, "quarantine_rates": rates, "lake_events": report["lake_stats"]["events"]}


def as_of_times(end: datetime, snapshots: int = 1, freq: str = "D") -> list[datetime]:
    """`snapshots` as-of times stepping back from `end` by a day (D) or a week (W), oldest first."""
    step = {"D": timedelta(days=1), "W": timedelta(days=7)}[freq]
    end = utc_time(end)
    return [end - step * i for i in reversed(range(max(1, snapshots)))]


def compute_feature_tables(end: str, snapshots: int = 1, freq: str = "D", *, settings: Settings | None = None) -> dict:
    """The feature tables as of the interval end (and `snapshots - 1` earlier times), merged by as-of time."""
    import pandas as pd

    from feature_repo.lake import Lake
    from feature_repo.transforms import compute_features

    settings = settings or Settings.from_env()
    times = [pd.Timestamp(t) for t in as_of_times(utc_time(end), snapshots, freq)]
    rows: dict[str, int] = {}
    tables = compute_features(Lake(settings.lake_dir), times, settings.features_dir, progress=rows.__setitem__)
    return {"as_of": [t.isoformat() for t in times], "rows": rows, "tables": {k: str(v) for k, v in tables.items()}}


def compute_video_embeddings(method: str, *, settings: Settings | None = None) -> dict:
    """Content embeddings of every video (`minilm`, `tfidf`, or `none` to keep what is there)."""
    from feature_repo.lake import Lake
    from feature_repo.sources.download import sha256_of
    from feature_repo.store import locations

    if method == "none":
        return {"method": "none", "table": None}
    if method not in ("minilm", "tfidf"):
        raise ValueError(f"unknown embedding method {method!r}: expected minilm, tfidf or none")
    from feature_repo.transforms.embeddings import compute_embeddings

    settings = settings or Settings.from_env()
    lake = Lake(settings.lake_dir)
    features_dir = locations(settings).features_dir
    # The catalog rarely changes between daily runs, and MiniLM over all of it is the slowest step
    # of the DAG: skip it when the videos' content and the method are those of the table there.
    source = {"method": method, "videos_sha256": _videos_digest(lake)}
    marker = features_dir / ".video_embeddings.source.json"
    target = features_dir / "video_embeddings.parquet"
    if target.exists() and marker.exists() and json.loads(marker.read_text()) == {**source, "table_sha256": sha256_of(target)}:
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


# ---- vidrec_training ---------------------------------------------------------------------------------


def check_lake_validated(*, settings: Settings | None = None) -> dict:
    """Refuse to train on a lake that changed since its last passed validation (or failed it)."""
    from feature_repo.lake import Lake
    from models.tracking import lake_fingerprint

    settings = settings or Settings.from_env()
    path = settings.home / VALIDATION_FILE
    if not path.exists():
        raise ValidationFailed(f"the lake at {settings.lake_dir} was never validated: run the vidrec_features DAG first")
    record = json.loads(path.read_text())
    if record["status"] != "passed":
        raise ValidationFailed(f"the last validation of the lake failed ({record['checked_at']}): " + " | ".join(record["problems"]))
    current = lake_fingerprint(Lake(settings.lake_dir).event_files())
    if current != record["fingerprint"]:
        raise ValidationFailed(
            f"the lake at {settings.lake_dir} changed since its last validation ({record['checked_at']}): "
            "run the vidrec_features DAG (or trigger training with require_validated_lake=false)"
        )
    return {"fingerprint": current, "validated_at": record["checked_at"]}


@contextmanager
def lake_as_of(lake_dir: Path, end: datetime, work_root: Path) -> Iterator[Path]:
    """A private view of the lake holding only events strictly before `end`.

    Whole day partitions before `end`'s day are hard links (the lake replaces files by rename, so
    a link keeps the content it had); the partition of `end`'s day, when `end` is not midnight,
    is filtered. Users and videos are linked as they are. Removed on exit.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feature_repo.lake import PARTITION, Lake, write_parquet_atomic

    source = Lake(lake_dir)
    end = utc_time(end)
    day = end.strftime("%Y-%m-%d")
    midnight = end.hour == end.minute == end.second == end.microsecond == 0
    root = Path(work_root) / f"lake-asof-{end.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"

    def link(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        with source.locked():
            for table in ("users", "videos"):
                if source.table_path(table).exists():
                    link(source.table_path(table), root / table / f"{table}.parquet")
            for path in source.event_files():
                date = path.parent.name.split("=", 1)[1]
                target = root / "events" / f"{PARTITION}={date}" / "part-0.parquet"
                if date < day:
                    link(path, target)
                elif date == day and not midnight:
                    table = pq.read_table(path)
                    kept = table.filter(pc.less(table["event_ts"], end))
                    if kept.num_rows:
                        write_parquet_atomic(kept, target)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def train_config(params: dict):
    """A `TrainConfig` from the DAG's Params (unknown ranker hyperparameters are refused)."""
    from dataclasses import fields

    from models.protocols import PROTOCOLS
    from models.ranker import RankerConfig
    from models.registry import GatePolicy
    from models.train import DEFAULT_GENERATORS, TrainConfig
    from models.tuning import require_tuned

    generators = params.get("generators") or DEFAULT_GENERATORS
    if isinstance(generators, str):
        generators = [g.strip() for g in generators.split(",") if g.strip()]
    ranker_params = dict(params.get("ranker") or {})
    if "max_queries_per_window" in params:
        ranker_params["max_queries_per_window"] = _optional_int(params["max_queries_per_window"])
    known = {f.name for f in fields(RankerConfig)} - {"extra"}
    unknown = sorted(set(ranker_params) - known)
    if unknown:
        raise ValueError(f"unknown ranker hyperparameter(s) {unknown}: expected some of {sorted(known)}")
    protocol = params.get("protocol", TrainConfig.protocol)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return TrainConfig(
        protocol=protocol,
        generators=tuple(generators),
        per_source_k=int(params.get("per_source_k", 100)),
        label_windows=int(params.get("label_windows", TrainConfig.label_windows)),
        min_test_users=int(params.get("min_test_users", TrainConfig.min_test_users)),
        max_eval_users=_optional_int(params.get("max_eval_users", TrainConfig.max_eval_users)),
        use_feast=bool(params.get("use_feast", True)),
        tuned=require_tuned(params["tuned_for"]) if params.get("tuned_for") else {},
        ranker=RankerConfig(**ranker_params),
        gate=GatePolicy(
            min_gain=float(params.get("min_gain", GatePolicy.min_gain)),
            baseline_gain=float(params.get("baseline_gain", GatePolicy.baseline_gain)),
            **({"guards": {str(k): float(v) for k, v in params["guards"].items()}} if params.get("guards") else {}),
        ),
        shuffle_labels=bool(params.get("shuffle_labels", False)),
        seed=int(params.get("seed", 42)),
    )


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def train_models(params: dict, end: str, *, run_tags: dict | None = None, settings: Settings | None = None) -> dict:
    """Train generators + ranker on the events before `end`, evaluate, register, gate (models.train).

    Idempotent: a finished MLflow run with the same key (the training data's fingerprint and the
    configuration) is reused instead of registering new versions, unless `params['force_retrain']`.
    `run_tags` (e.g. the Airflow dag and run ids) are set on the MLflow run when it is created.
    """
    from mlflow import MlflowClient

    from feature_repo.lake import Lake
    from models import registry, tracking
    from models.train import train_and_gate

    settings = settings or Settings.from_env()
    config = train_config(params)
    end_time = utc_time(end)
    tracking.configure(settings)
    client = MlflowClient()
    work = settings.home / "snapshots"
    with lake_as_of(settings.lake_dir, end_time, work) as snapshot:
        files = Lake(snapshot).event_files()
        if not files:
            raise NotReady(f"the lake at {settings.lake_dir} holds no events before {end_time.isoformat()}")
        fingerprint = tracking.lake_fingerprint(files)
        key = hashlib.sha256(json.dumps({"data": fingerprint, "config": config.params()}, sort_keys=True, default=str).encode()).hexdigest()[:32]
        if not params.get("force_retrain"):
            found = _finished_run(client, key)
            if found is not None:
                log.info("training data and configuration unchanged: reusing MLflow run %s", found["run_id"])
                return {**found, "reused": True, "run_key": key, "as_of": end_time.isoformat()}
        tags = {RUN_KEY_TAG: key, "vidrec.as_of": end_time.isoformat(), **{k: str(v) for k, v in (run_tags or {}).items()}}
        with _env("MLFLOW_RUN_CONTEXT", json.dumps(tags)):
            result = train_and_gate(replace(settings, lake_dir=snapshot), config, dataset=str(params.get("dataset") or "lake"))
    row = result.table.loc["two-stage"] if "two-stage" in result.table.index else {}
    return {
        "run_id": result.run_id,
        "versions": result.versions,
        "promoted": bool(result.decision.promoted),
        "summary": result.decision.summary(),
        "ndcg_at_10": float(row.get("ndcg_at_10", float("nan"))),
        "reused": False,
        "run_key": key,
        "as_of": end_time.isoformat(),
        "champion": registry.champion_versions(client),
    }


def _finished_run(client, key: str) -> dict | None:
    """The newest run with this key that reached its gate decision, as `train_models` returns it."""
    from models import registry
    from models.tracking import metric_name

    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", order_by=["attributes.start_time DESC"]
    )
    for run in runs:
        decision = run.data.tags.get("gate.decision")
        if run.info.status != "FINISHED" or decision is None:
            continue
        versions = {
            model: str(v.version)
            for model in registry.MODELS
            for v in client.search_model_versions(f"name = '{model}' and run_id = '{run.info.run_id}'")
        }
        if set(versions) != set(registry.MODELS):
            continue
        verdict = "PROMOTED" if decision == "promoted" else "BLOCKED"
        return {
            "run_id": run.info.run_id,
            "versions": versions,
            "promoted": decision == "promoted",
            "summary": f"{verdict} against {run.data.tags.get('gate.against')}: {run.data.tags.get('gate.reasons', '')}",
            "ndcg_at_10": run.data.metrics.get(metric_name("two-stage", "ndcg_at_10")),
            "champion": registry.champion_versions(client),
        }
    return None


def champion_state(versions: dict[str, str], *, settings: Settings | None = None) -> dict:
    """Whether `versions` hold the `champion` alias now (raises NotReady when the champion moved on)."""
    from mlflow import MlflowClient

    from models import registry, tracking

    tracking.configure(settings or Settings.from_env())
    champion = registry.champion_versions(MlflowClient())
    if champion != versions:
        raise NotReady(f"the champion is {champion}, not {versions}: it moved on since this run")
    return {"champion": champion}


def reload_serving(url: str, token: str | None, timeout_s: float = 60.0) -> dict:
    """POST <url>/reload with the bearer token; returns the service's answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url.rstrip("/") + "/reload",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:500]
        if exc.code in (401, 403):
            raise PermissionError(f"{url}/reload refused the token (HTTP {exc.code}): {body}") from exc
        raise RuntimeError(f"{url}/reload answered HTTP {exc.code}: {body}") from exc


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
    from models import batch, registry, tracking
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
        from models.train import feast_lookup

        lookup = feast_lookup(settings, champion.feature_service)
    known, unknown = batch.known_rows(champion.system, users)
    meter = StageMeter(report=log.info)
    with meter.stage("precompute"):
        batches = batch.ranked_batches(champion.system, known, end_time, top_n, lookup)
        written, rows = write_recommendation_batches(url, batches, champion.versions, ttl_s=ttl_s or serving.precomputed_ttl_s)
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
