"""The experiment panel: the A/B split the service runs and the last `vidrec experiment report`.

`vidrec experiment report` (vidrec.pipeline.experiment_report) writes
`<VIDREC_HOME>/runs/vidrec_experiment_report/<end>/<experiment>/report.json` unless told `--out`;
the panel shows the newest such file of the configured experiment, as numbers and bars with
their intervals (drawn as inline SVG by the template).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPORTS = Path("runs") / "vidrec_experiment_report"  # vidrec.pipeline.run_dir(settings, <this dag id>, end)
VARIANTS = ("champion", "challenger")
BAR_WIDTH = 220  # px of the longest bar of a metric


@dataclass(frozen=True)
class Bar:
    variant: str
    value: float | None
    low: float | None
    high: float | None
    width: float  # px; the interval's ends too, on the same scale
    low_x: float
    high_x: float


@dataclass(frozen=True)
class Metric:
    name: str
    role: str  # primary | guard | ""
    verdict: str
    lift: float | None
    p_value: float | None
    bars: list[Bar]


@dataclass(frozen=True)
class Report:
    path: Path
    written: datetime
    experiment: str
    decision: str
    verdict: str
    window: str
    variants: dict[str, dict]  # users, impressions, sessions per variant
    metrics: list[Metric]
    warnings: list[str]


def latest_report(home: Path, experiment: str) -> Report | None:
    """The newest report.json of `experiment` under home, or None when there is none (or it is unreadable)."""
    candidates = sorted((home / REPORTS).glob(f"*/{experiment}/report.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(candidates):
        try:
            return _report(path, json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a half-copied or older-format file: try the one before
    return None


def _finite(value) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _report(path: Path, data: dict) -> Report:
    primary, guards = data.get("primary"), set(data.get("guards") or [])
    metrics = [
        Metric(
            name=name,
            role="primary" if name == primary else "guard" if name in guards else "",
            verdict=str(m.get("verdict", "")),
            lift=_finite(m.get("lift")),
            p_value=_finite(m.get("p_value")),
            bars=_bars(m),
        )
        for name, m in data["metrics"].items()
    ]
    return Report(
        path=path,
        written=datetime.fromtimestamp(path.stat().st_mtime, UTC),
        experiment=str(data["experiment"]),
        decision=str(data.get("decision", "")),
        verdict=str(data.get("verdict", "")),
        window=f"{data.get('first_impression') or '?'} .. {data.get('last_impression') or '?'}",
        variants={v: dict(data.get("variants", {}).get(v, {})) for v in VARIANTS},
        metrics=metrics,
        warnings=[str(w) for w in data.get("warnings") or []],
    )


def _bars(metric: dict) -> list[Bar]:
    """Both variants on one scale: the largest value or interval end is BAR_WIDTH px."""
    estimates = {v: metric.get(v) or {} for v in VARIANTS}
    ends = [_finite(e.get(k)) for e in estimates.values() for k in ("value", "high")]
    scale = max((x for x in ends if x is not None and x > 0), default=0.0)

    def px(x: float | None) -> float:
        return 0.0 if x is None or scale == 0 else round(max(x, 0.0) / scale * BAR_WIDTH, 1)

    bars = []
    for variant, e in estimates.items():
        value, low, high = _finite(e.get("value")), _finite(e.get("low")), _finite(e.get("high"))
        bars.append(Bar(variant, value, low, high, px(value), px(low), px(high)))
    return bars
