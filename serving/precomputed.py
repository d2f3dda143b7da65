"""Precomputed recommendations: written by the batch DAG (`vidrec_batch_recs`), read by the service.

Key and value (the same in every backend):

    key    vidrec:recs:<user_id>
    value  JSON {"video_ids": [...], "scores": [...], "sources": [[...], ...],
                 "versions": {"vidrec-candidates": "<v>", "vidrec-ranker": "<v>"},
                 "generated_at": <epoch seconds>}

The lists are the ranker's top N (before personalization: the service filters what the user has
seen or excluded since, and applies the context and diversity re-rank per request).

Backends, by URL (`VIDREC_PRECOMPUTED_URL`):

    sqlite:///<path>     table precomputed(key TEXT PRIMARY KEY, value TEXT, expires_at REAL), WAL
                         mode so the writer never blocks readers (local profile)
    redis://host:port/db  SET key value EX ttl (prod: the same Redis as the Feast online store)

A list is served only when it is fresh: not expired (the writer's TTL), generated less than
`max_age` seconds ago (the reader's TTL), and made by the model versions of the variant being
served; otherwise the real-time path runs. Writes are batched and idempotent (upserts).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

log = logging.getLogger("vidrec.serving")

KEY_PREFIX = "vidrec:recs:"


def key(user_id: str) -> str:
    return f"{KEY_PREFIX}{user_id}"


@dataclass(frozen=True)
class PrecomputedList:
    user_id: str
    video_ids: list[str]
    scores: list[float]
    sources: list[list[str]]
    versions: dict[str, str]
    generated_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "video_ids": self.video_ids,
                "scores": self.scores,
                "sources": self.sources,
                "versions": self.versions,
                "generated_at": self.generated_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, user_id: str, text: str | bytes) -> PrecomputedList:
        raw = json.loads(text)
        n = len(raw["video_ids"])
        scores = [float(s) for s in raw.get("scores") or [0.0] * n]
        sources = raw.get("sources") or [[] for _ in range(n)]
        if len(scores) != n or len(sources) != n:
            raise ValueError(
                f"precomputed list of {user_id!r} has {n} ids, {len(scores)} scores, {len(sources)} sources"
            )
        return cls(user_id, [str(v) for v in raw["video_ids"]], scores, [list(s) for s in sources],
                   {str(k): str(v) for k, v in raw["versions"].items()}, float(raw["generated_at"]))  # fmt: skip


class PrecomputedStore(Protocol):
    """get/put of lists by user id; `url` says where (SQLite and Redis implement it below)."""

    url: str

    def put_many(self, lists: Iterable[PrecomputedList], ttl_s: float) -> int: ...

    def get_raw(self, user_id: str) -> str | bytes | None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def get(
        self, user_id: str, max_age_s: float, versions: dict[str, str] | None = None, now: float | None = None
    ) -> PrecomputedList | None:
        """The fresh list of `user_id` made by `versions` (when given), else None."""
        raw = self.get_raw(user_id)
        if raw is None:
            return None
        found = PrecomputedList.from_json(user_id, raw)
        now = time.time() if now is None else now
        if now - found.generated_at > max_age_s:
            return None
        if versions is not None and found.versions != versions:
            return None
        return found


class SQLitePrecomputed(PrecomputedStore):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as conn:
            _switch_to_wal(conn)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS precomputed (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            self._local.conn = conn
        return conn

    def put_many(self, lists: Iterable[PrecomputedList], ttl_s: float) -> int:
        expires = time.time() + ttl_s
        rows = [(key(item.user_id), item.to_json(), expires) for item in lists]
        conn = self._connect()
        with conn:
            conn.executemany("INSERT OR REPLACE INTO precomputed (key, value, expires_at) VALUES (?, ?, ?)", rows)
            conn.execute("DELETE FROM precomputed WHERE expires_at < ?", (time.time(),))
        return len(rows)

    def get_raw(self, user_id: str) -> str | None:
        row = (
            self._connect()
            .execute("SELECT value FROM precomputed WHERE key = ? AND expires_at >= ?", (key(user_id), time.time()))
            .fetchone()
        )
        return None if row is None else row[0]

    def ping(self) -> None:
        self._connect().execute("SELECT 1 FROM precomputed LIMIT 1").fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _switch_to_wal(conn: sqlite3.Connection, tries: int = 100) -> None:
    """SQLite answers a journal-mode switch "database is locked" at once, without waiting out the
    busy timeout, while another connection switches the same new file: the service's workers all
    open the store as they start."""
    for attempt in range(tries):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.02)


class RedisPrecomputed(PrecomputedStore):
    def __init__(self, url: str, socket_timeout: float = 0.05):
        import redis

        from serving.breaker import fast_retry

        self.url = url
        self.client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, retry=fast_retry()
        )

    def put_many(self, lists: Iterable[PrecomputedList], ttl_s: float, chunk: int = 1000) -> int:
        n = 0
        for part in _chunks(lists, chunk):
            pipe = self.client.pipeline(transaction=False)
            for item in part:
                pipe.set(key(item.user_id), item.to_json(), ex=max(1, int(ttl_s)))
            pipe.execute()
            n += len(part)
        return n

    def get_raw(self, user_id: str) -> bytes | None:
        value = self.client.get(key(user_id))  # a sync client: bytes or None
        return value if isinstance(value, bytes) else None

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    part = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def open_store(url: str) -> PrecomputedStore:
    if url.startswith("sqlite:///"):
        return SQLitePrecomputed(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisPrecomputed(url)
    raise ValueError(f"unsupported precomputed store URL {url!r}: expected sqlite:///path or redis://host:port/db")


def lists_from_frame(
    recs: pd.DataFrame, versions: dict[str, str], generated_at: float | None = None
) -> list[PrecomputedList]:
    """`TwoStage.rank` output (user_id, video_id, rank, score, sources) -> one list per user."""
    generated_at = time.time() if generated_at is None else generated_at
    out = []
    for user_id, group in recs.sort_values(["user_id", "rank"], kind="stable").groupby("user_id", sort=False):
        out.append(
            PrecomputedList(
                str(user_id),
                group["video_id"].astype(str).tolist(),
                group["score"].astype(float).tolist(),
                [list(s) for s in group["sources"]],
                dict(versions),
                generated_at,
            )
        )
    return out


def write_recommendations(url: str, recs: pd.DataFrame, versions: dict[str, str], ttl_s: float = 86_400.0) -> int:
    """Store `TwoStage.rank` output for serving; returns users written."""
    return write_recommendation_batches(url, [recs], versions, ttl_s)[0]


def write_recommendation_batches(
    url: str, batches: Iterable[pd.DataFrame], versions: dict[str, str], ttl_s: float = 86_400.0
) -> tuple[int, int]:
    """What the batch DAG calls: store each batch of `TwoStage.rank` output as it comes, so only
    one batch of users is ever held; returns (users written, rows)."""
    store = open_store(url)
    users = rows = 0
    try:
        for recs in batches:
            if len(recs):
                users += store.put_many(lists_from_frame(recs, versions), ttl_s)
                rows += len(recs)
    finally:
        store.close()
    return users, rows
