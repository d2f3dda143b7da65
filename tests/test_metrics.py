"""Every metric on small cases whose expected values are derived by hand in the comments."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from models import metrics as M

# Four users, k = 4.
#   user 0: list [1, 2, 3, <empty>], truth {2, 7}        -> hits [0, 1, 0, 0], R = 2
#   user 1: list [4, 5, 6, 7],       truth {4,5,6,7,20}  -> hits [1, 1, 1, 1], R = 5
#   user 2: list [8, 9, 10, 11],     truth {}            -> skipped (undefined)
#   user 3: list [12, 13, 14, 15],   truth {99}          -> hits [0, 0, 0, 0], R = 1
RECS = np.array([[1, 2, 3, -1], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])
TRUTH = [{2, 7}, {4, 5, 6, 7, 20}, set(), {99}]
LOG2_3 = math.log2(3)  # 1.5849625


def test_precision():
    # u0: 1 hit / k=4 = 0.25 (the empty slot is a miss); u1: 4/4 = 1; u3: 0. Mean over 3 users.
    assert M.precision_at_k(RECS, TRUTH, 4) == pytest.approx((0.25 + 1 + 0) / 3)  # 0.416667


def test_recall():
    # u0: 1/2; u1: 4/5; u3: 0/1 -> (0.5 + 0.8 + 0) / 3 = 0.433333
    assert M.recall_at_k(RECS, TRUTH, 4) == pytest.approx(0.433333, abs=1e-6)


def test_f1():
    # u0: 2 * .25 * .5 / .75 = 1/3; u1: 2 * 1 * .8 / 1.8 = 8/9; u3: 0 -> (3/9 + 8/9) / 3 = 11/27
    assert M.f1_at_k(RECS, TRUTH, 4) == pytest.approx(11 / 27)  # 0.407407


def test_ndcg():
    # u0: DCG = 1/log2(3) = 0.630930 (hit at position 2); IDCG over min(4, 2) = 2 slots
    #     = 1 + 1/log2(3) = 1.630930 -> 0.386853
    # u1: all 4 slots hit and min(4, 5) = 4 ideal slots -> DCG = IDCG -> 1
    # u3: 0.  Mean = (0.386853 + 1 + 0) / 3 = 0.462284
    assert M.ndcg_at_k(RECS, TRUTH, 4) == pytest.approx(0.462284, abs=1e-6)
    assert (1 / LOG2_3) / (1 + 1 / LOG2_3) == pytest.approx(0.386853, abs=1e-6)


def test_map_both_normalizations():
    # AP numerators (sum of precision at each hit): u0: P@2 = 1/2; u1: 1 + 1 + 1 + 1 = 4; u3: 0.
    # min_k:    u0: 0.5 / min(4, 2) = 0.25; u1: 4 / min(4, 5) = 1   -> (0.25 + 1 + 0) / 3
    # relevant: u0: 0.5 / 2 = 0.25;          u1: 4 / 5 = 0.8          -> (0.25 + 0.8 + 0) / 3
    assert M.map_at_k(RECS, TRUTH, 4) == pytest.approx(1.25 / 3)  # 0.416667
    assert M.map_at_k(RECS, TRUTH, 4, normalize="relevant") == pytest.approx(1.05 / 3)  # 0.35
    with pytest.raises(ValueError, match="normalization"):
        M.map_at_k(RECS, TRUTH, 4, normalize="k")


def test_mrr_and_hit_rate():
    # first hit: u0 at 2 -> 1/2; u1 at 1 -> 1; u3 none -> 0. MRR = 1.5 / 3 = 0.5
    assert M.mrr_at_k(RECS, TRUTH, 4) == pytest.approx(0.5)
    # u0 and u1 have a hit, u3 does not: 2 / 3
    assert M.hit_rate_at_k(RECS, TRUTH, 4) == pytest.approx(2 / 3)


def test_cutoff_reads_only_first_k_slots():
    # k = 1: u0 [1] miss; u1 [4] hit; u3 miss. precision = 1/3, recall: (0 + 1/5 + 0) / 3
    assert M.precision_at_k(RECS, TRUTH, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(RECS, TRUTH, 1) == pytest.approx(0.2 / 3)
    # nDCG@1 of u1: DCG = 1, IDCG over min(1, 5) = 1 slot = 1 -> 1; others 0 -> 1/3
    assert M.ndcg_at_k(RECS, TRUTH, 1) == pytest.approx(1 / 3)


def test_k_beyond_list_length_pads_with_empty_slots():
    # list [2] with k = 3 behaves as [2, -1, -1]: precision = 1/3, recall = 1/2,
    # AP = (1/1) / min(3, 2) = 0.5, nDCG = 1 / (1 + 1/log2 3) = 0.613147
    recs, truth = np.array([[2]]), [{2, 5}]
    assert M.precision_at_k(recs, truth, 3) == pytest.approx(1 / 3)
    assert M.recall_at_k(recs, truth, 3) == pytest.approx(0.5)
    assert M.map_at_k(recs, truth, 3) == pytest.approx(0.5)
    assert M.ndcg_at_k(recs, truth, 3) == pytest.approx(0.613147, abs=1e-6)


def test_repeated_video_counts_once():
    # [2, 2, 3] against {2, 3}: hits [1, 0, 1] (the repeat is not a second hit)
    # precision = 2/3; AP = (1/1 + 2/3) / min(3, 2) = 0.833333
    recs, truth = np.array([[2, 2, 3]]), [{2, 3}]
    assert M.precision_at_k(recs, truth, 3) == pytest.approx(2 / 3)
    assert M.map_at_k(recs, truth, 3) == pytest.approx(0.833333, abs=1e-6)


def test_all_empty_truth_is_nan_and_empty_lists_score_zero():
    assert math.isnan(M.precision_at_k(RECS[:1], [set()], 4))
    # a user with truth but an all-empty list: every accuracy metric is 0 for them
    empty = np.full((1, 4), -1)
    out = M.ranking_metrics(empty, [{1}], 4)
    assert out["n_users"] == 1
    assert all(out[name] == 0 for name in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "f1"))


def test_csr_truth_gives_the_same_numbers_as_sets():
    rows = [0, 0, 1, 1, 1, 1, 1, 3]
    cols = [2, 7, 4, 5, 6, 7, 20, 99]
    csr = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(4, 100))
    assert M.ranking_metrics(RECS, csr, 4) == M.ranking_metrics(RECS, TRUTH, 4)


def test_ranking_metrics_bundle_matches_single_functions():
    out = M.ranking_metrics(RECS, TRUTH, 4)
    assert out["n_users"] == 3
    assert out["ndcg"] == pytest.approx(M.ndcg_at_k(RECS, TRUTH, 4))
    assert out["map_full"] == pytest.approx(M.map_at_k(RECS, TRUTH, 4, normalize="relevant"))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="k must be"):
        M.precision_at_k(RECS, TRUTH, 0)
    with pytest.raises(ValueError, match="truth has 2 users"):
        M.recall_at_k(RECS, TRUTH[:2], 4)
    with pytest.raises(ValueError, match="2-d"):
        M.ndcg_at_k(np.array([1, 2, 3]), [{1}], 3)


def test_rmse_and_mse():
    # errors 0.5, 0, -1 -> squared 0.25, 0, 1 -> MSE = 1.25 / 3 = 0.416667, RMSE = 0.645497
    assert M.mse([3, 4, 5], [2.5, 4, 6]) == pytest.approx(0.416667, abs=1e-6)
    assert M.rmse([3, 4, 5], [2.5, 4, 6]) == pytest.approx(0.645497, abs=1e-6)
    with pytest.raises(ValueError):
        M.rmse([1, 2], [1])
    with pytest.raises(ValueError):
        M.mse([], [])


# Item vectors: v0 = (1, 0), v1 = (0, 1), v2 = (1, 1), v3 = (0, 0).
VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])


def test_intra_list_diversity_dense_and_sparse():
    # list [0, 1, 2]: cos(0,1) = 0, cos(0,2) = cos(1,2) = 1/sqrt(2) = 0.707107
    #   mean similarity = 1.414214 / 3 = 0.471405 -> ILD = 0.528595
    # list [0, 0, empty]: one distinct video, no pair -> skipped
    # list [3, 0]: the zero vector has cosine 0 with everything -> ILD = 1
    # mean over the two lists with pairs = (0.528595 + 1) / 2 = 0.764298
    recs = np.array([[0, 1, 2], [0, 0, -1], [3, 0, -1]])
    assert M.intra_list_diversity(recs, VECTORS) == pytest.approx(0.764298, abs=1e-6)
    assert M.intra_list_diversity(recs, sp.csr_matrix(VECTORS)) == pytest.approx(0.764298, abs=1e-6)
    assert math.isnan(M.intra_list_diversity(np.array([[1, -1]]), VECTORS))


def test_intra_list_diversity_matches_pairwise_loop():
    rng = np.random.default_rng(0)
    vectors = rng.random((30, 5))
    recs = np.array([rng.choice(30, size=6, replace=False) for _ in range(8)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    per_list = []
    for row in recs:
        sims = [unit[a] @ unit[b] for i, a in enumerate(row) for b in row[i + 1 :]]
        per_list.append(1 - np.mean(sims))
    assert M.intra_list_diversity(recs, vectors) == pytest.approx(np.mean(per_list))


def test_catalog_coverage():
    # distinct filled videos {0, 1, 2} out of a catalog of 10 -> 0.3
    assert M.catalog_coverage(np.array([[0, 1, 2], [1, 2, -1]]), 10) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.catalog_coverage(np.array([[0, 12]]), 10)


def test_novelty():
    # counts [6, 2, 0, 0], total 8. Filled slots: 0 -> -log2(6/8) = 0.415037;
    # 1 -> -log2(2/8) = 2; 2 (never seen, counted once) -> -log2(1/8) = 3.
    # mean over the 3 filled slots = 5.415037 / 3 = 1.805012
    counts = np.array([6, 2, 0, 0])
    assert M.novelty(np.array([[0, 1], [2, -1]]), counts) == pytest.approx(1.805012, abs=1e-6)
    assert math.isnan(M.novelty(np.array([[-1, -1]]), counts))
    with pytest.raises(ValueError):
        M.novelty(np.array([[0]]), np.zeros(4))


def test_personalization():
    # A = B = {0,1,2}, C = {3,4}: cos(A,B) = 1, cos(A,C) = cos(B,C) = 0
    #   mean over 3 pairs = 1/3 -> personalization = 2/3
    recs = np.array([[0, 1, 2], [2, 1, 0], [3, 4, -1]])
    assert M.personalization(recs) == pytest.approx(2 / 3)
    # {0, 1} vs {1, 2}: cos = 1 / sqrt(2 * 2) = 0.5 -> 0.5
    assert M.personalization(np.array([[0, 1], [1, 2]])) == pytest.approx(0.5)
    # identical lists -> 0; an all-empty list is left out of the pairs
    assert M.personalization(np.array([[5, 6], [6, 5], [-1, -1]])) == pytest.approx(0.0)
    assert math.isnan(M.personalization(np.array([[5, 6]])))


def test_personalization_matches_pairwise_loop():
    rng = np.random.default_rng(1)
    lists = [rng.choice(15, size=rng.integers(1, 6), replace=False).tolist() for _ in range(12)]
    recs = np.array([(row + [-1] * 6)[:6] for row in lists])  # lists of 1..5 videos, padded
    sets = [set(r[r >= 0]) for r in recs]
    cos = [len(a & b) / math.sqrt(len(a) * len(b)) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    assert M.personalization(recs) == pytest.approx(1 - np.mean(cos))
