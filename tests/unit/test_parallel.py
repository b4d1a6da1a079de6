"""Forked worker processes: results in order, closures, torch threads, and a broken pool's jobs finished here."""

import os

import pytest

from design.parallel import can_fork, forked_imap, map_forked

pytestmark = pytest.mark.skipif(not can_fork(), reason="processes start by fork only on Linux")


def test_forked_jobs_come_back_in_order_from_other_processes():
    here = os.getpid()
    offset = 10  # a closure's value: inherited, not pickled

    def fn(job):
        import torch

        return job + offset, os.getpid(), torch.get_num_threads()

    out = list(forked_imap(fn, list(range(7)), workers=2, threads=1))
    assert [r[0] for r in out] == list(range(10, 17))
    assert all(pid != here for _, pid, _ in out) and all(threads == 1 for *_, threads in out)


def test_jobs_left_by_a_killed_worker_run_here(caplog):
    here = os.getpid()

    def fn(job):
        if job == 3 and os.getpid() != here:
            os._exit(1)  # a worker dies (as when the system kills it for memory)
        return job * 2, os.getpid() == here

    out = list(forked_imap(fn, list(range(6)), workers=2))
    assert [r[0] for r in out] == [0, 2, 4, 6, 8, 10]
    assert out[3][1]  # the killed job was run again, here
    assert "run in this process" in caplog.text


def test_a_jobs_error_reaches_the_caller():
    def fn(job):
        if job == 1:
            raise ValueError(f"bad job {job}")
        return job

    with pytest.raises(ValueError, match="bad job 1"):
        list(forked_imap(fn, [0, 1, 2], workers=2))


def test_map_forked_is_the_serial_map():
    here = os.getpid()
    items = list(range(2500))
    out = map_forked(lambda x: (x * x, os.getpid() != here), items, min_items=1000)
    assert [r[0] for r in out] == [x * x for x in items]
    assert all(r[1] for r in out)  # in workers
    few = map_forked(lambda x: (x * x, os.getpid() != here), items[:10], min_items=1000)
    assert few == [(x * x, False) for x in items[:10]]  # below min_items: here
