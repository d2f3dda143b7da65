"""Data sources: the parquet tables the transforms write, a push source, the request context.

File paths are relative: Feast resolves them against the repo config's `repo_path`, which
`feature_repo.store` sets to the profile's features folder (`$VIDREC_FEATURES_DIR`, by default
`$VIDREC_HOME/features`), so the same registered definitions serve every environment.
Every table has `event_timestamp` (the as-of time: only events strictly before it were used)
and `created_ts` (ties between rows of one timestamp go to the newest).

The sources are declared once, as the FileSources below. The spark profile serves the same tables
through Feast's Spark offline store, which reads only SparkSources: `for_spark(objects, root)`
derives each one's SparkSource (same name, timestamps, description) and swaps it into the push
sources and feature views that use it, so no feature view is declared twice. SparkSource paths are
absolute (Spark resolves relative paths against the JVM's working directory, not Feast's repo_path).
"""

from __future__ import annotations

import copy

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import String, UnixTimestamp

USER_FEATURES_TABLE = "user_features"
VIDEO_FEATURES_TABLE = "video_features"
VIDEO_EMBEDDINGS_TABLE = "video_embeddings"
USER_SESSIONS_TABLE = "user_sessions"  # feature_repo.sessions.SESSION_TABLE
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created_ts"

user_features_source = FileSource(
    name="user_features_source",
    path=f"{USER_FEATURES_TABLE}.parquet",
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_FIELD,
    description="feature_repo/transforms/user_features.sql, one row per user per as-of time.",
)

video_features_source = FileSource(
    name="video_features_source",
    path=f"{VIDEO_FEATURES_TABLE}.parquet",
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_FIELD,
    description="feature_repo/transforms/video_features.sql, one row per video per as-of time.",
)

video_embeddings_source = FileSource(
    name="video_embeddings_source",
    path=f"{VIDEO_EMBEDDINGS_TABLE}.parquet",
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_FIELD,
    description="feature_repo/transforms/embeddings.py: content embedding per video.",
)

# Fresh user activity pushed from the event stream / feedback log between batch runs
# (`feature_repo.store.push_user_recent`); backed by the batch user table for backfills and
# training. Pushes go to the online store only: the batch file is rewritten by the transforms.
user_recent_push = PushSource(
    name="user_recent_push",
    batch_source=user_features_source,
    description="Fresh per-user activity, pushed online between batch runs.",
)

user_sessions_source = FileSource(
    name="user_sessions_source",
    path=f"{USER_SESSIONS_TABLE}.parquet",
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_FIELD,
    description="feature_repo/sessions.py: each user's last session before each as-of time.",
)

# The session a viewer is in, pushed by `/feedback` with every accepted batch
# (`feature_repo.store.push_user_rows`); the batch table backs it for backfills.
user_session_push = PushSource(
    name="user_session_push",
    batch_source=user_sessions_source,
    description="The viewer's current session, pushed online by /feedback.",
)

# What the caller knows at request time: when the request is made and on which device.
# Training frames pass the label time and the event's device under the same names.
request_context = RequestSource(
    name="request_context",
    schema=[
        Field(name="request_ts", dtype=UnixTimestamp),
        Field(name="device", dtype=String),
    ],
    description="Request-time context: the request's time (UTC) and device.",
)


# Tables the Spark SQL runner (feature_repo.transforms.spark.write_features) writes as a folder
# partitioned by as-of time; the others are single parquet files under the same folder.
SPARK_PARTITIONED = (USER_FEATURES_TABLE, VIDEO_FEATURES_TABLE)
PARTITION_COLUMN = "as_of"  # partition value: the as-of time as yyyy-MM-ddTHH-mm-ss
PARTITION_FORMAT = "%Y-%m-%dT%H-%M-%S"


def table_of(source: FileSource) -> str:
    """The feature table a FileSource reads (its path without `.parquet`)."""
    return source.path.removesuffix(".parquet")


def spark_path(table: str, root: str) -> str:
    """Where the spark profile's table lives under the features folder `root` (a path or URL)."""
    name = table if table in SPARK_PARTITIONED else f"{table}.parquet"
    return f"{str(root).rstrip('/')}/{name}"


def spark_source(source: FileSource, root: str):
    """The SparkSource of one declared FileSource, over the spark profile's copy of its table."""
    import warnings

    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    table = table_of(source)
    # Partition pruning: Feast bounds `as_of` by the entity rows' time range (less the TTL).
    partition = {"date_partition_column": PARTITION_COLUMN, "date_partition_column_format": PARTITION_FORMAT}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The spark data source API is an experimental feature")
        return SparkSource(
            name=source.name,
            path=spark_path(table, root),
            file_format="parquet",
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column,
            field_mapping=dict(source.field_mapping),
            description=source.description,
            tags=dict(source.tags),
            owner=source.owner,
            **(partition if table in SPARK_PARTITIONED else {}),
        )


def for_spark(objects: list, root: str) -> list:
    """The repo's objects with every FileSource replaced by its SparkSource (see the module doc).

    Push sources and feature views are copied with the new batch source; the rest is kept as is.
    """
    from feast import FeatureView

    swapped: dict[str, object] = {}

    def batch(source):
        if isinstance(source, FileSource):
            if source.name not in swapped:
                swapped[source.name] = spark_source(source, root)
            return swapped[source.name]
        if isinstance(source, PushSource):
            if source.name not in swapped:
                push = copy.copy(source)
                push.batch_source = batch(source.batch_source)
                swapped[source.name] = push
            return swapped[source.name]
        return source

    out = []
    for obj in objects:
        if isinstance(obj, (FileSource, PushSource)):
            out.append(batch(obj))
        elif isinstance(obj, FeatureView) and isinstance(obj.batch_source, FileSource):
            view = copy.copy(obj)
            view.batch_source = batch(obj.batch_source)
            if obj.stream_source is not None:
                view.stream_source = batch(obj.stream_source)
            out.append(view)
        else:
            out.append(obj)
    return out
