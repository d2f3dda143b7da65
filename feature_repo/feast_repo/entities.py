"""Entities: the things features describe. Join keys are the canonical string ids."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A viewer (canonical users.user_id).",
)

video = Entity(
    name="video",
    join_keys=["video_id"],
    value_type=ValueType.STRING,
    description="A video in the catalog (canonical videos.video_id).",
)
