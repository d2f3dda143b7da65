"""Seeded synthetic video-platform data in the canonical format (see `feature_repo.schema`).

Real interaction logs are scarce and private, so the pipeline is exercised on data drawn from a
small latent model instead: users and videos have taste vectors and genre profiles, videos have
Zipf-like popularity, and every event follows from those through a session funnel
(search -> impressions -> click -> play -> watch -> like/dislike/rating/comment/share).
Because the truth is known (`build_world`), tests and benchmarks can check that a recommender
recovers it.

Events are generated and written chunk by chunk, one parquet file per chunk, so memory stays
bounded by `SyntheticConfig.chunk_events` however many events are asked for. Everything per
event is vectorised with numpy; Python loops run only over users, videos or chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from feature_repo import schema
from feature_repo.lake import write_parquet_atomic

# --- Vocabulary --------------------------------------------------------------------------------
# Words are disjoint between genres so that text features of titles, tags and queries carry genre.

GENRES: tuple[str, ...] = (
    "action",
    "comedy",
    "drama",
    "horror",
    "sci-fi",
    "documentary",
    "animation",
    "music",
    "sports",
    "cooking",
    "gaming",
    "travel",
)
# Share of the catalogue whose primary genre is each of GENRES.
_GENRE_SHARE = np.array([0.11, 0.12, 0.10, 0.06, 0.07, 0.08, 0.07, 0.10, 0.07, 0.06, 0.10, 0.06])
# Typical length per genre: music clips are short, action and horror are mostly films.
_GENRE_MEDIAN_DURATION_S = np.array([5400, 1200, 3000, 5000, 4000, 2700, 900, 240, 600, 720, 1500, 900], dtype=float)
_TITLE_WORDS: dict[str, tuple[str, ...]] = {
    genre: tuple(words.split())
    for genre, words in {
        "action": "strike pursuit vengeance fury mercenary showdown blast rogue heist commando explosive takedown",
        "comedy": "hilarious roommates prank awkward wedding goofy blunder sitcom banter mishap silly roast",
        "drama": "secrets family betrayal silence letters inheritance redemption widow courtroom promise tears homecoming",
        "horror": "haunted curse possession nightmare cabin ghost ritual blood shadows demon asylum screams",
        "sci-fi": "galaxy android starship quantum colony cyborg wormhole mars alien cosmos neural dystopia",
        "documentary": "untold investigation history wildlife inside empire climate archive truth ocean evidence portrait",
        "animation": "cartoon dragon magical kingdom bunny pixel fairy robot heroes toon enchanted critters",
        "music": "live concert acoustic remix album chorus guitar symphony beats vinyl ballad jam",
        "sports": "championship goal marathon knockout derby playoffs highlights stadium sprint dunk tournament comeback",
        "cooking": "recipe pasta kitchen baking grill spicy dessert noodles chef brunch sourdough curry",
        "gaming": "speedrun walkthrough boss loot multiplayer esports playthrough raid clutch modded respawn dungeon",
        "travel": "backpacking island roadtrip tokyo hiking beaches hidden journey nomad alps safari streetfood",
    }.items()
}
_TAGS: dict[str, tuple[str, ...]] = {
    genre: tuple(tags.split())
    for genre, tags in {
        "action": "explosions car-chase martial-arts stunts spy gunfight hero adrenaline",
        "comedy": "funny parody satire feel-good romcom improv sketch slapstick",
        "drama": "emotional family-drama period-piece biopic tearjerker legal character-study slow-burn",
        "horror": "scary jump-scare supernatural slasher creepy zombies occult gore",
        "sci-fi": "space future robots time-travel aliens cyberpunk ai space-opera",
        "documentary": "true-story nature science true-crime educational biography politics history-doc",
        "animation": "kids anime 3d-animation family-friendly stop-motion fantasy cute animated-short",
        "music": "live-music pop rock hip-hop jazz electronic classical music-video",
        "sports": "football basketball tennis running boxing olympics fitness extreme-sports",
        "cooking": "recipes vegan baking-tips street-food quick-meals dessert-recipes bbq meal-prep",
        "gaming": "lets-play fps rpg strategy retro-games indie-games speedrunning game-review",
        "travel": "vlog adventure-travel budget-travel city-guide nature-trails food-tour van-life beach-life",
    }.items()
}
_TITLE_TEMPLATES: tuple[str, ...] = ("{a} {b}", "The {a} {b}", "{a} {b}: {c}", "{a} of the {b}")
_COMMENTS: tuple[str, ...] = (
    "loved this",
    "great video",
    "not my thing",
    "too long",
    "more like this please",
    "watched it twice",
    "the ending though",
    "underrated",
    "meh",
    "thanks for sharing",
)
_SEARCH_QUERIES_PER_GENRE = 16

# --- Users -------------------------------------------------------------------------------------

_AGE_BUCKETS = (("18-24", 0.22), ("25-34", 0.30), ("35-44", 0.22), ("45-54", 0.14), ("55+", 0.12))
_GENDERS = (("f", 0.48), ("m", 0.48), ("x", 0.04))
_OCCUPATIONS = ("student", "engineer", "artist", "teacher", "healthcare", "sales", "retired", "other")
_P_OCCUPATION_UNKNOWN = 0.3
# Country, share of users, UTC offset in hours (one zone per country is close enough).
_COUNTRIES = (
    ("US", 0.35, -5.0),
    ("GB", 0.10, 0.0),
    ("DE", 0.08, 1.0),
    ("FR", 0.06, 1.0),
    ("BR", 0.10, -3.0),
    ("IN", 0.15, 5.5),
    ("JP", 0.06, 9.0),
    ("CA", 0.05, -5.0),
    ("MX", 0.05, -6.0),
)
_LANGUAGES = (("en", 0.80), ("es", 0.06), ("de", 0.03), ("fr", 0.03), ("pt", 0.03), ("ja", 0.03), ("hi", 0.02))
_SIGNUP_SPAN_DAYS = 3 * 365
_PUBLISHED_BEFORE_SPAN_DAYS = 365
_P_PUBLISHED_IN_WINDOW = 0.15

# --- Devices and time of day -------------------------------------------------------------------

_DEVICE = {name: i for i, name in enumerate(schema.DEVICES)}
_REAL_DEVICES = np.array([_DEVICE[d] for d in schema.KNOWN_DEVICES])
_PREFERRED_DEVICE_SHARE = np.array([0.50, 0.20, 0.20, 0.10])
_P_PREFERRED_DEVICE = 0.8
_P_UNKNOWN_DEVICE = 0.01
# Relative session starts per local hour 0..23 on each device: tv in the evening, desktop in
# working hours, mobile all day with commute peaks, unknown flat.
_HOUR_PROFILE = {
    "mobile": [2, 1, 0.6, 0.4, 0.4, 0.8, 2.5, 5, 6, 4, 3, 3.5, 4.5, 4, 3.5, 4, 5, 6.5, 6, 5, 5, 5.5, 5, 3.5],
    "desktop": [0.5, 0.3, 0.2, 0.2, 0.2, 0.3, 0.8, 2, 5, 7, 8, 8, 7, 8, 8, 7, 6, 4, 3, 2.5, 2, 1.5, 1, 0.7],
    "tv": [1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.5, 0.8, 1, 1, 1, 1.2, 1.5, 1.5, 1.5, 1.8, 2.5, 4, 6, 9, 10, 9, 6, 3],
    "tablet": [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 2.5, 2.5, 2.5, 3, 3, 3, 3, 3.5, 4, 5, 6, 7, 7.5, 6.5, 4.5, 2],
    "unknown": [1] * 24,
}
_HOUR_CDF = np.cumsum([_HOUR_PROFILE[d] for d in schema.DEVICES], axis=1)
_HOUR_CDF /= _HOUR_CDF[:, -1:]

# --- Behaviour ---------------------------------------------------------------------------------
# Popularity ~ rank^-_ZIPF_EXPONENT; user activity ~ Pareto(_ACTIVITY_SHAPE): both heavy-tailed.
_ZIPF_EXPONENT = 1.0
_ACTIVITY_SHAPE = 1.5
_GENRE_CONCENTRATION = 2.0  # Dirichlet total mass: small, so most users have one clear favourite
_FACTOR_NOISE = 0.5
# Affinity = taste dot product + genre match + popularity bias.
_W_TASTE, _W_GENRE, _W_POPULARITY = 2.0, 2.0, 0.3
_P_SEARCH = 0.15
_SLATE_MIN, _SLATE_EXTRA_MEAN, _SLATE_MAX = 3, 5.0, 20
# Share of slate slots filled from the user's genres rather than by global popularity.
_P_TASTE_SLOT, _P_TASTE_SLOT_AFTER_SEARCH = 0.35, 0.8
_PUBLISH_RETRIES = 4
_CLICK_BIAS, _CLICK_SLOPE, _CLICK_POSITION_DECAY = -4.0, 1.5, 0.08
_P_PLAY = 0.9
_COMPLETION_BIAS, _COMPLETION_SLOPE, _COMPLETION_LENGTH_PENALTY = -1.8, 1.0, 0.3
_COMPLETION_CONCENTRATION = 3.0
_LIKE_BIAS, _LIKE_AFFINITY, _LIKE_COMPLETION = -5.0, 1.0, 2.5
_DISLIKE_BIAS, _DISLIKE_AFFINITY, _DISLIKE_COMPLETION = -0.5, -1.0, -3.0
_P_RATING, _RATING_BIAS, _RATING_AFFINITY, _RATING_COMPLETION, _RATING_NOISE = 0.2, 1.0, 0.8, 1.5, 0.6
_P_COMMENT = 0.02
_P_SHARE_BASE, _P_SHARE_COMPLETION = 0.01, 0.04

# --- Event layout ------------------------------------------------------------------------------

_TYPE = {name: i for i, name in enumerate(schema.EVENT_TYPES)}
# Follow-ups of a clicked slot, in the order they happen, with the gap (seconds) before each.
# The watch event is stamped when playback ends, so its gap is the watch time itself.
_FOLLOW_UPS = ("click", "play", "watch", "like/dislike", "rating", "comment", "share")
_FOLLOW_UP_GAP_S = {
    "click": (2.0, 40.0),
    "play": (0.5, 3.0),
    "like/dislike": (1.0, 10.0),
    "rating": (2.0, 15.0),
    "comment": (10.0, 90.0),
    "share": (2.0, 20.0),
}
_FIRST_IMPRESSION_AFTER_SEARCH_S = (2.0, 10.0)
_NEXT_IMPRESSION_S = (0.1, 1.5)
_WATCH_END_S = 0.5
_ORDER_STRIDE = 1 + _SLATE_MAX + _SLATE_MAX * len(_FOLLOW_UPS)

_DAY_S = 86_400
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 2_000
    n_videos: int = 1_000
    n_events: int = 200_000  # target number of events; the output has exactly this many
    seed: int = 42
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: int = 60  # events fall in [start, start + days)
    chunk_events: int = 500_000  # events held in memory at once, at most (approximately)
    n_factors: int = 16  # latent taste dimension

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_videos < 1 or self.days < 1 or self.n_factors < 1:
            raise ValueError("n_users, n_videos, days and n_factors must be at least 1")
        if self.n_events < 0 or self.chunk_events < 1 or self.seed < 0:
            raise ValueError("n_events and seed must be >= 0 and chunk_events >= 1")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")


@dataclass(frozen=True)
class SyntheticSummary:
    out_dir: Path
    n_users: int
    n_videos: int
    n_events: int
    event_files: int
    events_by_type: dict[str, int]


@dataclass(frozen=True, eq=False)
class World:
    """The hidden truth the events are drawn from, beside the users and videos tables.

    Exposed so that tests and benchmarks can compare what a recommender learns with what is
    really there (e.g. a user's favourite genre, a video's popularity).
    """

    users: pd.DataFrame
    videos: pd.DataFrame
    user_factors: np.ndarray  # (n_users, n_factors)
    user_genre_pref: np.ndarray  # (n_users, len(GENRES)), rows sum to 1
    user_activity: np.ndarray  # (n_users,), probability that a session is this user's
    user_device: np.ndarray  # (n_users,), preferred device, index into schema.DEVICES
    user_utc_offset_s: np.ndarray  # (n_users,)
    video_factors: np.ndarray  # (n_videos, n_factors)
    video_genre_share: np.ndarray  # (n_videos, len(GENRES)), the video's genres, rows sum to 1
    video_popularity: np.ndarray  # (n_videos,), probabilities, heavy-tailed
    video_duration_s: np.ndarray  # (n_videos,)
    video_published_us: np.ndarray  # (n_videos,), microseconds since the epoch
    search_queries: np.ndarray  # (len(GENRES), _SEARCH_QUERIES_PER_GENRE) query strings

    @property
    def favourite_genre(self) -> np.ndarray:
        """Index into GENRES of each user's most preferred genre."""
        return self.user_genre_pref.argmax(axis=1)

    def affinity(self, users: np.ndarray, videos: np.ndarray) -> np.ndarray:
        """How much each user likes the paired video; drives clicks, completion and reactions."""
        taste = np.einsum("ij,ij->i", self.user_factors[users], self.video_factors[videos])
        genre_match = np.einsum("ij,ij->i", self.user_genre_pref[users], self.video_genre_share[videos])
        log_pop = np.log(self.video_popularity)
        popularity = (log_pop[videos] - log_pop.mean()) / (log_pop.std() + 1e-9)
        return _W_TASTE * taste + _W_GENRE * genre_match + _W_POPULARITY * popularity


def generate(config: SyntheticConfig, out_dir: Path, progress: Callable[[int], None] | None = None) -> SyntheticSummary:
    """Write users.parquet, videos.parquet and events/part-NNNNN.parquet under out_dir.

    The same config always yields the same files, also when out_dir holds an earlier run.
    `progress(n)` is called after each events file with the number of events it holds.
    """
    out_dir = Path(out_dir)
    events_dir = out_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*events_dir.glob("part-*.parquet"), *events_dir.glob(".part-*.parquet.tmp")]:
        stale.unlink()

    world = build_world(config)
    write_parquet_atomic(schema.to_arrow(world.users, "users"), out_dir / "users.parquet")
    write_parquet_atomic(schema.to_arrow(world.videos, "videos"), out_dir / "videos.parquet")

    simulator = _Simulator(world, config)
    by_type = np.zeros(len(schema.EVENT_TYPES), dtype=np.int64)
    sizes = _chunk_sizes(config.n_events, config.chunk_events)
    first_event = 0
    for index, size in enumerate(sizes):
        table, type_counts = simulator.chunk(index, first_event, size)
        write_parquet_atomic(table, events_dir / f"part-{index:05d}.parquet")
        by_type += type_counts
        first_event += size
        if progress is not None:
            progress(size)
    return SyntheticSummary(
        out_dir=out_dir,
        n_users=config.n_users,
        n_videos=config.n_videos,
        n_events=config.n_events,
        event_files=len(sizes),
        events_by_type={t: int(n) for t, n in zip(schema.EVENT_TYPES, by_type, strict=False)},
    )


def build_world(config: SyntheticConfig) -> World:
    """Draw users, videos and their latent traits; deterministic in config.seed."""
    rng = np.random.default_rng([config.seed])
    k = config.n_factors
    # Genre centroids of length ~1, so a dot product of two same-genre vectors is ~1.
    centroids = rng.normal(0.0, 1.0 / np.sqrt(k), size=(len(GENRES), k))

    genre_rank, n_genres, popularity, duration_s, published_us = _video_traits(config, rng)
    genre_hot = genre_rank < n_genres[:, None]
    genre_share = genre_hot / genre_hot.sum(axis=1, keepdims=True)
    noise = rng.normal(0.0, _FACTOR_NOISE / np.sqrt(k), size=(config.n_videos, k))
    video_factors = genre_share @ centroids + noise
    videos = _videos_frame(genre_rank, n_genres, duration_s, published_us, rng)

    pref = rng.dirichlet(_GENRE_CONCENTRATION * _GENRE_SHARE, size=config.n_users)
    noise = rng.normal(0.0, _FACTOR_NOISE / np.sqrt(k), size=(config.n_users, k))
    user_factors = pref @ centroids + noise
    activity = rng.pareto(_ACTIVITY_SHAPE, config.n_users) + 1.0
    device = _REAL_DEVICES[rng.choice(len(_REAL_DEVICES), size=config.n_users, p=_PREFERRED_DEVICE_SHARE)]
    country = rng.choice(len(_COUNTRIES), size=config.n_users, p=[c[1] for c in _COUNTRIES])
    users = _users_frame(config, country, rng)

    return World(
        users=users,
        videos=videos,
        user_factors=user_factors.astype(np.float32),
        user_genre_pref=pref.astype(np.float32),
        user_activity=activity / activity.sum(),
        user_device=device,
        user_utc_offset_s=(np.array([c[2] for c in _COUNTRIES]) * 3600).astype(np.int64)[country],
        video_factors=video_factors.astype(np.float32),
        video_genre_share=genre_share.astype(np.float32),
        video_popularity=popularity,
        video_duration_s=duration_s,
        video_published_us=published_us,
        search_queries=_search_queries(rng),
    )


# --- World ---------------------------------------------------------------------------------------


def _video_traits(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Genres, popularity, duration and publication time of every video.

    genre_rank[v, g] is g's position in v's genre list (0 = primary); v has the genres ranked
    below n_genres[v].
    """
    n = config.n_videos
    primary = rng.choice(len(GENRES), size=n, p=_GENRE_SHARE)
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.5, 0.35, 0.15])
    keys = rng.random((n, len(GENRES)))
    keys[np.arange(n), primary] = 2.0  # primary first, the others in random order
    genre_rank = np.argsort(np.argsort(-keys, axis=1), axis=1)

    ranks = rng.permutation(n) + 1
    popularity = ranks.astype(float) ** -_ZIPF_EXPONENT
    popularity /= popularity.sum()

    median = _GENRE_MEDIAN_DURATION_S[primary]
    duration_s = np.clip(np.round(rng.lognormal(np.log(median), 0.9)), 30.0, 9000.0)

    start_us = _to_us(config.start)
    before = rng.uniform(-_PUBLISHED_BEFORE_SPAN_DAYS * _DAY_S, 0, size=n)
    during = rng.uniform(0, config.days * _DAY_S, size=n)
    offset_s = np.where(rng.random(n) < _P_PUBLISHED_IN_WINDOW, during, before)
    # The most popular video is always on offer, so no session ever finds an empty catalogue.
    offset_s[ranks == 1] = np.minimum(offset_s[ranks == 1], -_DAY_S)
    published_us = start_us + (offset_s * _US).astype(np.int64)
    return genre_rank, n_genres, popularity, duration_s, published_us


def _videos_frame(
    genre_rank: np.ndarray,
    n_genres: np.ndarray,
    duration_s: np.ndarray,
    published_us: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Titles, descriptions and tags made of the videos' genre vocabularies."""
    n = len(n_genres)
    order = np.argsort(genre_rank, axis=1)  # genre indices, primary first
    n_words = len(_TITLE_WORDS[GENRES[0]])
    word_idx = np.argsort(rng.random((n, n_words)), axis=1)[:, :4]  # four distinct words each
    template_idx = rng.integers(0, len(_TITLE_TEMPLATES), size=n)
    n_tags = rng.integers(2, 6, size=n)
    tag_keys = rng.random((n, len(GENRES) * len(_TAGS[GENRES[0]])), dtype=np.float32)
    language = rng.choice(len(_LANGUAGES), size=n, p=[lang[1] for lang in _LANGUAGES])

    titles, descriptions, genres, tags = [], [], [], []
    for v in range(n):
        names = [GENRES[g] for g in order[v, : n_genres[v]]]
        words = _TITLE_WORDS[names[0]]
        second = _TITLE_WORDS[names[-1]]
        a, b, c = words[word_idx[v, 0]], words[word_idx[v, 1]], second[word_idx[v, 2]]
        titles.append(_TITLE_TEMPLATES[template_idx[v]].format(a=a.title(), b=b.title(), c=c.title()))
        d = words[word_idx[v, 3]]
        descriptions.append(f"{_length_phrase(duration_s[v])} of {' and '.join(names)}: {b}, {c} and {d}.")
        vocab = [tag for name in names for tag in _TAGS[name]]
        keys = tag_keys[v, : len(vocab)]
        tags.append([vocab[i] for i in np.argsort(keys)[: min(n_tags[v], len(vocab))]])
        genres.append(names)

    return pd.DataFrame(
        {
            "video_id": [f"v{v:06d}" for v in range(n)],
            "title": titles,
            "description": descriptions,
            "genres": genres,
            "tags": tags,
            "duration_s": duration_s,
            "published_ts": pd.to_datetime(published_us, unit="us", utc=True),
            "language": [_LANGUAGES[i][0] for i in language],
        }
    )


def _length_phrase(duration_s: float) -> str:
    if duration_s <= 300:
        return "A short clip"
    if duration_s <= 2400:
        return "An episode"
    return "A feature-length film"


def _users_frame(config: SyntheticConfig, country: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Demographics; every signup predates the event window, hence every user's first event."""
    n = config.n_users
    signup_s = rng.uniform(_DAY_S, _SIGNUP_SPAN_DAYS * _DAY_S, size=n)  # seconds before start
    signup_us = _to_us(config.start) - (signup_s * _US).astype(np.int64)
    age = rng.choice(len(_AGE_BUCKETS), size=n, p=[a[1] for a in _AGE_BUCKETS])
    gender = rng.choice(len(_GENDERS), size=n, p=[g[1] for g in _GENDERS])
    occupation = rng.integers(0, len(_OCCUPATIONS), size=n)
    occupation_known = rng.random(n) >= _P_OCCUPATION_UNKNOWN
    return pd.DataFrame(
        {
            "user_id": [f"u{u:06d}" for u in range(n)],
            "signup_ts": pd.to_datetime(signup_us, unit="us", utc=True),
            "age_bucket": [_AGE_BUCKETS[i][0] for i in age],
            "gender": [_GENDERS[i][0] for i in gender],
            "occupation": [
                _OCCUPATIONS[o] if ok else None for o, ok in zip(occupation, occupation_known, strict=False)
            ],
            "country": [_COUNTRIES[i][0] for i in country],
        }
    )


def _search_queries(rng: np.random.Generator) -> np.ndarray:
    """A few queries per genre, one or two of its title words, sometimes with the genre name."""
    queries = np.empty((len(GENRES), _SEARCH_QUERIES_PER_GENRE), dtype=object)
    for g, name in enumerate(GENRES):
        words = _TITLE_WORDS[name]
        for q in range(_SEARCH_QUERIES_PER_GENRE):
            a, b = rng.choice(len(words), size=2, replace=False)
            form = rng.integers(0, 3)
            queries[g, q] = (words[a], f"{words[a]} {words[b]}", f"{words[a]} {name}")[form]
    return queries


# --- Events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sessions:
    user: np.ndarray
    device: np.ndarray
    start_us: np.ndarray
    has_search: np.ndarray
    slate_size: np.ndarray


@dataclass(frozen=True)
class _Slots:
    """One row per impression: which session showed which video at which slate position."""

    session: np.ndarray
    position: np.ndarray
    video: np.ndarray


@dataclass(frozen=True)
class _Draft:
    """Events of a batch of sessions before they are put in time order.

    `order` ranks an event within its session; `gap_us` is its time since the session's
    previous event.
    """

    session: np.ndarray
    order: np.ndarray
    type_code: np.ndarray
    video: np.ndarray  # -1 for search
    gap_us: np.ndarray
    watch_time_s: np.ndarray  # NaN unless watch
    rating: np.ndarray  # NaN unless rating
    text: np.ndarray  # index into _Simulator.texts, -1 for none


@dataclass(frozen=True)
class _Events:
    """Events grouped by session, in time order within each session."""

    session: np.ndarray
    user: np.ndarray
    device: np.ndarray
    type_code: np.ndarray
    ts_us: np.ndarray
    video: np.ndarray
    watch_time_s: np.ndarray
    rating: np.ndarray
    text: np.ndarray


class _Simulator:
    """Turns a World into events, one chunk at a time."""

    def __init__(self, world: World, config: SyntheticConfig) -> None:
        self.world = world
        self.config = config
        self.start_us = _to_us(config.start)
        self.end_us = self.start_us + config.days * _DAY_S * _US
        self.favourite_genre = world.favourite_genre
        self.popularity_cdf = np.cumsum(world.video_popularity)
        in_genre = world.video_genre_share > 0
        self.genre_videos = [np.flatnonzero(in_genre[:, g]) for g in range(len(GENRES))]
        self.genre_cdfs = [np.cumsum(world.video_popularity[videos]) for videos in self.genre_videos]
        self.user_ids = pa.array(world.users["user_id"], pa.string())
        self.video_ids = pa.array(world.videos["video_id"], pa.string())
        self.texts = pa.array([*world.search_queries.ravel(), *_COMMENTS], pa.string())
        self.first_comment = world.search_queries.size

    def chunk(self, index: int, first_event: int, size: int) -> tuple[pa.Table, np.ndarray]:
        """Exactly `size` events as an Arrow table, plus their count per event type.

        Sessions are simulated in batches sized to need about one batch; the last session is cut
        short, which keeps the funnel order of what remains.
        """
        rng = np.random.default_rng([self.config.seed, 1, index])  # [seed] alone is the world's
        parts: list[_Events] = []
        have, n_sessions, events_per_session = 0, 0, 10.0
        while have < size:
            batch = int((size - have) / events_per_session * 1.05) + 16
            events = self._simulate(batch, rng)
            parts.append(replace(events, session=events.session + n_sessions))
            have += len(events.ts_us)
            n_sessions += batch
            events_per_session = max(len(events.ts_us) / batch, 1.0)
        if not parts:
            return schema.EVENTS.empty_table(), np.zeros(len(schema.EVENT_TYPES), dtype=np.int64)
        events = _take(_concat(parts), slice(0, size))
        counts = np.bincount(events.type_code, minlength=len(schema.EVENT_TYPES))
        return self._table(events, index, first_event), counts

    def _simulate(self, n_sessions: int, rng: np.random.Generator) -> _Events:
        sessions = self._sessions(n_sessions, rng)
        slots = self._slots(sessions, rng)
        return self._lay_out(self._funnel(sessions, slots, rng), sessions)

    def _sessions(self, n: int, rng: np.random.Generator) -> _Sessions:
        """Who, on which device and when: local hour from the device's profile, stored as UTC."""
        world = self.world
        user = rng.choice(len(world.user_activity), size=n, p=world.user_activity)
        other_device = rng.choice(_REAL_DEVICES, size=n)
        device = np.where(rng.random(n) < _P_PREFERRED_DEVICE, world.user_device[user], other_device)
        device = np.where(rng.random(n) < _P_UNKNOWN_DEVICE, _DEVICE["unknown"], device)
        hour = (_HOUR_CDF[device] < rng.random(n)[:, None]).sum(axis=1)
        day = rng.integers(0, self.config.days, size=n)
        local_s = day * _DAY_S + hour * 3600 + rng.integers(0, 3600, size=n)
        # Wrapping around the window keeps both the hour of day and every start inside it.
        utc_s = (local_s - world.user_utc_offset_s[user]) % (self.config.days * _DAY_S)
        start_us = self.start_us + utc_s * _US + rng.integers(0, _US, size=n)
        has_search = rng.random(n) < _P_SEARCH
        slate_size = np.minimum(_SLATE_MIN + rng.poisson(_SLATE_EXTRA_MEAN, size=n), _SLATE_MAX)
        return _Sessions(user, device, start_us, has_search, slate_size)

    def _slots(self, sessions: _Sessions, rng: np.random.Generator) -> _Slots:
        """Fill each slate mostly by popularity, partly from the user's genres.

        After a search most slots come from the searched (favourite) genre. Videos not yet
        published at the session start are redrawn, and repeats within a slate dropped.
        """
        world = self.world
        session = np.repeat(np.arange(len(sessions.user)), sessions.slate_size)
        user = sessions.user[session]
        searched = sessions.has_search[session]
        pref_cdf = np.cumsum(world.user_genre_pref[user], axis=1)
        preferred = (pref_cdf < rng.random(len(user))[:, None] * pref_cdf[:, -1:]).sum(axis=1)
        genre = np.where(searched, self.favourite_genre[user], np.minimum(preferred, len(GENRES) - 1))
        p_taste = np.where(searched, _P_TASTE_SLOT_AFTER_SEARCH, _P_TASTE_SLOT)
        genre = np.where(rng.random(len(user)) < p_taste, genre, -1)

        video = self._draw_videos(genre, rng)
        session_start = sessions.start_us[session]
        for _ in range(_PUBLISH_RETRIES):
            late = np.flatnonzero(world.video_published_us[video] > session_start)
            if len(late) == 0:
                break
            video[late] = self._draw_videos(genre[late], rng)
        published = world.video_published_us[video] <= session_start
        keep = published & _first_of_pair(session, video, len(world.video_popularity))
        session, video = session[keep], video[keep]
        return _Slots(session, _position_in_group(session), video)

    def _draw_videos(self, genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Popularity-weighted draws, within `genre` where it is >= 0, else from the catalogue."""
        video = _draw(self.popularity_cdf, len(genre), rng)
        for g, members in enumerate(self.genre_videos):
            rows = np.flatnonzero(genre == g)
            if len(rows) and len(members):
                video[rows] = members[_draw(self.genre_cdfs[g], len(rows), rng)]
        return video

    def _funnel(self, sessions: _Sessions, slots: _Slots, rng: np.random.Generator) -> _Draft:
        """Impression -> click -> play -> watch -> reactions, each step driven by affinity."""
        affinity = self.world.affinity(sessions.user[slots.session], slots.video)
        logit = _CLICK_BIAS + _CLICK_SLOPE * affinity - _CLICK_POSITION_DECAY * slots.position
        click = rng.random(len(affinity)) < _sigmoid(logit)
        watched = np.flatnonzero(click & (rng.random(len(affinity)) < _P_PLAY))
        n = len(watched)

        duration = self.world.video_duration_s[slots.video[watched]]
        fraction = completion(affinity[watched], duration, rng)
        like, dislike = reactions(affinity[watched], fraction, rng)
        rated = rng.random(n) < _P_RATING
        rating = _rating(affinity[watched], fraction, rng)
        comment = rng.random(n) < _P_COMMENT
        share = rng.random(n) < _P_SHARE_BASE + _P_SHARE_COMPLETION * fraction

        def follow_up(
            step: str, type_name: str, rows: np.ndarray, gap_us: np.ndarray | None = None, **values: np.ndarray
        ) -> _Draft:
            order = 1 + _SLATE_MAX + slots.position[rows] * len(_FOLLOW_UPS) + _FOLLOW_UPS.index(step)
            if gap_us is None:
                gap_us = _seconds_to_us(rng.uniform(*_FOLLOW_UP_GAP_S[step], size=len(rows)))
            return _draft(slots.session[rows], order, type_name, slots.video[rows], gap_us, **values)

        watch_time_s = duration * fraction
        watch_gap_us = _seconds_to_us(watch_time_s + _WATCH_END_S)
        comment_text = self.first_comment + rng.integers(0, len(_COMMENTS), size=comment.sum())
        return _concat(
            [
                self._searches(sessions, rng),
                self._impressions(sessions, slots, rng),
                follow_up("click", "click", np.flatnonzero(click)),
                follow_up("play", "play", watched),
                follow_up("watch", "watch", watched, watch_gap_us, watch_time_s=watch_time_s),
                follow_up("like/dislike", "like", watched[like]),
                follow_up("like/dislike", "dislike", watched[dislike]),
                follow_up("rating", "rating", watched[rated], rating=rating[rated]),
                follow_up("comment", "comment", watched[comment], text=comment_text),
                follow_up("share", "share", watched[share]),
            ]
        )

    def _searches(self, sessions: _Sessions, rng: np.random.Generator) -> _Draft:
        """A query in the user's favourite genre opens some sessions, at their start time."""
        rows = np.flatnonzero(sessions.has_search)
        genre = self.favourite_genre[sessions.user[rows]]
        text = genre * _SEARCH_QUERIES_PER_GENRE + rng.integers(0, _SEARCH_QUERIES_PER_GENRE, size=len(rows))
        zeros = np.zeros(len(rows), dtype=np.int64)
        return _draft(rows, zeros, "search", zeros - 1, zeros, text=text)

    def _impressions(self, sessions: _Sessions, slots: _Slots, rng: np.random.Generator) -> _Draft:
        """The slate shows at the session start (or a few seconds after a search), item by item."""
        n = len(slots.video)
        gap_s = rng.uniform(*_NEXT_IMPRESSION_S, size=n)
        after_search = rng.uniform(*_FIRST_IMPRESSION_AFTER_SEARCH_S, size=n)
        first = slots.position == 0
        gap_s[first] = np.where(sessions.has_search[slots.session[first]], after_search[first], 0.0)
        return _draft(slots.session, 1 + slots.position, "impression", slots.video, _seconds_to_us(gap_s))

    def _lay_out(self, draft: _Draft, sessions: _Sessions) -> _Events:
        """Put events in order within sessions, turn gaps into timestamps, drop any past the window."""
        d = _take(draft, np.argsort(draft.session * _ORDER_STRIDE + draft.order))
        starts, counts = _groups(d.session)
        elapsed = np.cumsum(d.gap_us)
        elapsed -= np.repeat(elapsed[starts] - d.gap_us[starts], counts)
        ts_us = sessions.start_us[d.session] + elapsed
        events = _Events(
            session=d.session,
            user=sessions.user[d.session],
            device=sessions.device[d.session],
            type_code=d.type_code,
            ts_us=ts_us,
            video=d.video,
            watch_time_s=d.watch_time_s,
            rating=d.rating,
            text=d.text,
        )
        return _take(events, ts_us < self.end_us)

    def _table(self, events: _Events, chunk: int, first_event: int) -> pa.Table:
        """The canonical events table; strings are built by Arrow, never one Python object each."""
        seed = self.config.seed
        n = len(events.ts_us)
        columns = {
            "event_id": _prefixed(f"s{seed}-", np.arange(first_event, first_event + n)),
            "user_id": self.user_ids.take(events.user),
            "video_id": self.video_ids.take(pa.array(events.video, mask=events.video < 0)),
            "event_ts": pa.array(events.ts_us, pa.timestamp("us", tz="UTC")),
            "event_type": _EVENT_TYPE_NAMES.take(events.type_code),
            "watch_time_s": pa.array(events.watch_time_s, from_pandas=True),
            "rating": pa.array(events.rating, from_pandas=True),
            "device": _DEVICE_NAMES.take(events.device),
            "session_id": _prefixed(f"s{seed}-c{chunk}-", events.session),
            "text": self.texts.take(pa.array(events.text, mask=events.text < 0)),
        }
        frame = pd.DataFrame({name: pd.arrays.ArrowExtensionArray(col) for name, col in columns.items()})
        # Arrow-backed columns make the frame free to build; their pandas metadata is dropped so
        # readers get the same plain dtypes as from the other tables.
        return schema.to_arrow(frame, "events").replace_schema_metadata(None)


_EVENT_TYPE_NAMES = pa.array(schema.EVENT_TYPES, pa.string())
_DEVICE_NAMES = pa.array(schema.DEVICES, pa.string())


def completion(affinity: np.ndarray, duration_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Share of the video watched: Beta with a mean rising with affinity, falling with length."""
    length = np.log(duration_s / 600.0)
    mean = _sigmoid(_COMPLETION_BIAS + _COMPLETION_SLOPE * affinity - _COMPLETION_LENGTH_PENALTY * length)
    mean = np.clip(mean, 0.01, 0.99)
    beta = rng.beta(mean * _COMPLETION_CONCENTRATION, (1 - mean) * _COMPLETION_CONCENTRATION)
    return np.clip(beta, 0.0, 1.0)


def reactions(affinity: np.ndarray, completion: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """At most one of like (high affinity and completion) or dislike (low) per watch."""
    p_like = _sigmoid(_LIKE_BIAS + _LIKE_AFFINITY * affinity + _LIKE_COMPLETION * completion)
    p_dislike = _sigmoid(_DISLIKE_BIAS + _DISLIKE_AFFINITY * affinity + _DISLIKE_COMPLETION * completion)
    u = rng.random(len(affinity))
    like = u < p_like
    return like, ~like & (u < p_like + p_dislike)


def _rating(affinity: np.ndarray, completion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole stars 1..5, increasing with affinity and completion."""
    score = _RATING_BIAS + _RATING_AFFINITY * affinity + _RATING_COMPLETION * completion
    score += rng.normal(0.0, _RATING_NOISE, size=len(affinity))
    return np.clip(np.round(score), max(1.0, schema.RATING_MIN), min(5.0, schema.RATING_MAX))


def _draft(
    session: np.ndarray,
    order: np.ndarray,
    type_name: str,
    video: np.ndarray,
    gap_us: np.ndarray,
    *,
    watch_time_s: np.ndarray | None = None,
    rating: np.ndarray | None = None,
    text: np.ndarray | None = None,
) -> _Draft:
    n = len(session)
    nan = np.full(n, np.nan)
    return _Draft(
        session=session,
        order=order,
        type_code=np.full(n, _TYPE[type_name], dtype=np.int8),
        video=video,
        gap_us=gap_us,
        watch_time_s=nan if watch_time_s is None else watch_time_s,
        rating=nan if rating is None else rating,
        text=np.full(n, -1, dtype=np.int64) if text is None else text,
    )


# --- Small numpy helpers -------------------------------------------------------------------------

_T = TypeVar("_T", _Draft, _Events)


def _concat(parts: list[_T]) -> _T:
    names = [f.name for f in fields(parts[0])]
    return type(parts[0])(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in names})


def _take(rows_of: _T, rows: np.ndarray | slice) -> _T:
    return type(rows_of)(**{f.name: getattr(rows_of, f.name)[rows] for f in fields(rows_of)})


def _groups(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return starts, np.diff(np.r_[starts, len(sorted_keys)])


def _position_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values."""
    starts, counts = _groups(sorted_keys)
    return np.arange(len(sorted_keys)) - np.repeat(starts, counts)


def _first_of_pair(group: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """True where (group, item) occurs for the first time."""
    key = group.astype(np.int64) * n_items + item
    order = np.argsort(key, kind="stable")
    repeated = np.r_[False, key[order][1:] == key[order][:-1]]
    first = np.ones(len(key), dtype=bool)
    first[order[repeated]] = False
    return first


def _draw(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn with the probabilities whose running sum is cdf."""
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _seconds_to_us(seconds: np.ndarray) -> np.ndarray:
    return np.round(seconds * _US).astype(np.int64)


def _prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _to_us(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _chunk_sizes(n_events: int, chunk_events: int) -> list[int]:
    """Events per file: full chunks and a remainder; one empty file when there are no events."""
    full, rest = divmod(n_events, chunk_events)
    return [chunk_events] * full + ([rest] if rest or not full else [])
