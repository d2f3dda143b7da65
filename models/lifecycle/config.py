"""The knobs of a training run, one home for each: protocol, generators, ranker, gate.

The command line's options and the `vidrec_training` DAG's Params read their defaults here, and
both turn what a user gave into a `TrainConfig` with `train_config` (unknown names are refused).
Standard library only: DAG files import this module at parse time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

PROTOCOLS = ("time", "user-time", "stratified")
# Every candidate generator `models.catalog.generator_factories` builds, in the order forms list them.
GENERATORS = (
    "popularity", "trending", "item-cf", "user-cf", "als", "bpr", "svd", "ease", "content-tfidf",
    "content-minilm", "mult-vae", "sasrec", "ncf", "gru4rec", "spark-als",
)  # fmt: skip
DEFAULT_GENERATORS = ("popularity", "trending", "item-cf", "user-cf", "als", "ease", "content-tfidf")
NON_PERSONALIZED = ("popularity", "trending")
RANKER_ENGINES = ("xgboost", "spark")  # the baselines a first model must beat


@dataclass(frozen=True)
class RankerConfig:
    objective: str = "rank:ndcg"
    # Shallow trees with a floor on leaf weight: chosen on ml-latest-small's inner split, where
    # deeper trees early-stopped after a handful of rounds and ranked worse (see the note).
    n_estimators: int = 400
    learning_rate: float = 0.1
    max_depth: int = 4
    min_child_weight: float = 10.0
    subsample: float = 0.9
    colsample_bytree: float = 0.9
    # The number of trees is chosen by `cv_folds`-fold cross-validation over queries: each fold
    # early-stops on its held-out fifth, the mean curve's best round is refit on every query.
    # (One random validation split of a few dozen users moved nDCG@10 by +-0.04 between seeds.)
    # None: no validation, all n_estimators trees.
    early_stopping_rounds: int | None = 40
    cv_folds: int = 5
    # The cross-validation that picks the number of trees runs on at most this many queries (a
    # seeded draw); the final model still learns from every query. Five folds on every query
    # of a 1M-event platform took longer than everything else in the run together.
    cv_max_queries: int | None = 1000
    label_scheme: str = "graded"  # graded | watch_time
    seed: int = 42
    # Memory bounds. Training rows grow with queries x candidates, so each label window gives at
    # most this many queries (users, drawn reproducibly from the seed; None: every user), and
    # rows are built `chunk_users` users at a time as float32 blocks that XGBoost reads through
    # a DataIter, never one frame of everything.
    max_queries_per_window: int | None = 1000
    chunk_users: int = 256
    # XGBoost threads. Histogram sums are reduced in a fixed order per thread count, so a given
    # n_jobs gives the same trees on every run and machine.
    n_jobs: int = 2
    # The trees' score blended with one generator's z-score (models.ranker.ScoreBlend); weight 0:
    # the trees alone. `vidrec tune --generator ranker` chooses both per dataset.
    blend_feature: str | None = None
    blend_weight: float = 0.0
    # Where the trees grow: "xgboost" in this process, or "spark" (xgboost.spark on the settings'
    # spark_master: models.spark_ranker; the spark profile's default). Either gives a plain booster.
    engine: str = "xgboost"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in RANKER_ENGINES:
            raise ValueError(f"unknown ranker engine {self.engine!r}: expected one of {', '.join(RANKER_ENGINES)}")

    def params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger may replace the champion, decided on paired per-user evidence.

    primary: the metric that must improve. The challenger is promoted when the lower end of the
      bootstrap interval of its per-user gain over the champion is at least `min_gain` and the
      gain itself is above it (so an identical model, gain 0 on every user, stays out).
    guards: metric -> largest allowed drop: the interval's lower end must not fall below -drop.
    baseline_gain: a first model is judged the same way against the best non-personalized
      baseline (popularity or trending, whichever scores higher on the same users).
    engagement_check: also play simulated viewers (`serving.simulation.engagement_check`: truth is
      EASE on every event) against challenger and champion; a significant loss of simulated watch
      time per session blocks the promotion. Off by default: it adds minutes and its truth favours
      EASE-like models.
    """

    primary: str = "ndcg_at_10"
    min_gain: float = 0.0
    baseline_gain: float = 0.0
    guards: dict[str, float] = field(
        default_factory=lambda: {"candidate_recall_at_200": 0.02, "coverage_at_10": 0.05, "diversity_at_10": 0.05}
    )
    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    engagement_check: bool = False
    engagement_users: int = 300  # simulated viewers, drawn from the held-out users

    def metrics(self) -> list[str]:
        return [self.primary, *self.guards]


@dataclass
class TrainConfig:
    protocol: str = "time"  # one of PROTOCOLS
    generators: tuple[str, ...] = DEFAULT_GENERATORS
    per_source_k: int = 100
    k: int = 10
    test_fraction: float = 0.2
    label_fraction: float = 0.2
    # time protocol: the cut moves earlier until the held-out window judges this many users.
    min_test_users: int = 200
    holdout_per_user: int = 5  # user-time protocol: each user's last n relevant videos are held out
    # stratified protocol: the ranker's labels are cross-fitted over this many folds of the train
    # part (each fold labelled by generators fitted on the others); 1: one inner split.
    label_folds: int = 4
    label_windows: int = 4  # time protocol: how many rolling label windows the ranker learns from
    # Held-out users every model is evaluated on, at most (a seeded draw; None: all of them).
    # Bounds evaluation time and memory on large platforms; far above ml-latest-small's windows.
    max_eval_users: int | None = 20_000
    use_feast: bool = True
    # {generator: params} over the catalog's settings, e.g. `models.lifecycle.tuning.tuned_params(dataset)`.
    tuned: dict[str, dict] = field(default_factory=dict)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    gate: GatePolicy = field(default_factory=GatePolicy)
    shuffle_labels: bool = False  # a sanity check: a ranker on shuffled labels must be blocked
    seed: int = 42

    def params(self) -> dict:
        flat = {k: v for k, v in asdict(self).items() if k not in ("ranker", "gate", "tuned")}
        flat["generators"] = ",".join(self.generators)
        flat |= {f"tuned.{g}.{k}": v for g, params in sorted(self.tuned.items()) for k, v in sorted(params.items())}
        flat |= {f"ranker.{k}": v for k, v in self.ranker.params().items()}
        flat |= {f"gate.{k}": v for k, v in asdict(self.gate).items()}
        return flat


def train_config(params: dict) -> TrainConfig:
    """A `TrainConfig` from user-given values (the DAG's Params, the CLI's options); absent keys
    take the defaults above. Unknown protocols, generators and ranker hyperparameters are refused."""
    defaults = TrainConfig()
    generators = params.get("generators") or DEFAULT_GENERATORS
    if isinstance(generators, str):
        generators = [g.strip() for g in generators.split(",") if g.strip()]
    unknown_generators = sorted(set(generators) - set(GENERATORS))
    if unknown_generators:
        raise ValueError(f"unknown generator(s) {unknown_generators}: expected some of {', '.join(GENERATORS)}")
    ranker_params = dict(params.get("ranker") or {})
    if params.get("max_queries_per_window", "default") != "default":
        ranker_params["max_queries_per_window"] = _optional_int(params["max_queries_per_window"])
    known = {f.name for f in fields(RankerConfig)} - {"extra"}
    unknown = sorted(set(ranker_params) - known)
    if unknown:
        raise ValueError(f"unknown ranker hyperparameter(s) {unknown}: expected some of {sorted(known)}")
    protocol = params.get("protocol") or defaults.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    gate = GatePolicy(
        min_gain=float(params.get("min_gain", GatePolicy.min_gain)),
        baseline_gain=float(params.get("baseline_gain", GatePolicy.baseline_gain)),
        engagement_check=bool(params.get("engagement_check", GatePolicy.engagement_check)),
        **({"guards": {str(k): float(v) for k, v in params["guards"].items()}} if params.get("guards") else {}),
    )
    return TrainConfig(
        protocol=protocol,
        generators=tuple(generators),
        per_source_k=int(params.get("per_source_k", defaults.per_source_k)),
        label_windows=int(params.get("label_windows", defaults.label_windows)),
        min_test_users=int(params.get("min_test_users", defaults.min_test_users)),
        max_eval_users=_optional_int(params.get("max_eval_users", defaults.max_eval_users)),
        use_feast=bool(params.get("use_feast", defaults.use_feast)),
        tuned=dict(params.get("tuned") or {}),
        ranker=RankerConfig(**ranker_params),
        gate=gate,
        shuffle_labels=bool(params.get("shuffle_labels", defaults.shuffle_labels)),
        seed=int(params.get("seed", defaults.seed)),
    )


def _optional_int(value) -> int | None:
    """None stays None (no bound); 0 means none too, as the command line's options say."""
    return None if value is None or int(value) == 0 else int(value)
