"""The streaming generator: text in, 24 kHz chunks out as soon as each is decoded. The CLI is built on it."""

import secrets
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..audio import AUDIO_VOCAB_SIZE, FRAME_RATE, FRAME_SECONDS, SAMPLES_PER_FRAME, seconds_to_frames
from ..checks import number, whole_number
from ..errors import CsmError
from ..loading.checkpoint import load_model
from ..loading.config import CSM_1B, DEFAULT_MODEL, DEFAULT_TOKENIZER, MAX_SECONDS
from ..loading.quantize import Quantization, activation_dtype, resolve_quantization
from ..loading.quantize import quantize as quantize_model
from ..loading.repository import fetch_model_files
from ..loading.voice import Voice, cached_voice_codes, model_voices, unknown_voice
from ..progress import LoadProgress
from ..threads import use_cpu_threads
from .batch import SpeechBatch, UtteranceFrames
from .codec import Codec
from .ending import frame_budget, until_silence
from .graphs import FrameGraphs
from .model import CSM
from .prompt import Segment, TextTokenizer, Tokenizer, audio_rows, frame_row, text_rows

T = TypeVar("T")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for (default: CUDA if present); on a CPU, torch's threads set (`threads.use_cpu_threads`)."""
    if device is None:
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise CsmError(f"--model-device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise CsmError(f"--model-device {device} is not supported: csm runs on cpu or cuda (cuda:N)")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CsmError(f"--model-device {device} was asked for but torch sees no CUDA GPU: use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CsmError(f"--model-device {device}: torch sees {torch.cuda.device_count()} CUDA GPUs "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if resolved.type == "cpu":
        if resolved.index not in (None, 0):
            raise CsmError(f"--model-device {device}: the CPU is one device, cpu (cpu:0); for a GPU use cuda:N")
        use_cpu_threads()
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(dtype)
    if resolved not in DTYPES.values():
        raise CsmError(f"--dtype {dtype} is not supported: choose {', '.join(DTYPES)}")
    return resolved


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0  # below, logits / temperature overflows; above, it is noise
MAX_SEED = 2**64 - 1  # torch's generators take 64-bit seeds
MAX_SPEAKER = 999_999


def resolve_precision(quantize: str | Quantization | None, dtype: str | torch.dtype | None,
                      device: torch.device) -> tuple[Quantization, torch.dtype]:
    """The quantization and the dtype of the rest. By default a CPU quantizes (`quantize.DEFAULT_CPU`) unless a
    dtype is given; a quantized mode computes in its own dtype."""
    mode = resolve_quantization(quantize, device, dtype_given=dtype is not None)
    if mode is Quantization.NONE:
        return mode, resolve_dtype(dtype, device)
    return mode, activation_dtype(mode, None if dtype is None else resolve_dtype(dtype, device))


@dataclass(frozen=True)
class Settings:
    """How an utterance is generated; invalid values raise CsmError when the settings are made."""

    temperature: float = 0.9
    topk: int = 50
    seed: int | None = None
    max_seconds: float = 30.0
    chunk_frames: int = 1

    def __post_init__(self) -> None:
        number("--temperature", self.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
        whole_number("--topk", self.topk, 1, AUDIO_VOCAB_SIZE)
        if self.seed is not None:
            whole_number("--seed", self.seed, 0, MAX_SEED)
        number("--max-seconds", self.max_seconds, FRAME_SECONDS, MAX_SECONDS, " seconds")  # the model's window
        whole_number("chunk_frames", self.chunk_frames, 1, CSM_1B.backbone.max_seq_len)

    @property
    def max_frames(self) -> int:
        return seconds_to_frames(self.max_seconds)


class Speech(Iterator[np.ndarray]):
    """One utterance being generated: iterating yields float32 chunks of `chunk_frames` frames (the last may be
    shorter); `codes` holds the codes [C, T] of the frames generated so far. Closing it early is safe.

    A speech in a batch (`stream(batch=...)`) yields empty chunks while its prompt is being prefilled, so that whoever
    takes the chunks of several speeches in turn never waits for a whole prefill: the first at once (it has joined
    the batch, whose next step starts its prefill), then one for each step of the batch that leaves part of it."""

    def __init__(self, chunks: Generator[np.ndarray], frames: list[torch.Tensor], seed: int,
                 one_thread: Callable[[], AbstractContextManager[None]],
                 utterance: UtteranceFrames | None = None) -> None:
        self._chunks = chunks
        self._frames = frames
        self._one_thread = one_thread
        self._utterance = utterance
        self._taken = False
        self.seed = seed

    def __next__(self) -> np.ndarray:
        with self._one_thread():
            taken, self._taken = self._taken, True
            if self._utterance is not None and self._utterance.prefilling:
                if taken:
                    self._utterance.batch.step()
                if self._utterance.prefilling:
                    return np.zeros(0, dtype=np.float32)
            return next(self._chunks)

    def close(self) -> None:
        with self._one_thread():
            self._chunks.close()
            if self._utterance is not None:
                self._utterance.close()

    @property
    def codes(self) -> np.ndarray:
        if not self._frames:
            return np.zeros((0, 0), dtype=np.int64)
        return torch.stack(self._frames, dim=1).cpu().numpy()


class StreamingGenerator:
    def __init__(self, model: CSM, tokenizer: Tokenizer, codec: Codec, fast: bool = True,
                 progress: LoadProgress | None = None, voices: dict[str, Voice] | None = None) -> None:
        """`fast` replays each frame as CUDA graphs on a CUDA device (captured here, in seconds, shown in
        `progress`); on a CPU, or with fast=False, every frame runs eagerly. `voices`: the model's, by name.

        `graph_shapes`: the eager path runs the shapes the graphs run (padded prompts, attention over the whole
        window), so that both sample the same codes; on by default on CUDA only, where the graphs are. On a CPU the
        eager path runs what it needs: the prompt's own rows, attention over the filled positions.
        `reuse_prefix`: a prompt's rows that the backbone's cache already holds are not prefilled again."""
        self.model = model
        self.tokenizer = tokenizer
        self.codec = codec
        self.voices = voices or {}
        self.device = model.audio_head.device
        self.graph_shapes = self.device.type == "cuda"
        self.reuse_prefix = True
        self._rng = torch.Generator(device=self.device)
        self._active: Speech | None = None
        self._running = threading.RLock()  # held by the thread inside stream() or a Speech's step
        self.graphs: FrameGraphs | None = None
        if fast and self.device.type == "cuda":
            default = Settings()
            with (progress or LoadProgress(enabled=False)).steps_task("capturing CUDA graphs",
                                                                      FrameGraphs.count(model)) as captured:
                self.graphs = FrameGraphs(model, codec, self._rng, default.topk, default.temperature, captured)

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        codec: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        tokenizer: str = DEFAULT_TOKENIZER,
        progress: LoadProgress | None = None,
        fast: bool = True,
        quantize: str | Quantization | None = None,
    ) -> "StreamingGenerator":
        """Loads from a hub id or a local directory. Cheap checks (config, tokenizer, codec) come before the
        weights, so a wrong option fails in seconds. `quantize`: see `csm_cli.loading.quantize` (default: int8 on a CPU
        unless a dtype is given, none elsewhere)."""
        torch_device = resolve_device(device)
        quantization, torch_dtype = resolve_precision(quantize, dtype, torch_device)
        with progress or LoadProgress(enabled=False) as shown:
            files = fetch_model_files(model, tokenizer, Path(codec) if codec else None, shown)
            text_tokenizer = TextTokenizer(files.tokenizer_dir)
            mimi = Codec.load(files.codec, torch_device)
            csm = load_model(files.repository, torch_device, torch_dtype, shown)
            quantize_model(csm, quantization)
            return cls(csm, text_tokenizer, mimi, fast=fast, progress=shown,
                       voices=model_voices(files.repository.voice_files))

    def voice(self, name: str, speaker: int) -> Segment:
        """The model's voice `name` (see `voices`: name -> Voice with its transcript, or None) as a context segment
        for `speaker`, its codes encoded once and cached on disk. Put it first in `stream()`'s context (the
        reference's demo gives speaker 0 "conversational_a" and speaker 1 "conversational_b"). An unknown name or
        a voice without a known transcript raises CsmError (its message lists the voices)."""
        if name not in self.voices:
            raise unknown_voice(name, self.voices)
        voice = self.voices[name]
        if not voice.text:
            raise CsmError(f"no transcript is known for voice {name}: use voice_segment() with its text")
        return self.voice_segment(voice, speaker)

    def voice_segment(self, voice: Voice, speaker: int) -> Segment:
        """A voice (the model's, or any recording with its text) as a context segment with cached codes."""
        assert voice.text, "a voice prompt needs its transcript"
        codes = cached_voice_codes(voice, self.codec.fingerprint,
                                   lambda samples: self.codec.encode(samples).cpu().numpy())
        return Segment(speaker, voice.text, codes=codes)

    def new_batch(self, slots: int) -> SpeechBatch:
        """A batch of `slots` streams generated together, on caches of its own (see `stream(batch=...)`)."""
        return SpeechBatch(self.model, self.codec, slots, self.graph_shapes)

    def encode_segment(self, segment: Segment) -> Segment:
        """The segment with its audio encoded to codes once, so it can be reused as context."""
        if segment.codes is not None or segment.audio is None:
            return segment
        samples = _context_audio(segment.audio)
        return Segment(segment.speaker, segment.text, codes=self.codec.encode(samples).cpu().numpy())

    def segment_rows(self, segment: Segment) -> int:
        """How many of the model's positions a segment takes in a prompt: its text rows, then its audio rows."""
        text = len(self.tokenizer.encode(segment.speaker, segment.text))
        if segment.codes is not None:
            return text + segment.codes.shape[1] + 1
        if segment.audio is not None:
            return text + -(-len(segment.audio) // SAMPLES_PER_FRAME) + 1
        return text

    def prompt_rows(self, text: str, speaker: int, context: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context segments (text rows, then audio rows) and the new text's rows -> tokens, mask [S, C+1]."""
        parts = []
        for segment in context:
            parts.append(text_rows(self.tokenizer.encode(segment.speaker, segment.text)))
            encoded = self.encode_segment(segment)
            if encoded.codes is not None:
                parts.append(audio_rows(self._context_codes(encoded.codes)))
        parts.append(text_rows(self.tokenizer.encode(speaker, text)))
        tokens = torch.cat([t for t, _ in parts]).to(self.device)
        mask = torch.cat([m for _, m in parts]).to(self.device)
        return tokens, mask

    def _context_codes(self, codes: np.ndarray) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[0] != self.model.args.num_codebooks:
            raise CsmError(f"context codes must have shape [{self.model.args.num_codebooks}, frames], got "
                           f"{list(codes.shape)}")
        vocabulary = self.model.args.audio_vocab_size
        if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < vocabulary:
            raise CsmError(f"context codes must lie in 0..{vocabulary - 1}")
        return codes

    def stream(
        self,
        text: str,
        speaker: int = 0,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_seconds: float = 30,
        chunk_frames: int = 1,
        *,
        stop_at_end: bool = True,
        batch: SpeechBatch | None = None,
    ) -> Speech:
        """Starts generating `text` as `speaker`; errors in the arguments raise here, before any audio.
        Without `batch` the generator's own caches are used (and the CUDA graphs, where captured): starting such a
        stream ends the one before it. With a batch from `new_batch()` the speech takes a slot of the batch while
        it is generated, and may be iterated interleaved with the batch's other speeches, on the same thread: their
        frames are generated together (it runs eagerly). The utterance ends at the
        model's end frame, at its text's frame budget or after a stretch of silence (`ending`), within
        `max_seconds`; stop_at_end=False generates all of `max_seconds` whatever the model says (for benchmarks).

        A generator runs on one thread at a time: calling stream(), or stepping or closing one of its Speeches, on
        a thread while another thread is inside one of these raises CsmError (nothing waits). Use a generator per
        thread, or one thread that steps every stream (as `csm serve` does)."""
        with self._one_thread():
            return self._start(text, speaker, context, Settings(temperature, topk, seed, max_seconds, chunk_frames),
                               stop_at_end, batch)

    @contextmanager
    def _one_thread(self) -> Iterator[None]:
        if not self._running.acquire(blocking=False):
            raise CsmError("this StreamingGenerator is generating on another thread: it runs on one thread at a time "
                           "(use a generator per thread, or step every stream from one thread)")
        try:
            yield
        finally:
            self._running.release()

    def _start(self, text: str, speaker: int, context: Sequence[Segment], settings: Settings, stop_at_end: bool,
               batch: SpeechBatch | None) -> Speech:
        if not isinstance(text, str) or not text.strip():
            raise CsmError("the text is empty: give something to say")
        whole_number("--speaker", speaker, 0, MAX_SPEAKER)
        max_frames = settings.max_frames
        if batch is None and self._active is not None:
            self._active.close()
        tokens, mask = self.prompt_rows(text.strip(), speaker, context)
        room = self.model.max_seq_len - len(tokens)
        if max_frames > room:
            fits = f"at most {room / FRAME_RATE:.1f}" if room > 0 else "no"
            raise CsmError(
                f"the prompt takes {len(tokens)} of the model's {self.model.max_seq_len} positions, leaving room for "
                f"{fits} seconds of speech but {settings.max_seconds:g} were asked for: shorten the context or the "
                "text, or lower --max-seconds"
            )
        seed = secrets.randbits(63) if settings.seed is None else settings.seed
        temperature, topk = settings.temperature, settings.topk
        if stop_at_end:
            max_frames = frame_budget(text, max_frames)
        utterance = None
        if batch is not None:
            decoded = utterance = batch.utterance(tokens, mask, max_frames, topk, temperature, seed, stop_at_end,
                                                  self.reuse_prefix)
        else:
            padded = self.graph_shapes or self.graphs is not None
            start = self.model.reused_rows(tokens, mask, padded) if self.reuse_prefix else 0
            if self.graphs is None:
                decoded = self._decoded(self._frames(tokens, mask, start, max_frames, temperature, topk, seed,
                                                     stop_at_end))
            else:
                decoded = self.graphs.frames(tokens, mask, start, max_frames, topk, temperature, seed, stop_at_end)
        frames: list[torch.Tensor] = []
        chunks = self._chunks(until_silence(decoded) if stop_at_end else decoded, frames, settings.chunk_frames)
        speech = Speech(chunks, frames, seed, self._one_thread, utterance)
        if batch is None:
            self._active = speech
        return speech

    def _frames(self, tokens: torch.Tensor, mask: torch.Tensor, start: int, max_frames: int, temperature: float,
                topk: int, seed: int, stop_at_end: bool) -> Iterator[torch.Tensor]:
        """Codes [C] of each frame until the all-zero end-of-speech frame (unless `stop_at_end` is False) or the
        frame budget. The prompt's first `start` rows are in the cache already."""
        self._rng.manual_seed(seed)
        last_h = self.model.prefill(tokens[start:], mask[start:], start, padded=self.graph_shapes)
        for n in range(max_frames):
            codes = self.model.sample_frame(last_h, topk, temperature, self._rng)  # [1, C]
            if stop_at_end and not codes.any():
                return
            yield codes[0]
            if n + 1 < max_frames:
                position = len(tokens) + n
                row, row_mask = frame_row(codes)
                self.model.cached_rows.clear_from(position)
                attend = None if self.graph_shapes else position + 1
                last_h = self.model.backbone_step(row, row_mask, self.model.backbone_positions[position : position + 1],
                                                  attend)
                self.model.cached_rows.wrote(position, row[0], row_mask[0])

    def _decoded(self, frames: Iterator[torch.Tensor]) -> Generator[tuple[torch.Tensor, np.ndarray]]:
        """Codes [C] and samples of each frame, decoded one by one as the fast path decodes them."""
        decoder = self.codec.decode_streams()
        for codes in frames:
            yield codes, decoder.decode(codes[None, :, None], [0])[0]

    @staticmethod
    def _chunks(frames: Iterator[tuple[torch.Tensor, np.ndarray]], generated: list[torch.Tensor],
                chunk_frames: int) -> Generator[np.ndarray]:
        """Chunks of `chunk_frames` decoded frames; `generated` gets the codes of the frames in them."""
        for group in _groups(frames, chunk_frames):
            generated.extend(codes for codes, _ in group)
            yield np.concatenate([samples for _, samples in group])


def _groups(items: Iterator[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of `size` items, the last possibly shorter."""
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _context_audio(audio: np.ndarray) -> np.ndarray:
    """Context audio as the codec takes it: 24 kHz mono float samples [samples], finite; anything else is refused
    rather than encoded as noise."""
    samples = np.asarray(audio)
    if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
        raise CsmError(f"context audio must be 24 kHz mono float samples [samples], got {samples.dtype} of shape "
                       f"{list(samples.shape)}: read files with load_voice_prompt()")
    if not samples.size:
        raise CsmError("context audio is empty: give a recording of the speaker's voice")
    if not np.isfinite(samples).all():
        raise CsmError("context audio holds samples that are not numbers (NaN or infinite)")
    return samples
