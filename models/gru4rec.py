"""GRU4Rec: session-based recommendation with recurrent neural networks (Hidasi et al., ICLR 2016).

Each user's time-ordered history (`ordered_histories`, shared with SASRec) is one session. A GRU
reads video embeddings and, at every step, predicts the next video. Training uses the paper's
session-parallel mini-batches: `batch_size` sessions run side by side in lanes, the hidden state
of a lane is carried from one mini-batch to the next (detached), and when a lane's session ends
the next session takes the lane with a zeroed hidden state. Sessions are dealt to lanes in a
fresh seeded order each epoch. The paper's mini-batch is one time step of every lane
(`bptt=1`); `bptt` > 1 unrolls that many steps per update (truncated backpropagation through
time), which does the same work in far fewer, larger updates: a user's history in MovieLens runs
to thousands of ratings, so one step per update means thousands of optimiser steps per epoch.

Loss: softmax cross-entropy of the true next video against `n_samples` videos drawn uniformly
from the catalog, shared by the whole mini-batch, instead of the paper's TOP1/BPR ranking losses
over in-batch negatives. Why: the full softmax over the catalog costs a (targets x catalog x
hidden) product per update, about 20 s per epoch on ml-latest-small on one core, while a few
hundred shared samples cost a small fraction of it. In-batch negatives are the other targets, so
they are drawn by popularity and need a log-popularity correction to avoid learning "not
popular"; with a uniform proposal that correction is one constant for every video, so the sampled
softmax ranks like the full one without it. The later GRU4Rec work (Hidasi & Karatzoglou, CIKM
2018) also finds cross-entropy with extra samples strong. The output bias starts at log
popularity, so training spends its updates on what follows what rather than rediscovering
popularity.

Scoring: the GRU is run over the user's full history and its last hidden state is dotted with
every video's output embedding (plus the output bias). Users with no history get popularity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from models.base import NotFittedError, Recommender, check_positive_int
from models.interactions import Interactions
from models.sequential import ordered_histories
from models.torch_state import TorchStateMixin, torch_determinism


class GRU4RecNet(nn.Module):
    """Video embedding -> one GRU layer -> dropout -> dot with output embeddings + bias."""

    def __init__(self, n_items: int, embedding: int, hidden: int, dropout: float):
        super().__init__()
        self.item_emb = nn.Embedding(n_items, embedding)
        self.gru = nn.GRU(embedding, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out_emb = nn.Embedding(n_items, hidden)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.item_emb.weight, std=embedding**-0.5)
        nn.init.normal_(self.out_emb.weight, std=hidden**-0.5)

    def unroll(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read (lanes, steps) videos from the given state: (hidden state at every step, last one)."""
        outputs, last = self.gru(self.item_emb(items), state[None])
        return outputs, last[0]

    def logits(self, state: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """state . output embedding + bias, for the given videos (all of them when None)."""
        if items is None:
            return state @ self.out_emb.weight.T + self.out_bias
        return state @ self.out_emb(items).T + self.out_bias[items]

    def final_state(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Hidden state after each (non-empty) history, read in one packed pass, in input order."""
        packed = pack_sequence([self.item_emb(torch.from_numpy(h)) for h in histories], enforce_sorted=False)
        _, state = self.gru(packed)
        return state[0]


def sampled_softmax_loss(
    net: GRU4RecNet, hidden: torch.Tensor, targets: np.ndarray, negatives: np.ndarray
) -> torch.Tensor:
    """Cross-entropy of each target against the shared uniform negatives (hidden: (n, dim)).

    A negative that happens to be the row's own target is masked out, so no row is asked to
    rank its answer below itself.
    """
    hidden = net.drop(hidden)
    targets_t, negatives_t = torch.from_numpy(targets), torch.from_numpy(negatives)
    positive = (hidden * net.out_emb(targets_t)).sum(-1) + net.out_bias[targets_t]
    negative = net.logits(hidden, negatives_t)
    negative = negative.masked_fill(negatives_t[None, :] == targets_t[:, None], float("-inf"))
    logits = torch.cat([positive[:, None], negative], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


def session_parallel_batches(sessions: list[np.ndarray], lanes: int, bptt: int) -> list[tuple[np.ndarray, ...]]:
    """The session-parallel schedule: per update, (lanes, inputs, targets, reset) arrays.

    Sessions (each of length >= 2) are dealt, in the given order, to whichever lane frees up
    first. Each update advances every busy lane by `bptt` time steps: `inputs` and `targets`
    are (busy lanes, bptt) video rows, target = the next input, padded with -1 after a session's
    last target (the next session waits for the next update, so a lane never switches session
    mid-row). `reset` is True where a lane starts a new session, whose hidden state is zeroed.
    Once sessions run out, updates list only the busy lanes instead of padding idle ones.
    """
    lane_session = np.full(lanes, -1)
    lane_pos = np.zeros(lanes, dtype=np.int64)
    queue, batches = 0, []
    while True:
        for lane in np.flatnonzero(lane_session < 0):  # free lanes take the next session
            if queue < len(sessions):
                lane_session[lane], lane_pos[lane], queue = queue, 0, queue + 1
        busy = np.flatnonzero(lane_session >= 0)
        if not len(busy):
            return batches
        inputs = np.full((len(busy), bptt), -1, dtype=np.int64)
        targets = inputs.copy()
        for row, lane in enumerate(busy):
            session, pos = sessions[lane_session[lane]], lane_pos[lane]
            chunk = session[pos : pos + bptt + 1]
            inputs[row, : len(chunk) - 1], targets[row, : len(chunk) - 1] = chunk[:-1], chunk[1:]
            if pos + bptt + 1 >= len(session):  # its last target is in this chunk
                lane_session[lane] = -1
        batches.append((busy, inputs, targets, lane_pos[busy] == 0))
        lane_pos[busy] += bptt


class GRU4Rec(TorchStateMixin, Recommender):
    """Next-video model: a GRU over the user's time-ordered history, trained session-parallel.

    embedding / hidden: input embedding and GRU state sizes (the output embeddings have the
    state's size). dropout: on the hidden state before the output layer. batch_size: parallel
    lanes. bptt: time steps per update (1 = the paper). n_samples: uniform negatives per update.
    """

    name = "gru4rec"

    def __init__(
        self,
        embedding: int = 64,
        hidden: int = 100,
        dropout: float = 0.5,
        epochs: int = 5,
        batch_size: int = 64,
        bptt: int = 32,
        n_samples: int = 1024,
        lr: float = 3e-3,
        seed: int = 42,
    ):
        super().__init__()
        check_positive_int("embedding", embedding)
        check_positive_int("hidden", hidden)
        check_positive_int("epochs", epochs)
        check_positive_int("batch_size", batch_size)
        check_positive_int("bptt", bptt)
        check_positive_int("n_samples", n_samples)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.embedding, self.hidden, self.dropout, self.epochs = embedding, hidden, dropout, epochs
        self.batch_size, self.bptt, self.n_samples, self.lr, self.seed = batch_size, bptt, n_samples, lr, seed
        self.net: GRU4RecNet | None = None
        self.histories: list[np.ndarray] = []
        self.popularity: np.ndarray | None = None
        self.losses: list[float] = []

    # ---- fitting --------------------------------------------------------------------------------

    def _fit(self, data: Interactions) -> None:
        if data.timestamps is None:
            raise ValueError("GRU4Rec needs Interactions.timestamps to order each user's history")
        self.histories = ordered_histories(data)
        self.popularity = np.asarray((data.matrix > 0).sum(axis=0), dtype=np.float32).ravel()
        sessions = [h for h in self.histories if len(h) >= 2]  # one video predicts nothing
        rng = np.random.default_rng(self.seed)
        with torch_determinism(self.seed):
            net = GRU4RecNet(data.n_videos, self.embedding, self.hidden, self.dropout)
            with torch.no_grad():  # start from the popularity prior: the updates then learn what follows what
                net.out_bias.copy_(torch.from_numpy(np.log1p(self.popularity)))
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
            self.losses = []
            net.train()
            for _ in range(self.epochs):
                order = rng.permutation(len(sessions))
                batches = session_parallel_batches([sessions[i] for i in order], self.batch_size, self.bptt)
                self.losses.append(self._epoch(net, batches, optimizer, rng))
            self.net = net.eval()

    def _epoch(self, net: GRU4RecNet, batches: list[tuple[np.ndarray, ...]], optimizer: torch.optim.Optimizer,
               rng: np.random.Generator) -> float:  # fmt: skip
        """One pass over the schedule, one update per batch; returns the mean update loss."""
        state = torch.zeros(self.batch_size, self.hidden)
        losses = []
        for lanes, inputs, targets, reset in batches:
            lanes_t, real = torch.from_numpy(lanes), targets >= 0
            start = state[lanes_t].masked_fill(torch.from_numpy(reset)[:, None], 0.0)
            # Padding (after a session's end) reads video 0; its outputs are dropped from the loss
            # and its final state is never carried on, because that lane resets next update.
            outputs, last = net.unroll(torch.from_numpy(np.where(real, inputs, 0)), start)
            negatives = rng.integers(0, len(net.out_bias), size=self.n_samples)
            loss = sampled_softmax_loss(net, outputs[torch.from_numpy(real)], targets[real], negatives)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state = state.index_copy(0, lanes_t, last.detach())  # carried on, not backpropagated into
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0

    # ---- scoring --------------------------------------------------------------------------------

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Hidden state after the full history . output embeddings; popularity for empty histories."""
        net, popularity = self._module(), self.popularity
        assert popularity is not None  # set together with the module in _fit
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = np.empty((len(user_rows), len(popularity)), dtype=np.float32)
        with torch_determinism(self.seed), torch.no_grad():
            for start in range(0, len(user_rows), self.batch_size):
                rows = user_rows[start : start + self.batch_size]
                block = np.broadcast_to(popularity, (len(rows), len(popularity))).copy()
                known = [i for i, u in enumerate(rows) if len(self.histories[u])]
                if known:
                    state = net.final_state([self.histories[rows[i]] for i in known])
                    block[known] = net.logits(state).numpy()
                out[start : start + len(rows)] = block
        return out

    def item_vectors(self) -> np.ndarray:
        """The output embeddings: videos the model predicts in the same contexts are close."""
        return self._module().out_emb.weight.detach().numpy().copy()

    def _build_net(self, state: dict) -> GRU4RecNet:
        return GRU4RecNet(state["item_emb.weight"].shape[0], self.embedding, self.hidden, self.dropout)

    def _module(self) -> GRU4RecNet:
        """The trained network, or NotFittedError before fit()."""
        self._require()
        if self.net is None:
            raise NotFittedError("GRU4Rec has no trained network: call fit() first")
        return self.net
