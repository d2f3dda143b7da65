"""A simulated audience for A/B tests before real traffic.

Viewers whose true tastes are known (an `Audience`: an affinity for every (user, video) pair)
ask a recommender (a `Target`: the HTTP service, or fitted systems in process) for k videos and
react to the slate. The viewer model (`ViewerModel`, one seeded numpy Generator per user):

- A session opens with a request for a slate of k videos. The viewer looks down it; position p
  (1-based) is examined with probability 1 / log2(p + 1) (position bias: the DCG discount).
- An examined video is clicked with probability sigmoid(click_bias + click_slope * affinity),
  the synthetic world's click curve, so the two worlds agree on what an affinity means.
- A click is played with probability p_play; the share of it watched, and whether the viewer
  then likes or dislikes it, come from the synthetic world's own `completion` and `reactions`
  (affinity and duration in, Beta-distributed completion out).
- After the slate the viewer asks for another one (the session goes on) with probability
  clip(continue_base + continue_slope * satisfaction, 0, 1), satisfaction being the mean
  completion of the slate's watches (0 when nothing was watched), for at most max_slates
  slates. Videos already shown in the session, or watched in an earlier one, are excluded.
- Time runs on: think time before every click and between slates, the watch time itself, a short
  delay before play and before a reaction. A session ends by max_session_s (a watch running past
  it is cut short); a user's sessions start session_spacing_s apart, at a random offset that
  keeps more than 30 minutes (the sessionising gap) between one session's end and the next start.

So a better recommender (higher affinity in the top slots) gets more clicks, more watch time
and longer sessions. Events are the canonical feedback events the service's /feedback takes,
carrying the request_id and position of the slate that caused them. A user's events depend only
on (seed, user index) and the target's answers, never on how many users run at once.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import pandas as pd

from feature_repo import schema
from feature_repo.synthetic import SyntheticConfig, build_world, completion, reactions
from models.base import Recommender
from models.ease import EASE
from models.interactions import Interactions
from models.ranker import FeatureLookup
from models.two_stage import Requests, TwoStage
from serving import ab
from serving.feedback import FeedbackLog
from serving.impressions import impression_rows, new_request_id, write_impressions
from serving.schemas import MAX_EXCLUDE, MAX_FEEDBACK_EVENTS

FEEDBACK_BATCH = MAX_FEEDBACK_EVENTS  # events per POST /feedback (VIDREC_FEEDBACK_MAX_EVENTS, as the service reads it)
DEFAULT_DURATION_S = 1500.0  # a video of unknown length: about the synthetic catalogue's median
FILM_DURATION_S = 6000.0  # MovieLens has no durations; its titles are feature films
SESSION_GAP_S = 30 * 60  # the idle gap after which a viewer's next event opens a new session


# ---- who watches: the audience and its true tastes ------------------------------------------------


@dataclass(frozen=True)
class AffinityScale:
    """The synthetic world's affinity distribution, the scale every audience's truth is put on."""

    mean: float
    std: float
    low: float  # 1st percentile: what a video the audience does not know gets
    high: float  # the largest affinity of the world: no truth goes past it


@functools.cache
def affinity_scale() -> AffinityScale:
    """Measured once on the default synthetic world (every user x video pair)."""
    world = build_world(SyntheticConfig())
    n_users, n_videos = len(world.users), len(world.videos)
    values = world.affinity(np.repeat(np.arange(n_users), n_videos), np.tile(np.arange(n_videos), n_users))
    return AffinityScale(
        float(values.mean()), float(values.std()), float(np.percentile(values, 1)), float(values.max())
    )


@dataclass(frozen=True, eq=False)
class Audience:
    """Users with known tastes: `truth(user_index, video_rows)` is how much the user likes each video.

    `user_index` indexes `user_ids`; video rows index `video_ids` (and `durations_s`).
    """

    user_ids: np.ndarray
    video_ids: np.ndarray
    durations_s: np.ndarray
    truth: Callable[[int, np.ndarray], np.ndarray]
    caveat: str
    _video_index: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_video_index", pd.Index(self.video_ids))

    def affinity(self, user_index: int, video_ids: Sequence[str]) -> np.ndarray:
        """Affinity of the user for each video; videos the audience does not know get a low one."""
        rows = self._video_index.get_indexer(pd.Index(video_ids, dtype=object))
        out = np.full(len(rows), affinity_scale().low)
        known = rows >= 0
        if known.any():
            out[known] = self.truth(user_index, rows[known])
        return out

    def duration_s(self, video_ids: Sequence[str]) -> np.ndarray:
        rows = self._video_index.get_indexer(pd.Index(video_ids, dtype=object))
        return np.where(rows >= 0, self.durations_s[np.maximum(rows, 0)], DEFAULT_DURATION_S)


def synthetic_audience(config: SyntheticConfig) -> Audience:
    """The synthetic world's users: their affinity is the very truth its events were drawn from."""
    world = build_world(config)

    def truth(user_index: int, video_rows: np.ndarray) -> np.ndarray:
        return world.affinity(np.full(len(video_rows), user_index), video_rows)

    return Audience(
        user_ids=world.users["user_id"].to_numpy(str),
        video_ids=world.videos["video_id"].to_numpy(str),
        durations_s=np.asarray(world.video_duration_s, dtype=float),
        truth=truth,
        caveat=f"synthetic world, seed {config.seed}",
    )


def movielens_audience(events: pd.DataFrame, videos: pd.DataFrame, l2: float = 200.0) -> Audience:
    """MovieLens-like users whose truth is an EASE model fitted on ALL of each user's events.

    Scores are z-scored per user over the catalogue and put on the synthetic world's affinity
    scale (mean and spread, capped at its largest value), so the viewer model reads them alike.
    """
    data = Interactions.from_events(events, catalog=videos["video_id"], weighting="binary")
    model = EASE(l2=l2).fit(data)
    scale = affinity_scale()

    def truth(user_index: int, video_rows: np.ndarray) -> np.ndarray:
        scores = np.asarray(model.score(np.array([user_index]))[0], dtype=np.float64)
        std = scores.std()
        z = (scores - scores.mean()) / (std if std > 0 else 1.0)
        return np.clip(scale.mean + scale.std * z[video_rows], None, scale.high)

    if "duration_s" in videos:
        known = pd.Series(videos["duration_s"].to_numpy(float), index=videos["video_id"].astype(str))
        durations = known.reindex(data.video_ids.astype(str)).fillna(FILM_DURATION_S).to_numpy(float)
    else:
        durations = np.full(data.n_videos, FILM_DURATION_S)
    return Audience(
        user_ids=data.user_ids.astype(str),
        video_ids=data.video_ids.astype(str),
        durations_s=durations,
        truth=truth,
        caveat=(
            "the viewers' tastes are an EASE model fitted on all of their events: this truth favours "
            "EASE-like recommenders, so the simulated gains of an EASE-like model are optimistic"
        ),
    )


# ---- how they watch -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewerModel:
    click_bias: float = -4.0  # the synthetic world's click curve (feature_repo.synthetic)
    click_slope: float = 1.5
    p_play: float = 0.9  # a click that starts playing (the world's funnel too)
    continue_base: float = 0.3  # asks for another slate after watching nothing
    continue_slope: float = 0.6  # ... and this much more per unit of mean completion
    max_slates: int = 5
    think_s: tuple[float, float] = (2.0, 12.0)  # before a click, and before asking again
    play_delay_s: tuple[float, float] = (0.5, 3.0)  # click -> play
    reaction_delay_s: tuple[float, float] = (1.0, 10.0)  # end of the watch -> like/dislike
    max_session_s: float = 3 * 3600.0
    session_spacing_s: float = 8 * 3600.0
    min_session_gap_s: float = 45 * 60.0  # > SESSION_GAP_S, so two sessions never merge

    def __post_init__(self) -> None:
        if self.min_session_gap_s <= SESSION_GAP_S:
            raise ValueError(f"min_session_gap_s must exceed {SESSION_GAP_S} s (the sessionising gap)")
        if self.session_spacing_s < self.max_session_s + self.reaction_delay_s[1] + self.min_session_gap_s:
            raise ValueError("session_spacing_s must fit a whole session, its last reaction and the gap")
        if self.max_slates < 1:
            raise ValueError("max_slates must be at least 1")

    def examination(self, positions: np.ndarray) -> np.ndarray:
        """Probability that the viewer looks at 1-based slate `positions`."""
        return 1.0 / np.log2(np.asarray(positions, dtype=float) + 1.0)

    def p_click(self, affinity: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.click_bias + self.click_slope * np.asarray(affinity))))

    def p_continue(self, satisfaction: float) -> float:
        return float(np.clip(self.continue_base + self.continue_slope * satisfaction, 0.0, 1.0))

    def session_offset_s(self) -> float:
        """Latest start of a session after its slot opens: room for the session, a reaction and the gap."""
        return self.session_spacing_s - self.max_session_s - self.reaction_delay_s[1] - self.min_session_gap_s


def latest_start(
    sessions_per_user: int, viewer: ViewerModel = ViewerModel(), now: pd.Timestamp | None = None
) -> pd.Timestamp:
    """The latest `simulate` start whose timeline ends by `now`: a live service refuses future events."""
    now = now or pd.Timestamp.now(tz="UTC")
    return (now - pd.Timedelta(seconds=sessions_per_user * viewer.session_spacing_s)).floor("s")


# ---- what they ask: the target protocol and its two implementations --------------------------------


@dataclass(frozen=True)
class Slate:
    request_id: str
    variant: str
    video_ids: list[str]


class Target(Protocol):
    def recommend(self, user_id: str, k: int, device: str, ts: pd.Timestamp, exclude: list[str]) -> Slate: ...

    def send(self, events: list[dict]) -> None:
        """Deliver canonical feedback events; also called (maybe empty) once at the end, to flush."""


class TargetError(RuntimeError):
    """The target refused a request or some of the simulated events."""


class HttpTarget:
    """The BentoML service: POST /recommend per slate, POST /feedback per batch of events."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        # One client for every worker thread: it is thread-safe and keeps connections alive.
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout)

    def recommend(self, user_id: str, k: int, device: str, ts: pd.Timestamp, exclude: list[str]) -> Slate:
        body = {
            "user_id": user_id,
            "k": k,
            "context": {"device": device, "timestamp": ts.isoformat()},
            "exclude": exclude[-MAX_EXCLUDE:],  # the service takes this many; it remembers recent watches too
        }
        answer = self._post("/recommend", body)
        items = sorted(answer["items"], key=lambda item: item["rank"])
        return Slate(answer["request_id"], answer["variant"], [item["video_id"] for item in items])

    def send(self, events: list[dict]) -> None:
        for first in range(0, len(events), FEEDBACK_BATCH):
            answer = self._post("/feedback", {"events": events[first : first + FEEDBACK_BATCH]})
            if answer.get("rejected"):
                raise TargetError(f"POST {self.base_url}/feedback rejected simulated events: {answer['rejected'][:5]}")

    def close(self) -> None:
        self.client.close()

    def _post(self, path: str, body: dict) -> dict:
        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise TargetError(f"POST {self.base_url}{path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise TargetError(f"POST {self.base_url}{path} answered {response.status_code}: {response.text[:1000]}")
        return response.json()


class RankingSystem(Protocol):
    """What `OfflineTarget` serves from: `models.two_stage.TwoStage`, or `GeneratorSystem`."""

    @property
    def data(self) -> Interactions: ...

    def rank(self, requests: Requests, k: int) -> pd.DataFrame:
        """Top-k per requested user row: user_id, video_id, rank."""


@dataclass
class GeneratorSystem:
    """One fitted candidate generator ranked on its own scores (e.g. a popularity baseline)."""

    model: Recommender

    @property
    def data(self) -> Interactions:
        return self.model._require()

    def rank(self, requests: Requests, k: int) -> pd.DataFrame:
        rows = np.asarray(requests.user_rows)
        ids, _ = self.model.recommend(rows, k)
        user = np.repeat(rows, ids.shape[1])
        rank = np.tile(np.arange(1, ids.shape[1] + 1), len(rows))
        kept = ids.ravel() >= 0
        return pd.DataFrame(
            {
                "user_id": self.data.user_ids[user[kept]],
                "video_id": self.data.video_ids[ids.ravel()[kept]],
                "rank": rank[kept],
            }
        )


class FeatureRanked:
    """A registered two-stage system with the Feast lookup its ranker was trained with
    (`models.lifecycle.train.feast_lookup`): the offline twin of the service's online reads.

    Feast's offline retrieval is slow per call and not thread-safe, so features are read as of one
    time (`as_of`, e.g. the simulation's start, as the online store holds one materialization)
    and request times to the hour (the context features use hour, weekday and device): after the
    first slates every retrieval is a hit in the lookup's cache. One rank at a time."""

    def __init__(self, system: TwoStage, lookup: FeatureLookup, as_of: pd.Timestamp):
        self.system, self.lookup, self.as_of = system, lookup, pd.Timestamp(as_of)
        self._lock = threading.Lock()

    @property
    def data(self) -> Interactions:
        return self.system.data

    def rank(self, requests: Requests, k: int) -> pd.DataFrame:
        hourly = pd.to_datetime(requests.request_ts, utc=True).dt.floor("h").reset_index(drop=True)
        fixed = Requests(
            requests.user_rows, hourly, requests.device.reset_index(drop=True), pd.Series([self.as_of] * len(hourly))
        )
        with self._lock:
            return self.system.rank(fixed, k, self.lookup)


def registered_system(champion, settings, as_of: pd.Timestamp) -> RankingSystem:
    """A model loaded from the registry (`models.lifecycle.registry.load_champion`) as a system to
    serve offline: with the Feast lookup of its feature service when its ranker reads one."""
    if not champion.feature_service:
        return champion.system
    from models.lifecycle.train import feast_lookup

    return FeatureRanked(champion.system, feast_lookup(settings, champion.feature_service), as_of)


class OfflineTarget:
    """Fitted systems in process, A/B split like the service, writing the service's logs.

    Variant by `serving.ab.assign`; the slate is the system's ranking minus `exclude`. Users the
    system does not know get its popularity order (what the service falls back to). Impressions
    go to `<log_root>/impressions/` and feedback to `<log_root>/events/`, stamped with the
    simulated time (the day folders follow the simulated clock, and the log accepts the events).
    """

    def __init__(
        self,
        systems: Mapping[str, RankingSystem],
        experiment: str,
        challenger_share: float,
        log_root: Path,
        model_versions: Mapping[str, Mapping[str, str]] | None = None,
    ):
        if ab.CHAMPION not in systems or not set(systems) <= set(ab.VARIANTS):
            raise ValueError(f"systems must have a {ab.CHAMPION!r} key and optionally {ab.CHALLENGER!r}")
        if challenger_share > 0 and ab.CHALLENGER not in systems:
            raise ValueError("a challenger share needs a 'challenger' system")
        self.systems, self.experiment, self.share = dict(systems), experiment, challenger_share
        self.log_root = Path(log_root)
        self.versions = {v: dict((model_versions or {}).get(v, {"system": f"offline-{v}"})) for v in systems}
        self.popular = {v: _popularity_order(s.data) for v, s in self.systems.items()}
        catalog = sorted({str(v) for s in self.systems.values() for v in s.data.video_ids})
        self.feedback = FeedbackLog(self.log_root, lambda: catalog)
        self.fallback_slates = 0
        self._impressions: list[dict] = []
        self._lock = threading.Lock()

    def recommend(self, user_id: str, k: int, device: str, ts: pd.Timestamp, exclude: list[str]) -> Slate:
        variant = ab.assign(user_id, self.experiment, self.share)
        system = self.systems[variant]
        row = int(system.data.user_rows([user_id])[0])
        if row >= 0:
            ranked = system.rank(Requests.at(np.array([row]), pd.Timestamp(ts), device), k + len(exclude))
            video_ids, served_from = ranked.sort_values("rank")["video_id"].astype(str).tolist(), "realtime"
        else:
            video_ids, served_from = system.data.video_ids[self.popular[variant][: k + len(exclude)]], "popular"
        blocked = set(exclude)
        video_ids = [str(v) for v in video_ids if v not in blocked][:k]
        request_id = new_request_id(variant)
        rows = impression_rows(
            request_id, user_id, video_ids, variant, self.experiment, self.versions[variant], served_from, device, ts
        )
        with self._lock:
            self._impressions.extend(rows)
            self.fallback_slates += served_from == "popular"
        return Slate(request_id, variant, video_ids)

    def send(self, events: list[dict]) -> None:
        """Write the impressions so far, then the events: the service's two logs."""
        with self._lock:
            if self._impressions:
                latest = max(pd.Timestamp(r["event_ts"]) for r in self._impressions)
                write_impressions(self.log_root, self._impressions, now=latest)
                self._impressions = []
            if events:
                latest = max(pd.Timestamp(e["event_ts"]) for e in events)
                result = self.feedback.append(events, now=latest)
                if result.rejected:
                    raise TargetError(f"the feedback log rejected simulated events: {result.rejected[:5]}")


def _popularity_order(data: Interactions) -> np.ndarray:
    """Video rows by how many users engaged with them, most first."""
    counts = np.asarray((data.matrix > 0).sum(axis=0)).ravel()
    return np.argsort(-counts, kind="stable")


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class Counts:
    users: int = 0
    sessions: int = 0
    slates: int = 0
    empty_slates: int = 0
    impressions: int = 0
    clicks: int = 0
    plays: int = 0
    watches: int = 0
    watch_time_s: float = 0.0
    likes: int = 0
    dislikes: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"ctr": self.ctr}


@dataclass
class SimulationSummary:
    total: Counts
    per_variant: dict[str, Counts]
    elapsed_s: float
    seed: int
    caveat: str

    def as_dict(self) -> dict:
        return self.total.as_dict() | {
            "per_variant": {v: c.as_dict() for v, c in sorted(self.per_variant.items())},
            "elapsed_s": self.elapsed_s,
            "seed": self.seed,
            "caveat": self.caveat,
        }


@dataclass
class _UserRun:
    """What one user's sessions produced, per variant (a user normally sees one)."""

    per_variant: dict[str, Counts] = field(default_factory=dict)

    def counts(self, variant: str) -> Counts:
        return self.per_variant.setdefault(variant, Counts())


class _Outbox:
    """Events of all workers, sent to the target in batches (sending outside the lock)."""

    def __init__(self, target: Target, batch_size: int):
        self.target, self.batch_size = target, batch_size
        self._events: list[dict] = []
        self._lock = threading.Lock()

    def put(self, events: list[dict]) -> None:
        with self._lock:
            self._events.extend(events)
            if len(self._events) < self.batch_size:
                return
            batch, self._events = self._events, []
        self.target.send(batch)

    def close(self) -> None:
        with self._lock:
            batch, self._events = self._events, []
        self.target.send(batch)


def simulate(
    audience: Audience,
    target: Target,
    *,
    users: int | None = None,
    sessions_per_user: int = 3,
    k: int = 10,
    concurrency: int = 4,
    seed: int = 0,
    start: pd.Timestamp | None = None,
    devices: Sequence[str] = schema.KNOWN_DEVICES,
    viewer: ViewerModel = ViewerModel(),
    batch_size: int = FEEDBACK_BATCH,
    progress: Callable[[int], None] | None = None,
    among: Sequence[str] | None = None,
) -> SimulationSummary:
    """Play `sessions_per_user` sessions of `users` audience members (a seeded draw; all when None)
    against `target`, `concurrency` users at a time. `among`: draw only from these user ids.

    Session i of a user starts in [start + i * spacing, start + (i + 1) * spacing). `start`
    defaults to `latest_start(...)`, the latest start whose timeline ends by now; an HttpTarget
    refuses a later one (the service rejects future events). `progress(1)` after each user, the
    advance(n) of the stage functions' progress bars.
    """
    began = time.monotonic()
    start = latest_start(sessions_per_user, viewer) if start is None else pd.Timestamp(start).floor("us")
    end = start + pd.Timedelta(seconds=sessions_per_user * viewer.session_spacing_s)
    if isinstance(target, HttpTarget) and end > pd.Timestamp.now(tz="UTC"):
        raise ValueError(
            f"the simulated timeline ends at {end}, after now: start by {latest_start(sessions_per_user, viewer)}"
        )
    eligible = np.arange(len(audience.user_ids)) if among is None else np.flatnonzero(np.isin(audience.user_ids, among))
    chosen = eligible[_pick_users(len(eligible), users, seed)]
    plan = _Plan(
        audience, target, _Outbox(target, batch_size), viewer, sessions_per_user, k, start, tuple(devices), seed
    )

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(plan.run_user, int(u)) for u in chosen]
        try:
            for future in as_completed(futures):
                future.result()  # a worker's error stops the run
                if progress is not None:
                    progress(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    plan.outbox.close()

    total, per_variant = Counts(), {}
    for result in (f.result() for f in futures):  # in user order: float sums do not depend on timing
        for variant, counts in result.per_variant.items():
            per_variant.setdefault(variant, Counts()).add(counts)
            total.add(counts)
    return SimulationSummary(total, per_variant, time.monotonic() - began, seed, audience.caveat)


def _duration(seconds: float) -> pd.Timedelta:
    """Whole microseconds: the logs' timestamps hold no finer time (nanoseconds fail their writes)."""
    return pd.Timedelta(microseconds=round(float(seconds) * 1e6))


def _pick_users(n: int, users: int | None, seed: int) -> np.ndarray:
    if users is None or users >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed]).choice(n, size=users, replace=False))


@dataclass(frozen=True)
class _Plan:
    """What every user's run shares."""

    audience: Audience
    target: Target
    outbox: _Outbox
    viewer: ViewerModel
    sessions_per_user: int
    k: int
    start: pd.Timestamp
    devices: tuple[str, ...]
    seed: int

    def run_user(self, user_index: int) -> _UserRun:
        """One user's sessions, in order; every random draw comes from the user's own generator."""
        rng = np.random.default_rng([self.seed, user_index])
        viewer = self.viewer
        user_id = str(self.audience.user_ids[user_index])
        run = _UserRun()
        watched: list[str] = []  # across sessions: a viewer is not offered what they already saw
        for number in range(self.sessions_per_user):
            offset_s = number * viewer.session_spacing_s + rng.uniform(0, viewer.session_offset_s())
            opens = self.start + _duration(offset_s)
            session = _Session(
                user_id=user_id,
                session_id=f"sim{self.seed}-{user_id}-{number}",
                device=str(rng.choice(self.devices)),
                t=opens,
                deadline=opens + _duration(viewer.max_session_s),
            )
            for slate_number in range(viewer.max_slates):
                exclude = list(dict.fromkeys([*session.shown, *watched]))[-MAX_EXCLUDE:]
                slate = self.target.recommend(user_id, self.k, session.device, session.t, exclude)
                counts = run.counts(slate.variant)  # users and sessions count under their first slate's
                counts.users += int(number == 0 and slate_number == 0)
                counts.sessions += int(slate_number == 0)
                if not slate.video_ids:
                    counts.empty_slates += 1
                    break
                events, satisfaction = _watch_slate(self.audience, viewer, rng, user_index, session, slate, counts)
                watched.extend(e["video_id"] for e in events if e["event_type"] == "watch")
                self.outbox.put(events)
                if rng.random() >= viewer.p_continue(satisfaction):
                    break
                session.t += _duration(rng.uniform(*viewer.think_s))
                if session.t >= session.deadline:
                    break
        return run


@dataclass
class _Session:
    user_id: str
    session_id: str
    device: str
    t: pd.Timestamp  # the simulated clock
    deadline: pd.Timestamp
    shown: list[str] = field(default_factory=list)


def _watch_slate(
    audience: Audience,
    viewer: ViewerModel,
    rng: np.random.Generator,
    user_index: int,
    session: _Session,
    slate: Slate,
    counts: Counts,
) -> tuple[list[dict], float]:
    """The viewer goes down the slate; returns its events and the satisfaction it left.

    Every draw is made for every slot up front, so the number of draws per slate is fixed and
    one slot's outcome never shifts the randomness of the next.
    """
    videos = slate.video_ids
    n = len(videos)
    affinity = audience.affinity(user_index, videos)
    duration = audience.duration_s(videos)
    examined = rng.random(n) < viewer.examination(np.arange(1, n + 1))
    clicked = examined & (rng.random(n) < viewer.p_click(affinity))
    played = clicked & (rng.random(n) < viewer.p_play)
    share = completion(affinity, duration, rng)
    like, dislike = reactions(affinity, share, rng)
    think = rng.uniform(*viewer.think_s, size=n)
    play_delay = rng.uniform(*viewer.play_delay_s, size=n)
    reaction_delay = rng.uniform(*viewer.reaction_delay_s, size=n)

    session.shown.extend(videos)
    counts.slates += 1
    counts.impressions += n
    events: list[dict] = []
    watched_shares: list[float] = []

    def event(i: int, kind: str, watch_time_s: float | None = None) -> None:
        events.append(
            {
                "event_id": None,
                "user_id": session.user_id,
                "video_id": videos[i],
                "event_ts": session.t.isoformat(),
                "event_type": kind,
                "watch_time_s": watch_time_s,
                "device": session.device,
                "session_id": session.session_id,
                "request_id": slate.request_id,
                "position": i + 1,
            }
        )

    for i in np.flatnonzero(clicked).tolist():  # Python ints: events go out as JSON
        session.t += _duration(think[i])
        if session.t >= session.deadline:
            break
        event(i, "click")
        counts.clicks += 1
        if not played[i]:
            continue
        session.t += _duration(play_delay[i])
        event(i, "play")
        counts.plays += 1
        left_s = max((session.deadline - session.t).total_seconds(), 0.0)
        watch_s = float(min(share[i] * duration[i], left_s))
        session.t += _duration(watch_s)
        event(i, "watch", watch_s)
        counts.watches += 1
        counts.watch_time_s += watch_s
        watched_shares.append(watch_s / duration[i])
        if watch_s >= left_s:  # out of time: the viewer leaves mid-video, without a reaction
            break
        if like[i] or dislike[i]:
            session.t += _duration(reaction_delay[i])
            event(i, "like" if like[i] else "dislike")
            counts.likes += int(like[i])
            counts.dislikes += int(dislike[i])
    return events, float(np.mean(watched_shares)) if watched_shares else 0.0


# ---- the training gate's engagement check -----------------------------------------------------------


def engagement_check(
    champion: RankingSystem,
    challenger: RankingSystem,
    audience: Audience,
    users: Sequence[str],
    start: pd.Timestamp,
    *,
    n_users: int = 300,
    sessions_per_user: int = 2,
    k: int = 10,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Simulated watch time per session of `challenger` vs `champion`: an offline 50/50 A/B test
    of up to `n_users` of `users` from `start`, analysed like a real one. Returns the metric's
    figures, interval, p-value and verdict ("challenger worse" blocks a promotion)."""
    import tempfile

    from models.lifecycle import experiments

    experiment = f"gate-seed{seed}"
    with tempfile.TemporaryDirectory(prefix="vidrec-engagement-") as folder:
        target = OfflineTarget({ab.CHAMPION: champion, ab.CHALLENGER: challenger}, experiment, 0.5, Path(folder))
        summary = simulate(
            audience, target, users=n_users, sessions_per_user=sessions_per_user, k=k, concurrency=1, seed=seed,
            start=start, among=users,
        )  # fmt: skip
        end = start + pd.Timedelta(seconds=sessions_per_user * ViewerModel().session_spacing_s)
        logs = experiments.read_logs(Path(folder), experiment, start, end)
        report = experiments.analyze(logs, 0.5, alpha=alpha, seed=seed)
    metric = report.metrics[experiments.DEFAULT_PRIMARY]
    return {
        "metric": metric.name,
        "champion": metric.champion.value,
        "challenger": metric.challenger.value,
        "diff": metric.diff,
        "low": metric.diff_low,
        "high": metric.diff_high,
        "p_value": metric.p_value,
        "verdict": metric.verdict,
        "method": metric.method,
        "users": int(summary.total.users),
        "sessions": int(summary.total.sessions),
        "srm_flagged": bool(report.srm.flagged),
        "caveat": audience.caveat,
    }
