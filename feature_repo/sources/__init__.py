"""Data sources: pick a dataset by name, get a `Source` that reads it into the canonical tables."""

from __future__ import annotations

from pathlib import Path

from feature_repo.defaults import DATASETS
from feature_repo.sources.base import DataFileError, EventChunk, MissingColumnError, Source
from feature_repo.sources.canonical import CanonicalFiles
from feature_repo.sources.download import ARCHIVES, DownloadError, fetch
from feature_repo.sources.movielens import MovieLens100k, MovieLensCsv, MovieLensDat


def movielens_layout(name: str, folder: Path) -> Source:
    """Recognise the layout from the files present, so any MovieLens release folder works."""
    if (folder / "ratings.csv").exists():
        return MovieLensCsv(name, folder)
    if (folder / "ratings.dat").exists():
        return MovieLensDat(name, folder)
    if (folder / "u.data").exists():
        return MovieLens100k(name, folder)
    raise DataFileError(folder, "holds no MovieLens ratings file (ratings.csv, ratings.dat or u.data)")


def open_source(dataset: str, data_dir: Path | None, cache_dir: Path) -> Source:
    """The source for `dataset`, read from `data_dir`, else from the cache (downloading MovieLens)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if dataset in ("canonical", "synthetic"):
        if data_dir is None:
            raise DataFileError(Path("."), f"--data-dir is required for the {dataset} dataset")
        return CanonicalFiles(dataset, data_dir)
    if data_dir is None:
        if dataset not in ARCHIVES:
            raise DownloadError(f"{dataset} has no pinned download; pass its folder with --data-dir")
        data_dir = fetch(dataset, cache_dir)
    return movielens_layout(dataset, Path(data_dir))


__all__ = ["DATASETS", "DataFileError", "DownloadError", "EventChunk", "MissingColumnError", "Source",
           "open_source"]  # fmt: skip
