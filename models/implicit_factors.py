"""What ALS and BPR share: a model of the `implicit` library, fitted on one thread, scored by factors.

A subclass says which matrix implicit learns from (`_training_matrix`) and builds implicit's CPU
model (`_implicit_model`); fitting, scoring (user factors . video factors) and the video vectors
live here. One solver thread (and BLAS held to one) makes the fit reproducible from the seed:
updates then run in a fixed order on any machine, GPU or not.
"""

from __future__ import annotations

import abc

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from models.base import FactorModel, check_seed
from models.interactions import Interactions

FIT_THREADS = 1


class ImplicitFactorModel(FactorModel):
    def __init__(self, seed: int = 42):
        super().__init__()
        self.seed = check_seed(seed)

    @abc.abstractmethod
    def _training_matrix(self, data: Interactions) -> sp.csr_matrix:
        """The users x videos matrix implicit's `fit` takes."""

    @abc.abstractmethod
    def _implicit_model(self):
        """An unfitted implicit CPU model with num_threads=FIT_THREADS and random_state=self.seed."""

    def _fit(self, data: Interactions) -> None:
        matrix = self._training_matrix(data)
        # implicit warns (and runs slowly) when BLAS keeps its own thread pool during the solve.
        with threadpool_limits(1, "blas"):
            model = self._implicit_model()
            model.fit(matrix, show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
