"""The contract every candidate generator's tests reuse (like implicit's RecommenderBaseTestMixin).

A test module subclasses `RecommenderContract`, defines `make_model()`, and gets the shared
behaviour checks on a small real-data slice (MovieLens users with 20+ ratings). What else a class
declares turns on the checks that take it:

    model_class                     the generator under test
    bad_params                      constructor arguments it must refuse with a ValueError (one test each)
    beats_popularity_by, held_out_k  `held_out_model(videos)` must beat popularity's recall@k on a
                                    random fifth of the slice's interactions by this factor
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from movielens import movielens_frames
from toy_data import held_out_recall, holdout

from models.base import NotFittedError, Recommender
from models.interactions import Interactions
from models.popularity import Popularity


def small_movielens(ml_small_dir) -> tuple[Interactions, pd.DataFrame]:
    events, videos = movielens_frames(ml_small_dir, max_user=120)
    return Interactions.from_events(events, catalog=videos.video_id, weighting="binary"), videos


class RecommenderContract:
    """Mixin: subclasses implement make_model(videos) -> an unfitted Recommender."""

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, ml_small):
        return small_movielens(ml_small)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, data):
        interactions, videos = data
        return cls().make_model(videos).fit(interactions)

    model_class: type[Recommender] | None = None
    bad_params: list[dict] = []  # parametrizes test_bad_parameters_are_refused (conftest.py)
    beats_popularity_by: float | None = None  # None: no held-out check (popularity itself, blends, ...)
    held_out_k: int = 10

    def make_model(self, videos: pd.DataFrame) -> Recommender:
        raise AssertionError("a contract test class must define make_model")

    def held_out_model(self, videos: pd.DataFrame) -> Recommender:
        return self.make_model(videos)

    def test_bad_parameters_are_refused(self, params):
        with pytest.raises(ValueError):
            self.model_class(**params)

    def test_beats_popularity_on_held_out_slice(self, data):
        if self.beats_popularity_by is None:
            pytest.skip(f"{type(self).__name__} declares no held-out margin over popularity")
        interactions, videos = data
        train, truth = holdout(interactions)
        model = held_out_recall(self.held_out_model(videos), train, truth, self.held_out_k)
        popularity = held_out_recall(Popularity(), train, truth, self.held_out_k)
        assert model > self.beats_popularity_by * popularity, (
            f"recall@{self.held_out_k} {model:.3f} vs popularity {popularity:.3f}"
        )

    def test_recommend_shape_order_and_no_seen(self, fitted, data):
        interactions, _ = data
        users = np.arange(10)
        ids, scores = fitted.recommend(users, k=15)
        assert ids.shape == scores.shape == (10, 15)
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be sorted best first"
        for row, user in enumerate(users):
            seen = set(interactions.matrix[user].indices)
            assert not seen & set(ids[row]), "seen videos must be filtered by default"
            assert len(set(ids[row])) == 15, "no repeats in a list"

    def test_filter_seen_false_can_return_seen(self, fitted, data):
        interactions, _ = data
        ids, _ = fitted.recommend(np.arange(20), k=50, filter_seen=False)
        seen_hits = sum(len(set(interactions.matrix[u].indices) & set(ids[u])) for u in range(20))
        assert seen_hits > 0

    def test_exclude_and_candidates(self, fitted):
        ids, _ = fitted.recommend(np.arange(5), k=10)
        banned = np.unique(ids[:, :3])
        again, _ = fitted.recommend(np.arange(5), k=10, exclude=banned)
        assert not set(banned) & set(again.ravel())
        allowed = np.arange(100, 160)
        restricted, _ = fitted.recommend(np.arange(5), k=10, candidates=allowed)
        assert set(restricted.ravel()) - {-1} <= set(allowed)

    def test_similar_items(self, fitted, data):
        interactions, _ = data
        popular = np.argsort(-np.asarray(interactions.matrix.sum(axis=0)).ravel())[:5]
        ids, scores = fitted.similar_items(popular, k=8)
        assert ids.shape == (5, 8)
        for row, video in enumerate(popular):
            assert video not in ids[row]
        assert (np.diff(scores, axis=1) <= 1e-6).all()

    def test_save_load_roundtrip(self, fitted, tmp_path):
        path = tmp_path / "model.pkl"
        fitted.save(path)
        loaded = type(fitted).load(path)
        a = fitted.recommend(np.arange(5), k=10)
        b = loaded.recommend(np.arange(5), k=10)
        np.testing.assert_array_equal(a[0], b[0])

    def test_unfitted_model_says_so(self, data):
        _, videos = data
        with pytest.raises(NotFittedError):
            self.make_model(videos).recommend(np.arange(2), k=5)

    def test_deterministic_refit(self, data):
        interactions, videos = data
        a = self.make_model(videos).fit(interactions).recommend(np.arange(5), k=10)[0]
        b = self.make_model(videos).fit(interactions).recommend(np.arange(5), k=10)[0]
        np.testing.assert_array_equal(a, b)
