"""A small real champion for the serving tests and the serving benchmark, made by the pipeline itself.

The same stage functions the DAGs and the `vidrec` command line call (`vidrec.pipeline`):

    lake        the first `max_users` users of ml-latest-small as canonical events, with devices and
                video durations added so the context rules have something to act on (MovieLens has
                neither), through `ingest_sources`
    features    a snapshot after the last event, feast apply, materialized online (`features_job`);
                training takes its own snapshots at its windows' starts
    models      `train_models` with the time protocol and a small configuration; a first model the
                gate blocks is promoted by hand (`registry.promote`, what `vidrec promote` does): these
                callers need a champion to serve, not a verdict

Everything lives under the settings' VIDREC_HOME.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from movielens import movielens_frames, write_canonical

from vidrec import pipeline
from vidrec.settings import Settings

GENERATORS = ("popularity", "trending", "ease", "content-tfidf")
RANKER = {"n_estimators": 60, "early_stopping_rounds": 20}


@dataclass
class Champion:
    settings: Settings
    versions: dict[str, str]
    system: object  # models.two_stage.TwoStage, as the registry serves it
    feature_service: str | None
    end: pd.Timestamp  # the midnight after the last event: training and materialization end here


def canonical_movielens(ml_dir: Path, out_dir: Path, max_users: int | None = None) -> Path:
    """ml-latest-small as canonical files, with devices and video durations (see the module doc)."""
    events, videos = movielens_frames(ml_dir, max_users, devices=True, durations=True)
    return write_canonical(events, videos.drop(columns="tags"), out_dir)


def local_settings(home: Path) -> Settings:
    """The local profile's settings with everything under `home`, whatever the caller's environment says."""
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(home))
    for name in ("VIDREC_PROFILE", "VIDREC_LAKE_DIR", "VIDREC_FEATURES_DIR", "VIDREC_MLFLOW_URI", "VIDREC_MLFLOW_ARTIFACTS",
                 "VIDREC_FEAST_REGISTRY", "VIDREC_FEAST_ONLINE_PATH"):  # fmt: skip
        mp.delenv(name, raising=False)
    try:
        return Settings.from_env()
    finally:
        mp.undo()


def build_champion(
    settings: Settings,
    ml_dir: Path,
    *,
    max_users: int | None = None,
    generators: tuple[str, ...] = GENERATORS,
    ranker: dict | None = None,
) -> Champion:
    """Lake, features, online store and a registered champion, through the pipeline's stages."""
    raw = canonical_movielens(ml_dir, settings.home / "sample-source", max_users)
    report = pipeline.ingest_sources("canonical", str(raw), str(settings.home / "ingest.json"), settings=settings)
    assert report["errors"] == 0, report
    features = pipeline.features_job(None, 1, "D", embeddings="none", settings=settings)
    end = pd.Timestamp(features["transform"]["as_of"][-1])
    return train_champion(settings, end, generators=generators, ranker=ranker or RANKER)


def train_champion(
    settings: Settings,
    end: pd.Timestamp,
    *,
    generators: tuple[str, ...] = GENERATORS,
    ranker: dict | None = None,
    use_feast: bool = True,
    promote: bool = True,
) -> Champion:
    """`train_models` on the lake there (a new version every call), then promoted (or a challenger)."""
    from mlflow import MlflowClient

    from models.lifecycle import registry, tracking

    params = {
        "generators": list(generators),
        "label_windows": 1,
        "use_feast": use_feast,
        "ranker": ranker or RANKER,
        "force_retrain": True,
        "dataset": "ml-latest-small (sample)",
    }
    result = pipeline.train_models(params, end.isoformat(), settings=settings)
    client = MlflowClient()
    if promote and not result["promoted"]:
        registry.promote(client, result["versions"])
    elif not promote:
        registry.mark_challenger(client, result["versions"])
    tracking.configure(settings)
    loaded = registry.load_system(result["versions"])
    ranker_version = client.get_model_version(registry.RANKER_MODEL, result["versions"][registry.RANKER_MODEL])
    service = ranker_version.tags.get(registry.TAG_FEATURE_SERVICE)
    return Champion(settings, result["versions"], loaded, service, end)
