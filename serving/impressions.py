"""The impression log: what the service showed, so that CTR has a denominator.

Every `/recommend` answer gets a `request_id` and each of its slots becomes one row of
`feature_repo.schema.IMPRESSIONS` (user, video, position, variant, model versions, request_id,
device, time). Rows wait in a bounded in-memory buffer that a background thread writes as one
batch file every second (or sooner, at `flush_rows`):

    <feedback dir>/impressions/<YYYY-MM-DD>/<batch_id>.parquet

written like the feedback log (temporary name, fsync, rename, folder fsync), so a batch is in the
log entirely or not at all. `/recommend` never waits for the disk: when the buffer is full or a
write fails (a full disk), the rows are dropped and counted (`on_dropped`, a Prometheus counter in
the service) rather than blocking or failing the answer. What was buffered is written on shutdown.

Request ids are 32 hex digits (UUID form): 9 random bytes, one byte naming the variant and an
HMAC of both under a key every worker of one deployment shares (a file under VIDREC_HOME), so
any worker can tell a request id it issued from a malformed or foreign one, and which variant
served it, without a shared store of slates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from feature_repo import schema
from feature_repo.lake import write_parquet_atomic
from serving import ab

log = logging.getLogger("vidrec.serving")

KEY_FILE = "request-id.key"
_RANDOM_BYTES, _TAG_BYTES = 9, 6
WARN_EVERY_S = 10.0
_VARIANT_BYTE = {variant: i for i, variant in enumerate(ab.VARIANTS)}


class RequestIds:
    """Issues and checks request ids (see the module doc)."""

    def __init__(self, key: bytes):
        self.key = key

    @classmethod
    def shared(cls, home: Path) -> RequestIds:
        """The deployment's key: created once (the first worker wins the race), then read by all."""
        path = Path(home) / "serving" / KEY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        for _ in range(100):  # another worker may be between its create and its write
            text = path.read_text().strip()
            if text:
                return cls(bytes.fromhex(text))
            threading.Event().wait(0.01)
        raise RuntimeError(f"{path} is empty: delete it and restart the service")

    def new(self, variant: str) -> str:
        body = secrets.token_bytes(_RANDOM_BYTES) + bytes([_VARIANT_BYTE[variant]])
        return (body + self._tag(body)).hex()

    def check(self, request_id: object) -> tuple[str | None, str | None]:
        """(variant, None) for an id this deployment issued, else (None, why not)."""
        if not isinstance(request_id, str):
            return None, "malformed request_id: not a string"
        try:
            raw = uuid.UUID(hex=request_id).bytes
        except ValueError:
            return (
                None,
                f"malformed request_id {request_id[:40]!r}: expected 32 hex digits (the id /recommend returned)",
            )
        body, tag = raw[: _RANDOM_BYTES + 1], raw[_RANDOM_BYTES + 1 :]
        if not hmac.compare_digest(tag, self._tag(body)) or body[-1] >= len(ab.VARIANTS):
            return None, f"unknown request_id {request_id!r}: not issued by this service"
        return ab.VARIANTS[body[-1]], None

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()[:_TAG_BYTES]


_LOCAL_IDS = RequestIds(secrets.token_bytes(32))


def new_request_id(variant: str) -> str:
    """A request id for answers made outside the service (the offline simulator): same form."""
    return _LOCAL_IDS.new(variant)


def impression_rows(
    request_id: str,
    user_id: str,
    video_ids: list[str],
    variant: str,
    experiment: str,
    model_versions: dict[str, str],
    served_from: str,
    device: str,
    ts: pd.Timestamp,
) -> list[dict]:
    versions = json.dumps(model_versions, sort_keys=True)
    return [
        {
            "request_id": request_id,
            "user_id": user_id,
            "video_id": video_id,
            "position": position,
            "variant": variant,
            "experiment": experiment,
            "model_versions": versions,
            "served_from": served_from,
            "device": device,
            "event_ts": ts,
        }
        for position, video_id in enumerate(video_ids, start=1)
    ]


def write_impressions(root: Path, rows: list[dict], now: pd.Timestamp | None = None) -> Path:
    """One durable batch file of impression rows under `<root>/impressions/<day>/`."""
    now = now or pd.Timestamp.now(tz="UTC")
    # Straight from the rows to Arrow (through pandas the conversion took longer than the write):
    # Arrow stores aware times in UTC, naive ones as UTC, to the microsecond.
    columns = {name: [row[name] for row in rows] for name in schema.IMPRESSIONS.names}
    table = pa.Table.from_pydict(columns, schema=schema.IMPRESSIONS)
    path = Path(root) / "impressions" / now.strftime("%Y-%m-%d") / f"{uuid.uuid4().hex}.parquet"
    write_parquet_atomic(table, path, durable=True)
    return path


@dataclass
class FlushResult:
    written: int
    dropped: int
    path: Path | None


class ImpressionLog:
    """The bounded buffer and its background writer (see the module doc)."""

    def __init__(
        self,
        root: Path,
        flush_rows: int = 5000,
        flush_s: float = 1.0,
        max_rows: int = 200_000,
        on_dropped: Callable[[int], None] | None = None,
    ):
        self.root = Path(root)
        self.flush_rows, self.flush_s, self.max_rows = flush_rows, flush_s, max_rows
        self.on_dropped = on_dropped
        self.dropped = 0
        self.written = 0
        self._rows: deque[dict] = deque()
        self._lock = threading.Lock()  # guards _rows: held for an append, never for a write
        self._write_lock = threading.Lock()  # one batch file at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -WARN_EVERY_S

    def record(self, rows: list[dict]) -> None:
        """Queue one answer's rows; never blocks on the disk."""
        with self._lock:
            room = self.max_rows - len(self._rows)
            kept = rows if len(rows) <= room else rows[: max(room, 0)]
            self._rows.extend(kept)
            full = len(self._rows) >= self.flush_rows
        if len(kept) < len(rows):
            self._drop(len(rows) - len(kept), "the impression buffer is full")
        if full:
            self._wake.set()

    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> FlushResult:
        """Write what is buffered as one batch; on failure the batch is dropped and counted."""
        with self._write_lock:
            with self._lock:
                rows = list(self._rows)
                self._rows.clear()
            if not rows:
                return FlushResult(0, 0, None)
            try:
                path = write_impressions(self.root, rows)
            except OSError as exc:
                self._drop(len(rows), f"writing impressions failed: {exc.strerror or exc}")
                return FlushResult(0, len(rows), None)
            self.written += len(rows)
            return FlushResult(len(rows), 0, path)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vidrec-impressions", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the writer and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must outlive any one bad batch
                log.exception("impression flush failed")

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._warned_at > WARN_EVERY_S:  # a full disk must not flood the log too
            self._warned_at = now
            log.warning("impressions not logged (%d so far): %s", self.dropped, why)
        if self.on_dropped is not None:
            self.on_dropped(n)
