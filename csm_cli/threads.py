"""torch's CPU threads: how many it computes with (one per physical core this process may run on by default: a second
hyperthread of a core adds no bandwidth to the weight reads a frame is bound by), set once per process, before the
model runs; and the one thread that calls torch's computations (`ModelThread`)."""

import functools
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

import torch

from .errors import CsmError

_chosen: int | None = None
T = TypeVar("T")
P = ParamSpec("P")


def physical_cores() -> int:
    """The cores this process may run on, the hardware threads of one core counted once."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:  # no topology to read: count the CPU as a core
            cores.add(str(cpu))
    return len(cores)


def use_cpu_threads(threads: int | None = None) -> int:
    """Sets torch's intra-op threads to `threads` (at most the CPUs this process may run on), or, unless a count was
    set before, to one per physical core; returns the number in use.

    The model thread (`ModelThread`) is one of those threads (torch's parallel loops run on the calling thread and the
    pool), and OpenMP's count is each thread's own: it is set there, and in the calling thread, which reports it.
    Torch's inter-op pool, which csm never uses, is cut to one thread, so that nothing else competes with the model
    thread and the sound card's thread (which mostly sleeps)."""
    global _chosen
    cpus = len(os.sched_getaffinity(0))
    if threads is not None and not 1 <= threads <= cpus:
        raise CsmError(f"--threads must be a whole number from 1 to {cpus}, the CPUs this process may run on (more "
                       f"threads only take turns on them, and torch fails with thousands), got {threads}")
    if threads is None and _chosen is not None:
        return _chosen
    _chosen = threads or physical_cores()
    MODEL_THREAD.call(torch.set_num_threads, _chosen)
    torch.set_num_threads(_chosen)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
    return _chosen


class Stepper(Protocol):
    """What the model thread steps between its calls: a frame engine's scheduler (`generation.scheduler`)."""

    def step(self) -> bool:
        """Does the next piece of work, if any -> whether there is more to do."""


class ModelThread:
    """The one thread of a csm process that runs torch's computations: loading, Mimi's encodes and decodes, the
    frame engines' steps (each scheduler attached to it is stepped in turn, between the calls it runs).

    One thread, because torch's OpenMP runtime (GNU libgomp) keeps a team of threads for each thread that ever ran a
    parallel region, and once the process holds more of them than it has CPUs, every region's threads sleep and are
    woken instead of spinning: a frame loaded on one thread and generated on another took 520-554 ms against 400-488
    on two cores (README, "Several streams in one engine")."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._calls: deque[Callable[[], None]] = deque()
        self._steppers: list[Stepper] = []
        self._woken = False
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> bool:
        """Whether the calling thread is the model thread."""
        return self._thread is threading.current_thread()

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """fn(*args, **kwargs) run on the model thread, after what runs there now -> its result, or its exception
        raised here; from the model thread itself, run at once. A stop signal interrupts the wait in the main thread
        (the call goes on, unwaited for)."""
        if self.current:
            return fn(*args, **kwargs)
        result: Future[T] = Future()

        def run() -> None:
            try:
                result.set_result(fn(*args, **kwargs))
            except BaseException as error:  # handed to the caller, whatever it is
                result.set_exception(error)

        with self._ready:
            self._calls.append(run)
            self._start()
            self._ready.notify()
        return result.result()

    def wake(self, stepper: Stepper) -> None:
        """Something was given to `stepper`: step it (and from now on whenever it has work, until it is detached)."""
        with self._ready:
            if stepper not in self._steppers:
                self._steppers.append(stepper)
            self._start()
            self._woken = True
            self._ready.notify()

    def detach(self, stepper: Stepper) -> None:
        """Steps `stepper` no more: once this returns, no step of it runs or will run."""
        self.call(lambda: self._steppers.remove(stepper) if stepper in self._steppers else None)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="csm-model", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not (self._calls or self._woken):
                    self._ready.wait()
                self._woken = False
                calls, self._calls = self._calls, deque()
            for run in calls:
                run()
            busy = [stepper.step() for stepper in list(self._steppers)]
            if any(busy):
                with self._ready:
                    self._woken = True


MODEL_THREAD = ModelThread()


def on_model_thread(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn`, run on the model thread (`ModelThread.call`) whichever thread calls it."""

    @functools.wraps(fn)
    def called(*args: P.args, **kwargs: P.kwargs) -> T:
        return MODEL_THREAD.call(fn, *args, **kwargs)

    return called
