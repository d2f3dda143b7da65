"""What the service reads from Feast: one user row per request, the catalog's video rows once.

- `OnlineFeatures.user_row(user_id)`: the user views (`user_profile`, `user_recent`,
  `user_session`) read through Feast's provider (`online_read`, one call per view), behind a
  circuit breaker: when the online store fails the call raises `StoreUnavailable` at once for
  `retry_after` seconds and the service degrades.
- `VideoTable`: every catalog video's `video_stats` row, read in chunks at load time and kept in
  memory as a float matrix aligned with the model's video rows (refreshed when the champion
  changes or a newer materialization is seen), so a request never reads video rows online.
- `request_features`: the `request_features` on-demand view (feature_repo/feast_repo/on_demand.py)
  computed for one request in plain Python, the same values Feast computes (tested for parity),
  without a pandas round trip per request.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from feast.online_response import TIMESTAMP_POSTFIX
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.schema import KNOWN_DEVICES
from feature_repo.store import USER_VIEWS, VIDEO_VIEWS, push_online
from serving.breaker import CircuitBreaker, fast_retry
from vidrec.settings import Settings

log = logging.getLogger("vidrec.serving")

REQUEST_VIEW = "request_features"
DAYPARTS = ("night", "morning", "afternoon", "evening")


class StoreUnavailable(RuntimeError):
    """The online store cannot be read now (it failed, or failed recently: the breaker is open)."""


def view_of(feature: str) -> str | None:
    """'user_profile__avg_rating' -> 'user_profile'; names without '__' are not Feast features."""
    return feature.split("__", 1)[0] if "__" in feature else None


def to_float(value) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class OnlineFeatures:
    def __init__(self, settings: Settings, retry_after: float = 5.0):
        self.settings = settings
        self.breaker = CircuitBreaker("feast online store", retry_after)
        self._user_views: list[tuple[Any, list[tuple[str, Any]]]] | None = None
        self._reconnect = False
        self.store = self._connect()

    def _connect(self):
        """A FeatureStore of its own (not the process-wide cached one), so a reconnect is possible."""
        from feast import FeatureStore

        from feature_repo.store import load_config, locations

        where = locations(self.settings)
        store = FeatureStore(repo_path=str(where.features_dir), config=load_config(where=where))
        _fail_fast(store)
        return store

    def _store(self):
        # After a failure the next try starts from a new store object: a new connection to the
        # online store (Feast keeps one SQLite connection for ever, whose cached schema would
        # otherwise outlive the store's recovery).
        if self._reconnect:
            old, self.store = self.store, self._connect()
            self._reconnect = False
            self._user_views = None
            _release(old)
        return self.store

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        self.breaker.failure(exc)
        self._reconnect = True
        return StoreUnavailable(str(exc))

    def user_row(self, user_id: str) -> dict[str, object]:
        """{'user_profile__x': value, ...} for one user; values are None when the store has none."""
        return self.user_rows([user_id])[0]

    def user_rows(self, user_ids: list[str], with_times: bool = False) -> list[dict[str, object]]:
        """`user_row` of each user, in one read; `with_times` adds '<ref>__ts' (epoch seconds of the
        stored row, 0 when none) per feature.

        The same rows as `get_online_features(...).to_dict()` (tests/test_serving.py compares them),
        read one level down, with the provider's `online_read` of each view: on a request's path
        Feast's request planning and protobuf response building cost more than the read itself.
        """
        if not self.breaker.allow():
            raise StoreUnavailable(self.breaker.status())
        try:
            rows = self._read(user_ids, with_times)
        except Exception as exc:  # any failure of the store or its client means: degrade
            raise self._failed(exc) from exc
        self.breaker.success()
        return rows

    def _read(self, user_ids: list[str], with_times: bool) -> list[dict[str, object]]:
        store = self._store()
        provider = store._get_provider()
        rows: list[dict[str, object]] = [{"user_id": u} for u in user_ids]
        for view, fields in self._views_of_user(store):
            keys = [_entity_key(view, u) for u in user_ids]
            read = provider.online_read(store.config, view, keys, [name for name, _ in fields])
            for row, (ts, values) in zip(rows, read, strict=True):
                values = values or {}
                seconds = _seconds(ts) if with_times else 0
                for name, value_type in fields:
                    proto = values.get(name)
                    ref = f"{view.name}__{name}"
                    row[ref] = None if proto is None else feast_value_type_to_python_type(proto, value_type)
                    if with_times:
                        row[ref + TIMESTAMP_POSTFIX] = seconds
        return rows

    def _views_of_user(self, store) -> list[tuple[Any, list[tuple[str, Any]]]]:
        """The user views and their (feature, Feast value type), read from the registry once."""
        if self._user_views is None:
            views = [store.get_feature_view(name) for name in USER_VIEWS]
            self._user_views = [(v, [(f.name, f.dtype.to_value_type()) for f in v.features]) for v in views]
        return self._user_views

    def push(self, view: str, frame: pd.DataFrame) -> None:
        """Fresh rows of a push-fed user view into the online store (Feast's push source)."""
        if not self.breaker.allow():
            raise StoreUnavailable(self.breaker.status())
        try:
            push_online(view, frame, store=self._store())
        except Exception as exc:
            raise self._failed(exc) from exc
        self.breaker.success()

    def ping(self, user_id: str = "__vidrec_readiness__") -> None:
        """One real read, whatever the breaker says; raises StoreUnavailable when it fails."""
        try:
            self._read([user_id], with_times=False)
        except Exception as exc:
            raise self._failed(exc) from exc
        self.breaker.success()

    def video_features_as_of(self) -> datetime | None:
        """When `video_stats` was last materialized (from the Feast registry), None if never."""
        store = self._store()
        store.refresh_registry()
        ends = [store.get_feature_view(name).most_recent_end_time for name in VIDEO_VIEWS]
        ends = [e for e in ends if e is not None]
        return max(ends) if ends else None

    def video_table(self, video_ids: np.ndarray, chunk: int = 2000) -> VideoTable:
        """Every numeric column of the video views for `video_ids` (NaN where the store has none)."""
        store = self._store()
        refs: list[str] = []
        for name in VIDEO_VIEWS:
            view = store.get_feature_view(name)
            refs.extend(f"{view.name}:{f.name}" for f in view.features)
        parts = []
        started = time.perf_counter()
        for start in range(0, len(video_ids), chunk):
            rows = [{"video_id": str(v)} for v in video_ids[start : start + chunk]]
            parts.append(store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_df())
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        table = VideoTable.from_frame(frame, video_ids, self.video_features_as_of())
        log.info("video features of %d videos loaded in %.2fs", len(video_ids), time.perf_counter() - started)
        return table


def _entity_key(view, user_id: str) -> EntityKeyProto:
    """The online store's key of one user: the view's join key (`user_id`, a string)."""
    return EntityKeyProto(join_keys=[view.entity_columns[0].name], entity_values=[ValueProto(string_val=str(user_id))])


def _seconds(ts: datetime | None) -> int:
    """Epoch seconds of a stored row's time as Feast's response gives them (0 for no row)."""
    if ts is None:
        return 0
    stamp = Timestamp()
    stamp.FromDatetime(ts)
    return stamp.seconds


def _fail_fast(store) -> None:
    """Give the Redis client of a Feast Redis online store `fast_retry()` (Feast has no setting for it)."""
    config = store.config.online_store
    if getattr(config, "type", None) != "redis":
        return
    try:
        client = store._get_provider().online_store._get_client(config)  # created here; connects lazily
        client.set_retry(fast_retry())
    except Exception as exc:  # noqa: BLE001 - another Feast or redis-py: keep their retries, say so
        log.warning("cannot set the online store's Redis retry policy (%s): a Redis outage may stall requests", exc)


def _release(store) -> None:
    """Close the database connections of a replaced FeatureStore's SQL registry (prod profile).

    Without this each reconnect (one per failed read while the online store is down) left an
    engine with open PostgreSQL connections behind until garbage collection got to it.
    """
    registry = getattr(store, "_registry", None)  # not `store.registry`, which would create one
    engines = {
        id(e): e
        for e in (getattr(registry, "write_engine", None), getattr(registry, "read_engine", None))
        if e is not None
    }
    for engine in engines.values():
        try:
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - releasing is best effort
            log.warning("cannot close the replaced Feast registry's connections: %s", exc)


@dataclass(frozen=True)
class VideoTable:
    """Numeric video features aligned with a model's video rows: values[row, column]."""

    columns: list[str]
    values: np.ndarray  # float64, NaN where missing
    as_of: datetime | None
    genres: list[str] | None = None  # 'A|B' per row, from video_stats__genres

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, video_ids: np.ndarray, as_of: datetime | None) -> VideoTable:
        if frame.empty:
            return cls.empty(len(video_ids))
        frame = frame.set_index(frame["video_id"].astype(str))
        frame = frame[~frame.index.duplicated()].reindex(pd.Index(np.asarray(video_ids).astype(str)))
        numeric = [
            c
            for c in frame.columns
            if c != "video_id" and (pd.api.types.is_numeric_dtype(frame[c]) or _numeric_object(frame, c))
        ]
        values = (
            np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64) for c in numeric])
            if numeric
            else np.zeros((len(frame), 0))
        )
        genres = None
        if "video_stats__genres" in frame:
            genres = [g if isinstance(g, str) else "" for g in frame["video_stats__genres"].tolist()]
        return cls(numeric, values, as_of, genres)

    @classmethod
    def empty(cls, n: int) -> VideoTable:
        return cls([], np.zeros((n, 0)), None, None)

    def column(self, name: str) -> np.ndarray:
        if name in self.columns:
            return self.values[:, self.columns.index(name)]
        return np.full(self.values.shape[0], np.nan)


def _numeric_object(frame: pd.DataFrame, column: str) -> bool:
    """An object column of numbers and None (how Feast returns an int column with gaps)."""
    if column == "video_id" or frame[column].dtype != object:
        return False
    present = frame[column].dropna()
    if len(present) == 0:  # a feature nobody has a value for yet (e.g. completion on MovieLens)
        return True
    return all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in present.head(50)
    )


def daypart(hour: int) -> str:
    return "night" if hour < 6 else "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"


def request_features(user: dict[str, object] | None, ts: datetime, device: str) -> dict[str, float]:
    """`request_features__*` for one request: hour, weekday, weekend, daypart and device affinity.

    `ts` must be UTC. Affinities are NaN when the user has no profile (as Feast computes them).
    """
    user = user or {}
    hour, dow = ts.hour, ts.weekday()
    daypart_share = to_float(user.get(f"user_profile__share_{daypart(hour)}"))
    has_profile = not math.isnan(to_float(user.get("user_profile__share_mobile")))
    device_share = to_float(user.get(f"user_profile__share_{device}")) if device in KNOWN_DEVICES else 0.0
    return {
        "request_features__hour_of_day": float(hour),
        "request_features__day_of_week": float(dow),
        "request_features__is_weekend": float(dow >= 5),
        "request_features__daypart_affinity": daypart_share,
        "request_features__device_affinity": device_share if has_profile else math.nan,
    }


def parse_video_list(value) -> list[str]:
    """`user_recent__last_video_ids` ('v1|v2|...') -> ids, newest first."""
    if not value or not isinstance(value, str):
        return []
    return [v for v in value.split("|") if v]


def parse_genre_shares(value) -> dict[str, float]:
    """`user_profile__top_genres` ('Comedy:0.229|Drama:0.2') -> {'Comedy': 0.229, ...}."""
    out: dict[str, float] = {}
    if not value or not isinstance(value, str):
        return out
    for part in value.split("|"):
        name, _, share = part.rpartition(":")
        if name:
            out[name] = to_float(share) if share else 0.0
    return out
