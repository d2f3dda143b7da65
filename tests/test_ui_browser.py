"""The Airflow and MLflow UIs as their users see them, in a real headless Chromium.

The browser is Debian's chromium + chromedriver, which `make install` installs (`make browser`);
where they cannot be installed the module is skipped and says so. The servers are the real ones:
`airflow api-server` over the project's DAG folder, `mlflow server` over a training run's store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from browser import headless_chrome  # first: skips the module without Chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from models.lifecycle.config import DEFAULT_GENERATORS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(command: list[str], env: dict, health: str, log: Path, timeout: float = 180.0) -> Iterator[None]:
    """A server process, until `health` answers 200; stopped with its children afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(health, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{command[:2]} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    driver = headless_chrome(1400, 1000)
    yield driver
    driver.quit()


def _text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("airflow-ui")
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "VIDREC_HOME": str(home / "vidrec"),
    }
    for step in (["db", "migrate"], ["dags", "reserialize"]):  # the UI shows the DAGs the metadata DB holds
        proc = subprocess.run([str(BIN / "airflow"), *step], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    command = [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)]
    with _serving(command, env, f"http://127.0.0.1:{port}/api/v2/monitor/health", home / "api-server.log"):
        yield f"http://127.0.0.1:{port}"


def test_the_training_trigger_form_shows_its_params_and_can_be_submitted(browser, airflow_ui):
    browser.get(f"{airflow_ui}/dags/vidrec_training")
    WebDriverWait(browser, 90).until(lambda d: "Trigger" in _text(d))
    [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"][0].click()
    WebDriverWait(browser, 60).until(lambda d: "engagement_check" in _text(d))
    form = _text(browser)
    # Every Param with its description, the generators as a pick list preselecting the defaults.
    for name in ("protocol", "generators", "per_source_k", "min_gain", "engagement_check", "force_retrain"):
        assert name in form
    assert "Candidate generators to train (pick any" in form
    chips = form[form.index("generators") : form.index("Candidate generators to train")]
    assert all(g in chips for g in DEFAULT_GENERATORS)
    # No Param starts out invalid: the form's own Trigger button can be pressed as it is.
    submit = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"][-1]
    assert submit.is_enabled()
    assert not browser.find_elements(By.CSS_SELECTOR, "[aria-invalid='true']")


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory) -> tuple[Path, dict]:
    """A small synthetic platform, trained once through the pipeline (MLflow on SQLite)."""
    from feature_repo.ingest import ingest
    from feature_repo.lake import Lake
    from feature_repo.sources import open_source
    from feature_repo.synthetic import SyntheticConfig, generate
    from vidrec import pipeline
    from vidrec.settings import Settings

    root = tmp_path_factory.mktemp("mlflow-ui")
    data = generate(SyntheticConfig(n_users=150, n_videos=80, n_events=15_000, seed=3), root / "synthetic").out_dir
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(root / "home"))
    try:
        settings = Settings.from_env()
        ingest(open_source("synthetic", data, root / "cache"), Lake(settings.lake_dir))
        params = {"protocol": "user-time", "use_feast": False, "generators": ["popularity", "trending", "item-cf"]}
        result = pipeline.train_models(params, "2030-01-01T00:00:00+00:00", settings=settings)
    finally:
        mp.undo()
    return settings.home, result


def test_the_mlflow_run_page_shows_the_gate_verdict(browser, trained_store):
    home, result = trained_store
    port = _free_port()
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with _serving(command, env, f"http://127.0.0.1:{port}/health", home / "mlflow-server.log"):
        from mlflow import MlflowClient

        run = MlflowClient(f"http://127.0.0.1:{port}").get_run(result["run_id"])
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        verdict = "PROMOTED" if result["promoted"] else "BLOCKED"
        WebDriverWait(browser, 90).until(lambda d: f"Gate: {verdict}" in _text(d))
        page = _text(browser)
        assert "Serves: generators refit on every event" in page  # the description says what was trained


def test_make_ui_listens_on_loopback_only(tmp_path, browser):
    """`make ui` (scripts/ui.sh): Airflow's components one by one and MLflow; every socket the
    process tree listens on is on 127.0.0.1, and the Airflow UI lists the vidrec DAGs."""
    import psutil

    airflow_port, mlflow_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "BIN": str(BIN),
        "VIDREC_HOME": str(tmp_path / "home"),
        "AIRFLOW_PORT": str(airflow_port),
        "MLFLOW_PORT": str(mlflow_port),
    }
    health = f"http://127.0.0.1:{airflow_port}/api/v2/monitor/health"
    with _serving(["bash", str(ROOT / "scripts" / "ui.sh")], env, health, tmp_path / "ui.log", timeout=240):
        _wait(lambda: httpx.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=5).status_code == 200, 120)
        browser.get(f"http://127.0.0.1:{airflow_port}/dags")
        # The dag-processor parses the folder in its own time: the list fills once it has.
        WebDriverWait(browser, 180).until(lambda d: "vidrec_experiment_report" in _text(d))
        time.sleep(5)  # the scheduler and the triggerer are up by now (they would have bound their log servers)
        launcher = next(
            p
            for p in psutil.process_iter(["cmdline"])
            if str(ROOT / "scripts" / "ui.sh") in " ".join(p.info["cmdline"] or [])
        )
        tree = [launcher, *launcher.children(recursive=True)]
        listening = {
            (c.laddr.ip, c.laddr.port) for p in tree for c in _connections(p) if c.status == psutil.CONN_LISTEN
        }
        assert (("127.0.0.1", airflow_port) in listening) and (("127.0.0.1", mlflow_port) in listening), listening
        assert {ip for ip, _ in listening} <= {"127.0.0.1", "::1"}, listening
        names = " ".join(" ".join(p.cmdline()) for p in tree if p.is_running())
        assert "scheduler --skip-serve-logs" in names and "triggerer --skip-serve-logs" in names


def _connections(process):
    import psutil

    try:
        return process.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _wait(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("timed out")
