"""The recommendation service without its HTTP layer: models, stores, reloads, the request flows.

`serving/service.py` wraps this in BentoML; tests drive it in-process too. One `RecommenderApp`
lives in each worker process:

    state          the loaded variants (champion, and challenger when an A/B test runs), each an
                   `Engine` over the registry's TwoStage, plus the in-memory video features;
                   swapped as one reference, so a request sees one consistent state
    online         Feast online reads (one user row per request) behind a circuit breaker
    precomputed    the batch DAG's lists (serving.precomputed), used when fresh
    feedback       the durable feedback log (serving.feedback)
    impressions    every answer's slate, buffered and written in the background (serving.impressions)

`recommend` flow: A/B variant -> a fresh precomputed list if there is one -> else the user's
online row -> known user: candidates, features, ranker (real time); unknown user: cold start;
online store down: the user's last response from this worker's cache, else trending/popular
minus what the user has seen, with `degraded: true`. Every list then goes through the same
personalization (serving.rerank): seen and excluded videos removed, boosts, context, MMR.

Reloads: a poller thread checks the registry every `poll_seconds` for moved aliases and the
Feast registry for a newer materialization of the video features, and rebuilds what changed;
`reload()` (the token-protected endpoint) does it at once and touches a marker file that the
other workers' pollers watch, so every worker follows.

Every answer carries a `request_id`; its slate goes to the impression log, and feedback events
that send the id back are checked against it (the experiment report joins them for real).
"""

from __future__ import annotations

import gc
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd

from feature_repo.schema import utc_time
from models.lifecycle import registry
from serving import ab
from serving.breaker import CircuitBreaker
from serving.cache import LRU
from serving.config import ServingConfig
from serving.engine import Engine, RankSources, Suggestions
from serving.feedback import FeedbackLog
from serving.impressions import ImpressionLog, RequestIds, impression_rows
from serving.online import OnlineFeatures, StoreUnavailable, VideoTable, parse_video_list
from serving.precomputed import PrecomputedStore, open_store
from serving.rerank import minmax, reason, rerank
from serving.schemas import (
    FeedbackResponse,
    RecommendedVideo,
    RecommendResponse,
    RejectedEvent,
    ReloadResponse,
    SimilarResponse,
    SimilarVideo,
    StatusResponse,
    UnattributedEvent,
)
from serving.session import SessionIntent, fresh_rows, session_updated_at, steer

log = logging.getLogger("vidrec.serving")
assignments = logging.getLogger("vidrec.ab")

RECENT_SEEN_USERS = 50_000
RECENT_SEEN_S = 24 * 3600.0  # the online store's recent-activity view has caught up by then
RESPONSE_CACHE_S = 3600.0  # how old a response may be to answer for the user in degraded mode
CACHED_ITEMS = 50
RECENT_SLATES = 100_000  # answers whose slate this worker keeps, to check a feedback event's position
RECENT_SLATES_S = 6 * 3600.0
MARKER = "reload-requested"


class NotReady(RuntimeError):
    """No model is loaded yet (the registry has no champion, or loading failed)."""


class UnknownVideo(KeyError):
    pass


class Unauthorized(PermissionError):
    pass


@dataclass
class State:
    engines: dict[str, Engine]  # variant -> engine
    videos: VideoTable
    loaded_at: datetime
    videos_as_of: datetime | None

    def versions(self) -> dict[str, dict[str, str]]:
        return {variant: engine.versions for variant, engine in self.engines.items()}


def _ignore(*_: object) -> None:
    pass


@dataclass
class Observers:
    """Hooks the HTTP layer sets to count what happens (Prometheus counters in serving.service)."""

    impressions: Callable[[str, int], None] = _ignore  # (variant, slots shown)
    clicks: Callable[[str, int], None] = _ignore  # (variant, attributed clicks)
    impressions_dropped: Callable[[int], None] = _ignore


@dataclass
class _Cached:
    rows: np.ndarray
    relevance: np.ndarray
    ranker_scores: np.ndarray
    ranks: np.ndarray  # per row, rank within each generator (for the sources)
    versions: dict[str, str] = field(default_factory=dict)


class RecommenderApp:
    def __init__(self, config: ServingConfig):
        self.config = config
        settings = config.settings
        mlflow.set_tracking_uri(settings.mlflow_uri)
        mlflow.set_registry_uri(settings.mlflow_uri)
        self.state: State | None = None
        self.load_error: str | None = None
        self.online = OnlineFeatures(settings, retry_after=config.store_retry_s)
        self.precomputed: PrecomputedStore | None = None
        self.precomputed_breaker = CircuitBreaker("precomputed store", config.store_retry_s)
        self._open_precomputed()
        self.feedback_log = FeedbackLog(config.feedback_dir, self._known_videos)
        self.observe = Observers()
        self.request_ids = RequestIds.shared(settings.home)
        self.impressions = (
            ImpressionLog(
                config.feedback_dir,
                max_rows=config.impression_buffer,
                on_dropped=lambda n: self.observe.impressions_dropped(n),
            )
            if config.log_impressions
            else None
        )
        self.slates = LRU(RECENT_SLATES, ttl_s=RECENT_SLATES_S)
        self.responses = LRU(config.response_cache_size, ttl_s=RESPONSE_CACHE_S)
        self.recent_seen = LRU(RECENT_SEEN_USERS, ttl_s=RECENT_SEEN_S)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.marker = settings.home / "serving" / MARKER
        self._marker_seen = self._marker_mtime()
        self._ready_checked = (0.0, False)

    # ---- loading ---------------------------------------------------------------------------------

    def load(self) -> State | None:
        """Load the aliased models (and the video features); keep the old state on failure."""
        with self._reload_lock:
            try:
                state = self._build_state()
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("loading models failed; %s", "keeping the loaded ones" if self.state else "not ready")
                return None
            self.state = state
            self.load_error = None
            self.responses.clear()
            gc.unfreeze()  # let the replaced models' cycles be collected, then freeze the new ones
            gc.collect()
            gc.freeze()  # the models' object graphs are long-lived: keep them out of every full collection
            log.info("serving %s (video features as of %s)", state.versions(), state.videos_as_of)
            return state

    def _build_state(self, videos: VideoTable | None = None) -> State:
        aliases = [registry.CHAMPION]
        if self.config.challenger_share > 0:
            aliases.append(registry.CHALLENGER)
        engines: dict[str, Engine] = {}
        old = self.state
        for variant, alias in zip(ab.VARIANTS, aliases, strict=False):
            try:
                versions = self._alias_versions(alias)
                if versions is None:
                    raise LookupError(f"no model carries alias {alias!r}")
                if old is not None and variant in old.engines and old.engines[variant].versions == versions:
                    engines[variant] = old.engines[variant]  # unchanged: reuse
                    continue
                champion = registry.load_champion(alias)
                engines[variant] = Engine(
                    champion.system, champion.versions, alias,
                    candidate_cache=self.config.candidate_cache_size, candidate_ttl_s=self.config.candidate_cache_s,
                )  # fmt: skip
            except Exception:
                if variant == ab.CHAMPION:
                    raise
                log.exception("challenger not loaded: the A/B test sends everyone to the champion")
        as_of = None
        if videos is None:
            first = engines[ab.CHAMPION]
            try:
                as_of = self.online.video_features_as_of()
                if (
                    old is not None
                    and old.videos_as_of == as_of
                    and old.engines[ab.CHAMPION].versions == first.versions
                ):
                    videos = old.videos
                else:
                    videos = self.online.video_table(first.video_ids)
            except Exception as exc:
                log.error("video features not loaded from the online store (%s): ranking with them missing", exc)
                videos = VideoTable.empty(first.n_videos)
        else:
            as_of = videos.as_of
        for engine in engines.values():
            if engine.n_videos == len(videos.values) and np.array_equal(
                engine.video_ids, engines[ab.CHAMPION].video_ids
            ):
                engine.set_videos(videos)
            else:
                engine.set_videos(self.online.video_table(engine.video_ids))
        return State(engines, videos, datetime.now(UTC), as_of)

    def _alias_versions(self, alias: str) -> dict[str, str] | None:
        client = mlflow.MlflowClient()
        found = {model: registry.alias_version(client, model, alias) for model in registry.MODELS}
        versions = {model: v for model, v in found.items() if v is not None}
        return versions if len(versions) == len(found) else None

    def changed(self) -> list[str]:
        """What moved since the state was built: aliases in the registry, materialized video features."""
        state = self.state
        if state is None:
            return ["no models loaded"]
        moved = []
        wanted = {ab.CHAMPION: registry.CHAMPION}
        if self.config.challenger_share > 0:
            wanted[ab.CHALLENGER] = registry.CHALLENGER
        for variant, alias in wanted.items():
            current = self._alias_versions(alias)
            loaded = state.engines.get(variant)
            if current is not None and (loaded is None or loaded.versions != current):
                moved.append(f"{alias} -> {current}")
        try:
            as_of = self.online.video_features_as_of()
            if as_of is not None and as_of != state.videos_as_of:
                moved.append(f"video features as of {as_of}")
        except Exception as exc:
            log.warning("cannot check the video features' materialization: %s", exc)
        return moved

    def reload(
        self, token: str | None = None, *, check_token: bool = True, signal_workers: bool = True, wait: float = 3.0
    ) -> ReloadResponse:
        """Reload what changed (everything when nothing did), and tell the other workers."""
        if check_token:
            expected = self.config.reload_token
            if not expected:
                raise Unauthorized("reloading over HTTP is disabled: set VIDREC_RELOAD_TOKEN")
            if not token or not hmac.compare_digest(token.encode(), expected.encode()):
                raise Unauthorized("wrong reload token")
        before = self.state.versions() if self.state else {}
        done = threading.Event()
        result: dict[str, object] = {}

        def work() -> None:
            result["state"] = self.load()
            done.set()

        threading.Thread(target=work, name="vidrec-reload", daemon=True).start()
        if signal_workers:
            self._touch_marker()
        if not done.wait(wait):
            return ReloadResponse(reloaded=False, model_versions=before, detail="reload started; still loading")
        if result.get("state") is None:
            return ReloadResponse(
                reloaded=False,
                model_versions=before,
                detail=f"reload failed, still serving the loaded models: {self.load_error}",
            )
        after = self.state.versions() if self.state else {}
        detail = "models changed" if after != before else "reloaded; the same versions"
        return ReloadResponse(reloaded=True, model_versions=after, detail=detail)

    def _marker_mtime(self) -> float:
        try:
            return self.marker.stat().st_mtime_ns
        except OSError:
            return 0.0

    def _touch_marker(self) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_name(f".{MARKER}.{time.time_ns()}")
        tmp.write_text(str(time.time()))
        tmp.replace(self.marker)
        self._marker_seen = self._marker_mtime()

    def start_polling(self) -> None:
        """Start the background threads: the registry poller and the impression writer."""
        if self.impressions is not None:
            self.impressions.start()
        if self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll, name="vidrec-registry-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self.impressions is not None:
            self.impressions.close()

    def _poll(self) -> None:
        last_registry = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                marker = self._marker_mtime()
                if marker != self._marker_seen:
                    self._marker_seen = marker
                    log.info("reload requested through %s", self.marker)
                    self.load()
                    continue
                interval = self.config.poll_seconds
                if self.state is None or (interval > 0 and time.monotonic() - last_registry >= interval):
                    last_registry = time.monotonic()
                    moved = self.changed()
                    if moved:
                        log.info("reloading: %s", "; ".join(moved))
                        self.load()
            except Exception:
                log.exception("registry poll failed")

    # ---- health ------------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Models loaded and the online store answering (checked at most once a second)."""
        if self.state is None:
            return False
        checked_at, ok = self._ready_checked
        if time.monotonic() - checked_at < 1.0:
            return ok
        try:
            self.online.ping()
            ok = True
        except StoreUnavailable:
            ok = False
        self._ready_checked = (time.monotonic(), ok)
        return ok

    def status(self) -> StatusResponse:
        state = self.state
        ready = self.is_ready()
        precomputed = "off"
        if self.config.precomputed_url:
            precomputed = f"{self.config.precomputed_url} ({self.precomputed_breaker.status()})"
        return StatusResponse(
            ready=ready,
            models_loaded=state is not None,
            online_store=self.online.breaker.status() if state is not None else "not checked",
            model_versions=state.versions() if state else {},
            challenger_share=self.config.challenger_share,
            experiment=self.config.experiment,
            loaded_at=state.loaded_at if state else None,
            video_features_as_of=state.videos_as_of if state else None,
            precomputed=precomputed,
            feedback_dir=str(self.config.feedback_dir),
        )

    def _known_videos(self):
        state = self.state
        if state is None:
            return []
        return state.engines[ab.CHAMPION].video_ids

    # ---- recommend -------------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        device: str = "unknown",
        timestamp: datetime | None = None,
        exclude: list[str] | None = None,
    ) -> RecommendResponse:
        state = self.state
        if state is None:
            raise NotReady(self.load_error or "models are loading")
        ts = utc_time(timestamp)
        share = self.config.challenger_share if ab.CHALLENGER in state.engines else 0.0
        variant = ab.assign(user_id, self.config.experiment, share)
        engine = state.engines[variant]
        user_row = engine.user_row(user_id)
        # The online row first: the session it carries (pushed by /feedback from any worker) says
        # what to leave out and steer towards, and whether a precomputed list is older than it.
        user, store_down = None, False
        try:
            user = self.online.user_row(user_id)
        except StoreUnavailable:
            store_down = True
        intent = SessionIntent.of(user, ts)
        blocked = list(exclude or ())
        recent = self.recent_seen.fresh(user_id)
        if recent:
            blocked.extend(recent)
        if user:
            blocked.extend(parse_video_list(user.get("user_recent__last_video_ids")))
        if intent is not None:
            blocked.extend(intent.seen)
        exclude_rows = engine.rows_of(blocked) if blocked else None

        served_from, degraded = "realtime", False
        listing: Suggestions | None = None
        ranker_scores: np.ndarray | None = None

        fresh = self._precomputed(user_id, engine)
        if fresh is not None and fresh.generated_at < session_updated_at(user):
            fresh = None  # made before the user's latest events: rank in real time instead
        if fresh is not None:
            rows = engine.rows_of(fresh.video_ids)
            order = {v: i for i, v in enumerate(fresh.video_ids)}
            idx = np.array([order[engine.video_ids[r]] for r in rows], dtype=np.int64)
            rows, scores = rows, np.asarray(fresh.scores, dtype=np.float64)[idx]
            sources = [fresh.sources[i] for i in idx]
            keep = self._not_blocked(rows, exclude_rows, engine, user_row)
            if keep.sum() >= k:
                listing = Suggestions(
                    rows[keep], minmax(scores[keep]), [s for s, ok in zip(sources, keep, strict=True) if ok]
                )
                ranker_scores = scores[keep]
                served_from = "precomputed"

        if listing is None:
            degraded = store_down
            if user_row is None:
                served_from = "cold_start"
                known = user is not None and any(v is not None for name, v in user.items() if name != "user_id")
                listing = engine.cold_start(user if known else None, exclude_rows)
            elif degraded:
                cached = self.responses.fresh(user_id)
                if cached is not None and cached.versions == engine.versions:
                    keep = self._not_blocked(cached.rows, exclude_rows, engine, user_row)
                    listing = Suggestions(
                        cached.rows[keep], cached.relevance[keep], RankSources(engine, cached.ranks[keep])
                    )
                    ranker_scores = cached.ranker_scores[keep]
                    served_from = "cache"
                if listing is None or len(listing.rows) < k:
                    listing = engine.popular_for(user_row, exclude_rows)
                    ranker_scores = None
                    served_from = "popular"
            else:
                ranked = engine.rank(user_row, user, ts, device, exclude_rows)
                listing = Suggestions(ranked.rows, minmax(ranked.scores), RankSources(engine, ranked.ranks))
                ranker_scores = ranked.scores
                if self.config.response_cache_size > 0:
                    top = (
                        np.argpartition(-ranked.scores, min(CACHED_ITEMS, len(ranked.scores) - 1))[:CACHED_ITEMS]
                        if len(ranked.scores)
                        else ranked.rows
                    )
                    self.responses.put(
                        user_id,
                        _Cached(
                            ranked.rows[top],
                            listing.relevance[top],
                            ranked.scores[top],
                            ranked.ranks[top],
                            engine.versions,
                        ),
                    )

        if intent is not None:
            listing, ranker_scores = steer(
                engine,
                listing,
                ranker_scores,
                intent,
                exclude_rows if exclude_rows is not None else np.zeros(0, np.int64),
            )
        items = self._personalize(engine, listing, ranker_scores, k, device, ts)
        if self.config.log_assignments and share > 0:  # an experiment runs: one line per request
            assignments.info(
                "user=%s experiment=%s variant=%s served_from=%s degraded=%s",
                user_id,
                self.config.experiment,
                variant,
                served_from,
                degraded,
            )
        return self._answer(
            user_id, items, variant, engine, served_from, degraded, len(listing.rows), device, ts, intent is not None
        )

    def fallback(
        self,
        user_id: str,
        k: int = 10,
        device: str = "unknown",
        timestamp: datetime | None = None,
        exclude: list[str] | None = None,
    ) -> RecommendResponse:
        """Trending/popular minus what the user has seen: the answer of last resort (degraded)."""
        state = self.state
        if state is None:
            raise NotReady(self.load_error or "models are loading")
        ts = utc_time(timestamp)
        engine = state.engines[ab.CHAMPION]
        listing = engine.popular_for(engine.user_row(user_id), engine.rows_of(exclude or []))
        items = self._personalize(engine, listing, None, k, device, ts)
        return self._answer(user_id, items, ab.CHAMPION, engine, "popular", True, len(listing.rows), device, ts)

    def _answer(
        self,
        user_id: str,
        items: list[RecommendedVideo],
        variant: str,
        engine: Engine,
        served_from: str,
        degraded: bool,
        candidates: int,
        device: str,
        ts: datetime,
        in_session: bool = False,
    ) -> RecommendResponse:
        """The response, with a fresh request id; its slate queued as impressions (never blocks)."""
        request_id = self.request_ids.new(variant)
        video_ids = [item.video_id for item in items]
        self.slates.put(request_id, video_ids)
        if self.impressions is not None and video_ids:
            self.impressions.record(
                impression_rows(
                    request_id, user_id, video_ids, variant, self.config.experiment, engine.versions,
                    served_from, device, ts,
                )
            )  # fmt: skip
            self.observe.impressions(variant, len(video_ids))
        return RecommendResponse(
            request_id=request_id,
            user_id=user_id,
            items=items,
            variant=variant,
            experiment=self.config.experiment,
            model_versions=engine.versions,
            served_from=served_from,
            degraded=degraded,
            in_session=in_session,
            candidates=candidates,
            device=device,
            timestamp=ts,
        )

    def _open_precomputed(self) -> PrecomputedStore | None:
        """The store, opened on first use and again after a failed open: a missing store must not
        stop the service, and a worker whose open lost a race (two workers switching a new SQLite
        file to WAL at once: "database is locked") must not go without lists for its lifetime."""
        if self.precomputed is None and self.config.precomputed_url and self.precomputed_breaker.allow():
            try:
                self.precomputed = open_store(self.config.precomputed_url)
            except Exception as exc:
                self.precomputed_breaker.failure(exc)
        return self.precomputed

    def _precomputed(self, user_id: str, engine: Engine):
        store = self._open_precomputed()
        if store is None or not self.precomputed_breaker.allow():
            return None
        try:
            found = store.get(user_id, self.config.precomputed_ttl_s, engine.versions)
        except Exception as exc:
            self.precomputed_breaker.failure(exc)
            return None
        self.precomputed_breaker.success()
        return found

    @staticmethod
    def _not_blocked(
        rows: np.ndarray, exclude_rows: np.ndarray | None, engine: Engine, user_row: int | None
    ) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        if exclude_rows is not None and len(exclude_rows):
            keep &= ~np.isin(rows, exclude_rows)
        if user_row is not None:
            keep &= ~np.isin(rows, engine.seen_rows(user_row))
        return keep

    def _personalize(
        self, engine: Engine, listing: Suggestions, ranker_scores, k: int, device: str, ts: datetime
    ) -> list[RecommendedVideo]:
        config = self.config.rerank
        chosen = rerank(
            listing.rows, listing.relevance, engine.signals, engine.diversity_vectors, k, config, device, ts.hour
        )
        items = []
        for i, (row, score, pos) in enumerate(zip(chosen.rows, chosen.scores, chosen.positions, strict=True)):
            sources = listing.sources[pos]
            items.append(
                RecommendedVideo(
                    video_id=engine.video_ids[row],
                    rank=i + 1,
                    score=round(float(score), 6),
                    ranker_score=None
                    if ranker_scores is None or not np.isfinite(ranker_scores[pos])
                    else round(float(ranker_scores[pos]), 6),
                    sources=sources,
                    reason=reason(
                        sources[0] if sources else None,
                        chosen.trending[i],
                        chosen.fresh[i],
                        chosen.context[i],
                        config,
                        device,
                    ),
                )
            )
        return items

    # ---- similar, feedback -----------------------------------------------------------------------

    def similar(self, video_id: str, k: int = 10) -> SimilarResponse:
        state = self.state
        if state is None:
            raise NotReady(self.load_error or "models are loading")
        engine = state.engines[ab.CHAMPION]
        row = engine.video_row(video_id)
        if row is None:
            raise UnknownVideo(video_id)
        found = engine.similar(row, k)
        items = []
        for i, (r, s, sources) in enumerate(zip(found.rows, found.relevance, found.sources, strict=True)):
            why = (
                "similar content and watched by the same people"
                if len(sources) == 2
                else ("similar content" if sources == ["content"] else "watched by the same people")
            )
            items.append(
                SimilarVideo(
                    video_id=engine.video_ids[r], rank=i + 1, score=round(float(s), 6), sources=sources, reason=why
                )
            )
        return SimilarResponse(video_id=video_id, items=items, model_versions=engine.versions)

    def attribution(self, event: dict) -> tuple[str | None, str | None]:
        """(variant, None) when the event names an answer of this service, else (None, why not).

        The id itself says whether this deployment issued it and to which variant; the slot is
        checked when this worker still holds the slate (the report joins every worker's log)."""
        request_id = event.get("request_id")
        variant, why = self.request_ids.check(request_id)
        if variant is None:
            return None, why
        position, video_id = event.get("position"), event.get("video_id")
        slate = self.slates.peek(request_id)
        if slate is not None and position is not None and video_id is not None:
            if position > len(slate):
                return None, f"position {position} is past the {len(slate)} videos of request {request_id}"
            if slate[position - 1] != video_id:
                return (
                    None,
                    f"request {request_id} showed {slate[position - 1]!r} at position {position}, not {video_id!r}",
                )
        return variant, None

    def _push_fresh(self, accepted) -> int:
        """Push the accepted events' effect (user_recent, user_session) to the online store; returns
        how many users' rows were pushed. A store that is down loses nothing: the events are in
        the log, and the next ingest + materialization brings them online."""
        activity = accepted[accepted["event_type"] != "impression"]
        state = self.state
        if activity.empty or state is None:
            return 0
        users = sorted({str(u) for u in activity["user_id"]})
        try:
            previous = self.online.user_rows(users, with_times=True)
        except StoreUnavailable as exc:
            log.warning("fresh features of %d users not pushed (online store down: %s)", len(users), exc)
            return 0
        engine = state.engines[ab.CHAMPION]
        now = datetime.now(UTC)
        by_view: dict[str, list[dict]] = {}
        events_of = dict(tuple(activity.groupby(activity["user_id"].astype(str), sort=False)))
        for user_id, row in zip(users, previous, strict=True):
            events = events_of[user_id]
            for view, fresh in fresh_rows(row, events, engine.genres_of, now).items():
                by_view.setdefault(view, []).append({"user_id": user_id, **fresh})
        try:
            for view, rows in by_view.items():
                self.online.push(view, pd.DataFrame(rows))
        except StoreUnavailable as exc:
            log.warning("fresh features of %d users not pushed (online store down: %s)", len(users), exc)
            return 0
        return len(users)

    def feedback(self, events: list[dict]) -> FeedbackResponse:
        result = self.feedback_log.append(events)
        rejected = {r.index for r in result.rejected}
        attributed, unattributed = 0, []
        clicks: dict[str, int] = {}
        for i, event in enumerate(events):
            if i in rejected or event.get("request_id") is None:
                continue
            variant, why = self.attribution(event)
            if variant is None:
                unattributed.append(UnattributedEvent(index=i, request_id=str(event["request_id"]), reason=str(why)))
                continue
            attributed += 1
            if event.get("event_type") == "click":
                clicks[variant] = clicks.get(variant, 0) + 1
        for variant, n in clicks.items():
            self.observe.clicks(variant, n)
        pushed = self._push_fresh(result.accepted) if len(result.accepted) else 0
        # What a user just watched also stops being recommended by this worker at once (the push
        # covers every worker; this covers a push that failed).
        if len(result.accepted):
            watched = result.accepted[
                result.accepted["video_id"].notna() & (result.accepted["event_type"] != "impression")
            ]
            for user_id, group in watched.groupby("user_id"):
                seen = list(self.recent_seen.fresh(user_id) or [])
                seen.extend(group["video_id"].astype(str))
                self.recent_seen.put(user_id, seen[-200:])
        return FeedbackResponse(
            batch_id=result.batch_id,
            accepted=len(result.accepted),
            rejected=[RejectedEvent(index=r.index, event_id=r.event_id, reasons=r.reasons) for r in result.rejected],
            attributed=attributed,
            unattributed=unattributed,
            pushed_users=pushed,
            log_file=str(result.log_file) if result.log_file else None,
            quarantine_file=str(result.quarantine_file) if result.quarantine_file else None,
        )
