"""A generator built from what a model repository holds: the options of a load, the device and dtype they resolve
to, the weights, tokenizer and codec fetched and loaded, and the frame engine made from generation's parts."""

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CsmError
from ..generation.codec import Codec
from ..generation.generator import StreamingGenerator
from ..progress import LoadProgress
from ..threads import on_model_thread, use_cpu_threads
from .checkpoint import load_model
from .config import DEFAULT_MODEL, DEFAULT_TOKENIZER
from .quantize import Quantization, activation_dtype, resolve_quantization
from .repository import fetch_model_files, resolve_voice_files
from .tokenizer import TextTokenizer
from .voice import Voice, choose_voices, model_voices, voice_segment
from .voice_rows import CachedVoiceRows

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how: the model options of `csm say`, `serve` and `bench`."""

    model: str = DEFAULT_MODEL  # a hub id or a local directory
    codec: Path | None = None  # a local Mimi file; moshi's from the hub when None
    tokenizer: str = DEFAULT_TOKENIZER  # used when the model has none
    device: str | None = None  # cuda when present
    dtype: str | None = None
    quantize: str | None = None  # see `quantize`: int8 on a CPU unless a dtype is given
    fast: bool = True  # CUDA graphs on a CUDA device
    slots: int = 1  # streams generated at once
    compile: bool = False  # on a CPU, the frame step compiled by torch.compile (`generation.compiled`)


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


def resolve_precision(quantize: str | Quantization | None, dtype: str | torch.dtype | None,
                      device: torch.device) -> tuple[Quantization, torch.dtype]:
    """The quantization and the dtype of the rest. By default a CPU quantizes (`quantize.DEFAULT_CPU`) unless a
    dtype is given; a quantized mode computes in its own dtype."""
    mode = resolve_quantization(quantize, device, dtype_given=dtype is not None)
    if mode is Quantization.NONE:
        return mode, resolve_dtype(dtype, device)
    return mode, activation_dtype(mode, None if dtype is None else resolve_dtype(dtype, device))


@on_model_thread
def load_generator(options: LoadOptions = LoadOptions(), progress: LoadProgress | None = None) -> StreamingGenerator:
    """Loads from a hub id or a local directory. Cheap checks (config, tokenizer, codec) come before the weights, so
    a wrong option fails in seconds; the CUDA graphs' capture is shown in `progress`."""
    device = resolve_device(options.device)
    quantization, dtype = resolve_precision(options.quantize, options.dtype, device)
    StreamingGenerator.check_compiled(device, options.compile)
    with progress or LoadProgress(enabled=False) as shown:
        files = fetch_model_files(options.model, options.tokenizer, options.codec, shown)
        tokenizer = TextTokenizer(files.tokenizer_dir)
        codec = Codec.load(files.codec, device)
        model = load_model(files.repository, device, dtype, shown, quantization)
        graphs = StreamingGenerator.graphs_to_capture(device, options.fast, options.slots)
        with (shown.steps_task("capturing CUDA graphs", graphs) if graphs else nullcontext(None) as captured,
              shown.steps_task("compiling the frame step", 1) if options.compile else nullcontext()):
            return StreamingGenerator(model, tokenizer, codec, fast=options.fast, slots=options.slots,
                                      captured=captured, compiled=options.compile,
                                      voice_cache=CachedVoiceRows(files.repository, quantization, dtype, device))


def load_voices(model: str, progress: LoadProgress | None = None) -> dict[str, Voice]:
    """The voices a model repository offers (its prompts/NAME.wav, with the transcripts that are known), by name,
    fetched without its weights."""
    with progress or LoadProgress(enabled=False) as shown:
        return model_voices(resolve_voice_files(model, shown))


def cache_voice_rows(options: LoadOptions, progress: LoadProgress | None = None) -> tuple[list[str], Path | None]:
    """Prefills the model's default voices (`voice.DEFAULT_VOICES`) as `csm say` with these options does, keeping
    their rows in the cache unless it holds them already -> the voices' names and the entry (None where the model has
    no default voices or the cache cannot be written)."""
    with progress or LoadProgress(enabled=False) as shown:
        voices = choose_voices(model_voices(resolve_voice_files(options.model, shown)), None, None, 0, False)
        if not voices:
            return [], None
        generator = load_generator(options, shown)
        try:
            with shown.steps_task("prefilling the default voices", 1) as done:
                tokens, mask = generator.prefill_voices([voice_segment(voice, n, generator.codec)
                                                         for n, voice in voices])
                done()
        finally:
            generator.close()
    voice_cache = generator.engine.voice_cache
    assert isinstance(voice_cache, CachedVoiceRows), voice_cache
    entry = voice_cache.entry(tokens, mask)
    return [voice.name for _, voice in voices], entry if entry.exists() else None
