"""Every candidate generator by name, with the settings the benchmark and training use.

Factories import lazily so that asking for one model does not import torch for all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from models.base import Recommender


def generator_factories(
    videos: pd.DataFrame, minilm: np.ndarray | None = None
) -> dict[str, Callable[[], Recommender]]:
    """name -> zero-argument factory of an unfitted generator.

    `minilm`: precomputed MiniLM vectors aligned with `videos` rows, so the content model and the
    diversity metric share one encoding pass.
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

    def bpr():
        from models.bpr import BPR

        return BPR(factors=64, iterations=100)

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

    return {
        "popularity": popularity,
        "trending": trending,
        "item-cf": item_cf,
        "user-cf": user_cf,
        "als": als,
        "bpr": bpr,
        "svd": svd,
        "content-tfidf": content_tfidf,
        "content-minilm": content_minilm,
        "ease": ease,
        "mult-vae": mult_vae,
        "sasrec": sasrec,
    }
