"""--threads: torch's CPU threads in a `csm say` run, set before the model runs; by default the physical cores."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error
from typer.testing import CliRunner

from csm_cli import threads
from csm_cli.cli import app
from csm_cli.errors import CsmError
from csm_cli.generation.engine import FrameEngine
from csm_cli.generation.generator import StreamingGenerator
from csm_cli.generation.prompt import Segment
from csm_cli.loading.generator import LoadOptions
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
        assert threads.use_cpu_threads(1) == 1 == torch.get_num_threads() == model_thread_count()
        assert threads.use_cpu_threads() == 1 == torch.get_num_threads() == model_thread_count()
    finally:
        threads.MODEL_THREAD.call(torch.set_num_threads, before)
        torch.set_num_threads(before)


def model_thread_count() -> int:
    return threads.MODEL_THREAD.call(torch.get_num_threads)


def test_a_call_runs_on_the_model_thread_and_gives_its_result_or_raises_its_error():
    assert threads.MODEL_THREAD.call(lambda: threading.current_thread().name) == "csm-model"
    assert threads.MODEL_THREAD.call(lambda: threads.MODEL_THREAD.call(lambda: 42)) == 42  # from itself: at once

    def fail() -> None:
        raise CsmError("the model is not there")

    with pytest.raises(CsmError, match="the model is not there"):
        threads.MODEL_THREAD.call(fail)
    assert threads.MODEL_THREAD.call(lambda: 1) == 1  # and it goes on


def test_a_detached_stepper_is_stepped_no_more():
    class Busy:
        steps = 0

        def step(self) -> bool:
            self.steps += 1
            return True  # always more to do

    busy = Busy()
    threads.MODEL_THREAD.wake(busy)
    deadline = time.monotonic() + 30
    while busy.steps < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    threads.MODEL_THREAD.detach(busy)
    steps = busy.steps
    assert threads.MODEL_THREAD.call(lambda: busy.steps) == steps >= 3
    time.sleep(0.05)
    assert busy.steps == steps


def test_loading_encoding_and_generating_all_run_on_the_model_thread(transformers_dir, mimi_file, monkeypatch):
    """torch's OpenMP keeps a team of threads for each thread that computes; with more teams than CPUs every parallel
    region sleeps and wakes (a frame 15-20% slower on two cores), so no module of the model or Mimi runs elsewhere."""
    from csm_cli.generation import generator as generation
    from csm_cli.loading import generator as loading

    loaded_on, ran_on = [], set()
    load_model = loading.load_model

    def recorded_load(*args, **kwargs):
        loaded_on.append(threading.current_thread().name)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", recorded_load)
    engines_made_on = []

    class RecordedEngine(FrameEngine):
        def __init__(self, *args, **kwargs) -> None:
            engines_made_on.append(threading.current_thread().name)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(generation, "FrameEngine", RecordedEngine)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: ran_on.add(threading.current_thread().name))
    try:
        loaded = loading.load_generator(LoadOptions(str(transformers_dir), codec=mimi_file, device="cpu",
                                                    quantize="none"))
        beside = StreamingGenerator(loaded.model, loaded.tokenizer, loaded.codec, slots=2)  # as `csm bench` makes
        voice = Segment(1, "Hi.", audio=np.random.default_rng(0).uniform(-0.5, 0.5, 4800).astype(np.float32))
        chunks = [list(generator.stream("Hello.", context=[voice], max_seconds=0.3, seed=1, stop_at_end=False))
                  for generator in (loaded, beside)]
        loaded.close()
        beside.close()
    finally:
        hook.remove()
    assert [len(stream) for stream in chunks] == [3, 3]
    assert loaded_on == ["csm-model"]
    assert engines_made_on == ["csm-model", "csm-model"]
    assert ran_on == {"csm-model"}
