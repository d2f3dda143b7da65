"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Each user's history is ordered by time (the last interaction time per user/video pair in
`Interactions.timestamps`, ties broken by video index) and a causal transformer encoder
predicts, at every position, the next video. Training uses binary cross-entropy against one
sampled negative per position, as in the paper; scoring takes the hidden state at the last
position of the user's history and dots it with every item embedding.

Item index 0 is padding; catalog video row `v` is item `v + 1`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.base import NotFittedError, Recommender, check_positive_int
from models.interactions import Interactions
from models.torch_state import TorchStateMixin, torch_determinism

PAD = 0


def ordered_histories(data: Interactions) -> list[np.ndarray]:
    """Per user, the interacted video rows ordered by time (ties by video index).

    Pairs come from `data.matrix` (weight > 0); their time is looked up in `data.timestamps`,
    and a pair without a timestamp counts as the oldest. Vectorised so it scales to big matrices.
    """
    if data.timestamps is None:
        raise ValueError("SASRec needs Interactions.timestamps to order each user's history")
    pairs = data.matrix.tocoo()
    keep = pairs.data > 0
    rows, cols = pairs.row[keep].astype(np.int64), pairs.col[keep].astype(np.int64)
    times = _lookup(data.timestamps, rows, cols)
    order = np.lexsort((cols, times, rows))
    rows, cols = rows[order], cols[order]
    bounds = np.searchsorted(rows, np.arange(data.n_users + 1))
    return [cols[bounds[u] : bounds[u + 1]] for u in range(data.n_users)]


def _lookup(matrix: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values of a sparse matrix at (rows, cols); 0 where the entry is absent."""
    coo = matrix.tocoo()
    n_cols = matrix.shape[1]
    keys = coo.row.astype(np.int64) * n_cols + coo.col
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], coo.data[order]
    wanted = rows * n_cols + cols
    pos = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
    found = (keys[pos] == wanted) if len(keys) else np.zeros(len(wanted), dtype=bool)
    return np.where(found, values[pos] if len(keys) else 0.0, 0.0)


def left_pad(items: np.ndarray, length: int) -> np.ndarray:
    """The last `length` items, left-padded with PAD so the newest item sits at the end."""
    out = np.full(length, PAD, dtype=np.int64)
    tail = items[-length:] if len(items) else items
    if len(tail):
        out[length - len(tail) :] = tail
    return out


def training_windows(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, user) windows: input item t predicts item t+1, both as item ids (row+1).

    A history longer than max_len is cut into consecutive windows from its newest end, so the
    whole history trains the model (the paper keeps only the newest window; with few users the
    older windows are most of the signal).
    """
    inputs, targets, owners = [], [], []
    for user, history in enumerate(histories):
        items = history + 1
        for end in range(len(items) - 1, 0, -max_len):
            start = max(0, end - max_len)
            inputs.append(left_pad(items[start:end], max_len))
            targets.append(left_pad(items[start + 1 : end + 1], max_len))
            owners.append(user)
    if not inputs:
        empty = np.zeros((0, max_len), dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.int64)
    return np.stack(inputs), np.stack(targets), np.asarray(owners, dtype=np.int64)


class SASRecNet(nn.Module):
    """Item + position embeddings, a pre-norm causal transformer encoder, a final LayerNorm."""

    def __init__(self, n_items: int, max_len: int, hidden: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.item_emb.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch, max_len, hidden); padded positions are zero."""
        length = seqs.shape[1]
        positions = torch.arange(length, device=seqs.device)
        x = self.item_emb(seqs) * (self.item_emb.embedding_dim**0.5) + self.pos_emb(positions)
        real = (seqs != PAD).unsqueeze(-1)
        x = self.dropout(x) * real
        x = self.encoder(x, mask=self._attention_mask(seqs))
        return self.norm(x) * real

    def _attention_mask(self, seqs: torch.Tensor) -> torch.Tensor:
        """True = may not attend: future keys and padded keys.

        A padded query may attend to itself only, so no row is fully masked (that gives NaN in
        softmax, which would then leak through the value vectors of the next layer).
        """
        length = seqs.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)
        pad_key = (seqs == PAD).unsqueeze(1)  # (batch, 1, keys)
        self_only = torch.eye(length, dtype=torch.bool, device=seqs.device)
        blocked = (future | pad_key) & ~self_only
        return blocked.repeat_interleave(self.heads, dim=0)

    def item_logits(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Dot product of each hidden state with the embedding of the matching item."""
        return (hidden * self.item_emb(items)).sum(-1)


class SASRec(TorchStateMixin, Recommender):
    """Next-video model: causal self-attention over the user's time-ordered history."""

    name = "sasrec"

    def __init__(
        self,
        max_len: int = 50,
        hidden: int = 64,
        heads: int = 2,
        layers: int = 2,
        dropout: float = 0.2,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 42,
    ):
        super().__init__()
        for label, value in {"max_len": max_len, "hidden": hidden, "heads": heads, "layers": layers,
                             "epochs": epochs, "batch_size": batch_size}.items():  # fmt: skip
            check_positive_int(label, value)
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.max_len, self.hidden, self.heads, self.layers = max_len, hidden, heads, layers
        self.dropout, self.epochs, self.batch_size, self.lr, self.seed = dropout, epochs, batch_size, lr, seed
        self.net: SASRecNet | None = None
        self.histories: list[np.ndarray] = []
        self.popularity: np.ndarray | None = None
        self.losses: list[float] = []

    # ---- fitting --------------------------------------------------------------------------------

    def _fit(self, data: Interactions) -> None:
        self.histories = ordered_histories(data)
        self.popularity = np.asarray((data.matrix > 0).sum(axis=0), dtype=np.float32).ravel()
        inputs, targets, owners = training_windows(self.histories, self.max_len)
        rng = np.random.default_rng(self.seed)
        with torch_determinism(self.seed):
            net = SASRecNet(data.n_videos, self.max_len, self.hidden, self.heads, self.layers, self.dropout)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.9, 0.98))
            self.losses = []
            net.train()
            for _ in range(self.epochs):
                self.losses.append(self._epoch(net, inputs, targets, owners, data.matrix, optimizer, rng))
            self.net = net.eval()

    def _epoch(
        self,
        net: SASRecNet,
        inputs: np.ndarray,
        targets: np.ndarray,
        owners: np.ndarray,
        seen: sp.csr_matrix,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
    ) -> float:
        """One pass over the windows in a seeded random order; returns the mean batch loss."""
        order = rng.permutation(len(inputs))
        losses = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            negatives = sample_negatives(targets[batch], owners[batch], seen, rng)
            seqs, pos, neg = (torch.from_numpy(a) for a in (inputs[batch], targets[batch], negatives))
            hidden = net(seqs)
            real = pos != PAD
            pos_logits = net.item_logits(hidden, pos)[real]
            neg_logits = net.item_logits(hidden, neg)[real]
            loss = nn.functional.binary_cross_entropy_with_logits(
                torch.cat([pos_logits, neg_logits]),
                torch.cat([torch.ones_like(pos_logits), torch.zeros_like(neg_logits)]),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0

    # ---- scoring --------------------------------------------------------------------------------

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Last-position hidden state . item embeddings; popularity for users with no history."""
        net, popularity = self._module(), self.popularity
        assert popularity is not None  # set together with the module in _fit
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = np.empty((len(user_rows), len(popularity)), dtype=np.float32)
        with torch_determinism(self.seed), torch.no_grad():
            items = net.item_emb.weight[1:]
            for start in range(0, len(user_rows), self.batch_size):
                rows = user_rows[start : start + self.batch_size]
                seqs = np.stack([left_pad(self.histories[u] + 1, self.max_len) for u in rows])
                last = net(torch.from_numpy(seqs))[:, -1, :]
                out[start : start + len(rows)] = (last @ items.T).numpy()
        empty = np.array([len(self.histories[u]) == 0 for u in user_rows], dtype=bool)
        out[empty] = popularity
        return out

    def item_vectors(self) -> np.ndarray:
        """The learned item embeddings (padding row dropped), one row per catalog video."""
        return self._module().item_emb.weight[1:].detach().numpy().copy()

    def _build_net(self, state: dict) -> SASRecNet:
        n_items = state["item_emb.weight"].shape[0] - 1
        return SASRecNet(n_items, self.max_len, self.hidden, self.heads, self.layers, self.dropout)

    def _module(self) -> SASRecNet:
        """The trained network, or NotFittedError before fit()."""
        self._require()
        if self.net is None:
            raise NotFittedError("SASRec has no trained network: call fit() first")
        return self.net


def sample_negatives(
    targets: np.ndarray, owners: np.ndarray, seen: sp.csr_matrix, rng: np.random.Generator, tries: int = 5
) -> np.ndarray:
    """One uniformly drawn catalog item per target position, avoiding the owner's history.

    Collisions are redrawn a few times; a rare leftover collision only adds a little noise.
    Padded positions get PAD (they are masked out of the loss anyway).
    """
    n_videos = seen.shape[1]
    negatives = rng.integers(1, n_videos + 1, size=targets.shape)
    users = np.broadcast_to(owners[:, None], targets.shape)
    for _ in range(tries):
        hit = np.asarray(seen[users.ravel(), negatives.ravel() - 1]).reshape(targets.shape) > 0
        if not hit.any():
            break
        negatives[hit] = rng.integers(1, n_videos + 1, size=int(hit.sum()))
    return np.where(targets == PAD, PAD, negatives)
