"""`csm bench`: load once, then speak a fixed set of texts with fixed seeds for a fixed number of frames (end of
speech ignored), the way a listener gets them: each chunk goes into a ring that a simulated sound card drains at
real-time pace from the first chunk on.

- time to first audio: from the text handed to `StreamingGenerator.stream` to its first chunk in the ring;
- per frame: between consecutive chunks (one frame each) arriving in the ring, Mimi's decode included;
- Mimi per frame: the same codes decoded again, alone; real-time factor: per frame (p50) / 80 ms;
- with `--conversation N`: N lines spoken as a conversation after the context (as voice prompt), each keeping the
  lines before as context, twice: each prompt prefilled whole, then only its rows the cache does not hold yet; the
  first audio of each line, both ways;
- with `--prefill ROWS,...`: the backbone's prefill of prompts of so many rows, in each form of the int8 product
  (`quantize.Int8Linear`): the int8 kernel, the weights converted to bfloat16 at each call, a kept bfloat16 copy;
  milliseconds per prompt row, the fastest of three;
- with `--streams N`: the texts in turn as N streams started together in an engine of N slots (as `csm serve` runs
  them, CUDA graphs per bucket on a GPU), taken a chunk each in turn, then one stream in an engine of one slot (as
  `csm say` runs it): the first audio of each stream (streams started together are prefilled before their first
  step), the time per frame of each stream (one step of the engine and Mimi's batched decode), and the frames per
  second of all streams together, and its ratio to one stream's.
"""

import math
import resource
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch import nn

from .audio import CODEC_CARDINALITY, FRAME_SECONDS, NUM_CODEBOOKS, SAMPLE_RATE, seconds_to_frames
from .checks import number, whole_number
from .errors import CsmError
from .generation.args import MAX_SECONDS, CsmArgs
from .generation.codec import Codec
from .generation.conversation import Conversation, Utterance
from .generation.generator import Settings, StreamingGenerator
from .generation.model import CSM, SHORTEST_PREFILL, KVCache
from .generation.prompt import Segment, Tokenizer, audio_rows
from .loading.config import CSM_1B
from .loading.generator import LoadOptions, load_generator, resolve_device, resolve_precision
from .loading.quantize import (
    Int8Linear,
    Quantization,
    dequantized_rows,
    quantization_of,
    quantize,
    set_dequantized_rows,
)
from .loading.repository import TOKENIZER_FILES, resolve_repo
from .loading.tokenizer import TextTokenizer
from .output.playback import Underruns
from .output.ring import RingBuffer
from .progress import LoadProgress
from .threads import on_model_thread

TEXTS = (
    "The quick brown fox jumps over the lazy dog while the morning sun climbs slowly above the quiet hills.",
    "Please remember to bring an umbrella tomorrow, because the forecast says heavy rain will arrive after lunch.",
    "Streaming speech means that the first words play while the rest of the sentence is still being generated.",
)
CONTEXT_TEXT = "This is what was said before, so that the model keeps the same voice, pace and mood from here on."
SEED = 1234  # text i is spoken with seed SEED + i
WARMUP_FRAMES = 4
MAX_STREAMS = 64
CONSUMER_BLOCK_S = 0.01  # the simulated sound card takes 10 ms at a time
POLL_S = 0.001
CHARS_PER_TOKEN = 4  # Llama-3's tokenizer on English text, roughly
RANDOM_WEIGHTS = "random, CSM-1B shapes"


class SyntheticTokenizer:
    """Token ids for random weights when no tokenizer is at hand: as many as Llama-3's tokenizer gives for English
    (about one per 4 characters) plus BOS and EOS, drawn from the vocabulary, the same for the same text."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, speaker: int, text: str) -> list[int]:
        tagged = f"[{speaker}]{text}"
        rng = np.random.default_rng(zlib.crc32(tagged.encode()))
        return rng.integers(0, self.vocab_size, math.ceil(len(tagged) / CHARS_PER_TOKEN) + 2).tolist()


def random_model(args: CsmArgs, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 quantization: Quantization = Quantization.NONE) -> CSM:
    """A CSM of `args`' shapes with random weights (normal, std 0.02; norms at one), ready to generate. The weights
    are drawn in float32 and rounded to `dtype`, one tensor at a time: the same weights in every dtype."""
    with torch.device("meta"):
        model = CSM(args).to(dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                drawn = torch.empty(parameter.shape, device=device).normal_(0.0, 0.02, generator=generator)
                parameter.copy_(drawn)
                del drawn
            else:
                parameter.fill_(1.0)
    model.eval().requires_grad_(False)
    model.setup()
    quantize(model, quantization)
    return model


@on_model_thread
def load_random_weights(args: CsmArgs, options: LoadOptions, progress: LoadProgress) -> StreamingGenerator:
    """An eager generator with a random model of `args`' shapes and a random Mimi, on the device and in the
    precision `options` ask for; the tokenizer if it can be had (cached or downloadable), else synthetic token
    ids."""
    from moshi.models import loaders

    device = resolve_device(options.device)
    quantization, dtype = resolve_precision(options.quantize, options.dtype, device)
    with progress as shown:
        try:
            tokenizer: Tokenizer = TextTokenizer(resolve_repo(options.tokenizer, TOKENIZER_FILES, shown))
        except CsmError:
            tokenizer = SyntheticTokenizer(args.text_vocab_size)
    mimi = loaders.get_mimi(None, device=device, num_codebooks=NUM_CODEBOOKS)
    model = random_model(args, device, dtype, quantization=quantization)
    return StreamingGenerator(model, tokenizer, Codec(mimi), fast=False)


def load_for_bench(options: LoadOptions, random_weights: bool, progress: LoadProgress) -> StreamingGenerator:
    """The eager generator the bench starts from: a checkpoint's, or full-size random weights."""
    if random_weights:
        return load_random_weights(CSM_1B, options, progress)
    return load_generator(options, progress)


def beside(generator: StreamingGenerator, options: "BenchOptions", slots: int = 1) -> StreamingGenerator:
    """Another generator of the same model, tokenizer and codec, with an engine of its own, CUDA-graphed or compiled
    as `options` ask."""
    return StreamingGenerator(generator.model, generator.tokenizer, generator.codec, fast=options.fast, slots=slots,
                              compiled=options.compiled)


@dataclass(frozen=True)
class BenchOptions:
    frames: int = 125
    context_seconds: float = 0.0
    fast: bool = True  # CUDA graphs (on a CUDA device)
    compare_eager: bool = False
    compiled: bool = False  # the frame step compiled by torch.compile (on a CPU)
    conversation_lines: int = 0
    streams: int = 0  # batched streams, beside one (0: none)
    prefill_rows: tuple[int, ...] = ()  # prompt lengths whose prefill is timed in each form of the int8 product

    def __post_init__(self) -> None:
        if self.compare_eager and not (self.fast or self.compiled):
            raise CsmError("--compare eager sets CUDA graphs or the compiled step beside eager, but here every frame "
                           "runs eagerly (on a CPU without --compile, or with --eager): leave --compare out")
        window = CSM_1B.backbone.max_seq_len
        whole_number("--frames", self.frames, 2, window)  # the time per frame needs two
        number("--context-seconds", self.context_seconds, 0, MAX_SECONDS, " seconds")
        whole_number("--conversation", self.conversation_lines, 0, window)
        whole_number("--streams", self.streams, 0, MAX_STREAMS)
        for rows in self.prefill_rows:
            whole_number("--prefill", rows, 1, window)


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Percentiles":
        return cls(float(np.percentile(values, 50)), float(np.percentile(values, 95)))


@dataclass(frozen=True)
class PathFigures:
    """What one generation path measured over every text."""

    path: str  # "cuda-graphs", "compiled" or "eager"
    warmup_s: float  # graph capture or compile (if any) and a first, short utterance
    compile_s: float | None  # of the compiled step, when the engine was made (None: not compiled)
    time_to_first_audio_ms: Percentiles
    steady_ms_per_frame: Percentiles
    mimi_ms_per_frame: float  # p50
    realtime_factor: float  # ms per frame (p50) / 80 ms
    underruns: int  # gaps of the simulated real-time consumer, all texts together


@dataclass(frozen=True)
class ConversationFigures:
    """The first audio of each line of a conversation, its prompts prefilled whole and from the cache."""

    lines: int
    frames_per_line: int
    whole_prefill_first_audio_ms: list[float]
    prefix_cache_first_audio_ms: list[float]


@dataclass(frozen=True)
class StreamsFigures:
    """N streams generated together, and one stream the same way (a batch of one)."""

    streams: int
    frames: int  # per stream
    first_audio_ms: Percentiles  # of each stream, all started together
    per_frame_ms: Percentiles  # of each stream: one batched step and Mimi's batched decode
    frames_per_second: float  # of all streams together
    single_per_frame_ms: Percentiles
    single_frames_per_second: float
    ratio: float  # frames_per_second / single_frames_per_second


@dataclass(frozen=True)
class PrefillFigures:
    """Milliseconds per prompt row of the backbone's prefill, a figure per prompt length of `rows`, in each form of the
    int8 product."""

    rows: list[int]
    ms_per_row: dict[str, list[float]]  # by form (`PREFILL_FORMS`)
    dequantized_rows: int | None  # from how many rows an int8 layer converts its weight here (None: never)
    kept_copy_mib: float  # what a kept bfloat16 copy of the backbone's int8 weights takes


@dataclass(frozen=True)
class BenchReport:
    device: str
    dtype: str
    quantization: str
    torch: str
    weights: str
    synthetic_tokens: bool
    texts: int
    frames: int
    context_seconds: float
    load_s: float
    peak_gpu_memory_mib: float | None  # None on a CPU
    peak_rss_mib: float  # the process's peak resident memory, loading included
    figures: PathFigures
    eager: PathFigures | None  # --compare eager
    conversation: ConversationFigures | None = None  # --conversation N
    streams: StreamsFigures | None = None  # --streams N
    prefill: PrefillFigures | None = None  # --prefill ROWS,...

    def speedup(self) -> dict[str, float] | None:
        """Eager over this path, for the time to first audio and the time per frame (p50)."""
        if self.eager is None:
            return None
        return {
            "time_to_first_audio": self.eager.time_to_first_audio_ms.p50 / self.figures.time_to_first_audio_ms.p50,
            "steady_ms_per_frame": self.eager.steady_ms_per_frame.p50 / self.figures.steady_ms_per_frame.p50,
        }

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON: this path's figures at the top level, the eager ones and the speedup under `compare`."""
        setup = {name: value for name, value in asdict(self).items() if name not in ("figures", "eager")}
        compare = None if self.eager is None else {"eager": asdict(self.eager), "speedup": self.speedup()}
        return {**setup, **asdict(self.figures), "compare": compare}


class RealtimeConsumer(threading.Thread):
    """A simulated sound card: from the first sample in the ring on, it takes 10 ms blocks at real-time pace and
    counts an underrun each time the ring runs dry before the producer is done. Once the producer is done no
    underrun can follow, so it stops there rather than play the rest."""

    def __init__(self, ring: RingBuffer) -> None:
        super().__init__(name="csm-bench-consumer", daemon=True)
        self.ring = ring
        self.underruns = Underruns()

    def run(self) -> None:
        ring = self.ring
        while ring.fill == 0 and not ring.closed:
            time.sleep(POLL_S)
        block = np.empty(round(SAMPLE_RATE * CONSUMER_BLOCK_S), dtype=np.float32)
        started = time.perf_counter()
        blocks = 0
        while not ring.closed:
            count = ring.read_into(block)
            if count < len(block) and not ring.closed:
                self.underruns.short_block(count)
            else:
                self.underruns.full_block()
            blocks += 1
            time.sleep(max(0.0, started + blocks * CONSUMER_BLOCK_S - time.perf_counter()))


@dataclass(frozen=True)
class _Run:
    first_audio_s: float
    frame_intervals_s: np.ndarray
    codes: np.ndarray  # [C, T]
    underruns: int


def _speak(generator: StreamingGenerator, text: str, seed: int, context: Sequence[Segment], frames: int,
           advance: Callable[[], None]) -> _Run:
    ring = RingBuffer(frames)  # room for every frame: the producer never waits for the consumer
    consumer = RealtimeConsumer(ring)
    consumer.start()
    arrivals: list[float] = []
    started = time.perf_counter()
    try:
        # half a frame over, so that rounding cannot lose the last frame
        speech = generator.stream(text, context=context, seed=seed, max_seconds=(frames + 0.5) * FRAME_SECONDS,
                                  stop_at_end=False)
        for chunk in speech:
            ring.write(chunk)
            arrivals.append(time.perf_counter())
            advance()
    finally:
        ring.close()
        consumer.join()
    return _Run(arrivals[0] - started, np.diff(arrivals), speech.codes, consumer.underruns.count)


@on_model_thread
def mimi_ms_per_frame(codec: Codec, codes: np.ndarray) -> float:
    """Median time to decode one frame of `codes` [C, T] in a stream of its own, eagerly."""
    decoder = codec.decoder(1)
    frames = torch.as_tensor(codes).to(codec.device)
    advancing = torch.ones(1, dtype=torch.bool, device=codec.device)
    times = []
    with torch.inference_mode(), decoder.bound():
        for i in range(frames.shape[1]):
            started = time.perf_counter()
            decoder.decode(frames[None, :, i], advancing).cpu()
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def context_segments(seconds: float) -> list[Segment]:
    """`seconds` of context as random audio codes (timing does not depend on what they say)."""
    if seconds == 0:
        return []
    shape = (NUM_CODEBOOKS, seconds_to_frames(seconds))
    return [Segment(1, CONTEXT_TEXT, codes=np.random.default_rng(SEED).integers(0, CODEC_CARDINALITY, shape))]


def bench_path(make: Callable[[], StreamingGenerator], options: BenchOptions,
               progress: LoadProgress) -> tuple[PathFigures, StreamingGenerator]:
    """Makes the generator (its CUDA graphs captured, on CUDA), warms it up, then speaks every text; shows the frames
    done in `progress`."""
    started = time.perf_counter()
    generator = make()
    engine = generator.engine
    path = "cuda-graphs" if engine.graphs is not None else "compiled" if engine.compile_s is not None else "eager"
    context = context_segments(options.context_seconds)
    longest = max(len(generator.prompt_rows(text, 0, context)[0]) for text in TEXTS)
    if longest + options.frames > generator.model.max_seq_len:
        raise CsmError(f"{options.context_seconds:g} s of context and {options.frames} frames need "
                       f"{longest + options.frames} positions, more than the model's {generator.model.max_seq_len}: "
                       "lower --context-seconds or --frames")
    with progress as shown, shown.steps_task(f"benchmarking {path}: frames",
                                             WARMUP_FRAMES + len(TEXTS) * options.frames) as advance:
        _speak(generator, TEXTS[0], SEED, context, WARMUP_FRAMES, advance)
        warmup_s = time.perf_counter() - started
        runs = [_speak(generator, text, SEED + i, context, options.frames, advance) for i, text in enumerate(TEXTS)]
    per_frame = Percentiles.of(1000 * np.concatenate([run.frame_intervals_s for run in runs]))
    figures = PathFigures(
        path=path,
        warmup_s=warmup_s,
        compile_s=engine.compile_s,
        time_to_first_audio_ms=Percentiles.of([1000 * run.first_audio_s for run in runs]),
        steady_ms_per_frame=per_frame,
        mimi_ms_per_frame=mimi_ms_per_frame(generator.codec, runs[-1].codes),
        realtime_factor=per_frame.p50 / (1000 * FRAME_SECONDS),
        underruns=sum(run.underruns for run in runs),
    )
    return figures, generator


def bench_conversation(generator: StreamingGenerator, options: BenchOptions) -> ConversationFigures:
    """The texts in turn as a conversation after the context, without then with the prefix cache, each way on an
    engine of its own."""
    settings = Settings(seed=SEED, max_seconds=(options.frames + 0.5) * FRAME_SECONDS)
    script = [Utterance(i % 2, TEXTS[i % len(TEXTS)]) for i in range(options.conversation_lines)]
    first_audio = {}
    for reuse in (False, True):
        speaker = beside(generator, options)
        speaker.reuse_prefix = reuse
        conversation = Conversation(speaker, settings, context_segments(options.context_seconds))
        for _ in conversation.speak(script):
            pass
        speaker.close()
        first_audio[reuse] = [1000 * (line.first_chunk - line.generation_started) for line in conversation.lines]
    return ConversationFigures(options.conversation_lines, options.frames, first_audio[False], first_audio[True])


def batched_run(generator: StreamingGenerator, streams: int, frames: int, context: Sequence[Segment],
                advance: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
    """`streams` streams started together for `frames` frames, the texts in turn, taken one chunk each in turn ->
    seconds from the start to each stream's first chunk, and seconds per round once all have their first."""
    sampling = Settings()
    started = time.perf_counter()
    speeches = [generator.stream(TEXTS[i % len(TEXTS)], context=context, temperature=sampling.temperature,
                                 topk=sampling.topk, seed=SEED + i, max_seconds=(frames + 0.5) * FRAME_SECONDS,
                                 stop_at_end=False)
                for i in range(streams)]
    first_audio = []
    rounds = []
    for _ in range(frames):
        round_started = time.perf_counter()
        for speech in speeches:
            next(speech)
            if len(first_audio) < streams:
                first_audio.append(time.perf_counter() - started)
        rounds.append(time.perf_counter() - round_started)
        advance()
    return np.array(first_audio), np.array(rounds[1:])


def bench_streams(generator: StreamingGenerator, options: BenchOptions, progress: LoadProgress) -> StreamsFigures:
    """`options.streams` streams together in an engine of as many slots, then one in an engine of one, each after a
    short warm-up."""
    context = context_segments(options.context_seconds)
    steps = 2 * WARMUP_FRAMES + 2 * options.frames
    with progress as shown, shown.steps_task(f"benchmarking {options.streams} streams: rounds", steps) as advance:
        together, alone = beside(generator, options, options.streams), beside(generator, options)
        batched_run(together, options.streams, WARMUP_FRAMES, context, advance)
        first_audio, together_rounds = batched_run(together, options.streams, options.frames, context, advance)
        batched_run(alone, 1, WARMUP_FRAMES, context, advance)
        alone_rounds = batched_run(alone, 1, options.frames, context, advance)[1]
        together.close()
        alone.close()
    frames_per_second = options.streams / float(np.median(together_rounds))
    single_frames_per_second = 1 / float(np.median(alone_rounds))
    return StreamsFigures(options.streams, options.frames, Percentiles.of(1000 * first_audio),
                          Percentiles.of(1000 * together_rounds), frames_per_second,
                          Percentiles.of(1000 * alone_rounds), single_frames_per_second,
                          frames_per_second / single_frames_per_second)


PREFILL_FORMS = ("int8 kernel", "converted per call", "kept bfloat16 copy")
PREFILL_REPEATS = 3


def prompt_of(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt of `rows` rows of random audio codes: tokens, mask [rows, C+1]."""
    shape = (NUM_CODEBOOKS, rows - 1)  # and the end-of-audio row
    return audio_rows(torch.randint(0, CODEC_CARDINALITY, shape, generator=torch.Generator().manual_seed(SEED)))


def prefill_ms_per_row(model: CSM, rows: int, caches: list[KVCache]) -> float:
    """Milliseconds per row of the fastest of `PREFILL_REPEATS` prefills of a prompt of `rows` rows into `caches`: the
    same work each time, so what is slower was held up by something else."""
    tokens, mask = prompt_of(rows)
    times = []
    for _ in range(PREFILL_REPEATS):
        started = time.perf_counter()
        model.prefill(tokens, mask, 0, caches, padded=False)
        times.append(time.perf_counter() - started)
    return 1000 * min(times) / rows


def bench_prefill(model: CSM, prompt_rows: Sequence[int], progress: LoadProgress) -> PrefillFigures:
    """Each prompt length's prefill in each form of the int8 product: the int8 kernel at any number of rows; the
    weights converted to bfloat16 at each call, at any number; the backbone's int8 layers replaced by bfloat16 layers
    of the same weights, kept. The model is left as it was."""
    layers = [(parent, name, child) for parent in model.backbone.modules()
              for name, child in parent.named_children() if isinstance(child, Int8Linear)]
    default = dequantized_rows()
    caches = model.backbone.new_caches(1)
    figures: dict[str, list[float]] = {}
    with progress as shown, shown.steps_task("benchmarking the prefill: prompts",
                                             len(PREFILL_FORMS) * len(prompt_rows)) as advance:
        model.prefill(*prompt_of(SHORTEST_PREFILL), 0, caches, padded=False)  # warm-up
        for form in PREFILL_FORMS:
            if form == "kept bfloat16 copy":
                for parent, name, layer in layers:
                    setattr(parent, name, _kept_copy(layer))
            else:
                set_dequantized_rows(model, None if form == "int8 kernel" else 1)
            figures[form] = []
            for rows in prompt_rows:
                figures[form].append(prefill_ms_per_row(model, rows, caches))
                advance()
    for parent, name, layer in layers:
        setattr(parent, name, layer)
    set_dequantized_rows(model, default)
    kept_bytes = sum(layer.weight.numel() * layer.scales.element_size() for _, _, layer in layers)
    return PrefillFigures(list(prompt_rows), figures, default, kept_bytes / 2**20)


def _kept_copy(layer: Int8Linear) -> nn.Linear:
    """A bfloat16 linear layer of an int8 layer's weights."""
    out_features, in_features = layer.weight.shape
    linear = nn.Linear(in_features, out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(layer.weight.to(layer.scales.dtype) * layer.scales[:, None], requires_grad=False)
    return linear


def run_bench(load: Callable[[], StreamingGenerator], weights: str, options: BenchOptions,
              progress: LoadProgress) -> BenchReport:
    """Loads an eager generator with `load`, benches the path `options` asks for, then eager beside it if asked;
    shows how far each run is in `progress`."""
    started = time.perf_counter()
    loaded = load()
    load_s = time.perf_counter() - started
    device = loaded.device
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    figures, generator = bench_path(lambda: beside(loaded, options) if options.fast or options.compiled else loaded,
                                    options, progress)
    conversation = bench_conversation(generator, options) if options.conversation_lines else None
    streams = bench_streams(generator, options, progress) if options.streams else None
    prefill = bench_prefill(loaded.model, options.prefill_rows, progress) if options.prefill_rows else None
    eager = bench_path(lambda: loaded, options, progress)[0] if options.compare_eager else None
    return BenchReport(
        device=torch.cuda.get_device_name(device) if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        dtype=str(loaded.model.audio_head.dtype).removeprefix("torch."),
        quantization=str(quantization_of(loaded.model)),
        torch=torch.__version__,
        weights=weights,
        synthetic_tokens=isinstance(loaded.tokenizer, SyntheticTokenizer),
        texts=len(TEXTS),
        frames=options.frames,
        context_seconds=options.context_seconds,
        load_s=load_s,
        peak_gpu_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        figures=figures,
        eager=eager,
        conversation=conversation,
        streams=streams,
        prefill=prefill,
    )


def render_table(report: BenchReport) -> Table:
    tokens = ", synthetic token ids" if report.synthetic_tokens else ""
    memory = (f"peak memory {report.peak_rss_mib:,.0f} MiB" if report.peak_gpu_memory_mib is None
              else f"peak GPU memory {report.peak_gpu_memory_mib:,.0f} MiB")
    quantized = "" if report.quantization == "none" else f", {report.quantization} weights"
    table = Table(
        title=f"csm bench: {report.device}, {report.dtype}{quantized}, torch {report.torch}",
        caption=(f"weights: {report.weights}{tokens}; {report.texts} texts x {report.frames} frames, end of speech "
                 f"ignored; {report.context_seconds:g} s of context; load {report.load_s:.1f} s; {memory}"),
    )
    table.add_column("")
    paths = [report.figures] if report.eager is None else [report.figures, report.eager]
    for figures in paths:
        table.add_column(figures.path, justify="right")
    speedup = report.speedup()
    if speedup is not None:
        table.add_column(f"eager / {report.figures.path}", justify="right")

    def row(name: str, cell: Callable[[PathFigures], str], ratio: str | None = None) -> None:
        extra = [] if speedup is None else ["" if ratio is None else f"{speedup[ratio]:.1f}x"]
        table.add_row(name, *[cell(figures) for figures in paths], *extra)

    def p50_p95(values: Percentiles, digits: int) -> str:
        return f"{values.p50:.{digits}f} / {values.p95:.{digits}f} ms"

    captured = any(figures.path == "cuda-graphs" for figures in paths)
    row("warm-up incl. capture" if captured else "warm-up", lambda f: f"{f.warmup_s:.2f} s")
    if any(figures.compile_s is not None for figures in paths):
        row("compile of the frame step", lambda f: "" if f.compile_s is None else f"{f.compile_s:.1f} s")
    row("first audio p50 / p95", lambda f: p50_p95(f.time_to_first_audio_ms, 0), "time_to_first_audio")
    row("per frame p50 / p95", lambda f: p50_p95(f.steady_ms_per_frame, 1), "steady_ms_per_frame")
    row("Mimi per frame", lambda f: f"{f.mimi_ms_per_frame:.2f} ms")
    row("real-time factor", lambda f: f"{f.realtime_factor:.3f}")
    row("underruns", lambda f: str(f.underruns))
    if report.conversation is not None:
        talk = report.conversation
        table.add_section()
        table.add_row(f"first audio of line {talk.lines} of a conversation: prefix cache / whole prefill",
                      f"{talk.prefix_cache_first_audio_ms[-1]:.0f} / {talk.whole_prefill_first_audio_ms[-1]:.0f} ms")
    if report.streams is not None:
        batched = report.streams
        table.add_section()
        table.add_row(f"{batched.streams} streams started together: first audio p50 / p95",
                      p50_p95(batched.first_audio_ms, 0))
        table.add_row(f"{batched.streams} streams together: per stream per frame p50 / p95",
                      p50_p95(batched.per_frame_ms, 1))
        table.add_row("1 stream the same way: per frame p50 / p95", p50_p95(batched.single_per_frame_ms, 1))
        table.add_row(f"frames per second: {batched.streams} streams / 1 stream",
                      f"{batched.frames_per_second:.1f} / {batched.single_frames_per_second:.1f} "
                      f"({batched.ratio:.2f}x)")
    if report.prefill is not None:
        prefill = report.prefill
        table.add_section()
        table.add_row("prefill, ms per prompt row:", " / ".join(prefill.ms_per_row))
        for i, rows in enumerate(prefill.rows):
            figures = [f"{ms[i]:.2f}" for ms in prefill.ms_per_row.values()]
            table.add_row(f"  a prompt of {rows} rows", " / ".join(figures))
        converts = ("never (no native bfloat16 product)" if prefill.dequantized_rows is None
                    else f"from {prefill.dequantized_rows} rows")
        table.add_row("int8 layers convert their weights per call", converts)
        table.add_row("a kept bfloat16 copy of the backbone's weights takes", f"{prefill.kept_copy_mib:,.0f} MiB")
    return table
