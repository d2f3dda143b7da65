"""infra/: the compose stack, the image and the Kubernetes manifests, checked without a Docker engine.

Every file parses; every build context, Dockerfile, mounted file, command and entrypoint exists in the
repository (or is a real CLI command / option of the pinned Airflow, MLflow and BentoML); secrets
come only from the environment; every long-running service has a healthcheck, the service's pods
have probes and resources.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
DOCKERFILE = INFRA / "Dockerfile"
K8S = INFRA / "k8s"
IMAGE_ROOT = "/opt/vidrec"  # where the Dockerfile puts the repository
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|FERNET|PRIVATE|CREDENTIAL)", re.I)
REF = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")
EXPECTED_SERVICES = {
    "postgres", "redis", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
    "airflow-dag-processor", "airflow-triggerer", "serving", "spark-master", "spark-worker",
}  # fmt: skip


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


@cache
def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def text_files() -> list[Path]:
    return [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


# ---- everything parses -------------------------------------------------------------------------------


def test_every_yaml_file_parses():
    files = [p for p in text_files() if p.suffix in (".yaml", ".yml")]
    assert COMPOSE in files and len(files) >= 4
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_every_shell_script_parses_and_is_executable():
    scripts = [p for p in text_files() if p.suffix == ".sh"]
    assert scripts
    for path in scripts:
        assert path.stat().st_mode & 0o111, f"{path} is not executable"
        assert path.read_text().startswith("#!"), f"{path} has no shebang"
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_the_ini_file_parses():
    import configparser

    config = configparser.ConfigParser()
    config.read(INFRA / "mlflow" / "basic_auth.ini")
    assert config["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert "admin_password" not in config["mlflow"]


# ---- compose: services, references, healthchecks ----------------------------------------------------


def test_compose_has_the_whole_stack():
    assert set(services()) == EXPECTED_SERVICES


def test_build_contexts_and_dockerfiles_exist():
    built = [s for s in services().values() if "build" in s]
    assert built
    for service in built:
        context = (INFRA / service["build"]["context"]).resolve()
        assert context == ROOT, "the image is built from the repository root"
        dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
        assert dockerfile == DOCKERFILE and dockerfile.is_file()


def test_mounted_files_exist():
    mounts = 0
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                mounts += 1
                assert (INFRA / source).resolve().exists(), f"{name}: {source} does not exist"
                assert (INFRA / source).resolve().is_relative_to(ROOT), f"{name}: {source} is outside the repo"
            else:
                assert source in compose()["volumes"], f"{name}: unknown named volume {source}"
    assert mounts >= 2


def in_repo(path: str) -> Path:
    """A path inside the image that comes from the repository -> that repository path."""
    assert path.startswith(IMAGE_ROOT + "/"), path
    return ROOT / path.removeprefix(IMAGE_ROOT + "/")


def test_entrypoints_exist_in_the_repo():
    seen = 0
    for name, service in services().items():
        for part in argv(service.get("entrypoint", [])):
            if part.startswith(IMAGE_ROOT):
                seen += 1
                script = in_repo(part)
                assert script.is_file() and script.stat().st_mode & 0o111, f"{name}: {script}"
    assert seen >= 5  # every Airflow service


@cache
def airflow_commands() -> dict:
    from airflow.cli.cli_config import core_commands

    return {c.name: c for c in core_commands}


def check_airflow(args: list[str]) -> None:
    command = airflow_commands()[args[0]]
    rest = args[1:]
    if hasattr(command, "subcommands"):
        command = {c.name: c for c in command.subcommands}[rest[0]]
        rest = rest[1:]
    flags = {f for a in command.args for f in a.flags}
    choices = {f: a.kwargs.get("choices") for a in command.args for f in a.flags}
    for i, token in enumerate(rest):
        if token.startswith("-"):
            assert token in flags, f"airflow {' '.join(args)}: unknown option {token}"
            if choices.get(token) and i + 1 < len(rest):
                assert rest[i + 1] in choices[token], f"airflow {' '.join(args)}: {rest[i + 1]} not in {choices[token]}"


def check_mlflow(args: list[str]) -> None:
    from mlflow import cli

    assert args[0] == "server"
    options = {o: p for p in cli.server.params for o in p.opts + p.secondary_opts}
    for token in args[1:]:
        if token.startswith("--"):
            assert token in options, f"mlflow server: unknown option {token}"
    assert "basic-auth" in args, "the MLflow UI must run with authentication"


def check_bentoml(args: list[str]) -> None:
    assert args[0] == "serve"
    module, _, attr = args[1].partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), path
    assert re.search(rf"^class {attr}\b", path.read_text(), re.M), f"{path} defines no {attr}"


def check_command(name: str, command: list[str]) -> None:
    program, args = command[0], command[1:]
    if program in ("airflow", "mlflow", "bentoml"):
        assert Path(sys.executable).with_name(program).exists(), f"{name}: {program} is not installed"
        {"airflow": check_airflow, "mlflow": check_mlflow, "bentoml": check_bentoml}[program](args)
    elif program == "sh":
        assert command[1] == "-c" and command[2].startswith("exec redis-server"), f"{name}: {command}"
    elif program == "spark-class":
        check_spark_daemon(name, args)
    else:
        pytest.fail(f"{name}: unexpected program {program}")
    for token in command:
        if token.startswith(IMAGE_ROOT):
            assert in_repo(token).exists(), f"{name}: {token}"


def check_spark_daemon(name: str, args: list[str]) -> None:
    """A Spark standalone daemon of the installed pyspark: its class starts and knows every option."""
    cls, options = args[0], args[1:]
    assert cls in ("org.apache.spark.deploy.master.Master", "org.apache.spark.deploy.worker.Worker"), f"{name}: {cls}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # find_spark_home's python
    usage = subprocess.run(
        ["spark-class", cls, "--help"], capture_output=True, text=True, env=env, timeout=120, check=False
    ).stderr
    assert "Usage:" in usage, f"{name}: spark-class {cls} did not start: {usage[-500:]}"
    for option in (o for o in options if o.startswith("--")):
        assert f" {option} " in usage, f"{name}: {cls} has no option {option}"
    if cls.endswith("Worker"):
        assert options[-1].startswith("spark://"), f"{name}: a worker needs the master's spark:// URL last"


def test_commands_are_real_commands_of_the_pinned_tools():
    for name, service in services().items():
        if "command" in service:
            check_command(name, argv(service["command"]))
    # Healthchecks that run Airflow's CLI.
    checked = 0
    for service in services().values():
        test = argv(service.get("healthcheck", {}).get("test", []))
        if test[:1] == ["CMD-SHELL"] and test[1].startswith("airflow "):
            check_airflow(shlex.split(test[1])[1:])
            checked += 1
    assert checked == 2
    # The image's default command (the service) too.
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    import json

    check_command("Dockerfile CMD", json.loads(cmd.group(1)))


def test_airflow_and_mlflow_settings_are_real_options():
    template = yaml.safe_load(
        (Path(__import__("airflow").__file__).parent / "config_templates" / "config.yml").read_text()
    )
    import mlflow.environment_variables as mlflow_env
    from mlflow import cli

    mlflow_server_env = {p.envvar for p in cli.server.params if p.envvar}
    for name, service in services().items():
        for key in service.get("environment", {}):
            if key.startswith("AIRFLOW__"):
                section, option = key.removeprefix("AIRFLOW__").lower().split("__", 1)
                assert option in template.get(section, {}).get("options", {}), f"{name}: {key} is no Airflow option"
            elif key.startswith("MLFLOW_"):
                assert key in mlflow_server_env or hasattr(mlflow_env, key), f"{name}: {key} is no MLflow setting"


def test_airflow_uses_postgres_localexecutor_and_the_simple_auth_manager():
    env = services()["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        depends = services()[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"


def test_every_long_running_service_has_a_healthcheck():
    for name, service in services().items():
        if name == "airflow-init":
            assert service.get("restart") == "no"
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        test = argv(check["test"])
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if "curl" in test:
            url = test[-1]
            assert url.startswith("http://localhost:"), url
    for name, service in services().items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert rule["condition"] in ("service_healthy", "service_completed_successfully"), name


def test_healthcheck_routes_exist():
    tests = {name: " ".join(argv(s["healthcheck"]["test"])) for name, s in services().items() if "healthcheck" in s}
    assert "/health" in tests["mlflow"] and "/api/v2/monitor/health" in tests["airflow-apiserver"]
    assert "/healthz" in tests["serving"] and ":8974/health" in tests["airflow-scheduler"]
    site = Path(__import__("airflow").__file__).parent
    monitor = (site / "api_fastapi" / "core_api" / "routes" / "public" / "monitor.py").read_text()
    assert 'prefix="/monitor"' in monitor and '"/health"' in monitor
    # The basic-auth app leaves /health open (read as text: importing it needs mlflow[auth]).
    auth = (Path(__import__("mlflow").__file__).parent / "server" / "auth" / "__init__.py").read_text()
    assert re.search(r'_UNPROTECTED_PATH_PREFIXES = \([^)]*"/health"', auth)


# ---- secrets -----------------------------------------------------------------------------------------


def test_compose_secrets_come_from_the_environment():
    required = set()
    for name, service in services().items():
        for key, value in service.get("environment", {}).items():
            value = str(value)
            if SECRET_NAME.search(key) and key != "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
                refs = REF.findall(value)
                assert refs and REF.sub("", value) == "", f"{name}: {key} must be only ${{VAR:?}}"
            if "://" in value and "@" in value:  # credentials inside a URL
                userinfo = value.split("://", 1)[1].split("@", 1)[0]
                assert ":" not in userinfo or REF.search(userinfo.split(":", 1)[1]), (
                    f"{name}: {key} has a literal password"
                )
            if "password=" in value:
                assert REF.search(value.split("password=", 1)[1]), f"{name}: {key} has a literal password"
    text = COMPOSE.read_text()
    for var, _ in REF.findall(text):
        if SECRET_NAME.search(var) or var.endswith("_KEY"):
            required.add(var)
            assert re.search(rf"\${{{var}:\?", text), f"{var} must be required (${{{var}:?...}}), not defaulted"
    assert {
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "AIRFLOW_ADMIN_PASSWORD",
        "VIDREC_RELOAD_TOKEN",
    } <= required
    # Every variable compose needs is documented in env.example, secrets there are blank.
    example = dict(
        line.split("=", 1)
        for line in (INFRA / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for var in required:
        assert var in example and example[var] == "", f"env.example: {var} must be listed, empty"


LITERAL = re.compile(
    r"""(?ix)
    (password|passwd|secret|token|fernet_key|api_key)["']?\s*[:=]\s*["']?(?P<value>[^\s"',}]+)
    """
)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<value>[^@\s/]+)@")


def literal_secrets(text: str) -> list[str]:
    """Lines that assign a value to something secret-named (or put a password in a URL) literally.

    Allowed: references (${VAR}, $(VAR), $VAR), names of variables or files, and shell/regex constructs.
    """
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"\$\{[^}]*\}", "${}", line)  # ${VAR:?message} references are fine
        for match in [*LITERAL.finditer(line), *URL_PASSWORD.finditer(line)]:
            value = match.group("value")
            allowed = (
                "$" in value
                or value.startswith((".*", "{name:", "secretKeyRef", "<"))
                or value.endswith((".json", "_FILE"))
                or value in ("|", ">", "str", "None")
                or re.fullmatch(r"[A-Z_]+", value) is not None  # the name of a variable
            )
            if not allowed:
                found.append(line.strip())
    return found


def test_the_secret_scanner_catches_literals():
    bad = [
        "POSTGRES_PASSWORD: hunter2",
        "  - AIRFLOW__API_AUTH__JWT_SECRET=abc123",
        "url: postgresql+psycopg://vidrec:s3cret@postgres:5432/mlflow",  # pragma: allowlist secret (a leak our check must find)
        'admin_password = "changeme"',  # pragma: allowlist secret
        "VIDREC_FEAST_REDIS: redis:6379,db=0,password=plain",
    ]
    assert [bool(literal_secrets(line)) for line in bad] == [True] * len(bad)
    good = [
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}",
        "value: postgresql+psycopg://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@$(POSTGRES_HOST):5432/feast",
        "POSTGRES_PASSWORD=",
        "secretKeyRef: {name: vidrec-secrets, key: redis-password}",
    ]
    assert [literal_secrets(line) for line in good] == [[]] * len(good)


def test_no_literal_secrets_in_any_infra_file():
    for path in text_files():
        assert not literal_secrets(path.read_text()), f"{path.relative_to(ROOT)}: {literal_secrets(path.read_text())}"


def test_kubernetes_secrets_are_referenced_never_defined():
    assert not k8s_kind("Secret"), "the Secret is created outside git (infra/README.md)"
    for deployment in k8s_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            refs = 0
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]) or env["name"].endswith("_USERNAME"):
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "vidrec-secrets", env
                    refs += 1
                else:
                    value = env.get("value", "")
                    if "password=" in value or "@" in value:  # credentials composed from the Secret's values
                        assert "$(POSTGRES_PASSWORD)" in value or "$(REDIS_PASSWORD)" in value, env
            assert refs >= 4
    for config in k8s_kind("ConfigMap"):
        for key in config["data"]:
            assert not SECRET_NAME.search(key), f"ConfigMap holds {key}"


# ---- the image ---------------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_with_its_constraints():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    copies = re.findall(r"^COPY (?!--from)(\S+) (\S+)$", text, re.M)
    assert copies
    for source, _ in copies:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository (context = repo root)"
    assert re.search(r"pip install [^\n]*-r constraints\.txt", text)
    assert '"mlflow[auth]==' in text, "--app-name basic-auth needs MLflow's auth extra (Flask-WTF)"
    assert re.search(r"pip install [^\n]*-c constraints\.txt [^\n]*\.", text)
    for path in re.findall(rf"{IMAGE_ROOT}/\S+", text):
        assert in_repo(path.rstrip("\\")).exists(), path
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".vidrec", "infra/.env"} <= set(ignore)
    assert re.search(r"^USER (?!root|0\b)", text, re.M), "the image runs as an unprivileged user"


# ---- Kubernetes ----------------------------------------------------------------------------------------


def test_kustomization_lists_existing_manifests():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    listed = set(kustomization["resources"]) | {"kustomization.yaml"}
    assert {p.name for p in K8S.glob("*.yaml")} == listed


def test_the_service_deployment_has_probes_and_resources():
    (deployment,) = k8s_kind("Deployment")
    (service,) = k8s_kind("Service")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    check_command("k8s serving", argv(container["command"]))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert argv(container["command"])[-1] == str(ports["http"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports, probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert any(c["metadata"]["name"] == name for c in k8s_kind("ConfigMap")), name


def test_probe_paths_are_served_by_bentoml():
    import bentoml

    server = Path(bentoml.__file__).parent / "_internal" / "server"
    text = "".join(p.read_text() for p in server.rglob("*.py"))
    for path in ("/livez", "/healthz", "/readyz"):
        assert f'"{path}"' in text, path
