"""MLflow tracking for a training run: where it lives, what describes the data, the plots.

Metric names use `<model>.<metric>` (MLflow rejects '@'), so generators and the two-stage
system sit side by side in one run and compare in the MLflow UI's chart view.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from models.lifecycle.registry import EXPERIMENT  # noqa: E402
from vidrec.settings import Settings  # noqa: E402


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
