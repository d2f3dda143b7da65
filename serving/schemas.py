"""The service's request and response bodies as pydantic models.

Inputs forbid unknown fields and use strict types where a silent conversion would hide a client
bug, so every malformed request gets a 400 that names the field and the problem. Outputs are
models too: BentoML serialises them without rebuilding a JSON schema per response.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, WithJsonSchema

from feature_repo.schema import DEVICES
from serving.config import feedback_batch_limit

MAX_K = 100
MAX_EXCLUDE = 1000
MAX_FEEDBACK_EVENTS = feedback_batch_limit()
Id = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Device = Literal[DEVICES]  # type: ignore[valid-type]  # the values of feature_repo.schema.DEVICES
Number = StrictFloat | StrictInt
# Optional top-level response fields, documented with OpenAPI 3.0's `nullable`: BentoML keeps only
# the first member of a top-level anyOf in its OpenAPI document, which would drop the null.
OptionalText = Annotated[str | None, WithJsonSchema({"type": "string", "nullable": True})]
OptionalTime = Annotated[datetime | None, WithJsonSchema({"type": "string", "format": "date-time", "nullable": True})]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RequestContext(_Input):
    device: Device = "unknown"
    timestamp: datetime | None = Field(
        None, description="When the request happens (ISO 8601; UTC when no zone). Default: now."
    )


class RecommendRequest(_Input):
    user_id: Id
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    context: RequestContext | None = None
    exclude: Annotated[list[Id], Field(max_length=MAX_EXCLUDE)] = Field(default_factory=list)


class SimilarRequest(_Input):
    video_id: Id
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10


class FeedbackEvent(_Input):
    """One canonical event. Types are checked here; values (event type, rating range, known
    video, timestamp) by feature_repo.validation, so a bad row is rejected alone, with a reason."""

    event_id: Annotated[StrictStr, Field(max_length=256)] | None = None
    user_id: Annotated[StrictStr, Field(max_length=128)] | None = None
    video_id: Annotated[StrictStr, Field(max_length=128)] | None = None
    event_ts: Annotated[StrictStr, Field(max_length=64)] | None = None
    event_type: Annotated[StrictStr, Field(max_length=32)] | None = None
    watch_time_s: Number | None = None
    rating: Number | None = None
    device: Annotated[StrictStr, Field(max_length=32)] | None = None
    session_id: Annotated[StrictStr, Field(max_length=256)] | None = None
    text: Annotated[StrictStr, Field(max_length=4096)] | None = None
    # The /recommend answer this event responds to, and the slot (1-based rank) it was shown in.
    request_id: Annotated[StrictStr, Field(max_length=64)] | None = None
    position: Annotated[StrictInt, Field(ge=1, le=MAX_K)] | None = None


class FeedbackRequest(_Input):
    events: Annotated[list[FeedbackEvent], Field(min_length=1, max_length=MAX_FEEDBACK_EVENTS)]


class ReloadRequest(_Input):
    """The token goes in the `Authorization: Bearer <token>` header (or `X-Reload-Token`)."""


# ---- outputs ------------------------------------------------------------------------------------


class RecommendedVideo(BaseModel):
    video_id: str
    rank: int
    score: float  # after re-ranking (relevance + boosts), what the order follows
    ranker_score: float | None  # the XGBoost score (None for cold-start and fallback lists)
    sources: list[str]  # the generators that proposed it
    reason: str


class RecommendResponse(BaseModel):
    request_id: str  # send it back with the feedback events this answer causes (serving.impressions)
    user_id: str
    items: list[RecommendedVideo]
    variant: str
    experiment: str
    model_versions: dict[str, str]
    served_from: str  # realtime | precomputed | cold_start | cache | popular
    degraded: bool
    in_session: bool = False  # the viewer's current session (fresh /feedback events) steered the list
    candidates: int  # how many videos were considered (ranked by the ranker on the real-time path)
    device: str
    timestamp: datetime


class SimilarVideo(BaseModel):
    video_id: str
    rank: int
    score: float
    sources: list[str]  # content, collaborative
    reason: str


class SimilarResponse(BaseModel):
    video_id: str
    items: list[SimilarVideo]
    model_versions: dict[str, str]


class RejectedEvent(BaseModel):
    index: int  # position in the batch
    event_id: str | None
    reasons: list[str]


class UnattributedEvent(BaseModel):
    index: int  # position in the batch; the event itself is accepted
    request_id: str
    reason: str


class FeedbackResponse(BaseModel):
    batch_id: str
    accepted: int
    rejected: list[RejectedEvent]
    attributed: int  # accepted events whose request_id is an answer of this service
    unattributed: list[UnattributedEvent]  # accepted, but their request_id does not name an answer
    pushed_users: int = 0  # users whose fresh features reached the online store with this batch
    log_file: OptionalText
    quarantine_file: OptionalText


class ReloadResponse(BaseModel):
    reloaded: bool
    model_versions: dict[str, dict[str, str]]
    detail: str


class StatusResponse(BaseModel):
    ready: bool
    models_loaded: bool
    online_store: str  # ok | unreachable: <why>
    model_versions: dict[str, dict[str, str]]
    challenger_share: float
    experiment: str
    loaded_at: OptionalTime
    video_features_as_of: OptionalTime
    precomputed: str
    feedback_dir: str
