"""The online ranking path: one user's candidates, features and scores in a few milliseconds.

`TwoStage.rank` (models/two_stage.py) is written for batches: it pivots candidate frames in
pandas and recomputes cross features for every user of the matrix. `Engine` computes the same
features for one user with numpy, from structures prepared once per loaded model:

    candidates   each generator's `recommend(user, per_source_k)` (seen videos filtered), pooled
    generator    score_<g> or z_<g> (catalog z-score), rank_<g> (per_source_k + 1 when <g> did not
                 propose it), n_sources
    cross        content_sim, genre_match, log_popularity, popularity_vs_usual, user_history_len,
                 trend_<days>d (share of recent activity)
    context      ctx_hour(_sin/_cos), ctx_dow, ctx_device_*, ctx_log_days_away
    Feast        user views from the one online row, `request_features` computed locally, video
                 views from the in-memory `VideoTable`

and scores them with the ranker's booster (`inplace_predict`, the iterations `RankerModel.predict`
uses), blended with a generator's z-score over the user's candidates where the ranker's
`ScoreBlend` says so. With the candidate cache on, a cached pool also keeps the margins of the
trees that read no per-request feature, and whole margins per request signature
(serving/split_trees.py). tests/test_serving.py checks that features and scores equal `ranking_frame` +
`RankerModel.predict` for the same user. A ranker that needs a feature the engine cannot
compute is refused at load time rather than served with a silent gap.

Besides ranking: `similar` (content + collaborative cosine), `cold_start` (trending/popular
adapted to the context, the user's recent videos and favourite genres when the online store
knows them) and the per-catalog signals the re-rank uses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from feature_repo.schema import DEVICES
from models.base import top_k, unit_rows
from models.ranker import TREND_FEATURES, days_away
from serving.cache import LRU
from serving.online import (
    REQUEST_VIEW,
    USER_VIEWS,
    VIDEO_VIEWS,
    VideoTable,
    parse_genre_shares,
    parse_video_list,
    request_features,
    to_float,
    view_of,
)
from serving.rerank import ItemSignals, percentile
from serving.split_trees import SplitTrees

log = logging.getLogger("vidrec.serving")

CROSS = ("content_sim", "genre_match", "log_popularity", "popularity_vs_usual", "user_history_len", *TREND_FEATURES)
CONTEXT = (
    "ctx_hour",
    "ctx_hour_sin",
    "ctx_hour_cos",
    "ctx_dow",
    *(f"ctx_device_{d}" for d in DEVICES),
    "ctx_log_days_away",
)
COLD_POOL = 300
SIMILAR_WEIGHTS = {"content": 0.5, "collaborative": 0.5}
SIMILAR_CACHE = 20_000  # (video, k) answers kept per worker: about 1 KB each
MARGINS_PER_POOL = 16  # request signatures whose margins a cached pool keeps (~1.3 KB each)


class EngineError(RuntimeError):
    """The loaded models cannot be served (e.g. the ranker needs a feature nobody computes)."""


class KeptMargins(NamedTuple):
    """What a cached pool keeps of its ranking (`Engine.rank`)."""

    key: tuple  # (video features version, the user's online row) they were computed for
    static: np.ndarray  # the static trees' margin
    partner: np.ndarray | None  # the blend partner's column (None: no blend)
    by_signature: dict[bytes, np.ndarray]  # the whole margin per request signature (`SplitTrees.signature`)


@dataclass
class Pool:
    """One user's candidates and what about them does not depend on the request."""

    rows: np.ndarray  # candidate video rows, sorted
    scores: np.ndarray  # (candidates, sources) raw generator scores, NaN where not proposed
    z: np.ndarray  # (candidates, sources) z-score of each generator's score over the catalog
    ranks: np.ndarray  # (candidates, sources) rank in each generator's list; per_source_k + 1 = not proposed
    cross: dict[str, np.ndarray]  # cross features per candidate
    margins: KeptMargins | None = None  # kept while the pool is cached

    def without(self, exclude: np.ndarray) -> Pool:
        return self.take(~sorted_member(self.rows, exclude))

    def take(self, keep: np.ndarray) -> Pool:
        return Pool(
            self.rows[keep],
            self.scores[keep],
            self.z[keep],
            self.ranks[keep],
            {k: v[keep] for k, v in self.cross.items()},
        )


def sorted_member(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`np.isin(rows, values)` for sorted `rows`: one binary search per value, no sort."""
    member = np.zeros(len(rows), dtype=bool)
    at = np.searchsorted(rows, values)
    inside = at < len(rows)
    at = at[inside]
    member[at[rows[at] == np.asarray(values)[inside]]] = True
    return member


@dataclass
class Ranked:
    rows: np.ndarray  # candidate video rows
    scores: np.ndarray  # ranker scores, aligned with rows
    ranks: np.ndarray  # (candidates, sources) rank within each source; per_source_k + 1 = not proposed
    # The ranker's input matrix, built when asked for (inspection and parity tests): with kept
    # margins a request needs none of it.
    matrix: Callable[[], np.ndarray]

    @property
    def features(self) -> np.ndarray:
        return self.matrix()


@dataclass
class Suggestions:
    """Videos to personalize: rows, relevance in [0, 1], and per row who proposed it."""

    rows: np.ndarray
    relevance: np.ndarray  # in [0, 1]
    sources: Any  # list[list[str]] or RankSources: sources[i] for row i


class RankSources:
    """Sources of ranked candidates, worked out only for the few rows that are shown."""

    def __init__(self, engine: Engine, ranks: np.ndarray):
        self.engine, self.ranks = engine, ranks

    def __getitem__(self, position: int) -> list[str]:
        return self.engine.sources_of(self.ranks[position])

    def __len__(self) -> int:
        return len(self.ranks)


class Engine:
    def __init__(
        self,
        system,
        versions: dict[str, str],
        alias: str,
        videos: VideoTable | None = None,
        candidate_cache: int = 0,
        candidate_ttl_s: float = 300.0,
    ):
        self.system = system
        self.versions = dict(versions)
        self.alias = alias
        self.union = system.union
        self.catalog = system.catalog
        self.ranker = system.ranker
        data = system.data
        self.n_videos = data.n_videos
        self.video_ids = np.asarray(data.video_ids).astype(str).astype(object)
        self.video_pos = {v: i for i, v in enumerate(self.video_ids)}
        self.user_pos = {str(u): i for i, u in enumerate(data.user_ids)}
        self.per_source_k = self.union.per_source_k
        self.sources = list(self.union.generators)

        history = sp.csr_matrix(data.matrix, copy=True)
        history.data = np.ones_like(history.data)
        history.sort_indices()
        self.history = history
        # The same statistics the offline ranking frame reads (models.ranker.HistoryStats).
        stats = system.stats
        self.counts = np.asarray(stats.counts, dtype=np.float64)
        self.popularity, self.usual = stats.popularity, stats.usual
        self.trend, self.last_active = stats.trend, stats.last_active
        self.content = self.catalog.content
        self.content_sparse = sp.issparse(self.content)
        self.genres = sp.csr_matrix(self.catalog.genres, dtype=np.float64)
        # similar: both sides L2-normalised once
        self.content_normed = unit_rows(self.content)
        if sp.issparse(self.content_normed):
            self.content_normed = sp.csr_matrix(self.content_normed, dtype=np.float32)
        self.collab_normed = sp.csr_matrix(unit_rows(history.T.tocsr()), dtype=np.float32)
        # Diversity (MMR) compares genres: a dense videos x genres block, rows L2-normalised, so a
        # request's 50 x 50 similarity costs microseconds. Without genres, the content vectors.
        if self.genres.shape[1] > 0:
            self.diversity_vectors = np.asarray(unit_rows(self.genres.toarray().astype(np.float32)))
        else:
            self.diversity_vectors = self.content_normed

        self._plan_features()
        self._prepare_scorers()
        self.booster = self.ranker.booster.get_booster()
        self.booster.set_param({"nthread": 1})
        best = getattr(self.ranker, "best_iteration", None)
        n_trees = self.booster.num_boosted_rounds()
        self.iteration_range = (0, min(int(best) + 1, n_trees)) if best is not None and best >= 0 else (0, 0)
        self.blend = self.ranker.blend
        self.blend_col = self.features.index(self.blend.feature) if self.blend.weight else -1
        self.videos_version = 0
        self.set_videos(videos or VideoTable.empty(self.n_videos))
        # Retrieval depends on the user and the model only (not on the context or the online
        # features), so a user's pooled candidates are kept for a while: repeated requests
        # (refreshes, pagination) rank them again with fresh features without re-scoring the
        # catalog with every generator.
        self.candidate_cache = LRU(candidate_cache, ttl_s=candidate_ttl_s)
        # A video's neighbours depend on the model only; session steering asks for the same
        # anchors on every request of a session, each a catalog-wide sparse product.
        self.similar_cache = LRU(SIMILAR_CACHE)
        # With pools cached, most trees' sum is too (see serving/split_trees.py).
        self.split = self._split_trees() if candidate_cache > 0 else None

    # ---- preparation -----------------------------------------------------------------------------

    def _plan_features(self) -> None:
        features = list(self.ranker.features)
        self.features = features
        self.n_features = len(features)
        index = {name: i for i, name in enumerate(features)}
        self.score_col = {s: index.get(f"score_{s}", -1) for s in self.sources}
        self.rank_col = {s: index.get(f"rank_{s}", -1) for s in self.sources}
        self.z_col = {s: index.get(f"z_{s}", -1) for s in self.sources}
        self.needs_z = any(c >= 0 for c in self.z_col.values())
        self.cross_col = {name: index.get(name, -1) for name in CROSS}
        self.n_sources_col = index.get("n_sources", -1)
        self.context_cols = {name: index[name] for name in CONTEXT if name in index}
        self.user_cols = {n: i for n, i in index.items() if view_of(n) in USER_VIEWS}
        self.request_cols = {n: i for n, i in index.items() if view_of(n) == REQUEST_VIEW}
        self.video_cols = {n: i for n, i in index.items() if view_of(n) in VIDEO_VIEWS}
        # One value per request for all candidates (`request_row`); the other columns come from the pool.
        history_len = [index["user_history_len"]] if "user_history_len" in index else []
        self.request_row_cols = {
            *self.context_cols.values(), *self.user_cols.values(), *self.request_cols.values(), *history_len
        }  # fmt: skip
        known = (
            {f"score_{s}" for s in self.sources}
            | {f"rank_{s}" for s in self.sources}
            | {f"z_{s}" for s in self.sources}
            | set(CROSS)
            | {"n_sources"}
            | set(self.context_cols)
            | set(self.user_cols)
            | set(self.request_cols)
            | set(self.video_cols)
        )
        unknown = [f for f in features if f not in known]
        if unknown:
            raise EngineError(f"the ranker needs features the service cannot compute: {unknown}")

    def _prepare_scorers(self) -> None:
        """One dense catalog row per (generator, user), as `generator.score([user])[0]`.

        A few generators get a faster equivalent that avoids per-call conversions (EASE sums the
        item-weight rows of the user's videos; TF-IDF content multiplies by a transposed matrix
        prepared once; popularity and trending are the same row for everyone). Each fast path
        is checked bit for bit against `score` on sample users at load time and dropped if it
        differs, so a change in a generator's internals can cost speed, never correctness.
        """
        self.scorers = {}
        self.static_dense: dict[str, np.ndarray] = {}
        self.static_moments: dict[str, tuple[float, float]] = {}
        samples = np.unique(
            np.linspace(0, max(self.history.shape[0] - 1, 0), num=min(5, self.history.shape[0])).astype(np.int64)
        )
        for name, generator in self.union.generators.items():
            exact = lambda row, g=generator: np.asarray(g.score(np.array([row], dtype=np.int64)))[0]  # noqa: E731
            fast = None
            try:
                fast = _fast_scorer(generator, self.system.data)
            except Exception:  # internals not as expected: use the generator's own score
                log.debug("no fast scorer for %s", name, exc_info=True)
            if (
                fast is not None
                and len(samples)
                and all(np.array_equal(fast(int(u)), exact(int(u)), equal_nan=True) for u in samples)
            ):
                self.scorers[name] = fast
            else:
                if fast is not None:
                    log.warning("fast scorer of %s differs from its score(): using score()", name)
                self.scorers[name] = exact
            if type(generator).__name__ in ("Popularity", "Trending") and len(samples) > 1:
                rows = [self.scorers[name](int(u)) for u in samples]
                if all(np.array_equal(rows[0], r) for r in rows[1:]):
                    dense = rows[0].astype(np.float64)
                    dense[~np.isfinite(dense)] = np.nan
                    self.static_dense[name] = dense
                    self.static_moments[name] = (float(np.nanmean(dense)), float(np.nanstd(dense)))
                    constant = rows[0]
                    self.scorers[name] = lambda row, c=constant: c

    def set_videos(self, videos: VideoTable) -> None:
        """Install (or refresh) the in-memory video features and the signals derived from them."""
        if videos.values.shape[0] != self.n_videos:
            raise EngineError(f"video table has {videos.values.shape[0]} rows, the model {self.n_videos} videos")
        self.videos = videos
        self.videos_version += 1  # pools' cached margins read the old video features
        self.video_feature_cols = np.array(list(self.video_cols.values()), dtype=np.int64)
        self.video_block = (
            np.column_stack([videos.column(n) for n in self.video_cols]).astype(np.float32)
            if self.video_cols
            else np.zeros((self.n_videos, 0), np.float32)
        )
        missing = [n for n in self.video_cols if n not in videos.columns]
        if missing and videos.columns:
            log.warning("video features missing from the online store (served as missing values): %s", missing)
        trending = videos.column("video_stats__trending_score")
        if not np.isfinite(trending).any():
            generator = self.union.generators.get("trending")
            trending = (
                np.asarray(generator.counts, dtype=np.float64)
                if generator is not None and hasattr(generator, "counts")
                else self.popularity
            )
        self.signals = ItemSignals(
            trending=percentile(trending),
            age_days=videos.column("video_stats__age_days"),
            duration_s=videos.column("video_stats__duration_s"),
        )
        self.popularity_pct = percentile(self.popularity)
        base = 0.5 * self.popularity_pct + 0.5 * self.signals.trending
        self.cold_pool = np.argsort(-base, kind="stable")[:COLD_POOL]
        self.cold_base = base
        self.genre_vocabulary, self.genre_matrix = _genre_matrix(videos.genres, self.n_videos)
        self._genre_names: list[str] = []

    # ---- ids ------------------------------------------------------------------------------------

    def user_row(self, user_id: str) -> int | None:
        return self.user_pos.get(user_id)

    def video_row(self, video_id: str) -> int | None:
        return self.video_pos.get(video_id)

    def genres_of(self, video_id: str) -> list[str]:
        """The genres of a catalog video ([] when unknown)."""
        row = self.video_pos.get(video_id)
        if row is None or not self.genre_vocabulary:
            return []
        if len(self._genre_names) != len(self.genre_vocabulary):
            self._genre_names = sorted(self.genre_vocabulary, key=self.genre_vocabulary.__getitem__)
        return [self._genre_names[c] for c in self.genre_matrix[row].indices]

    def rows_of(self, video_ids) -> np.ndarray:
        """Catalog rows of the known ids among `video_ids` (unknown ids are ignored)."""
        rows = [self.video_pos[v] for v in video_ids if v in self.video_pos]
        return np.unique(np.asarray(rows, dtype=np.int64))

    def seen_rows(self, user_row: int) -> np.ndarray:
        return self.history.indices[self.history.indptr[user_row] : self.history.indptr[user_row + 1]]

    # ---- ranking --------------------------------------------------------------------------------

    def candidates(self, user_row: int, exclude: np.ndarray | None = None) -> Pool:
        """The pooled candidates of one user, with every feature that depends only on (user, video).

        Each generator scores the catalog once; its top `per_source_k` after masking seen and
        excluded videos is exactly `Recommender.recommend`'s, and the z-score of every candidate
        over the whole catalog row is `models.ranker.candidate_frame`'s `z_<name>`.
        """
        seen = self.seen_rows(user_row)
        lists, dense_rows = [], []
        for name in self.sources:
            raw = self.scorers[name](user_row)
            dense_rows.append(raw)
            block = raw.astype(np.float32, copy=True)[None, :]
            block[0, seen] = -np.inf
            if exclude is not None and len(exclude):
                block[0, exclude] = -np.inf
            ids, values = top_k(block, self.per_source_k)
            ids, values = ids[0], values[0]
            keep = ids >= 0
            lists.append((ids[keep], values[keep], np.flatnonzero(keep) + 1))
        rows = np.unique(np.concatenate([ids for ids, _, _ in lists])) if lists else np.zeros(0, np.int64)
        n, m = len(rows), len(self.sources)
        scores = np.full((n, m), np.nan)
        ranks = np.full((n, m), float(self.per_source_k + 1))
        z = np.empty((n, m), dtype=np.float32)
        for j, (ids, values, positions) in enumerate(lists):
            at = np.searchsorted(rows, ids)
            scores[at, j] = values
            ranks[at, j] = positions
            if self.needs_z:
                name = self.sources[j]
                if name in self.static_moments:
                    mean, std = self.static_moments[name]
                    dense = self.static_dense[name]
                else:
                    dense = dense_rows[j].astype(np.float64)
                    if np.isfinite(dense).all():
                        mean, std = dense.mean(), dense.std()
                    else:
                        dense[~np.isfinite(dense)] = np.nan
                        mean, std = np.nanmean(dense), np.nanstd(dense)
                z[:, j] = (dense[rows] - mean) / (std if std > 0 else 1.0)
        return Pool(rows, scores, z, ranks, self._cross(user_row, rows))

    def _cross(self, user_row: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """models.ranker.cross_features for one user's candidates."""
        seen = self.seen_rows(user_row)
        count = len(seen)
        out: dict[str, np.ndarray] = {}
        if self.cross_col["content_sim"] >= 0:
            if count:
                profile = np.asarray(self.content[seen].sum(axis=0) / count, dtype=np.float32).ravel()
                out["content_sim"] = np.asarray(self.content[rows] @ profile).ravel()
            else:
                out["content_sim"] = np.zeros(len(rows))
        if self.cross_col["genre_match"] >= 0:
            genre_profile = np.asarray(self.genres[seen].sum(axis=0)).ravel()
            total = genre_profile.sum()
            out["genre_match"] = self.genres[rows] @ (genre_profile / total) if total > 0 else np.zeros(len(rows))
        out["log_popularity"] = self.popularity[rows]
        out["popularity_vs_usual"] = self.popularity[rows] - self.usual[user_row]
        for j, name in enumerate(TREND_FEATURES):
            if self.cross_col[name] >= 0:
                out[name] = self.trend[rows, j]
        return out

    def pool(self, user_row: int, exclude: np.ndarray | None = None) -> Pool:
        """`candidates`, through the per-user cache when it is on (exclusions filtered afterwards)."""
        if self.candidate_cache.size <= 0:
            return self.candidates(user_row, exclude)
        found = self.candidate_cache.fresh(user_row)
        if found is None:
            found = self.candidates(user_row)
            self.candidate_cache.put(user_row, found)
        if exclude is not None and len(exclude):
            found = found.without(exclude)
        return found

    def feature_matrix(
        self,
        user_row: int,
        pool: Pool,
        user: dict[str, object] | None,
        ts: datetime,
        device: str,
    ) -> np.ndarray:
        """The ranker's input, one row per candidate, columns in `ranker.features` order."""
        return self.fill(pool, self.request_row(user_row, user, ts, device))

    def request_row(self, user_row: int, user: dict[str, object] | None, ts: datetime, device: str) -> np.ndarray:
        """The ranker's columns with one value per request (context, the user's online row, request
        features, history length), NaN in the others."""
        constant = np.full(self.n_features, np.nan, dtype=np.float32)
        hour = ts.hour
        context = {
            "ctx_hour": hour,
            "ctx_hour_sin": math.sin(2 * math.pi * hour / 24),
            "ctx_hour_cos": math.cos(2 * math.pi * hour / 24),
            "ctx_dow": ts.weekday(),
            "ctx_log_days_away": float(days_away(self.last_active[user_row], math.floor(ts.timestamp()))),
        }
        device = device if device in DEVICES else "unknown"
        for name in DEVICES:
            context[f"ctx_device_{name}"] = 1.0 if device == name else 0.0
        for name, col in self.context_cols.items():
            constant[col] = context[name]
        if user:
            for name, col in self.user_cols.items():
                constant[col] = to_float(user.get(name))
        if self.request_cols:
            requested = request_features(user, ts, device)
            for name, col in self.request_cols.items():
                constant[col] = requested.get(name, math.nan)
        col = self.cross_col["user_history_len"]
        if col >= 0:
            constant[col] = self.counts[user_row]
        return constant

    def fill(self, pool: Pool, constant: np.ndarray) -> np.ndarray:
        """The ranker's input for the pool's candidates: `constant` (a `request_row`) in every row,
        the generator, cross and video columns per candidate."""
        x = np.empty((len(pool.rows), self.n_features), dtype=np.float32)
        x[:] = constant
        for j, name in enumerate(self.sources):
            if self.score_col[name] >= 0:
                x[:, self.score_col[name]] = pool.scores[:, j]
            if self.rank_col[name] >= 0:
                x[:, self.rank_col[name]] = pool.ranks[:, j]
            if self.z_col[name] >= 0:
                x[:, self.z_col[name]] = pool.z[:, j]
        if self.n_sources_col >= 0:
            x[:, self.n_sources_col] = (pool.ranks <= self.per_source_k).sum(axis=1)
        for name, values in pool.cross.items():
            if self.cross_col[name] >= 0:
                x[:, self.cross_col[name]] = values
        if len(self.video_feature_cols):
            x[:, self.video_feature_cols] = self.video_block[pool.rows]
        return x

    def score(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        margin = self.booster.inplace_predict(
            x, iteration_range=self.iteration_range, missing=np.nan, validate_features=False
        )
        return self._blend(margin, x[:, self.blend_col] if self.blend_col >= 0 else None)

    def _blend(self, margin: np.ndarray, partner: np.ndarray | None) -> np.ndarray:
        """The ranker's score: the margin, blended with the partner column's values if it has a blend."""
        if self.blend_col < 0:
            return margin
        return self.blend.apply(margin, partner, None)  # one user: one query

    def rank(
        self,
        user_row: int,
        user: dict[str, object] | None,
        ts: datetime,
        device: str,
        exclude: np.ndarray | None = None,
    ) -> Ranked:
        if self.split is None:
            pool = self.pool(user_row, exclude)
            x = self.feature_matrix(user_row, pool, user, ts, device)
            return Ranked(pool.rows, np.asarray(self.score(x), dtype=np.float64), pool.ranks, lambda: x)
        pool = self.pool(user_row)  # the cached pool, whose margins are kept with it
        constant = self.request_row(user_row, user, ts, device)
        if len(pool.rows):
            margin, partner = self._margin(pool, constant)
        else:
            margin, partner = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        rows, ranks, keep = pool.rows, pool.ranks, slice(None)
        if exclude is not None and len(exclude):
            keep = ~sorted_member(rows, exclude)
            rows, ranks, margin, partner = rows[keep], ranks[keep], margin[keep], partner[keep]
        scores = np.asarray(self._blend(margin, partner), dtype=np.float64)
        return Ranked(rows, scores, ranks, lambda: self.fill(pool, constant)[keep])

    def _margin(self, pool: Pool, constant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ranker's margin of the pool's rows and the blend partner's column. The static trees'
        part is computed again only when the video features or the user's online row changed, the
        per-request trees' only for a request signature the pool has not seen: a request whose
        signature the pool knows builds no feature matrix."""
        key = (self.videos_version, constant[self.user_feature_cols].tobytes())
        kept = pool.margins
        x = None
        if kept is None or kept.key != key:
            x = self.fill(pool, constant)
            partner = x[:, self.blend_col].copy() if self.blend_col >= 0 else None
            kept = pool.margins = KeptMargins(key, self.split.static_margin(x), partner, {})
        _, static, partner, by_signature = kept
        signature = self.split.signature(constant)
        margin = by_signature.get(signature)
        if margin is None:
            if len(by_signature) >= MARGINS_PER_POOL:
                by_signature.clear()
            x = self.fill(pool, constant) if x is None else x
            margin = by_signature[signature] = self.split.margin(static, x)
        if self.blend_col in self.request_row_cols:  # a per-request partner: this request's value
            partner = np.full(len(pool.rows), constant[self.blend_col], dtype=np.float32)
        elif partner is None:
            partner = np.zeros(len(pool.rows), dtype=np.float32)  # no blend: never read
        return margin, partner

    def _split_trees(self) -> SplitTrees | None:
        """The ranker's trees split by per-request features, checked on the most active user's pool."""
        self.user_feature_cols = np.array(sorted(self.user_cols.values()), dtype=np.int64)
        per_request = sorted([*self.context_cols.values(), *self.request_cols.values()])
        if not len(self.counts):
            return None
        row = int(np.argmax(self.counts))
        now = datetime.now().astimezone()
        sample = self.feature_matrix(row, self.candidates(row), None, now, "mobile")
        split = SplitTrees.of(self.booster, self.iteration_range, per_request, sample)
        if split is not None:
            log.info(
                "ranker: %d of %d trees read the request's context; the other %d are summed once per pool",
                split.n_per_request, split.n_static + split.n_per_request, split.n_static,
            )  # fmt: skip
        return split

    def sources_of(self, ranks: np.ndarray) -> list[str]:
        """The generators that proposed one candidate (its row of `Ranked.ranks`), best rank first."""
        values = ranks.tolist()  # a handful of sources: plain Python sorts them faster than numpy
        order = sorted(range(len(values)), key=values.__getitem__)  # stable, as argsort(kind="stable")
        return [self.sources[j] for j in order if values[j] <= self.per_source_k]

    # ---- without the ranker -----------------------------------------------------------------------

    def similar(self, video_row: int, k: int) -> Suggestions:
        """Blend of content cosine and co-watch (collaborative) cosine; the video itself excluded.
        The answer is shared through the cache: callers read it, never change it."""
        found = self.similar_cache.fresh((video_row, k))
        if found is None:
            found = self._similar(video_row, k)
            self.similar_cache.put((video_row, k), found)
        return found

    def _similar(self, video_row: int, k: int) -> Suggestions:
        content = np.asarray(
            (self.content_normed @ self.content_normed[video_row].T).toarray()
            if sp.issparse(self.content_normed)
            else self.content_normed @ self.content_normed[video_row]
        ).ravel()
        collab = np.asarray((self.collab_normed @ self.collab_normed[video_row].T).toarray()).ravel()
        blend = SIMILAR_WEIGHTS["content"] * content + SIMILAR_WEIGHTS["collaborative"] * collab
        blend[video_row] = -np.inf
        blend[blend <= 0] = -np.inf
        ids, values = top_k(blend[None, :].astype(np.float32), k)
        ids, values = ids[0], values[0]
        keep = ids >= 0
        ids, values = ids[keep], values[keep]
        sources = [
            [name for name, part in (("content", content[i]), ("collaborative", collab[i])) if part > 0] for i in ids
        ]
        relevance = values.astype(np.float64)
        ids.flags.writeable = relevance.flags.writeable = False
        return Suggestions(ids, relevance, sources)

    def cold_start(self, user: dict[str, object] | None, exclude: np.ndarray | None = None) -> Suggestions:
        """Trending and popular videos, pulled towards the user's recent videos and favourite genres
        when the online store knows the user (a new user the model has not been trained on)."""
        relevance = {int(r): float(self.cold_base[r]) for r in self.cold_pool}
        sources = {
            int(r): ["trending" if self.signals.trending[r] >= self.popularity_pct[r] else "popularity"]
            for r in self.cold_pool
        }
        if user:
            recent = [
                self.video_pos[v]
                for v in parse_video_list(user.get("user_recent__last_video_ids"))
                if v in self.video_pos
            ][:3]
            for row in recent:
                similar = self.similar(row, 30)
                for r, s in zip(similar.rows, similar.relevance, strict=True):
                    r = int(r)
                    relevance[r] = relevance.get(r, 0.0) + 0.6 * float(s)
                    sources.setdefault(r, []).insert(0, "similar-to-recent")
            shares = parse_genre_shares(user.get("user_profile__top_genres"))
            if shares and self.genre_vocabulary:
                weights = np.zeros(len(self.genre_vocabulary))
                for name, share in shares.items():
                    if name in self.genre_vocabulary:
                        weights[self.genre_vocabulary[name]] = share if math.isfinite(share) else 0.0
                if weights.any():
                    affinity = self.genre_matrix @ (weights / weights.sum())
                    for r in list(relevance):
                        if affinity[r] > 0:
                            relevance[r] += 0.3 * float(affinity[r])
                            if "genres" not in sources[r]:
                                sources[r].append("genres")
        rows = np.fromiter(relevance.keys(), dtype=np.int64, count=len(relevance))
        values = np.fromiter(relevance.values(), dtype=np.float64, count=len(relevance))
        if exclude is not None and len(exclude):
            keep = ~np.isin(rows, exclude)
            rows, values = rows[keep], values[keep]
        top = values.max() if len(values) else 1.0
        return Suggestions(rows, values / top if top > 0 else values, [sources[int(r)] for r in rows])

    def popular_for(self, user_row: int | None, exclude: np.ndarray | None = None) -> Suggestions:
        """The fallback when the online store is down: trending/popular minus what the user has seen."""
        blocked = [] if exclude is None else [exclude]
        if user_row is not None:
            blocked.append(self.seen_rows(user_row))
        return self.cold_start(None, np.concatenate(blocked) if blocked else None)


def _fast_scorer(generator, data):
    """A faster `score` for one user for the generators whose structure allows it (else None)."""
    kind = type(generator).__name__
    if kind == "EASE" and hasattr(generator, "weights_") and hasattr(generator, "active_items_"):
        # score() slices the user's row and then its active columns on every call; slice the
        # columns once for all users instead (same values, same float32 products and sums).
        weights = generator.weights_
        active = generator.active_items_
        by_active = sp.csr_matrix(generator.data.matrix[:, active], dtype=np.float32)
        n = generator.data.n_videos

        def ease(row: int) -> np.ndarray:
            out = np.zeros(n, dtype=np.float32)
            out[active] = np.asarray(by_active[row] @ weights)[0]
            return out

        return ease
    if kind == "ContentBased" and hasattr(generator, "profiles_") and sp.issparse(getattr(generator, "vectors_", None)):
        transposed = sp.csr_matrix(generator.vectors_.T)
        profiles = sp.csr_matrix(unit_rows(generator.profiles_))

        def content(row: int) -> np.ndarray:
            return (profiles[row] @ transposed).toarray()[0].astype(np.float32, copy=False)

        return content
    return None


def _genre_matrix(genres: list[str] | None, n_videos: int) -> tuple[dict[str, int], sp.csr_matrix]:
    """Videos x genres (0/1, rows L2-normalised) from '|'-joined genre strings."""
    if not genres:
        return {}, sp.csr_matrix((n_videos, 0))
    lists = [[g for g in (value or "").split("|") if g and g != "(no genres listed)"] for value in genres]
    vocabulary = {g: i for i, g in enumerate(sorted({g for gs in lists for g in gs}))}
    rows = np.repeat(np.arange(n_videos), [len(gs) for gs in lists])
    cols = [vocabulary[g] for gs in lists for g in gs]
    matrix = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(n_videos, len(vocabulary)))
    return vocabulary, sp.csr_matrix(unit_rows(matrix))
