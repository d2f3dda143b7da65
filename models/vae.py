"""Mult-VAE: variational autoencoder with a multinomial likelihood (Liang et al., WWW 2018).

A user's binarised row is L2-normalised, dropped out, encoded to a Gaussian over a small latent
space, and decoded to logits over the whole catalog; the loss is the multinomial negative
log-likelihood of the row plus beta * KL, with beta annealed linearly from 0 to `beta_max` over
`anneal_steps` gradient steps. Scoring encodes the (undropped) row and decodes the mean, with
no sampling, so it is deterministic.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.base import NotFittedError, Recommender, check_positive_int
from models.interactions import Interactions
from models.torch_state import TorchStateMixin, torch_determinism


class MultVAENet(nn.Module):
    """Encoder n_items -> hidden -> (mu, logvar) and decoder latent -> hidden -> n_items, tanh."""

    def __init__(self, n_items: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.latent = latent
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Sequential(nn.Linear(n_items, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, n_items))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.normal_(module.bias, std=0.001)

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | row); the row is L2-normalised so heavy users don't saturate."""
        x = nn.functional.normalize(rows, dim=1)
        h = self.encoder(self.drop(x))
        return h[:, : self.latent], h[:, self.latent :]

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder logits, mu, logvar; samples z only in training mode (reparameterisation)."""
        mu, logvar = self.encode(rows)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar


def vae_loss(
    logits: torch.Tensor, rows: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> torch.Tensor:
    """Multinomial NLL of the row under softmax(logits) plus beta * KL(q(z|x) || N(0, I))."""
    nll = -(nn.functional.log_softmax(logits, dim=1) * rows).sum(dim=1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return nll + beta * kl


def dense_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """Binarised dense float tensor of the given rows (a bounded batch, never the whole matrix)."""
    block = matrix[rows]
    return torch.from_numpy((block > 0).astype(np.float32).toarray())


class MultVAE(TorchStateMixin, Recommender):
    """Score = decoder logits of the user's encoded mean; item vectors = decoder output rows."""

    name = "mult-vae"

    def __init__(
        self,
        hidden: int = 600,
        latent: int = 200,
        dropout: float = 0.5,
        epochs: int = 50,
        batch_size: int = 128,
        lr: float = 1e-3,
        beta_max: float = 0.2,
        anneal_steps: int = 20000,
        seed: int = 42,
    ):
        super().__init__()
        for label, value in {"hidden": hidden, "latent": latent, "epochs": epochs,
                             "batch_size": batch_size, "anneal_steps": anneal_steps}.items():  # fmt: skip
            check_positive_int(label, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not beta_max >= 0:
            raise ValueError(f"beta_max must be >= 0, got {beta_max!r}")
        self.hidden, self.latent, self.dropout, self.epochs = hidden, latent, dropout, epochs
        self.batch_size, self.lr, self.beta_max, self.anneal_steps, self.seed = (
            batch_size,
            lr,
            beta_max,
            anneal_steps,
            seed,
        )
        self.net: MultVAENet | None = None
        self.losses: list[float] = []

    def _fit(self, data: Interactions) -> None:
        matrix = data.matrix.tocsr()
        active = np.flatnonzero(np.diff((matrix > 0).tocsr().indptr) > 0)  # empty rows teach nothing
        rng = np.random.default_rng(self.seed)
        with torch_determinism(self.seed):
            net = MultVAENet(data.n_videos, self.hidden, self.latent, self.dropout)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
            net.train()
            self.losses, step = [], 0
            for _ in range(self.epochs):
                epoch_losses = []
                order = rng.permutation(active)
                for start in range(0, len(order), self.batch_size):
                    rows = dense_rows(matrix, order[start : start + self.batch_size])
                    beta = self.beta_max * min(1.0, step / self.anneal_steps)
                    logits, mu, logvar = net(rows)
                    loss = vae_loss(logits, rows, mu, logvar, beta)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    epoch_losses.append(loss.item())
                    step += 1
                self.losses.append(float(np.mean(epoch_losses)) if epoch_losses else 0.0)
            self.net = net.eval()

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Decoder logits at the posterior mean of each user's row (deterministic)."""
        data, net = self._require(), self._module()
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = np.empty((len(user_rows), data.n_videos), dtype=np.float32)
        with torch_determinism(self.seed), torch.no_grad():
            for start in range(0, len(user_rows), self.batch_size):
                rows = user_rows[start : start + self.batch_size]
                logits, _, _ = net(dense_rows(data.matrix, rows))
                out[start : start + len(rows)] = logits.numpy()
        return out

    def item_vectors(self) -> np.ndarray:
        """The decoder's output weight rows: videos the decoder lights up together are close."""
        output = self._module().decoder[-1]
        assert isinstance(output, nn.Linear)
        return output.weight.detach().numpy().copy()

    def _build_net(self, state: dict) -> MultVAENet:
        return MultVAENet(state["decoder.2.weight"].shape[0], self.hidden, self.latent, self.dropout)

    def _module(self) -> MultVAENet:
        """The trained network, or NotFittedError before fit()."""
        self._require()
        if self.net is None:
            raise NotFittedError("MultVAE has no trained network: call fit() first")
        return self.net
