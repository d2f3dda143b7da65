"""Bulk materialization writes exactly what Feast writes: the same bytes, the same registry state.

Each check materializes the same feature tables twice, once through Feast's own
`materialize`/`materialize_incremental` (`bulk=False`) and once through `feature_repo.online_bulk`,
into two separate online stores, and compares what landed: every SQLite row (entity key, feature,
Value bytes, value_text, timestamps) or every Redis hash field, byte for byte; then reads back
through `get_online_features`. Data: the hand-made lake of test_features (nulls, an initial and an
incremental snapshot) and the real ml-latest-small with TF-IDF embeddings (a float-list view).
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tiny_platform import T2, T, settings_for, tiny_lake

from feature_repo import online_bulk, store
from feature_repo.lake import Lake
from feature_repo.sessions import write_session_table
from feature_repo.transforms import compute_features
from feature_repo.transforms.embeddings import compute_embeddings

# ---- the encoders against Feast's converters ------------------------------------------------------


def feast_bytes(column: pa.Array, type_name: str) -> list[bytes]:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    values = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), ValueType[type_name])
    return [v.SerializeToString() for v in values]


COLUMNS = {
    "DOUBLE": pa.array([1.5, None, math.nan, 0.0, -0.0, -2.25, math.inf, 1e-300, 123456789.123]),
    # With a null Feast sees floats, so these stay within 2**53; the extremes are tested null-free below.
    "INT64": pa.array([1, None, 0, -5, 2**40, 2**53, -(2**53), 127, 128, 16383, 16384]),
    "INT32": pa.array([1, None, 0, -5, 2**31 - 1, -(2**31)], pa.int32()),
    "STRING": pa.array(["a", None, "", "é", "x" * 300, "Action|Sci-Fi:0.5"]),
    "BOOL": pa.array([True, None, False]),
    "FLOAT": pa.array([1.5, None, math.nan, 0.1], pa.float32()),  # Feast's converter: the fallback
}


@pytest.mark.parametrize("type_name", sorted(COLUMNS))
def test_values_encode_to_feasts_bytes(type_name):
    from feast.value_type import ValueType

    column = COLUMNS[type_name]
    assert online_bulk.encode_values(column, ValueType[type_name]) == feast_bytes(column, type_name)


def test_random_numbers_encode_to_feasts_bytes():
    from feast.value_type import ValueType

    rng = np.random.default_rng(0)
    doubles = pa.array(rng.normal(0, 1e6, 5000))
    ints = pa.array(
        np.concatenate([rng.integers(-(2**62), 2**62, 5000) >> rng.integers(0, 62, 5000), [2**63 - 1, -(2**63)]])
    )
    assert online_bulk.encode_values(doubles, ValueType.DOUBLE) == feast_bytes(doubles, "DOUBLE")
    assert online_bulk.encode_values(ints, ValueType.INT64) == feast_bytes(ints, "INT64")
    # A Float64 feature stored as integers goes through Feast's converter (3 -> 3.0).
    assert online_bulk.encode_values(pa.array([3, None]), ValueType.DOUBLE) == feast_bytes(
        pa.array([3, None]), "DOUBLE"
    )


def test_sqlite_value_texts_are_feasts():
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    for type_name, column in COLUMNS.items():
        batch = pa.record_batch({"user_id": pa.array([str(i) for i in range(len(column))]), "x": column})
        encoded = online_bulk.encode_values(column, ValueType[type_name])
        bulk = online_bulk.EncodedBatch(batch, {"x": ValueType[type_name]}, [], [], [], {"x": encoded})
        want = []
        for raw in encoded:
            value = Value()
            value.ParseFromString(raw)
            want.append(extract_text_and_num(value, False)[0])
        assert bulk.texts("x") == want, type_name


def test_entity_keys_are_feasts_serialization():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    ids = ["u1", "", "é-42", "x" * 100]
    batch = pa.record_batch({"user_id": pa.array(ids)})
    want = [serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=i)]), 3) for i in ids]
    assert online_bulk.entity_keys(batch, {"user_id": ValueType.STRING}) == want
    ints = pa.record_batch({"n": pa.array([1, -7])})
    want = [serialize_entity_key(EntityKey(join_keys=["n"], entity_values=[Value(int64_val=i)]), 3) for i in (1, -7)]
    assert online_bulk.entity_keys(ints, {"n": ValueType.INT64}) == want


# ---- SQLite: whole stores compared ---------------------------------------------------------------


def sqlite_rows(settings) -> dict[str, list[tuple]]:
    path = store.locations(settings).values["VIDREC_FEAST_ONLINE_PATH"]
    con = sqlite3.connect(path)
    try:
        tables = [name for (name,) in con.execute("select name from sqlite_master where type = 'table'")]
        return {name: sorted(con.execute(f'select * from "{name}"').fetchall()) for name in tables}
    finally:
        con.close()


def intervals(settings) -> dict[str, list]:
    fs = store.feature_store(settings)
    fs.refresh_registry()
    return {v.name: [(i[0], i[1]) for i in v.materialization_intervals] for v in fs.list_feature_views()}


def twin_homes(tmp: Path, lake: Lake) -> tuple:
    """Two local homes over the same lake: `feast` for Feast's writer, `bulk` for ours."""
    return settings_for(tmp / "feast", lake.root), settings_for(tmp / "bulk", lake.root)


def copy_features(source, target) -> None:
    shutil.rmtree(target.features_dir, ignore_errors=True)
    shutil.copytree(source.features_dir, target.features_dir)


def test_sqlite_initial_and_incremental_writes_equal_feasts(tmp_path):
    lake = tiny_lake(tmp_path)
    feast, bulk = twin_homes(tmp_path, lake)
    compute_features(lake, [T], feast.features_dir)
    copy_features(feast, bulk)
    for settings in (feast, bulk):
        store.apply_repo(settings)
    first = (store.materialize(feast, bulk=False), store.materialize(bulk, bulk=True))
    assert [m.mode for m in first[0]] == [m.mode for m in first[1]]
    assert sqlite_rows(feast) == sqlite_rows(bulk)
    assert sum(len(rows) for rows in sqlite_rows(bulk).values()) > 0

    compute_features(lake, [T2], feast.features_dir)  # the next snapshot: incremental
    copy_features(feast, bulk)
    second = (store.materialize(feast, bulk=False), store.materialize(bulk, bulk=True))
    assert {m.mode for m in second[1] if not m.mode.startswith("skipped")} == {"incremental"}
    assert [m.mode for m in second[0]] == [m.mode for m in second[1]]
    assert sqlite_rows(feast) == sqlite_rows(bulk)
    assert intervals(feast) == intervals(bulk)

    users = ["u1", "u2", "u3", "nobody"]
    got = store.online_user_features(users, settings=bulk)
    want = store.online_user_features(users, settings=feast)
    assert got.equals(want), (got, want)
    assert got["user_profile__events_total"].tolist()[:3] == [7, 4, 0]


def test_sqlite_movielens_with_embeddings_equals_feast(movielens_lake, tmp_path):
    import pandas as pd

    feast, bulk = twin_homes(tmp_path, movielens_lake)
    times = [pd.Timestamp("2018-06-01", tz="UTC"), pd.Timestamp("2018-09-25", tz="UTC")]
    compute_features(movielens_lake, times, feast.features_dir)
    assert write_session_table(movielens_lake, times, feast.features_dir) > 0
    compute_embeddings(movielens_lake, feast.features_dir, method="tfidf", tfidf_dims=16)
    copy_features(feast, bulk)
    for settings in (feast, bulk):
        store.apply_repo(settings)
    store.materialize(feast, bulk=False)
    modes = {m.view: m.mode for m in store.materialize(bulk, bulk=True)}
    assert modes == {
        "user_profile": "initial",
        "user_recent": "initial",
        "user_session": "initial",
        "video_embedding": "initial",
        "video_stats": "initial",
    }
    rows = sqlite_rows(bulk)
    assert rows == sqlite_rows(feast)
    assert len(rows["vidrec_video_stats"]) == 9742 * 13 and len(rows["vidrec_user_profile"]) == 610 * 14
    videos = ["1", "356", "2571", "193609"]
    got = store.online_video_features(videos, settings=bulk)
    assert got.equals(store.online_video_features(videos, settings=feast))
    assert got["video_stats__views_total"].notna().all()


def test_the_env_switch_falls_back_to_feast(tmp_path, monkeypatch):
    lake = tiny_lake(tmp_path)
    settings = settings_for(tmp_path / "home", lake.root)
    compute_features(lake, [T], settings.features_dir)
    store.apply_repo(settings)
    assert online_bulk.supports(store.feature_store(settings))
    monkeypatch.setenv("VIDREC_MATERIALIZE", "feast")
    calls = []
    monkeypatch.setattr(online_bulk, "materialize_view", lambda *a, **k: calls.append(a))
    store.materialize(settings)
    assert calls == []
    assert store.online_user_features(["u1"], settings=settings)["user_profile__events_total"].tolist() == [5]


# ---- Redis (prod profile): whole databases compared -----------------------------------------------


@pytest.mark.integration
def test_redis_writes_equal_feasts(tmp_path, monkeypatch):
    from services import CLAIM_KEY, redis_client, redis_db, redis_host_port, temp_database
    from tiny_platform import forget_stores, prod_settings

    lake = tiny_lake(tmp_path)
    host, port = redis_host_port()
    dumps, online = {}, {}
    for name, use_bulk in (("feast", False), ("bulk", True)):
        settings = prod_settings(tmp_path / name)
        with temp_database(f"bulk_{name}") as registry_url, redis_db() as db:
            monkeypatch.setenv("VIDREC_FEAST_REGISTRY_URL", registry_url)
            monkeypatch.setenv("VIDREC_FEAST_REDIS", f"{host}:{port},db={db}")
            try:
                compute_features(lake, [T], settings.features_dir)
                store.apply_repo(settings)
                store.materialize(settings, bulk=use_bulk)
                compute_features(lake, [T2], settings.features_dir)
                modes = {m.view: m.mode for m in store.materialize(settings, bulk=use_bulk)}
                assert modes["user_profile"] == "incremental"
                client = redis_client(db)
                dumps[name] = {
                    key: client.hgetall(key) for key in client.scan_iter(count=1000) if key != CLAIM_KEY.encode()
                }
                online[name] = store.online_user_features(["u1", "u2", "u3"], settings=settings)
            finally:
                forget_stores(settings)
    assert dumps["bulk"] == dumps["feast"] and len(dumps["bulk"]) > 0
    assert online["bulk"].equals(online["feast"])
    assert online["bulk"]["user_recent__last_video_ids"].tolist() == ["v1|v2", "v2|v1", ""]
