"""A/B-test analysis: engagement per variant from what the service logged, with intervals.

What is read. The service's feedback folder holds impressions (`feature_repo.schema.IMPRESSIONS`,
one row per shown slot, with the variant that served it) and feedback events
(`FEEDBACK_EVENTS`: canonical events plus the `request_id`/`position` of the slate they answer).
`read_logs` keeps the experiment's impressions with start <= event_ts < end and the events of
the users who got them from start to end + `ATTRIBUTION_SLACK` (a click on a slate shown just
before the end still arrives). Folders are named by arrival day, so only event_ts is filtered.

Units. The user is the randomization unit (the service hashes user ids into variants), so the
user is the independent unit of every statistic. A user belongs to the variant of their first
impression (intention to treat); users served both variants are counted and warned about.
A user's events count from their first impression on (earlier behaviour cannot be the
variant's doing and only adds noise), except events attributed to one of their impressions.

Sessions. A user's impressions and events, merged on time, start a new session when an
activity begins more than `SESSION_GAP` after everything before it has ended. A watch event is
stamped when playback ends (as `feature_repo.synthetic` writes it), so it covers
[event_ts - watch_time_s, event_ts]; every other row is an instant. Session length is the
session's last end minus its first begin. Sessions that begin at or after the window's end are
dropped: the slack lets sessions finish, it does not add new ones.

Attribution. An event with a request_id is matched to an impression of the same user by
(request_id, video_id), else by (request_id, position). CTR counts clicked impressions (two clicks
on one slot are one); click/play/watch/like events that match no impression are "unattributed":
counted and reported, never in CTR. Plays, watch time and likes are the user's, attributed or
not (intention to treat).

Metrics, all higher-is-better (see `METRICS`): ctr, plays_per_session, watch_time_per_user,
watch_time_per_session, session_length (mean per session) and likes_per_1k_impressions.

Statistics. A ratio whose denominator is not the user (everything but watch_time_per_user) is
sum(numerators) / sum(denominators) over a variant's users; its variance comes from the delta
method on the per-user sums (users independent, sessions and impressions of one user not), the
difference's interval is normal and its p-value a two-sided z-test. watch_time_per_user, a mean
over users with a long right tail, uses a seeded bootstrap over users (each variant resampled on
its own), a percentile interval and the bootstrap p-value: twice the share of resampled
differences on the far side of zero (the p-value that matches the percentile interval; it
cannot go below 2 / (n_boot + 1)). Welch's t would need a normal mean this tail may not give.
Intervals are at 1 - alpha; a metric's verdict is "challenger better"/"worse" when p < alpha.

Sample ratio. Users per variant are tested against the configured challenger share (chi-square);
below `SRM_P_THRESHOLD` the assignment or the logging is broken, the metrics describe
self-selected groups and the report says not to trust them.

Decision. "promote" when there is no sample ratio mismatch, the primary metric is significantly
better and no guard metric significantly worse; "keep champion" when the primary or a guard is
significantly worse; otherwise "inconclusive".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy import stats  # noqa: E402

from feature_repo import schema  # noqa: E402
from feature_repo.lake import replacing, write_text_atomic  # noqa: E402
from vidrec.settings import Settings  # noqa: E402

SESSION_GAP = timedelta(minutes=30)
ATTRIBUTION_SLACK = timedelta(hours=6)
# Far below any alpha used for metrics: a mismatch this unlikely by chance means broken
# assignment or lost logs, and the test is run on every report, so false alarms must be rare.
SRM_P_THRESHOLD = 0.001
MLFLOW_EXPERIMENT = "vidrec-experiments"

CHAMPION, CHALLENGER = "champion", "challenger"
VARIANTS = (CHAMPION, CHALLENGER)
BETTER, WORSE, INCONCLUSIVE = "challenger better", "challenger worse", "inconclusive"
PROMOTE, KEEP_CHAMPION, SRM = "promote", "keep champion", "srm"
SRM_VERDICT = "sample ratio mismatch: do not trust these metrics"

DEFAULT_PRIMARY = "watch_time_per_session"
DEFAULT_GUARDS = ("ctr", "watch_time_per_user", "session_length")
ENGAGEMENT = ("click", "play", "watch", "like")  # the events that answer a slate

IMPRESSION_COLUMNS = ["request_id", "user_id", "video_id", "position", "variant", "model_versions", "event_ts"]
EVENT_COLUMNS = ["event_id", "user_id", "video_id", "event_ts", "event_type", "watch_time_s", "request_id", "position"]
_COUNTS = ["impressions", "clicks", "plays", "watch_s", "likes"]  # per-row contributions, summed per user
_MAX_TIMELINE_POINTS = 100


@dataclass(frozen=True)
class MetricSpec:
    """A metric as per-user sums: numerator / denominator over a variant's users (denominator
    None: the mean of the numerator over users)."""

    name: str
    numerator: str
    denominator: str | None
    scale: float
    description: str

    @property
    def method(self) -> str:
        return "bootstrap" if self.denominator is None else "delta"


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("ctr", "clicks", "impressions", 1.0, "impressions clicked at least once / impressions"),
        MetricSpec("plays_per_session", "plays", "sessions", 1.0, "play events / sessions"),
        MetricSpec("watch_time_per_user", "watch_s", None, 1.0, "seconds watched per user"),
        MetricSpec("watch_time_per_session", "watch_s", "sessions", 1.0, "seconds watched / sessions"),
        MetricSpec("session_length", "session_s", "sessions", 1.0, "mean session length (s)"),
        MetricSpec("likes_per_1k_impressions", "likes", "impressions", 1000.0, "likes per 1000 impressions"),
    )
}


class NoImpressions(ValueError):
    """The experiment showed nothing in the window: there is nothing to compare."""


# ---- reading the logs --------------------------------------------------------------------------------


@dataclass
class ExperimentLogs:
    """One experiment's impressions (IMPRESSION_COLUMNS) and its users' events (EVENT_COLUMNS),
    with the window they were read for (None: open-ended)."""

    experiment: str
    start: datetime | None
    end: datetime | None
    impressions: pd.DataFrame
    events: pd.DataFrame
    slack: timedelta = ATTRIBUTION_SLACK  # events are read up to end + slack


def read_logs(
    root: Path,
    experiment: str,
    start: datetime | None = None,
    end: datetime | None = None,
    slack: timedelta = ATTRIBUTION_SLACK,
) -> ExperimentLogs:
    """The experiment's impressions with start <= event_ts < end, and the events of their users
    with start <= event_ts < end + slack. Only the needed columns are read and rows are filtered
    in the scan, so memory follows the experiment, not the log."""
    root = Path(root)
    start = None if start is None else schema.utc_time(start)
    end = None if end is None else schema.utc_time(end)
    shown = _all(ds.field("experiment") == experiment, *_time_bounds(start, end))
    impressions = _scan(root / "impressions", schema.IMPRESSIONS, IMPRESSION_COLUMNS, shown)
    users = pa.array(impressions["user_id"].dropna().unique(), pa.string())
    if len(users):
        late_end = None if end is None else end + slack
        wanted = _all(ds.field("user_id").isin(users), *_time_bounds(start, late_end))
        events = _scan(root / "events", schema.FEEDBACK_EVENTS, EVENT_COLUMNS, wanted)
    else:
        events = _empty(schema.FEEDBACK_EVENTS, EVENT_COLUMNS)
    return ExperimentLogs(experiment, start, end, impressions, events, slack)


def served_versions(logs: ExperimentLogs, variant: str) -> dict[str, str]:
    """The model versions `variant` served in the logs ({} if it served nothing). A variant that
    served several sets (a reload mid-experiment) measured a mix: that is an error, not a winner."""
    shown = logs.impressions.loc[logs.impressions["variant"] == variant, "model_versions"].dropna().unique()
    seen = sorted({json.dumps(json.loads(v), sort_keys=True) for v in shown})
    if len(seen) > 1:
        raise ValueError(f"{variant} served several model versions in {_window_text(logs)}: {', '.join(seen)}")
    return json.loads(seen[0]) if seen else {}


def _scan(folder: Path, full: pa.Schema, columns: list[str], where: ds.Expression | None) -> pd.DataFrame:
    if not folder.is_dir():
        return _empty(full, columns)
    # The full schema fills columns an older batch lacks (request_id, position) with nulls;
    # names starting with "." are batches still being written.
    dataset = ds.dataset(folder, format="parquet", schema=full, ignore_prefixes=[".", "_"])
    return dataset.to_table(columns=columns, filter=where).to_pandas()


def _empty(full: pa.Schema, columns: list[str]) -> pd.DataFrame:
    return full.empty_table().select(columns).to_pandas()


def _time_bounds(start: datetime | None, end: datetime | None) -> list[ds.Expression]:
    ts = pa.timestamp("us", tz="UTC")
    bounds = []
    if start is not None:
        bounds.append(ds.field("event_ts") >= pa.scalar(start, ts))
    if end is not None:
        bounds.append(ds.field("event_ts") < pa.scalar(end, ts))
    return bounds


def _all(*conditions: ds.Expression) -> ds.Expression:
    out = conditions[0]
    for condition in conditions[1:]:
        out = out & condition
    return out


# ---- per-user aggregation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    users: int
    impressions: int
    events: int  # events that count (from exposure on, in kept sessions)
    unattributed_events: int  # click/play/watch/like matching no impression of the experiment
    users_in_both: int  # served both variants; counted under their first
    sessions: int


@dataclass(frozen=True)
class VariantCounts:
    users: int
    impressions: int
    sessions: int


@dataclass
class _Activity:
    """One row per counted impression or event: user_id, user (its row in `variants`), t (stamp,
    s since epoch), begin, end, session (a global id; a session's rows are contiguous) and the
    row's contributions (_COUNTS)."""

    rows: pd.DataFrame
    variants: pd.Series  # user_id -> variant of the first impression
    counts: Counts
    warnings: list[str]


def _seconds(ts: pd.Series) -> np.ndarray:
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):  # parsing is slow: only frames built by hand need it
        ts = schema.utc_series(ts)
    return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)


def _window_text(logs: ExperimentLogs) -> str:
    start = logs.start.isoformat() if logs.start else "the beginning"
    end = logs.end.isoformat() if logs.end else "now"
    return f"[{start}, {end})"


def _activity(logs: ExperimentLogs) -> _Activity:
    warnings: list[str] = []
    lo = -math.inf if logs.start is None else logs.start.timestamp()
    hi = math.inf if logs.end is None else logs.end.timestamp()
    imp = _shown(logs, lo, hi, warnings)
    first = imp.groupby("user_id", sort=False).agg(variant=("variant", "first"), exposed=("t", "first"))
    users_in_both = int((imp.groupby("user_id")["variant"].nunique() > 1).sum())
    if users_in_both:
        warnings.append(f"{users_in_both} users were served both variants: each counts under their first")

    ev = logs.events[EVENT_COLUMNS]
    ev = ev[~(ev["event_id"].notna() & ev["event_id"].duplicated())]  # retried feedback batches
    ev = ev[ev["user_id"].isin(first.index)]
    ev = ev.assign(t=_seconds(ev["event_ts"]) if len(ev) else np.empty(0), position=ev["position"].astype("Int64"))
    ev = ev[(ev["t"] >= lo) & (ev["t"] < hi + logs.slack.total_seconds())]
    ev = ev.assign(imp_id=_attribute(ev, imp))
    # From exposure on: what came before cannot be the variant's doing.
    ev = ev[(ev["imp_id"] >= 0) | (ev["t"] >= ev["user_id"].map(first["exposed"]).to_numpy())]

    rows = _sessions(pd.concat([_impression_rows(imp), _event_rows(ev)], ignore_index=True))
    if logs.end is not None:  # the slack finishes sessions, it does not start new ones
        rows = rows[rows.groupby("session")["begin"].transform("min") < hi]
    variants = first["variant"]
    rows = rows.assign(user=variants.index.get_indexer(rows["user_id"])).reset_index(drop=True)
    counts = Counts(
        users=len(variants),
        impressions=len(imp),
        events=int(rows["is_event"].sum()),
        unattributed_events=int(rows["unattributed"].sum()),
        users_in_both=users_in_both,
        sessions=int(rows["session"].nunique()),
    )
    if counts.unattributed_events:
        warnings.append(
            f"{counts.unattributed_events} click/play/watch/like events match no impression of this experiment "
            "(counted as the user's engagement, not in CTR)"
        )
    return _Activity(rows, variants, counts, warnings)


def _shown(logs: ExperimentLogs, lo: float, hi: float, warnings: list[str]) -> pd.DataFrame:
    """The experiment's impressions in the window, once each, in time order, with `t` and `imp_id`."""
    imp = logs.impressions
    if "experiment" in imp.columns:  # frames built in memory may hold several experiments
        imp = imp[imp["experiment"] == logs.experiment]
    imp = imp[["request_id", "user_id", "video_id", "position", "variant", "event_ts"]]
    imp = imp.assign(t=_seconds(imp["event_ts"]) if len(imp) else np.empty(0))
    imp = imp[(imp["t"] >= lo) & (imp["t"] < hi)]
    strange = ~imp["variant"].isin(VARIANTS)
    if strange.any():
        warnings.append(f"{int(strange.sum())} impressions with an unknown variant left out")
        imp = imp[~strange]
    if imp.empty:
        raise NoImpressions(f"experiment {logs.experiment!r} has no impressions in {_window_text(logs)}")
    # A retried batch repeats rows: a (request, slot) is shown once.
    imp = imp.sort_values(["t", "request_id", "position"], kind="stable").drop_duplicates(["request_id", "position"])
    return imp.assign(position=imp["position"].astype("Int64"), imp_id=np.arange(len(imp)))


def _impression_rows(imp: pd.DataFrame) -> pd.DataFrame:
    t = imp["t"].to_numpy()
    return pd.DataFrame(
        {
            "user_id": imp["user_id"].to_numpy(),
            "t": t,
            "begin": t,
            "end": t,
            "impressions": 1,
            "clicks": 0,
            "plays": 0,
            "watch_s": 0.0,
            "likes": 0,
            "unattributed": False,
            "is_event": False,
        }
    )


def _event_rows(ev: pd.DataFrame) -> pd.DataFrame:
    """Events as activity rows. A watch is stamped when playback ends: it began watch_time_s earlier."""
    ev = ev.sort_values("t", kind="stable")  # so that an impression's first click comes first
    kind, ids, t = ev["event_type"].to_numpy(), ev["imp_id"].to_numpy(), ev["t"].to_numpy()
    watch_s = np.where(kind == "watch", ev["watch_time_s"].fillna(0.0).clip(lower=0.0).to_numpy(), 0.0)
    clicked = (kind == "click") & (ids >= 0)
    first_click = clicked.copy()  # two clicks on one slot are one clicked impression
    first_click[clicked] = ~pd.Series(ids[clicked]).duplicated().to_numpy()
    return pd.DataFrame(
        {
            "user_id": ev["user_id"].to_numpy(),
            "t": t,
            "begin": t - watch_s,
            "end": t,
            "impressions": 0,
            "clicks": first_click.astype(np.int64),
            "plays": (kind == "play").astype(np.int64),
            "watch_s": watch_s,
            "likes": (kind == "like").astype(np.int64),
            "unattributed": np.isin(kind, ENGAGEMENT) & (ids < 0),
            "is_event": True,
        }
    )


def _attribute(ev: pd.DataFrame, imp: pd.DataFrame) -> np.ndarray:
    """The imp_id each event answers (-1: none): by (user, request, video), else (user, request, slot)."""
    out = np.full(len(ev), -1, np.int64)
    if ev.empty:
        return out
    keyed = ev.reset_index(drop=True).assign(row=np.arange(len(ev)))
    keyed = keyed[keyed["request_id"].notna()]
    for key in (["user_id", "request_id", "video_id"], ["user_id", "request_id", "position"]):
        pending = keyed[out[keyed["row"].to_numpy()] < 0]
        pending = pending[pending[key[-1]].notna()]
        target = imp[[*key, "imp_id"]].drop_duplicates(key)
        hit = pending[[*key, "row"]].merge(target, on=key, how="inner")
        out[hit["row"].to_numpy()] = hit["imp_id"].to_numpy()
    return out


def _sessions(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with a `session` id: a new one where an activity begins more than SESSION_GAP after
    every earlier activity of the user has ended."""
    rows = rows.sort_values(["user_id", "begin", "end"], kind="stable").reset_index(drop=True)
    ended = rows.groupby("user_id", sort=False)["end"].cummax()
    before = ended.groupby(rows["user_id"], sort=False).shift()
    new = before.isna().to_numpy() | (rows["begin"].to_numpy() - before.to_numpy() > SESSION_GAP.total_seconds())
    return rows.assign(session=np.cumsum(new))


def _per_user(act: _Activity, cut: float | None = None) -> pd.DataFrame:
    """Per-user sums (_COUNTS, sessions, session_s) and variant, from the rows stamped before `cut`.
    Sessions are the whole window's, cut short: a later row cannot change an earlier split."""
    rows = act.rows if cut is None else act.rows[act.rows["t"].to_numpy() < cut]
    n = len(act.variants)
    user, session = rows["user"].to_numpy(), rows["session"].to_numpy()
    sums = {c: np.bincount(user, weights=rows[c].to_numpy(np.float64), minlength=n) for c in _COUNTS}
    # Rows of a session are contiguous: reduce each run of equal session ids.
    first = np.flatnonzero(np.r_[True, session[1:] != session[:-1]]) if len(rows) else np.zeros(0, np.int64)
    length = np.zeros(0)
    if len(rows):
        length = np.maximum.reduceat(rows["end"].to_numpy(), first) - np.minimum.reduceat(
            rows["begin"].to_numpy(), first
        )
    sums["sessions"] = np.bincount(user[first], minlength=n).astype(np.float64)
    sums["session_s"] = np.bincount(user[first], weights=length, minlength=n)
    users = pd.DataFrame(sums, index=act.variants.index).assign(variant=act.variants.to_numpy())
    return users[users["impressions"] > 0]


# ---- statistics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One variant's value of a metric with its (1 - alpha) interval."""

    value: float
    low: float
    high: float
    users: int


@dataclass(frozen=True)
class MetricResult:
    name: str
    method: str  # "delta" | "bootstrap"
    champion: Estimate
    challenger: Estimate
    diff: float  # challenger - champion
    diff_low: float
    diff_high: float
    lift: float  # diff / champion
    lift_low: float
    lift_high: float
    p_value: float
    verdict: str


def _verdict(diff: float, p: float, alpha: float) -> str:
    if not np.isfinite(p) or p >= alpha or diff == 0:
        return INCONCLUSIVE
    return BETTER if diff > 0 else WORSE


def _compare(spec: MetricSpec, users: pd.DataFrame, alpha: float, n_boot: int, seed: int) -> MetricResult:
    groups = {v: users[users["variant"] == v] for v in VARIANTS}
    if spec.denominator is None:
        nums = {v: g[spec.numerator].to_numpy(np.float64) * spec.scale for v, g in groups.items()}
        return _bootstrap(spec.name, nums[CHAMPION], nums[CHALLENGER], alpha, n_boot, seed)
    pairs = {
        v: (g[spec.numerator].to_numpy(np.float64) * spec.scale, g[spec.denominator].to_numpy(np.float64))
        for v, g in groups.items()
    }
    return _delta(spec.name, pairs[CHAMPION], pairs[CHALLENGER], alpha)


def _ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """sum(num) / sum(den) and its delta-method variance, users as the independent units:
    Var(mean_y / mean_x) ~ (s_yy - 2 r s_xy + r^2 s_xx) / (n mean_x^2)."""
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return math.nan, math.nan
    r = float(num.sum() / den.sum())
    if n < 2:
        return r, math.nan
    c = np.cov(num, den, ddof=1)
    var = (c[0, 0] - 2 * r * c[0, 1] + r * r * c[1, 1]) / (n * den.mean() ** 2)
    return r, max(float(var), 0.0)


def _delta(name: str, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], alpha: float) -> MetricResult:
    z = float(stats.norm.ppf(1 - alpha / 2))
    (ra, va), (rb, vb) = _ratio(*a), _ratio(*b)
    diff, se = rb - ra, math.sqrt(va + vb)
    if se > 0:
        p = float(2 * stats.norm.sf(abs(diff) / se))
    else:  # no spread (or undefined): a difference is certain, or there is none
        p = math.nan if math.isnan(se) else float(diff == 0)
    lift, se_lift = math.nan, math.nan
    if ra > 0:
        lift = rb / ra - 1
        se_lift = math.sqrt(vb / ra**2 + rb**2 * va / ra**4)  # delta method for rb / ra
    return MetricResult(
        name,
        "delta",
        Estimate(ra, ra - z * math.sqrt(va), ra + z * math.sqrt(va), len(a[0])),
        Estimate(rb, rb - z * math.sqrt(vb), rb + z * math.sqrt(vb), len(b[0])),
        diff,
        diff - z * se,
        diff + z * se,
        lift,
        lift - z * se_lift,
        lift + z * se_lift,
        p,
        _verdict(diff, p, alpha),
    )


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_boot resamples of `values`, drawn in blocks of ~2M indices to bound memory."""
    n = len(values)
    out = np.full(n_boot, math.nan)
    if n == 0:
        return out
    block = max(1, 2_000_000 // n)
    for start in range(0, n_boot, block):
        draws = rng.integers(0, n, size=(min(block, n_boot - start), n))
        out[start : start + len(draws)] = values[draws].mean(axis=1)
    return out


def _bootstrap(name: str, a: np.ndarray, b: np.ndarray, alpha: float, n_boot: int, seed: int) -> MetricResult:
    rng = np.random.default_rng(seed)
    # Each variant resampled on its own: the groups are independent samples of users.
    boot_a, boot_b = _boot_means(a, n_boot, rng), _boot_means(b, n_boot, rng)
    qs = [alpha / 2, 1 - alpha / 2]

    def estimate(values: np.ndarray, boot: np.ndarray) -> Estimate:
        if len(values) < 2:
            return Estimate(float(values.mean()) if len(values) else math.nan, math.nan, math.nan, len(values))
        low, high = np.quantile(boot, qs)
        return Estimate(float(values.mean()), float(low), float(high), len(values))

    ea, eb = estimate(a, boot_a), estimate(b, boot_b)
    diff = eb.value - ea.value
    nan4 = (math.nan,) * 4
    diff_low, diff_high, lift_low, lift_high, p = *nan4, math.nan
    if len(a) >= 2 and len(b) >= 2:
        diffs = boot_b - boot_a
        diff_low, diff_high = (float(q) for q in np.quantile(diffs, qs))
        # Twice the tail beyond zero (with the +1 that keeps a bootstrap p-value above zero).
        below, above = (1 + np.sum(diffs <= 0)) / (n_boot + 1), (1 + np.sum(diffs >= 0)) / (n_boot + 1)
        p = float(min(1.0, 2 * min(below, above)))
        if ea.value > 0:
            lifts = boot_b[boot_a > 0] / boot_a[boot_a > 0] - 1
            lift_low, lift_high = (float(q) for q in np.quantile(lifts, qs))
    lift = diff / ea.value if ea.value > 0 else math.nan
    return MetricResult(
        name, "bootstrap", ea, eb, diff, diff_low, diff_high, lift, lift_low, lift_high, p, _verdict(diff, p, alpha)
    )


@dataclass(frozen=True)
class SampleRatio:
    observed: dict[str, int]
    expected: dict[str, float]
    p_value: float
    flagged: bool


def _sample_ratio(variants: pd.Series, share: float) -> SampleRatio:
    observed = {v: int((variants == v).sum()) for v in VARIANTS}
    total = sum(observed.values())
    expected = {CHAMPION: total * (1 - share), CHALLENGER: total * share}
    p = float(stats.chisquare([observed[v] for v in VARIANTS], [expected[v] for v in VARIANTS]).pvalue)
    return SampleRatio(observed, expected, p, p < SRM_P_THRESHOLD)


# ---- the report ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiftPoint:
    """The primary metric's relative lift on everything logged before `at`."""

    at: datetime
    users: int
    lift: float
    low: float
    high: float


@dataclass
class ExperimentReport:
    experiment: str
    start: datetime | None  # the window asked for (None: open)
    end: datetime | None
    first_impression: datetime
    last_impression: datetime
    challenger_share: float
    alpha: float
    srm: SampleRatio
    metrics: dict[str, MetricResult]
    primary: str
    guards: tuple[str, ...]
    counts: Counts
    variants: dict[str, VariantCounts]
    timeline: list[LiftPoint]
    warnings: list[str]

    def decision(self) -> str:
        if self.srm.flagged:
            return SRM
        worse = [m for m in (self.primary, *self.guards) if self.metrics[m].verdict == WORSE]
        if worse:
            return KEEP_CHAMPION
        return PROMOTE if self.metrics[self.primary].verdict == BETTER else INCONCLUSIVE

    def verdict(self) -> str:
        """The decision in one sentence."""
        decision, primary = self.decision(), self.metrics[self.primary]
        if decision == SRM:
            return SRM_VERDICT
        effect = f"{self.primary} {_pct(primary.lift)} (p={_num(primary.p_value, 3)})"
        if decision == PROMOTE:
            return f"promote: {effect}, no guard metric worse"
        if decision == KEEP_CHAMPION:
            worse = [m for m in (self.primary, *self.guards) if self.metrics[m].verdict == WORSE]
            return f"keep champion: {', '.join(worse)} significantly worse"
        return f"inconclusive: {effect} is not significant at alpha={self.alpha:g}"

    def as_dict(self) -> dict:
        """JSON-safe: NaN and infinities become None, times ISO strings."""
        out = asdict(self)
        out["decision"], out["verdict"] = self.decision(), self.verdict()
        return _json_safe(out)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def analyze(
    logs: ExperimentLogs,
    challenger_share: float,
    alpha: float = 0.05,
    primary: str = DEFAULT_PRIMARY,
    guards: tuple[str, ...] = DEFAULT_GUARDS,
    n_boot: int = 2000,
    seed: int = 0,
) -> ExperimentReport:
    """Per-variant metrics with intervals, the sample-ratio test and the cumulative lift of the
    primary metric, from one experiment's logs (see the module doc for every definition)."""
    _check_fraction("challenger_share", challenger_share)
    _check_fraction("alpha", alpha)
    for name, metric in [("primary", primary), *(("guards", g) for g in guards)]:
        if metric not in METRICS:
            raise ValueError(f"{name} must name metrics of {sorted(METRICS)}, got {metric!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    guards = tuple(g for g in guards if g != primary)

    act = _activity(logs)
    users = _per_user(act)
    metrics = {name: _compare(spec, users, alpha, n_boot, seed) for name, spec in METRICS.items()}
    warnings = list(act.warnings)
    for variant in VARIANTS:
        if (users["variant"] == variant).sum() < 2:
            warnings.append(f"fewer than 2 users under {variant}: no interval can be given")
    shown = act.rows.loc[act.rows["impressions"] > 0, "t"]
    sessions = act.rows.groupby("session")["user_id"].first().map(act.variants)
    return ExperimentReport(
        experiment=logs.experiment,
        start=logs.start,
        end=logs.end,
        first_impression=_time(shown.min()),
        last_impression=_time(shown.max()),
        challenger_share=float(challenger_share),
        alpha=float(alpha),
        srm=_sample_ratio(act.variants, challenger_share),
        metrics=metrics,
        primary=primary,
        guards=guards,
        counts=act.counts,
        variants={
            v: VariantCounts(
                users=int((users["variant"] == v).sum()),
                impressions=int(users.loc[users["variant"] == v, "impressions"].sum()),
                sessions=int((sessions == v).sum()),
            )
            for v in VARIANTS
        },
        timeline=_timeline(act, METRICS[primary], alpha, n_boot, seed),
        warnings=warnings,
    )


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)


def _timeline(act: _Activity, spec: MetricSpec, alpha: float, n_boot: int, seed: int) -> list[LiftPoint]:
    """The primary metric re-run on the rows stamped before each bin's end: hourly bins for a
    window up to two days, daily up to 120 days, weekly beyond; the last point is the whole report."""
    t = act.rows["t"].to_numpy()
    first, last = float(t.min()), float(t.max())
    span = last - first
    step = 3600.0 if span <= 2 * 86400 else 86400.0 if span <= 120 * 86400 else 7 * 86400.0
    edges = np.arange(math.floor(first / step) * step + step, last + step, step)
    if len(edges) > _MAX_TIMELINE_POINTS:  # keep the last edge: it holds everything
        edges = edges[np.unique(np.linspace(0, len(edges) - 1, _MAX_TIMELINE_POINTS).round().astype(int))]
    points = []
    for edge in edges:
        users = _per_user(act, float(edge))
        if min((users["variant"] == v).sum() for v in VARIANTS) < 2:
            continue
        result = _compare(spec, users, alpha, n_boot, seed)
        points.append(LiftPoint(_time(edge), len(users), result.lift, result.lift_low, result.lift_high))
    return points


# ---- output --------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def report_table(report: ExperimentReport) -> Table:
    """The report as a rich table: one row per metric, the decision in the title."""
    table = Table(
        title=f"experiment {report.experiment}: {report.verdict()}",
        caption=(
            f"users {report.srm.observed[CHAMPION]} champion / {report.srm.observed[CHALLENGER]} challenger "
            f"(share {report.challenger_share:g}, SRM p={_num(report.srm.p_value)}); "
            f"{int(round((1 - report.alpha) * 100))}% intervals; primary {report.primary}, guards {', '.join(report.guards)}"
            + "".join(f"\n! {w}" for w in report.warnings)
        ),
    )
    for column in ("metric", "method", "champion", "challenger", "diff [CI]", "lift", "p", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "method", "verdict") else "right")
    for name, m in report.metrics.items():
        label = f"{name} (primary)" if name == report.primary else f"{name} (guard)" if name in report.guards else name
        style = {BETTER: "green", WORSE: "red"}.get(m.verdict, "")
        table.add_row(
            label,
            m.method,
            _num(m.champion.value),
            _num(m.challenger.value),
            f"{_num(m.diff)} [{_num(m.diff_low)}, {_num(m.diff_high)}]",
            _pct(m.lift),
            _num(m.p_value, 3),
            f"[{style}]{m.verdict}[/{style}]" if style else m.verdict,
        )
    return table


def write_report(report: ExperimentReport, out_dir: Path) -> list[Path]:
    """report.json, metrics.png and cumulative_lift.png under out_dir, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.as_dict(), indent=2, allow_nan=False)
    return [
        write_text_atomic(text + "\n", out_dir / "report.json"),
        _plot_metrics(report, out_dir / "metrics.png"),
        _plot_lift(report, out_dir / "cumulative_lift.png"),
    ]


def _plot_metrics(report: ExperimentReport, path: Path) -> Path:
    names = list(report.metrics)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        m = report.metrics[name]
        for i, (variant, est, color) in enumerate(
            ((CHAMPION, m.champion, "tab:blue"), (CHALLENGER, m.challenger, "tab:orange"))
        ):
            err = [[_gap(est.value, est.low)], [_gap(est.high, est.value)]]
            ax.errorbar([i], [est.value], yerr=err, fmt="o", color=color, capsize=6, label=variant)
        ax.set_xticks([0, 1], list(VARIANTS))
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(f"{name}\n{_pct(m.lift)}, p={_num(m.p_value, 3)}: {m.verdict}", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{report.experiment}: {report.verdict()}", fontsize=10)
    return _save(fig, path)


def _gap(a: float, b: float) -> float:
    return a - b if math.isfinite(a) and math.isfinite(b) else 0.0


def _plot_lift(report: ExperimentReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    points = report.timeline
    if points:
        at = [p.at for p in points]
        ax.plot(at, _percent([p.lift for p in points]), marker="o", markersize=3, label="relative lift")
        ax.fill_between(
            at, _percent([p.low for p in points]), _percent([p.high for p in points]), alpha=0.25, label="interval"
        )
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
    else:
        ax.text(0.5, 0.5, "too few users per variant yet", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylabel("challenger vs champion (%)")
    ax.set_title(f"{report.experiment}: cumulative lift of {report.primary}")
    return _save(fig, path)


def _percent(values: list[float]) -> np.ndarray:
    return np.array([100 * x if math.isfinite(x) else np.nan for x in values])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)  # the temporary name has no .png suffix
    plt.close(fig)
    return Path(path)


def _mlflow_metrics(report: ExperimentReport) -> dict[str, float]:
    values: dict[str, float | None] = {"srm.p_value": report.srm.p_value}
    for variant in VARIANTS:
        values[f"users.{variant}"] = report.variants[variant].users
        values[f"impressions.{variant}"] = report.variants[variant].impressions
    for name, m in report.metrics.items():
        values |= {
            f"{name}.{CHAMPION}": m.champion.value,
            f"{name}.{CHALLENGER}": m.challenger.value,
            f"{name}.diff": m.diff,
            f"{name}.lift": m.lift,
            f"{name}.p_value": m.p_value,
        }
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _default_artifacts(tracking_uri: str) -> str | None:
    """The profile's artifact store (VIDREC_MLFLOW_ARTIFACTS), as `tracking.configure` sets it: with
    a database backend MLflow would otherwise write under the current folder. A tracking server
    picks its own."""
    if tracking_uri.split(":", 1)[0] in ("http", "https", "databricks"):
        return None
    location = Settings.from_env().mlflow_artifacts
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return location


def log_to_mlflow(
    report: ExperimentReport, paths: list[Path], tracking_uri: str, artifact_location: str | None = None
) -> str:
    """One run in MLflow experiment `vidrec-experiments`, named after the experiment: params
    (window, share, alpha, primary), metrics (per-variant values, diffs, lifts, p-values), tags
    (decision, srm_flagged) and `paths` as artifacts. A new MLflow experiment keeps its artifacts
    in `artifact_location`, by default the profile's store. Returns the run id."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is None:
        location = artifact_location or _default_artifacts(tracking_uri)
        experiment_id = client.create_experiment(MLFLOW_EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    decision = report.decision()
    run = client.create_run(
        experiment_id,
        run_name=report.experiment,
        tags={"decision": decision, "srm_flagged": str(report.srm.flagged).lower(), "verdict": report.verdict()[:5000]},
    )
    run_id = run.info.run_id
    try:
        params = {
            "experiment": report.experiment,
            "window_start": report.start.isoformat() if report.start else "open",
            "window_end": report.end.isoformat() if report.end else "open",
            "challenger_share": report.challenger_share,
            "alpha": report.alpha,
            "primary": report.primary,
            "guards": ",".join(report.guards),
        }
        now = int(datetime.now(UTC).timestamp() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in _mlflow_metrics(report).items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        for path in paths:
            client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id)
    return run_id
