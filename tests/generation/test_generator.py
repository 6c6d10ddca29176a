"""The Python API: chunks as they are decoded, chunk sizes, interruption and errors."""

import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from round_robin import round_robin

from csm_cli import Segment, StreamingGenerator
from csm_cli.audio import SAMPLES_PER_FRAME
from csm_cli.errors import CsmError

TEXT = "Hello there. How are you today?"
SETTINGS = {"speaker": 0, "seed": 7, "max_seconds": 1.0}


@pytest.fixture(scope="module")
def fresh_output(generator) -> np.ndarray:
    """What a fresh generator (an engine of its own) says for TEXT with SETTINGS."""
    fresh = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, fast=False)
    audio = np.concatenate(list(fresh.stream(TEXT, **SETTINGS)))
    fresh.close()
    return audio


def test_chunks_arrive_one_frame_at_a_time(generator):
    speech = generator.stream(TEXT, **SETTINGS)
    frames_when_yielded = [speech.codes.shape[1] for _ in speech]
    assert len(frames_when_yielded) > 3
    assert frames_when_yielded == list(range(1, len(frames_when_yielded) + 1))


def test_chunks_are_whole_frames_of_float32(generator, fresh_output):
    chunks = list(generator.stream(TEXT, **SETTINGS))
    assert all(c.dtype == np.float32 and c.shape == (SAMPLES_PER_FRAME,) for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), fresh_output)


def test_larger_chunks_give_the_same_audio(generator, fresh_output):
    chunks = list(generator.stream(TEXT, **SETTINGS, chunk_frames=4))
    assert all(len(c) == 4 * SAMPLES_PER_FRAME for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 4 * SAMPLES_PER_FRAME
    np.testing.assert_allclose(np.concatenate(chunks), fresh_output, atol=1e-5)


def test_a_stream_started_while_the_only_slot_is_taken_waits_for_it(generator, fresh_output):
    first = generator.stream(TEXT, **SETTINGS)
    next(first)
    second = generator.stream(TEXT, **SETTINGS)
    first.close()
    assert next(first, None) is None
    np.testing.assert_array_equal(np.concatenate(list(second)), fresh_output)


@pytest.mark.parametrize("stop", ["close", "break", "exception"])
def test_an_abandoned_stream_leaves_the_generator_as_fresh(generator, fresh_output, stop):
    speech = generator.stream(TEXT, **SETTINGS)
    with pytest.raises(RuntimeError) if stop == "exception" else nullcontext():
        for i, _ in enumerate(speech):
            if i == 2:
                if stop == "close":
                    speech.close()
                elif stop == "exception":
                    raise RuntimeError("the consumer failed")
                break
    np.testing.assert_array_equal(np.concatenate(list(generator.stream(TEXT, **SETTINGS))), fresh_output)


def test_same_seed_same_speech_and_topk_1_is_deterministic(generator):
    first = np.concatenate(list(generator.stream(TEXT, speaker=1, seed=3, max_seconds=0.5)))
    second = np.concatenate(list(generator.stream(TEXT, speaker=1, seed=3, max_seconds=0.5)))
    np.testing.assert_array_equal(first, second)
    greedy_codes = []
    for seed in (1, 2):
        speech = generator.stream(TEXT, topk=1, seed=seed, max_seconds=0.5)
        list(speech)
        greedy_codes.append(speech.codes)
    np.testing.assert_array_equal(greedy_codes[0], greedy_codes[1])


def test_an_error_inside_generation_surfaces_and_the_generator_stays_usable(generator, fresh_output, monkeypatch):
    def failing_decode(codes):
        raise RuntimeError("decoder fault")

    with monkeypatch.context() as patch:
        patch.setattr(generator.codec.mimi, "decode", failing_decode)
        with pytest.raises(RuntimeError, match="decoder fault"):
            list(generator.stream(TEXT, **SETTINGS))
    np.testing.assert_array_equal(np.concatenate(list(generator.stream(TEXT, **SETTINGS))), fresh_output)


def test_prompt_rows_follow_the_reference_layout(generator):
    codes = np.arange(32 * 3).reshape(32, 3) % 2048
    tokens, mask = generator.prompt_rows("Fine.", 0, [Segment(speaker=1, text="Hi.", codes=codes)])
    context_ids = generator.tokenizer.encode(1, "Hi.")
    new_ids = generator.tokenizer.encode(0, "Fine.")
    tok = generator.tokenizer
    assert context_ids[0] == new_ids[0] == tok.bos_id and context_ids[-1] == new_ids[-1] == tok.eos_id
    n = len(context_ids)
    assert tokens.shape == (n + 4 + len(new_ids), 33)
    assert tokens[:n, -1].tolist() == context_ids and mask[:n].sum(1).tolist() == [1] * n and mask[:n, -1].all()
    assert not tokens[:n, :-1].any()
    audio, audio_mask = tokens[n : n + 4], mask[n : n + 4]
    assert torch.equal(audio[:3, :-1], torch.as_tensor(codes).T) and not audio[3].any()
    assert audio_mask[:, :-1].all() and not audio_mask[:, -1].any()
    assert tokens[n + 4 :, -1].tolist() == new_ids


def test_context_audio_is_encoded_with_mimi(generator):
    audio = np.random.default_rng(0).standard_normal(3 * SAMPLES_PER_FRAME).astype(np.float32) * 0.1
    segment = generator.encode_segment(Segment(speaker=1, text="Hi.", audio=audio))
    assert segment.codes.shape == (32, 3)
    with_audio, _ = generator.prompt_rows("Fine.", 0, [Segment(speaker=1, text="Hi.", audio=audio)])
    with_codes, _ = generator.prompt_rows("Fine.", 0, [segment])
    assert torch.equal(with_audio, with_codes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "   "}, "text is empty"),
        ({"text": b"Hi."}, "text is empty"),
        ({"speaker": -1}, "--speaker must be a whole number from 0 to 999999, got -1"),
        ({"speaker": True}, "--speaker must be a whole number"),
        ({"speaker": "1"}, "--speaker must be a whole number"),
        ({"temperature": 0}, "--temperature must be a number from 0.01 to 10, got 0"),
        ({"temperature": float("nan")}, "--temperature must be a number from 0.01 to 10, got nan"),
        ({"temperature": "hot"}, "--temperature must be a number"),
        ({"topk": 0}, "--topk must be a whole number from 1 to 2051, got 0"),
        ({"topk": 1.5}, "--topk must be a whole number"),
        ({"seed": 2**64}, "--seed must be a whole number from 0 to"),
        ({"seed": -1}, "--seed must be a whole number from 0 to"),
        ({"chunk_frames": 0}, "chunk_frames"),
        ({"max_seconds": 0.01}, "--max-seconds must be a number from 0.08 to 163.84 seconds"),
        ({"max_seconds": float("inf")}, "--max-seconds must be a number from 0.08 to 163.84 seconds"),
        ({"max_seconds": 10**400}, "--max-seconds must be a number from 0.08 to 163.84 seconds"),
        ({"max_seconds": 163.84}, "lower --max-seconds"),
        ({"context": [Segment(1, "Hi.", codes=np.full((32, 2), 2051))]}, "must lie in 0..2050"),
        ({"context": [Segment(1, "Hi.", codes=np.zeros((8, 2), dtype=int))]}, "shape"),
        ({"context": [Segment(1, "Hi.", audio=np.zeros((2, 1920), np.float32))]},
         r"context audio must be 24 kHz mono float samples \[samples\], got float32 of shape \[2, 1920\]"),
        ({"context": [Segment(1, "Hi.", audio=np.zeros(1920, np.int16))]}, "got int16 of shape"),
        ({"context": [Segment(1, "Hi.", audio=np.full(1920, np.nan, np.float32))]}, "not numbers"),
        ({"context": [Segment(1, "Hi.", audio=np.zeros(0, np.float32))]}, "context audio is empty"),
    ],
)
def test_bad_arguments_raise_before_any_audio(generator, kwargs, message):
    arguments = {"text": TEXT, **kwargs}
    with pytest.raises(CsmError, match=message):
        generator.stream(**arguments)


@pytest.mark.parametrize(("frames", "room"), [(2000, "at most 2.1"), (2040, "no")])
def test_context_that_fills_the_window_says_what_to_shorten(generator, frames, room):
    long_context = [Segment(1, "Hi.", codes=np.zeros((32, frames), dtype=int))]
    with pytest.raises(CsmError, match=f"leaving room for {room} seconds.*shorten the context"):
        generator.stream(TEXT, context=long_context)


def test_streams_of_a_generator_with_slots_interleave_frame_by_frame(generator, fresh_output):
    """Two streams in one engine of two slots, read in turn: each says what it says alone (the same codes; samples that
    differ only by the rounding of Mimi's batched decode), and both leave their slots when they end."""
    other_text = "A second listener, at the same time."
    alone = generator.stream(other_text, **SETTINGS)
    alone_audio = np.concatenate(list(alone))
    two = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, slots=2)
    first, second = two.stream(TEXT, **SETTINGS), two.stream(other_text, **SETTINGS)
    audio = round_robin({"first": first, "second": second})
    np.testing.assert_allclose(audio["first"], fresh_output, atol=1e-5)
    np.testing.assert_allclose(audio["second"], alone_audio, atol=1e-5)
    np.testing.assert_array_equal(second.codes, alone.codes)
    two.close()
    assert two.engine.free == [0, 1] and not two.engine.busy


def test_threads_stream_at_once_from_one_generator(generator, fresh_output):
    """Streams started and read on several threads at once each get their own speech: a stream is a queue its reader
    takes from, the model thread fills them all."""
    two = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, slots=2)
    heard: dict[int, np.ndarray] = {}

    def listen(index: int) -> None:
        heard[index] = np.concatenate(list(two.stream(TEXT, **SETTINGS)))

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(3)]  # one more than the slots: it waits
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    two.close()
    assert sorted(heard) == [0, 1, 2]
    for audio in heard.values():
        np.testing.assert_allclose(audio, fresh_output, atol=1e-5)


def test_closing_a_stream_from_another_thread_ends_it_for_its_reader(generator):
    speech = generator.stream(TEXT, seed=1, max_seconds=8.0, stop_at_end=False)
    next(speech)
    closer = threading.Timer(0.2, speech.close)
    closer.start()
    rest = list(speech)
    closer.join()
    assert len(rest) < 99 and speech.codes.shape[1] == 1 + len(rest)
    deadline = time.monotonic() + 10
    while generator.engine.busy:  # the model thread leaves the slot before its next step
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert generator.engine.free == [0]
