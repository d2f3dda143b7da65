import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from recommender_contract import RecommenderContract
from toy_data import chain_events

from models.interactions import Interactions
from models.sequential import SASRec, ordered_histories


class TestSASRec(RecommenderContract):
    model_class = SASRec
    bad_params = [{"hidden": 30, "heads": 4}, {"dropout": 1.0}, {"max_len": 0}, {"lr": 0}, {"epochs": 2.5}]

    def make_model(self, videos):
        return SASRec(max_len=20, hidden=32, heads=2, layers=1, epochs=3, batch_size=64, seed=7)


def test_learns_a_strict_chain_order():
    n_videos = 40
    catalog = [f"v{i}" for i in range(n_videos)]
    data = Interactions.from_events(chain_events(n_videos), catalog=catalog, weighting="binary")
    model = SASRec(max_len=16, hidden=32, heads=2, layers=1, dropout=0.1, epochs=30, batch_size=32, lr=5e-3)
    model.fit(data)
    top, _ = model.recommend(np.arange(data.n_users), k=1)
    hits = 0
    for user in range(data.n_users):
        last = int(data.video_ids[model.histories[user][-1]][1:])
        hits += data.video_ids[top[user, 0]] == f"v{last + 1}"
    assert hits / data.n_users >= 0.8, f"successor ranked first for only {hits}/{data.n_users} users"


def test_order_not_just_the_set_decides():
    """Two users with the same videos in opposite orders get different next-video guesses."""
    n_videos = 40
    catalog = [f"v{i}" for i in range(n_videos)]
    events = chain_events(n_videos)
    base = pd.Timestamp("2024-06-01", tz="UTC")
    probe = [("ab", "v5", base), ("ab", "v20", base + pd.Timedelta(hours=1))]
    probe += [("ba", "v20", base), ("ba", "v5", base + pd.Timedelta(hours=1))]
    events = pd.concat([events, pd.DataFrame(probe, columns=["user_id", "video_id", "event_ts"])
                        .assign(event_type="watch", rating=np.nan)])  # fmt: skip
    data = Interactions.from_events(events, catalog=catalog, weighting="binary")
    model = SASRec(max_len=16, hidden=32, heads=2, layers=1, dropout=0.1, epochs=30, batch_size=32, lr=5e-3).fit(data)
    rows = data.user_rows(["ab", "ba"])
    top, _ = model.recommend(rows, k=1)
    assert data.video_ids[top[0, 0]] == "v21"
    assert data.video_ids[top[1, 0]] == "v6"


def test_histories_ordered_by_time_then_video_index():
    matrix = sp.csr_matrix(np.array([[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    times = sp.csr_matrix(np.array([[30, 10, 30, 20], [5, 9, 0, 1], [0, 0, 0, 0]], dtype=np.float64))
    data = Interactions(matrix, np.array(["a", "b", "c"]), np.array(["w", "x", "y", "z"]), timestamps=times)
    histories = ordered_histories(data)
    assert histories[0].tolist() == [1, 3, 0, 2]
    assert histories[1].tolist() == [3, 1]  # the timestamp of a non-interacted pair is ignored
    assert histories[2].tolist() == []


def test_unwatched_catalog_videos_and_empty_users_do_not_crash():
    events = chain_events(n_videos=20, n_users=30)
    catalog = [f"v{i}" for i in range(20)] + [f"never{i}" for i in range(15)]
    data = Interactions.from_events(events, catalog=catalog, users=["lurker"], weighting="binary")
    model = SASRec(max_len=8, hidden=16, heads=2, layers=1, epochs=2).fit(data)
    lurker = data.user_rows(["lurker"])
    ids, scores = model.recommend(lurker, k=5)
    assert np.isfinite(scores).all() and (ids >= 0).all()
    assert np.isfinite(model.score(np.arange(data.n_users))).all()


def test_fit_leaves_global_torch_state_alone():
    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    data = Interactions.from_events(chain_events(n_videos=20, n_users=20), weighting="binary")
    SASRec(max_len=8, hidden=16, heads=2, layers=1, epochs=1).fit(data)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert not torch.are_deterministic_algorithms_enabled()


def test_needs_timestamps():
    data = Interactions(
        sp.csr_matrix(np.ones((2, 3), dtype=np.float32)), np.array(["a", "b"]), np.array(["x", "y", "z"])
    )
    with pytest.raises(ValueError, match="timestamps"):
        SASRec(epochs=1).fit(data)
