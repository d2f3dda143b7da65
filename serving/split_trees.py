"""The ranker's trees in two parts: those that read a request's context, and the rest.

A user's pooled candidates are reused between requests (the candidate cache), and so are most of
their features: only the context (hour, weekday, device, days away) and the on-demand request
features change from one request to the next, and they are the same for every candidate of a
request. Of the ml-latest-small champion's 200 trees 44 read any of those, so the other trees'
sum is computed once per pool (and per online user row) and a request evaluates only the 44.
The margin is the same sum of leaves as the whole booster's, up to float rounding (checked at
load time; `SplitTrees.of` declines a split that differs).

The 44 trees see the request's values only through their thresholds: two requests whose values
fall between the same thresholds of every per-request feature (`signature`) get the same leaves,
so their margins can be kept too (a refresh, the next page, the same device within the hour).
XGBoost's own call costs about 0.25 ms before the first tree on a few hundred rows, which is why
not calling it matters as much as calling it on fewer trees.

Done by editing XGBoost's JSON model (the documented `save_raw("json")` schema): each part keeps
the trees it owns, renumbered, and the learner's intercept; the intercept, counted twice in
`static + per_request`, is subtracted once.
"""

from __future__ import annotations

import bisect
import json
import logging
from array import array
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

log = logging.getLogger("vidrec.serving")

# Largest difference from the whole booster's margin accepted at load time (float32 sums in
# another order differ in the last bits; a wrong split differs by a tree's leaf, ~1e-2).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class SplitTrees:
    static: xgb.Booster  # trees that read no per-request feature
    per_request: xgb.Booster | None  # trees that read one (None: no such tree)
    intercept: float  # counted in both parts' margins: subtracted once
    n_static: int
    n_per_request: int
    columns: np.ndarray  # the per-request feature columns
    thresholds: tuple[list[float], ...]  # per column, the sorted float32 split values of the trees

    @classmethod
    def of(
        cls, booster: xgb.Booster, iteration_range: tuple[int, int], per_request_columns: list[int], sample: np.ndarray
    ) -> SplitTrees | None:
        """Split `booster`'s trees in `iteration_range` ((0, 0): all) by whether a split reads one
        of `per_request_columns`; None when no tree would be left to cache, or when the parts'
        sum on `sample` rows differs from the whole booster's margin."""
        model = json.loads(booster.save_raw("json"))
        gbtree = model["learner"]["gradient_booster"]
        if gbtree.get("name") != "gbtree" or gbtree["model"]["gbtree_model_param"]["num_parallel_tree"] != "1":
            return None  # one tree per round is what the renumbering below assumes
        trees = gbtree["model"]["trees"]
        first, last = iteration_range
        trees = trees[first : last or len(trees)]
        wanted = set(per_request_columns)
        reads = [_reads(tree, wanted) for tree in trees]
        static = [t for t, r in zip(trees, reads, strict=True) if not r]
        dynamic = [t for t, r in zip(trees, reads, strict=True) if r]
        if not static or not len(sample):
            return None
        static_booster = _with_trees(model, static)
        dynamic_booster = _with_trees(model, dynamic) if dynamic else None
        intercept = float(_with_trees(model, []).inplace_predict(sample[:1], predict_type="margin")[0])
        columns = np.array(sorted(wanted), dtype=np.int64)
        thresholds = tuple(_thresholds(dynamic, c) for c in columns)
        split = cls(
            static_booster,
            dynamic_booster,
            intercept if dynamic else 0.0,
            len(static),
            len(dynamic),
            columns,
            thresholds,
        )
        # Against the whole booster's *value*: an objective that transforms the margin is declined.
        whole = booster.inplace_predict(
            sample, iteration_range=iteration_range, missing=np.nan, validate_features=False
        )
        gap = float(np.max(np.abs(split.margin(split.static_margin(sample), sample) - whole)))
        if not np.isfinite(gap) or gap > TOLERANCE:
            log.warning("the ranker's trees cannot be split by per-request features (gap %.2g): scoring whole", gap)
            return None
        return split

    def signature(self, row: np.ndarray) -> bytes:
        """Which interval between the trees' thresholds each per-request value of `row` (a float32
        feature row) falls in, -1 when missing: requests with equal signatures take the same leaves."""
        buckets = [
            -1 if v != v else bisect.bisect_right(t, v)  # v != v: NaN (missing)
            for v, t in zip(row[self.columns].tolist(), self.thresholds, strict=True)
        ]
        return array("i", buckets).tobytes()

    def static_margin(self, x: np.ndarray) -> np.ndarray:
        return _margin(self.static, x)

    def margin(self, static_margin: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The whole booster's margin of `x`, given its rows' `static_margin`."""
        if self.per_request is None:
            return static_margin
        return static_margin + (_margin(self.per_request, x) - np.float32(self.intercept))


def _margin(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    return booster.inplace_predict(x, predict_type="margin", missing=np.nan, validate_features=False)


def _thresholds(trees: list[dict], column: int) -> list[float]:
    """The distinct split values of `column` in `trees`, as float32 (XGBoost compares x < value;
    a float32 is exactly a Python float, so comparing the floats compares the float32s)."""
    values = [
        value
        for tree in trees
        for c, value, left in zip(tree["split_indices"], tree["split_conditions"], tree["left_children"], strict=True)
        if c == column and left != -1
    ]
    return np.unique(np.asarray(values, dtype=np.float32)).tolist()


def _reads(tree: dict, columns: set[int]) -> bool:
    """Whether one of the tree's split nodes tests a feature in `columns` (leaves have no split)."""
    return any(c in columns for c, left in zip(tree["split_indices"], tree["left_children"], strict=True) if left != -1)


def _with_trees(model: dict, trees: list[dict]) -> xgb.Booster:
    """A booster of `model`'s learner (features, objective, intercept) holding `trees` only."""
    learner = model["learner"]
    gbtree = learner["gradient_booster"]["model"]
    part_gbtree = {
        **gbtree,
        "trees": [{**tree, "id": i} for i, tree in enumerate(trees)],
        "tree_info": [0] * len(trees),
        "iteration_indptr": list(range(len(trees) + 1)),
        "gbtree_model_param": {**gbtree["gbtree_model_param"], "num_trees": str(len(trees))},
    }
    part = {**model, "learner": {**learner, "gradient_booster": {**learner["gradient_booster"], "model": part_gbtree}}}
    booster = xgb.Booster(model_file=bytearray(json.dumps(part).encode()))
    booster.set_param({"nthread": 1})
    return booster
