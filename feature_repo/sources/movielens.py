"""MovieLens in its three published layouts, mapped onto the canonical tables.

- CSV (ml-latest-small, ml-25m, ml-32m): ratings.csv, movies.csv, tags.csv
- `::`-separated .dat (ml-1m): ratings.dat, movies.dat, users.dat
- ml-100k: u.data (tab-separated), u.item and u.user (pipe-separated)

A rating is a `rating` event carrying its value (it also means the movie was watched); a tag
application is a `tag` event whose text is the tag, and the movie's distinct tags become its
video tags. Titles lose their trailing "(year)", which becomes `published_ts`.
Event ids are derived from the row, so re-ingesting the same files yields the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.sources.base import (
    DataFileError,
    EventChunk,
    MissingColumnError,
    Source,
    csv_header,
    with_canonical_columns,
)

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-–]\d{0,4})?\)\s*$")
NO_GENRES = "(no genres listed)"

# ml-1m encodes age and occupation as codes (see its README).
ML1M_AGE = {1: "under-18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATION = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip


def age_bucket(age: pd.Series) -> pd.Series:
    """ml-100k's exact ages bucketed like ml-1m's codes, so both datasets speak the same buckets."""
    edges = [-np.inf, 17, 24, 34, 44, 49, 55, np.inf]
    return pd.cut(age, bins=edges, labels=list(ML1M_AGE.values())).astype("string")


def split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """'Toy Story (1995)' -> ('Toy Story', 1995-01-01 UTC); titles without a year keep their text."""
    parts = titles.str.strip().str.extract(_TITLE_YEAR)
    title = parts["title"].fillna(titles.str.strip())
    published = pd.to_datetime(parts["year"], format="%Y", errors="coerce", utc=True)
    return title, published


def rating_events(frame: pd.DataFrame) -> pd.DataFrame:
    """user/movie/rating/timestamp columns -> canonical rating events."""
    user = frame["user"].astype(str)
    movie = frame["movie"].astype(str)
    ts = frame["timestamp"].astype("int64")
    events = pd.DataFrame(
        {
            "event_id": "ml:r:" + user + ":" + movie + ":" + ts.astype(str),
            "user_id": user,
            "video_id": movie,
            "event_ts": pd.to_datetime(ts, unit="s", utc=True),
            "event_type": "rating",
            "rating": frame["rating"].astype("float64"),
            "device": "unknown",
        }
    )
    return with_canonical_columns(events, "events")


def tag_events(frame: pd.DataFrame) -> pd.DataFrame:
    user = frame["userId"].astype(str)
    movie = frame["movieId"].astype(str)
    ts = frame["timestamp"].astype("int64")
    tag_hash = pd.util.hash_pandas_object(frame["tag"].astype(str), index=False).map("{:016x}".format)
    events = pd.DataFrame(
        {
            "event_id": "ml:t:" + user + ":" + movie + ":" + ts.astype(str) + ":" + tag_hash,
            "user_id": user,
            "video_id": movie,
            "event_ts": pd.to_datetime(ts, unit="s", utc=True),
            "event_type": "tag",
            "device": "unknown",
            "text": frame["tag"].astype(str),
        }
    )
    return with_canonical_columns(events, "events")


def video_tags(tags: pd.DataFrame) -> pd.Series:
    """Each movie's distinct tags (lower-cased), most applied first; indexed by movie id string."""
    cleaned = tags.assign(tag=tags["tag"].astype(str).str.strip().str.lower())
    cleaned = cleaned[cleaned["tag"] != ""]
    counts = cleaned.groupby(["movieId", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
    grouped = counts.groupby("movieId")["tag"].agg(list)
    grouped.index = grouped.index.astype(str)
    return grouped


class MovieLensCsv(Source):
    """ml-latest-small, ml-25m, ml-32m."""

    def __init__(self, name: str, location: Path):
        self.name, self.location = name, Path(location)
        self.ratings_path = self.location / "ratings.csv"
        self.movies_path = self.location / "movies.csv"
        self.tags_path = self.location / "tags.csv"

    def files(self) -> list[Path]:
        paths = [self.ratings_path, self.movies_path]
        return paths + ([self.tags_path] if self.tags_path.exists() else [])

    def check(self) -> None:
        expected = {
            self.ratings_path: ("userId", "movieId", "rating", "timestamp"),
            self.movies_path: ("movieId", "title", "genres"),
            self.tags_path: ("userId", "movieId", "tag", "timestamp"),
        }
        for path in self.files():
            header = csv_header(path)
            for column in expected[path]:
                if column not in header:
                    raise MissingColumnError(path, column, path.stem)

    def users(self) -> pd.DataFrame | None:
        return None  # users are the people who rated or tagged; ingestion derives them

    def videos(self) -> pd.DataFrame:
        movies = pd.read_csv(self.movies_path, dtype={"movieId": str, "title": str, "genres": str})
        title, published = split_title(movies["title"])
        genres = movies["genres"].fillna(NO_GENRES)
        videos = pd.DataFrame(
            {
                "video_id": movies["movieId"],
                "title": title,
                "genres": [[] if g == NO_GENRES else g.split("|") for g in genres],
                "published_ts": published,
            }
        )
        tags = video_tags(self._tags()) if self.tags_path.exists() else pd.Series(dtype=object)
        videos["tags"] = [list(tags.get(v, [])) for v in videos["video_id"]]
        return with_canonical_columns(videos, "videos")

    def _tags(self) -> pd.DataFrame:
        return pd.read_csv(self.tags_path, dtype={"tag": str}, keep_default_na=False)

    def event_rows(self) -> int | None:
        # Counting lines is cheap next to parsing them and gives the progress bar a total.
        # (An approximation for tags.csv, whose quoted tags may span lines.)
        return sum(_data_lines(p) for p in (self.ratings_path, self.tags_path) if p.exists())

    def events(self, chunk_rows: int) -> Iterator[EventChunk]:
        reader = pd.read_csv(
            self.ratings_path,
            chunksize=chunk_rows,
            dtype={"userId": "int64", "movieId": "int64", "rating": "float64", "timestamp": "int64"},
        )
        first = 0
        for chunk in _guarded(reader, self.ratings_path):
            frame = chunk.rename(columns={"userId": "user", "movieId": "movie"})
            yield EventChunk(rating_events(frame), self.ratings_path, first)
            first += len(chunk)
        if self.tags_path.exists():
            yield EventChunk(tag_events(self._tags()), self.tags_path, 0)


class MovieLensDat(Source):
    """ml-1m: `::`-separated, latin-1."""

    def __init__(self, name: str, location: Path):
        self.name, self.location = name, Path(location)
        self.ratings_path = self.location / "ratings.dat"
        self.movies_path = self.location / "movies.dat"
        self.users_path = self.location / "users.dat"

    def files(self) -> list[Path]:
        return [self.ratings_path, self.movies_path, self.users_path]

    def check(self) -> None:
        for path, fields in ((self.ratings_path, 4), (self.movies_path, 3), (self.users_path, 5)):
            first = _first_line(path)
            if len(first.split("::")) < fields:
                raise DataFileError(path, f"expected {fields} '::'-separated fields, got {first!r}")

    def users(self) -> pd.DataFrame:
        raw = _read_double_colon(self.users_path, ["user", "gender", "age", "occupation", "zip"])
        users = pd.DataFrame(
            {
                "user_id": raw["user"].astype(str),
                "gender": raw["gender"].str.lower(),
                "age_bucket": raw["age"].astype(int).map(ML1M_AGE),
                "occupation": raw["occupation"].astype(int).map(dict(enumerate(ML1M_OCCUPATION))),
            }
        )
        return with_canonical_columns(users, "users")

    def videos(self) -> pd.DataFrame:
        lines = self.movies_path.read_text(encoding="latin-1").splitlines()
        # Titles contain ':' themselves, so split from both ends.
        rows = [line.split("::", 1) for line in lines if line.strip()]
        movie_ids = [r[0] for r in rows]
        title_genres = [r[1].rsplit("::", 1) for r in rows]
        title, published = split_title(pd.Series([tg[0] for tg in title_genres]))
        videos = pd.DataFrame(
            {
                "video_id": movie_ids,
                "title": title,
                "genres": [tg[1].split("|") if len(tg) > 1 and tg[1] else [] for tg in title_genres],
                "tags": [[] for _ in rows],
                "published_ts": published,
            }
        )
        return with_canonical_columns(videos, "videos")

    def events(self, chunk_rows: int) -> Iterator[EventChunk]:
        reader = pd.read_csv(
            self.ratings_path,
            sep=":",
            header=None,
            usecols=[0, 2, 4, 6],
            names=["user", "_a", "movie", "_b", "rating", "_c", "timestamp"],
            chunksize=chunk_rows,
            encoding="latin-1",
        )
        first = 0
        for chunk in _guarded(reader, self.ratings_path):
            yield EventChunk(rating_events(chunk), self.ratings_path, first)
            first += len(chunk)


class MovieLens100k(Source):
    """ml-100k: u.data, u.item, u.user."""

    def __init__(self, name: str, location: Path):
        self.name, self.location = name, Path(location)
        self.ratings_path = self.location / "u.data"
        self.movies_path = self.location / "u.item"
        self.users_path = self.location / "u.user"

    def files(self) -> list[Path]:
        return [self.ratings_path, self.movies_path, self.users_path]

    def check(self) -> None:
        for path, sep, fields in (
            (self.ratings_path, "\t", 4),
            (self.movies_path, "|", 5 + len(ML100K_GENRES)),
            (self.users_path, "|", 5),
        ):
            first = _first_line(path)
            if len(first.split(sep)) < fields:
                raise DataFileError(path, f"expected {fields} {sep!r}-separated fields, got {first!r}")

    def users(self) -> pd.DataFrame:
        raw = pd.read_csv(self.users_path, sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"])
        users = pd.DataFrame(
            {
                "user_id": raw["user"].astype(str),
                "age_bucket": age_bucket(raw["age"]),
                "gender": raw["gender"].str.lower(),
                "occupation": raw["occupation"],
            }
        )
        return with_canonical_columns(users, "users")

    def videos(self) -> pd.DataFrame:
        names = ["movie", "title", "release", "video_release", "url", *ML100K_GENRES]
        raw = pd.read_csv(self.movies_path, sep="|", header=None, names=names, encoding="latin-1", dtype={"movie": str})
        title, year_published = split_title(raw["title"].fillna(""))
        released = pd.to_datetime(raw["release"], format="%d-%b-%Y", errors="coerce", utc=True)
        flags = raw[ML100K_GENRES].to_numpy(dtype=bool)
        videos = pd.DataFrame(
            {
                "video_id": raw["movie"],
                "title": title,
                "genres": [
                    [g for g, on in zip(ML100K_GENRES, row, strict=False) if on and g != "unknown"] for row in flags
                ],
                "tags": [[] for _ in range(len(raw))],
                "published_ts": released.fillna(year_published),
            }
        )
        return with_canonical_columns(videos, "videos")

    def events(self, chunk_rows: int) -> Iterator[EventChunk]:
        reader = pd.read_csv(
            self.ratings_path,
            sep="\t",
            header=None,
            names=["user", "movie", "rating", "timestamp"],
            chunksize=chunk_rows,
        )
        first = 0
        for chunk in _guarded(reader, self.ratings_path):
            yield EventChunk(rating_events(chunk), self.ratings_path, first)
            first += len(chunk)


def _data_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 22), b"")) - 1


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="latin-1") as fh:
            return fh.readline().rstrip("\n")
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None


def _read_double_colon(path: Path, names: list[str]) -> pd.DataFrame:
    lines = [line.split("::") for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
    return pd.DataFrame(lines, columns=names)


def _guarded(reader, path: Path) -> Iterator[pd.DataFrame]:
    """Turn a parse failure in the middle of a file into an error that names the file."""
    iterator = iter(reader)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataFileError(path, f"cannot be parsed: {exc}") from exc
        yield chunk
