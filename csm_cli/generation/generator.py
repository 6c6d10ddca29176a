"""The streaming generator: text in, 24 kHz chunks out as soon as each is decoded. The CLI is built on it.

A generator turns text and context into prompt rows and hands them to its scheduler (`scheduler.Scheduler`), which the
process's model thread (`threads.ModelThread`) steps: it generates the frames of every stream in one frame engine
(`engine.FrameEngine`) of `slots` slots, a lone stream a batch of one. A stream (`Speech`) is a queue of its decoded
frames, read from any thread."""

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import AUDIO_VOCAB_SIZE, FRAME_RATE, FRAME_SECONDS, SAMPLES_PER_FRAME, seconds_to_frames
from ..checks import number, whole_number
from ..errors import CsmError
from ..threads import on_model_thread
from .args import MAX_SECONDS, WINDOW
from .codec import Codec
from .ending import frame_budget
from .engine import FrameEngine, Prompt, VoiceRowsCache
from .model import CSM
from .prompt import Segment, Tokenizer, audio_rows, text_rows
from .scheduler import Owner, Scheduler, Speech

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0  # below, logits / temperature overflows; above, it is noise
MAX_SEED = 2**64 - 1  # a seed is hashed as two 32-bit halves (`sampling`)
MAX_SPEAKER = 999_999


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
        whole_number("chunk_frames", self.chunk_frames, 1, WINDOW)

    @property
    def max_frames(self) -> int:
        return seconds_to_frames(self.max_seconds)


class StreamingGenerator:
    @on_model_thread  # its engine's caches are allocated and zeroed there, its graphs captured, its step compiled
    def __init__(self, model: CSM, tokenizer: Tokenizer, codec: Codec, fast: bool = True, slots: int = 1,
                 captured: Callable[[], None] | None = None, compiled: bool = False,
                 voice_cache: VoiceRowsCache | None = None) -> None:
        """A generator of `slots` streams at once (more wait for a slot). `fast` replays each step as CUDA graphs on
        a CUDA device (captured here, in seconds, calling `captured` after each graph: `graphs_to_capture`); on a
        CPU, or with fast=False, every step runs eagerly, or, with `compiled` on a CPU, compiled by torch.compile
        (here: `engine.compile_s`). `voice_cache`: where voice prompts' prefilled rows are kept between processes."""
        self.model = model
        self.tokenizer = tokenizer
        self.codec = codec
        self.device = model.audio_head.device
        graphed = fast and self.device.type == "cuda"
        self.check_compiled(self.device, compiled)
        self.engine = FrameEngine(model, codec, slots, graphed=graphed, captured=captured or (lambda: None),
                                  compiled=compiled, voice_cache=voice_cache)
        self.scheduler = Scheduler(self.engine)

    @staticmethod
    def check_compiled(device: torch.device, compiled: bool) -> None:
        """Refuses, with CsmError, a compiled step anywhere but on a CPU."""
        if compiled and device.type != "cpu":
            raise CsmError("--compile compiles the frame step on a CPU; on CUDA it replays as CUDA graphs: leave "
                           "--compile out")

    @staticmethod
    def graphs_to_capture(device: torch.device, fast: bool, slots: int) -> int:
        """How many CUDA graphs a generator of these options captures when it is made."""
        from .graphs import FrameGraphs

        return FrameGraphs.count(slots) if fast and device.type == "cuda" else 0

    @property
    def reuse_prefix(self) -> bool:
        """Whether a prompt's rows that a slot's caches hold already are taken from there (the prefix cache)."""
        return self.engine.reuse_prefix

    @reuse_prefix.setter
    def reuse_prefix(self, reuse: bool) -> None:
        self.engine.reuse_prefix = reuse

    def close(self) -> None:
        """Steps its engine no more (the model thread detaches its scheduler); the streams in it get no more frames."""
        self.scheduler.stop()

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
        """Context segments (text rows, then audio rows) and the new text's rows -> tokens, mask [S, C+1], on the
        host."""
        return self.context_rows([*context, Segment(speaker, text)])

    def context_rows(self, context: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """Segments, each its text rows then its audio rows -> tokens, mask [S, C+1], on the host."""
        parts = []
        for segment in context:
            parts.append(text_rows(self.tokenizer.encode(segment.speaker, segment.text)))
            encoded = self.encode_segment(segment)
            if encoded.codes is not None:
                parts.append(audio_rows(self._context_codes(encoded.codes)))
        return torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts])

    @on_model_thread
    def prefill_voices(self, voices: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """Voice prompts' rows prefilled and kept in the engine's voice cache (unless it holds them already), as an
        utterance whose context starts with them prefills them, for later processes; before any stream -> the rows,
        tokens and mask [S, C+1]."""
        tokens, mask = self.context_rows(voices)
        self.engine.prefill_voice(tokens, mask)
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
        voices: int = 0,
        stop_at_end: bool = True,
        owner: Owner | None = None,
    ) -> Speech:
        """Starts generating `text` as `speaker`; errors in the arguments raise here, before any audio. From any
        thread: the stream takes a slot of the generator's engine (or waits for one), and its frames are generated
        with those of the other streams there. The utterance ends at the model's end frame, at its text's frame
        budget or after a stretch of silence (`ending`), within `max_seconds`; stop_at_end=False generates all of
        `max_seconds` whatever the model says (for benchmarks). `voices`: how many of the context's first segments
        are voice prompts that start each utterance alike, whose rows are prefilled once and kept (`Prompt.voice_rows`).
        `owner`: whoever may close the streams it started at once (`close_owned`)."""
        settings = Settings(temperature, topk, seed, max_seconds, chunk_frames)
        if not isinstance(text, str) or not text.strip():
            raise CsmError("the text is empty: give something to say")
        whole_number("--speaker", speaker, 0, MAX_SPEAKER)
        whole_number("voices", voices, 0, len(context))
        tokens, mask = self.prompt_rows(text.strip(), speaker, context)
        voice_rows = sum(self.segment_rows(segment) for segment in context[:voices])
        room = self.model.max_seq_len - len(tokens)
        if settings.max_frames > room:
            fits = f"at most {room / FRAME_RATE:.1f}" if room > 0 else "no"
            raise CsmError(
                f"the prompt takes {len(tokens)} of the model's {self.model.max_seq_len} positions, leaving room for "
                f"{fits} seconds of speech but {settings.max_seconds:g} were asked for: shorten the context or the "
                "text, or lower --max-seconds"
            )
        frames = frame_budget(text, settings.max_frames) if stop_at_end else settings.max_frames
        prompt = Prompt(tokens, mask, frames, topk, temperature,
                        secrets.randbits(64) if seed is None else seed, stop_at_end, voice_rows)
        return self.scheduler.speak(prompt, chunk_frames, owner)

    def close_owned(self, owner: Owner) -> None:
        """Closes the streams `owner` started, from any thread: their generation stops before their next frame."""
        self.scheduler.close_owned(owner)


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
