"""The fast path on CUDA: every frame replayed as CUDA graphs over static buffers, Mimi's decode included.

Per utterance, a prefill graph runs the prompt through the backbone: the prompt's rows that the cache does not hold
yet (`CachedRows`), from the position where they start, padded with empty rows to one of a few lengths
(`model.prefill_length`), each captured once; the eager path on CUDA pads the same way, so both run the same shapes
and sample the same codes.

Per frame, three graphs replay back to back on the generating thread's stream:
- backbone: the previous frame's codes as the next row -> the backbone at one position -> its last hidden state;
- heads: codebook 0 from its head, codebooks 1..31 from the depth decoder (`CSM.sample_frame`) -> the frame's codes
  and whether they are all zero (end of speech). The generator's RNG is registered with the graph, so a replay
  draws the same numbers as the eager path;
- mimi: Mimi's streaming decode of those codes -> 1920 samples.
After the prefill, heads and mimi replay for the first frame.

After each frame its codes, samples and end-of-speech flag are copied to pinned host memory and an event is
recorded. The host waits for frame N only once frame N+1 is queued, so the GPU never idles on the host between
frames; a frame queued past the end of speech (the end frame, or silence seen in the host copies) is dropped.
"""

from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..audio import SAMPLES_PER_FRAME
from ..errors import CsmError, first_line
from .codec import Codec
from .model import CSM, pad_prompt, prefill_length, prefill_lengths
from .prompt import frame_row

WARMUP_RUNS = 2  # eager runs on a side stream before a capture, so lazy initialisation happens outside the graph
MAX_SAMPLING_GRAPHS = 4  # heads graphs kept, one per (topk, temperature): both are constants inside the graph


def capture(step: Callable[[], None], pool: tuple[int, int], generator: torch.Generator | None = None
            ) -> torch.cuda.CUDAGraph:
    """Warms `step` up on a side stream of the current device, then captures it. `step` reads and writes only
    tensors that outlive the graph, so what it allocates in `pool` is scratch: graphs that never replay concurrently
    can share the pool in any order. A generator that `step` samples from is registered with the graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            graph.register_generator_state(generator)
        try:
            with torch.cuda.graph(graph, pool=pool):
                step()
        except RuntimeError as e:
            raise CsmError(f"capturing a CUDA graph failed ({first_line(e, 160)}): use --eager (fast=False in "
                           "Python)") from None
    return graph


def _streaming_parts(module: nn.Module | None) -> list[nn.Module]:
    """The outermost moshi streaming modules in `module`."""
    from moshi.modules.streaming import StreamingModule

    if module is None:
        return []
    if isinstance(module, StreamingModule):
        return [module]
    return [part for child in module.children() for part in _streaming_parts(child)]


class GraphedMimi:
    """Mimi's streaming decode of one frame as a CUDA graph, reading the codes in `codes` [1, C].

    The decoder side's streaming state (upsampling, transformer, SEANet decoder) is allocated once and reset in
    place for each utterance, so the graph's addresses stay valid; Mimi itself is not left streaming, so its encoder
    still encodes context audio whole. Like `Codec`: `decode_chunk` inside `streaming()`."""

    def __init__(self, codec: Codec, codes: torch.Tensor, pool: tuple[int, int]) -> None:
        mimi = codec.mimi
        self._codec = codec
        self._codes = codes
        self._parts = [part for name in ("upsample", "decoder_transformer", "decoder")
                       for part in _streaming_parts(getattr(mimi, name, None))]
        with ExitStack() as allocate:
            for part in self._parts:
                allocate.enter_context(part.streaming(1))
            self._states = [part.get_streaming_state() for part in self._parts]
        self.samples = torch.zeros(SAMPLES_PER_FRAME, device=codec.device)
        with self.streaming():
            self._graph = capture(self._decode, pool)

    def _decode(self) -> None:
        pcm = self._codec.mimi.decode(self._codec.mimi_input(self._codes.T))  # [1, 1, 1920]
        self.samples.copy_(pcm[0, 0])

    def replay(self) -> None:
        self._graph.replay()

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Scope of one utterance's decode: the state is reset on entry and detached from Mimi on exit."""
        for part, state in zip(self._parts, self._states, strict=True):
            part.set_streaming_state(state)
            part.reset_streaming()
        try:
            yield
        finally:
            for part, state in zip(self._parts, self._states, strict=True):
                part.set_streaming_state(dict.fromkeys(state))

    def decode_chunk(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [C, n] of the next n frames -> n * 1920 samples, continuing the stream's state. Not while frames
        are being generated: it writes the codes buffer the frame graphs share."""
        chunk = []
        for frame in codes.T:
            self._codes[0].copy_(frame)
            self.replay()
            chunk.append(self.samples.clone())
        return torch.cat(chunk).cpu().numpy()


@dataclass(frozen=True)
class _Prefill:
    """The prefill graph of one padded length, reading the rows in its own buffers."""

    rows: torch.Tensor  # [1, L, C+1]
    rows_mask: torch.Tensor  # [1, L, C+1]
    graph: torch.cuda.CUDAGraph


@dataclass(frozen=True)
class _HostFrame:
    """Pinned host copies of one frame's outputs; valid once `ready` has completed."""

    codes: torch.Tensor  # [1, C]
    samples: torch.Tensor  # [1920]
    end: torch.Tensor  # [] all codes zero
    ready: torch.cuda.Event


class FrameGraphs:
    """The CUDA graphs of one model and codec, captured at construction (seconds), for one generating thread.

    Thread-local state (inference mode, current device) is set inside each call, never across a yielded frame."""

    def __init__(self, model: CSM, codec: Codec, rng: torch.Generator, topk: int, temperature: float,
                 captured: Callable[[], None] = lambda: None) -> None:
        """Captures `count(model)` graphs, calling `captured` after each."""
        self.model = model
        self.rng = rng
        self.device = model.audio_head.device
        num_codebooks = model.args.num_codebooks
        self.codes = torch.zeros(1, num_codebooks, dtype=torch.long, device=self.device)  # the last frame's
        self.last_h = torch.zeros(1, model.args.backbone.dim, dtype=model.audio_head.dtype, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)  # of the next backbone step
        self.start = torch.zeros(1, dtype=torch.long, device=self.device)  # of the rows prefilled
        self.last_row = torch.zeros(1, dtype=torch.long, device=self.device)  # of those rows, before their padding
        self.end = torch.zeros((), dtype=torch.bool, device=self.device)
        self._host = [
            _HostFrame(
                codes=torch.zeros(1, num_codebooks, dtype=torch.long, pin_memory=True),
                samples=torch.zeros(SAMPLES_PER_FRAME, pin_memory=True),
                end=torch.zeros((), dtype=torch.bool, pin_memory=True),
                ready=torch.cuda.Event(),
            )
            for _ in range(2)
        ]
        with torch.cuda.device(self.device):
            self._pool = torch.cuda.graph_pool_handle()
            self._prefills = {}
            for length in prefill_lengths(model.max_seq_len):
                self._prefills[length] = self._prefill_graph(length)
                captured()
            self._backbone = capture(self._backbone_step, self._pool)
            captured()
            self._heads: dict[tuple[int, float], torch.cuda.CUDAGraph] = {}
            self._heads_graph(topk, temperature)
            captured()
            self.mimi = GraphedMimi(codec, self.codes, self._pool)
            captured()

    @staticmethod
    def count(model: CSM) -> int:
        """How many graphs construction captures: the prefills, the backbone step, the heads and Mimi."""
        return len(prefill_lengths(model.max_seq_len)) + 3

    def _prefill_graph(self, length: int) -> _Prefill:
        width = self.model.args.num_codebooks + 1
        rows = torch.zeros(1, length, width, dtype=torch.long, device=self.device)
        rows_mask = torch.zeros(1, length, width, dtype=torch.bool, device=self.device)

        def prefill() -> None:
            self.last_h.copy_(self.model.prefill_padded(rows, rows_mask, self.start, self.last_row))

        return _Prefill(rows, rows_mask, capture(prefill, self._pool))

    def _backbone_step(self) -> None:
        rows, rows_mask = frame_row(self.codes)
        self.last_h.copy_(self.model.backbone_step(rows, rows_mask, self.position))
        self.position.add_(1)

    def _heads_graph(self, topk: int, temperature: float) -> torch.cuda.CUDAGraph:
        """The heads graph of these sampling settings, captured on first use (which waits for the GPU, once)."""
        key = (topk, temperature)
        if key not in self._heads:
            if len(self._heads) == MAX_SAMPLING_GRAPHS:
                del self._heads[next(iter(self._heads))]

            def heads() -> None:
                codes = self.model.sample_frame(self.last_h, topk, temperature, self.rng)
                self.codes.copy_(codes)
                torch.logical_not(codes.any(), out=self.end)

            with torch.cuda.device(self.device):
                self._heads[key] = capture(heads, self._pool, self.rng)
        return self._heads[key]

    def frames(self, tokens: torch.Tensor, mask: torch.Tensor, start: int, max_frames: int, topk: int,
               temperature: float, seed: int, stop_at_end: bool) -> Generator[tuple[torch.Tensor, np.ndarray]]:
        """Codes [C] (host copies) and samples of each frame, from the prompt's rows [S, C+1] whose first `start` are
        in the cache already, until the all-zero end-of-speech frame (unless `stop_at_end` is False) or the frame
        budget. The generator ends an utterance on silence from these host copies (`ending.until_silence`), as on
        the eager path. A frame's row is recorded in the cache's `CachedRows` once the host has its codes."""
        heads = self._heads_graph(topk, temperature)
        cached_rows = self.model.cached_rows
        with self.mimi.streaming():
            self._prefill(tokens, mask, start, seed, heads)
            for n in range(max_frames):
                if n + 1 < max_frames:
                    self._backbone.replay()
                    self._queue_heads(heads, self._host[(n + 1) % 2])
                host = self._host[n % 2]
                host.ready.synchronize()
                if n + 1 < max_frames:
                    cached_rows.wrote(len(tokens) + n, *(part[0] for part in frame_row(host.codes)))
                if stop_at_end and host.end:
                    return
                yield host.codes[0].clone(), host.samples.numpy().copy()

    @torch.inference_mode()
    def _prefill(self, tokens: torch.Tensor, mask: torch.Tensor, start: int, seed: int,
                 heads: torch.cuda.CUDAGraph) -> None:
        """Fresh RNG (and caches, unless `start` rows are kept), the prompt's rows from `start` through the prefill
        graph of their padded length, and the first frame queued."""
        tokens, mask, rows_count = tokens[start:], mask[start:], len(tokens)
        prefill = self._prefills[prefill_length(len(tokens), self.model.max_seq_len)]
        rows, rows_mask = pad_prompt(tokens, mask, prefill.rows.shape[1])
        prefill.rows.copy_(rows)
        prefill.rows_mask.copy_(rows_mask)
        self.start.fill_(start)
        self.last_row.fill_(len(tokens) - 1)
        if start == 0:
            self.model.reset_caches()
        self.rng.manual_seed(seed)
        prefill.graph.replay()
        self.model.cached_rows.wrote(start, tokens, mask)
        self.position.fill_(rows_count)
        self._queue_heads(heads, self._host[0])

    def _queue_heads(self, heads: torch.cuda.CUDAGraph, host: _HostFrame) -> None:
        """Queues heads and Mimi for the hidden state in `last_h`, then the copy of the frame to `host`."""
        heads.replay()
        self.mimi.replay()
        host.codes.copy_(self.codes, non_blocking=True)
        host.samples.copy_(self.mimi.samples, non_blocking=True)
        host.end.copy_(self.end, non_blocking=True)
        host.ready.record(torch.cuda.current_stream(self.device))
