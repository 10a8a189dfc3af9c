"""Plans in forked worker processes (blueprints/parallel.py): results in order, the same plans
as in one process, a worker's death reported per stack, BLUEPRINTS_JOBS checked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from blueprints import parallel
from blueprints.plan import plan_each

ROOT = Path(__file__).resolve().parent.parent


def test_shares_keep_a_key_together_and_balance_the_workers():
    keys = ["hcloud", "aws", "hcloud", "aws", "hcloud", "aws", "hcloud", "aws"]
    assert parallel.shares(keys, 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # More workers than keys: the pieces are dealt out in turn.
    assert parallel.shares(["x"] * 5, 2) == [[0, 2, 4], [1, 3]]
    # Biggest group first, each to the smallest share.
    assert parallel.shares(["a", "b", "b", "b", "c", "c"], 2) == [[1, 2, 3], [0, 4, 5]]
    assert parallel.shares(["a", "b"], 1) == [[0, 1]]


def _pid_and_square(n: int) -> tuple[int, int]:
    return os.getpid(), n * n


def test_run_hands_results_back_in_order_from_other_processes():
    items = list(range(7))
    got = list(parallel.run(items, _pid_and_square, keys=[i % 3 for i in items], jobs=2))
    assert [item for item, _, _ in got] == items
    assert [value[1] for _, value, _ in got] == [i * i for i in items]
    assert all(why is None for _, _, why in got)
    pids = {value[0] for _, value, _ in got}
    assert len(pids) == 2 and os.getpid() not in pids


def _dies_on_three(n: int) -> int:
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


def test_a_worker_that_dies_costs_only_its_own_remaining_items():
    items = list(range(6))
    got = list(parallel.run(items, _dies_on_three, keys=[i % 2 for i in items], jobs=2))
    assert [item for item, _, _ in got] == items
    by_item = {item: (value, why) for item, value, why in got}
    # The odd worker (1, 3, 5) handed back 1, then died: 3 and 5 are lost, with the reason.
    assert by_item[1] == (1, None)
    for lost in (3, 5):
        value, why = by_item[lost]
        assert value is None and "killed by SIGKILL" in why
    assert [by_item[i] for i in (0, 2, 4)] == [(0, None), (2, None), (4, None)]


def _big(n: int) -> bytes:
    return bytes([n]) * (3 << 20)  # larger than a pipe's buffer: both workers must be read


def test_large_results_from_both_workers_do_not_block_each_other():
    got = list(parallel.run([1, 2, 3, 4], _big, keys=[0, 1, 0, 1], jobs=2))
    assert [len(value) for _, value, _ in got] == [3 << 20] * 4
    assert [value[0] for _, value, _ in got] == [1, 2, 3, 4]


def test_no_worker_is_left_behind_when_the_caller_stops_early():
    pids: list[int] = []

    def slow(n: int) -> int:
        import time

        if n > 0:
            time.sleep(30)
        return os.getpid()

    results = parallel.run([0, 1, 2, 3], slow, keys=[0, 1, 0, 1], jobs=2)
    _, first, _ = next(results)
    pids.append(first)
    results.close()  # as on Ctrl-C or an error in the caller
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_a_bad_jobs_setting_is_one_line(monkeypatch, raw):
    monkeypatch.setenv(parallel.JOBS_ENV, raw)
    with pytest.raises(parallel.JobsError, match="whole number of worker processes, 1 or more"):
        parallel.jobs_wanted(8)


def test_jobs_follow_the_setting_and_never_exceed_the_work(monkeypatch):
    monkeypatch.setenv(parallel.JOBS_ENV, "3")
    assert parallel.jobs_wanted(8) == 3
    assert parallel.jobs_wanted(2) == 2
    monkeypatch.delenv(parallel.JOBS_ENV)
    assert 1 <= parallel.jobs_wanted(8) <= (os.cpu_count() or 1)


def test_plans_from_workers_equal_plans_made_in_one_process():
    stacks = ["single-vm-hcloud", "single-vm-localstack", "compose-hcloud"]
    one = plan_each(stacks, ROOT, jobs=1)
    two = plan_each(stacks, ROOT, jobs=2)
    assert [p.stack for p in two.plans] == stacks
    assert two.plans == one.plans and two.failed == one.failed == {}


def test_the_cli_refuses_a_bad_jobs_setting():
    proc = subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "plan", "--all"],
        cwd=ROOT,
        env={**os.environ, parallel.JOBS_ENV: "many"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BLUEPRINTS_JOBS='many'" in lines[0]
    assert "Traceback" not in proc.stderr


def _noisy(n: int) -> int:
    print(f"noise {n}")
    sys.stdout.flush()
    return n


def test_what_a_worker_prints_stays_out_of_the_output(capfd):
    got = [value for _, value, _ in parallel.run([1, 2, 3], _noisy, keys=[0, 1, 0], jobs=2)]
    assert got == [1, 2, 3]
    assert "noise" not in capfd.readouterr().out


def test_where_no_process_can_be_forked_everything_runs_here(monkeypatch):
    started = []
    real_fork = os.fork

    def fork_once():
        if started:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        pid = real_fork()
        if pid:
            started.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork_once)
    got = list(parallel.run([1, 2, 3, 4], _pid_and_square, keys=[0, 1, 0, 1], jobs=2))
    assert [value[1] for _, value, _ in got] == [1, 4, 9, 16]
    assert {value[0] for _, value, _ in got} == {os.getpid()}
    with pytest.raises(ProcessLookupError):  # the one worker started was stopped and reaped
        os.kill(started[0], 0)
