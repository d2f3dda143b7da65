"""A small trained champion from real MovieLens data, for the service's tests, benchmark and demos.

Production champions come from the `vidrec_training` DAG (`models.train.train_and_gate`). This
builds the same kind of system in one call, without the gate, so the service can be started
against a real registry and a real online store on a fresh checkout:

    lake        ml-latest-small (optionally its first `max_users` users) as canonical files, ingested
    features    snapshots at the label-window start and after the last event; feast apply;
                materialized into the online store (SQLite in the local profile)
    models      generators fitted on the fit window, the XGBoost ranker on the label window with
                point-in-time Feast features (service `ranker_v1`), then the generators refitted on
                fit + label (as `train_and_gate` does)
    registry    both models logged and registered in experiment `vidrec`, alias `champion` set

Everything lives under the settings' VIDREC_HOME. `python -m serving.sample_champion` builds one
into `$VIDREC_HOME` (default `.vidrec`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from vidrec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GENERATORS = ("popularity", "trending", "ease", "content-tfidf")
FEATURE_SERVICE = "ranker_v1"
LEARNING_TYPES = ("rating", "watch", "like", "share", "comment", "play", "click")


@dataclass
class SampleChampion:
    settings: Settings
    versions: dict[str, str]
    system: object  # models.two_stage.TwoStage
    feature_service: str | None
    label_start: pd.Timestamp
    end: pd.Timestamp
    training_rows: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def write_canonical_movielens(ml_dir: Path, out_dir: Path, max_users: int | None = None) -> Path:
    """ml-latest-small as canonical `events.parquet` + `videos.parquet` (ratings become rating events)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_csv(Path(ml_dir) / "ratings.csv")
    if max_users:
        ratings = ratings[ratings.userId <= max_users]
    # Devices so that the context features and the feedback path see more than "unknown".
    devices = np.array(["mobile", "desktop", "tv", "tablet"])
    pd.DataFrame(
        {
            "event_id": "r" + ratings.index.astype(str),
            "user_id": ratings.userId.astype(str),
            "video_id": ratings.movieId.astype(str),
            "event_ts": pd.to_datetime(ratings.timestamp, unit="s", utc=True),
            "event_type": "rating",
            "rating": ratings.rating.astype(float),
            "device": devices[(ratings.userId.to_numpy() + ratings.movieId.to_numpy()) % 4],
        }
    ).to_parquet(out_dir / "events.parquet")
    movies = pd.read_csv(Path(ml_dir) / "movies.csv")
    pd.DataFrame(
        {
            "video_id": movies.movieId.astype(str),
            "title": movies.title,
            "genres": movies.genres.str.split("|"),
            # MovieLens has no durations: a deterministic spread so device rules have data to use.
            "duration_s": 600.0 + (movies.movieId.to_numpy() * 7919 % 9000).astype(float),
        }
    ).to_parquet(out_dir / "videos.parquet")
    return out_dir


def configure_mlflow(settings: Settings) -> None:
    from models import tracking

    tracking.configure(settings)


def build_sample_champion(
    settings: Settings,
    ml_dir: Path,
    *,
    max_users: int | None = None,
    generators: tuple[str, ...] = DEFAULT_GENERATORS,
    per_source_k: int = 100,
    n_estimators: int = 60,
    early_stopping_rounds: int | None = 20,
    label_quantile: float = 0.8,
    use_feast: bool = True,
    promote: bool = True,
    shuffle_labels: bool = False,
    ingest_data: bool = True,
) -> SampleChampion:
    """Lake, features, online store, a two-stage system, registered (and promoted) in MLflow."""
    import time

    from mlflow import MlflowClient

    from feature_repo import store
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import open_source
    from feature_repo.transforms import compute_features
    from models import registry
    from models.ranker import RankerConfig
    from models.two_stage import TwoStage

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    lake = Lake(settings.lake_dir)
    if ingest_data or not lake.event_files():
        raw = write_canonical_movielens(ml_dir, settings.home / "sample-source", max_users)
        ingest(open_source("canonical", raw, settings.cache_dir), lake)
    tick("ingest")
    events = lake.read_events(columns=["user_id", "video_id", "event_type", "rating", "event_ts", "device"])
    events = events[events["event_type"].isin(LEARNING_TYPES) & events["video_id"].notna()]
    videos = lake.read_table("videos")
    label_start = events["event_ts"].quantile(label_quantile).floor("D")
    end = events["event_ts"].max().floor("D") + pd.Timedelta(days=1)
    fit = events[events["event_ts"] < label_start]
    label = events[events["event_ts"] >= label_start]

    service = None
    lookup = None
    if use_feast:
        compute_features(lake, [label_start, end], settings.features_dir)
        store.apply_repo(settings)
        store.materialize(settings, end.to_pydatetime())
        service = FEATURE_SERVICE
        lookup = _offline_lookup(settings, service)
    tick("features")

    content = _content_vectors(videos)
    union, catalog = _fit_union(fit, videos, generators, per_source_k, content)
    if shuffle_labels:
        rng = np.random.default_rng(7)
        label = label.assign(video_id=rng.permutation(label["video_id"].to_numpy()))
    staged, rows = TwoStage.train(
        union,
        catalog,
        label,
        lookup,
        RankerConfig(n_estimators=n_estimators, early_stopping_rounds=early_stopping_rounds),
    )  # type: ignore[arg-type]  # None: all trees
    tick("train")
    final_union, final_catalog = _fit_union(events, videos, generators, per_source_k, content)
    system = TwoStage(final_union, final_catalog, staged.ranker)
    tick("refit")

    configure_mlflow(settings)
    with mlflow.start_run(run_name="sample-champion"):
        mlflow.log_params(
            {"generators": ",".join(generators), "per_source_k": per_source_k, "max_users": max_users or 0}
        )
        versions = registry.register_system(
            system, rows.sample, service, tags={"dataset": "ml-latest-small", "sample": "true"}
        )
    if promote:
        registry.promote(MlflowClient(), versions)
    else:
        registry.mark_challenger(MlflowClient(), versions)
    tick("register")
    return SampleChampion(settings, versions, system, service, label_start, end, rows.n_rows, timings)


def retrain_and_register(
    settings: Settings,
    *,
    generators: tuple[str, ...] = DEFAULT_GENERATORS,
    per_source_k: int = 100,
    n_estimators: int = 30,
    promote: bool = True,
) -> dict[str, str]:
    """Another version from the lake already there (no ingest, no feature rebuild): for reload tests."""
    champion = build_sample_champion(
        settings,
        Path("."),
        generators=generators,
        per_source_k=per_source_k,
        n_estimators=n_estimators,
        use_feast=False,
        promote=promote,
        ingest_data=False,
    )
    return champion.versions


def _offline_lookup(settings: Settings, service: str):
    """Point-in-time features from Feast's offline store for ranking-frame rows (as models.train does)."""
    from feature_repo.store import training_frame

    def lookup(entities: pd.DataFrame) -> pd.DataFrame:
        frame = training_frame(entities, features=service, settings=settings)
        return frame.drop(columns=[c for c in entities.columns if c in frame.columns])

    return lookup


def _content_vectors(videos: pd.DataFrame):
    from feature_repo.text import tfidf_vectors, video_text

    return tfidf_vectors(video_text(videos).tolist())


def _fit_union(events: pd.DataFrame, videos: pd.DataFrame, generators, per_source_k: int, content):
    from models.catalog import generator_factories
    from models.content import align_vectors
    from models.hybrid import HybridUnion
    from models.interactions import Interactions
    from models.ranker import CatalogSide

    data = Interactions.from_events(events, catalog=videos["video_id"], weighting="binary")
    factories = generator_factories(videos)
    union = HybridUnion({name: factories[name]() for name in generators}, per_source_k=per_source_k)
    union.fit(data)
    vectors = align_vectors(content, videos["video_id"].to_numpy(), data.video_ids)
    return union, CatalogSide.build(videos, data, vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets/ml-latest-small"))
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--generators", default=",".join(DEFAULT_GENERATORS))
    parser.add_argument("--trees", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    settings = Settings.from_env()
    champion = build_sample_champion(
        settings,
        args.data_dir,
        max_users=args.max_users,
        generators=tuple(args.generators.split(",")),
        n_estimators=args.trees,
    )
    print(
        f"champion {champion.versions} in {settings.home} (feature service {champion.feature_service}); {champion.timings}"
    )


if __name__ == "__main__":
    main()
