"""
### vidrec_batch_recs: the champion's top-N for active users, into the service's cache

Runs daily and after every promotion (the `vidrec_champion` asset that `vidrec_training`
emits). `precompute` loads the `champion` models from the MLflow registry, ranks the users with
an event in the `active_days` before the as-of time (features from Feast as of that time) and
upserts one list per user into the service's precomputed store (`serving.precomputed`:
`sqlite:///<VIDREC_HOME>/serving/precomputed.db` locally, Redis in prod; key
`vidrec:recs:<user_id>`). The service serves a list only while it is fresh and made by the
versions it serves. Idempotent: a re-run overwrites the same keys.

The as-of time is the data interval's end for a scheduled run, and the promoted run's interval
end for a run triggered by a promotion. Before the first champion the task is skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from vidrec.orchestration import CHAMPION, START_DATE, default_args, interval_end


def _as_of(context) -> datetime:
    """A promotion's interval end, else this run's data interval end, else its run_after."""
    events = context.get("triggering_asset_events") or {}
    stamps = [
        event.extra["as_of"]
        for asset_events in events.values()
        for event in asset_events
        if event.extra and event.extra.get("as_of")
    ]
    if stamps:
        return max(datetime.fromisoformat(s) for s in stamps).astimezone(UTC)
    return interval_end(context)


@dag(
    dag_id="vidrec_batch_recs",
    description="Precompute the champion's top-N for active users into the service's precomputed store",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC", interval=timedelta(days=1)),
        assets=CHAMPION,
    ),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(timedelta(hours=2)),
    tags=["vidrec", "serving"],
    doc_md=__doc__,
    params={
        "active_days": Param(
            30,
            type="integer",
            minimum=1,
            maximum=3650,
            description="A user is active with an event in this many days before the as-of time.",
        ),
        "top_n": Param(100, type="integer", minimum=1, maximum=100, description="Videos kept per user."),
    },
)
def vidrec_batch_recs():
    @task
    def precompute() -> dict:
        """Champion top-N for active users -> the precomputed store (upserts)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from vidrec.pipeline import NotReady, precompute_recommendations

        context = get_current_context()
        params = context["params"]
        as_of = _as_of(context)
        try:
            result = precompute_recommendations(
                as_of.isoformat(), active_days=int(params["active_days"]), top_n=int(params["top_n"])
            )
        except NotReady as exc:
            raise AirflowSkipException(str(exc)) from exc
        print(
            f"{result['users_written']} users written to {result['store']} by {result['versions']} as of {as_of} "
            f"({result['active_users']} active, {result['unknown_to_champion']} unknown to the champion)"
        )
        return result

    precompute()


vidrec_batch_recs()
