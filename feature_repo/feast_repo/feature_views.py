"""Feature views: which columns of which source describe which entity, and for how long.

TTLs: a snapshot row answers for at most `SNAPSHOT_TTL` after its as-of time, so feature tables
must be recomputed at least that often (the default schedule is daily or weekly). Past the TTL a
point-in-time join returns NULL (no stale values in training) and `materialize` skips the row.
Content embeddings never expire.

User features are split in two views over one table: `user_profile` (long-run tastes and
habits, batch only) and `user_recent` (activity windows and recency, also fed by a push source
so serving sees fresh activity between batch runs). `user_session` (the current session: what was
watched, liked and disliked in it) is computed by `feature_repo.sessions` for batch runs and pushed
by `/feedback`; serving steers candidates with it, the ranker does not read it.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int64, String

from feature_repo.feast_repo import data_sources, entities
from feature_repo.schema import KNOWN_DEVICES

SNAPSHOT_TTL = timedelta(days=30)
SESSION_TTL = timedelta(days=1)  # feature_repo.sessions.SESSION_LOOKBACK
RECENT_TTL = timedelta(days=8)
NO_TTL = timedelta(0)

DAYPARTS = ("night", "morning", "afternoon", "evening")

user_profile = FeatureView(
    name="user_profile",
    entities=[entities.user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="events_total", dtype=Int64, description="Activity (all but impressions) before the as-of time."),
        Field(name="ratings_count", dtype=Int64),
        Field(name="avg_rating", dtype=Float64),
        Field(name="like_ratio", dtype=Float64, description="likes / (likes + dislikes)."),
        Field(name="avg_completion", dtype=Float64, description="Mean watch_time_s / duration_s, capped at 1."),
        Field(name="top_genres", dtype=String, description="'Genre:share|...', the top 3 by share of activity."),
        *[
            Field(name=f"share_{p}", dtype=Float64, description=f"Share of activity in the {p} (UTC).")
            for p in DAYPARTS
        ],
        *[Field(name=f"share_{d}", dtype=Float64, description=f"Share of activity on {d}.") for d in KNOWN_DEVICES],
    ],
    source=data_sources.user_features_source,
    online=True,
    description="Long-run tastes and habits of a user.",
    tags={"entity": "user", "kind": "batch"},
)

user_recent = FeatureView(
    name="user_recent",
    entities=[entities.user],
    ttl=RECENT_TTL,
    schema=[
        Field(name="events_1d", dtype=Int64),
        Field(name="events_7d", dtype=Int64),
        Field(name="events_30d", dtype=Int64),
        Field(name="days_since_last_activity", dtype=Float64),
        Field(
            name="last_video_ids",
            dtype=String,
            description="10 most recently watched videos, newest first, '|'-joined.",
        ),
    ],
    source=data_sources.user_recent_push,
    online=True,
    description="Recent activity of a user: batch snapshots, refreshed online by pushes.",
    tags={"entity": "user", "kind": "push"},
)

user_session = FeatureView(
    name="user_session",
    entities=[entities.user],
    ttl=SESSION_TTL,
    schema=[
        Field(name="session_started_s", dtype=Float64, description="Epoch seconds of the session's first event."),
        Field(name="last_active_s", dtype=Float64, description="Epoch seconds of the newest event."),
        Field(name="session_events", dtype=Int64),
        Field(
            name="updated_s", dtype=Float64, description="When the row was made: a push's wall clock, a batch's as-of."
        ),
        Field(
            name="watched_ids", dtype=String, description="Videos played/watched/rated in the session, newest first."
        ),
        Field(name="liked_ids", dtype=String, description="Videos liked in the session, newest first."),
        Field(name="disliked_ids", dtype=String, description="Videos disliked in the session, newest first."),
        Field(
            name="genre_shares",
            dtype=String,
            description="'Genre:share|...' of the session's watched and liked videos.",
        ),
    ],
    source=data_sources.user_session_push,
    online=True,
    description="The viewer's current session (30-minute gaps split sessions), pushed by /feedback.",
    tags={"entity": "user", "kind": "push"},
)

video_stats = FeatureView(
    name="video_stats",
    entities=[entities.video],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="views_1d", dtype=Int64, description="Distinct viewers in the last day."),
        Field(name="views_7d", dtype=Int64),
        Field(name="views_30d", dtype=Int64),
        Field(name="views_prev_7d", dtype=Int64, description="Distinct viewers 14 to 7 days ago."),
        Field(name="views_total", dtype=Int64),
        Field(name="trending_score", dtype=Float64, description="ln((1 + views_7d) / (1 + views_prev_7d))."),
        Field(name="completion_rate", dtype=Float64),
        Field(name="like_ratio", dtype=Float64),
        Field(name="avg_rating", dtype=Float64),
        Field(name="ratings_count", dtype=Int64),
        Field(name="age_days", dtype=Float64, description="Days since publication."),
        Field(name="duration_s", dtype=Float64),
        Field(name="genres", dtype=String, description="'|'-joined genres."),
    ],
    source=data_sources.video_features_source,
    online=True,
    description="Popularity, engagement and static attributes of a video.",
    tags={"entity": "video", "kind": "batch"},
)

video_embedding = FeatureView(
    name="video_embedding",
    entities=[entities.video],
    ttl=NO_TTL,
    schema=[Field(name="embedding", dtype=Array(Float32), description="L2-normalised content embedding.")],
    source=data_sources.video_embeddings_source,
    online=True,
    description="Content embedding of a video (MiniLM by default).",
    tags={"entity": "video", "kind": "content"},
)
