"""How many workers, and ONNX Runtime threads in each, the CPUs this process may use can keep busy.

Read from the cgroup the process runs in, as a container runtime or Kubernetes sets it: the CPU quota
(``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1, the smallest along the path to the
root) and the CPUs it may run on (the cpuset, and the process's affinity). Sizing from the host's core count
instead, as most servers do, starts more workers than the quota can run, and the kernel then throttles them all
for the rest of each period: latency spikes with CPU to spare on the host.

The gunicorn master reads this before forking, so it imports neither NumPy nor anything that does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use (may be fractional: a quota of 1.5 CPUs) and what said so."""

    cpus: float
    source: str


@dataclass(frozen=True)
class Sizing:
    workers: int
    threads: int  # ONNX Runtime's intra-op threads per worker
    cpus: float
    source: str  # where the CPU figure, or the numbers themselves, came from

    def describe(self) -> str:
        return (f"{self.workers} worker(s) x {self.threads} ONNX Runtime thread(s) for {self.cpus:g} CPU(s) "
                f"({self.source})")

    def as_dict(self) -> dict:
        return {"workers": self.workers, "runtime_threads": self.threads, "cpus": self.cpus, "source": self.source}


def parse_cpu_list(text: str) -> int:
    """The number of CPUs in a cpuset list such as ``0-3,8,10-11``."""
    count = 0
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        count += (int(high) - int(low) + 1) if high else 1
    return count


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> tuple[list[Path], list[Path]]:
    """The cgroup v2 folders from this process's own up to the root, and the v1 cpu and cpuset folders (each
    with its parents). A container sees its own cgroup as the root, so the root folder is always included."""
    v2, v1 = [], []
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":
            v2.append(root / relative)
        elif "cpu" in controllers.split(",") or "cpuset" in controllers.split(","):
            for name in controllers.split(","):
                if name in ("cpu", "cpuset"):
                    v1.append(root / controllers / relative)
                    v1.append(root / name / relative)
    v2.append(root)
    v1 += [root / "cpu", root / "cpu,cpuacct", root / "cpuset"]
    return _with_parents(v2, root), _with_parents(v1, root)


def _with_parents(folders: list[Path], root: Path) -> list[Path]:
    seen, result = set(), []
    for folder in folders:
        while True:
            if folder not in seen:
                seen.add(folder)
                result.append(folder)
            if folder == root or folder.parent == folder or root not in folder.parents:
                break
            folder = folder.parent
    return result


def cpu_budget(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP,
               affinity: int | None = None, host: int | None = None) -> CpuBudget:
    """The smallest of: the CPU quota along the cgroup path, the cpuset, the affinity and the host's CPUs."""
    candidates: list[tuple[float, str]] = []
    host = host or os.cpu_count() or 1
    candidates.append((float(host), "the host's CPUs"))
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = None
    if affinity:
        candidates.append((float(affinity), "the process's CPU affinity"))
    v2, v1 = _own_cgroup_dirs(root, proc_cgroup)
    for folder in v2:
        quota = _read(folder / "cpu.max")
        if quota:
            limit, _, period = quota.partition(" ")
            if limit != "max" and period and float(period) > 0:
                candidates.append((float(limit) / float(period), f"cgroup cpu.max in {folder}"))
        cpus = _read(folder / "cpuset.cpus.effective")
        if cpus:
            candidates.append((float(parse_cpu_list(cpus)), f"cgroup cpuset in {folder}"))
    for folder in v1:
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0 and int(period) > 0:
            candidates.append((int(quota) / int(period), f"cgroup cpu.cfs_quota_us in {folder}"))
        cpus = _read(folder / "cpuset.effective_cpus") or _read(folder / "cpuset.cpus")
        if cpus:
            candidates.append((float(parse_cpu_list(cpus)), f"cgroup cpuset in {folder}"))
    cpus, source = min(candidates, key=lambda item: item[0])
    return CpuBudget(max(cpus, 0.01), source)


def size(budget: CpuBudget, workers: int | None = None, threads: int | None = None) -> Sizing:
    """Workers x threads within the budget: one worker per whole CPU (at least one), then the threads that the
    CPUs left per worker allow (at least one). A value set by hand is kept as it is."""
    chosen_workers = workers if workers is not None else max(1, math.floor(budget.cpus + 1e-9))
    chosen_threads = threads if threads is not None else max(1, math.floor(budget.cpus / chosen_workers + 1e-9))
    set_by_hand = [name for name, value in (("WEB_CONCURRENCY", workers), ("RUNTIME_THREADS", threads))
                   if value is not None]
    source = budget.source + (f"; {' and '.join(set_by_hand)} set" if set_by_hand else "")
    return Sizing(chosen_workers, chosen_threads, round(budget.cpus, 3), source)
