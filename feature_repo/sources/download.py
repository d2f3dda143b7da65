"""Fetch a published MovieLens archive into the cache, checked against a pinned SHA-256."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path


class DownloadError(Exception):
    """The dataset is neither on disk nor downloadable; the message says what to do instead."""


@dataclass(frozen=True)
class Archive:
    filename: str  # e.g. ml-latest-small.zip; its stem is the folder inside the zip
    sha256: str
    size: int


# Sizes and checksums as published by GroupLens (also pinned by tensorflow-datasets).
ARCHIVES: dict[str, Archive] = {  # the hex strings are sha256 sums, not secrets (detect-secrets)
    "movielens-small": Archive(
        "ml-latest-small.zip",
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",  # pragma: allowlist secret
        978_202,
    ),
    "movielens-100k": Archive(
        "ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",  # pragma: allowlist secret
        4_924_029,
    ),
    "movielens-1m": Archive(
        "ml-1m.zip",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",  # pragma: allowlist secret
        5_917_549,
    ),
    "movielens-25m": Archive(
        "ml-25m.zip",
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",  # pragma: allowlist secret
        261_978_986,
    ),
}


def base_url() -> str:
    return os.environ.get("VIDREC_MOVIELENS_URL", "https://files.grouplens.org/datasets/movielens").rstrip("/")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dataset: str, cache_dir: Path, timeout_s: float = 30.0) -> Path:
    """The extracted dataset folder in the cache, downloading and verifying it first if needed."""
    archive = ARCHIVES[dataset]
    target = cache_dir / Path(archive.filename).stem
    if target.is_dir():
        return target
    url = f"{base_url()}/{archive.filename}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        zip_path = Path(tmp) / archive.filename
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(zip_path, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            raise DownloadError(
                f"could not download {dataset} from {url} ({exc}). This machine may have no internet "
                f"access: download {archive.filename} elsewhere, unzip it, and pass its folder with "
                f"--data-dir, or unzip it into {target}."
            ) from exc
        actual = sha256_of(zip_path)
        if actual != archive.sha256:
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {archive.sha256}, got {actual} "
                f"({zip_path.stat().st_size} bytes, expected {archive.size}); the file was discarded."
            )
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        # Renaming the finished folder into place means a half-extracted cache is never seen.
        os.replace(Path(tmp) / target.name, target)
    return target
