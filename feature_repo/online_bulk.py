"""Bulk materialization: what `FeatureStore.materialize` writes to the online store, written in bulk.

Feast 0.67 turns every feature value into a protobuf object in Python and writes row by row (SQLite:
one upsert per feature value; Redis: one HSET per entity after a timestamp read): about 3k rows/s into
SQLite and 6-7k rows/s into Redis for 16-feature rows, most of it spent building protobufs. Here the
same rows (Feast's own `pull_latest_from_table_or_query` on the view's source, in the window) are
encoded column by column with numpy into the exact bytes Feast would store:

    Value proto       double/int64/int32/string/bool encoded directly (tag + payload); null and NaN
                      become the empty Value, as Feast does; other types go through Feast's converter
    entity key        Feast's serialization v3 of one string join key, built directly (others: Feast's)
    SQLite            per batch, one wide row per entity into an unindexed temp table, then one
                      INSERT ... SELECT that unpivots it into Feast's row per feature (value_text
                      included) and upserts in key order, never over a newer stored row (Feast's
                      SQLite store overwrites; its Redis store does not); one transaction per batch
    Redis             pipelined HMGET of the `_ts:<view>` fields, then HSETs for rows newer than what
                      is stored (Feast's rule), 10,000 commands per round trip

The registry then records the materialized interval, as `materialize` does, so
`materialize_incremental` continues from it. tests/test_online_bulk.py checks the stored bytes equal
Feast's own writes, byte for byte, and reads them back through `get_online_features`. Stores or
options it does not know (other online stores, vector search, value_num columns) are left to Feast:
`supports()` says which.
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BATCH_ROWS = 50_000
REDIS_PIPELINE = 10_000
_STAGE = "temp.vidrec_bulk_stage"

# Value proto field tags (field number << 3 | wire type), from feast/protos/feast/types/Value.proto.
_TAG = {"STRING": b"\x12", "INT32": b"\x18", "INT64": b"\x20", "DOUBLE": b"\x29", "BOOL": b"\x38"}
_STRING_TYPE = 2  # feast ValueType.STRING, as the entity key serialization writes it


def supports(store) -> bool:
    """Whether the store's online store is one this writer produces Feast's exact layout for."""
    online = store.config.online_store
    kind = getattr(online, "type", None)
    if kind == "sqlite":
        return not getattr(online, "vector_enabled", False) and not getattr(
            online, "enable_openai_compatible_store", False
        )
    if kind == "redis":
        return not getattr(online, "key_ttl_seconds", None)
    return False


def materialize_view(
    store, view, start: datetime, end: datetime, *, progress: Callable[[int], None] | None = None
) -> int:
    """Write the view's latest row per entity in (start, end] to the online store; returns the rows."""
    if not supports(store):
        raise ValueError(f"bulk materialization does not support this online store: {store.config.online_store!r}")
    table = pull_latest(store, view, start, end).combine_chunks()
    join = {entity.name: entity.dtype.to_value_type() for entity in view.entity_columns}
    whole = table.to_batches()[0] if table.num_rows else None  # one batch: the chunks are combined
    keys = entity_keys(whole, join, store.config.entity_key_serialization_version) if whole is not None else []
    # In stored-key order: SQLite's primary-key indexes then grow at their end instead of taking
    # random inserts; Redis does not mind.
    order = sorted(range(len(keys)), key=keys.__getitem__)
    table, keys = table.take(pa.array(order, type=pa.int64())), [keys[i] for i in order]
    write = _write_sqlite if store.config.online_store.type == "sqlite" else _write_redis
    written = 0
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        write(store, view, EncodedBatch.of(batch, view, keys[written : written + batch.num_rows]))
        written += batch.num_rows
        if progress:
            progress(batch.num_rows)
    store.registry.apply_materialization(view, store.project, start, end)
    store._precompute_affected_services([view.name])  # as materialize does (services with precompute_online)
    return written


def pull_latest(store, view, start: datetime, end: datetime) -> pa.Table:
    """The rows Feast's materialization reads: the newest per entity in the window, from the offline store."""
    from feast.utils import _get_column_names

    entities = [store.get_entity(name) for name in view.entities]
    join_keys, features, timestamp_field, created_field = _get_column_names(view, entities)
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config, data_source=view.batch_source, join_key_columns=join_keys,
        feature_name_columns=features, timestamp_field=timestamp_field,
        created_timestamp_column=created_field, start_date=start, end_date=end,
    )  # fmt: skip
    table = job.to_arrow()
    mapping = view.batch_source.field_mapping or {}
    if mapping:
        table = table.rename_columns([mapping.get(c, c) for c in table.column_names])
    return table


# ---- encoding ------------------------------------------------------------------------------------


class EncodedBatch:
    """One batch in Feast's stored form: entity keys, timestamps, and per feature the Value bytes."""

    def __init__(self, batch: pa.RecordBatch, types: dict, keys: list[bytes], event_ts: list[datetime],
                 created_ts: list, values: dict[str, list[bytes]]):  # fmt: skip
        self.batch, self.types = batch, types
        self.keys, self.event_ts, self.created_ts, self.values = keys, event_ts, created_ts, values

    @classmethod
    def of(cls, batch: pa.RecordBatch, view, keys: list[bytes]) -> EncodedBatch:
        """Encode a batch whose rows have these serialized entity keys (see `entity_keys`)."""
        source = view.batch_source
        event_ts = _datetimes(batch.column(source.timestamp_field))
        created = (
            _datetimes(batch.column(source.created_timestamp_column))
            if source.created_timestamp_column
            else [None] * batch.num_rows
        )
        types = {f.name: f.dtype.to_value_type() for f in view.features}
        values = {name: encode_values(batch.column(name), t) for name, t in types.items()}
        return cls(batch, types, keys, event_ts, created, values)

    def texts(self, feature: str) -> list[str | None]:
        """SQLite's value_text column: Feast's `extract_text_and_num` of each value (str() of numbers)."""
        encoded = self.values[feature]
        column = self.batch.column(feature)
        if _direct(column.type, self.types[feature]):
            if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
                if pa.types.is_integer(column.type):
                    column = column.fill_null(0)  # else numpy makes them floats ('5.0'); nulls are cut below
                numbers = column.to_numpy(zero_copy_only=False)
                out = list(map(str, numbers.tolist()))  # str() of Python floats/ints, as Feast does
            else:
                out = [None if v is None else str(v) for v in column.to_pylist()]
            for i, raw in enumerate(encoded):
                if not raw:  # null or NaN: the empty Value, no text
                    out[i] = None
            return out

        from feast.infra.online_stores.helpers import extract_text_and_num
        from feast.protos.feast.types.Value_pb2 import Value

        out = []
        for raw in encoded:
            value = Value()
            value.ParseFromString(raw)
            out.append(extract_text_and_num(value, False)[0])
        return out


def entity_keys(batch: pa.RecordBatch, join: dict, version: int = 3) -> list[bytes]:
    """Feast's `serialize_entity_key` of each row, built directly for one string join key."""
    from feast.value_type import ValueType

    names = list(join)
    if len(names) == 1 and join[names[0]] == ValueType.STRING and version == 3:
        name = names[0].encode()
        prefix = struct.pack("<III", 1, _STRING_TYPE, len(name)) + name
        header = struct.Struct("<II")
        out = []
        for value in batch.column(names[0]).to_pylist():
            raw = value.encode()
            out.append(prefix + header.pack(_STRING_TYPE, len(raw)) + raw)
        return out

    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values

    columns = {
        k: python_values_to_proto_values(batch.column(k).to_numpy(zero_copy_only=False), t) for k, t in join.items()
    }
    return [
        serialize_entity_key(EntityKey(join_keys=names, entity_values=[columns[k][i] for k in names]), version)
        for i in range(batch.num_rows)
    ]


def _direct(arrow_type: pa.DataType, value_type) -> bool:
    """Whether values of this Arrow type for this Feast type are encoded here (else by Feast)."""
    return {
        "DOUBLE": pa.types.is_floating,
        "INT64": pa.types.is_integer,
        "INT32": pa.types.is_integer,
        "STRING": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        "BOOL": pa.types.is_boolean,
    }.get(value_type.name, lambda t: False)(arrow_type)


def encode_values(column: pa.Array, value_type) -> list[bytes]:
    """The serialized Value proto of each entry, as Feast's `python_values_to_proto_values` makes it."""
    name = value_type.name
    n = len(column)
    missing = column.is_null().to_numpy(zero_copy_only=False)
    if not _direct(column.type, value_type):
        from feast.type_map import python_values_to_proto_values

        converted = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
        return [v.SerializeToString() for v in converted]
    if name == "DOUBLE":
        numbers = column.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
        missing = missing | np.isnan(numbers)
        rows = np.empty((n, 9), dtype=np.uint8)
        rows[:, 0] = _TAG["DOUBLE"][0]
        rows[:, 1:] = np.ascontiguousarray(numbers, dtype="<f8").view(np.uint8).reshape(n, 8)
        return _split(rows.tobytes(), np.full(n, 9), 9, missing)
    if name in ("INT64", "INT32"):
        numbers = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        payload, lengths = _varints(numbers)
        rows = np.concatenate([np.full((n, 1), _TAG[name][0], dtype=np.uint8), payload], axis=1)
        return _split(rows.tobytes(), lengths + 1, rows.shape[1], missing)
    if name == "STRING":
        tag = _TAG["STRING"]
        return [b"" if v is None else tag + _varint(len(raw := v.encode())) + raw for v in column.to_pylist()]
    return [b"" if v is None else (b"\x38\x01" if v else b"\x38\x00") for v in column.to_pylist()]  # BOOL


def _split(buffer: bytes, lengths: np.ndarray, stride: int, missing: np.ndarray) -> list[bytes]:
    """Row i of a fixed-stride buffer, cut to lengths[i]; b'' where missing."""
    starts = range(0, len(lengths) * stride, stride)
    if (lengths == stride).all():
        out = [buffer[s : s + stride] for s in starts]
    else:
        out = [buffer[s : s + n] for s, n in zip(starts, lengths.tolist(), strict=False)]
    for i in np.flatnonzero(missing).tolist():
        out[i] = b""
    return out


def _varints(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of int64 values (negatives as 10-byte two's complement): (n x 10 bytes, lengths)."""
    unsigned = numbers.astype(np.int64).view(np.uint64)
    out = np.zeros((len(numbers), 10), dtype=np.uint8)
    lengths = np.ones(len(numbers), dtype=np.int64)
    rest = unsigned.copy()
    for i in range(10):
        out[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest > 0
        out[more, i] |= 0x80
        lengths[more] = i + 2
    return out, lengths


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _datetimes(column: pa.Array) -> list[datetime]:
    """Timezone-aware UTC datetimes; converted once per distinct value (snapshots share a few)."""
    if pa.types.is_timestamp(column.type) and column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    encoded = pc.dictionary_encode(column)
    distinct = [None if v is None else v.astimezone(UTC) for v in encoded.dictionary.to_pylist()]
    indices = encoded.indices.to_pylist()
    return [None if i is None else distinct[i] for i in indices]


# ---- writers -------------------------------------------------------------------------------------


def _write_sqlite(store, view, batch: EncodedBatch) -> None:
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    online = store._get_provider().online_store
    conn = online._get_conn(store.config)
    versioning = store.config.registry.enable_online_feature_view_versioning
    table = _quote_id(_table_id(store.project, view, versioning))
    columns_sql = "entity_key, feature_name, value, value_text, event_ts, created_ts"
    features = sorted(batch.values)
    values = [batch.values[feature] for feature in features]
    texts = [batch.texts(feature) for feature in features]
    # Staged: one wide row per entity (key, times, then value and text of each feature) goes into an
    # unindexed temp table; one INSERT ... SELECT then unpivots it into Feast's row per feature, in
    # primary-key order, and upserts. Python binds one row per entity instead of one per value, and
    # SQLite maintains Feast's two indexes itself.
    wide = (
        ["entity_key", "event_ts", "created_ts"]
        + [f"v{j}" for j in range(len(features))]
        + [f"t{j}" for j in range(len(features))]
    )
    unpivot = " UNION ALL ".join(
        f"SELECT entity_key, {_sql_string(feature)}, v{j}, t{j}, event_ts, created_ts FROM {_STAGE}"
        for j, feature in enumerate(features)
    )
    rows = zip(
        batch.keys, _sqlite_times(batch.event_ts), _sqlite_times(batch.created_ts), *values, *texts, strict=False
    )
    with conn:
        conn.execute(f"DROP TABLE IF EXISTS {_STAGE}")
        conn.execute(f"CREATE TEMP TABLE {_STAGE} ({', '.join(wide)})")
        conn.executemany(f"INSERT INTO {_STAGE} VALUES ({', '.join('?' * len(wide))})", rows)
        conn.execute(
            f"INSERT INTO {table} ({columns_sql}) SELECT * FROM ({unpivot}) WHERE true ORDER BY 1, 2 "
            "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
            "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts "
            f"WHERE excluded.event_ts >= {table}.event_ts"
        )  # `WHERE true`: SQLite's rule for an upsert whose rows come from a SELECT. The last WHERE keeps
        # a newer stored row (a push) from being rolled back by a batch snapshot, as Redis does.
        conn.execute(f"DROP TABLE {_STAGE}")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sqlite_times(times: list) -> list:
    """Naive UTC datetimes (what Feast hands to sqlite3), already through sqlite3's registered
    adapter (Feast registers one): computed once per distinct value instead of once per row."""
    adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol), lambda value: value)
    cache: dict = {}
    out = []
    for t in times:
        if t not in cache:
            cache[t] = None if t is None else adapt(t.astimezone(UTC).replace(tzinfo=None))
        out.append(cache[t])
    return out


def _write_redis(store, view, batch: EncodedBatch) -> None:
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.redis import _versioned_fv_name
    from google.protobuf.timestamp_pb2 import Timestamp

    config = store.config
    client = store._get_provider().online_store._get_client(config.online_store)
    name = _versioned_fv_name(view, config)
    ts_key = f"_ts:{name}"
    fields = {feature: _mmh3(f"{name}:{feature}") for feature in batch.values}
    project = config.project.encode()
    keys = [key + project for key in batch.keys]

    stamps: dict = {}
    for t in set(batch.event_ts):
        stamp = Timestamp()
        stamp.FromDatetime(t)
        stamps[t] = (stamp.SerializeToString(), stamp.seconds * 1_000_000_000 + stamp.nanos)

    columns = list(batch.values.items())
    for start in range(0, len(keys), REDIS_PIPELINE):
        chunk = range(start, min(start + REDIS_PIPELINE, len(keys)))
        with client.pipeline(transaction=False) as pipe:
            for i in chunk:
                pipe.hget(keys[i], ts_key)
            previous = pipe.execute()
            latest: dict[bytes, int] = {}
            for i, prev in zip(chunk, previous, strict=False):
                raw_ts, nanos = stamps[batch.event_ts[i]]
                seen = latest.get(keys[i], 0)
                if prev:
                    stored = Timestamp()
                    stored.ParseFromString(prev)
                    seen = max(seen, stored.seconds * 1_000_000_000 + stored.nanos)
                if seen and nanos <= seen:  # Feast's rule: keep what is newer or as new
                    continue
                latest[keys[i]] = nanos
                mapping = {ts_key: raw_ts}
                for feature, values in columns:
                    mapping[fields[feature]] = values[i]
                pipe.hset(keys[i], mapping=mapping)
            pipe.execute()
