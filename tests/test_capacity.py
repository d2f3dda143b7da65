"""The memory plan that lets `vidrec train` refuse a size before the kernel kills it."""

from __future__ import annotations

import dataclasses
import re

import pytest

from models.lifecycle.capacity import (
    TRAIN_BASE_BYTES,
    TRAIN_BYTES_PER_EVENT,
    NotEnoughMemory,
    check_train_fits,
    ease_fit_size,
    train_memory_plan,
)
from models.lifecycle.config import TrainConfig
from vidrec.meter import available_memory_bytes
from vidrec.settings import Settings, SettingsError, size_bytes

GiB = 2**30


@pytest.mark.parametrize(
    ("events", "videos", "measured"),
    [(1_000_000, 5_000, 2.53), (10_000_000, 50_000, 7.45), (104_519, 9_742, 2.89)],
    ids=["synthetic-1M", "synthetic-10M", "ml-latest-small"],
)
def test_the_estimate_follows_the_measured_peaks(events, videos, measured):
    """Fitted to `vidrec train` on the synthetic platform at 1M and 10M events (README "Scale"); on
    ml-latest-small, whose 9,742 videos make EASE the largest part, it stays within 10% above."""
    config = TrainConfig()  # the default generators, EASE among them
    plan = train_memory_plan(events, ease_fit_size(config, videos), Settings.from_env())
    assert plan.ease_items == min(videos, 15_000)
    assert measured - 0.01 <= plan.python_bytes / GiB <= measured * 1.1


def test_without_ease_only_the_events_count():
    without = train_memory_plan(
        10_000_000, ease_fit_size(TrainConfig(generators=("popularity", "item-cf")), 50_000), Settings.from_env()
    )
    assert without.ease_items == 0
    assert without.python_bytes == TRAIN_BASE_BYTES + TRAIN_BYTES_PER_EVENT * 10_000_000


def test_memory_limit_is_read_like_spark_writes_sizes(monkeypatch):
    assert size_bytes("X", "4g") == 4 * GiB and size_bytes("X", "512M") == 512 * 2**20
    assert size_bytes("X", "1.5G") == int(1.5 * GiB) and size_bytes("X", "4096") == 4096
    monkeypatch.setenv("VIDREC_MEMORY_LIMIT", "12g")
    assert Settings.from_env().memory_limit == 12 * GiB
    for bad in ("lots", "-1g", "0"):
        monkeypatch.setenv("VIDREC_MEMORY_LIMIT", bad)
        with pytest.raises(SettingsError, match="VIDREC_MEMORY_LIMIT=.* is not a memory size"):
            Settings.from_env()


def test_a_local_spark_jvm_counts_and_a_cluster_does_not():
    base = dataclasses.replace(Settings.from_env("spark"), memory_limit=64 * GiB, spark_driver_memory="4g")
    local = train_memory_plan(10_000_000, 15_000, base)
    cluster = train_memory_plan(10_000_000, 15_000, dataclasses.replace(base, spark_master="spark://host:7077"))
    assert local.jvm_bytes / GiB == pytest.approx(4.68, abs=0.02) and cluster.jvm_bytes == 0  # measured at 10M
    small_heap = train_memory_plan(10_000_000, 15_000, dataclasses.replace(base, spark_driver_memory="1g"))
    assert small_heap.jvm_bytes == pytest.approx(1.2 * GiB)  # the JVM stops at its heap
    assert (
        local.python_bytes
        == cluster.python_bytes
        == train_memory_plan(10_000_000, 15_000, Settings.from_env()).python_bytes
    )


def test_refusal_names_the_size_the_budget_and_what_to_do():
    settings = dataclasses.replace(Settings.from_env(), memory_limit=8 * GiB)
    assert check_train_fits(10_000_000, 15_000, settings).fits  # the measured 10M run: 7.45 GB
    with pytest.raises(NotEnoughMemory) as refused:
        check_train_fits(30_000_000, 15_000, settings)
    message = str(refused.value)
    assert (
        "30,000,000 events: about 13.41 GB (EASE on 15,000 videos: 2.51 GB) at the peak; 8.00 GB available (VIDREC_MEMORY_LIMIT)"
        in message
    )
    holds = int(re.search(r"this machine holds about ([\d,]+) events", message).group(1).replace(",", ""))
    assert 10_000_000 <= holds < 30_000_000  # the 10M run fits this budget, 30M does not
    assert "Nothing was started" in message
    assert "VIDREC_MEMORY_LIMIT" in message and "--as-of" in message


def test_without_a_limit_the_machine_decides():
    available = available_memory_bytes()
    plan = train_memory_plan(100_000, 0, Settings.from_env())
    assert plan.available_bytes == available and plan.limit_source == "the machine's available memory"
