"""Streams generated together in a `FrameBatch` get the codes each gets alone, whoever shares the batch and whenever
they join."""

import numpy as np
import pytest
import torch

from csm_cli.audio import FRAME_SECONDS
from csm_cli.generation.batch import FrameBatch
from csm_cli.generation.prompt import Segment

FRAMES = 4
CONTEXT = [Segment(1, "How are you today?", codes=np.random.default_rng(3).integers(0, 2048, (32, 5)))]
# prompts of different lengths, each with its own sampling settings and seed
STREAMS = [
    {"text": "Hi.", "context": (), "topk": 1, "temperature": 0.9, "seed": 1},
    {"text": "I am fine, thank you, and you?", "context": CONTEXT, "topk": 50, "temperature": 0.9, "seed": 2},
    {"text": "Good morning to everyone here.", "context": (), "topk": 20, "temperature": 0.7, "seed": 3},
]


def alone(generator, stream: dict, frames: int) -> np.ndarray:
    """The codes [C, frames] of `stream` generated alone, on the single-stream eager path."""
    speech = generator.stream(stream["text"], context=stream["context"], temperature=stream["temperature"],
                              topk=stream["topk"], seed=stream["seed"], max_seconds=(frames + 0.5) * FRAME_SECONDS,
                              stop_at_end=False)
    list(speech)
    return speech.codes


def join(batch: FrameBatch, generator, stream: dict, frames: int = FRAMES) -> int:
    tokens, mask = generator.prompt_rows(stream["text"], 0, stream["context"])
    return batch.join(tokens, mask, frames, stream["topk"], stream["temperature"], stream["seed"])


@pytest.fixture(scope="module")
def codes_alone(generator) -> list[np.ndarray]:
    return [alone(generator, stream, FRAMES) for stream in STREAMS]


def test_streams_generated_together_get_the_codes_each_gets_alone(generator, codes_alone):
    batch = FrameBatch(generator.model, len(STREAMS))
    slots = [join(batch, generator, stream) for stream in STREAMS]
    assert sorted(slots) == [0, 1, 2] and batch.prefilling == slots
    frames = torch.stack([batch.step() for _ in range(FRAMES)], dim=2)  # [slots, C, frames]
    for slot, expected in zip(slots, codes_alone, strict=True):
        np.testing.assert_array_equal(frames[slot].numpy(), expected)


def test_streams_join_mid_way_leave_and_a_freed_slot_is_reused(generator, codes_alone):
    batch = FrameBatch(generator.model, 2)
    got: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
    slots = {0: join(batch, generator, STREAMS[0])}

    def step() -> None:
        codes = batch.step()
        for stream, slot in slots.items():
            got[stream].append(codes[slot])

    for _ in range(2):
        step()
    slots[1] = join(batch, generator, STREAMS[1])
    for _ in range(FRAMES - 2):
        step()
    batch.leave(slots.pop(0))  # stream 0 has its frames; stream 2 takes its slot, and the rows it holds
    tokens, mask = generator.prompt_rows(STREAMS[2]["text"], 0, STREAMS[2]["context"])
    assert batch.rows[batch.free[0]].common_prefix(tokens, mask) > 0  # "<bos>[0]" at least
    slots[2] = join(batch, generator, STREAMS[2])
    assert slots[2] != slots[1] and batch.free == []
    for _ in range(2):
        step()
    batch.leave(slots.pop(1))
    for _ in range(FRAMES - 2):
        step()
    for stream, expected in enumerate(codes_alone):
        np.testing.assert_array_equal(torch.stack(got[stream], dim=1).numpy(), expected)


def test_a_joining_stream_takes_the_free_slot_that_holds_most_of_its_prompt(generator):
    batch = FrameBatch(generator.model, 3)
    without, with_context = join(batch, generator, STREAMS[0]), join(batch, generator, STREAMS[1])
    batch.step()  # prefills them
    batch.leave(with_context)
    batch.leave(without)
    assert join(batch, generator, {**STREAMS[1], "text": "Something else, after the same context."}) == with_context
    assert join(batch, generator, STREAMS[2]) == without
    assert with_context == 1 and batch.active == [0, 1] and batch.free == [2]


def test_an_utterance_that_ends_frees_its_slot_for_the_next(generator):
    """In a batch of one slot: an utterance taken to its last frame, then one closed after its first, leave the slot
    at once, and each utterance after them says what it says alone."""
    batch = generator.new_batch(1)
    stream = STREAMS[1]

    def utterance(frames: int):
        tokens, mask = generator.prompt_rows(stream["text"], 0, stream["context"])
        return batch.utterance(tokens, mask, frames, stream["topk"], stream["temperature"], stream["seed"],
                               stop_at_end=False)

    whole = [codes for codes, _ in utterance(FRAMES)]
    assert batch.frames.free == [0]
    cut = utterance(FRAMES)
    next(cut)
    cut.close()
    assert batch.frames.free == [0]
    again = torch.stack([codes for codes, _ in utterance(FRAMES)], dim=1)
    np.testing.assert_array_equal(torch.stack(whole, dim=1).numpy(), again.numpy())


def test_an_utterance_stops_at_its_end_frame_and_the_batch_never_steps_past_the_window(generator, monkeypatch):
    """An utterance whose frames fill the model's window samples no more once it has them all, while another in the
    batch goes on; the model's all-zero frame ends an utterance and frees its slot."""
    batch = generator.new_batch(2)
    window = generator.model.max_seq_len
    long_context = [Segment(1, "Hi.", codes=np.zeros((32, window - 20), dtype=int))]
    long_tokens, long_mask = generator.prompt_rows("Hi.", 0, long_context)
    room = window - len(long_tokens)
    tokens, mask = generator.prompt_rows("Hi.", 0, ())
    filling = batch.utterance(long_tokens, long_mask, room, 50, 0.9, 1, stop_at_end=False)
    next(filling)
    other = batch.utterance(tokens, mask, room + 3, 50, 0.9, 2, stop_at_end=False)
    for _ in range(room - 1):
        next(filling)
        next(other)
    assert batch.frames.sampling == [1]  # `other`'s; `filling` has all its frames
    assert len(list(other)) == 4 and list(filling) == []
    assert batch.frames.free == [0, 1]
    end_frames = lambda last_h, sample: torch.zeros(len(last_h), 32, dtype=torch.long)  # noqa: E731
    monkeypatch.setattr(generator.model, "frame_codes", end_frames)
    ended = batch.utterance(tokens, mask, 6, 50, 0.9, 3, stop_at_end=True)
    assert list(ended) == [] and batch.frames.free == [0, 1]


def test_a_step_computes_only_the_slots_up_to_the_last_stream_sampling(generator, monkeypatch, codes_alone):
    """A lone stream in the first slot of a batch of 8 is stepped as a batch of one (a power of two above the last
    sampling slot) and gets its codes; with a stream in slot 5, the step computes all 8."""
    batch = FrameBatch(generator.model, 8)
    rows_stepped = []
    backbone_step = generator.model.backbone_step
    monkeypatch.setattr(generator.model, "backbone_step",
                        lambda row, *args: rows_stepped.append(len(row)) or backbone_step(row, *args))
    slot = join(batch, generator, STREAMS[0])
    frames = torch.stack([batch.step() for _ in range(FRAMES)], dim=2)
    assert slot == 0 and rows_stepped == [1] * FRAMES
    np.testing.assert_array_equal(frames[0].numpy(), codes_alone[0])
    assert not frames[1:].any()
    batch.leave(slot)
    slots = [join(batch, generator, STREAMS[2], frames=1) for _ in range(6)]
    for slot in slots[:5]:
        batch.leave(slot)
    assert batch.prefilling == [5]
    batch.step()
    assert batch.sampled == [5] and rows_stepped[-1] == 8


def test_a_long_prompt_joining_is_prefilled_a_chunk_a_step_while_the_others_sample(generator, monkeypatch):
    """A stream whose prompt takes 3 chunks of 64 rows, joining a stream that samples, is prefilled 64 rows a step
    while the other takes a frame each step; it samples in the step that prefills its last row, and gets the codes
    it gets alone."""
    long = {**STREAMS[1], "context": [Segment(1, "Hi.", codes=np.random.default_rng(4).integers(0, 2048, (32, 150)))]}
    tokens, _ = generator.prompt_rows(long["text"], 0, long["context"])
    assert 128 < len(tokens) <= 192
    batch = FrameBatch(generator.model, 2, prefill_rows=64)
    prefilled = []
    prefill = generator.model.prefill
    monkeypatch.setattr(generator.model, "prefill",
                        lambda tokens, *args, **kw: prefilled.append(len(tokens)) or prefill(tokens, *args, **kw))
    sampling = join(batch, generator, STREAMS[0], frames=FRAMES + 3)
    batch.step()
    joining = join(batch, generator, long)
    got = []
    for _ in range(3 + FRAMES - 1):
        codes = batch.step()
        assert sampling in batch.sampled
        if joining in batch.sampled:
            got.append(codes[joining])
    assert prefilled[1:] == [64, 64, len(tokens) - 128]
    np.testing.assert_array_equal(torch.stack(got, dim=1).numpy(), alone(generator, long, FRAMES))


def test_a_stream_that_leaves_mid_prefill_frees_its_slot_and_leaves_the_rows_it_prefilled(generator):
    long = {**STREAMS[1], "context": [Segment(1, "Hi.", codes=np.random.default_rng(4).integers(0, 2048, (32, 150)))]}
    tokens, mask = generator.prompt_rows(long["text"], 0, long["context"])
    batch = FrameBatch(generator.model, 2, prefill_rows=64)
    sampling = join(batch, generator, STREAMS[0], frames=FRAMES)
    batch.step()
    leaving = join(batch, generator, long)
    batch.step()
    batch.leave(leaving)
    assert batch.prefilling == [] and batch.free == [leaving]
    assert batch.rows[leaving].common_prefix(tokens, mask) == 64
    batch.step()
    assert batch.sampled == [sampling]
