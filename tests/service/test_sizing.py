"""Workers and ONNX Runtime threads sized from the cgroup, on fake cgroup trees (v2 and v1), and what the
running service reports."""

from pathlib import Path

import pytest
import requests

from service.sizing import CpuBudget, cpu_budget, parse_cpu_list, size
from service.settings import Settings


def tree(root: Path, files: dict[str, str], own: str = "0::/") -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup with ``files`` (relative paths) and a fake /proc/self/cgroup saying ``own``."""
    for relative, text in files.items():
        path = root / "cgroup" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    (root / "cgroup").mkdir(exist_ok=True)
    proc = root / "proc-self-cgroup"
    proc.write_text(own + "\n")
    return root / "cgroup", proc


def test_cpu_lists_are_counted():
    assert parse_cpu_list("0-3,8,10-11") == 7 and parse_cpu_list("5") == 1 and parse_cpu_list("") == 0


def test_a_v2_quota_in_the_container_decides(tmp_path):
    root, proc = tree(tmp_path, {"cpu.max": "100000 100000", "cpuset.cpus.effective": "0-7"})
    budget = cpu_budget(root, proc, affinity=8, host=64)
    assert budget.cpus == 1.0 and "cpu.max" in budget.source
    assert (size(budget).workers, size(budget).threads) == (1, 1)


def test_no_quota_falls_back_to_the_cpuset_then_the_affinity(tmp_path):
    root, proc = tree(tmp_path, {"cpu.max": "max 100000", "cpuset.cpus.effective": "0-2"})
    assert cpu_budget(root, proc, affinity=16, host=64).cpus == 3.0
    root, proc = tree(tmp_path / "b", {"cpu.max": "max 100000"})
    budget = cpu_budget(root, proc, affinity=1, host=64)
    assert budget.cpus == 1.0 and "affinity" in budget.source


def test_the_smallest_quota_along_the_path_to_the_root_counts(tmp_path):
    """On a host, the process's own cgroup may have no quota while its slice does."""
    root, proc = tree(tmp_path, {"system.slice/cpu.max": "250000 100000",
                                 "system.slice/app.service/cpu.max": "max 100000"},
                      own="0::/system.slice/app.service")
    budget = cpu_budget(root, proc, affinity=64, host=64)
    assert budget.cpus == 2.5 and "system.slice" in budget.source
    sizing = size(budget)
    assert (sizing.workers, sizing.threads) == (2, 1) and sizing.workers * sizing.threads <= budget.cpus


def test_a_v1_quota_is_read_too(tmp_path):
    root, proc = tree(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "150000", "cpu,cpuacct/cpu.cfs_period_us": "100000",
                                 "cpuset/cpuset.effective_cpus": "0-3"},
                      own="4:cpu,cpuacct:/\n3:cpuset:/")
    budget = cpu_budget(root, proc, affinity=4, host=64)
    assert budget.cpus == 1.5 and "cfs_quota_us" in budget.source
    assert size(budget).workers == 1
    root, proc = tree(tmp_path / "unlimited", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
                      own="4:cpu:/")
    assert cpu_budget(root, proc, affinity=2, host=64).cpus == 2.0


@pytest.mark.parametrize("cpus, workers, threads, expected", [
    (0.5, None, None, (1, 1)), (4.0, None, None, (4, 1)), (4.0, 1, None, (1, 4)), (4.0, 2, None, (2, 2)),
    (2.0, 3, None, (3, 1)), (8.0, None, 2, (8, 2))])
def test_workers_times_threads_fit_the_cpus_unless_set_by_hand(cpus, workers, threads, expected):
    sizing = size(CpuBudget(cpus, "test"), workers, threads)
    assert (sizing.workers, sizing.threads) == expected
    if workers is None and threads is None:
        assert sizing.workers * sizing.threads <= max(1, cpus)
    if workers is not None or threads is not None:
        assert "set" in sizing.source


def test_settings_take_web_concurrency_and_runtime_threads_as_given():
    settings = Settings.from_env({"WEB_CONCURRENCY": "3", "RUNTIME_THREADS": "2"})
    assert (settings.workers, settings.sizing.threads) == (3, 2)
    assert "WEB_CONCURRENCY and RUNTIME_THREADS set" in settings.sizing.source


def test_the_running_service_reports_its_sizing(tmp_path):
    from tests.conftest import SHIPPED_MODELS, GunicornServer

    server = GunicornServer(SHIPPED_MODELS, workers=1, RUNTIME_THREADS="2").start()
    try:
        serving = requests.get(server.url + "/models", timeout=10).json()["serving"]
        assert serving["workers"] == 1 and serving["runtime_threads"] == 2 and serving["cpus"] > 0
        assert "sizing: 1 worker(s) x 2 ONNX Runtime thread(s)" in server.output()
    finally:
        server.stop()
