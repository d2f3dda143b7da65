from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ML_SMALL = ROOT.parent / "shared" / "datasets" / "ml-latest-small"


@pytest.fixture(scope="session")
def ml_small() -> Path:
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.fail(f"the real MovieLens copy is missing at {ML_SMALL}")
    return ML_SMALL


@pytest.fixture(scope="session")
def movielens_lake(ml_small, tmp_path_factory):
    """ml-latest-small ingested once per session into a lake that tests only read."""
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import open_source

    tmp = tmp_path_factory.mktemp("movielens-lake")
    lake = Lake(tmp / "lake")
    ingest(open_source("movielens-small", ml_small, tmp / "cache"), lake)
    return lake


@pytest.fixture(autouse=True)
def isolated_vidrec_home(tmp_path, monkeypatch):
    """No test writes into the checkout's .vidrec or the user's cache."""
    monkeypatch.setenv("VIDREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIDREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VIDREC_LAKE_DIR", raising=False)
    monkeypatch.delenv("VIDREC_PROFILE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


def pytest_generate_tests(metafunc):
    """A contract class's `bad_params`: one `test_bad_parameters_are_refused` case each."""
    if metafunc.function.__name__ == "test_bad_parameters_are_refused" and "params" in metafunc.fixturenames:
        cases = getattr(metafunc.cls, "bad_params", None) or [
            pytest.param(None, marks=pytest.mark.skip(reason="no constructor parameters to refuse"))
        ]
        metafunc.parametrize("params", cases, ids=[repr(c) if isinstance(c, dict) else "none" for c in cases])


@pytest.fixture(scope="module")
def spark():
    """A local[2] SparkSession for one test module (the spark modules share its settings), stopped after."""
    from feature_repo.transforms.spark import spark_session

    session = spark_session(
        "local[2]",
        **{"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "1g", "spark.ui.showConsoleProgress": "false"},
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
