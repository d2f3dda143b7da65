"""The MLflow registry side: names, aliases, the promotion gate, promote and roll back.

Two registered models move together: `vidrec-candidates` (the generators) and `vidrec-ranker`
(XGBoost). A ranker version carries tags naming the candidates version and the Feast feature
service it was trained with. Alias `champion` is what serving loads; `challenger` marks the
latest candidate under review; `previous` is the champion before the last promotion.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import tempfile
from dataclasses import asdict, dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from models.lifecycle.config import GatePolicy
from models.lifecycle.significance import Interval, PerUser, paired_intervals

log = logging.getLogger(__name__)

EXPERIMENT = "vidrec"
CANDIDATES_MODEL = "vidrec-candidates"
RANKER_MODEL = "vidrec-ranker"
MODELS = (CANDIDATES_MODEL, RANKER_MODEL)
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
# Ranker version tags (the service reads them to know what to load with it).
TAG_CANDIDATES_VERSION = "candidates_version"
TAG_FEATURE_SERVICE = "feature_service"


class RegistryError(RuntimeError):
    """The registry is not in a state that allows the requested move."""


@dataclass
class GateDecision:
    promoted: bool
    reasons: list[str]
    challenger: dict[str, float]
    reference: dict[str, float]  # the champion's metrics, or the baseline's for a first model
    against: str  # "champion", or "baseline (<name>)" for a first model
    policy: GatePolicy
    intervals: dict[str, Interval] = field(default_factory=dict)
    engagement: dict | None = None  # the simulated A/B check's figures, when the policy asks for it

    @property
    def n_users(self) -> int:
        first = next(iter(self.intervals.values()), None)
        return first.n_users if first else 0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "policy": asdict(self.policy),
            "intervals": {m: i.as_dict() for m, i in self.intervals.items()},
            "n_users": self.n_users,
        }

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "BLOCKED"
        return f"{verdict} against {self.against}: " + "; ".join(self.reasons)


def decide(
    challenger: PerUser,
    reference: PerUser,
    against: str,
    policy: GatePolicy = GatePolicy(),
    challenger_metrics: dict[str, float] | None = None,
    reference_metrics: dict[str, float] | None = None,
) -> GateDecision:
    """Compare two models judged on the same held-out users; return the decision and why, in words.

    `against`: "champion" applies `min_gain` and the guards; anything else (a baseline's name)
    is a first model's comparison, which applies `baseline_gain` to the primary metric only.
    """
    first_model = against != "champion"
    metrics = [policy.primary] if first_model else policy.metrics()
    intervals = paired_intervals(challenger, reference, metrics, policy.n_boot, policy.confidence, policy.seed)
    record = lambda: GateDecision(  # noqa: E731 (a late-bound constructor)
        ok, reasons, challenger_metrics or {}, reference_metrics or {},
        f"baseline ({against})" if first_model else "champion", policy, intervals,
    )  # fmt: skip
    primary = intervals.get(policy.primary)
    if primary is None or not math.isfinite(primary.diff):
        ok, reasons = False, [f"no {policy.primary} on users both models were judged on"]
        return record()
    need = policy.baseline_gain if first_model else policy.min_gain
    ok = bool(primary.low >= need and primary.diff > need)
    if ok:
        verdict = f"better: the interval lies above {need:+.4f}"
    elif primary.high < need:
        verdict = "worse"
    else:
        verdict = f"inconclusive: the interval reaches {need:+.4f} or below"
    reasons = [f"{primary.words()}: {verdict}"]
    for metric, tolerance in ({} if first_model else policy.guards).items():
        interval = intervals.get(metric)
        if interval is None or not math.isfinite(interval.low):
            continue
        if interval.low < -tolerance:
            ok = False
            reasons.append(f"guard {interval.words()}: may have dropped by more than {tolerance}")
    if ok:
        reasons.append("no guard metric dropped past its tolerance" if not first_model else "first model")
    return record()


def alias_version(client: MlflowClient, model: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def champion_versions(client: MlflowClient) -> dict[str, str] | None:
    """{'vidrec-candidates': v, 'vidrec-ranker': v} for the champion, or None before the first."""
    versions = {model: alias_version(client, model, CHAMPION) for model in MODELS}
    if all(v is None for v in versions.values()):
        return None
    if any(v is None for v in versions.values()):
        raise RegistryError(f"champion alias is set on only one model: {versions}")
    return versions


def mark_challenger(client: MlflowClient, versions: dict[str, str]) -> None:
    for model, version in versions.items():
        client.set_registered_model_alias(model, CHALLENGER, version)


def promote(client: MlflowClient, versions: dict[str, str]) -> dict[str, str] | None:
    """Move `champion` to `versions` on both models; the old champion becomes `previous`.

    Returns the versions that were champion before (None for the first promotion).
    """
    if set(versions) != set(MODELS):
        raise RegistryError(f"promotion needs a version of each of {MODELS}, got {sorted(versions)}")
    old = champion_versions(client)
    for model in MODELS:
        if old is not None and old[model] != versions[model]:
            client.set_registered_model_alias(model, PREVIOUS, old[model])
        client.set_registered_model_alias(model, CHAMPION, versions[model])
        if alias_version(client, model, CHALLENGER) == versions[model]:
            client.delete_registered_model_alias(model, CHALLENGER)
    log.info("promoted %s (previous champion: %s)", versions, old)
    return old


def rollback(client: MlflowClient) -> dict[str, str]:
    """Make `previous` the champion again on both models; the rolled-back versions lose `champion`.

    The versions rolled back become `previous`, so a second rollback undoes the first.
    """
    previous = {model: alias_version(client, model, PREVIOUS) for model in MODELS}
    if any(v is None for v in previous.values()):
        raise RegistryError("nothing to roll back to: no 'previous' alias on both registered models")
    current = champion_versions(client)
    for model in MODELS:
        client.set_registered_model_alias(model, CHAMPION, previous[model])
        if current is not None:
            client.set_registered_model_alias(model, PREVIOUS, current[model])
    log.warning("rolled back champion to %s (was %s)", previous, current)
    return previous


ROLLBACK_HINT = (
    "**Roll back**: `vidrec promote --rollback` moves `champion` back to the versions aliased `previous` "
    "(or set the aliases by hand in the registry); compare the models in this run's nested runs."
)


def record_decision(
    client: MlflowClient, run_id: str, decision: GateDecision, versions: dict[str, str], card: str = ""
) -> None:
    """Write the decision where reviewers look: run tags, metrics and description, a gate report
    artifact, the model versions' tags and descriptions, the log.

    `card`: what the versions are (how they were fitted), prepended to the versions' description.
    """
    verdict = "promoted" if decision.promoted else "blocked"
    client.set_tag(run_id, "gate.decision", verdict)
    client.set_tag(run_id, "gate.against", decision.against)
    client.set_tag(run_id, "gate.reasons", " | ".join(decision.reasons)[:5000])
    client.set_tag(run_id, "gate.n_users", str(decision.n_users))
    client.set_tag(run_id, "gate.summary", decision.summary()[:5000])
    for metric, interval in decision.intervals.items():
        for part in ("diff", "low", "high"):
            value = getattr(interval, part)
            if math.isfinite(value):
                client.log_metric(run_id, f"gate.{metric}.{part}", value)
    report = _finite({**decision.as_dict(), "versions": versions})
    client.log_text(run_id, json.dumps(report, indent=2, default=float, allow_nan=False), "gate_report.json")
    words = f"**Gate**: {decision.summary()}\n\n{ROLLBACK_HINT}"
    client.set_tag(run_id, "mlflow.note.content", f"{card}\n\n{words}".strip())  # the run's Description
    for model, version in versions.items():
        client.set_model_version_tag(model, version, "gate.decision", verdict)
        client.update_model_version(model, version, description=f"{card}\n\n{words}".strip()[:5000])
    (log.info if decision.promoted else log.warning)("gate: %s", decision.summary())


def _finite(value):
    """NaN and infinities become null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


# ---- packaging: the two registered models and loading the champion back ------------------------


class CandidatesPyfunc(mlflow.pyfunc.PythonModel):
    """`vidrec-candidates`: the fitted generators (a HybridUnion). Input: user_id, k; output: candidates."""

    def load_context(self, context) -> None:
        with open(context.artifacts["union"], "rb") as fh:
            self.union = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        data = self.union.data
        rows = data.user_rows(model_input["user_id"].astype(str))
        known = rows[rows >= 0]
        frame = self.union.candidates(known)
        return pd.DataFrame(
            {
                "user_id": data.user_ids[frame["user_row"].to_numpy()],
                "video_id": data.video_ids[frame["video_row"].to_numpy()],
                "n_sources": frame["n_sources"].to_numpy(),
            }
        )


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    """`vidrec-ranker`: XGBoost over the ranking frame's feature columns. Output: one score per row."""

    def load_context(self, context) -> None:
        with open(context.artifacts["ranker"], "rb") as fh:
            self.ranker = pickle.load(fh)
        with open(context.artifacts["catalog"], "rb") as fh:
            self.catalog = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.ranker.predict(model_input)


@dataclass
class Champion:
    """What serving loads: the two-stage system and the versions and feature service behind it."""

    system: object  # models.two_stage.TwoStage
    versions: dict[str, str]
    feature_service: str | None
    alias: str


def register_system(
    system,
    ranking_frame: pd.DataFrame,
    feature_service: str | None,
    tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """Log both models into the active run and register them; tag the ranker with what it needs.

    `ranking_frame` supplies the ranker's input example and signature.
    """
    client = MlflowClient()
    tags = {k: str(v) for k, v in (tags or {}).items()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, obj in (("union", system.union), ("ranker", system.ranker), ("catalog", system.catalog)):
            paths[name] = os.path.join(tmp, f"{name}.pkl")
            with open(paths[name], "wb") as fh:
                pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        users = pd.DataFrame({"user_id": system.data.user_ids[:3].astype(str)})
        candidates_info = mlflow.pyfunc.log_model(
            name="candidates",
            python_model=CandidatesPyfunc(),
            artifacts={"union": paths["union"]},
            input_example=users,
            signature=infer_signature(users, pd.DataFrame({"user_id": ["1"], "video_id": ["1"], "n_sources": [1]})),
            registered_model_name=CANDIDATES_MODEL,
        )
        example = ranking_frame[system.ranker.features].head(5).astype(np.float32)
        ranker_info = mlflow.pyfunc.log_model(
            name="ranker",
            python_model=RankerPyfunc(),
            artifacts={"ranker": paths["ranker"], "catalog": paths["catalog"]},
            input_example=example,
            signature=infer_signature(example, system.ranker.predict(example)),
            registered_model_name=RANKER_MODEL,
        )
    versions = {
        CANDIDATES_MODEL: str(candidates_info.registered_model_version),
        RANKER_MODEL: str(ranker_info.registered_model_version),
    }
    for model, version in versions.items():
        for key, value in tags.items():
            client.set_model_version_tag(model, version, key, value)
    client.set_model_version_tag(
        RANKER_MODEL, versions[RANKER_MODEL], TAG_CANDIDATES_VERSION, versions[CANDIDATES_MODEL]
    )
    if feature_service:
        client.set_model_version_tag(RANKER_MODEL, versions[RANKER_MODEL], TAG_FEATURE_SERVICE, feature_service)
    return versions


def load_system(versions: dict[str, str]):
    """The TwoStage system of given registered versions (artifacts downloaded from the registry)."""
    from models.two_stage import TwoStage

    with tempfile.TemporaryDirectory() as tmp:
        union_dir = mlflow.artifacts.download_artifacts(
            f"models:/{CANDIDATES_MODEL}/{versions[CANDIDATES_MODEL]}", dst_path=os.path.join(tmp, "c")
        )
        ranker_dir = mlflow.artifacts.download_artifacts(
            f"models:/{RANKER_MODEL}/{versions[RANKER_MODEL]}", dst_path=os.path.join(tmp, "r")
        )
        objects = {}
        for name, folder in (("union", union_dir), ("ranker", ranker_dir), ("catalog", ranker_dir)):
            with open(os.path.join(folder, "artifacts", f"{name}.pkl"), "rb") as fh:
                objects[name] = pickle.load(fh)
    return TwoStage(objects["union"], objects["catalog"], objects["ranker"])


def load_champion(alias: str = CHAMPION) -> Champion:
    """Load the models holding `alias` (both must agree: the ranker names its candidates version)."""
    client = MlflowClient()
    ranker = client.get_model_version_by_alias(RANKER_MODEL, alias)
    candidates = client.get_model_version_by_alias(CANDIDATES_MODEL, alias)
    expected = ranker.tags.get(TAG_CANDIDATES_VERSION)
    if expected is not None and expected != str(candidates.version):
        raise RegistryError(
            f"{alias}: ranker v{ranker.version} was trained with candidates v{expected}, "
            f"but {CANDIDATES_MODEL}@{alias} is v{candidates.version}"
        )
    versions = {CANDIDATES_MODEL: str(candidates.version), RANKER_MODEL: str(ranker.version)}
    return Champion(load_system(versions), versions, ranker.tags.get(TAG_FEATURE_SERVICE), alias)


def finished_run(client: MlflowClient, key_tag: str, key: str) -> dict | None:
    """The newest run tagged `key_tag = key` that reached its gate decision and registered both
    models: its id, versions, decision and two-stage nDCG@10 (what a reused training returns)."""
    from models.lifecycle.tracking import metric_name

    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{key_tag}` = '{key}'", order_by=["attributes.start_time DESC"]
    )
    for run in runs:
        decision = run.data.tags.get("gate.decision")
        if run.info.status != "FINISHED" or decision is None:
            continue
        versions = {
            model: str(v.version)
            for model in MODELS
            for v in client.search_model_versions(f"name = '{model}' and run_id = '{run.info.run_id}'")
        }
        if set(versions) != set(MODELS):
            continue
        verdict = "PROMOTED" if decision == "promoted" else "BLOCKED"
        summary = run.data.tags.get("gate.summary") or (
            f"{verdict} against {run.data.tags.get('gate.against')}: {run.data.tags.get('gate.reasons', '')}"
        )
        return {
            "run_id": run.info.run_id,
            "versions": versions,
            "promoted": decision == "promoted",
            "summary": summary,
            "ndcg_at_10": run.data.metrics.get(metric_name("two-stage", "ndcg_at_10")),
            "champion": champion_versions(client),
        }
    return None
