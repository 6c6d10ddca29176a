"""How many CPU threads torch computes with: one per physical core this process may run on by default (a second
hyperthread of a core adds no bandwidth to the weight reads a frame is bound by), set once per process, before the
model runs."""

import os
from pathlib import Path

import torch

from .errors import CsmError

_chosen: int | None = None


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

    The model thread is one of those threads (torch's parallel loops run on the calling thread and the pool). Torch's
    inter-op pool, which csm never uses, is cut to one thread, so that nothing else competes with the model thread and
    the sound card's thread (which mostly sleeps)."""
    global _chosen
    cpus = len(os.sched_getaffinity(0))
    if threads is not None and not 1 <= threads <= cpus:
        raise CsmError(f"--threads must be a whole number from 1 to {cpus}, the CPUs this process may run on (more "
                       f"threads only take turns on them, and torch fails with thousands), got {threads}")
    if threads is None and _chosen is not None:
        return _chosen
    _chosen = threads or physical_cores()
    torch.set_num_threads(_chosen)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
    return _chosen
