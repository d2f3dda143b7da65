"""Will a training run fit in memory? Refuse up front what the machine cannot hold.

A run killed by the kernel halfway through loses its work and says nothing useful; a refusal
before it starts names the size, the estimate and what to do instead.

The estimate is EASE's dense fit (`models.ease.fit_peak_bytes`, on at most `max_items` videos)
plus a straight line in the lake's events, fitted to the peaks `vidrec train` measured on the
synthetic platform with `benchmarks/bench_scale.py` (README "Scale", local profile, defaults):
2.53 GB at 1M events (5,000 videos) and 7.45 GB at 10M (50,000 videos, EASE on 15,000). On
ml-latest-small (104,519 events, 9,742 videos) it says 3.04 GB where 2.89 GB was measured. The
Python process holds the generators in both profiles. Under the spark profile with a `local[N]`
master the JVM runs on the same machine too: it measured 1.46 GB at 1M events and 4.68 GB at 10M
(4g heap), and it cannot pass its heap and about a fifth more.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.ease import MAX_ITEMS, fit_peak_bytes
from models.lifecycle.config import TrainConfig
from vidrec.meter import available_memory_bytes, format_bytes
from vidrec.settings import Settings, size_bytes

GiB = 2**30
# The two measured runs, less EASE's share (0.28 and 2.51 GiB): 2.25 and 4.94 GiB.
TRAIN_BASE_BYTES = int(1.952 * GiB)
TRAIN_BYTES_PER_EVENT = 320  # (4.94 - 2.25) GiB over the 9M events between the two runs
JVM_BASE_BYTES = int(1.10 * GiB)
JVM_BYTES_PER_EVENT = 384  # (4.68 - 1.46) GiB over the same 9M events
JVM_OVERHEAD = 1.2  # a local-mode JVM's largest RSS over its heap


class NotEnoughMemory(ValueError):
    """The run would need more memory than the machine has for it; nothing was started."""


@dataclass(frozen=True)
class MemoryPlan:
    events: int
    ease_items: int  # the videos EASE's dense fit takes (0: EASE is not among the generators)
    python_bytes: int
    jvm_bytes: int
    available_bytes: int | None  # None: unknown (not Linux), nothing is refused
    limit_source: str  # where `available_bytes` came from

    @property
    def needed_bytes(self) -> int:
        return self.python_bytes + self.jvm_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.needed_bytes <= self.available_bytes

    def summary(self) -> str:
        jvm = f" + the local Spark JVM {format_bytes(self.jvm_bytes)}" if self.jvm_bytes else ""
        ease = (
            f" (EASE on {self.ease_items:,} videos: {format_bytes(fit_peak_bytes(self.ease_items))})"
            if self.ease_items
            else ""
        )
        have = "unknown" if self.available_bytes is None else format_bytes(self.available_bytes)
        return (
            f"{self.events:,} events: about {format_bytes(self.python_bytes)}{ease}{jvm} at the peak; "
            f"{have} available ({self.limit_source})"
        )


def ease_fit_size(config: TrainConfig, n_videos: int) -> int:
    """The videos a run's EASE fit inverts at most: the catalog, within its `max_items`."""
    if "ease" not in config.generators:
        return 0
    return min(n_videos, int(config.tuned.get("ease", {}).get("max_items", MAX_ITEMS)))


def train_memory_plan(events: int, ease_items: int, settings: Settings) -> MemoryPlan:
    """The estimated peak of `vidrec train` on `events` lake events, against what it may use."""
    python_bytes = TRAIN_BASE_BYTES + TRAIN_BYTES_PER_EVENT * events + fit_peak_bytes(ease_items)
    jvm_bytes = 0
    if settings.profile == "spark" and settings.spark_master.startswith("local"):
        heap = size_bytes("VIDREC_SPARK_DRIVER_MEMORY", settings.spark_driver_memory)
        jvm_bytes = min(JVM_BASE_BYTES + JVM_BYTES_PER_EVENT * events, int(JVM_OVERHEAD * heap))
    if settings.memory_limit is not None:
        available, source = settings.memory_limit, "VIDREC_MEMORY_LIMIT"
    else:
        available, source = available_memory_bytes(), "the machine's available memory"
    return MemoryPlan(events, ease_items, python_bytes, jvm_bytes, available, source)


def check_train_fits(events: int, ease_items: int, settings: Settings) -> MemoryPlan:
    """The plan, or NotEnoughMemory with what to do instead."""
    plan = train_memory_plan(events, ease_items, settings)
    if plan.fits:
        return plan
    per_million = TRAIN_BYTES_PER_EVENT * 1_000_000
    fixed = TRAIN_BASE_BYTES + fit_peak_bytes(ease_items) + plan.jvm_bytes
    room = max((plan.available_bytes or 0) - fixed, 0)
    raise NotEnoughMemory(
        f"vidrec train would need more memory than it has: {plan.summary()}. Nothing was started. "
        f"The estimate grows by {format_bytes(per_million)} per million events, so this machine holds "
        f"about {room // TRAIN_BYTES_PER_EVENT:,} events. Train on a machine with more memory, or on a "
        "shorter history (`vidrec train --as-of` an earlier time, or a lake of fewer days); the "
        "spark profile moves the feature tables and the batch off this process, not the generators. "
        "If the estimate is wrong for your data, set VIDREC_MEMORY_LIMIT to the memory the run may use."
    )
