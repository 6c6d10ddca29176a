"""torch's CPU threads: the physical cores by default, a count set once kept."""

import os

import torch

from csm_cli import threads


def test_physical_cores_are_at_most_the_cpus_this_process_may_use():
    assert 1 <= threads.physical_cores() <= len(os.sched_getaffinity(0))


def test_a_count_set_stays_until_another_is_set(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    try:
        assert threads.set_threads() == threads.physical_cores() == torch.get_num_threads()
        assert threads.set_threads(1) == 1 == torch.get_num_threads()
        assert threads.set_threads() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
