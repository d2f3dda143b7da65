"""
### vidrec_features: raw data -> lake -> features -> Feast (daily)

`ingest` (the dataset named by the Params, plus the serving feedback log `<VIDREC_HOME>/feedback`
when it holds events or impressions: shown slates become `impression` events, the ranker's
negatives) -> `validate` (an unreadable file, or a quarantine rate above
`max_quarantine_rate`, fails the run here: nothing downstream runs and training refuses the
lake) -> `transform` (feature tables as of the data interval's end) and `embeddings` ->
`feast_apply` -> `materialize` (online store up to the interval's end).

Every task calls one function of `vidrec.pipeline` and passes paths and counts, never data.
Each is idempotent: re-running an interval leaves the same lake, tables and online rows.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from feature_repo.defaults import DATASETS, DEFAULT_DATASET, DEFAULT_EMBEDDINGS, EMBEDDING_METHODS, MAX_QUARANTINE_RATE
from vidrec.orchestration import ONLINE_FEATURES, START_DATE, default_args, interval_end


@dag(
    dag_id="vidrec_features",
    description="Ingest + validate raw data, compute features, feast apply, materialize online",
    schedule=CronTriggerTimetable("0 0 * * *", timezone="UTC", interval=timedelta(days=1)),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(timedelta(hours=4)),
    tags=["vidrec", "features"],
    doc_md=__doc__,
    params={
        "dataset": Param(
            os.environ.get("VIDREC_DATASET", DEFAULT_DATASET),
            type="string",
            enum=[*DATASETS, "none"],
            description="Dataset to ingest ('none': only the feedback log).",
        ),
        "data_dir": Param(
            os.environ.get("VIDREC_DATA_DIR", ""),
            type="string",
            description="Folder with the dataset's files (empty: the cache, downloading MovieLens).",
        ),
        "include_feedback": Param(True, type="boolean", description="Also ingest <VIDREC_HOME>/feedback."),
        "max_quarantine_rate": Param(
            MAX_QUARANTINE_RATE,
            type="number",
            minimum=0,
            maximum=1,
            description="Fail validation when a table quarantines more than this share of its rows.",
        ),
        "embeddings": Param(
            os.environ.get("VIDREC_EMBEDDINGS", DEFAULT_EMBEDDINGS),
            type="string",
            enum=[*EMBEDDING_METHODS, "none"],
            description="Video content embeddings.",
        ),
        "snapshots": Param(
            1,
            type="integer",
            minimum=1,
            maximum=366,
            description="Daily feature snapshots ending at the interval end (more than 1 backfills).",
        ),
    },
)
def vidrec_features():
    @task
    def ingest() -> dict:
        """Dataset + feedback log -> lake (rejected rows -> quarantine); writes the ingest report."""
        from vidrec.pipeline import ingest_sources, run_dir
        from vidrec.settings import Settings

        context = get_current_context()
        params = context["params"]
        from airflow.sdk.exceptions import AirflowFailException

        report = run_dir(Settings.from_env(), "vidrec_features", interval_end(context)) / "ingest.json"
        try:
            return ingest_sources(
                params["dataset"], params["data_dir"] or None, str(report), include_feedback=params["include_feedback"]
            )
        except ValueError as exc:  # a bad Param (unknown dataset, nothing to ingest): retrying cannot help
            raise AirflowFailException(str(exc)) from exc

    @task
    def validate(ingested: dict) -> dict:
        """Fails the run (no retry) on an unreadable file or a quarantine rate above the threshold."""
        from airflow.sdk.exceptions import AirflowFailException

        from vidrec.pipeline import ValidationFailed, validate_ingest

        params = get_current_context()["params"]
        try:
            return validate_ingest(ingested["report"], float(params["max_quarantine_rate"]))
        except ValidationFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def transform(validated: dict) -> dict:
        """Feature tables (DuckDB SQL) as of the data interval's end."""
        from vidrec.pipeline import compute_feature_tables

        context = get_current_context()
        return compute_feature_tables(interval_end(context).isoformat(), int(context["params"]["snapshots"]))

    @task
    def embeddings(validated: dict) -> dict:
        """Content embeddings of every video."""
        from vidrec.pipeline import compute_video_embeddings

        return compute_video_embeddings(get_current_context()["params"]["embeddings"])

    @task
    def feast_apply(tables: dict, embedded: dict) -> dict:
        """Register the Feast repo's entities, sources, views and services."""
        from vidrec.pipeline import apply_feature_repo

        return apply_feature_repo()

    @task(outlets=[ONLINE_FEATURES])
    def materialize(applied: dict) -> dict:
        """Offline -> online store up to the data interval's end."""
        from vidrec.pipeline import materialize_online

        return materialize_online(interval_end(get_current_context()).isoformat())

    checked = validate(ingest())
    materialize(feast_apply(transform(checked), embeddings(checked)))


vidrec_features()
