"""The A/B analysis against logs written in the service's layout: an A/A test stays quiet, a truly
better challenger is found, a broken split is caught, and sessions/attribution/windows follow
their definitions on hand-made users."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from rich.console import Console

from feature_repo import schema
from models.lifecycle import experiments as ex

START = datetime(2026, 3, 2, tzinfo=UTC)
DAYS = 3
K = 10  # slots per slate
EXPERIMENT = "ranker-v7"


# ---- a small generator of service logs ----------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    click: float = 0.10  # click probability at position 1 for an average user
    watch_mean_s: float = 420.0
    p_play: float = 0.8  # after a click
    p_watch: float = 0.9  # after a play
    p_like: float = 0.15  # after a watch


def simulate(
    n_users: int,
    seed: int,
    champion: Behaviour = Behaviour(),
    challenger: Behaviour = Behaviour(),
    share: float = 0.5,
    experiment: str = EXPERIMENT,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions, events) frames with the IMPRESSIONS / FEEDBACK_EVENTS columns: users with a
    few sessions of a few slates of K impressions; clicks fall with position, plays follow clicks,
    watches (stamped when playback ends) follow plays, likes follow watches; now and then a play
    and watch from outside any slate (search), which carry no request_id."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{seed}-{i}" for i in range(n_users)])
    to_b = rng.random(n_users) < share
    propensity = rng.lognormal(-0.125, 0.5, n_users)  # users differ in how much they click (mean 1)

    n_sessions = 1 + rng.poisson(1.5, n_users)
    s_user = np.repeat(np.arange(n_users), n_sessions)
    s_start = rng.uniform(0, DAYS * 86400 - 4 * 3600, len(s_user))
    n_slates = 1 + rng.poisson(1.0, len(s_user))
    sl_session = np.repeat(np.arange(len(s_user)), n_slates)
    sl_rank = np.arange(len(sl_session)) - np.repeat(np.cumsum(n_slates) - n_slates, n_slates)
    sl_t = s_start[sl_session] + sl_rank * rng.uniform(240, 900, len(sl_session))  # a new slate every 4-15 min

    slate = np.repeat(np.arange(len(sl_session)), K)
    position = np.tile(np.arange(1, K + 1), len(sl_session))
    user = s_user[sl_session[slate]]
    b = to_b[user]
    shown_t = sl_t[slate]
    request = np.array([f"{seed:08x}{s:024x}" for s in range(len(sl_session))])[slate]
    video = np.char.add("v", rng.integers(0, 2000, len(slate)).astype(str))

    def pick(field: str) -> np.ndarray:
        return np.where(b, getattr(challenger, field), getattr(champion, field))

    p_click = np.clip(pick("click") * propensity[user] / position**0.8, 0, 0.95)
    clicked = rng.random(len(slate)) < p_click
    click_t = shown_t + 2 + 1.5 * position + rng.exponential(8, len(slate))
    played = clicked & (rng.random(len(slate)) < pick("p_play"))
    watched = played & (rng.random(len(slate)) < pick("p_watch"))
    watch_s = rng.exponential(pick("watch_mean_s"))
    liked = watched & (rng.random(len(slate)) < pick("p_like"))
    parts = [
        (clicked, "click", click_t, np.nan),
        (played, "play", click_t + 1, np.nan),
        (watched, "watch", click_t + 1 + watch_s, watch_s),
        (liked, "like", click_t + 3 + watch_s, np.nan),
    ]
    rows = []
    for mask, kind, t, watch in parts:
        rows.append(
            pd.DataFrame(
                {
                    "user_id": users[user[mask]],
                    "video_id": video[mask],
                    "t": t[mask],
                    "event_type": kind,
                    "watch_time_s": watch[mask] if isinstance(watch, np.ndarray) else np.nan,
                    "request_id": request[mask],
                    "position": position[mask],
                }
            )
        )
    searched = rng.random(len(s_user)) < 0.1  # a play + watch found by search: no slate to attribute
    search_t = s_start[searched] + rng.uniform(60, 600, searched.sum())
    search_watch = rng.exponential(300, searched.sum())
    for kind, t, watch in (("play", search_t, np.nan), ("watch", search_t + 1 + search_watch, search_watch)):
        rows.append(
            pd.DataFrame(
                {
                    "user_id": users[s_user[searched]],
                    "video_id": "v-searched",
                    "t": t,
                    "event_type": kind,
                    "watch_time_s": watch,
                    "request_id": None,
                    "position": pd.NA,
                }
            )
        )
    events = pd.concat(rows, ignore_index=True)
    events = events.assign(
        event_id=[f"e{seed}-{i}" for i in range(len(events))],
        event_ts=_ts(events["t"].to_numpy()),
        rating=np.nan,
        device="mobile",
        session_id=None,
        text=None,
        position=events["position"].astype("Int32"),
    )[schema.FEEDBACK_EVENTS.names]
    impressions = pd.DataFrame(
        {
            "request_id": request,
            "user_id": users[user],
            "video_id": video,
            "position": position.astype(np.int32),
            "variant": np.where(b, "challenger", "champion"),
            "experiment": experiment,
            "model_versions": '{"ranker": "7"}',
            "served_from": "model",
            "device": "mobile",
            "event_ts": _ts(shown_t),
        }
    )
    return impressions, events


def _ts(seconds: np.ndarray) -> pd.Series:
    micros = np.round(np.asarray(seconds, np.float64) * 1e6).astype(np.int64)  # what the log stores
    return pd.Series(pd.Timestamp(START) + pd.to_timedelta(micros, unit="us")).astype("datetime64[us, UTC]")


def in_memory(impressions: pd.DataFrame, events: pd.DataFrame, start=START, end=START + timedelta(days=DAYS)):
    return ex.ExperimentLogs(EXPERIMENT, start, end, impressions, events)


def write_log(root: Path, impressions: pd.DataFrame, events: pd.DataFrame, seed: int = 0) -> None:
    """The service's layout: batches under the day they arrived (an hour after the event, so some
    land in the next day's folder), a few batches per day."""
    rng = np.random.default_rng(seed)
    for name, frame, table_schema in (
        ("impressions", impressions, schema.IMPRESSIONS),
        ("events", events, schema.FEEDBACK_EVENTS),
    ):
        arrived = (frame["event_ts"] + pd.Timedelta(hours=1)).dt.strftime("%Y-%m-%d")
        batch = rng.integers(0, 3, len(frame))
        for (day, b), part in frame.groupby([arrived, batch]):
            path = root / name / day / f"batch-{b}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pandas(part, schema=table_schema, preserve_index=False), path)


# ---- reading the log ---------------------------------------------------------------------------------


def test_reading_files_gives_what_the_frames_give(tmp_path):
    impressions, events = simulate(300, seed=1)
    other, other_events = simulate(100, seed=2, experiment="another-test")
    # Some events come in an older feedback batch without the attribution columns: read as null.
    legacy = events[events["request_id"].isna()].head(20)
    write_log(tmp_path, pd.concat([impressions, other]), pd.concat([events.drop(legacy.index), other_events]))
    legacy_table = schema.to_arrow(legacy.drop(columns=["request_id", "position"]), "events")
    pq.write_table(legacy_table, tmp_path / "events" / "2026-03-02" / "legacy.parquet")
    # A batch still being written (temporary name) is not part of the log.
    pq.write_table(
        pa.Table.from_pandas(impressions.head(50), schema=schema.IMPRESSIONS, preserve_index=False),
        tmp_path / "impressions" / "2026-03-02" / ".batch-9.parquet.abc.tmp",
    )

    logs = ex.read_logs(tmp_path, EXPERIMENT, START, START + timedelta(days=DAYS))
    assert set(logs.impressions.columns) == set(ex.IMPRESSION_COLUMNS)
    assert len(logs.impressions) == len(impressions)
    assert set(logs.events["user_id"]) <= set(impressions["user_id"])  # the other test's users are not read
    assert len(logs.events) == len(events)

    from_files = ex.analyze(logs, 0.5)
    from_frames = ex.analyze(in_memory(pd.concat([impressions, other]), pd.concat([events, other_events])), 0.5)
    assert from_files.counts == from_frames.counts
    assert from_files.counts.unattributed_events == int(events["request_id"].isna().sum())
    for name, m in from_files.metrics.items():
        assert m.challenger.value == pytest.approx(from_frames.metrics[name].challenger.value), name
        assert m.p_value == pytest.approx(from_frames.metrics[name].p_value), name


def test_the_window_filters_on_event_time_not_folders(tmp_path):
    impressions, events = simulate(200, seed=3)
    write_log(tmp_path, impressions, events)
    start, end = START + timedelta(days=1), START + timedelta(days=2)
    logs = ex.read_logs(tmp_path, EXPERIMENT, start, end)

    shown = impressions[(impressions["event_ts"] >= start) & (impressions["event_ts"] < end)]
    assert len(logs.impressions) == len(shown) > 0
    assert logs.impressions["event_ts"].min() >= start and logs.impressions["event_ts"].max() < end
    assert set(logs.events["user_id"]) <= set(shown["user_id"])
    assert logs.events["event_ts"].min() >= start
    assert logs.events["event_ts"].max() < end + ex.ATTRIBUTION_SLACK
    late = events[events["user_id"].isin(shown["user_id"])]
    late = late[(late["event_ts"] >= end) & (late["event_ts"] < end + ex.ATTRIBUTION_SLACK)]
    assert len(late) and late["event_id"].isin(logs.events["event_id"]).all()  # clicks arriving after the end

    report = ex.analyze(logs, 0.5)
    assert report.counts.impressions == len(shown)
    assert report.first_impression >= start and report.last_impression < end


def test_no_impressions_names_the_experiment_and_window(tmp_path):
    impressions, events = simulate(50, seed=4)
    write_log(tmp_path, impressions, events)
    logs = ex.read_logs(tmp_path, "never-ran", START, START + timedelta(days=1))
    assert logs.impressions.empty and logs.events.empty
    with pytest.raises(ex.NoImpressions, match=r"never-ran.*2026-03-02") as raised:
        ex.analyze(logs, 0.5)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(ex.NoImpressions, match="empty-folder"):
        ex.analyze(ex.read_logs(tmp_path / "nothing-here", "empty-folder"), 0.5)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"challenger_share": 0.0}, "challenger_share"),
        ({"challenger_share": 1.0}, "challenger_share"),
        ({"challenger_share": 1.5}, "challenger_share"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.2}, "alpha"),
        ({"primary": "happiness"}, "primary"),
        ({"guards": ("ctr", "revenue")}, "guards"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    logs = in_memory(*simulate(20, seed=5))
    with pytest.raises(ValueError, match=field):
        ex.analyze(logs, **{"challenger_share": 0.5, **kwargs})


# ---- sessions and attribution on hand-made users ------------------------------------------------------


def _impression(request_id, user, video, position, variant, at):
    return {
        "request_id": request_id,
        "user_id": user,
        "video_id": video,
        "position": position,
        "variant": variant,
        "experiment": EXPERIMENT,
        "model_versions": "{}",
        "served_from": "model",
        "device": "tv",
        "event_ts": at,
    }


def _event(i, user, kind, at, request_id=None, video="v1", position=None, watch=None):
    return {
        "event_id": f"hand-{i}",
        "user_id": user,
        "video_id": video,
        "event_ts": at,
        "event_type": kind,
        "watch_time_s": watch,
        "rating": None,
        "device": "tv",
        "session_id": None,
        "text": None,
        "request_id": request_id,
        "position": position,
    }


def hand_made(tmp_path: Path) -> ex.ExperimentLogs:
    """u1 (champion): a slate at 12:00, a click at 12:10, a play at 12:20; then, 45 min after the
    play, a click on an unknown request at 13:05 and a 4-minute watch ending 13:10. u2 and u3
    (challenger) each see one slate and click it once."""
    noon = pd.Timestamp("2026-03-02 12:00", tz="UTC")
    m = pd.Timedelta(minutes=1)
    impressions = pd.DataFrame(
        [
            _impression("r1", "u1", "v1", 1, "champion", noon),
            _impression("r1", "u1", "v2", 2, "champion", noon),
            _impression("r2", "u2", "v1", 1, "challenger", noon),
            _impression("r2", "u2", "v2", 2, "challenger", noon),
            _impression("r3", "u3", "v1", 1, "challenger", noon + 5 * m),
            _impression("r3", "u3", "v2", 2, "challenger", noon + 5 * m),
            _impression("r9", "u1", "v9", 1, "champion", noon + pd.Timedelta(days=2)),  # outside the window
        ]
    )
    events = pd.DataFrame(
        [
            _event(1, "u1", "click", noon + 10 * m, "r1", "v1", 1),
            _event(2, "u1", "click", noon + 11 * m, "r1", "v1", 1),  # a second click on the same slot
            _event(3, "u1", "play", noon + 20 * m, "r1", "v1", 1),
            _event(4, "u1", "click", noon + 65 * m, "not-a-request", "v7", 3),
            _event(5, "u1", "watch", noon + 70 * m, None, "v7", None, watch=240.0),
            _event(6, "u2", "click", noon + 1 * m, "r2", "v-other", 2),  # matched by position
            _event(7, "u3", "click", noon + 6 * m, "r3", "v2", None),  # matched by video
            _event(8, "u4", "click", noon, "r1", "v1", 1),  # not a user of the experiment
        ]
    )
    events["position"] = events["position"].astype("Int32")
    write_log(tmp_path, impressions, events)
    return ex.read_logs(tmp_path, EXPERIMENT, noon - pd.Timedelta(hours=1), noon + pd.Timedelta(hours=3))


def test_sessions_split_after_a_30_minute_gap(tmp_path):
    report = ex.analyze(hand_made(tmp_path), 0.5, n_boot=200)
    assert report.variants["champion"] == ex.VariantCounts(users=1, impressions=2, sessions=2)
    # 12:00 -> 12:20 is 1200 s; the second session runs from the click at 13:05 to the watch's end.
    assert report.metrics["session_length"].champion.value == pytest.approx((1200 + 300) / 2)
    assert report.metrics["watch_time_per_session"].champion.value == pytest.approx(240 / 2)
    assert report.metrics["watch_time_per_user"].champion.value == pytest.approx(240)
    assert report.metrics["plays_per_session"].champion.value == pytest.approx(0.5)
    assert report.variants["challenger"].sessions == 2
    assert report.metrics["session_length"].challenger.value == pytest.approx((60 + 60) / 2)


def test_clicks_are_attributed_to_their_impression(tmp_path):
    report = ex.analyze(hand_made(tmp_path), 0.5, n_boot=200)
    assert report.metrics["ctr"].champion.value == pytest.approx(1 / 2)  # two clicks on one slot: one
    assert report.metrics["ctr"].challenger.value == pytest.approx(2 / 4)  # by position, and by video
    assert report.counts.unattributed_events == 2  # the unknown request's click, the slate-less watch
    assert report.counts.events == 7  # u4 is not in the experiment
    assert report.counts.impressions == 6  # r9 is after the window
    assert any("match no impression" in w for w in report.warnings)


def test_served_versions_come_from_the_impressions(tmp_path):
    logs = in_memory(*simulate(40, seed=12))
    assert ex.served_versions(logs, "challenger") == {"ranker": "7"}
    reloaded = logs.impressions.copy()
    reloaded.loc[reloaded.index[-1], "model_versions"] = '{"ranker": "8"}'
    reloaded.loc[reloaded.index[-1], "variant"] = "challenger"
    with pytest.raises(ValueError, match="several model versions"):
        ex.served_versions(in_memory(reloaded, logs.events), "challenger")
    assert ex.served_versions(in_memory(logs.impressions.assign(variant="champion"), logs.events), "challenger") == {}


def test_users_served_both_variants_count_under_their_first(tmp_path):
    impressions, events = simulate(40, seed=6)
    first = impressions["user_id"].iloc[0]
    later = (
        impressions[impressions["user_id"] == first]
        .iloc[[-1]]
        .assign(
            variant=lambda f: np.where(f["variant"] == "champion", "challenger", "champion"),
            request_id="flipped",
            event_ts=lambda f: f["event_ts"] + pd.Timedelta(minutes=1),
        )
    )
    report = ex.analyze(in_memory(pd.concat([impressions, later]), events), 0.5, n_boot=200)
    assert report.counts.users_in_both == 1
    assert report.counts.users == impressions["user_id"].nunique()
    assert any("both variants" in w for w in report.warnings)


# ---- the statistics -----------------------------------------------------------------------------------


def test_an_aa_test_is_inconclusive():
    """Both variants behave the same: at alpha 0.05 about 5 in 100 repetitions are significant."""
    primary_quiet = ctr_quiet = 0
    srm_flags = 0
    for seed in range(100):
        report = ex.analyze(in_memory(*simulate(300, seed=1000 + seed)), 0.5, n_boot=500, seed=seed)
        primary_quiet += report.metrics[report.primary].verdict == ex.INCONCLUSIVE
        ctr_quiet += report.metrics["ctr"].verdict == ex.INCONCLUSIVE
        srm_flags += report.srm.flagged
    assert primary_quiet >= 90
    assert ctr_quiet >= 90
    assert srm_flags <= 2


def test_a_better_challenger_is_found():
    better = Behaviour(click=0.115, watch_mean_s=490.0)  # +15% clicks, +17% watch time per watch
    report = ex.analyze(in_memory(*simulate(2000, seed=7, challenger=better)), 0.5)
    assert report.metrics["watch_time_per_session"].verdict == ex.BETTER
    assert report.metrics["ctr"].verdict == ex.BETTER
    assert report.metrics["watch_time_per_user"].verdict == ex.BETTER
    assert report.metrics["watch_time_per_user"].method == "bootstrap"
    assert report.metrics["ctr"].method == "delta"
    ctr = report.metrics["ctr"]
    assert ctr.diff_low > 0 and ctr.lift > 0 and ctr.challenger.low < ctr.challenger.value < ctr.challenger.high
    assert not report.srm.flagged
    assert report.decision() == ex.PROMOTE
    assert report.verdict().startswith("promote")
    # The cumulative lift ends on the whole report.
    assert report.timeline[-1].lift == pytest.approx(report.metrics[report.primary].lift)
    assert report.timeline[-1].users == report.counts.users


def test_a_worse_challenger_keeps_the_champion():
    worse = Behaviour(click=0.085, watch_mean_s=360.0)
    report = ex.analyze(in_memory(*simulate(2000, seed=8, challenger=worse)), 0.5, n_boot=500)
    assert report.metrics[report.primary].verdict == ex.WORSE
    assert report.decision() == ex.KEEP_CHAMPION


def test_a_sample_ratio_mismatch_is_flagged():
    skewed = ex.analyze(in_memory(*simulate(2000, seed=9, share=0.4)), 0.5, n_boot=200)
    assert skewed.srm.flagged and skewed.srm.p_value < ex.SRM_P_THRESHOLD
    assert skewed.decision() == ex.SRM
    assert skewed.verdict() == "sample ratio mismatch: do not trust these metrics"
    assert skewed.srm.expected["challenger"] == pytest.approx(skewed.counts.users / 2)

    fair = ex.analyze(in_memory(*simulate(2000, seed=9, share=0.5)), 0.5, n_boot=200)
    assert not fair.srm.flagged
    # The same 60/40 split, declared as such, is fine.
    assert not ex.analyze(in_memory(*simulate(2000, seed=9, share=0.4)), 0.4, n_boot=200).srm.flagged


# ---- output -------------------------------------------------------------------------------------------


def test_report_files_and_mlflow_run(tmp_path):
    report = ex.analyze(in_memory(*simulate(300, seed=10, challenger=Behaviour(click=0.12))), 0.5, n_boot=500)
    paths = ex.write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "metrics.png", "cumulative_lift.png"]

    def no_nan(token):
        raise AssertionError(f"{token} in report.json")

    saved = json.loads(paths[0].read_text(), parse_constant=no_nan)
    assert saved["decision"] == report.decision()
    assert saved["metrics"]["ctr"]["method"] == "delta"
    assert saved["srm"]["observed"]["champion"] == report.srm.observed["champion"]
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]

    text = StringIO()
    Console(file=text, width=200).print(ex.report_table(report))
    assert "watch_time_per_session (primary)" in text.getvalue() and "ctr (guard)" in text.getvalue()

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = ex.log_to_mlflow(report, paths, uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(ex.MLFLOW_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == run_id and run.info.run_name == EXPERIMENT
    assert run.data.tags["decision"] == report.decision()
    assert run.data.params["primary"] == "watch_time_per_session"
    assert run.data.metrics["ctr.p_value"] == pytest.approx(report.metrics["ctr"].p_value)
    assert {a.path for a in client.list_artifacts(run_id)} == {p.name for p in paths}
    assert (tmp_path / "home" / "mlartifacts").is_dir()  # the profile's artifact store, not ./mlruns


def test_undefined_values_are_none_in_the_dict():
    impressions, events = simulate(30, seed=11)
    only_champion = impressions.assign(variant="champion")
    report = ex.analyze(in_memory(only_champion, events), 0.5, n_boot=100)
    assert report.decision() == ex.SRM
    d = report.as_dict()
    assert d["metrics"]["ctr"]["challenger"]["value"] is None
    json.dumps(d, allow_nan=False)
    assert not any(isinstance(v, float) and math.isnan(v) for v in _leaves(d))


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value
