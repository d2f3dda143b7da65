"""SparkALS: the generator contract on a real local SparkSession, plus what is special to it.

All tests share one JVM (a module-scoped session; the model's `getOrCreate` reuses it), and factor
counts and sweeps are small, so the module stays within about a minute on two cores.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract
from toy_data import held_out_recall, holdout, two_communities

from models.als import ALS
from models.interactions import Interactions
from models.spark_als import SparkALS

pytestmark = pytest.mark.slow  # a JVM and Spark jobs

ROOT = Path(__file__).resolve().parents[1]
FACTORS, ITERATIONS = 16, 8


@pytest.fixture(scope="module", autouse=True)
def session_for_every_test(spark):
    """Every test here fits on the module's shared session (conftest's `spark`)."""
    return spark


def small_spark_als(**params) -> SparkALS:
    return SparkALS(**{"factors": FACTORS, "iterations": ITERATIONS, "master": "local[2]", "blocks": 2, **params})


class TestSparkALS(RecommenderContract):
    model_class = SparkALS
    bad_params = [
        {"factors": 0},
        {"factors": 8.0},
        {"iterations": 0},
        {"regularization": -0.1},
        {"alpha": float("inf")},
        {"alpha": -1},
        {"seed": -1},
        {"seed": 1.5},
        {"blocks": 0},
        {"master": ""},
        {"driver_memory": 2},
    ]
    beats_popularity_by, held_out_k = 1.2, 10

    def make_model(self, videos):
        return small_spark_als()

    def test_scores_are_factor_products(self, fitted, data):
        interactions, _ = data
        assert fitted.user_factors_.shape == (interactions.n_users, FACTORS)
        assert fitted.item_vectors().shape == (interactions.n_videos, FACTORS)
        assert fitted.item_factors_.dtype == np.float32
        np.testing.assert_allclose(
            fitted.score(np.arange(3)), fitted.user_factors_[:3] @ fitted.item_factors_.T, rtol=1e-5
        )

    def test_videos_without_interactions_get_zero_vectors(self, fitted, data):
        interactions, _ = data
        unwatched = interactions.matrix.getnnz(axis=0) == 0
        assert unwatched.any(), "the slice's catalog is the full movie list"
        assert not fitted.item_factors_[unwatched].any()
        assert fitted.item_factors_[~unwatched].any(axis=1).all()

    def test_saved_model_serves_without_spark(self, fitted, tmp_path):
        state = pickle.dumps(fitted)
        assert b"pyspark" not in state and b"py4j" not in state, "a Spark object was pickled"
        path = tmp_path / "model.pkl"
        fitted.save(path)
        # A fresh interpreter in which importing pyspark fails: load, score, recommend.
        script = (
            "import sys; sys.modules['pyspark'] = None; sys.modules['py4j'] = None\n"
            "import numpy as np\n"
            "from models.spark_als import SparkALS\n"
            f"model = SparkALS.load({str(path)!r})\n"
            "ids, _ = model.recommend(np.arange(5), k=10)\n"
            f"np.savez({str(tmp_path / 'out.npz')!r}, scores=model.score(np.arange(5)), ids=ids)\n"
        )
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120)
        out = np.load(tmp_path / "out.npz")
        np.testing.assert_array_equal(out["scores"], fitted.score(np.arange(5)))
        np.testing.assert_array_equal(out["ids"], fitted.recommend(np.arange(5), k=10)[0])

    def test_recall_close_to_implicit_als(self, data):
        # Same model, different solver (exact Cholesky vs implicit's CG) and regularisation scale:
        # on the same split Spark's recall@10 must be at least 0.8x implicit's (measured: 0.102 vs 0.103).
        interactions, _ = data
        train, truth = holdout(interactions)
        spark_recall = held_out_recall(small_spark_als(), train, truth, 10)
        implicit_recall = held_out_recall(ALS(factors=FACTORS, iterations=ITERATIONS), train, truth, 10)
        assert spark_recall >= 0.8 * implicit_recall, f"spark-als {spark_recall:.3f} vs als {implicit_recall:.3f}"


def test_recommends_from_the_users_community():
    data = two_communities()
    ids, _ = small_spark_als(factors=2, iterations=10).fit(data).recommend(np.array([data.n_users - 1]), k=3)
    assert set(ids[0]) <= set(range(1, 6))


def test_negative_weights_are_refused():
    matrix = sp.csr_matrix(np.array([[1.0, -1.0], [0.0, 1.0]], dtype=np.float32))
    data = Interactions(matrix, np.array(["u0", "u1"]), np.array(["v0", "v1"]))
    with pytest.raises(ValueError, match="non-negative"):
        small_spark_als().fit(data)


def test_master_and_driver_memory_default_to_the_settings(monkeypatch):
    monkeypatch.setenv("VIDREC_SPARK_MASTER", "local[1]")
    monkeypatch.setenv("VIDREC_SPARK_DRIVER_MEMORY", "3g")
    assert (SparkALS().master, SparkALS().driver_memory) == ("local[1]", "3g")
    given = SparkALS(master="spark://host:7077", driver_memory="6g")
    assert (given.master, given.driver_memory) == ("spark://host:7077", "6g")
