"""Serving settings: every knob of the online service, read once from the environment.

Locations (registry, online store, VIDREC_HOME) come from `vidrec.settings.Settings`; this adds
what only serving needs. Every variable is optional:

    VIDREC_RELOAD_TOKEN           token of POST /reload (unset: the endpoint refuses every call)
    VIDREC_RELOAD_POLL_S          seconds between registry polls for a moved alias (30; 0 = never)
    VIDREC_AB_EXPERIMENT          experiment name hashed with the user id ("ranker-ab")
    VIDREC_AB_CHALLENGER_SHARE    share of users sent to the `challenger` models, 0..1 (0 = no test)
    VIDREC_PRECOMPUTED_URL        sqlite:///path or redis://host:port/db of precomputed lists
                                  (default sqlite:///$VIDREC_HOME/serving/precomputed.db; "off" disables)
    VIDREC_PRECOMPUTED_TTL_S      freshness of a precomputed list, seconds (86400)
    VIDREC_FEEDBACK_DIR           the feedback event log (default $VIDREC_HOME/feedback)
    VIDREC_FEEDBACK_MAX_EVENTS    largest feedback batch accepted (1000)
    VIDREC_LOG_IMPRESSIONS        1 (default) logs every answer's slate to <feedback dir>/impressions
    VIDREC_IMPRESSION_BUFFER      impressions held in memory before new ones are dropped (200000)
    VIDREC_MMR_LAMBDA             relevance weight of the diversity re-rank, 0..1 (0.8; 1 = off)
    VIDREC_TRENDING_BOOST         weight of the trending boost (0.05)
    VIDREC_FRESH_BOOST            weight of the freshness boost (0.05)
    VIDREC_FRESH_HALF_LIFE_DAYS   age at which the freshness boost halves (30)
    VIDREC_CONTEXT_BOOST          weight of the device / time-of-day duration fit (0.05)
    VIDREC_STORE_RETRY_S          after an online-store failure, seconds before trying it again (5)
    VIDREC_RESPONSE_CACHE         per-worker responses kept for degraded mode (20000 users)
    VIDREC_CANDIDATE_CACHE        per-worker users whose pooled candidates are kept (5000; 0 = off)
    VIDREC_CANDIDATE_CACHE_S      how long a user's candidates are reused, seconds (300)
    VIDREC_LOG_ASSIGNMENTS        1 (default) logs each request's A/B variant on logger vidrec.ab while a
                                  challenger takes a share (without one every answer is the champion's)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vidrec.settings import Settings, SettingsError

MAX_K = 100


def _float(name: str, default: float, low: float | None = None, high: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingsError(f"{name}={value} is outside [{low}, {high}]")
    return value


def _int(name: str, default: int, low: int = 0) -> int:
    value = _float(name, default, low)
    if value != int(value):
        raise SettingsError(f"{name}={value} is not a whole number")
    return int(value)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"{name}={raw!r} is not a flag: use 1 or 0")
    return raw in ("1", "true", "yes")


@dataclass(frozen=True)
class RerankConfig:
    """Post-ranking personalization (see serving.rerank)."""

    mmr_lambda: float = 0.8
    mmr_pool: int = 50  # the best N by relevance take part in the diversity re-rank
    trending_boost: float = 0.05
    fresh_boost: float = 0.05
    fresh_half_life_days: float = 30.0
    context_boost: float = 0.05
    # device -> (min, max) duration in seconds that suits it; devices not listed: no preference.
    device_duration: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"mobile": (0.0, 1800.0), "tablet": (0.0, 3600.0), "tv": (2400.0, float("inf"))}
    )
    # (first hour, last hour) UTC -> duration range that suits that time of day.
    hour_duration: dict[tuple[int, int], tuple[float, float]] = field(
        default_factory=lambda: {(6, 9): (0.0, 1800.0), (20, 23): (2400.0, float("inf"))}
    )


def feedback_batch_limit() -> int:
    """The largest feedback batch accepted (VIDREC_FEEDBACK_MAX_EVENTS). Read once, when the request
    schemas are built: BentoML fixes an endpoint's input spec when the service is imported."""
    return _int("VIDREC_FEEDBACK_MAX_EVENTS", 1000, 1)


@dataclass(frozen=True)
class ServingConfig:
    settings: Settings
    reload_token: str | None = None
    poll_seconds: float = 30.0
    experiment: str = "ranker-ab"
    challenger_share: float = 0.0
    precomputed_url: str | None = None
    precomputed_ttl_s: float = 86_400.0
    feedback_dir: Path = Path(".vidrec/feedback")
    log_impressions: bool = True
    impression_buffer: int = 200_000
    store_retry_s: float = 5.0
    response_cache_size: int = 20_000
    candidate_cache_size: int = 5000
    candidate_cache_s: float = 300.0
    log_assignments: bool = True
    rerank: RerankConfig = field(default_factory=RerankConfig)

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> ServingConfig:
        settings = settings or Settings.from_env()
        precomputed = os.environ.get(
            "VIDREC_PRECOMPUTED_URL", f"sqlite:///{settings.home / 'serving' / 'precomputed.db'}"
        )
        return cls(
            settings=settings,
            reload_token=os.environ.get("VIDREC_RELOAD_TOKEN") or None,
            poll_seconds=_float("VIDREC_RELOAD_POLL_S", 30.0, 0.0),
            experiment=os.environ.get("VIDREC_AB_EXPERIMENT", "ranker-ab"),
            challenger_share=_float("VIDREC_AB_CHALLENGER_SHARE", 0.0, 0.0, 1.0),
            precomputed_url=None if precomputed.lower() in ("", "off", "none") else precomputed,
            precomputed_ttl_s=_float("VIDREC_PRECOMPUTED_TTL_S", 86_400.0, 0.0),
            feedback_dir=Path(os.environ.get("VIDREC_FEEDBACK_DIR", settings.home / "feedback")).resolve(),
            log_impressions=_flag("VIDREC_LOG_IMPRESSIONS", True),
            impression_buffer=_int("VIDREC_IMPRESSION_BUFFER", 200_000, 1),
            store_retry_s=_float("VIDREC_STORE_RETRY_S", 5.0, 0.0),
            response_cache_size=_int("VIDREC_RESPONSE_CACHE", 20_000, 0),
            candidate_cache_size=_int("VIDREC_CANDIDATE_CACHE", 5000, 0),
            candidate_cache_s=_float("VIDREC_CANDIDATE_CACHE_S", 300.0, 0.0),
            log_assignments=_flag("VIDREC_LOG_ASSIGNMENTS", True),
            rerank=RerankConfig(
                mmr_lambda=_float("VIDREC_MMR_LAMBDA", 0.8, 0.0, 1.0),
                trending_boost=_float("VIDREC_TRENDING_BOOST", 0.05, 0.0),
                fresh_boost=_float("VIDREC_FRESH_BOOST", 0.05, 0.0),
                fresh_half_life_days=_float("VIDREC_FRESH_HALF_LIFE_DAYS", 30.0, 0.001),
                context_boost=_float("VIDREC_CONTEXT_BOOST", 0.05, 0.0),
            ),
        )
