"""Neural Collaborative Filtering: NeuMF (He et al., "Neural Collaborative Filtering", WWW 2017).

Two branches read separate user/video embeddings: GMF (generalised matrix factorisation, the
element-wise product p_u * q_i) and an MLP over the concatenation [p_u, q_i] with halving
ReLU layers. Their outputs are concatenated into one linear output unit, the logit of "u
interacted with i". Training is the paper's pointwise log loss: every observed pair is a
positive and `n_negatives` uniformly drawn unobserved videos per positive are negatives, drawn
afresh each epoch, with Adam over shuffled mini-batches. The paper's optional pretraining of
the two branches is left out (the paper finds NeuMF without it only slightly worse).

Users with no interactions keep their untrained embeddings, so they are scored by popularity.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from models.base import NotFittedError, Recommender, check_positive_int
from models.interactions import Interactions
from models.negative_sampling import observed_keys, sample_unseen
from models.torch_state import TorchStateMixin, torch_determinism

# (user, video) pairs pushed through the MLP at once when scoring: bounds the hidden block.
SCORE_PAIRS = 1 << 18


class NeuMFNet(nn.Module):
    """GMF branch (dim `factors`) and MLP branch (input 2 * mlp_dims[0]) fused by one output unit."""

    def __init__(self, n_users: int, n_items: int, factors: int, mlp_dims: tuple[int, ...], dropout: float):
        super().__init__()
        self.gmf_user, self.gmf_item = nn.Embedding(n_users, factors), nn.Embedding(n_items, factors)
        half = mlp_dims[0] // 2  # the user and video halves of the first MLP layer's input
        self.mlp_user, self.mlp_item = nn.Embedding(n_users, half), nn.Embedding(n_items, half)
        self.first = nn.Linear(2 * half, mlp_dims[0])
        rest: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(mlp_dims):
            rest += [nn.Dropout(dropout), nn.Linear(d_in, d_out), nn.ReLU()]
        self.rest = nn.Sequential(*rest)
        self.output = nn.Linear(factors + mlp_dims[-1], 1)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.01)  # the paper's N(0, 0.01) initialisation
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of (users[j], items[j]) pairs, shape (len(users),)."""
        gmf = self.gmf_user(users) * self.gmf_item(items)
        first = self.first(torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=1))
        mlp = self.rest(torch.relu(first))
        return self.output(torch.cat([gmf, mlp], dim=1)).squeeze(1)

    def embedding_norm(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the embedding rows a batch reads (the L2 penalty's term)."""
        rows = [self.gmf_user(users), self.gmf_item(items), self.mlp_user(users), self.mlp_item(items)]
        return sum(r.pow(2).sum(1) for r in rows).mean()

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits of every (user, video) pair, shape (len(users), n_items), without repeating work.

        The first MLP layer is linear in [p_u, q_i], so it splits into a user part and a video
        part computed once each and summed by broadcasting; only the layers after it run per pair.
        """
        half = self.mlp_user.embedding_dim
        w_user, w_item = self.first.weight[:, :half], self.first.weight[:, half:]
        user_part = self.mlp_user(users) @ w_user.T + self.first.bias  # (batch, d0)
        item_part = self.mlp_item.weight @ w_item.T  # (n_items, d0)
        hidden = torch.relu(user_part[:, None, :] + item_part[None, :, :])
        mlp = self.rest(hidden)  # (batch, n_items, d_last)
        w_gmf, w_mlp = self.output.weight[0, : self.gmf_user.embedding_dim], self.output.weight[0, -mlp.shape[-1] :]
        gmf = (self.gmf_user(users) * w_gmf) @ self.gmf_item.weight.T  # (p_u * q_i) . w, as a matmul
        return gmf + mlp @ w_mlp + self.output.bias


class NCF(TorchStateMixin, Recommender):
    """NeuMF for implicit feedback: score = the fused GMF + MLP logit of each (user, video).

    factors: GMF embedding size. mlp_dims: MLP layer widths; the first is also the size of the
    concatenated MLP input, half user, half video. dropout: before each MLP layer after the first.
    n_negatives: sampled negatives per observed pair. l2: penalty on the squared norm of the
    embedding rows each mini-batch reads (rows a batch does not touch are not shrunk).
    """

    name = "ncf"

    def __init__(
        self,
        factors: int = 32,
        mlp_dims: tuple[int, ...] = (64, 32, 16),
        dropout: float = 0.0,
        n_negatives: int = 4,
        epochs: int = 10,
        batch_size: int = 1024,
        lr: float = 1e-3,
        l2: float = 0.0,
        seed: int = 42,
    ):
        super().__init__()
        mlp_dims = tuple(mlp_dims)
        check_positive_int("factors", factors)
        check_positive_int("n_negatives", n_negatives)
        check_positive_int("epochs", epochs)
        check_positive_int("batch_size", batch_size)
        if not mlp_dims or not all(isinstance(d, int) and d >= 2 and d % 2 == 0 for d in mlp_dims):
            raise ValueError(f"mlp_dims must be even integers >= 2 (the first is split user/video), got {mlp_dims!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        self.factors, self.mlp_dims, self.dropout, self.n_negatives = factors, mlp_dims, dropout, n_negatives
        self.epochs, self.batch_size, self.lr, self.l2, self.seed = epochs, batch_size, lr, l2, seed
        self.net: NeuMFNet | None = None
        self.popularity: np.ndarray | None = None
        self.has_history: np.ndarray | None = None
        self.losses: list[float] = []

    # ---- fitting --------------------------------------------------------------------------------

    def _fit(self, data: Interactions) -> None:
        observed = (data.matrix > 0).tocsr()
        users, items = observed.nonzero()
        users, items = users.astype(np.int64), items.astype(np.int64)
        self.popularity = np.asarray(observed.sum(axis=0), dtype=np.float32).ravel()
        self.has_history = np.diff(observed.indptr) > 0
        seen_keys = observed_keys(observed)
        rng = np.random.default_rng(self.seed)
        with torch_determinism(self.seed):
            net = NeuMFNet(data.n_users, data.n_videos, self.factors, self.mlp_dims, self.dropout)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
            self.losses = []
            net.train()
            for _ in range(self.epochs):
                negatives = sample_unseen(np.repeat(users, self.n_negatives), data.n_videos, seen_keys, rng)
                self.losses.append(self._epoch(net, users, items, negatives, optimizer, rng))
            self.net = net.eval()

    def _epoch(
        self,
        net: NeuMFNet,
        users: np.ndarray,
        items: np.ndarray,
        negatives: np.ndarray,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
    ) -> float:
        """One shuffled pass over positives + this epoch's negatives; returns the mean batch loss."""
        all_users = torch.from_numpy(np.concatenate([users, np.repeat(users, self.n_negatives)]))
        all_items = torch.from_numpy(np.concatenate([items, negatives]))
        labels = torch.cat([torch.ones(len(users)), torch.zeros(len(negatives))])
        order = torch.from_numpy(rng.permutation(len(labels)))
        losses = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            users_b, items_b = all_users[batch], all_items[batch]
            loss = nn.functional.binary_cross_entropy_with_logits(net(users_b, items_b), labels[batch])
            if self.l2:
                loss = loss + self.l2 * net.embedding_norm(users_b, items_b)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0

    # ---- scoring --------------------------------------------------------------------------------

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """NeuMF logits over the catalog, a bounded block of users at a time; popularity for empty users."""
        data, net, popularity, has_history = self._require(), self._module(), self.popularity, self.has_history
        assert popularity is not None and has_history is not None  # set together with the module in _fit
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = np.empty((len(user_rows), data.n_videos), dtype=np.float32)
        step = max(1, SCORE_PAIRS // max(data.n_videos, 1))
        with torch_determinism(self.seed), torch.no_grad():
            for start in range(0, len(user_rows), step):
                rows = torch.from_numpy(user_rows[start : start + step])
                out[start : start + len(rows)] = net.score_all(rows).numpy()
        out[~has_history[user_rows]] = popularity
        return out

    def item_vectors(self) -> np.ndarray:
        """Both branches' video embeddings side by side: videos close in either branch are similar."""
        net = self._module()
        return torch.cat([net.gmf_item.weight, net.mlp_item.weight], dim=1).detach().numpy().copy()

    def _build_net(self, state: dict) -> NeuMFNet:
        n_users, n_items = state["gmf_user.weight"].shape[0], state["gmf_item.weight"].shape[0]
        return NeuMFNet(n_users, n_items, self.factors, self.mlp_dims, self.dropout)

    def _module(self) -> NeuMFNet:
        """The trained network, or NotFittedError before fit()."""
        self._require()
        if self.net is None:
            raise NotFittedError("NCF has no trained network: call fit() first")
        return self.net
