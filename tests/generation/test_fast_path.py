"""The fast path on the CPU: the eager path stays what it was, and the fast path's orchestration (prefill, one frame
queued ahead, end of speech read a frame late, Mimi's state swapped in and out) yields the eager codes when each
graph is emulated with a real graph's semantics (emulated_graph.py): replays bound to the captured tensors, host
values frozen, no host synchronisation. What only CUDA can show is tested on a GPU in test_graphs.py."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from emulated_graph import EmulatedGraph
from round_robin import round_robin
from speech_end import SILENT_AFTER_FIFTH_FRAME, end_speech_at, silence_frames

from csm_cli.audio import SAMPLES_PER_FRAME, seconds_to_frames
from csm_cli.generation import graphs
from csm_cli.generation.conversation import Conversation, Utterance
from csm_cli.generation.ending import TAIL_SECONDS
from csm_cli.generation.generator import Settings, StreamingGenerator
from csm_cli.generation.model import CSM
from csm_cli.generation.prompt import Segment, frame_row

TEXT = "Hello there. How are you today?"
CONTEXT = [Segment(1, "How are you today?", codes=np.random.default_rng(0).integers(0, 2048, (32, 4)))]
LONG_CONTEXT = [Segment(1, "How are you today?", codes=np.random.default_rng(1).integers(0, 2048, (32, 90)))]


def reference_codes(model: CSM, tokens: torch.Tensor, mask: torch.Tensor, seed: int, frames: int) -> np.ndarray:
    """The model's steps called directly as a CPU runs them (the prompt's own rows, attention over the filled
    positions): the prompt, then each frame fed back, until an all-zero frame."""
    rng = torch.Generator().manual_seed(seed)
    last_h = model.prefill(tokens, mask, padded=False)
    out = []
    for position in range(len(tokens), len(tokens) + frames):
        codes = model.sample_frame(last_h, 50, 0.9, rng)
        if not codes.any():
            break
        out.append(codes[0])
        last_h = model.backbone_step(*frame_row(codes), torch.tensor([position]), attend=position + 1)
    return torch.stack(out, dim=1).numpy()


def test_on_a_cpu_the_generator_never_builds_graphs_and_its_codes_are_the_models_steps(
        transformers_dir, mimi_file, monkeypatch):
    def no_graphs(*args: object, **kwargs: object) -> None:
        raise AssertionError("FrameGraphs built on a CPU")

    monkeypatch.setattr("csm_cli.generation.generator.FrameGraphs", no_graphs)
    generator = StreamingGenerator.load(str(transformers_dir), codec=mimi_file, device="cpu")
    assert generator.graphs is None and not generator.graph_shapes
    speech = generator.stream(TEXT, context=CONTEXT, seed=5, max_seconds=0.8)
    list(speech)
    tokens, mask = generator.prompt_rows(TEXT, 0, CONTEXT)
    np.testing.assert_array_equal(speech.codes, reference_codes(generator.model, tokens, mask, 5, 10))


@pytest.fixture
def ends_at_fourth_frame(monkeypatch) -> torch.Tensor:
    """Request it before `simulated`, so that the heads graph is captured with the end in it."""
    return end_speech_at(monkeypatch, 4, torch.device("cpu"))


def test_stop_at_end_false_generates_the_whole_budget(generator, ends_at_fourth_frame):
    lengths = []
    for stop_at_end in (True, False):
        ends_at_fourth_frame.zero_()
        speech = generator.stream(TEXT, seed=2, max_seconds=0.8, stop_at_end=stop_at_end)
        chunks = list(speech)
        assert len(chunks) == speech.codes.shape[1]
        lengths.append(len(chunks))
    assert lengths == [3, 10]


class _Event:
    def record(self, stream: object = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def emulated_cuda(monkeypatch) -> list[EmulatedGraph]:
    """CUDA graphs emulated on the CPU, the other CUDA-only pieces stand-ins; the list gathers every capture."""
    captures: list[EmulatedGraph] = []

    def capture(step, pool, generator=None):
        with torch.inference_mode():
            for _ in range(graphs.WARMUP_RUNS):
                step()
        captures.append(EmulatedGraph(step, generator))
        return captures[-1]

    real_zeros = torch.zeros
    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 0))
    monkeypatch.setattr(torch, "zeros", lambda *shape, pin_memory=False, **kw: real_zeros(*shape, **kw))
    return captures


@pytest.fixture
def eager(generator) -> StreamingGenerator:
    """The eager path as it runs on CUDA, at the graphs' shapes, each prompt prefilled whole: what the fast path
    must equal exactly."""
    eager = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, fast=False)
    eager.graph_shapes, eager.reuse_prefix = True, False
    return eager


@pytest.fixture
def simulated(generator, emulated_cuda) -> StreamingGenerator:
    """A generator on the fast path, its graphs emulated on the CPU, each prompt prefilled whole."""
    fast = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, fast=False)
    fast.graphs = graphs.FrameGraphs(fast.model, fast.codec, fast._rng, 50, 0.9)
    fast.reuse_prefix = False
    return fast


def test_construction_captures_the_graphs_it_counts_and_reports_each(generator, emulated_cuda):
    reported = []
    graphs.FrameGraphs(generator.model, generator.codec, torch.Generator(), 50, 0.9, lambda: reported.append(1))
    assert len(emulated_cuda) == len(reported) == graphs.FrameGraphs.count(generator.model) == 6 + 3


@pytest.mark.parametrize("kwargs", [
    {"seed": 7},
    {"seed": 11, "context": CONTEXT, "chunk_frames": 3},
    {"seed": 3, "context": LONG_CONTEXT},  # prefilled at 128 rows
    {"seed": 5, "topk": 10, "temperature": 0.7},
    {"seed": 9, "max_seconds": 0.08},
])
def test_the_fast_path_yields_the_eager_codes_and_audio(eager, simulated, kwargs):
    settings = {"max_seconds": 0.64, **kwargs}
    want = eager.stream(TEXT, **settings)
    want_audio = np.concatenate(list(want))
    fast = simulated.stream(TEXT, **settings)
    fast_audio = np.concatenate(list(fast))
    np.testing.assert_array_equal(fast.codes, want.codes)
    np.testing.assert_allclose(fast_audio, want_audio, atol=1e-5)


@pytest.mark.parametrize("stop_at_end", [True, False])
def test_the_fast_path_reads_the_end_of_speech_a_frame_late_but_stops_where_eager_does(
        eager, ends_at_fourth_frame, simulated, stop_at_end):
    codes = []
    for speaker in (eager, simulated):
        ends_at_fourth_frame.zero_()
        speech = speaker.stream(TEXT, seed=2, max_seconds=0.64, stop_at_end=stop_at_end)
        list(speech)
        codes.append(speech.codes)
    np.testing.assert_array_equal(codes[1], codes[0])
    assert codes[0].shape[1] == (3 if stop_at_end else 8)


@pytest.fixture
def silent_after_fifth_frame(generator, monkeypatch) -> torch.Tensor:
    """Request it before `simulated`, so that Mimi's graph is captured with the silence in it."""
    return silence_frames(monkeypatch, generator.codec, SILENT_AFTER_FIFTH_FRAME, 40)


def test_the_fast_path_ends_on_silence_where_eager_does(eager, silent_after_fifth_frame, simulated):
    """The end-of-speech rule reads the fast path's host copies; its frame queued ahead is dropped."""
    codes = []
    for speaker in (eager, simulated):
        silent_after_fifth_frame.zero_()
        speech = speaker.stream(TEXT, seed=2, max_seconds=2.4)
        audio = np.concatenate(list(speech))
        assert len(audio) == speech.codes.shape[1] * SAMPLES_PER_FRAME
        codes.append(speech.codes)
    np.testing.assert_array_equal(codes[1], codes[0])
    assert codes[0].shape[1] == 5 + seconds_to_frames(TAIL_SECONDS)


def test_an_abandoned_fast_stream_leaves_mimi_and_the_model_as_fresh(generator, simulated):
    first = simulated.stream(TEXT, seed=4, max_seconds=0.64)
    first_audio = np.concatenate(list(first))
    abandoned = simulated.stream(TEXT, seed=4, max_seconds=0.64)
    next(abandoned)
    next(abandoned)
    abandoned.close()
    assert all(part._streaming_state is None for part in simulated.graphs.mimi._parts)
    again = simulated.stream(TEXT, seed=4, max_seconds=0.64)
    np.testing.assert_array_equal(np.concatenate(list(again)), first_audio)
    list(generator.stream(TEXT, seed=4, max_seconds=0.16))  # Mimi still streams on the eager path


def test_graphed_mimi_decodes_like_the_codec(generator, simulated):
    codes = torch.randint(0, 2048, (32, 6), generator=torch.Generator().manual_seed(0))
    with generator.codec.streaming():
        want = np.concatenate([generator.codec.decode_chunk(codes[:, i : i + 1]) for i in range(6)])
    mimi = simulated.graphs.mimi
    with mimi.streaming():
        got = np.concatenate([mimi.decode_chunk(codes[:, i : i + 2]) for i in range(0, 6, 2)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_fast_path_prefills_from_the_cached_rows_and_says_what_a_whole_eager_prefill_says(
        generator, eager, simulated):
    prompt = Segment(1, "How are you today?", codes=np.random.default_rng(2).integers(0, 2048, (32, 40)))
    script = [Utterance(0, "Hello there."), Utterance(1, "How are you today?"), Utterance(0, "I am fine.")]
    spoken = []
    for speaker, reuse_prefix in ((eager, False), (simulated, True)):
        speaker.reuse_prefix = reuse_prefix
        generator.model.reset_caches()
        conversation = Conversation(speaker, Settings(topk=1, seed=3, max_seconds=0.4), prompts=[prompt])
        list(conversation.speak(script))
        spoken.append([segment.codes for segment in conversation.history])
    assert int(simulated.graphs.start) > generator.segment_rows(prompt)  # the last line's prefill began past it
    for got, want in zip(spoken[1], spoken[0], strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_fast_stream_and_a_batch_beside_it_interleave(simulated):
    """The stream on the generator's own caches replays the graphs while a batch beside it runs eagerly on caches of
    its own; stepped in turn, frame by frame, each says what it says alone."""
    settings = {"seed": 6, "max_seconds": 0.64}
    other = "A second listener."
    fast_alone = np.concatenate(list(simulated.stream(TEXT, **settings)))
    eager_alone = np.concatenate(list(simulated.stream(other, **settings, batch=simulated.new_batch(1))))
    audio = round_robin({"fast": simulated.stream(TEXT, **settings),
                         "eager": simulated.stream(other, **settings, batch=simulated.new_batch(1))})
    np.testing.assert_allclose(audio["fast"], fast_alone, atol=1e-5)
    np.testing.assert_array_equal(audio["eager"], eager_alone)
