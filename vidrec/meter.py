"""Wall time and peak memory per stage of a data-sized job (train, batch, the scale benchmark).

    meter = StageMeter(report=print)
    with meter.stage("generators"):
        ...
    meter.records  # [StageRecord(name, seconds, peak_rss_bytes), ...]

Peak memory is the process's resident high-water mark during the stage. On Linux the kernel
keeps it exactly (VmHWM) and lets a process reset it (`/proc/self/clear_refs`, value 5), so each
stage reports its own peak rather than the largest so far. Elsewhere it falls back to
`ru_maxrss`, which only ever grows (the peak of the job up to that stage).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class StageRecord:
    name: str
    seconds: float
    peak_rss_bytes: int

    def summary(self) -> str:
        return f"{self.name}: {self.seconds:.1f} s, peak {format_bytes(self.peak_rss_bytes)}"


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def current_rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024 if _STATUS.exists() else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The resident high-water mark (since the last reset where the kernel allows one)."""
    if _STATUS.exists():
        return _status_kb("VmHWM") * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def reset_peak() -> bool:
    """Restart the high-water mark at the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def available_memory_bytes() -> int | None:
    """What a new job can still take: the kernel's MemAvailable, within the process's cgroup (v2)
    limit where one is set (a container's). None where neither can be read."""
    found = []
    meminfo = Path("/proc/meminfo")
    if meminfo.exists() and (kb := _field_kb(meminfo, "MemAvailable")):
        found.append(kb * 1024)
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit, used = (cgroup / "memory.max").read_text().strip(), (cgroup / "memory.current").read_text().strip()
        if limit != "max":
            found.append(max(int(limit) - int(used), 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _status_kb(key: str) -> int:
    return _field_kb(_STATUS, key)


def _field_kb(path: Path, key: str) -> int:
    """A "Key:   1234 kB" line of a /proc file (status, meminfo); 0 when absent."""
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class StageMeter:
    report: Callable[[str], None] | None = None
    records: list[StageRecord] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        reset_peak()
        started = time.perf_counter()
        try:
            yield
        finally:
            record = StageRecord(name, time.perf_counter() - started, peak_rss_bytes())
            self.records.append(record)
            if self.report is not None:
                self.report(record.summary())

    @property
    def peak_rss_bytes(self) -> int:
        return max((r.peak_rss_bytes for r in self.records), default=0)

    def metrics(self, prefix: str = "stage") -> dict[str, float]:
        """MLflow-ready `<prefix>.<stage>.seconds` and `.peak_rss_mb` (stage names slugged)."""
        out: dict[str, float] = {}
        for record in self.records:
            slug = "".join(c if c.isalnum() else "_" for c in record.name).strip("_")
            out[f"{prefix}.{slug}.seconds"] = record.seconds
            out[f"{prefix}.{slug}.peak_rss_mb"] = record.peak_rss_bytes / 2**20
        return out
