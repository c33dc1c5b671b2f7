"""The OpenMP wait policy follows how busy the CPU is at start, and a user's own setting wins.

Spinning threads are 1.45x faster on an idle CPU and 2x slower on shared cores (docs/benchmarks.md),
so an idle start must get the short spin, a busy or unknown one the passive policy, and the
variables must be set before torch loads (libgomp reads them once).
"""
import os
import subprocess
import sys
import time

import pytest

from unimatch.openmp_wait import BUSY_SHARE, SPIN_COUNT, busy_share_between, choose_wait_policy, cpu_busy_share

# /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"


def stat_after(work: int, idle: int, iowait: int = 0) -> str:
    return f"cpu  {100 + work} 0 50 {800 + idle} {50 + iowait} 0 0 0 0 0\n"


def test_busy_share_counts_idle_and_iowait_as_unused_time():
    assert busy_share_between(BEFORE, stat_after(work=30, idle=70)) == pytest.approx(0.3)
    assert busy_share_between(BEFORE, stat_after(work=10, idle=60, iowait=30)) == pytest.approx(0.1)
    assert busy_share_between(BEFORE, BEFORE) is None


def test_an_idle_cpu_gets_a_short_spin_and_a_busy_or_unknown_one_passive_threads():
    idle = {}
    line = choose_wait_policy(idle, measure=lambda: 0.05)
    assert idle == {"GOMP_SPINCOUNT": str(SPIN_COUNT)} and "5 % busy" in line
    for busy in (BUSY_SHARE, 0.9, None):
        environ = {}
        choose_wait_policy(environ, measure=lambda: busy)
        assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_a_wait_setting_of_the_user_is_kept_whatever_the_load(given):
    for busy in (0.0, 1.0):
        environ = dict(given)
        assert "as set" in choose_wait_policy(environ, measure=lambda: busy)
        assert environ == given


@pytest.mark.skipif(not os.path.exists("/proc/stat") or (os.cpu_count() or 1) > 8,
                    reason="needs /proc/stat and few enough cores to keep busy")
def test_the_measured_share_sees_every_core_busy():
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    workers = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # past the interpreters' start
        assert cpu_busy_share(0.5) > 0.8
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def test_entry_points_choose_before_torch_loads_and_keep_a_given_policy():
    probe = ("import sys, os, tasks.natural.train; names = list(sys.modules); "
             "assert names.index('unimatch.openmp_wait') < names.index('torch'); "
             "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() in (["PASSIVE", "None"], ["None", str(SPIN_COUNT)])
    out = subprocess.run([sys.executable, "-c", probe], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ACTIVE", "None"]
