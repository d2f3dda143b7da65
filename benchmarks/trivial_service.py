"""The serving benchmark's same-run baseline: the least a BentoML endpoint can do for /recommend.

Async, pydantic input and output, access log off, the same worker count and timeout as vidrec's
service (serving/service.py): it answers ten fixed items for any user. What vidrec reaches, as a
share of this under the same load, is the figure that survives a 2-4x faster or slower machine.
`benchmarks/bench_serving.py` starts it with `bentoml serve benchmarks.trivial_service:Trivial`.
"""

from __future__ import annotations

import os

import bentoml
from pydantic import BaseModel


class Context(BaseModel):
    device: str = "unknown"


class Item(BaseModel):
    video_id: str
    rank: int
    score: float


class Answer(BaseModel):
    user_id: str
    items: list[Item]


ITEMS = [Item(video_id=str(i), rank=i, score=1.0 / i) for i in range(1, 11)]


@bentoml.service(
    name="trivial",
    workers=int(os.environ.get("VIDREC_SERVE_WORKERS", "2")),
    traffic={"timeout": float(os.environ.get("VIDREC_SERVE_TIMEOUT_S", "5"))},
    logging={"access": {"enabled": False}},
)
class Trivial:
    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: str, k: int = 10, context: Context | None = None) -> Answer:
        return Answer(user_id=user_id, items=ITEMS[:k])
