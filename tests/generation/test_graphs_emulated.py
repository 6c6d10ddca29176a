"""The frame engine's CUDA graphs on the CPU: each graph emulated with a real graph's semantics (emulated_graph.py:
replays bound to the captured tensors, host values frozen, host synchronisation refused), the host reading each
step one step late as on CUDA. Every bucket replays, and each stream gets the codes the eager engine gives it. What
only CUDA can show is tested on a GPU in test_graphs.py."""

from collections import Counter
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from emulated_graph import EmulatedGraph
from speech_end import SILENT_AFTER_FIFTH_FRAME, end_speech_at, silence_frames
from test_engine import STREAMS, Driver, prompt

from csm_cli.audio import SAMPLES_PER_FRAME, seconds_to_frames
from csm_cli.generation import graphs
from csm_cli.generation.conversation import Conversation, Utterance
from csm_cli.generation.ending import TAIL_SECONDS
from csm_cli.generation.engine import FrameEngine
from csm_cli.generation.generator import Settings, StreamingGenerator
from csm_cli.generation.prompt import Segment
from csm_cli.generation.scheduler import Scheduler
from csm_cli.loading.cache import VOICE_ROWS
from csm_cli.loading.quantize import Quantization
from csm_cli.loading.repository import resolve_model
from csm_cli.loading.voice_rows import CachedVoiceRows
from csm_cli.progress import LoadProgress

TEXT = "Hello there. How are you today?"
FRAMES = 3


class _Event:
    def record(self, stream: object = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def emulated_cuda(monkeypatch) -> Counter:
    """CUDA graphs emulated on the CPU, the other CUDA-only pieces stand-ins; the counter gathers the replays of each
    graph, by its name."""
    replays: Counter = Counter()

    def capture(step, pool, keep=()):
        kept = [tensor.clone() for tensor in keep]
        with torch.inference_mode():
            for _ in range(graphs.WARMUP_RUNS):
                step()
        graph = EmulatedGraph(step)
        for tensor, before in zip(keep, kept, strict=True):
            tensor.copy_(before)
        name = getattr(step, "__name__", "step")
        replay = graph.replay
        graph.replay = lambda: (replays.update([name]), replay())
        return graph

    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 0))
    return replays


def graphed_engine(generator, slots: int) -> FrameEngine:
    """An engine whose steps replay as (emulated) CUDA graphs, read one step late, at the shapes CUDA runs."""
    engine = FrameEngine(generator.model, generator.codec, slots, graphed=True, lookahead=1)
    engine.graph_shapes = True
    return engine


def eager_engine(generator, slots: int = 1) -> FrameEngine:
    """The eager engine as it runs on CUDA (prompts padded, attention over the whole window): what the graphs must
    equal exactly."""
    engine = FrameEngine(generator.model, generator.codec, slots)
    engine.graph_shapes = True
    return engine


def test_construction_captures_a_step_per_bucket_and_mimi(generator, emulated_cuda, monkeypatch):
    captured = []
    monkeypatch.setattr(graphs, "capture", lambda step, pool, keep=(): captured.append(step) or EmulatedGraph(step))
    FrameEngine(generator.model, generator.codec, 8, graphed=True, captured=lambda: captured.append("reported"))
    assert graphs.FrameGraphs.count(8) == 5 == captured.count("reported") == len(captured) - 5  # 1, 2, 4, 8, Mimi


def test_every_bucket_replays_the_codes_the_eager_engine_gives(generator, emulated_cuda):
    """Streams join an engine of 4 slots one step after another, in slots 0, 1 and 2..3: the steps replay the graphs
    of its buckets, 1, 2 and 4 rows, with Mimi's after each, and each stream's codes and samples are those the eager
    engine gives it on the same steps (which are those it gets alone: test_engine.py). A stream whose top k passes
    the default candidates replays a graph captured for it."""
    joins = {0: [0], 1: [1], 2: [2, 3]}
    heard = []
    for engine in (eager_engine(generator, 4), graphed_engine(generator, 4)):
        driver = Driver(engine)

        def before(step: int, driver: Driver = driver) -> None:
            for index in joins.get(step, []):
                assert driver.join(index, prompt(generator, STREAMS[index], FRAMES)) == index

        driver.run(before)
        heard.append([(driver.codes(index), np.concatenate([frame.samples for frame in driver.frames[index]]))
                      for index in range(len(STREAMS))])
    for (got, got_samples), (want, want_samples) in zip(*heard, strict=True):
        assert got.shape == (32, FRAMES)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got_samples, want_samples, atol=1e-5)  # Mimi's graph decodes every row
    steps = engine.graphs._steps
    assert {rows for rows, _ in steps} == {1, 2, 4} and {count for _, count in steps} == {64, 2051}
    assert emulated_cuda["decode_step"] == sum(count for name, count in emulated_cuda.items() if name != "decode_step")


def on_engine(generator, engine: FrameEngine) -> StreamingGenerator:
    """A generator of `generator`'s parts on `engine`, each prompt prefilled whole."""
    speaker = StreamingGenerator(generator.model, generator.tokenizer, generator.codec)
    speaker.engine, speaker.scheduler = engine, Scheduler(engine)
    speaker.reuse_prefix = False
    return speaker


@pytest.fixture
def graphed(generator, emulated_cuda) -> StreamingGenerator:
    """A generator whose engine replays (emulated) graphs, one step late."""
    speaker = on_engine(generator, graphed_engine(generator, 1))
    yield speaker
    speaker.close()


@pytest.fixture
def eager(generator) -> StreamingGenerator:
    speaker = on_engine(generator, eager_engine(generator))
    yield speaker
    speaker.close()


@pytest.mark.parametrize("stop_at_end", [True, False])
def test_the_end_of_speech_read_a_step_late_stops_where_eager_does(generator, eager, emulated_cuda, monkeypatch,
                                                                   stop_at_end):
    ends = end_speech_at(monkeypatch, 4, torch.device("cpu"))
    with_graphs = on_engine(generator, graphed_engine(generator, 1))  # captured with the end in its step
    codes = []
    for speaker in (eager, with_graphs):
        ends.zero_()
        speech = speaker.stream(TEXT, seed=2, max_seconds=0.64, stop_at_end=stop_at_end)
        list(speech)
        codes.append(speech.codes)
    with_graphs.close()
    np.testing.assert_array_equal(codes[1], codes[0])
    assert codes[0].shape[1] == (3 if stop_at_end else 8)


@pytest.fixture
def silent_after_fifth_frame(generator, monkeypatch) -> torch.Tensor:
    """Request it before `graphed`, so that Mimi's graph is captured with the silence in it."""
    return silence_frames(monkeypatch, generator.codec, SILENT_AFTER_FIFTH_FRAME, 40)


def test_the_graphs_end_on_silence_where_eager_does(eager, silent_after_fifth_frame, graphed):
    """The end-of-speech rule reads the host copies, a step late; the frame queued past the end is dropped."""
    codes = []
    for speaker in (eager, graphed):
        silent_after_fifth_frame.zero_()
        speech = speaker.stream(TEXT, seed=2, max_seconds=2.4)
        audio = np.concatenate(list(speech))
        assert len(audio) == speech.codes.shape[1] * SAMPLES_PER_FRAME
        codes.append(speech.codes)
    np.testing.assert_array_equal(codes[1], codes[0])
    assert codes[0].shape[1] == 5 + seconds_to_frames(TAIL_SECONDS)


def test_a_stream_closed_mid_way_leaves_the_graphed_engine_as_fresh(graphed):
    first = graphed.stream(TEXT, seed=4, max_seconds=0.4)
    first_audio = np.concatenate(list(first))
    abandoned = graphed.stream(TEXT, seed=4, max_seconds=0.4)
    next(abandoned)
    abandoned.close()
    again = graphed.stream(TEXT, seed=4, max_seconds=0.4)
    np.testing.assert_array_equal(np.concatenate(list(again)), first_audio)


def test_the_graphs_prefill_from_the_cached_rows_and_say_what_a_whole_eager_prefill_says(generator, eager, graphed,
                                                                                        monkeypatch):
    prompt_segment = Segment(1, "How are you today?", codes=np.random.default_rng(2).integers(0, 2048, (32, 40)))
    script = [Utterance(0, "Hello there."), Utterance(1, "I am fine.")]
    starts = []
    prefill = generator.model.prefill
    monkeypatch.setattr(generator.model, "prefill", lambda *args, **kw: starts.append(args[2]) or prefill(*args, **kw))
    spoken = []
    for speaker, reuse_prefix in ((eager, False), (graphed, True)):
        speaker.reuse_prefix = reuse_prefix
        conversation = Conversation(speaker, Settings(topk=1, seed=3, max_seconds=0.32), prompts=[prompt_segment])
        list(conversation.speak(script))
        spoken.append([segment.codes for segment in conversation.history])
    voice = graphed.segment_rows(prompt_segment)  # prefilled as a pass of its own, then the rest after it
    assert starts[:6] == [0, voice] * 3 and starts[6] > voice  # the graphed second line: past the voice prompt
    for got, want in zip(spoken[1], spoken[0], strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_graphs_read_back_the_voice_rows_an_eager_engine_kept_and_say_what_it_says(generator, transformers_dir,
                                                                                      emulated_cuda, tmp_path,
                                                                                      monkeypatch):
    """On CUDA the voice rows are prefilled padded, then the rest after them: kept by one engine (process), read back
    by the next, whose prefill starts past them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    repository = resolve_model(str(transformers_dir), LoadProgress(enabled=False))
    voice_cache = CachedVoiceRows(repository, Quantization.NONE, torch.float32, torch.device("cpu"))
    voice = Segment(1, "How are you today?", codes=np.random.default_rng(3).integers(0, 2048, (32, 40)))
    starts = []
    prefill = generator.model.prefill
    monkeypatch.setattr(generator.model, "prefill", lambda *args, **kw: starts.append(args[2]) or prefill(*args, **kw))
    spoken = []
    for engine in (eager_engine(generator), graphed_engine(generator, 1)):
        engine.voice_cache = voice_cache
        speaker = on_engine(generator, engine)
        speaker.reuse_prefix = True
        conversation = Conversation(speaker, Settings(topk=1, seed=3, max_seconds=0.32), prompts=[voice])
        list(conversation.speak([Utterance(0, "Hello there.")]))
        speaker.close()
        spoken.append(conversation.history[0].codes)
    rows = generator.segment_rows(voice)
    assert starts == [0, rows, rows] and len(VOICE_ROWS.entries()) == 1
    np.testing.assert_array_equal(spoken[1], spoken[0])
