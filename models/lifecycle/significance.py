"""Paired comparisons of two models on the same held-out users, with bootstrap intervals.

The gate asks whether a challenger is better than the reference (the champion, or the best
non-personalized baseline for a first model) by more than the noise of the users it was judged
on. Both models' figures are kept per user; the bootstrap resamples users (the same draw for both
models, so the comparison is paired) and reads the interval off the percentiles of the resampled
difference. Metrics that are means over users (nDCG, recall, diversity) use the per-user values;
catalog coverage, a property of all lists together, is recomputed on each resample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

COVERAGE_PREFIX = "coverage_at_"


@dataclass
class PerUser:
    """One model's results per judged user: metric -> value per user (NaN: undefined for that
    user, e.g. diversity of a one-video list), and the top-k lists as video rows."""

    users: np.ndarray  # user ids, sorted; every array below is in this order
    values: dict[str, np.ndarray]
    lists: np.ndarray  # (n_users, k) video rows, -1 for empty slots
    n_videos: int

    @classmethod
    def of(cls, users: np.ndarray, values: dict[str, np.ndarray], lists: np.ndarray, n_videos: int) -> PerUser:
        """From arrays in any user order: sorted by user id, as `subset` and pairing expect."""
        order = np.argsort(users, kind="stable")
        return cls(users[order], {m: v[order] for m, v in values.items()}, lists[order], n_videos)

    def subset(self, users: np.ndarray) -> PerUser:
        at = np.searchsorted(self.users, users)
        return PerUser(users, {m: v[at] for m, v in self.values.items()}, self.lists[at], self.n_videos)


@dataclass(frozen=True)
class Interval:
    """challenger - reference on the paired users, with a bootstrap interval."""

    metric: str
    challenger: float
    reference: float
    diff: float
    low: float
    high: float
    n_users: int
    confidence: float

    def words(self) -> str:
        return (
            f"{self.metric} {self.challenger:.4f} vs {self.reference:.4f}: {self.diff:+.4f} "
            f"({self.confidence:.0%} CI {self.low:+.4f} to {self.high:+.4f}, {self.n_users} users)"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def paired_intervals(
    challenger: PerUser,
    reference: PerUser,
    metrics: list[str],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """An `Interval` per metric the two share, on the users both were judged on."""
    users = np.intersect1d(challenger.users, reference.users)
    if len(users) == 0:
        return {}
    a, b = challenger.subset(users), reference.subset(users)
    n = len(users)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    tail = (1.0 - confidence) / 2.0
    out = {}
    for metric in metrics:
        if metric.startswith(COVERAGE_PREFIX):
            point_a, point_b, boot = _coverage(a, b, draws)
        elif metric in a.values and metric in b.values:
            point_a, point_b, boot = _mean(a.values[metric], b.values[metric], draws)
        else:
            continue
        if boot is None:
            continue
        low, high = np.quantile(boot, [tail, 1.0 - tail])
        out[metric] = Interval(metric, point_a, point_b, point_a - point_b, float(low), float(high), n, confidence)
    return out


def _mean(a: np.ndarray, b: np.ndarray, draws: np.ndarray):
    both = np.isfinite(a) & np.isfinite(b)  # a user counts where both models define the metric
    if not both.any():
        return float("nan"), float("nan"), None
    diff = np.where(both, a - b, 0.0)
    weight = both.astype(np.float64)
    boot = np.empty(len(draws))
    for start in range(0, len(draws), 100):  # (100 x n_users) at a time bounds memory
        chunk = draws[start : start + 100]
        boot[start : start + len(chunk)] = diff[chunk].sum(axis=1) / np.maximum(weight[chunk].sum(axis=1), 1.0)
    return float(a[both].mean()), float(b[both].mean()), boot


def _coverage(a: PerUser, b: PerUser, draws: np.ndarray):
    sel_a, sel_b = _selection(a.lists, a.n_videos), _selection(b.lists, b.n_videos)
    n = len(a.users)
    everyone = np.ones(n)
    point_a = float((sel_a.T @ everyone > 0).sum() / a.n_videos)
    point_b = float((sel_b.T @ everyone > 0).sum() / b.n_videos)
    boot = np.empty(len(draws))
    for i, draw in enumerate(draws):
        chosen = np.bincount(draw, minlength=n) > 0
        boot[i] = (sel_a.T @ chosen > 0).sum() / a.n_videos - (sel_b.T @ chosen > 0).sum() / b.n_videos
    return point_a, point_b, boot


def _selection(lists: np.ndarray, n_videos: int) -> sp.csr_matrix:
    rows, slots = np.nonzero(lists >= 0)
    return sp.csr_matrix((np.ones(len(rows)), (rows, lists[rows, slots])), shape=(len(lists), n_videos))
