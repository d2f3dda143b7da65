import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recommender_contract import RecommenderContract
from toy_data import chain_events

from models.gru4rec import GRU4Rec, session_parallel_batches
from models.interactions import Interactions


class TestGRU4Rec(RecommenderContract):
    model_class = GRU4Rec
    bad_params = [{"hidden": 0}, {"dropout": 1.0}, {"bptt": 0}, {"n_samples": 0}, {"lr": 0}, {"epochs": 2.5}]

    def make_model(self, videos):
        return GRU4Rec(embedding=32, hidden=32, epochs=2, batch_size=32, bptt=16, n_samples=256, seed=7)


def chain_data(n_videos: int = 40, n_users: int = 150) -> Interactions:
    catalog = [f"v{i}" for i in range(n_videos)]
    return Interactions.from_events(chain_events(n_videos, n_users), catalog=catalog, weighting="binary")


def test_ranks_the_next_video_of_a_chain_first():
    data = chain_data()
    model = GRU4Rec(embedding=32, hidden=32, dropout=0.0, epochs=30, batch_size=16, bptt=4, n_samples=16, lr=5e-3)
    model.fit(data)
    top, _ = model.recommend(np.arange(data.n_users), k=1)
    hits = 0
    for user in range(data.n_users):
        last = int(data.video_ids[model.histories[user][-1]][1:])
        hits += data.video_ids[top[user, 0]] == f"v{last + 1}"
    assert hits / data.n_users >= 0.8, f"successor ranked first for only {hits}/{data.n_users} users"


@pytest.mark.parametrize("bptt", [1, 3])
def test_session_parallel_schedule_covers_every_transition_once(bptt):
    sessions = [np.array([0, 1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9]), np.array([10, 11, 12, 13])]
    batches = session_parallel_batches(sessions, lanes=2, bptt=bptt)
    pairs, lane_of = [], {}
    for lanes, inputs, targets, reset in batches:
        assert inputs.shape == targets.shape == (len(lanes), bptt)
        for lane, row_in, row_out, fresh in zip(lanes, inputs, targets, reset, strict=False):
            real = row_out >= 0
            assert real[: real.sum()].all(), "padding only after a session's last target"
            session = next(i for i, s in enumerate(sessions) if row_in[0] in s)
            assert fresh == (row_in[0] == sessions[session][0]), "reset exactly where a session starts"
            assert lane_of.setdefault(session, lane) == lane, "a session stays in its lane"
            pairs += list(zip(row_in[real], row_out[real], strict=False))
    expected = [(int(a), int(b)) for s in sessions for a, b in itertools.pairwise(s)]
    assert sorted((int(a), int(b)) for a, b in pairs) == sorted(expected)


def test_unwatched_catalog_videos_and_empty_users_do_not_crash():
    events = chain_events(n_videos=20, n_users=30)
    catalog = [f"v{i}" for i in range(20)] + [f"never{i}" for i in range(15)]
    data = Interactions.from_events(events, catalog=catalog, users=["lurker"], weighting="binary")
    model = GRU4Rec(embedding=8, hidden=8, epochs=1, batch_size=8, n_samples=8).fit(data)
    ids, scores = model.recommend(data.user_rows(["lurker"]), k=5)
    assert np.isfinite(scores).all() and (ids >= 0).all()
    assert np.isfinite(model.score(np.arange(data.n_users))).all()


def test_fit_leaves_global_torch_state_alone():
    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    GRU4Rec(embedding=8, hidden=8, epochs=1, n_samples=8).fit(chain_data(n_videos=20, n_users=20))
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert not torch.are_deterministic_algorithms_enabled()


def test_needs_timestamps():
    data = Interactions(
        sp.csr_matrix(np.ones((2, 3), dtype=np.float32)), np.array(["a", "b"]), np.array(["x", "y", "z"])
    )
    with pytest.raises(ValueError, match="GRU4Rec needs Interactions.timestamps"):
        GRU4Rec(epochs=1).fit(data)
