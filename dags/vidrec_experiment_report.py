"""
### vidrec_experiment_report: is the challenger better for viewers?

Runs daily, and by hand with Params. `report` reads the service's impression and feedback logs
(`<VIDREC_HOME>/feedback`, or VIDREC_FEEDBACK_DIR) for the experiment over the `window_days`
before the run's as-of time and reports per A/B variant: users, impressions, CTR, plays per
session, watch time per user and per session, session length, likes per 1k impressions, each
difference with a 95% interval, a p-value and a verdict, after a sample-ratio-mismatch check
(`models.lifecycle.experiments`; the same function as `vidrec experiment report`). The report
(report.json, plots) goes to MLflow experiment `vidrec-experiments`.

With `promote_if_winning`, `champion` moves to the challenger when the primary metric wins
significantly and no guard metric loses; the old champion keeps the `previous` alias (roll back
with `vidrec promote --rollback`), and the `vidrec_champion` asset event makes the batch DAG
recompute the lists. No impressions in the window: the task is skipped and says so.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from vidrec.orchestration import CHAMPION, START_DATE, default_args, interval_end


@dag(
    dag_id="vidrec_experiment_report",
    description="Engagement per A/B variant (CTR, watch time, session length) with intervals and a verdict",
    schedule="0 3 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(timedelta(hours=1)),
    tags=["vidrec", "experiments"],
    doc_md=__doc__,
    params={
        "experiment": Param(
            None, type=["null", "string"], description="Experiment name (empty: the service's VIDREC_AB_EXPERIMENT)."
        ),
        "window_days": Param(
            7, type="number", exclusiveMinimum=0, maximum=365, description="Days of traffic before the as-of time."
        ),
        "significance": Param(
            0.05, type="number", exclusiveMinimum=0, maximum=0.5, description="Significance level of the verdicts."
        ),
        "challenger_share": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            description="Share the test ran with (empty: VIDREC_AB_CHALLENGER_SHARE).",
        ),
        "promote_if_winning": Param(
            False, type="boolean", description="Promote the challenger when it wins and no guard metric loses."
        ),
    },
)
def vidrec_experiment_report():
    @task
    def report() -> dict:
        """Logs -> report.json + plots in MLflow; promote the challenger if asked and it won."""
        from airflow.sdk.exceptions import AirflowSkipException

        from models.lifecycle.experiments import NoImpressions
        from vidrec.pipeline import experiment_report

        context = get_current_context()
        params = context["params"]
        as_of = interval_end(context)
        try:
            result = experiment_report(
                params["experiment"] or None,
                end=as_of.isoformat(),
                window_days=float(params["window_days"]),
                significance=float(params["significance"]),
                challenger_share=params["challenger_share"],
                promote_if_winning=bool(params["promote_if_winning"]),
            )
        except NoImpressions as exc:
            raise AirflowSkipException(str(exc)) from exc
        print(f"{result['experiment']}: decision {result['decision']} (MLflow run {result['mlflow_run_id']})")
        print(f"report: {result['report']}")
        return {**result, "as_of": as_of.isoformat()}

    @task(outlets=[CHAMPION])
    def champion_promoted(result: dict) -> dict:
        """Emit the vidrec_champion asset event after a promotion (skipped when nothing moved)."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not result["promoted"]:
            raise AirflowSkipException(f"champion unchanged: the decision was {result['decision']!r}")
        get_current_context()["outlet_events"][CHAMPION].extra = {
            "versions": result["promoted"],
            "run_id": result["mlflow_run_id"],
            "as_of": result["as_of"],
        }
        print(
            f"promoted {result['promoted']}; previous champion {result['previous']} (rollback: vidrec promote --rollback)"
        )
        return result["promoted"]

    champion_promoted(report())


vidrec_experiment_report()
