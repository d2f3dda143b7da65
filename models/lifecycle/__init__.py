"""A model's life around the algorithms: the knobs of a run (`config`), training and evaluation of every
generator and the ranker (`train`), hyperparameter search (`tuning`), the benchmark (`benchmark`),
MLflow logging (`tracking`), the registry and its promotion gate (`registry`, `significance`), and
batch precomputation (`batch`). The algorithms themselves are the files of `models/`, one each."""
