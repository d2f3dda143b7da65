"""What the PyTorch generators share: deterministic execution and pickling via state_dicts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def torch_determinism(seed: int) -> Iterator[None]:
    """Run torch code single-threaded, seeded and deterministic, then restore global state.

    Why: results must not depend on thread scheduling or on what ran before, and a fit must not
    change the caller's RNG, thread count or determinism flag (other code shares the process).
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


class TorchStateMixin:
    """Pickle a generator's `net` as a CPU state_dict and rebuild it on load.

    Pickling a live nn.Module ties the file to torch internals and the device it ran on; a
    state_dict plus the generator's own hyperparameters is all that is needed to rebuild it.
    Subclasses implement `_build_net(state)`.
    """

    net: nn.Module | None

    def _build_net(self, state: dict[str, torch.Tensor]) -> nn.Module:
        raise TypeError(f"{type(self).__name__} must define _build_net(state)")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        net = state.pop("net")
        state["net_state"] = None if net is None else {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return state

    def __setstate__(self, state: dict) -> None:
        net_state = state.pop("net_state")
        self.__dict__.update(state)
        self.net = None
        if net_state is not None:
            self.net = self._build_net(net_state)
            self.net.load_state_dict(net_state)
            self.net.eval()
