"""The CPU emulation of CUDA graphs that test_graphs_emulated.py relies on fails where a real graph would."""

import pytest
import torch
from emulated_graph import EmulatedGraph, HostSyncInCapture


def test_a_replay_reads_and_writes_the_tensors_of_the_capture():
    state = {"x": torch.zeros(2)}
    out = torch.zeros(2)

    def step() -> None:
        state["x"].add_(1)
        out.copy_(state["x"] * 2)

    graph = EmulatedGraph(step)
    assert state["x"].tolist() == [0, 0] and out.tolist() == [0, 0]  # the capture leaves no trace
    graph.replay()
    graph.replay()
    assert out.tolist() == [4, 4]
    state["x"] = torch.full((2,), 10.0)  # rebound, as a streaming state must never be
    graph.replay()
    assert out.tolist() == [6, 6]


def test_host_values_are_frozen_at_capture():
    calls = []
    out = torch.zeros(1)

    def step() -> None:
        calls.append(1)
        out.fill_(len(calls))

    graph = EmulatedGraph(step)
    graph.replay()
    graph.replay()
    assert out.item() == 1


@pytest.mark.parametrize("read", [
    lambda x: x.sum().item(),
    lambda x: bool(x.any()),
    lambda x: x.nonzero(),
    lambda x: x[x > 0],
    lambda x: x.__setitem__(x > 0, 0),
])
def test_reading_a_device_value_fails_the_capture(read):
    x = torch.ones(3)
    with pytest.raises(HostSyncInCapture):
        EmulatedGraph(lambda: read(x))
