"""Training runs through a real MLflow tracking server backed by PostgreSQL: register, alias, gate, roll back.

A `mlflow server` process runs on a free port with its backend store in a fresh PostgreSQL database
(reached through a loopback proxy, so that one test can take PostgreSQL down for this server alone)
and its artifacts proxied (`--serve-artifacts`) into a temporary folder. The prod profile points at it
through VIDREC_MLFLOW_URI, and the experiment's artifact location is `mlflow-artifacts:///vidrec`, so
every byte goes through the server. Data: the first 150 users of the real ml-latest-small. The server is
stopped and the database dropped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import ViewType
from movielens import movielens_frames, write_canonical
from services import TcpProxy, free_port, pg_connect, temp_database
from sqlalchemy.engine import make_url

from feature_repo.ingest import ingest
from feature_repo.lake import Lake
from feature_repo.sources import open_source
from models.lifecycle import registry, tracking
from models.lifecycle.config import GatePolicy, TrainConfig
from models.lifecycle.registry import CANDIDATES_MODEL, CHALLENGER, CHAMPION, PREVIOUS, RANKER_MODEL
from models.lifecycle.train import train_and_gate
from vidrec import pipeline
from vidrec.settings import Settings

pytestmark = pytest.mark.integration

USERS = 150
ARTIFACTS = "mlflow-artifacts:///vidrec"


class MlflowServer:
    """`mlflow server` in its own process group; `stop()` ends the server and its workers."""

    def __init__(self, backend_uri: str, artifacts: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_uri, self.artifacts, self.log_path = backend_uri, artifacts, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> MlflowServer:
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    with temp_database("mlflow") as backend_uri:
        url = make_url(backend_uri)
        postgres = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
        proxied = url.set(host="127.0.0.1", port=postgres.port).render_as_string(hide_password=False)
        srv = MlflowServer(proxied, tmp / "artifacts", tmp / "server.log")
        srv.database, srv.postgres = url.database, postgres
        try:
            srv.start()
            yield srv
        finally:
            srv.stop()
            postgres.close()
    assert srv.proc.poll() is not None, "the mlflow server is still running"


@pytest.fixture(scope="module")
def settings(server, ml_small, tmp_path_factory):
    """The prod profile, MLflow at the server; a lake of the first 150 MovieLens users."""
    home = tmp_path_factory.mktemp("home")
    raw = tmp_path_factory.mktemp("raw")
    events, videos = movielens_frames(ml_small, USERS)
    write_canonical(events, videos.drop(columns="tags"), raw)

    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before = (tracking_utils._tracking_uri, registry_utils._registry_uri)  # unset stays unset
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDREC_HOME", str(home))
    mp.setenv("VIDREC_MLFLOW_URI", server.url)
    mp.setenv("VIDREC_MLFLOW_ARTIFACTS", ARTIFACTS)
    # train_and_gate starts its run in the active experiment; name it (runs belong in `vidrec`).
    mp.setenv("MLFLOW_EXPERIMENT_NAME", registry.EXPERIMENT)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # recorded, so that undo() restores them
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    s = Settings.from_env("prod")
    ingest(open_source("canonical", raw, home), Lake(s.lake_dir))
    try:
        yield s
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        mp.undo()  # after: set_*_uri write MLFLOW_*_URI, which the undo restores


def stratified(generators, **kwargs) -> TrainConfig:
    return TrainConfig(protocol="stratified", generators=tuple(generators), use_feast=False, label_folds=2, **kwargs)


@pytest.fixture(scope="module")
def runs(settings):
    """A weak first model (let in by waiving the baseline margin), a better one, then one on
    shuffled labels (blocked). Returned as (first, degraded, better)."""
    first = train_and_gate(settings, stratified(["popularity"], gate=GatePolicy(baseline_gain=-1.0)))
    better = train_and_gate(settings, stratified(["popularity", "trending", "ease"]))
    degraded = train_and_gate(settings, stratified(["popularity", "trending", "ease"], shuffle_labels=True))
    return first, degraded, better


@pytest.fixture
def client(server, settings) -> MlflowClient:
    tracking.configure(settings)  # the module-wide tracking URI, as train_and_gate sets it
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def aliases(client: MlflowClient, alias: str) -> dict[str, str | None]:
    return {model: registry.alias_version(client, model, alias) for model in registry.MODELS}


def rest(server, path: str, **params) -> dict:
    response = requests.get(f"{server.url}/api/2.0/mlflow/{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def test_the_prod_profile_reaches_mlflow_by_its_override(settings, server, monkeypatch):
    assert settings.profile == "prod" and settings.mlflow_uri == server.url
    monkeypatch.delenv("VIDREC_MLFLOW_URI", raising=False)
    assert Settings.from_env("prod").mlflow_uri == "postgresql+psycopg://postgres@127.0.0.1:5432/mlflow"


def test_gate_promotes_blocks_and_promotes_through_the_server(runs, client, server):
    first, degraded, better = runs
    assert first.decision.promoted and first.decision.against.startswith("baseline"), first.decision.summary()
    assert not degraded.decision.promoted and degraded.decision.against == "champion"
    assert "ndcg_at_10" in degraded.decision.reasons[0]
    assert better.decision.promoted, better.decision.summary()

    for model in registry.MODELS:
        versions = client.search_model_versions(f"name='{model}'")
        assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert aliases(client, CHAMPION) == better.versions
    assert aliases(client, PREVIOUS) == first.versions
    assert aliases(client, CHALLENGER) == degraded.versions  # the blocked one stays under review
    assert client.get_model_version(RANKER_MODEL, degraded.versions[RANKER_MODEL]).tags["gate.decision"] == "blocked"
    ranker = client.get_model_version(RANKER_MODEL, better.versions[RANKER_MODEL])
    assert ranker.tags[registry.TAG_CANDIDATES_VERSION] == better.versions[CANDIDATES_MODEL]
    assert client.get_run(degraded.run_id).data.tags["gate.decision"] == "blocked"
    assert client.get_experiment(client.get_run(better.run_id).info.experiment_id).name == registry.EXPERIMENT

    # What the UI and other clients see: the server's REST API.
    got = rest(server, "registered-models/alias", name=RANKER_MODEL, alias=CHAMPION)
    assert got["model_version"]["version"] == better.versions[RANKER_MODEL]


def test_state_is_in_postgresql_and_artifacts_went_through_the_server(runs, client, server):
    first, degraded, better = runs
    with pg_connect(dbname=server.database) as conn:
        run_ids = {r[0] for r in conn.execute("select run_uuid from runs")}
        n_versions = conn.execute("select count(*) from model_versions").fetchone()[0]
        stored = dict(
            conn.execute("select name, version from registered_model_aliases where alias = 'champion'").fetchall()
        )
    assert {first.run_id, degraded.run_id, better.run_id} <= run_ids
    assert n_versions == 6
    assert {name: str(v) for name, v in stored.items()} == better.versions

    report = json.loads(mlflow.artifacts.load_text(f"runs:/{degraded.run_id}/gate_report.json"))
    assert report["promoted"] is False and report["versions"] == degraded.versions
    assert client.get_run(degraded.run_id).info.artifact_uri.startswith("mlflow-artifacts:/vidrec/")
    on_server = {p.name for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"gate_report.json", "metrics.csv", "MLmodel"} <= on_server
    artifacts = {a.path for a in client.list_artifacts(better.run_id, "plots")}
    assert {"plots/metrics_by_model.png", "plots/ndcg_at_k.png"} <= artifacts


def test_champion_loads_back_through_the_server(runs, client):
    _, _, better = runs
    champion = registry.load_champion()
    assert champion.versions == better.versions
    from models.two_stage import Requests

    users = champion.system.data.user_rows(["1", "2"])
    recs = champion.system.rank(Requests.at(users, pd.Timestamp("2018-01-01", tz="UTC")), k=5)
    assert recs.groupby("user_id").size().tolist() == [5, 5]


def test_rollback_through_the_server_and_undo(runs, client, server):
    first, _, better = runs
    registry.rollback(client)
    assert aliases(client, CHAMPION) == first.versions and aliases(client, PREVIOUS) == better.versions
    got = rest(server, "registered-models/alias", name=CANDIDATES_MODEL, alias=CHAMPION)
    assert got["model_version"]["version"] == first.versions[CANDIDATES_MODEL]
    registry.rollback(client)
    assert aliases(client, CHAMPION) == better.versions and aliases(client, PREVIOUS) == first.versions


# MLflow's client retries a 5xx answer 7 times with exponential backoff by default (minutes of
# waiting); `vidrec train` is given one retry here, so that its failure comes within seconds.
FAST_FAILING_CLIENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def registry_aliases(client: MlflowClient) -> dict[str, dict[str, str]]:
    """Every alias of both registered models: model -> alias -> version."""
    return {model: dict(client.get_registered_model(model).aliases) for model in registry.MODELS}


def test_postgresql_down_mid_training_fails_it_and_leaves_the_aliases(runs, client, server, settings, tmp_path):
    """The tracking server's PostgreSQL goes down while `vidrec train` runs: the command fails within
    seconds with a message naming the server and what became of the registry, and once PostgreSQL
    is back the aliases are those of before. The outage is the cut of the proxy the server reaches
    PostgreSQL through: the shared PostgreSQL stays up for every other test."""
    before = registry_aliases(client)
    assert before[RANKER_MODEL][CHAMPION] == runs[2].versions[RANKER_MODEL]
    experiment_id = client.get_experiment_by_name(registry.EXPERIMENT).experiment_id
    known = {r.info.run_id for r in client.search_runs([experiment_id], run_view_type=ViewType.ALL)}
    env = {
        **os.environ, **FAST_FAILING_CLIENT, "PYTHONUNBUFFERED": "1", "VIDREC_PROFILE": "prod",
        "VIDREC_HOME": str(tmp_path / "home"), "VIDREC_LAKE_DIR": str(settings.lake_dir),
        "VIDREC_MLFLOW_URI": settings.mlflow_uri, "VIDREC_MLFLOW_ARTIFACTS": settings.mlflow_artifacts,
    }  # fmt: skip
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the client fixture set them: the CLI sets its own
        env.pop(name, None)
    command = [
        str(Path(sys.executable).with_name("vidrec")), "train", "--protocol", "stratified",
        "--generators", "popularity", "--no-feast", "--no-require-validated-lake",
    ]  # fmt: skip
    out, err = tmp_path / "train.out", tmp_path / "train.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        training = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=tmp_path)
    try:
        run_id, deadline = None, time.monotonic() + 180
        while run_id is None and time.monotonic() < deadline and training.poll() is None:
            # Partway: the run has logged what describes its data, and is on to its generators and ranker.
            running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
            partway = (r for r in running if r.info.run_id not in known and "data.test_users" in r.data.params)
            run_id = next((r.info.run_id for r in partway), None)
            time.sleep(0 if run_id else 0.1)
        assert run_id is not None, f"no training run appeared as RUNNING:\n{err.read_text()[-3000:]}"
        server.postgres.cut()
        cut_at = time.time()
        try:
            code = training.wait(120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`vidrec train` still runs 120 s after PostgreSQL went down:\n{err.read_text()[-3000:]}")
        failed_after = time.time() - cut_at
        assert failed_after < 60, f"`vidrec train` took {failed_after:.0f} s to fail"
    finally:
        if training.poll() is None:
            training.kill()
            training.wait(10)
        server.postgres.restore()

    said = err.read_text()
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, f"exit {code}:\n{said[-3000:]}"
    message = errors[0].removeprefix("error:").strip()
    assert "Traceback" not in said, said[-3000:]  # the message alone, no stack trace
    assert message.startswith(f"the MLflow tracking server at {server.url} (or the database behind it) failed")
    assert run_id in message and "the registry's aliases were not changed" in message, message

    after = registry_aliases(client)  # the server answers again once PostgreSQL is back
    assert after == before
    assert not client.search_model_versions(f"run_id='{run_id}'")  # nothing registered by the failed run
    # The run could not be closed while PostgreSQL was down (the message says so); the next
    # training on this machine closes it, since its process is gone.
    assert client.get_run(run_id).info.status == "RUNNING" and "shows RUNNING" in message, message
    closed = pipeline.close_orphaned_runs(client)
    assert run_id in closed
    status = client.get_run(run_id).info.status
    assert status == "KILLED" and "process" in client.get_run(run_id).data.tags["vidrec.killed"]
    champions = ", ".join(f"{m.removeprefix('vidrec-')}=v{a[CHAMPION]}" for m, a in after.items())
    print(
        f"PostgreSQL cut {cut_at - client.get_run(run_id).info.start_time / 1000:.1f} s into a training run: "
        f'`vidrec train` failed after {failed_after:.1f} s (exit {code}) with "{message}"; aliases unchanged '
        f"({champions}); the next training marked the run {status}"
    )
