"""A real Spark standalone cluster on loopback: one master and one worker of the installed pyspark.

    with standalone_cluster(tmp_dir, cores=2) as master_url:     # spark://127.0.0.1:<port>
        session = spark_session(master_url, ...)

This is what `VIDREC_SPARK_MASTER=spark://host:7077` points the spark profile at (infra/compose.yaml
runs the same two daemons): executors are separate JVMs whose Python workers import vidrec as the
cluster image's do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import free_port


def _daemon(cls: str, args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        ["spark-class", cls, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


@contextlib.contextmanager
def standalone_cluster(work_dir: Path, cores: int = 2, memory: str = "2g", timeout_s: float = 120) -> Iterator[str]:
    work_dir.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",  # spark-class finds pyspark through this python
        "SPARK_LOCAL_IP": "127.0.0.1",  # loopback only
        "PYSPARK_PYTHON": sys.executable,
    }
    port, ui = free_port(), free_port()
    master = _daemon(
        "org.apache.spark.deploy.master.Master",
        ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
        work_dir / "master.log", env,
    )  # fmt: skip
    url = f"spark://127.0.0.1:{port}"
    worker = _daemon(
        "org.apache.spark.deploy.worker.Worker",
        ["--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir / "work"),
         "--webui-port", str(free_port()), url],
        work_dir / "worker.log", env,
    )  # fmt: skip
    # The driver's PYSPARK_PYTHON names the interpreter executors start (here: this one, which has vidrec).
    driver_python = pytest.MonkeyPatch()
    driver_python.setenv("PYSPARK_PYTHON", sys.executable)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
                    if json.load(response).get("aliveworkers", 0) >= 1:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or master.poll() is not None or worker.poll() is not None:
                logs = "\n".join((work_dir / f).read_text()[-1500:] for f in ("master.log", "worker.log"))
                pytest.fail(f"the Spark standalone cluster did not come up within {timeout_s:.0f} s:\n{logs}")
            time.sleep(0.5)
        yield url
    finally:
        driver_python.undo()
        for daemon in (worker, master):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in (worker, master):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
