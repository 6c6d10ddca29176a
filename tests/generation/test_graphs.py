"""The frame engine's CUDA graphs against its eager steps on a GPU: the same codes for the same seed in every bucket,
the same end of speech, and no host synchronisation while frames stream."""

import numpy as np
import pytest
import torch
from speech_end import SILENT_AFTER_FIFTH_FRAME, end_speech_at, silence_frames

from csm_cli.audio import NUM_CODEBOOKS, seconds_to_frames
from csm_cli.bench import SyntheticTokenizer, random_model
from csm_cli.generation.codec import Codec
from csm_cli.generation.ending import TAIL_SECONDS
from csm_cli.generation.generator import StreamingGenerator
from csm_cli.generation.prompt import Segment
from csm_cli.loading.config import CSM_1B
from csm_cli.loading.generator import LoadOptions, load_generator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the graphs exist only there"),
]

TEXT = "Hello there. How are you today?"
CONTEXT = [Segment(1, "How are you today?", codes=np.random.default_rng(0).integers(0, 2048, (32, 25)))]
LONG_CONTEXT = [Segment(1, "How are you today?", codes=np.random.default_rng(1).integers(0, 2048, (32, 250)))]


@pytest.fixture(scope="module")
def eager(transformers_dir, mimi_file) -> StreamingGenerator:
    return load_generator(LoadOptions(str(transformers_dir), codec=mimi_file, device="cuda", fast=False))


@pytest.fixture(scope="module")
def graphed(eager) -> StreamingGenerator:
    return StreamingGenerator(eager.model, eager.tokenizer, eager.codec)


def speak(generator: StreamingGenerator, **settings: object) -> tuple[np.ndarray, np.ndarray]:
    speech = generator.stream(TEXT, **settings)
    audio = np.concatenate(list(speech))
    return speech.codes, audio


def assert_same_codes(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    differ = np.flatnonzero((got != want).any(axis=0))
    assert not differ.size, f"frames {differ.tolist()} differ, first at frame {differ[0]}"


@pytest.mark.parametrize("settings", [
    {"seed": 7},
    {"seed": 3, "speaker": 1, "chunk_frames": 4},
    {"seed": 11, "context": CONTEXT},
    {"seed": 12, "context": LONG_CONTEXT},  # 20 s of context, prefilled at 512 rows
    {"seed": 5, "topk": 10, "temperature": 0.7},
    {"seed": 9, "topk": 1},
    {"seed": 10, "topk": 500},  # a graph captured for 512 candidates
    {"seed": 13, "stop_at_end": False},
])
def test_graphed_codes_equal_eager_codes(eager, graphed, settings):
    assert eager.engine.graphs is None and graphed.engine.graphs is not None
    want, want_audio = speak(eager, max_seconds=4.0, **settings)
    got, got_audio = speak(graphed, max_seconds=4.0, **settings)
    assert_same_codes(got, want)
    np.testing.assert_allclose(got_audio, want_audio, atol=1e-4)


def test_streams_in_every_bucket_get_the_eager_codes_they_get_alone(eager):
    """Eight streams in a graphed engine of eight slots, started together: each gets what it gets alone, eagerly."""
    eight = StreamingGenerator(eager.model, eager.tokenizer, eager.codec, slots=8)
    settings = [{"seed": seed, "max_seconds": 1.6, "stop_at_end": False} for seed in range(8)]
    speeches = [eight.stream(TEXT, **kwargs) for kwargs in settings]
    for speech in speeches:
        list(speech)
    for speech, kwargs in zip(speeches, settings, strict=True):
        assert_same_codes(speech.codes, speak(eager, **kwargs)[0])
    eight.close()


def test_full_size_random_weights_graphed_codes_equal_eager_codes():
    device = torch.device("cuda")
    model = random_model(CSM_1B, device, torch.bfloat16)
    from moshi.models import loaders

    codec = Codec(loaders.get_mimi(None, device=device, num_codebooks=NUM_CODEBOOKS))
    tokenizer = SyntheticTokenizer(CSM_1B.text_vocab_size)
    eager = StreamingGenerator(model, tokenizer, codec, fast=False)
    graphed = StreamingGenerator(model, tokenizer, codec)
    for settings in ({"seed": 1}, {"seed": 2, "context": CONTEXT}):
        want, _ = speak(eager, max_seconds=3.2, stop_at_end=False, **settings)
        got, _ = speak(graphed, max_seconds=3.2, stop_at_end=False, **settings)
        assert_same_codes(got, want)


def test_end_of_speech_stops_both_paths_at_the_same_frame(eager, monkeypatch):
    """The graphed path reads the end-of-speech frame a step late, but must stop at the same frame."""
    fourth = end_speech_at(monkeypatch, 4, torch.device("cuda"))
    graphed = StreamingGenerator(eager.model, eager.tokenizer, eager.codec)  # captured with the end in its step
    for stop_at_end, frames in ((True, 3), (False, 25)):
        fourth.zero_()
        want, _ = speak(eager, seed=4, max_seconds=2.0, stop_at_end=stop_at_end)
        fourth.zero_()
        got, _ = speak(graphed, seed=4, max_seconds=2.0, stop_at_end=stop_at_end)
        assert want.shape[1] == frames
        assert_same_codes(got, want)


def test_silence_ends_both_paths_at_the_same_frame(eager, monkeypatch):
    silent = silence_frames(monkeypatch, eager.codec, SILENT_AFTER_FIFTH_FRAME, 40)
    graphed = StreamingGenerator(eager.model, eager.tokenizer, eager.codec)  # captured with the silence in Mimi
    silent.zero_()
    want, _ = speak(eager, seed=4, max_seconds=2.4)
    silent.zero_()
    got, _ = speak(graphed, seed=4, max_seconds=2.4)
    assert want.shape[1] == 5 + seconds_to_frames(TAIL_SECONDS)
    assert_same_codes(got, want)


@pytest.mark.parametrize("stop_at_end", [False, True])  # True: the end-of-speech rule reads every frame
def test_no_host_synchronisation_while_frames_stream(graphed, stop_at_end):
    speech = graphed.stream(TEXT, seed=1, max_seconds=2.0, stop_at_end=stop_at_end)
    next(speech)  # the prefill, and the first step
    torch.cuda.set_sync_debug_mode("error")
    try:
        chunks = list(speech)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(chunks) == 24


def test_an_abandoned_graphed_stream_leaves_the_generator_as_fresh(graphed):
    want, want_audio = speak(graphed, seed=8, max_seconds=1.6)
    abandoned = graphed.stream(TEXT, seed=8, max_seconds=1.6)
    next(abandoned)
    abandoned.close()
    got, got_audio = speak(graphed, seed=8, max_seconds=1.6)
    assert_same_codes(got, want)
    np.testing.assert_allclose(got_audio, want_audio, atol=1e-5)
