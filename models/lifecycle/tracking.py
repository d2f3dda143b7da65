"""MLflow tracking for a training run: where it lives, what describes the data, the plots.

Metric names use `<model>.<metric>` (MLflow rejects '@'), so generators and the two-stage
system sit side by side in one run and compare in the MLflow UI's chart view.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from models.lifecycle import registry  # noqa: E402
from models.lifecycle.registry import EXPERIMENT  # noqa: E402
from vidrec.settings import Settings  # noqa: E402

log = logging.getLogger(__name__)


def configure(settings: Settings) -> str:
    """Point MLflow at the profile's tracking store and make experiment `vidrec` the active one.

    The experiment's artifact location is set explicitly: with a SQLite or PostgreSQL backend
    MLflow would otherwise write artifacts under the current directory.
    """
    # Artifact downloads print tqdm bars per file; the CLI has its own progress display.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if settings.mlflow_uri.startswith("sqlite:///"):
        Path(settings.mlflow_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = settings.mlflow_artifacts
        if "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    # Without this, runs land in MLflow's "Default" experiment (and its ./mlruns artifacts).
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


class TrackingFailed(RuntimeError):
    """The MLflow tracking server, or the store behind it, failed during a training run."""


def is_tracking_failure(error: BaseException) -> bool:
    """MLflow's store could not be reached or failed (an HTTP 5xx after the client's retries, a
    refused connection, a timeout, a database error), as opposed to a request it refused."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, ErrorCode

    if isinstance(error, requests.RequestException):
        return True
    failed = {ErrorCode.Name(INTERNAL_ERROR), ErrorCode.Name(TEMPORARILY_UNAVAILABLE)}
    return isinstance(error, MlflowException) and error.error_code in failed


@dataclass
class TrainingRun:
    """The MLflow run of a training; `aliases_touched` is set before its first registry alias moves."""

    run: mlflow.ActiveRun
    aliases_touched: bool = False


@contextmanager
def training_run(uri: str, **start_run) -> Iterator[TrainingRun]:
    """`mlflow.start_run(**start_run)`, ended FINISHED, or FAILED on an error, as its own `with` does.

    A tracking failure on the way (`is_tracking_failure`) is raised as TrackingFailed, saying which
    server failed, whether the registry's aliases may have moved and whether the run could be closed:
    MLflow's own error would be the one of closing the run, the last request that failed.
    """
    tracked = TrainingRun(mlflow.start_run(**start_run))
    run_id = tracked.run.info.run_id
    try:
        yield tracked
    except BaseException as error:
        closed = _end_run(run_id, "FAILED")
        if not is_tracking_failure(error):
            raise
        aliases = (
            "the registry's aliases may be partly moved: check champion, challenger and previous of "
            + " and ".join(registry.MODELS)
            if tracked.aliases_touched
            else "the registry's aliases were not changed"
        )
        state = "the run is marked FAILED" if closed else "the run could not be marked FAILED and shows RUNNING"
        raise TrackingFailed(
            f"{where(uri)} failed during training run {run_id} ({_first_line(error)}): {aliases}; {state}"
        ) from error
    try:
        mlflow.end_run()
    except Exception as error:
        if not is_tracking_failure(error):
            raise
        raise TrackingFailed(
            f"{where(uri)} failed closing training run {run_id} ({_first_line(error)}): its models are registered "
            "and aliased as the run decided, but the run shows RUNNING"
        ) from error


def where(uri: str) -> str:
    """The tracking server or store at `uri`, in words (a password in it masked)."""
    uri = re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", uri)
    if uri.startswith(("http://", "https://")):
        return f"the MLflow tracking server at {uri} (or the database behind it)"
    return f"the MLflow tracking store at {uri}"


def _end_run(run_id: str, status: str) -> bool:
    """End the active run `run_id` (if it is still active) with `status`; False when MLflow failed."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return True
    try:
        mlflow.end_run(status)  # off the active-run stack first, even when the server then fails
    except Exception as error:  # noqa: BLE001 - the error that ended the run is the one to report
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, _first_line(error))
        return False
    return True


def _first_line(error: BaseException, limit: int = 400) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lake_fingerprint(event_files: list[Path]) -> str:
    """SHA-256 over the lake's event partitions (names and bytes): same lake, same fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(event_files):
        digest.update(path.parent.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def metric_name(model: str, metric: str) -> str:
    return f"{model}.{metric}"


def log_model_runs(table: pd.DataFrame, params: dict[str, dict]) -> dict[str, str]:
    """One nested run per evaluated model (under the active run) with its held-out metrics under
    their plain names and its hyperparameters: MLflow's compare view then lines the models up.
    Returns model -> run id."""
    ids = {}
    for model, row in table.iterrows():
        with mlflow.start_run(
            run_name=str(model), nested=True, tags={"vidrec.kind": "model", "vidrec.model": str(model)}
        ) as child:
            mlflow.log_metrics({str(m): float(v) for m, v in row.items() if pd.notna(v)})
            if params.get(model):
                mlflow.log_params(params[model])
            ids[str(model)] = child.info.run_id
    return ids


def plot_metrics_by_model(table: pd.DataFrame, metrics: list[str], path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per model."""
    shown = [m for m in metrics if m in table.columns]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(shown)), 4.5))
    width = 0.8 / max(1, len(table))
    for i, (model, row) in enumerate(table.iterrows()):
        ax.bar(np.arange(len(shown)) + i * width, [row[m] for m in shown], width, label=model)
    ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, shown, rotation=20)
    ax.set_ylabel("value")
    ax.set_title("Offline metrics on the held-out window")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_ndcg_curve(curves: dict[str, dict[int, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, points in curves.items():
        ks = sorted(points)
        ax.plot(ks, [points[k] for k in ks], marker="o", markersize=3, label=model)
    ax.set_xlabel("k")
    ax.set_ylabel("nDCG@k")
    ax.set_title("nDCG@k on the held-out window")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_importance(importance: pd.Series, path: Path, top: int = 25) -> Path:
    shown = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(shown))))
    ax.barh(shown.index, shown.values)
    ax.set_xlabel("total gain")
    ax.set_title("Ranker feature importance")
    return _save(fig, path)


def plot_score_distributions(scores: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Ranker scores per label grade: a good ranker separates the grades."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for grade in np.unique(labels):
        ax.hist(scores[labels == grade], bins=50, alpha=0.5, density=True, label=f"label {grade:g}")
    ax.set_xlabel("ranker score")
    ax.set_ylabel("density")
    ax.set_title("Ranker scores by label (label window)")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
