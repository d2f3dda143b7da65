import numpy as np
import pandas as pd
import pytest
from recommender_contract import RecommenderContract, small_movielens

from models.base import NotFittedError
from models.hybrid import HybridUnion, WeightedBlend, _minmax_rows, _rank_rows
from models.interactions import Interactions
from models.popularity import Popularity, Trending


def blend(weights=None, normalization="minmax") -> WeightedBlend:
    generators = {"popularity": Popularity(), "trending": Trending(half_life_days=30)}
    return WeightedBlend(generators, weights or {"popularity": 0.5, "trending": 0.5}, normalization)


class TestWeightedBlend(RecommenderContract):
    def make_model(self, videos):
        return blend()


class TestWeightedBlendRank(RecommenderContract):
    def make_model(self, videos):
        return blend({"popularity": 1.0, "trending": 3.0}, normalization="rank")


def test_blend_with_one_weight_ranks_like_that_generator(ml_small):
    data, _ = small_movielens(ml_small)
    only_pop = blend({"popularity": 1.0, "trending": 0.0}).fit(data)
    pop = Popularity().fit(data)
    ids, _ = only_pop.recommend(np.arange(20), k=10)
    ref, _ = pop.recommend(np.arange(20), k=10)
    # same popularity counts position by position (ties may be broken differently)
    np.testing.assert_array_equal(pop.counts[ids], pop.counts[ref])


def _compromise_events() -> Interactions:
    """Three candidate videos for user "me", who has watched only "z".

    old: 10 users, 60 days ago; mid: 9 users, 7 days ago; new: 5 users, now; z: 1 user, 60 days ago.
    """
    now = pd.Timestamp("2026-06-01", tz="UTC")
    rows = [(f"o{i}", "old", now - pd.Timedelta(days=60)) for i in range(10)]
    rows += [(f"m{i}", "mid", now - pd.Timedelta(days=7)) for i in range(9)]
    rows += [(f"n{i}", "new", now) for i in range(5)]
    rows += [("me", "z", now - pd.Timedelta(days=60))]
    events = pd.DataFrame(rows, columns=["user_id", "video_id", "event_ts"]).assign(event_type="watch", rating=np.nan)
    return Interactions.from_events(events, weighting="binary")


def test_even_blend_prefers_the_video_both_sources_like():
    # Popularity counts: old 10, mid 9, new 5, z 1 -> min-max: old 1, mid 8/9, new 4/9, z 0.
    # Trending (half-life 7 d): old 10 * 0.5^(60/7) = 0.026, mid 9 * 0.5 = 4.5, new 5, z 0.0026
    #   -> min-max: old ~0.005, mid ~0.90, new 1, z 0.
    # Even blend: old ~0.50, mid ~0.89, new ~0.72 -> mid first, though neither source ranks it first.
    data = _compromise_events()
    me = data.user_rows(["me"])
    model = WeightedBlend({"pop": Popularity(), "trend": Trending(half_life_days=7)}, {"pop": 1.0, "trend": 1.0}).fit(
        data
    )
    top = data.video_ids[model.recommend(me, k=3)[0][0]]
    assert top.tolist() == ["mid", "new", "old"]
    assert data.video_ids[model.generators["pop"].recommend(me, k=1)[0][0, 0]] == "old"
    assert data.video_ids[model.generators["trend"].recommend(me, k=1)[0][0, 0]] == "new"


def test_normalizations():
    scores = np.array([[1.0, 3.0, -np.inf, 2.0], [5.0, 5.0, 5.0, 5.0]])
    # row 0: min 1, max 3 over finite entries -> (0, 1, 0 for -inf, 0.5); row 1 constant -> 0
    np.testing.assert_allclose(_minmax_rows(scores), [[0, 1, 0, 0.5], [0, 0, 0, 0]])
    # row 0 ranks (-inf lowest): -inf 1, 1.0 2, 2.0 3, 3.0 4 -> (r - 1) / 3; row 1 all tied at 2.5
    np.testing.assert_allclose(_rank_rows(scores), [[1 / 3, 1, 0, 2 / 3], [0.5, 0.5, 0.5, 0.5]])


def test_blend_rejects_bad_parameters():
    gens = {"a": Popularity(), "b": Trending()}
    with pytest.raises(ValueError, match="weights name"):
        WeightedBlend(gens, {"a": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        WeightedBlend(gens, {"a": 1.0, "b": -1.0})
    with pytest.raises(ValueError, match="not all zero"):
        WeightedBlend(gens, {"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="normalization"):
        WeightedBlend(gens, {"a": 1.0, "b": 1.0}, normalization="zscore")
    with pytest.raises(ValueError, match="at least one"):
        WeightedBlend({}, {})
    with pytest.raises(TypeError):
        WeightedBlend({"a": object()}, {"a": 1.0})


# ---- HybridUnion -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def union_setup(ml_small):
    data, _ = small_movielens(ml_small)
    union = HybridUnion({"pop": Popularity(), "trend": Trending(half_life_days=30)}, per_source_k=25).fit(data)
    users = np.arange(0, 40, 3)
    return data, union, users, union.candidates(users)


def test_union_columns_and_no_duplicates(union_setup):
    _, _, users, cands = union_setup
    assert list(cands.columns) == [
        "user_row",
        "video_row",
        "score_pop",
        "rank_pop",
        "score_trend",
        "rank_trend",
        "n_sources",
    ]
    assert not cands.duplicated(["user_row", "video_row"]).any()
    assert set(cands.user_row) == set(users)
    assert (cands.n_sources == cands[["rank_pop", "rank_trend"]].notna().sum(axis=1)).all()
    assert (cands.n_sources >= 1).all()


def test_union_rows_come_from_the_sources_top_lists(union_setup):
    data, union, users, cands = union_setup
    for name in ("pop", "trend"):
        ids, scores = union.generators[name].recommend(users, k=25)
        expected = {
            (int(u), int(v)): (float(s), r + 1)
            for u, row, srow in zip(users, ids, scores, strict=True)
            for r, (v, s) in enumerate(zip(row, srow, strict=True))
            if v >= 0
        }
        got = cands.dropna(subset=[f"rank_{name}"])
        assert len(got) == len(expected)
        for u, v, s, r in got[["user_row", "video_row", f"score_{name}", f"rank_{name}"]].itertuples(index=False):
            assert expected[(u, v)] == (pytest.approx(s), r)
    # the union is exactly the set of pairs some source proposed, ranks 1-based within k
    ranks = cands[["rank_pop", "rank_trend"]].stack()
    assert ranks.min() == 1 and ranks.max() <= 25
    per_user = cands.groupby("user_row").size()
    assert (per_user >= 25).all() and (per_user <= 50).all()
    for u in users:
        seen = set(data.matrix[u].indices)
        assert not seen & set(cands.loc[cands.user_row == u, "video_row"])


def test_union_sorted_by_agreement_and_needs_fitted_sources(ml_small):
    data, _ = small_movielens(ml_small)
    union = HybridUnion({"pop": Popularity(), "trend": Trending(half_life_days=30)}, per_source_k=10)
    with pytest.raises(NotFittedError):
        union.candidates(np.arange(3))
    cands = union.fit(data).candidates(np.array([2, 2, 1]))
    assert cands.user_row.tolist() == sorted(cands.user_row.tolist())
    first_user = cands[cands.user_row == 1]
    assert first_user.n_sources.is_monotonic_decreasing
    nothing = union.candidates(np.array([1]), exclude=np.arange(data.n_videos))
    assert nothing.empty and list(nothing.columns) == list(cands.columns)
    with pytest.raises(ValueError, match="per_source_k"):
        HybridUnion({"pop": Popularity()}, per_source_k=0)
    with pytest.raises(ValueError, match="generator name"):
        HybridUnion({"bad name": Popularity()})


def test_union_refuses_sources_fitted_on_different_matrices(ml_small):
    data, _ = small_movielens(ml_small)
    other = _compromise_events()
    union = HybridUnion({"pop": Popularity().fit(data), "trend": Trending().fit(other)})
    with pytest.raises(ValueError, match="different matrices"):
        union.candidates(np.arange(2))
