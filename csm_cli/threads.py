"""How many threads torch computes with on the CPU: one per physical core this process may run on (a second
hyperthread of a core adds no bandwidth to the weight reads a frame is bound by), set once per process."""

import os
from pathlib import Path

import torch

_chosen: int | None = None


def physical_cores() -> int:
    """The distinct (package, core) pairs among the CPUs this process may run on; the CPU count if unknown."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text(), topology.joinpath("core_id").read_text()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def set_threads(count: int | None = None) -> int:
    """Sets torch's threads to `count`, or to the physical cores unless a count was set before; returns it."""
    global _chosen
    if count is None and _chosen is not None:
        return _chosen
    _chosen = count or physical_cores()
    torch.set_num_threads(_chosen)
    return _chosen
