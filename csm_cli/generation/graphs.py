"""CUDA graphs of the frame engine's step: capture and replay.

The engine's step (`FrameEngine.frame_step`: the heads with sampling and the backbone step, for the first `rows`
slots) is captured once per bucket of rows (1, 2, 4, ... up to the slots) and per count of top-k candidates
(`sampling.candidates`; the default's at construction, others on first use); Mimi's decode of every slot's row
(`FrameEngine.decode_step`) once. Each reads the per-row tensors the host writes before a replay (positions,
settings, seeds, frame indices, which rows advance) and writes the engine's codes, hidden states, caches and
samples in place, so a replay runs what the eager step runs. Mimi's streaming state allows it: its offsets are device
tensors, advanced only for the rows the mask holds (moshi's host-side offsets count calls, and are read only by
weights per step, which Mimi's decoder has not). The prefill stays eager (see `engine`).
"""

from collections.abc import Callable, Sequence

import torch

from ..errors import CsmError, first_line
from .engine import FrameEngine, buckets
from .sampling import FEWEST_CANDIDATES

WARMUP_RUNS = 2  # eager runs on a side stream before a capture, so lazy initialisation happens outside the graph
MAX_SAMPLING_GRAPHS = 4  # per bucket: graphs kept for counts of candidates other than the default's


def capture(step: Callable[[], None], pool: tuple[int, int], keep: Sequence[torch.Tensor] = ()
            ) -> torch.cuda.CUDAGraph:
    """Warms `step` up on a side stream of the current device, then captures it; the tensors in `keep` hold after it
    what they held before (the warm-up runs the step for real). `step` reads and writes only tensors that outlive the
    graph, so what it allocates in `pool` is scratch: graphs that never replay concurrently can share the pool."""
    kept = [tensor.clone() for tensor in keep]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool):
                step()
        except RuntimeError as e:
            raise CsmError(f"capturing a CUDA graph failed ({first_line(e, 160)}): use --eager (fast=False in "
                           "Python)") from None
        for tensor, before in zip(keep, kept, strict=True):
            tensor.copy_(before)
    return graph


class FrameGraphs:
    """The CUDA graphs of one engine, captured at construction (seconds), replayed on the engine's thread."""

    def __init__(self, engine: FrameEngine, captured: Callable[[], None] = lambda: None) -> None:
        """Captures `count(engine.slots)` graphs, calling `captured` after each."""
        self.engine = engine
        with torch.cuda.device(engine.device):
            self._pool = torch.cuda.graph_pool_handle()
        self._steps: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        for rows in buckets(engine.slots):
            self._step_graph(rows, FEWEST_CANDIDATES)
            captured()
        with torch.cuda.device(engine.device), engine.mimi.bound():
            self._mimi = capture(engine.decode_step, self._pool)
        engine.mimi.reset()
        captured()

    @staticmethod
    def count(slots: int) -> int:
        """How many graphs construction captures: a step per bucket, and Mimi's decode."""
        return len(buckets(slots)) + 1

    def _step_graph(self, rows: int, count: int) -> torch.cuda.CUDAGraph:
        """The step of `rows` rows among `count` candidates, captured on first use (which waits for the GPU, once);
        the rows' hidden states and codes are kept through the capture's warm-up."""
        key = (rows, count)
        if key not in self._steps:
            others = [other for other in self._steps if other[0] == rows and other[1] != FEWEST_CANDIDATES]
            if len(others) == MAX_SAMPLING_GRAPHS:
                del self._steps[others[0]]
            engine = self.engine
            with torch.cuda.device(engine.device):
                self._steps[key] = capture(lambda: engine.frame_step(rows, count, None), self._pool,
                                           keep=(engine.last_h, engine.codes))
        return self._steps[key]

    def replay(self, rows: int, count: int) -> None:
        """The step of the first `rows` slots, then Mimi's decode of the rows advancing."""
        self._step_graph(rows, count).replay()
        self._mimi.replay()
