"""Data sources: the parquet tables the transforms write, a push source, the request context.

File paths are relative: Feast resolves them against the repo config's `repo_path`, which
`feature_repo.store` sets to the profile's features folder (`$VIDREC_FEATURES_DIR`, by default
`$VIDREC_HOME/features`), so the same registered definitions serve every environment.
Every table has `event_timestamp` (the as-of time: only events strictly before it were used)
and `created_ts` (ties between rows of one timestamp go to the newest).
"""

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
