"""The frame engine: the one place frames are generated. Every stream, a lone `csm say` as the streams of a server,
takes a slot of an engine, and each step samples the next frame of every stream in it and feeds it back through
the backbone, so the weights are read once per step, not once per stream.

- Slots: the backbone's KV caches have a row per slot, each slot a record of the rows its caches hold
  (`CachedRows`). A joining stream takes the free slot that holds the longest prefix of its prompt (a voice prompt,
  the conversation so far), and is prefilled from its first row not held.
- Prefill: a joining stream's prompt is prefilled alone, on its slot's row, by the steps that follow: all of it by
  the next step when no stream is sampling (streams that join together sample together from their first frame),
  otherwise `prefill_rows` rows a step, so that a long prompt holds up the streams sampling a chunk at a time. The
  prefill runs eagerly: a prompt is one pass of large products, whose kernel launches cost little beside them; on
  CUDA it is padded to `prefill_length` rows so that its shapes stay few.
- Voice rows: a prompt's leading rows of voice prompts (`Prompt.voice_rows`), the same for each utterance, are
  prefilled as a pass of their own, in one step, unless the slot holds them; their keys and values are kept between
  processes (`VoiceRowsCache`, the cache's `voice-rows`) and read back instead of prefilled. Both ways the rest of
  the prompt is prefilled on the same keys and values, so a cached voice gives exactly the codes of a fresh one.
- The step (`frame_step`): codebook 0 and the depth decoder's codebooks sampled for the first `rows` slots (a bucket:
  the smallest power of two that holds every slot sampling, so a lone stream costs what it costs alone), each row
  with its own settings, seed and frame index (`sampling`: no generator state), then the frame fed back through the
  backbone at each row's own position. A slot that samples nothing writes its row at the scratch position past the
  window, which nothing reads. Every per-row value is a device tensor the host writes before the step, so the step
  is a function of tensors with fixed shapes: on CUDA it replays as a CUDA graph per bucket (`graphs`); on a CPU its
  depth decoder's passes may run compiled by torch.compile (`compiled`).
- Mimi decodes the frames of the slots sampling, each on its row of Mimi's streaming state (`MimiDecoder`).
- Ends: a stream has at most its frame budget (`ending.frame_budget`); with `stop_at_end` it ends at the model's
  all-zero frame or after a stretch of silence (`ending.SilenceRule`). On CUDA the host reads a step's frames only
  once the next step is queued, from pinned copies (so the GPU never waits on the host between frames), and a
  frame queued past a stream's end is dropped.
- A stream's codes depend on its prompt, settings and seed only: not on the batch, the bucket, the slot, when it
  joined, or eager versus graphed. A product of several rows may round differently from one row's in float32 (about
  1e-7), which changes a code only at a near tie.
"""

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..audio import SAMPLES_PER_FRAME
from ..errors import CsmError
from .codec import Codec
from .ending import SilenceRule
from .model import CSM, SHORTEST_PREFILL, reused_rows
from .prompt import frame_row
from .sampling import FrameSampler, RowSampling, candidates, code_counters, seed_halves

# The prompt rows prefilled in a step while other streams sample. On a 2-core CPU (int8) 64 rows take 2.6 s, about
# three steps of one stream (each row costs about as much as the next: prefill is bound by arithmetic there); on
# CUDA, a guess to measure: a prefill of 1,024 rows should take about as long as one eager step of the batch
PREFILL_ROWS = {"cpu": 64, "cuda": 1024}


@dataclass(frozen=True)
class Prompt:
    """What a stream asks of the engine: its prompt rows, how many frames it may take and how they are sampled."""

    tokens: torch.Tensor  # [S, C+1], on the host
    mask: torch.Tensor  # [S, C+1]
    frames: int  # the most frames: its budget
    topk: int
    temperature: float
    seed: int  # 0..2^64-1
    stop_at_end: bool  # end at the model's all-zero frame and on silence, not only at the budget
    voice_rows: int = 0  # how many of the first rows are voice prompts, the same for every utterance: cached


class VoiceRowsCache(Protocol):
    """The backbone's keys and values of voice rows, kept between processes (`loading.voice_rows`)."""

    def read(self, tokens: torch.Tensor, mask: torch.Tensor, shape: torch.Size,
             dtype: torch.dtype) -> torch.Tensor | None:
        """The keys and values [layers, 2, K, S, E] prefilled from rows tokens, mask [S, C+1] at position 0, if
        cached."""

    def write(self, tokens: torch.Tensor, mask: torch.Tensor, keys_values: torch.Tensor) -> None:
        """Keeps the keys and values [layers, 2, K, S, E] those rows were prefilled to."""


@dataclass(frozen=True)
class Frame:
    codes: np.ndarray  # [C] int64
    samples: np.ndarray  # [1920] float32


@dataclass(frozen=True)
class Delivery:
    """What a step gives one stream: the frames that are its to play (the end-of-speech rule may hold some back or
    drop some), and whether the stream has ended, its slot freed."""

    owner: Hashable
    frames: list[Frame]
    ended: bool


@dataclass(eq=False)
class _Stream:
    """A stream in a slot."""

    owner: Hashable
    prompt: Prompt
    slot: int
    prefilled: int  # how many prompt rows the slot's caches hold; all once it samples
    voice_rows: int  # the prompt's voice rows still to prefill as a pass of their own (or read back); else 0
    queued: int = 0  # frames sampled by the steps queued
    taken: int = 0  # frames the host has read
    silence: SilenceRule = field(default_factory=SilenceRule)

    @property
    def samples(self) -> bool:
        """Whether the next step samples a frame of it: its prompt is prefilled and it has frames left."""
        return self.prefilled == len(self.prompt.tokens) and self.queued < self.prompt.frames


@dataclass(frozen=True)
class _QueuedStep:
    """A step whose frames the host has not read yet: which stream each sampled slot held, and host copies of the
    codes and samples (on CUDA pinned, valid once `ready` has completed)."""

    sampled: list[_Stream]
    codes: torch.Tensor  # [slots, C]
    samples: torch.Tensor  # [slots, 1920]
    ready: "torch.cuda.Event | None"


class CachedRows:
    """Which rows (tokens and mask [C+1] each) a slot's KV caches hold, in order from position 0: prompt rows, then
    the generated frames fed back. A record kept beside the caches on the host, so that comparing the next prompt
    with it never waits for the device."""

    def __init__(self, positions: int, width: int) -> None:
        self.tokens = torch.zeros(positions, width, dtype=torch.long)
        self.mask = torch.zeros(positions, width, dtype=torch.bool)
        self.length = 0

    def clear(self) -> None:
        self.length = 0

    def common_prefix(self, tokens: torch.Tensor, mask: torch.Tensor) -> int:
        """How many of the first rows of tokens, mask [S, C+1] the caches already hold."""
        n = min(self.length, len(tokens))
        same = ((self.tokens[:n] == tokens[:n].cpu()) & (self.mask[:n] == mask[:n].cpu())).all(dim=1)
        return n if bool(same.all()) else int(same.logical_not().int().argmax())

    def clear_from(self, position: int) -> None:
        """Rows from `position` on are being overwritten."""
        self.length = min(self.length, position)

    def wrote(self, start: int, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Rows tokens, mask [S, C+1] were written at positions start..start+S-1; what lay after them is stale."""
        assert start <= self.length, "rows written past a gap"
        end = start + len(tokens)
        self.tokens[start:end] = tokens.cpu()
        self.mask[start:end] = mask.cpu()
        self.length = end


def buckets(slots: int) -> list[int]:
    """The row counts a step computes: powers of two below `slots`, and `slots`."""
    return sorted({min(slots, 1 << n) for n in range(slots.bit_length() + 1)})


class FrameEngine:
    def __init__(self, model: CSM, codec: Codec, slots: int = 1, graphed: bool = False,
                 prefill_rows: int | None = None, lookahead: int | None = None,
                 captured: Callable[[], None] = lambda: None, compiled: bool = False,
                 voice_cache: VoiceRowsCache | None = None) -> None:
        """Caches for `slots` streams of `model`, Mimi's decode of them by `codec`. `graphed`: replay each step as
        CUDA graphs (captured here, calling `captured` after each; see `graphs.FrameGraphs.count`). `compiled`: on a
        CPU, run the depth decoder's passes compiled by torch.compile (compiled here: `compiled.compile_step`; its
        seconds in `compile_s`, None when it failed and the step runs eagerly). `prefill_rows`:
        the chunk of a prompt prefilled in a step while other streams sample (a power of two from 64; by default
        `PREFILL_ROWS` for the device). `lookahead`: the steps queued before the host reads a step's frames (by
        default 1 on CUDA, 0 on a CPU, where a step is done when it returns). `voice_cache`: where the prompts'
        voice rows are kept between processes (none: they are prefilled in each)."""
        assert slots >= 1, slots
        self.model = model
        self.slots = slots
        self.device = model.audio_head.device
        on_cuda = self.device.type == "cuda"
        # on CUDA the eager path runs what the graphs run (prompts padded, attention over the whole window), so that
        # both sample the same codes; on a CPU it runs what it needs: the prompt's rows, the filled positions
        self.graph_shapes = on_cuda
        self.lookahead = (1 if on_cuda else 0) if lookahead is None else lookahead
        self.reuse_prefix = True  # a prompt's rows a slot's caches (or the voice cache) hold are not prefilled again
        self.voice_cache = voice_cache
        self.prefill_rows = prefill_rows or PREFILL_ROWS[self.device.type]
        # chunks of a power of two from 64 rows, from where the prompt's prefill starts, fit the window padded as
        # the prompt's rest does (`reused_rows`): each is `prefill_length` rows, and the last ends within the rest's
        assert self.prefill_rows >= SHORTEST_PREFILL and self.prefill_rows.bit_count() == 1, self.prefill_rows
        _check_memory(model, slots, self.device)
        args = model.args
        caches, decoder_caches = model.backbone.new_caches(slots), model.decoder.new_caches(slots)
        self._slot_caches = [[cache.rows(slot, slot + 1) for cache in caches] for slot in range(slots)]
        self._bucket_caches = {rows: ([cache.rows(0, rows) for cache in caches],
                                      [cache.rows(0, rows) for cache in decoder_caches]) for rows in buckets(slots)}
        self.rows = [CachedRows(model.max_seq_len, args.num_codebooks + 1) for _ in range(slots)]
        self._streams: list[_Stream | None] = [None] * slots
        self._owners: dict[Hashable, _Stream] = {}
        self._joining: deque[_Stream] = deque()  # first joined first
        self._queued: deque[_QueuedStep] = deque()
        self.sampled: list[int] = []  # the slots the last step sampled
        # the step's tensors: what the host writes before a step, and what the step writes
        zeros = {"device": self.device, "dtype": torch.long}
        self.positions = torch.full((slots,), model.scratch_position, **zeros)  # where each row's frame goes
        self.sampling = RowSampling(topk=torch.ones(slots, **zeros),
                                    temperature=torch.ones(slots, device=self.device),
                                    seed_high=torch.zeros(slots, **zeros), seed_low=torch.zeros(slots, **zeros),
                                    frame=torch.zeros(slots, **zeros))
        self.advancing = torch.zeros(slots, dtype=torch.bool, device=self.device)  # the rows sampling
        self.counters = code_counters(args.num_codebooks, args.audio_vocab_size, self.device)
        self.last_h = torch.zeros(slots, args.backbone.dim, dtype=model.audio_head.dtype, device=self.device)
        self.codes = torch.zeros(slots, args.num_codebooks, **zeros)  # the last step's
        self.samples = torch.zeros(slots, SAMPLES_PER_FRAME, device=self.device)
        self.mimi = codec.decoder(slots)
        # the depth decoder's pass of a codebook, eager or compiled (31 a frame: most of a step's work)
        self.decoder_hidden: Callable[..., torch.Tensor] = model.decoder_hidden
        self.compile_s: float | None = None
        if compiled:
            assert not on_cuda, "on CUDA the step replays as CUDA graphs"
            from .compiled import compile_step

            self.compile_s = compile_step(self)
        self.graphs = None
        if graphed:
            from .graphs import FrameGraphs

            self.graphs = FrameGraphs(self, captured)

    @property
    def free(self) -> list[int]:
        return [slot for slot, stream in enumerate(self._streams) if stream is None]

    @property
    def busy(self) -> bool:
        """Whether a step has something to do: a stream to prefill or sample, or frames to read."""
        return bool(self._owners or self._queued)

    @property
    def prefilling(self) -> list[int]:
        """The slots whose stream's prompt is being prefilled, first joined first."""
        return [stream.slot for stream in self._joining]

    def join(self, owner: Hashable, prompt: Prompt) -> int:
        """Takes a free slot for `owner`'s stream and returns it: its prompt is prefilled by the next steps, its first
        frame comes with the step that prefills its last row, and its last with its budget's, or at its end."""
        assert 0 < prompt.frames <= self.model.max_seq_len - len(prompt.tokens), "the frames must fit the window"
        assert owner not in self._owners, "one stream per owner"
        free = self.free
        assert free, "every slot holds a stream: leave one first"
        if self.reuse_prefix:
            held = {slot: self.rows[slot].common_prefix(prompt.tokens, prompt.mask) for slot in free}
        else:
            held = {free[0]: 0}
        slot = max(held, key=held.__getitem__)  # the slot that holds most of the prompt, the lowest of those
        rows, window = len(prompt.tokens), self.model.max_seq_len
        assert prompt.voice_rows < rows, "a prompt's text follows its voice rows"
        start = reused_rows(held[slot], rows, window, self.graph_shapes) if held[slot] >= prompt.voice_rows else 0
        # voice rows the slot does not hold whole are prefilled (or read back) as a pass of their own, then the rest
        # after them: on CUDA only where the rest, padded, fits after them (else the prompt is one pass, never cached)
        voice_pass = start < prompt.voice_rows and reused_rows(
            prompt.voice_rows, rows, window, self.graph_shapes) == prompt.voice_rows
        stream = _Stream(owner, prompt, slot, start, prompt.voice_rows if voice_pass else 0)
        self._streams[slot] = self._owners[owner] = stream
        self._joining.append(stream)
        self.mimi.reset(torch.arange(self.slots, device=self.device) == slot)
        return slot

    def leave(self, owner: Hashable) -> None:
        """Frees the slot of `owner`'s stream, if it still has one; what its caches hold stays there for a prompt
        that starts the same way, and frames of it still queued are dropped."""
        stream = self._owners.pop(owner, None)
        if stream is not None:
            self._release(stream)

    def abandon(self) -> list[Hashable]:
        """After a failed step: every stream leaves, and the records forget what the caches hold (a step may have
        written part of them) -> the owners of the streams that left."""
        owners = list(self._owners)
        for stream in list(self._owners.values()):
            self._release(stream)
        self._owners.clear()
        self._queued.clear()
        for rows in self.rows:
            rows.clear()
        return owners

    def _release(self, stream: _Stream) -> None:
        self._streams[stream.slot] = None
        if stream in self._joining:
            self._joining.remove(stream)

    @torch.inference_mode()
    def step(self) -> list[Delivery]:
        """Prefills what this step takes of the joining streams' prompts, queues the next frame of every stream that
        samples, and reads the frames of the steps queued past the lookahead (all of them when nothing samples)."""
        self._prefill(everything=not any(stream and stream.samples for stream in self._streams))
        sampling = [stream for stream in self._streams if stream is not None and stream.samples]
        if sampling:
            self._queue(sampling)
        deliveries = []
        while self._queued and (len(self._queued) > self.lookahead or not sampling):
            deliveries += self._read(self._queued.popleft())
        return deliveries

    def _prefill(self, everything: bool) -> None:
        """Every joining stream's whole prompt, or the next chunk of `prefill_rows` rows of the first one's."""
        for stream in list(self._joining)[: None if everything else 1]:
            tokens, mask = stream.prompt.tokens, stream.prompt.mask
            if stream.prefilled < stream.voice_rows:
                self._prefill_voice(stream.slot, tokens[: stream.voice_rows], mask[: stream.voice_rows])
                stream.prefilled = stream.voice_rows
                if not everything:  # the voice rows were this step's chunk
                    continue
            start, slot = stream.prefilled, stream.slot
            end = len(tokens) if everything else min(len(tokens), start + self.prefill_rows)
            self.rows[slot].clear_from(start)  # an interrupted prefill leaves the rows from here unknown
            last_h = self.model.prefill(self._to_device(tokens[start:end]), self._to_device(mask[start:end]), start,
                                        self._slot_caches[slot], padded=self.graph_shapes)
            self.rows[slot].wrote(start, tokens[start:end], mask[start:end])
            stream.prefilled = end
            if end == len(tokens):
                self.last_h[slot] = last_h[0]
                self._joining.remove(stream)

    @torch.inference_mode()
    def prefill_voice(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Voice rows tokens, mask [S, C+1] into a free slot, as a prompt that starts with them gets them: read back
        from the voice cache, or prefilled and kept there. Only while no stream is in the engine."""
        assert not self.busy, "voice rows are prefilled ahead only in an idle engine"
        self._prefill_voice(self.free[0], tokens, mask)

    def _prefill_voice(self, slot: int, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Voice rows [S, C+1] at positions 0..S-1 of a slot's caches, as one pass: read back from the voice cache
        (unless `reuse_prefix` is off), else prefilled and kept there."""
        self.rows[slot].clear_from(0)
        caches, voice_cache = self._slot_caches[slot], self.voice_cache if self.reuse_prefix else None
        first = caches[0].k[0, :, : len(tokens)]  # [K, S, E]
        shape = torch.Size((len(caches), 2, *first.shape))
        keys_values = None if voice_cache is None else voice_cache.read(tokens, mask, shape, first.dtype)
        if keys_values is not None:
            keys_values = keys_values.to(self.device)
            for cache, (keys, values) in zip(caches, keys_values, strict=True):
                cache.k[0, :, : len(tokens)].copy_(keys)
                cache.v[0, :, : len(tokens)].copy_(values)
        else:
            self.model.prefill(self._to_device(tokens), self._to_device(mask), 0, caches, padded=self.graph_shapes)
            if voice_cache is not None:
                voice_cache.write(tokens, mask, torch.stack(
                    [torch.stack((cache.k[0, :, : len(tokens)], cache.v[0, :, : len(tokens)])) for cache in caches]))
        self.rows[slot].wrote(0, tokens, mask)

    def _queue(self, sampling: list[_Stream]) -> None:
        """Writes each row's settings and position, then runs (or replays) the step and Mimi's decode of its frames,
        and queues host copies of them."""
        rows = min(self.slots, 1 << max(stream.slot for stream in sampling).bit_length())
        largest_topk = max(stream.prompt.topk for stream in sampling)
        count = candidates(largest_topk, self.model.args.audio_vocab_size)
        self._write_rows(sampling)
        if self.graphs is not None:
            self.graphs.replay(rows, count)
        else:
            attend = None if self.graph_shapes else max(len(s.prompt.tokens) + s.queued for s in sampling) + 1
            self.frame_step(rows, count, attend)
            with self.mimi.bound():
                self.decode_step()
        for stream in sampling:
            stream.queued += 1
        self.sampled = [stream.slot for stream in sampling]
        codes, samples, ready = self.codes.clone(), self.samples.clone(), None
        if self.device.type == "cuda":
            codes, samples = (torch.empty_like(t, device="cpu", pin_memory=True) for t in (self.codes, self.samples))
            codes.copy_(self.codes, non_blocking=True)
            samples.copy_(self.samples, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        self._queued.append(_QueuedStep(sampling, codes, samples, ready))

    def _write_rows(self, sampling: list[_Stream]) -> None:
        """Each slot's position, settings, seed and frame index as the step reads them, written in place."""
        positions = torch.full((self.slots,), self.model.scratch_position, dtype=torch.long)
        settings = torch.zeros(5, self.slots, dtype=torch.long)  # topk, seed high, seed low, frame, advancing
        settings[0] = 1
        temperature = torch.ones(self.slots)
        for stream in sampling:
            prompt = stream.prompt
            positions[stream.slot] = len(prompt.tokens) + stream.queued
            settings[:, stream.slot] = torch.tensor([prompt.topk, *seed_halves(prompt.seed), stream.queued, 1])
            temperature[stream.slot] = prompt.temperature
        row = self.sampling
        for target, value in zip((self.positions, row.topk, row.seed_high, row.seed_low, row.frame, self.advancing,
                                  row.temperature), (positions, *settings, temperature), strict=True):
            target.copy_(self._to_device(value))

    def frame_step(self, rows: int, count: int, attend: int | None) -> None:
        """The first `rows` slots' next frame: sampled from their last hidden states with their settings, among
        `count` candidates a codebook (`sampling.candidates`), into `codes`; then fed back through the backbone at
        their positions, attending to the first `attend` positions (all when None) -> `last_h`. Fixed shapes, no host
        synchronisation: a CUDA graph replays it."""
        caches, decoder_caches = self._bucket_caches[rows]
        row = self.sampling
        sampler = FrameSampler(RowSampling(row.topk[:rows], row.temperature[:rows], row.seed_high[:rows],
                                           row.seed_low[:rows], row.frame[:rows]), count, self.counters)
        codes = self.model.frame_codes(self.last_h[:rows], decoder_caches, sampler, self.decoder_hidden)  # [rows, C]
        self.codes[:rows].copy_(codes)
        tokens, mask = frame_row(codes)  # [rows, 1, C+1]
        self.last_h[:rows].copy_(self.model.backbone_step(tokens, mask, self.positions[:rows, None], caches, attend))

    def decode_step(self) -> None:
        """Mimi's decode of the rows advancing, from `codes` into `samples`; inside `mimi.bound()`."""
        self.samples.copy_(self.mimi.decode(self.codes, self.advancing))

    def _read(self, queued: _QueuedStep) -> list[Delivery]:
        """The frames of a queued step, for the streams still in their slots: recorded in the slot's rows, passed
        through the end-of-speech rule, and the stream ended at its end."""
        if queued.ready is not None:
            queued.ready.synchronize()
        deliveries = []
        for stream in queued.sampled:
            if self._streams[stream.slot] is not stream:  # it left, or ended, meanwhile
                continue
            codes = queued.codes[stream.slot]
            position = len(stream.prompt.tokens) + stream.taken
            self.rows[stream.slot].wrote(position, *(part[0] for part in frame_row(codes[None])))
            stream.taken += 1
            frame = Frame(codes.numpy().copy(), queued.samples[stream.slot].numpy().copy())
            ended = stream.taken == stream.prompt.frames
            if not stream.prompt.stop_at_end:
                frames = [frame]
            elif not frame.codes.any():  # the model's end of speech
                frames, ended = [], True
            else:
                frames = stream.silence.push(frame, frame.samples)
                ended = ended or stream.silence.ended
            if ended:
                frames += stream.silence.tail()
                self.leave(stream.owner)
            deliveries.append(Delivery(stream.owner, frames, ended))
        return deliveries

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device, copied without making the host wait for the device."""
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor


def _check_memory(model: CSM, slots: int, device: torch.device) -> None:
    """Refuses, with CsmError, an engine whose backbone caches would not fit the memory free now: they are allocated
    and zeroed up front, and on a CPU an allocation past the memory there is ends the process, not in an error."""
    args = model.args.backbone
    per_slot = 2 * args.num_layers * args.num_kv_heads * args.head_dim * (model.max_seq_len + 1) * torch.empty(
        0, dtype=model.backbone.cache_dtype).element_size()
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

