"""
### vidrec_training: train, evaluate, register, gate, promote or block (weekly, or by hand)

`check_data` (the lake must be the one `vidrec_features` last validated) -> `train_and_gate`
(`models.lifecycle.train.train_and_gate` on the events before the data interval's end: candidate
generators, XGBoost ranker, evaluation of every model on the same held-out window, MLflow run
and registered versions, gate against the champion; a passed gate moves the `champion` alias)
-> `promote_or_block`, which follows one branch:

* `champion_promoted` (emits the `vidrec_champion` asset, which triggers `vidrec_batch_recs`)
  -> `reload_serving` (POST `$VIDREC_SERVING_URL/reload` with `$VIDREC_RELOAD_TOKEN`;
  skipped, with a log line, when `VIDREC_SERVING_URL` is unset);
* `gate_blocked` (logs why): `champion_promoted` and `reload_serving` are skipped.

Trigger by hand from the UI with Params: protocol, generators, per_source_k, label_windows, ranker
hyperparameters, gate margins and guards. A second run on the same data and configuration reuses the
MLflow run instead of registering new versions (`force_retrain` to train anyway).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from models.lifecycle.config import DEFAULT_GENERATORS, GENERATORS, PROTOCOLS, GatePolicy, RankerConfig, TrainConfig
from vidrec.orchestration import CHAMPION, START_DATE, default_args, interval_end


@dag(
    dag_id="vidrec_training",
    description="Train candidates + ranker, evaluate, register in MLflow, gate, promote or block, reload serving",
    schedule=CronTriggerTimetable("0 6 * * 1", timezone="UTC", interval=timedelta(days=7)),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(timedelta(hours=6)),
    tags=["vidrec", "training"],
    doc_md=__doc__,
    params={
        "protocol": Param(
            TrainConfig.protocol,
            type="string",
            enum=list(PROTOCOLS),
            description="time: train on the past, evaluate on the future; user-time: each user's last relevant "
            "videos held out (judges every user); stratified: per-user random split.",
        ),
        "min_test_users": Param(
            TrainConfig.min_test_users,
            type="integer",
            minimum=1,
            description="time protocol: the cut moves earlier until the held-out window judges this many users.",
        ),
        "generators": Param(
            list(DEFAULT_GENERATORS),
            type="array",
            items={"type": "string", "enum": list(GENERATORS)},
            examples=list(GENERATORS),  # the trigger form shows a pick list of every generator
            description="Candidate generators to train (pick any; the default set is preselected).",
        ),
        "per_source_k": Param(
            TrainConfig.per_source_k,
            type="integer",
            minimum=10,
            maximum=1000,
            description="Candidates per generator per user.",
        ),
        "label_windows": Param(
            TrainConfig.label_windows,
            type="integer",
            minimum=1,
            maximum=10,
            description="Rolling label windows the ranker learns from (time protocol; each refits the generators).",
        ),
        "tuned_for": Param(
            None,
            type=["null", "string"],
            description="Use the hyperparameters `vidrec tune` saved for this dataset "
            "(models/tuned/<dataset>.json, e.g. movielens-small); empty: the catalog's defaults.",
        ),
        "use_feast": Param(
            TrainConfig.use_feast, type="boolean", description="Join Feast point-in-time features (time protocol)."
        ),
        "ranker": Param(
            {},
            type="object",
            description='XGBoost ranker hyperparameters (models.lifecycle.config.RankerConfig fields), e.g. {"max_depth": 6}.',
        ),
        "max_queries_per_window": Param(
            RankerConfig.max_queries_per_window,
            type=["integer", "null"],
            minimum=1,
            description="Memory bound: ranker queries (users) drawn per label window; null: every user.",
        ),
        "max_eval_users": Param(
            TrainConfig.max_eval_users,
            type=["integer", "null"],
            minimum=1,
            description="Held-out users every model is evaluated on, at most (a seeded draw); null: all.",
        ),
        "min_gain": Param(
            GatePolicy.min_gain,
            type="number",
            minimum=-1,
            maximum=1,
            description="Gate: the lower end of the 95% interval of the per-user nDCG@10 gain over the champion must reach this.",
        ),
        "baseline_gain": Param(
            GatePolicy.baseline_gain,
            type="number",
            minimum=-1,
            maximum=1,
            description="Gate: the same over the best of popularity and trending, for a first model.",
        ),
        "guards": Param(
            {},
            type="object",
            description="Gate: largest allowed drop per guard metric against the champion, "
            'e.g. {"coverage_at_10": 0.05} (empty: the defaults of models.lifecycle.config.GatePolicy).',
        ),
        "shuffle_labels": Param(
            TrainConfig.shuffle_labels,
            type="boolean",
            description="Sanity check: train on shuffled labels (must be blocked).",
        ),
        "engagement_check": Param(
            GatePolicy.engagement_check,
            type="boolean",
            description="Gate: also simulate viewers (truth: EASE on every event); a significant loss of "
            "simulated watch time per session blocks the promotion (see gate_report.json).",
        ),
        "seed": Param(TrainConfig.seed, type="integer", minimum=0, description="Seeds the splits, samples and models."),
        "dataset": Param("lake", type="string", description="Name recorded with the MLflow run."),
        "require_validated_lake": Param(
            True, type="boolean", description="Refuse a lake that changed since vidrec_features validated it."
        ),
        "force_retrain": Param(
            False, type="boolean", description="Train even when an MLflow run with the same data and config exists."
        ),
    },
)
def vidrec_training():
    @task
    def check_data() -> dict:
        """The lake must be exactly what the last passed validation saw (fails the run otherwise)."""
        from airflow.sdk.exceptions import AirflowFailException

        from vidrec.pipeline import ValidationFailed, check_lake_validated

        if not get_current_context()["params"]["require_validated_lake"]:
            print("require_validated_lake is off: training on the lake as it is")
            return {"fingerprint": None}
        try:
            return check_lake_validated()
        except ValidationFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def train_and_gate(checked: dict) -> dict:
        """Generators + ranker on the events before the interval's end; evaluate; register; gate."""
        from airflow.sdk.exceptions import AirflowFailException

        from vidrec.pipeline import NotReady, train_models

        context = get_current_context()
        tags = {"airflow.dag_id": context["dag"].dag_id, "airflow.run_id": context["run_id"]}
        try:
            result = train_models(dict(context["params"]), interval_end(context).isoformat(), run_tags=tags)
        except (NotReady, ValueError) as exc:  # no data before the interval end, or a bad Param
            raise AirflowFailException(str(exc)) from exc
        print(f"MLflow run {result['run_id']}{' (reused)' if result['reused'] else ''}: versions {result['versions']}")
        print(f"gate: {result['summary']}")
        return result

    @task.branch
    def promote_or_block(result: dict) -> str:
        """Follow the gate: champion_promoted or gate_blocked; a reused training (same data, same
        Params) changes nothing: `unchanged` (the other branches are skipped, no asset event)."""
        if result["reused"]:
            return "unchanged"
        return "champion_promoted" if result["promoted"] else "gate_blocked"

    @task
    def unchanged(result: dict) -> dict:
        """Nothing new to train on: no version registered, nothing promoted, serving left alone."""
        print(
            f"unchanged: the data and Params match MLflow run {result['run_id']} (versions {result['versions']}); "
            f"champion stays {result.get('champion')}. Set force_retrain to train anyway."
        )
        return {"champion": result.get("champion"), "run_id": result["run_id"]}

    @task
    def gate_blocked(result: dict) -> dict:
        """The challenger stays a challenger: say why, and leave serving alone."""
        print(f"BLOCKED: versions {result['versions']} stay challengers; champion stays {result.get('champion')}")
        print(f"gate: {result['summary']}")
        print(f"compare them in MLflow run {result['run_id']} (tags gate.*, artifact gate_report.json)")
        return {"blocked": result["versions"], "champion": result.get("champion")}

    @task(outlets=[CHAMPION])
    def champion_promoted(result: dict) -> dict:
        """Confirm the `champion` alias holds the new versions; emit the vidrec_champion asset event."""
        from airflow.sdk.exceptions import AirflowSkipException

        from vidrec.pipeline import NotReady, champion_state

        try:
            state = champion_state(result["versions"])
        except NotReady as exc:
            raise AirflowSkipException(str(exc)) from exc
        context = get_current_context()
        context["outlet_events"][CHAMPION].extra = {
            "versions": result["versions"],
            "run_id": result["run_id"],
            "as_of": result["as_of"],
        }
        print(f"champion: {state['champion']} (MLflow run {result['run_id']})")
        return state

    @task
    def reload_serving(promoted: dict) -> dict:
        """Tell the service to load the new champion now (it also polls the registry on its own)."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from vidrec.pipeline import reload_serving as post_reload

        url = os.environ.get("VIDREC_SERVING_URL")
        if not url:
            raise AirflowSkipException(
                "VIDREC_SERVING_URL is not set: no service to reload (it polls the registry itself)"
            )
        try:
            answer = post_reload(url, os.environ.get("VIDREC_RELOAD_TOKEN"))
        except PermissionError as exc:  # a wrong or missing token: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        print(f"{url}/reload: {answer}")
        return answer

    result = train_and_gate(check_data())
    branch = promote_or_block(result)
    promoted = champion_promoted(result)
    branch >> [promoted, gate_blocked(result), unchanged(result)]
    reload_serving(promoted)


vidrec_training()
