"""Every candidate generator by name, with the settings the benchmark and training use.

Factories import lazily so that asking for one model does not import torch for all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from models.base import Recommender


def generator_factories(
    videos: pd.DataFrame, minilm: np.ndarray | None = None, tuned: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Callable[[], Recommender]]:
    """name -> zero-argument factory of an unfitted generator.

    `minilm`: precomputed MiniLM vectors aligned with `videos` rows, so the content model and the
    diversity metric share one encoding pass.
    `tuned`: {generator: {parameter: value}} applied over the settings below (a dataset's saved
    search result, `models.lifecycle.tuning.tuned_params`); an unknown generator or parameter is a ValueError.
    """

    def popularity():
        from models.popularity import Popularity

        return Popularity()

    def trending():
        from models.popularity import Trending

        return Trending(half_life_days=30)

    def item_cf():
        from models.item_cf import ItemKNN

        return ItemKNN(k_neighbors=100)

    def user_cf():
        from models.user_cf import UserKNN

        return UserKNN(k_neighbors=50)

    def als():
        from models.als import ALS

        return ALS(factors=64, iterations=15)

    def spark_als():
        from models.spark_als import SparkALS

        return SparkALS(factors=64, iterations=15)

    def bpr():
        from models.bpr import BPR

        return BPR(factors=64, iterations=50)

    def svd():
        from models.svd import SVD

        return SVD(factors=50, epochs=20)

    def content_tfidf():
        from models.content import ContentBased

        return ContentBased(videos, encoder="tfidf")

    def content_minilm():
        from models.content import ContentBased

        return ContentBased(videos, encoder="minilm", vectors=minilm)

    def ease():
        from models.ease import EASE

        return EASE(l2=250.0)

    def mult_vae():
        from models.vae import MultVAE

        return MultVAE()

    def sasrec():
        from models.sequential import SASRec

        return SASRec(epochs=40, lr=3e-3, batch_size=64)

    def ncf():
        from models.ncf import NCF

        return NCF()

    def gru4rec():
        from models.gru4rec import GRU4Rec

        return GRU4Rec()

    factories = {
        "popularity": popularity,
        "trending": trending,
        "item-cf": item_cf,
        "user-cf": user_cf,
        "als": als,
        "spark-als": spark_als,
        "bpr": bpr,
        "svd": svd,
        "content-tfidf": content_tfidf,
        "content-minilm": content_minilm,
        "ease": ease,
        "mult-vae": mult_vae,
        "sasrec": sasrec,
        "ncf": ncf,
        "gru4rec": gru4rec,
    }
    return with_params(factories, tuned) if tuned else factories


def init_params(model: Recommender) -> dict[str, Any]:
    """A generator's constructor arguments, read back from the instance (sklearn's get_params)."""
    return {name: getattr(model, name) for name in _constructor_names(type(model)) if hasattr(model, name)}


def _constructor_names(cls: type) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    return [p.name for p in parameters if p.kind in kinds]


def with_params(
    factories: dict[str, Callable[[], Recommender]], tuned: Mapping[str, Mapping[str, Any]]
) -> dict[str, Callable[[], Recommender]]:
    """The factories with `tuned` params over their own; checked now, not at the first fit."""
    out = dict(factories)
    for name, params in tuned.items():
        if name not in factories:
            raise ValueError(f"tuned params for unknown generator {name!r}: the catalog has {sorted(factories)}")
        cls = type(factories[name]())
        unknown = sorted(set(params) - set(_constructor_names(cls)))
        if unknown:
            raise ValueError(
                f"tuned params for generator {name!r}: unknown parameter(s) {unknown}; "
                f"{cls.__name__} takes {_constructor_names(cls)}"
            )
        out[name] = _tuned_factory(name, factories[name], dict(params))
        out[name]()  # bad values fail here, naming the generator
    return out


def _tuned_factory(name: str, default: Callable[[], Recommender], params: dict[str, Any]) -> Callable[[], Recommender]:
    def factory() -> Recommender:
        model = default()
        try:
            return type(model)(**{**init_params(model), **params})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tuned params for generator {name!r}: {exc}") from exc

    return factory
