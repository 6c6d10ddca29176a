"""Frames of several streams generated together: one step samples a frame for every stream in the batch and feeds it
back through the backbone, so the weights are read once per step, not once per stream.

A batch has a fixed number of slots. The backbone's KV caches have a row per slot; each stream in a slot has its own
position (prompts of different lengths), sampling settings and RNG, so its codes do not depend on which streams share
its batch: they are those the single-stream path samples for the same seed. Row by row the computation is the same,
but a product of several rows may round differently from one row's (float32 on a CPU, by about 1e-7; bfloat16 and
int8 products round alike here), which changes a code only at a near tie. Streams join and leave between
steps; a slot a stream left is free for the next. A slot keeps the record of the rows its caches hold (`CachedRows`),
and a joining stream takes the free slot that holds the longest prefix of its prompt, which it is not prefilled
again (a voice prompt, say).

A joining stream's prompt is prefilled alone, on its slot's row of the caches, by the steps: the next step prefills
every stream that joined when no stream is sampling (streams that arrive together all take part in their first
step), and otherwise a chunk of `prefill_rows` rows of the first stream that joined, so that the streams sampling
are held up by a chunk at a time, not by a whole long prompt. A stream samples in the step that prefills its
prompt's last row.

A step computes the first slots only, as many as the smallest power of two that holds every stream still sampling
(a few fixed shapes, as CUDA graphs per batch size would want), so a lone stream in a large batch costs what it
costs alone; a joining stream takes the lowest free slot (unless another holds more of its prompt). Idle slots
among them ride along: their rows write past what their record holds and sample nothing. The step runs eagerly.
"""

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CsmError
from .codec import Codec
from .model import CSM, SHORTEST_PREFILL, CachedRows, KVCache, reused_rows, sample_topk
from .prompt import frame_row


@dataclass
class _Stream:
    """A stream in a slot: its sampling settings, its RNG, and the position its next frame's row is written at."""

    topk: int
    temperature: float
    rng: torch.Generator
    position: int
    frames_left: int
    tokens: torch.Tensor  # the prompt rows [S, C+1]
    mask: torch.Tensor
    prefilled: int  # how many of them the slot's caches hold; all (S) once it samples


# The prompt rows prefilled in a step while other streams sample. On a 2-core CPU (int8) 64 rows take 2.6 s, about
# three steps of one stream (each row costs about as much as the next: prefill is bound by arithmetic there); on
# CUDA, a guess to measure: a prefill of 1,024 rows should take about as long as one eager step of the batch
PREFILL_ROWS = {"cpu": 64, "cuda": 1024}


class FrameBatch:
    def __init__(self, model: CSM, slots: int, graph_shapes: bool = False, prefill_rows: int | None = None) -> None:
        """Caches for `slots` streams of `model`. `graph_shapes`: prefill padded and attend over the whole window,
        as the generator's eager path does on CUDA (`StreamingGenerator.graph_shapes`). `prefill_rows`: the chunk
        of a prompt prefilled in a step while other streams sample (a power of two from 64; by default
        `PREFILL_ROWS` for the device)."""
        assert slots >= 1, slots
        self.model = model
        self.slots = slots
        self.graph_shapes = graph_shapes
        self.device = model.audio_head.device
        self.prefill_rows = prefill_rows or PREFILL_ROWS[self.device.type]
        # chunks of a power of two from 64 rows, from where the prompt's prefill starts, fit the window padded as
        # the prompt's rest does (`reused_rows`): each is `prefill_length` rows, and the last ends within the rest's
        assert self.prefill_rows >= SHORTEST_PREFILL and self.prefill_rows.bit_count() == 1, self.prefill_rows
        _check_memory(model, slots, self.device)
        self._caches = model.backbone.new_caches(slots)
        self._slot_caches = [[cache.row(slot) for cache in self._caches] for slot in range(slots)]
        self._bucket_caches: dict[int, tuple[list[KVCache], list[KVCache]]] = {}
        self.rows = [model.cached_rows.empty_like() for _ in range(slots)]
        self._streams: list[_Stream | None] = [None] * slots
        self._joining: deque[int] = deque()  # the slots whose prompt is being prefilled, first joined first
        self.sampled: list[int] = []  # the slots that sampled a frame in the last step
        self._last_h = torch.zeros(slots, model.args.backbone.dim, dtype=model.audio_head.dtype, device=self.device)

    @property
    def active(self) -> list[int]:
        """The slots that hold a stream."""
        return [slot for slot, stream in enumerate(self._streams) if stream is not None]

    @property
    def free(self) -> list[int]:
        return [slot for slot, stream in enumerate(self._streams) if stream is None]

    @property
    def prefilling(self) -> list[int]:
        """The slots whose stream's prompt is being prefilled, first joined first."""
        return list(self._joining)

    @property
    def sampling(self) -> list[int]:
        """The slots whose stream samples a frame in the next step: its prompt is prefilled and it has frames left."""
        return [slot for slot, stream in enumerate(self._streams) if _samples(stream)]

    def join(self, tokens: torch.Tensor, mask: torch.Tensor, frames: int, topk: int, temperature: float, seed: int,
             reuse_prefix: bool = True) -> int:
        """Takes a free slot for a stream whose prompt rows are `tokens`, `mask` [S, C+1] and returns it; its prompt
        is prefilled by the next steps, its first frame comes with the step that prefills its last row, and its last
        frame with the `frames`-th, after which it samples nothing until it leaves."""
        assert 0 < frames <= self.model.max_seq_len - len(tokens), "the prompt and its frames must fit the window"
        free = self.free
        assert free, "every slot holds a stream: leave one first"
        held = {slot: self.rows[slot].common_prefix(tokens, mask) for slot in free} if reuse_prefix else {free[0]: 0}
        slot = max(held, key=held.__getitem__)  # the slot that holds most of the prompt, the lowest of those
        start = reused_rows(held[slot], len(tokens), self.model.max_seq_len, self.graph_shapes)
        rng = torch.Generator(device=self.device).manual_seed(seed)
        self._streams[slot] = _Stream(topk, temperature, rng, len(tokens), frames, tokens, mask, start)
        self._joining.append(slot)
        return slot

    def leave(self, slot: int) -> None:
        """Frees the slot; what its caches hold stays there for a prompt that starts the same way."""
        assert self._streams[slot] is not None, f"slot {slot} holds no stream"
        self._streams[slot] = None
        if slot in self._joining:
            self._joining.remove(slot)

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """Prefills what this step takes of the joining streams' prompts, then samples the next frame of every
        stream in `sampling` and feeds it back through the backbone -> codes [slots, C]; the other slots' rows are
        zeros."""
        self._prefill(everything=not self.sampling)
        sampling = self.sampled = self.sampling
        assert sampling, "no stream to step"
        computed = min(self.slots, 1 << max(sampling).bit_length())  # a power of two above the last sampling slot
        caches, decoder_caches = self._caches_of(computed)
        with self._using(caches, self.model.cached_rows, decoder_caches):  # slot records below
            codes = self.model.frame_codes(self._last_h[:computed], self._sample)  # [computed, C]
            positions = [self._position(slot) for slot in range(computed)]
            row, row_mask = frame_row(codes)  # [computed, 1, C+1]
            input_pos = torch.tensor(positions, device=self.device).unsqueeze(1)  # [computed, 1]
            attend = None if self.graph_shapes else max(positions) + 1
            self._last_h[:computed] = self.model.backbone_step(row, row_mask, input_pos, attend)
        host_tokens, host_mask = row[:, 0].cpu(), row_mask[:, 0].cpu()  # [computed, C+1]
        for slot, (stream, rows, position) in enumerate(zip(self._streams, self.rows, positions, strict=False)):
            rows.clear_from(position)
            if _samples(stream):
                rows.wrote(position, host_tokens[slot : slot + 1], host_mask[slot : slot + 1])
                stream.position += 1
                stream.frames_left -= 1
        return torch.cat([codes, codes.new_zeros(self.slots - computed, codes.shape[1])])

    def _prefill(self, everything: bool) -> None:
        """Every joining stream's whole prompt, or the next chunk of `prefill_rows` rows of the first one's."""
        for slot in list(self._joining)[: None if everything else 1]:
            stream = self._streams[slot]
            assert stream is not None
            start, rows = stream.prefilled, len(stream.tokens)
            end = rows if everything else min(rows, start + self.prefill_rows)
            with self._using(self._slot_caches[slot], self.rows[slot], self.model.decoder.caches()):
                last_h = self.model.prefill(stream.tokens[start:end], stream.mask[start:end], start,
                                            padded=self.graph_shapes)
            stream.prefilled = end
            if end == rows:
                self._last_h[slot] = last_h[0]
                self._joining.remove(slot)

    def _caches_of(self, computed: int) -> tuple[list[KVCache], list[KVCache]]:
        """The backbone's caches of the first `computed` slots (views), and depth decoder caches of that size."""
        if computed not in self._bucket_caches:
            backbone = [KVCache(cache.k[:computed], cache.v[:computed]) for cache in self._caches]
            self._bucket_caches[computed] = backbone, self.model.decoder.new_caches(computed)
        return self._bucket_caches[computed]

    def _position(self, slot: int) -> int:
        """Where the slot's row goes in this step: the stream's next position, or, for a slot that samples nothing,
        past the rows its record holds (the last position when they fill the window, which the step then takes
        from the record)."""
        stream = self._streams[slot]
        if not _samples(stream):
            return min(self.rows[slot].length, self.model.max_seq_len - 1)
        return stream.position

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] of the first n slots -> codes [n, 1], each stream's row sampled as the single-stream path
        samples it, from its own RNG; idle slots get 0."""
        codes = torch.zeros(len(logits), 1, dtype=torch.long, device=logits.device)
        for slot, stream in enumerate(self._streams[: len(logits)]):
            if _samples(stream):
                codes[slot] = sample_topk(logits[slot : slot + 1], stream.topk, stream.temperature, stream.rng)[0]
        return codes

    @contextmanager
    def _using(self, caches: list[KVCache], rows: CachedRows, decoder_caches: list[KVCache]) -> Iterator[None]:
        """Points the model at these caches and record of rows, and back at its own after."""
        model = self.model
        before = model.backbone.caches(), model.cached_rows, model.decoder.caches()
        model.backbone.use_caches(caches)
        model.cached_rows = rows
        model.decoder.use_caches(decoder_caches)
        try:
            yield
        finally:
            model.backbone.use_caches(before[0])
            model.cached_rows = before[1]
            model.decoder.use_caches(before[2])


class SpeechBatch:
    """A `FrameBatch` whose frames Mimi decodes together, each utterance on its slot's row of Mimi's streaming state
    (`DecodeStreams`). Each utterance is an iterator of its decoded frames (`utterance`), which may be iterated
    interleaved with the others on one thread: taking a frame steps the batch when none is queued for it, and each
    step queues a frame for every utterance in the batch. `steps` counts the steps, so that a caller stepping several
    utterances in turn can take what is queued before stepping again."""

    def __init__(self, model: CSM, codec: Codec, slots: int, graph_shapes: bool = False) -> None:
        self.frames = FrameBatch(model, slots, graph_shapes)
        self.decoder = codec.decode_streams(slots)
        self.steps = 0
        self._queues: list[deque[tuple[torch.Tensor, np.ndarray]]] = [deque() for _ in range(slots)]

    def utterance(self, tokens: torch.Tensor, mask: torch.Tensor, frames: int, topk: int, temperature: float,
                  seed: int, stop_at_end: bool, reuse_prefix: bool = True) -> "UtteranceFrames":
        """Joins the batch with the prompt rows `tokens`, `mask` [S, C+1] (prefilled by the next steps) -> the
        utterance's frames, until the all-zero end-of-speech frame (unless `stop_at_end` is False) or its `frames`."""
        slot = self.frames.join(tokens, mask, frames, topk, temperature, seed, reuse_prefix)
        self.decoder.reset(slot)
        return UtteranceFrames(self, slot, self._queues[slot], frames, stop_at_end)

    def step(self) -> None:
        """One step of the batch: a frame queued for every utterance sampling, and what the step prefills."""
        codes = self.frames.step()  # [slots, C]
        sampled = self.frames.sampled
        samples = self.decoder.decode(codes.unsqueeze(2), sampled)  # [slots, 1920]
        self.steps += 1
        for slot in sampled:
            self._queues[slot].append((codes[slot], samples[slot]))


class UtteranceFrames(Iterator[tuple[torch.Tensor, np.ndarray]]):
    """An utterance in a `SpeechBatch`: iterating yields the codes [C] and samples of each of its frames, stepping the
    batch when none is queued. It leaves the batch, freeing its slot, when it ends or is closed (or collected)."""

    def __init__(self, batch: SpeechBatch, slot: int, queue: deque[tuple[torch.Tensor, np.ndarray]], frames: int,
                 stop_at_end: bool) -> None:
        self.batch = batch
        self._slot = slot
        self._queue = queue  # the frames the batch's steps queued for the slot
        self._frames_left = frames
        self._stop_at_end = stop_at_end
        self._left = False

    @property
    def prefilling(self) -> bool:
        """Whether its prompt is still being prefilled: taking a frame now waits for the steps that prefill it."""
        return not self._left and self._slot in self.batch.frames.prefilling

    def __next__(self) -> tuple[torch.Tensor, np.ndarray]:
        if self._left or not self._frames_left:
            self.close()
            raise StopIteration
        while not self._queue:
            self.batch.step()
        codes, samples = self._queue.popleft()
        self._frames_left -= 1
        if self._stop_at_end and not codes.any():
            self.close()
            raise StopIteration
        return codes, samples

    def close(self) -> None:
        if not self._left:
            self._left = True
            self._queue.clear()
            self.batch.frames.leave(self._slot)

    def __del__(self) -> None:
        self.close()


def _check_memory(model: CSM, slots: int, device: torch.device) -> None:
    """Refuses, with CsmError, a batch whose backbone caches would not fit the memory free now: they are allocated
    and zeroed up front, and on a CPU an allocation past the memory there is ends the process, not in an error."""
    per_slot = sum(cache.k[:1].nbytes + cache.v[:1].nbytes for cache in model.backbone.caches())
    free = _free_memory(device)
    if free is not None and slots * per_slot > free:
        raise CsmError(f"the KV caches of {slots} streams take {slots * per_slot / 2**30:.1f} GiB, more than the "
                       f"{free / 2**30:.1f} GiB of memory free on {device.type}: generate fewer streams at once")


def _free_memory(device: torch.device) -> int | None:
    """Bytes free on the device (on a CPU, Linux's MemAvailable); None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _samples(stream: _Stream | None) -> bool:
    return stream is not None and stream.prefilled == len(stream.tokens) and stream.frames_left > 0
