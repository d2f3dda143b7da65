"""Feast for vidrec: the store of a profile, apply, materialize, training frames, online reads.

    feature_store(settings)          the FeatureStore of the profile (cached per location)
    apply_repo(settings)             register feature_repo/feast_repo's definitions
    materialize(settings, end)       offline -> online up to `end`, incrementally
    training_frame(entity_df)        point-in-time features for labelled rows
    online_user_features(user_ids)   one row per user from the online store

Configuration: `feast_repo/feature_store.yaml` (local profile), `feature_store.prod.yaml` (prod)
or `feature_store.spark.yaml` (spark) with `${VAR}` references, filled here from an environment
variable of that name or else from vidrec's settings (see `locations`). File source paths are
relative and resolve against the features folder (the config's `repo_path`), so one registry
serves any checkout.

The spark profile: Feast's Spark offline store reads the tables the Spark SQL runner writes
(`transforms/spark.write_features`), through the SparkSources `data_sources.for_spark` derives from
the declared FileSources at apply time (absolute paths under the features folder); Redis and the
SQL registry as in prod. Materialization into Redis goes through prod's bulk writer (`online_bulk`),
fed by the Spark store's `pull_latest_from_table_or_query`. Measured on ml-latest-small (3 views,
~10k rows, local[2], a loaded 2-core machine, each run into an empty Redis db): bulk 3.5-4.4 s warm,
Feast's Spark engine (`batch_engine: spark.engine`, used with VIDREC_MATERIALIZE=feast) 6.8-9.3 s;
both ~24 s on a cold session. Same online values. Bulk wins here and is the byte-checked path prod
uses; its limit is that each view's latest rows are collected on the driver, where the Spark engine
writes from the executors: for tables whose latest rows outgrow the driver, use that engine.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from feature_repo.schema import utc_series, utc_time
from vidrec.settings import Settings

REPO_DIR = Path(__file__).resolve().parent / "feast_repo"
PROFILE_YAML = {
    "local": "feature_store.yaml",
    "prod": "feature_store.prod.yaml",
    "spark": "feature_store.spark.yaml",
}
PROD_REGISTRY_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/feast"
PROD_REDIS = "localhost:6379,db=0"
# view -> the push source that feeds it online (feast_repo/data_sources.py)
PUSH_SOURCES = {"user_recent": "user_recent_push", "user_session": "user_session_push"}
USER_VIEWS = ("user_profile", "user_recent", "user_session")
VIDEO_VIEWS = ("video_stats",)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


@dataclass(frozen=True)
class FeastLocations:
    """Where a profile's Feast state lives, after settings and environment overrides."""

    profile: str
    yaml_file: Path
    features_dir: Path
    variables: tuple[tuple[str, str], ...]

    @property
    def values(self) -> dict[str, str]:
        return dict(self.variables)


def locations(settings: Settings | None = None) -> FeastLocations:
    """Resolve the profile's yaml and the values of its ${VARS}.

    Defaults: features in `$VIDREC_HOME/features`; local registry and SQLite online store in
    `$VIDREC_HOME/feast/`; prod registry `PROD_REGISTRY_URL`, Redis `PROD_REDIS`. Every one is
    overridden by the environment variable of the same name.
    """
    settings = settings or Settings.from_env()
    features_dir = settings.features_dir
    defaults = {
        "VIDREC_FEATURES_DIR": str(features_dir),
        "VIDREC_FEAST_REGISTRY": str(settings.home / "feast" / "registry.db"),
        "VIDREC_FEAST_ONLINE_PATH": str(settings.home / "feast" / "online.db"),
        "VIDREC_FEAST_REGISTRY_URL": PROD_REGISTRY_URL,
        "VIDREC_FEAST_REDIS": PROD_REDIS,
        "VIDREC_SPARK_MASTER": settings.spark_master,
    }
    values = {name: os.environ.get(name, default) for name, default in defaults.items()}
    return FeastLocations(
        profile=settings.profile,
        yaml_file=REPO_DIR / PROFILE_YAML[settings.profile],
        features_dir=features_dir,
        variables=tuple(sorted(values.items())),
    )


def load_config(settings: Settings | None = None, where: FeastLocations | None = None):
    """The RepoConfig of the profile, `${VAR}` references filled, `repo_path` = the features folder."""
    from feast.repo_config import RepoConfig

    where = where or locations(settings)
    values = where.values

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        if name in os.environ:
            return os.environ[name]
        raise KeyError(f"{where.yaml_file.name}: no value for ${{{name}}}")

    raw = yaml.safe_load(_PLACEHOLDER.sub(fill, where.yaml_file.read_text()))
    if (raw.get("offline_store") or {}).get("type") == "spark":
        require_spark(where.profile)
    config = RepoConfig(**raw)
    config.repo_path = where.features_dir
    return config


def require_spark(profile: str = "spark") -> None:
    """Fail with what to install when the Spark offline store cannot start (pyspark and a JVM)."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        raise RuntimeError(
            f"the {profile} profile's Feast offline store runs on Spark, but pyspark is not installed: "
            "pip install 'pyspark>=4' (it also needs Java 17+), or use the local or prod profile"
        )
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and shutil.which("java") is None:
        raise RuntimeError(
            f"the {profile} profile's Feast offline store runs on Spark, which needs Java 17+: none found "
            "on PATH or in JAVA_HOME (install e.g. openjdk-17-jre-headless and/or set JAVA_HOME)"
        )


def uses_spark(where: FeastLocations) -> bool:
    """Whether the profile's offline store is Feast's Spark store (its sources are SparkSources)."""
    raw = yaml.safe_load(where.yaml_file.read_text()) or {}
    return (raw.get("offline_store") or {}).get("type") == "spark"


_STORES: dict[FeastLocations, object] = {}
_STORES_LOCK = threading.Lock()


def feature_store(settings: Settings | None = None):
    """The FeatureStore of the profile; one per location per process (it caches the registry)."""
    from feast import FeatureStore

    where = locations(settings)
    with _STORES_LOCK:
        store = _STORES.get(where)
        if store is None:
            config = load_config(where=where)
            where.features_dir.mkdir(parents=True, exist_ok=True)
            if config.registry.registry_type == "file":
                Path(config.registry.path).parent.mkdir(parents=True, exist_ok=True)
            if getattr(config.online_store, "type", None) == "sqlite":
                Path(config.online_store.path).parent.mkdir(parents=True, exist_ok=True)
            store = FeatureStore(repo_path=str(where.features_dir), config=config)
            _STORES[where] = store
    return store


@contextlib.contextmanager
def _quiet(enabled: bool = True) -> Iterator[None]:
    """Feast prints banners and tqdm bars; the vidrec CLI shows its own progress."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
        warnings.filterwarnings("ignore", message="The spark (data source API|offline store) is an experimental")
        yield


# ---- apply ---------------------------------------------------------------------------------------


def repo_objects(settings: Settings | None = None) -> list:
    """Every Feast object the repo declares (feature_repo/feast_repo/repo.py), each once.

    Under a Spark offline store the file sources become SparkSources over the profile's features
    folder (`data_sources.for_spark`). Feature views are fresh copies: Feast's SQL registry writes a
    registered view's materialization intervals into the object it applies, and the module's own
    objects would carry them into the next registry this process applies to (another profile or
    database), whose first materialization would then wrongly continue from them.
    """
    import copy

    from feast import Entity, FeatureService, FeatureView
    from feast.base_feature_view import BaseFeatureView
    from feast.data_source import DataSource

    from feature_repo.feast_repo import data_sources, repo

    kinds = (Entity, DataSource, BaseFeatureView, FeatureService)
    objects, seen = [], set()
    for name in sorted(vars(repo)):
        obj = getattr(repo, name)
        if isinstance(obj, kinds) and id(obj) not in seen:
            seen.add(id(obj))
            objects.append(copy.copy(obj) if isinstance(obj, FeatureView) else obj)
    if settings is not None:
        where = locations(settings)
        if uses_spark(where):
            return data_sources.for_spark(objects, str(where.features_dir))
    return objects


@dataclass
class ApplyReport:
    applied: list[str]
    deleted: list[str]


def apply_repo(settings: Settings | None = None, quiet: bool = True) -> ApplyReport:
    """Register the repo's definitions; remove registered objects the repo no longer declares.

    Ranker feature services registered at runtime (`ranker_v{n}`) are kept: a registered ranker
    version must stay servable. Idempotent.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    from feature_repo.feast_repo.feature_services import service_version

    settings = settings or Settings.from_env()
    store = feature_store(settings)
    objects = repo_objects(settings)
    declared = {(type(o).__name__, o.name) for o in objects}
    declared_names = {o.name for o in objects}
    registered = [
        *store.list_entities(),
        *store.list_feature_views(),
        *store.list_on_demand_feature_views(),
        *store.list_feature_services(),
    ]
    stale = [
        o
        for o in registered
        if o.name not in declared_names
        and not (isinstance(o, FeatureService) and service_version(o.name) is not None)
        and isinstance(o, (Entity, FeatureView, OnDemandFeatureView, FeatureService))
    ]
    with _quiet(quiet):
        store.apply(objects, objects_to_delete=stale, partial=False)
    return ApplyReport(
        applied=sorted(f"{kind}:{name}" for kind, name in declared), deleted=sorted(o.name for o in stale)
    )


def register_ranker_service(version: int, features: list | None = None, settings: Settings | None = None):
    """Apply the feature service of ranker version `version` (see feature_services.py); returns it."""
    from feature_repo.feast_repo.feature_services import ranker_feature_service

    service = ranker_feature_service(version, features)
    store = feature_store(settings)
    with _quiet():
        store.apply([service])
    return service


def newest_ranker_service(settings: Settings | None = None) -> str:
    """The name of the registered ranker feature service with the highest version."""
    from feature_repo.feast_repo.feature_services import service_version

    store = feature_store(settings)
    versions = [v for v in (service_version(s.name) for s in store.list_feature_services()) if v is not None]
    if not versions:
        raise LookupError("no ranker feature service is registered: run `vidrec features` first")
    from feature_repo.feast_repo.feature_services import service_name

    return service_name(max(versions))


# ---- materialize ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Materialized:
    view: str
    start: datetime | None
    end: datetime
    mode: str  # initial, incremental, refreshed, full, up to date, or "skipped: <why>"


def latest_feature_time(settings: Settings | None = None) -> datetime | None:
    """The newest `event_timestamp` in the user and video feature tables (None if none)."""
    from feature_repo.feast_repo import data_sources as ds

    where = locations(settings)
    spark = uses_spark(where)
    latest = None
    for table in (ds.USER_FEATURES_TABLE, ds.VIDEO_FEATURES_TABLE):
        path = Path(ds.spark_path(table, str(where.features_dir))) if spark else where.features_dir / f"{table}.parquet"
        if not path.exists():
            continue
        column = pq.read_table(path, columns=[ds.TIMESTAMP_FIELD]).column(0)
        if len(column):
            value = pd.Timestamp(column.to_pandas().max())
            latest = value if latest is None else max(latest, value)
    return None if latest is None else latest.to_pydatetime()


def materialize(
    settings: Settings | None = None,
    end: datetime | None = None,
    *,
    full: bool = False,
    quiet: bool = True,
    progress: Callable[[Materialized], None] | None = None,
    bulk: bool | None = None,
) -> list[Materialized]:
    """Load feature values up to `end` (default: the newest feature time) into the online store.

    Each view goes through `FeatureStore.materialize_incremental`, which continues from the end of
    the view's previous materialization. A view never materialized starts at `end - ttl` (the
    beginning of time for views without TTL) with one `materialize` call: Feast would otherwise
    start at *now* - ttl, which misses every row of a lake whose data lies in the past (MovieLens).
    A view already materialized up to exactly `end` is loaded again over that window (its newest
    snapshot may have been recomputed with late events); one materialized past `end` is left as
    it is. `full` re-materializes the whole window. Views whose table is missing are skipped.

    The rows are written by `feature_repo.online_bulk` (the bytes Feast writes, encoded in bulk)
    when it supports the online store, unless `bulk=False` or VIDREC_MATERIALIZE=feast; otherwise
    by Feast's own `materialize` / `materialize_incremental`.
    """
    from feature_repo import online_bulk

    store = feature_store(settings)
    if bulk is None:
        bulk = os.environ.get("VIDREC_MATERIALIZE", "bulk") != "feast" and online_bulk.supports(store)
    where = locations(settings)
    end = end or latest_feature_time(settings)
    if end is None:
        raise LookupError(f"no feature tables under {where.features_dir}: compute features first")
    end = utc_time(end)
    done: list[Materialized] = []
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        if not view.online:
            continue
        path = view.batch_source.path if view.batch_source is not None else None
        previous = pd.Timestamp(utc_time(view.most_recent_end_time)) if view.most_recent_end_time else None
        ttl = view.ttl if view.ttl and view.ttl.total_seconds() > 0 else None
        window_start = end - ttl if ttl else EPOCH
        if path is None or not (where.features_dir / path).exists():
            result = Materialized(view.name, None, end, f"skipped: no table {path}")
        elif previous is not None and previous > pd.Timestamp(end):
            result = Materialized(view.name, previous.to_pydatetime(), end, "up to date")
        elif full or previous is None or previous == pd.Timestamp(end):
            # First time, on request, or the snapshot at `end` was recomputed: load the window.
            if bulk:
                with _quiet(quiet):  # the Spark store prints as it pulls
                    online_bulk.materialize_view(store, view, window_start, end)
            else:
                with _quiet(quiet):
                    store.materialize(start_date=window_start, end_date=end, feature_views=[view.name])
            mode = "initial" if previous is None else "full" if full else "refreshed"
            result = Materialized(view.name, window_start, end, mode)
        else:
            if bulk:  # what materialize_incremental does: from the end of the last interval
                with _quiet(quiet):
                    online_bulk.materialize_view(store, view, previous.to_pydatetime(), end)
            else:
                with _quiet(quiet):
                    store.materialize_incremental(end_date=end, feature_views=[view.name])
            result = Materialized(view.name, previous.to_pydatetime(), end, "incremental")
        done.append(result)
        if progress:
            progress(result)
    return done


# ---- retrieval -----------------------------------------------------------------------------------


def _feature_refs(store, features) -> list[str] | object:
    """A FeatureService stays as it is; a service name becomes the service; views expand to refs."""
    from feast import FeatureService

    if isinstance(features, FeatureService):
        return features
    if isinstance(features, str):
        return store.get_feature_service(features) if ":" not in features else [features]
    refs: list[str] = []
    for item in features:
        if ":" in item:
            refs.append(item)
            continue
        view = _any_view(store, item)
        refs.extend(f"{view.name}:{f.name}" for f in view.features)
    return refs


def _any_view(store, name: str):
    try:
        return store.get_feature_view(name)
    except Exception:
        return store.get_on_demand_feature_view(name)


def _retrieval_groups(store, features) -> list[tuple[list[str], list[str], list[str]]]:
    """Split feature refs by the join keys they need: [(join keys, request columns, refs)].

    Each group is retrieved with its own de-duplicated entity rows (see `training_frame`).
    On-demand views go with the join keys of their source views and add their request columns.
    """
    from feast import FeatureService

    if isinstance(features, FeatureService):
        refs = [f"{p.name}:{f.name}" for p in features.feature_view_projections for f in p.features]
    else:
        refs = list(features)
    groups: dict[tuple[str, ...], tuple[set[str], list[str]]] = {}
    for ref in refs:
        view = _any_view(store, ref.split(":", 1)[0])
        request: set[str] = set()
        if hasattr(view, "source_request_sources"):
            keys: set[str] = set()
            for source in view.source_feature_view_projections.values():
                keys |= {c.name for c in store.get_feature_view(source.name).entity_columns}
            for source in view.source_request_sources.values():
                request |= {f.name for f in source.schema}
        else:
            keys = {c.name for c in view.entity_columns}
        group = groups.setdefault(tuple(sorted(keys)), (set(), []))
        group[0].update(request)
        group[1].append(ref)
    return [(list(keys), sorted(request), group_refs) for keys, (request, group_refs) in groups.items()]


def training_frame(
    entity_df: pd.DataFrame,
    features=None,
    *,
    settings: Settings | None = None,
    timestamp_column: str = "event_timestamp",
    cache: dict | None = None,
) -> pd.DataFrame:
    """Point-in-time correct features for labelled rows.

    `entity_df` holds the join keys the features need (user_id, video_id), the label time in
    `timestamp_column`, and anything else (labels), which is passed through. Each row gets, per
    feature view, the newest feature row stamped at or before its label time and within the
    view's TTL — built only from events strictly before that stamp, so nothing from the label
    time or later reaches it. `features`: a FeatureService, a service name, feature refs
    ("view:feature") or view names; default: the newest ranker service. Request-context features
    get `request_ts` = the label time and `device` = "unknown" unless the frame has them.
    Columns are full feature names (`<view>__<feature>`); rows keep the input's order.
    `cache`: a dict kept by the caller across calls (chunks of one job): distinct entity rows
    (join keys, request columns, time) already retrieved are not asked of Feast again.
    """
    store = feature_store(settings)
    features = _feature_refs(store, features if features is not None else newest_ranker_service(settings))
    df = entity_df.reset_index(drop=True).copy()
    if timestamp_column != "event_timestamp":
        df = df.rename(columns={timestamp_column: "event_timestamp"})
    df["event_timestamp"] = utc_series(df["event_timestamp"]).astype("datetime64[ns, UTC]")
    for key in ("user_id", "video_id"):
        if key in df:
            df[key] = df[key].astype(str)
    groups = _retrieval_groups(store, features)
    if any(request for _, request, _ in groups):
        if "request_ts" not in df:
            df["request_ts"] = df["event_timestamp"]
        if "device" not in df:
            df["device"] = "unknown"
    # Each group of views is retrieved for its distinct entity rows (`_retrieve_distinct`) and
    # spread back onto every row.
    if df.empty:
        raise ValueError("entity_df has no rows")
    out = df
    for keys, request, refs in groups:
        missing = [k for k in [*keys, *request] if k not in df]
        if missing:
            raise KeyError(f"entity_df lacks {missing}, needed by {refs[0].split(':')[0]}")
        on = [*keys, *request, "event_timestamp"]
        distinct = df[on].drop_duplicates().reset_index(drop=True)
        known = cache.get(tuple(refs)) if cache is not None else None
        if known is not None:
            seen = distinct.merge(known[on], on=on, how="left", indicator=True)["_merge"] == "both"
            distinct = distinct[~seen.to_numpy()].reset_index(drop=True)
        fetched = _retrieve_distinct(store, distinct, keys, on, refs) if len(distinct) else None
        table = pd.concat([t for t in (known, fetched) if t is not None], ignore_index=True)
        if cache is not None:
            cache[tuple(refs)] = table
        added = [c for c in table.columns if c not in on]
        values = df[on].merge(table, on=on, how="left")
        out = pd.concat([out, values[added]], axis=1)
    if timestamp_column != "event_timestamp":
        out = out.rename(columns={"event_timestamp": timestamp_column})
    return out


def _retrieve_distinct(store, distinct: pd.DataFrame, keys: list[str], on: list[str], refs: list[str]) -> pd.DataFrame:
    """Features of distinct entity rows (columns `on`), as a frame of `on` + feature columns.

    Feast's file (Dask) offline store keeps one row per (join keys so far, timestamp) and drops
    the rest (feast-dev/feast#6787, #5590): a user with several candidate videos at one label
    time would lose rows. So the rows go in rounds within which (join keys, timestamp) is unique.
    """
    distinct = distinct.assign(_vidrec_key=range(len(distinct)))
    rounds = distinct.groupby([*keys, "event_timestamp"], sort=False).cumcount()
    parts = []
    for r in range(int(rounds.max()) + 1):
        part = distinct[rounds == r].reset_index(drop=True)
        with _quiet():
            got = store.get_historical_features(entity_df=part, features=refs, full_feature_names=True).to_df()
        # The Dask store also drops an entity row whose feature rows all lie outside the TTL
        # instead of returning NULLs: such rows come back here as missing values.
        if got["_vidrec_key"].duplicated().any() or not set(got["_vidrec_key"]) <= set(part["_vidrec_key"]):
            raise RuntimeError(f"Feast returned unexpected rows for {len(part)} distinct entity rows")
        parts.append(got)
    got = pd.concat(parts, ignore_index=True).set_index("_vidrec_key")
    added = [c for c in got.columns if c not in on]
    return pd.concat(
        [distinct[on], got[added].reindex(distinct["_vidrec_key"].to_numpy()).reset_index(drop=True)], axis=1
    )


def online_features(
    entity_rows: Sequence[dict],
    features,
    *,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Online values for `entity_rows` (join keys, plus request_ts/device for request features)."""
    store = feature_store(settings)
    refs = _feature_refs(store, features)
    rows = [{k: (str(v) if k in ("user_id", "video_id") else v) for k, v in row.items()} for row in entity_rows]
    return store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_df()


def online_user_features(
    user_ids: Iterable, features: Iterable[str] = USER_VIEWS, *, settings: Settings | None = None
) -> pd.DataFrame:
    """One row per user id (in order) with the user views' online values; NaN/None when unknown."""
    return online_features([{"user_id": u} for u in user_ids], list(features), settings=settings)


def online_video_features(
    video_ids: Iterable, features: Iterable[str] = VIDEO_VIEWS, *, settings: Settings | None = None
) -> pd.DataFrame:
    """One row per video id (in order) with the video views' online values."""
    return online_features([{"video_id": v} for v in video_ids], list(features), settings=settings)


def push_online(view: str, frame: pd.DataFrame, settings: Settings | None = None, store=None) -> None:
    """Write fresh values of a push-fed view (user_id, event_timestamp, its features) online, through
    the view's Feast push source. Callers stamp a row no older than the one it replaces: Feast's
    Redis store keeps the newer row, its SQLite store writes whatever comes (feature_repo.sessions)."""
    from feast.data_source import PushMode

    store = store or feature_store(settings)
    df = frame.copy()
    df["user_id"] = df["user_id"].astype(str)
    for column in ("event_timestamp", "created_ts"):
        if column in df:
            df[column] = utc_series(df[column])
    if "created_ts" not in df:
        df["created_ts"] = df["event_timestamp"]
    with _quiet():
        store.push(PUSH_SOURCES[view], df, to=PushMode.ONLINE)


__all__ = [
    "ApplyReport",
    "FeastLocations",
    "Materialized",
    "apply_repo",
    "feature_store",
    "latest_feature_time",
    "load_config",
    "locations",
    "materialize",
    "newest_ranker_service",
    "online_features",
    "online_user_features",
    "online_video_features",
    "push_online",
    "register_ranker_service",
    "repo_objects",
    "training_frame",
]
