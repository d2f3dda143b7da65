"""Typed settings: one profile switch picks where state lives; every location has its own override.

`VIDREC_PROFILE` (or `vidrec --profile`) is `local` (embedded: files and SQLite under
`VIDREC_HOME`), `prod` (PostgreSQL and Redis) or `spark`. Paths default under `VIDREC_HOME`
(`./.vidrec`); downloads are cached under `VIDREC_CACHE_DIR` (`~/.cache/vidrec`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("local", "prod", "spark")


class SettingsError(ValueError):
    """A setting has a value vidrec cannot use."""


@dataclass(frozen=True)
class Settings:
    profile: str
    home: Path
    lake_dir: Path
    cache_dir: Path
    features_dir: Path
    mlflow_uri: str
    mlflow_artifacts: str
    # Where the spark profile submits its Spark work: local[N] here, spark://host:7077 or
    # k8s://https://host:443 against a cluster.
    spark_master: str = "local[2]"
    # The Spark driver's heap (in local[N] mode the executors' too). Spark's own default, 1g, ran
    # out in the feature SQL's aggregations at 10M events.
    spark_driver_memory: str = "4g"
    # The memory a data-sized job may plan for, in bytes (VIDREC_MEMORY_LIMIT, e.g. "12g"); None:
    # what the machine (or the process's cgroup) has available when the job starts.
    memory_limit: int | None = None

    @classmethod
    def from_env(cls, profile: str | None = None) -> Settings:
        profile = profile or os.environ.get("VIDREC_PROFILE", "local")
        if profile not in PROFILES:
            raise SettingsError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
        home = Path(os.environ.get("VIDREC_HOME", ".vidrec")).resolve()
        default_mlflow = (
            f"sqlite:///{home / 'mlflow.db'}"
            if profile == "local"
            else f"postgresql+psycopg://{os.environ.get('VIDREC_PG_USER', 'postgres')}@127.0.0.1:5432/mlflow"
        )
        return cls(
            profile=profile,
            home=home,
            lake_dir=Path(os.environ.get("VIDREC_LAKE_DIR", home / "lake")).resolve(),
            cache_dir=Path(os.environ.get("VIDREC_CACHE_DIR", Path.home() / ".cache" / "vidrec")).resolve(),
            features_dir=Path(os.environ.get("VIDREC_FEATURES_DIR", home / "features")).resolve(),
            # Not MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that variable itself.
            mlflow_uri=os.environ.get("VIDREC_MLFLOW_URI", default_mlflow),
            mlflow_artifacts=os.environ.get("VIDREC_MLFLOW_ARTIFACTS", str(home / "mlartifacts")),
            spark_master=os.environ.get("VIDREC_SPARK_MASTER", cls.spark_master),
            spark_driver_memory=os.environ.get("VIDREC_SPARK_DRIVER_MEMORY", cls.spark_driver_memory),
            memory_limit=size_bytes("VIDREC_MEMORY_LIMIT", os.environ["VIDREC_MEMORY_LIMIT"])
            if os.environ.get("VIDREC_MEMORY_LIMIT")
            else None,
        )


_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def size_bytes(name: str, text: str) -> int:
    """A memory size as Spark and the JVM write it ("512m", "4g", "12G", or plain bytes)."""
    value = text.strip().lower().removesuffix("b")
    number, unit = (value[:-1], value[-1]) if value[-1:] in _SIZE_UNITS else (value, "")
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        size = -1.0
    if not size > 0:
        raise SettingsError(f"{name}={text!r} is not a memory size: write it like 512m, 4g or 12g")
    return int(size)
