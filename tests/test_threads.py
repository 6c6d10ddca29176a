"""--threads: torch's CPU threads in a `csm say` run, set before the model runs; by default the physical cores."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_cli import assert_one_line_error
from typer.testing import CliRunner

from csm_cli import threads
from csm_cli.cli import app
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
    cpus = len(os.sched_getaffinity(0))
    wanted = cpus if cpus > physical_cores() else 1  # not what torch would pick by itself
    if wanted == physical_cores():
        pytest.skip("one CPU: no count other than the default")
    assert say_stats(["--threads", str(wanted)], tmp_path, transformers_dir, mimi_file)["threads"] == wanted


def test_threads_default_to_the_physical_cores(tmp_path, transformers_dir, mimi_file):
    assert say_stats([], tmp_path, transformers_dir, mimi_file)["threads"] == physical_cores()


def test_physical_cores_are_within_the_cpus_this_process_may_use():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("command", "value", "message"), [
    ("say", "0", f"--threads must be a whole number from 1 to {CPUS}, the CPUs this process may run on"),
    ("say", "-2", "--threads must be a whole number from 1 to"),
    ("say", str(CPUS + 1), f"the CPUs this process may run on (more threads only take turns on them, and torch fails "
                           f"with thousands), got {CPUS + 1}"),
    ("say", "100000", "--threads must be a whole number from 1 to"),
    ("bench", "5000", "--threads must be a whole number from 1 to"),
    ("serve", str(10**30), "--threads must be a whole number from 1 to"),
    ("say", "nan", "Invalid value for '--threads'"),
    ("say", "inf", "Invalid value for '--threads'"),
    ("say", "1.5", "Invalid value for '--threads'"),
    ("say", "1e3", "Invalid value for '--threads'"),
    ("say", "", "Invalid value for '--threads'"),
])
def test_a_thread_count_beyond_the_cpus_is_one_line_before_loading(command, value, message):
    args = {"say": ["say", "Hi", "-o", "x.wav", "--no-play"], "bench": ["bench"], "serve": ["serve", "--port", "0"]}
    result = CliRunner().invoke(app, [*args[command], "--threads", value, "--model", "/unused"])
    assert result.exit_code == (2 if "Invalid value" in message else 1)
    assert_one_line_error(result.stderr, message)


def test_a_count_set_stays_until_another_is_set(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    try:
        assert threads.use_cpu_threads() == physical_cores() == torch.get_num_threads()
        assert threads.use_cpu_threads(1) == 1 == torch.get_num_threads()
        assert threads.use_cpu_threads() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_between_regions_unless_the_user_says(given, expected):
    """csm sets OMP_WAIT_POLICY before torch loads OpenMP (its entry point imports no torch), and keeps a value the
    user gave."""
    program = ("import os, sys\nsys.argv = ['csm', '--help']\nfrom csm_cli.__main__ import main\n"
               "torch_first = 'torch' in sys.modules\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
               "print(os.environ['OMP_WAIT_POLICY'], torch_first, file=sys.stderr)")
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                          env=env | ({"OMP_WAIT_POLICY": given} if given else {}))
    assert done.stderr.split()[-2:] == [expected, "False"], done.stderr
