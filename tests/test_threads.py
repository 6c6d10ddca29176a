"""--threads: torch's CPU threads in a `csm say` run, set before the model runs; by default the physical cores."""

import json
import os
import subprocess
import sys

import pytest
import torch

from csm_cli import threads
from csm_cli.threads import physical_cores


def say_stats(args: list[str], tmp_path, transformers_dir, mimi_file) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "csm_cli", "say", "Hello.", "-o", str(tmp_path / "x.wav"), "--no-play", "--stats",
         "-q", "--max-seconds", "0.5", "--model", str(transformers_dir), "--codec", str(mimi_file), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stderr.strip().splitlines()[-1])


def test_threads_set_torch_threads_in_the_run(tmp_path, transformers_dir, mimi_file):
    wanted = physical_cores() + 1  # not what torch would pick by itself
    assert say_stats(["--threads", str(wanted)], tmp_path, transformers_dir, mimi_file)["threads"] == wanted


def test_threads_default_to_the_physical_cores(tmp_path, transformers_dir, mimi_file):
    assert say_stats([], tmp_path, transformers_dir, mimi_file)["threads"] == physical_cores()


def test_physical_cores_are_within_the_cpus_this_process_may_use():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-2"])
def test_threads_below_one_are_refused(value):
    result = subprocess.run([sys.executable, "-m", "csm_cli", "say", "Hi", "-o", "x.wav", "--no-play", "--threads",
                             value, "--model", "/unused"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"csm: error: --threads must be at least 1, got {value}\n"


def test_a_count_set_stays_until_another_is_set(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    try:
        assert threads.use_cpu_threads() == physical_cores() == torch.get_num_threads()
        assert threads.use_cpu_threads(1) == 1 == torch.get_num_threads()
        assert threads.use_cpu_threads() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
