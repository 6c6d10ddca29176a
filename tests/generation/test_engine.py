"""The frame engine: a stream's codes are those it gets alone, whatever shares its steps, whenever it joins, whichever
slot it takes; slots, the prefix cache, prefill by chunks and the ends, stepped directly."""

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from csm_cli.generation.engine import FrameEngine, Prompt
from csm_cli.generation.prompt import Segment

FRAMES = 4
CONTEXT = [Segment(1, "How are you today?", codes=np.random.default_rng(3).integers(0, 2048, (32, 5)))]
LONG_CONTEXT = [Segment(1, "Hi.", codes=np.random.default_rng(4).integers(0, 2048, (32, 150)))]  # 3 chunks of 64
# prompts of different lengths, each with its own sampling settings and seed
STREAMS = [
    {"text": "Hi.", "context": (), "topk": 1, "temperature": 0.9, "seed": 1},
    {"text": "I am fine, thank you, and you?", "context": CONTEXT, "topk": 50, "temperature": 0.9, "seed": 2},
    {"text": "Good morning to everyone here.", "context": (), "topk": 20, "temperature": 0.7, "seed": 2**64 - 1},
    {"text": "The quick brown fox.", "context": CONTEXT, "topk": 2051, "temperature": 1.3, "seed": 4},
]


def prompt(generator, stream: dict, frames: int = FRAMES, stop_at_end: bool = False) -> Prompt:
    tokens, mask = generator.prompt_rows(stream["text"], 0, stream["context"])
    return Prompt(tokens, mask, frames, stream["topk"], stream["temperature"], stream["seed"], stop_at_end)


class Driver:
    """An engine stepped directly: each owner's frames gathered; `before(step)` runs before each step."""

    def __init__(self, engine: FrameEngine) -> None:
        self.engine = engine
        self.frames: dict[object, list] = {}
        self.ended: set[object] = set()

    def join(self, owner: object, joining: Prompt) -> int:
        self.frames[owner] = []
        return self.engine.join(owner, joining)

    def step(self) -> None:
        with torch.inference_mode():
            for delivery in self.engine.step():
                self.frames[delivery.owner] += delivery.frames
                if delivery.ended:
                    self.ended.add(delivery.owner)

    def run(self, before: Callable[[int], None] = lambda step: None, most: int = 100) -> None:
        for step in range(most):
            before(step)
            if not self.engine.busy:
                return
            self.step()
        raise AssertionError("the engine is still busy")

    def codes(self, owner: object) -> np.ndarray:
        return np.stack([frame.codes for frame in self.frames[owner]], axis=1)


def alone(generator, stream: dict | Prompt, frames: int = FRAMES) -> np.ndarray:
    driver = Driver(FrameEngine(generator.model, generator.codec, 1))
    driver.join("alone", stream if isinstance(stream, Prompt) else prompt(generator, stream, frames))
    driver.run()
    return driver.codes("alone")


@pytest.fixture(scope="module")
def codes_alone(generator) -> list[np.ndarray]:
    return [alone(generator, stream) for stream in STREAMS]


@pytest.mark.parametrize("slots", [2, 4, 8])
def test_streams_generated_together_get_the_codes_each_gets_alone(generator, codes_alone, slots):
    """In engines of 2, 4 and 8 slots; with 8, the streams take slots 4..7 (a bucket of 8 rows)."""
    driver = Driver(FrameEngine(generator.model, generator.codec, slots))
    taken = len(STREAMS) if slots == 8 else 0
    for filler in range(taken):  # slots 0..3 hold streams that leave before the others join
        driver.join(("filler", filler), prompt(generator, STREAMS[filler], frames=1))
    driver.run()
    for index, stream in enumerate(STREAMS[:slots]):
        driver.join(index, prompt(generator, stream))
    driver.run()
    for index, want in enumerate(codes_alone[:slots]):
        np.testing.assert_array_equal(driver.codes(index), want)


def test_streams_join_mid_way_leave_and_a_freed_slot_is_reused(generator, codes_alone):
    driver = Driver(FrameEngine(generator.model, generator.codec, 2))
    slots = {}

    def before(step: int) -> None:
        if step == 0:
            slots[0] = driver.join(0, prompt(generator, STREAMS[0]))
        if step == 2:
            slots[1] = driver.join(1, prompt(generator, STREAMS[1]))
        if step == FRAMES + 1:  # stream 0 has its frames: stream 2 takes its slot, and the rows it holds
            tokens, mask = generator.prompt_rows(STREAMS[2]["text"], 0, STREAMS[2]["context"])
            assert driver.engine.free == [slots[0]] and 0 in driver.ended
            assert driver.engine.rows[slots[0]].common_prefix(tokens, mask) > 0  # "<bos>[0]" at least
            slots[2] = driver.join(2, prompt(generator, STREAMS[2]))

    driver.run(before)
    assert slots[2] == slots[0] != slots[1]
    for stream in range(3):
        np.testing.assert_array_equal(driver.codes(stream), codes_alone[stream])


def test_a_joining_stream_takes_the_free_slot_that_holds_most_of_its_prompt(generator):
    engine = FrameEngine(generator.model, generator.codec, 3)
    driver = Driver(engine)
    without, with_context = driver.join("a", prompt(generator, STREAMS[0])), driver.join("b", prompt(generator,
                                                                                                     STREAMS[1]))
    driver.step()  # prefills them
    engine.leave("b")
    engine.leave("a")
    assert driver.join("c", prompt(generator, {**STREAMS[1], "text": "Something else."})) == with_context
    assert driver.join("d", prompt(generator, STREAMS[2])) == without
    assert with_context == 1 and engine.free == [2]


def test_a_stream_ends_at_the_models_end_frame_and_never_steps_past_the_window(generator, monkeypatch):
    """A stream whose frames fill the model's window samples no more once it has them all, while another goes on;
    the model's all-zero frame ends a stream with `stop_at_end` and frees its slot."""
    driver = Driver(FrameEngine(generator.model, generator.codec, 2))
    window = generator.model.max_seq_len
    long = {**STREAMS[0], "context": [Segment(1, "Hi.", codes=np.zeros((32, window - 20), dtype=int))]}
    filling = prompt(generator, long, frames=window - len(prompt(generator, long).tokens))
    driver.join("filling", filling)
    driver.join("other", prompt(generator, STREAMS[0], frames=filling.frames + 3))
    driver.run()
    assert [len(driver.frames[owner]) for owner in ("filling", "other")] == [filling.frames, filling.frames + 3]
    assert driver.engine.rows[0].length == window
    end_frames = lambda last_h, caches, *sampling: torch.zeros(len(last_h), 32, dtype=torch.long)  # noqa: E731
    monkeypatch.setattr(generator.model, "frame_codes", end_frames)
    driver.join("ended", prompt(generator, STREAMS[0], frames=6, stop_at_end=True))
    driver.run()
    assert driver.frames["ended"] == [] and "ended" in driver.ended and driver.engine.free == [0, 1]


def test_a_step_computes_only_the_slots_up_to_the_last_stream_sampling(generator, monkeypatch, codes_alone):
    """A lone stream in the first slot of an engine of 8 is stepped as a bucket of one and gets its codes; with a
    stream in slot 5, the step computes all 8."""
    engine = FrameEngine(generator.model, generator.codec, 8)
    buckets = []
    frame_step = engine.frame_step
    monkeypatch.setattr(engine, "frame_step", lambda rows, *args: buckets.append(rows) or frame_step(rows, *args))
    driver = Driver(engine)
    driver.join("first", prompt(generator, STREAMS[0]))
    driver.run()
    assert buckets == [1] * FRAMES
    np.testing.assert_array_equal(driver.codes("first"), codes_alone[0])
    for index in range(6):
        driver.join(index, prompt(generator, STREAMS[2], frames=1))
    for index in range(5):
        engine.leave(index)
    driver.run()
    assert engine.sampled == [5] and buckets[-1] == 8


def chunking(generator, monkeypatch) -> tuple[Driver, list[int]]:
    """An engine of two slots that prefills 64 rows a step while a stream samples, and the rows of each prefill."""
    prefilled = []
    prefill = generator.model.prefill
    monkeypatch.setattr(generator.model, "prefill",
                        lambda tokens, *args, **kw: prefilled.append(len(tokens)) or prefill(tokens, *args, **kw))
    return Driver(FrameEngine(generator.model, generator.codec, 2, prefill_rows=64)), prefilled


def test_a_long_prompt_joining_is_prefilled_a_chunk_a_step_while_the_others_sample(generator, monkeypatch):
    """A prompt of 3 chunks of 64 rows, joining a stream that samples, is prefilled 64 rows a step while the other
    takes a frame each step; it samples in the step that prefills its last row, and gets the codes it gets alone."""
    long = {**STREAMS[1], "context": LONG_CONTEXT}
    tokens = prompt(generator, long).tokens
    assert 128 < len(tokens) <= 192
    driver, prefilled = chunking(generator, monkeypatch)
    engine = driver.engine
    driver.join("sampling", prompt(generator, STREAMS[0], frames=FRAMES + 3))
    driver.step()
    driver.join("joining", prompt(generator, long))
    for _ in range(3):
        driver.step()
        assert engine.sampled[0] == 0
    assert prefilled[1:] == [64, 64, len(tokens) - 128] and engine.sampled == [0, 1]
    driver.run()
    np.testing.assert_array_equal(driver.codes("joining"), alone(generator, long))


def test_voice_rows_joining_are_one_step_of_their_own_while_the_others_sample(generator, monkeypatch):
    """A prompt's voice rows, longer than a chunk, are prefilled in one step (as a stream alone prefills them, so
    that what is kept of them is the same), then the rest; it gets the codes it gets alone."""
    long = {**STREAMS[1], "context": LONG_CONTEXT}
    voice = replace(prompt(generator, long, frames=2), voice_rows=generator.segment_rows(LONG_CONTEXT[0]))
    assert 64 < voice.voice_rows < len(voice.tokens) - 1
    codes_alone = alone(generator, voice)
    driver, prefilled = chunking(generator, monkeypatch)
    engine = driver.engine
    driver.join("sampling", prompt(generator, STREAMS[0], frames=FRAMES))
    driver.step()
    prefilled.clear()
    driver.join("joining", voice)
    driver.step()
    assert engine.sampled == [0]
    driver.step()
    assert prefilled == [voice.voice_rows, len(voice.tokens) - voice.voice_rows] and engine.sampled == [0, 1]
    driver.run()
    np.testing.assert_array_equal(driver.codes("joining"), codes_alone)


def test_a_stream_that_leaves_mid_prefill_frees_its_slot_and_leaves_the_rows_it_prefilled(generator):
    long = {**STREAMS[1], "context": LONG_CONTEXT}
    engine = FrameEngine(generator.model, generator.codec, 2, prefill_rows=64)
    driver = Driver(engine)
    driver.join("sampling", prompt(generator, STREAMS[0]))
    driver.step()
    leaving = driver.join("leaving", prompt(generator, long))
    driver.step()
    engine.leave("leaving")
    assert engine.prefilling == [] and engine.free == [leaving]
    tokens, mask = generator.prompt_rows(long["text"], 0, long["context"])
    assert engine.rows[leaving].common_prefix(tokens, mask) == 64
    driver.step()
    assert engine.sampled == [0]


def test_a_step_read_one_step_late_drops_the_frame_queued_past_an_end(generator, monkeypatch, codes_alone):
    """With a lookahead of one step (as on CUDA) a stream's frames are those it gets at once; a stream that ends at
    the model's end frame loses the frame queued after it, and its slot takes the next stream."""
    late = Driver(FrameEngine(generator.model, generator.codec, 2, lookahead=1))
    for index in range(2):
        late.join(index, prompt(generator, STREAMS[index]))
    late.run()
    for index in range(2):
        np.testing.assert_array_equal(late.codes(index), codes_alone[index])
    frame_codes, calls = generator.model.frame_codes, []

    def ending_at_third(last_h, caches, *sampling):
        calls.append(1)
        return frame_codes(last_h, caches, *sampling) * (len(calls) != 3)

    monkeypatch.setattr(generator.model, "frame_codes", ending_at_third)
    late.join("ended", prompt(generator, STREAMS[1], frames=FRAMES, stop_at_end=True))
    late.run()
    assert len(late.frames["ended"]) == 2 and len(calls) == 4 and late.engine.free == [0, 1]


def test_the_graphs_shapes_sample_what_a_cpu_runs(generator):
    """Prompts padded and attention over the whole window (as on CUDA) give a CPU's greedy codes: the prompt's own
    rows, attention over the filled positions."""
    long = {**STREAMS[0], "context": [Segment(1, "Hi.", codes=np.random.default_rng(2).integers(0, 2048, (32, 70)))]}
    codes = []
    for graph_shapes in (True, False):
        engine = FrameEngine(generator.model, generator.codec, 1)
        engine.graph_shapes = graph_shapes
        driver = Driver(engine)
        driver.join("greedy", prompt(generator, long, frames=FRAMES))
        driver.run()
        codes.append(driver.codes("greedy"))
    np.testing.assert_array_equal(codes[0], codes[1])
