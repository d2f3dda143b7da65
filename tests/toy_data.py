"""Small interaction data made by hand, and the held-out checks the model tests share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.interactions import Interactions
from models.metrics import recall_at_k


def holdout(data: Interactions, fraction: float = 0.2, seed: int = 0) -> tuple[Interactions, sp.csr_matrix]:
    """Hide a random `fraction` of the interactions: (train interactions, held-out truth matrix)."""
    coo = data.matrix.tocoo()
    held = np.random.default_rng(seed).random(coo.nnz) < fraction

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=data.matrix.shape)

    return Interactions(part(~held), data.user_ids, data.video_ids), part(held)


def held_out_recall(model, train: Interactions, truth: sp.csr_matrix, k: int = 10) -> float:
    users = np.flatnonzero(truth.getnnz(axis=1) > 0)
    return recall_at_k(model.fit(train).recommend(users, k=k)[0], truth[users], k)


def two_communities(n_users: int = 20, n_items: int = 6, seed: int = 0) -> Interactions:
    """Users 0..n-1 watch videos among 0..m-1 only, users n..2n-1 among m..2m-1 only; the last
    user (row 2n) watched video 0 and nothing else."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((2 * n_users + 1, 2 * n_items), dtype=np.float32)
    for group in (0, 1):
        users = slice(group * n_users, (group + 1) * n_users)
        dense[users, group * n_items : (group + 1) * n_items] = rng.random((n_users, n_items)) < 0.6
    dense[-1, 0] = 1.0
    ids = np.array([f"u{i}" for i in range(dense.shape[0])])
    return Interactions(sp.csr_matrix(dense), ids, np.array([f"v{j}" for j in range(dense.shape[1])]))


def title_rows(data: Interactions, videos, prefixes: list[str]) -> list[int]:
    """Video rows of the first movie whose title starts with each prefix."""
    titles = videos.set_index("video_id")["title"].reindex(data.video_ids).fillna("").to_numpy()
    return [int(np.flatnonzero(np.char.startswith(titles.astype(str), prefix))[0]) for prefix in prefixes]


SERIES = {
    "Lord of the Rings: The Two Towers": ["Lord of the Rings: The Fellowship", "Lord of the Rings: The Return"],
    "Star Wars: Episode V": ["Star Wars: Episode IV", "Star Wars: Episode VI"],
}


def assert_sequels_near(model, data: Interactions, videos, k: int = 5) -> None:
    """similar_items of a middle film includes both its neighbours in the series."""
    for film, others in SERIES.items():
        query = title_rows(data, videos, [film])
        ids, _ = model.similar_items(np.array(query), k=k)
        assert set(title_rows(data, videos, others)) <= set(ids[0]), f"{film}: {ids[0]}"


def recall_at(model, held: sp.csr_matrix, k: int) -> float:
    """Mean over users with held-out videos of hits / min(k, number held out)."""
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    ids, _ = model.recommend(users, k=k)
    recalls = [len(set(held[u].indices) & set(ids[i])) / min(k, held[u].nnz) for i, u in enumerate(users)]
    return float(np.mean(recalls))


def two_clusters(n_users: int = 80, per_cluster: int = 20, watched: int = 8, seed: int = 0) -> Interactions:
    """Half the users watch only 'a*' videos, half only 'b*'; the 'b' cluster is more popular."""
    rng = np.random.default_rng(seed)
    now = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for user in range(n_users):
        cluster = "a" if user < n_users // 3 else "b"
        for video in rng.choice(per_cluster, size=watched, replace=False):
            rows.append((f"u{user}", f"{cluster}{video}", now))
    events = pd.DataFrame(rows, columns=["user_id", "video_id", "event_ts"]).assign(event_type="watch", rating=np.nan)
    catalog = [f"{c}{i}" for c in "ab" for i in range(per_cluster)] + [f"unwatched{i}" for i in range(10)]
    return Interactions.from_events(events, catalog=catalog, weighting="binary")


def chain_events(n_videos: int = 40, n_users: int = 150, seed: int = 0) -> pd.DataFrame:
    """Every user watches a contiguous stretch of the fixed chain v0 -> v1 -> ... in order."""
    rng = np.random.default_rng(seed)
    start_ts = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for user in range(n_users):
        length = int(rng.integers(4, 12))
        first = int(rng.integers(0, n_videos - length))  # leaves a successor after the last one
        for step in range(length):
            rows.append((f"u{user}", f"v{first + step}", start_ts + pd.Timedelta(hours=step + user)))
    return pd.DataFrame(rows, columns=["user_id", "video_id", "event_ts"]).assign(event_type="watch", rating=np.nan)
