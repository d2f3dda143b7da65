"""A/B assignment: a user's variant is a pure function of (experiment, user id, share).

    bucket = first 8 bytes of sha256("<experiment>:<user_id>") as an integer / 2**64, in [0, 1)
    variant = "challenger" if bucket < challenger_share else "champion"

Deterministic across workers, restarts and machines (no state, no Python hash seed); a new
experiment name reshuffles users; raising the share only moves champion users to the challenger
(a user's bucket never changes), so ramps are monotonic.
"""

from __future__ import annotations

import hashlib

CHAMPION = "champion"
CHALLENGER = "challenger"
VARIANTS = (CHAMPION, CHALLENGER)


def bucket(user_id: str, experiment: str) -> float:
    digest = hashlib.sha256(f"{experiment}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(user_id: str, experiment: str, challenger_share: float) -> str:
    if not 0.0 <= challenger_share <= 1.0:
        raise ValueError(f"challenger_share must be in [0, 1], got {challenger_share}")
    if challenger_share <= 0.0:
        return CHAMPION
    return CHALLENGER if bucket(user_id, experiment) < challenger_share else CHAMPION
