"""What the vidrec DAGs share: start date, retry policy, assets, the as-of time of a run.

Imported at the top of every DAG file, so it stays cheap: the standard library and `airflow.sdk`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset

# Early enough for any logical date a backfill or `airflow dags test` gives (MovieLens starts in
# 1995): a task never runs for a logical date before its start_date. catchup=False keeps the
# scheduler from creating the past runs.
START_DATE = datetime(1990, 1, 1, tzinfo=UTC)

# A promotion moved the `champion` alias (vidrec_training emits it; vidrec_batch_recs runs on it).
CHAMPION = Asset(name="vidrec_champion", uri="x-vidrec://mlflow/champion")
# The online store was refreshed (lineage in the UI; vidrec_batch_recs runs on its own schedule).
ONLINE_FEATURES = Asset(name="vidrec_online_features", uri="x-vidrec://feast/online")


def default_args(execution_timeout: timedelta) -> dict:
    """Retries with exponential backoff (VIDREC_TASK_RETRIES, VIDREC_RETRY_DELAY_S) and a timeout."""
    return {
        "owner": "vidrec",
        "retries": int(os.environ.get("VIDREC_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("VIDREC_RETRY_DELAY_S", "60"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": execution_timeout,
    }


def interval_end(context) -> datetime:
    """The end of the run's data interval (its as-of time); a run without one uses its run_after."""
    end = context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after
    return end.astimezone(UTC)
