"""Personalization after ranking: boosts, context fit, diversity (MMR), and a reason per item.

Pure numpy over catalog-wide arrays aligned with the model's video rows, so it runs the same
for the real-time path, precomputed lists, cold start and fallbacks, and is unit-tested alone.

    relevance   the ranker's scores min-max scaled to [0, 1] over the request's candidates
                (cold start and fallbacks pass a relevance already in [0, 1])
    + trending_boost * trending      catalog percentile of the trending signal, 0..1
    + fresh_boost    * freshness     0.5 ** (age_days / half_life), 0 when the age is unknown
    + context_boost  * context fit   -1..1: does the duration suit the device and the hour?
    then MMR (Carbonell & Goldstein 1998) over the best `mmr_pool`: pick, k times, the item with
    the largest  lambda * score - (1 - lambda) * max cosine to the items already picked
    (the service compares genre vectors, so a list does not fill up with one genre).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from serving.config import RerankConfig

# Generator name (or its prefix) -> why it proposes a video, for the short reason.
SOURCE_REASONS = {
    "popularity": "popular on vidrec",
    "trending": "trending now",
    "content": "similar to videos you watched",
    "ease": "viewers with similar taste watched it",
    "item-cf": "often watched together with your videos",
    "user-cf": "watched by people like you",
    "als": "viewers with similar taste watched it",
    "bpr": "viewers with similar taste watched it",
    "svd": "matches your ratings",
    "mult-vae": "viewers with similar taste watched it",
    "sasrec": "follows what you watched recently",
    "similar-to-recent": "similar to what you just watched",
    "session": "like what you just watched or liked",
    "genres": "in your favourite genres",
}


@dataclass(frozen=True)
class ItemSignals:
    """Per video row: trending percentile (0..1), age in days and duration in seconds (NaN unknown)."""

    trending: np.ndarray
    age_days: np.ndarray
    duration_s: np.ndarray
    # The catalog's freshness per half-life and context fit per set of duration rules, computed
    # once: a request reads its candidates' entries.
    _kept: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def empty(cls, n: int) -> ItemSignals:
        nan = np.full(n, np.nan)
        return cls(np.zeros(n), nan, nan.copy())

    def catalog_freshness(self, half_life_days: float) -> np.ndarray:
        key = ("freshness", half_life_days)
        if key not in self._kept:
            self._kept[key] = freshness(self.age_days, half_life_days)
        return self._kept[key]

    def catalog_context_fit(self, device: str, hour: int, config: RerankConfig) -> np.ndarray:
        key = ("context fit", *duration_rules(device, hour, config))
        if key not in self._kept:
            self._kept[key] = context_fit(self.duration_s, device, hour, config)
        return self._kept[key]


@dataclass(frozen=True)
class Reranked:
    rows: np.ndarray  # chosen video rows, best first
    scores: np.ndarray  # their final scores (relevance + boosts)
    positions: np.ndarray  # their positions in the input arrays
    trending: np.ndarray
    fresh: np.ndarray
    context: np.ndarray


def percentile(values: np.ndarray) -> np.ndarray:
    """Rank of each finite value in [0, 1] (ties share the lower rank); NaN -> 0."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(values))
    finite = np.isfinite(values)
    n = int(finite.sum())
    if n > 1:
        ordered = np.sort(values[finite])
        out[finite] = np.searchsorted(ordered, values[finite], side="left") / (n - 1)
    elif n == 1:
        out[finite] = 1.0
    return out


def minmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    finite = np.isfinite(scores)
    if not finite.any():
        return np.zeros(len(scores))
    lo, hi = scores[finite].min(), scores[finite].max()
    out = np.where(finite, (scores - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    return out


def freshness(age_days: np.ndarray, half_life_days: float) -> np.ndarray:
    age = np.asarray(age_days, dtype=np.float64)
    return np.where(np.isfinite(age), np.power(0.5, np.clip(age, 0, None) / half_life_days), 0.0)


def context_fit(duration_s: np.ndarray, device: str, hour: int, config: RerankConfig) -> np.ndarray:
    """Mean over the rules that apply (device, hour) of +1 (duration in range) / -1 (out of range).

    0 when no rule applies or the duration is unknown.
    """
    duration = np.asarray(duration_s, dtype=np.float64)
    ranges = duration_rules(device, hour, config)
    if not ranges:
        return np.zeros(len(duration))
    known = np.isfinite(duration)
    total = np.zeros(len(duration))
    for low, high in ranges:
        total += np.where((duration >= low) & (duration <= high), 1.0, -1.0)
    return np.where(known, total / len(ranges), 0.0)


def duration_rules(device: str, hour: int, config: RerankConfig) -> list[tuple[float, float]]:
    """The (low, high) duration ranges that apply to a request on `device` at `hour`."""
    ranges = []
    if device in config.device_duration:
        ranges.append(tuple(config.device_duration[device]))
    for (first, last), span in config.hour_duration.items():
        if first <= hour <= last:
            ranges.append(tuple(span))
    return ranges


def mmr_order(scores: np.ndarray, similarity: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Greedy maximal marginal relevance: positions of the k picks, in order."""
    n = len(scores)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if lam >= 1.0 or n == 1:
        return np.argsort(-scores, kind="stable")[:k]
    chosen = np.zeros(k, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    max_sim = np.zeros(n)
    for step in range(k):
        value = lam * scores - (1.0 - lam) * max_sim
        value[taken] = -np.inf
        pick = int(np.argmax(value))
        chosen[step] = pick
        taken[pick] = True
        np.maximum(max_sim, similarity[pick], out=max_sim)
    return chosen


def cosine_block(vectors, rows: np.ndarray) -> np.ndarray:
    """Dense cosine similarities among `rows` of `vectors` (rows assumed L2-normalised or zero)."""
    block = vectors[rows]
    sims = block @ block.T
    sims = sims.toarray() if sp.issparse(sims) else np.asarray(sims)
    return np.asarray(sims, dtype=np.float64)


def rerank(
    rows: np.ndarray,
    relevance: np.ndarray,
    signals: ItemSignals,
    vectors,
    k: int,
    config: RerankConfig,
    device: str = "unknown",
    hour: int = 12,
) -> Reranked:
    """The k best of `rows` after boosts and the diversity re-rank.

    `relevance` is in [0, 1] (see minmax); `vectors` are item vectors for diversity (one row per
    catalog video, L2-normalised, dense or sparse; None disables MMR).
    """
    rows = np.asarray(rows, dtype=np.int64)
    relevance = np.asarray(relevance, dtype=np.float64)
    if len(rows) == 0:
        empty = np.zeros(0)
        return Reranked(rows, empty, np.zeros(0, dtype=np.int64), empty, empty, empty)
    trend = signals.trending[rows]
    fresh = signals.catalog_freshness(config.fresh_half_life_days)[rows]
    fit = signals.catalog_context_fit(device, hour, config)[rows]
    final = relevance + config.trending_boost * trend + config.fresh_boost * fresh + config.context_boost * fit
    pool_size = min(len(rows), max(config.mmr_pool, k))
    pool = np.argsort(-final, kind="stable")[:pool_size]
    if vectors is not None and config.mmr_lambda < 1.0 and pool_size > 1:
        similarity = cosine_block(vectors, rows[pool])
        picked = pool[mmr_order(final[pool], similarity, k, config.mmr_lambda)]
    else:
        picked = pool[:k]
    return Reranked(rows[picked], final[picked], picked, trend[picked], fresh[picked], fit[picked])


def source_reason(source: str) -> str:
    if source in SOURCE_REASONS:
        return SOURCE_REASONS[source]
    for prefix, reason in SOURCE_REASONS.items():
        if source.startswith(prefix):
            return reason
    return "recommended for you"


def reason(
    best_source: str | None, trending: float, fresh: float, context: float, config: RerankConfig, device: str
) -> str:
    """A short why: the strongest source's phrase, plus the boosts that mattered."""
    parts = [source_reason(best_source) if best_source else "recommended for you"]
    if config.trending_boost > 0 and trending >= 0.95 and best_source != "trending":
        parts.append("trending now")
    if config.fresh_boost > 0 and fresh >= 0.5:
        parts.append("new")
    if config.context_boost > 0 and context > 0:
        parts.append(f"suits watching on {device}" if device in config.device_duration else "suits this time of day")
    return "; ".join(parts)
