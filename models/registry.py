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


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger may replace the champion.

    primary: the metric that must improve, by at least `min_gain` (absolute);
    guards: metric -> largest allowed absolute drop against the champion;
    baseline_gain: with no champion yet, how far the challenger must beat the popularity baseline.
    """

    primary: str = "ndcg_at_10"
    min_gain: float = 0.002
    baseline_gain: float = 0.01
    guards: dict[str, float] = field(
        default_factory=lambda: {"candidate_recall_at_200": 0.02, "coverage_at_10": 0.05, "diversity_at_10": 0.05}
    )


@dataclass
class GateDecision:
    promoted: bool
    reasons: list[str]
    challenger: dict[str, float]
    reference: dict[str, float]  # the champion's metrics, or the baseline's for a first model
    against: str  # "champion" or "baseline"
    policy: GatePolicy

    def as_dict(self) -> dict:
        return {**asdict(self), "policy": asdict(self.policy)}

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "BLOCKED"
        return f"{verdict} against {self.against}: " + "; ".join(self.reasons)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    baseline: dict[str, float],
    policy: GatePolicy = GatePolicy(),
) -> GateDecision:
    """Compare metrics measured on the same held-out window; return the decision and why."""
    reasons: list[str] = []
    ok = True
    primary = policy.primary
    if primary not in challenger or not math.isfinite(challenger[primary]):
        return GateDecision(False, [f"challenger has no {primary}"], challenger, champion or baseline,
                            "champion" if champion else "baseline", policy)  # fmt: skip
    if champion is None:
        need = baseline[primary] + policy.baseline_gain
        ok = bool(challenger[primary] >= need)
        reasons.append(
            f"{primary} {challenger[primary]:.4f} {'>=' if ok else '<'} popularity baseline "
            f"{baseline[primary]:.4f} + {policy.baseline_gain}"
        )
        return GateDecision(ok, reasons, challenger, baseline, "baseline", policy)

    need = champion[primary] + policy.min_gain
    gain_ok = bool(challenger[primary] >= need)
    ok &= gain_ok
    reasons.append(
        f"{primary} {challenger[primary]:.4f} {'>=' if gain_ok else '<'} champion {champion[primary]:.4f} + {policy.min_gain}"
    )
    for metric, tolerance in policy.guards.items():
        if metric not in challenger or metric not in champion:
            continue
        drop = champion[metric] - challenger[metric]
        guard_ok = bool(drop <= tolerance)
        ok &= guard_ok
        if not guard_ok:
            reasons.append(
                f"guard {metric} regressed by {drop:.4f} (> {tolerance}): {challenger[metric]:.4f} vs {champion[metric]:.4f}"
            )
    if ok:
        reasons.append("no guard metric regressed past its tolerance")
    return GateDecision(ok, reasons, challenger, champion, "champion", policy)


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


def record_decision(client: MlflowClient, run_id: str, decision: GateDecision, versions: dict[str, str]) -> None:
    """Write the decision where reviewers look: run tags, a gate report artifact, version tags, the log."""
    client.set_tag(run_id, "gate.decision", "promoted" if decision.promoted else "blocked")
    client.set_tag(run_id, "gate.against", decision.against)
    client.set_tag(run_id, "gate.reasons", " | ".join(decision.reasons)[:5000])
    client.log_text(run_id, json.dumps({**decision.as_dict(), "versions": versions}, indent=2, default=float), "gate_report.json")
    for model, version in versions.items():
        client.set_model_version_tag(model, version, "gate.decision", "promoted" if decision.promoted else "blocked")
    (log.info if decision.promoted else log.warning)("gate: %s", decision.summary())


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
    client.set_model_version_tag(RANKER_MODEL, versions[RANKER_MODEL], TAG_CANDIDATES_VERSION, versions[CANDIDATES_MODEL])
    if feature_service:
        client.set_model_version_tag(RANKER_MODEL, versions[RANKER_MODEL], TAG_FEATURE_SERVICE, feature_service)
    return versions


def load_system(versions: dict[str, str]):
    """The TwoStage system of given registered versions (artifacts downloaded from the registry)."""
    from models.two_stage import TwoStage

    with tempfile.TemporaryDirectory() as tmp:
        union_dir = mlflow.artifacts.download_artifacts(f"models:/{CANDIDATES_MODEL}/{versions[CANDIDATES_MODEL]}", dst_path=os.path.join(tmp, "c"))
        ranker_dir = mlflow.artifacts.download_artifacts(f"models:/{RANKER_MODEL}/{versions[RANKER_MODEL]}", dst_path=os.path.join(tmp, "r"))
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
