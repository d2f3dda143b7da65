"""Run the service as a real `bentoml serve` process on 127.0.0.1 (tests, benchmark, local runs).

    with ServerProcess(env={"VIDREC_HOME": home}) as server:
        httpx.post(f"{server.url}/recommend", json={"user_id": "1"})

The server runs in its own process group so stopping it stops its workers too; its output goes
to a log file (`server.log_path`), which `ServerProcess.start` quotes when the server never gets
ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:Vidrec"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        service: str = SERVICE,
    ):
        # Only `env` says where state lives: VIDREC_* / MLFLOW_* of the calling process are dropped.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("VIDREC_", "MLFLOW_"))}
        self.env = {**inherited, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(env or {})}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="vidrec-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.service = service

    def start(self, ready_timeout: float = 180.0, require_ready: bool = True) -> ServerProcess:
        bentoml = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml), "serve", self.service, "--host", "127.0.0.1", "--port", str(self.port)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait(ready_timeout, "/readyz" if require_ready else "/livez")
        return self

    def wait(self, timeout: float, path: str = "/readyz") -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the server was not ready ({path}) after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        self.proc = None

    def restart(self, ready_timeout: float = 180.0) -> ServerProcess:
        self.stop()
        return self.start(ready_timeout)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
