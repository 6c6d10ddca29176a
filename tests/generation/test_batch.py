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
                              stop_at_end=False, state=generator.new_state())
    list(speech)
    return speech.codes


def join(batch: FrameBatch, generator, stream: dict) -> int:
    tokens, mask = generator.prompt_rows(stream["text"], 0, stream["context"])
    return batch.join(tokens, mask, stream["topk"], stream["temperature"], stream["seed"])


@pytest.fixture(scope="module")
def codes_alone(generator) -> list[np.ndarray]:
    return [alone(generator, stream, FRAMES) for stream in STREAMS]


def test_streams_generated_together_get_the_codes_each_gets_alone(generator, codes_alone):
    batch = FrameBatch(generator.model, len(STREAMS))
    slots = [join(batch, generator, stream) for stream in STREAMS]
    assert sorted(slots) == [0, 1, 2]
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
    with_context, without = join(batch, generator, STREAMS[1]), join(batch, generator, STREAMS[0])
    batch.leave(with_context)
    batch.leave(without)
    assert join(batch, generator, {**STREAMS[1], "text": "Something else, after the same context."}) == with_context
    assert join(batch, generator, STREAMS[2]) == without
    assert batch.active == [0, 1] and batch.free == [2]
