"""`csm bench --cold-start`: what a new user waits for. `csm say "Hello there." --out FILE --no-play` runs twice, each
time a new process, with csm's cache in a directory of the bench's: empty for the first run, which fills it (int8
weights, voice codes, the voices' prefilled rows), and as the first run left it for the second. Each run reports,
with --stats, when it wrote its first chunk to the file, from its launch (`launch_to_first_written_s`).

With --random-weights the runs load a repository of full-size random weights in the published layout (config.json
naming the original flavors, the original layout's float32 model.safetensors, a tokenizer, the two 30 s default
voices) and a Mimi of random weights, written once into csm's cache (`cache.BENCH_MODELS`, 6.6 GB) for the next
bench.
"""

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from rich.table import Table

from .audio import AUDIO_VOCAB_SIZE, NUM_CODEBOOKS
from .errors import CsmError
from .generation.args import CsmArgs
from .loading.cache import BENCH_MODELS, cache_dir, key_of
from .loading.config import CSM_1B, parse_config
from .loading.repository import CONFIG_FILE, TOKENIZER_FILES, VOICES_DIR
from .loading.voice import DEFAULT_VOICES
from .progress import LoadProgress

TEXT = "Hello there."
SECONDS = 0.24  # three frames: the first is what is timed
SEED = 1234
RANDOM_REPOSITORY_FORMAT = 1  # made again when what `write_random_repository` writes changes
MIMI_FILE = "mimi.safetensors"
PROMPT_RATE = 44_100  # the published prompts' rate: 16-bit mono WAV


@dataclass(frozen=True)
class ColdStartRun:
    launch_to_first_audio_s: float  # the process's own clock: from its launch to its first chunk in the file
    process_s: float  # from starting the process to its end, as the bench saw it


@dataclass(frozen=True)
class ColdStartReport:
    weights: str
    say: list[str]  # the options every run was given
    first: ColdStartRun  # with an empty cache
    second: ColdStartRun  # with what the first run cached
    cache_bytes: int  # what the first run cached

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_cold_start(options: list[str], weights: str, progress: LoadProgress) -> ColdStartReport:
    """`csm say TEXT --out FILE --no-play OPTIONS` twice, each a new process, on a cache of the bench's own, empty at
    first; the Hugging Face cache is the user's."""
    from huggingface_hub import constants

    with tempfile.TemporaryDirectory(prefix="csm-cold-start-") as scratch:
        directory = Path(scratch)
        env = {**os.environ, "XDG_CACHE_HOME": str(directory / "cache"), "HF_HUB_CACHE": constants.HF_HUB_CACHE}
        runs = []
        with progress as shown, shown.steps_task("cold start: csm say, first then second run", 2) as advance:
            for run in ("first", "second"):
                runs.append(_say(directory / f"{run}.wav", options, env))
                advance()
        cached = sum(file.stat().st_size for file in (directory / "cache").rglob("*") if file.is_file())
    return ColdStartReport(weights, options, runs[0], runs[1], cached)


def _say(out: Path, options: list[str], env: dict[str, str]) -> ColdStartRun:
    command = [sys.executable, "-m", "csm_cli", "say", TEXT, "--out", str(out), "--no-play", "--stats", "--quiet",
               "--seed", str(SEED), "--max-seconds", str(SECONDS), *options]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    process_s = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    if result.returncode != 0:
        raise CsmError(f"csm say failed in the cold start: {lines[-1] if lines else f'status {result.returncode}'}")
    return ColdStartRun(json.loads(lines[-1])["launch_to_first_written_s"], process_s)


def render_cold_start(report: ColdStartReport) -> Table:
    table = Table("", "first run", "second run", title=f"csm bench --cold-start: csm say {TEXT!r} --out FILE --no-play",
                  caption=f"weights: {report.weights}; options: {' '.join(report.say)}; the first run cached "
                          f"{report.cache_bytes / 1e9:.2f} GB")
    table.add_row("launch to first audio in the file", f"{report.first.launch_to_first_audio_s:.2f} s",
                  f"{report.second.launch_to_first_audio_s:.2f} s")
    table.add_row("whole process", f"{report.first.process_s:.2f} s", f"{report.second.process_s:.2f} s")
    return table


# --- a repository of random weights in the published layout -----------------------------------------------------

def random_repository(progress: LoadProgress, backbone: str = "llama-1B", decoder: str = "llama-100M",
                      text_vocab_size: int = CSM_1B.text_vocab_size, voice_seconds: float = 30.0) -> Path:
    """The repository `write_random_repository` writes, from csm's cache, written there the first time."""
    key = key_of({"format": RANDOM_REPOSITORY_FORMAT, "flavors": [backbone, decoder],
                  "text_vocab_size": text_vocab_size, "voice_seconds": voice_seconds})
    found = BENCH_MODELS.read(key, Path, damaged=())
    if found is not None:
        return found
    with progress as shown, shown.steps_task("writing a repository of random weights", 1) as done:
        written = BENCH_MODELS.write(key, lambda path: write_random_repository(path, backbone, decoder, text_vocab_size,
                                                                               voice_seconds))
        done()
    if written is None:
        raise CsmError(f"cannot write the bench's repository of random weights into {cache_dir()}")
    return written


def write_random_repository(directory: Path, backbone: str, decoder: str, text_vocab_size: int,
                            voice_seconds: float) -> None:
    """A model repository as published, of the flavors named, with random weights (normal, std 0.02; norms at one):
    config.json, the original layout's float32 model.safetensors, a tokenizer (one token a word, Llama-3's BOS and
    EOS ids), the default voices (noise, at the published prompts' rate), and a Mimi of random weights beside them."""
    from moshi.models import loaders
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir()
    config = {"backbone_flavor": backbone, "decoder_flavor": decoder, "text_vocab_size": text_vocab_size,
              "audio_vocab_size": AUDIO_VOCAB_SIZE, "audio_num_codebooks": NUM_CODEBOOKS}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    generator = torch.Generator().manual_seed(0)
    write_float32_safetensors(directory / "model.safetensors", original_shapes(parse_config(config)),
                              lambda shape: torch.empty(shape).normal_(0.0, 0.02, generator=generator)
                              if len(shape) > 1 else torch.ones(shape))
    bos, eos = text_vocab_size - 256, text_vocab_size - 255  # 128000 and 128001 of Llama-3's 128256
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<|begin_of_text|>": bos, "<|end_of_text|>": eos},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / TOKENIZER_FILES[0]))
    (directory / TOKENIZER_FILES[1]).write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                             "eos_token": "<|end_of_text|>"}))
    (directory / VOICES_DIR).mkdir()
    for n, name in enumerate(DEFAULT_VOICES.values()):
        noise = 0.1 * np.random.default_rng(n).standard_normal(round(voice_seconds * PROMPT_RATE))
        sf.write(directory / VOICES_DIR / f"{name}.wav", noise.astype(np.float32), PROMPT_RATE, subtype="PCM_16")
    save_file(loaders.get_mimi(None, device="cpu", num_codebooks=NUM_CODEBOOKS).state_dict(),
              str(directory / MIMI_FILE))


def original_shapes(args: CsmArgs) -> dict[str, tuple[int, ...]]:
    """The tensors of the original layout (torchtune's names, SesameAILabs/csm's checkpoint) and their shapes."""
    b, d = args.backbone, args.decoder
    shapes: dict[str, tuple[int, ...]] = {
        "text_embeddings.weight": (args.text_vocab_size, b.dim),
        "audio_embeddings.weight": (args.audio_vocab_size * args.num_codebooks, b.dim),
        "projection.weight": (d.dim, b.dim),
        "codebook0_head.weight": (args.audio_vocab_size, b.dim),
        "audio_head": (args.num_codebooks - 1, d.dim, args.audio_vocab_size),
    }
    for prefix, transformer in (("backbone", b), ("decoder", d)):
        dim, hidden, e = transformer.dim, transformer.intermediate_dim, transformer.head_dim
        for i in range(transformer.num_layers):
            layer = f"{prefix}.layers.{i}"
            shapes |= {
                f"{layer}.attn.q_proj.weight": (transformer.num_heads * e, dim),
                f"{layer}.attn.k_proj.weight": (transformer.num_kv_heads * e, dim),
                f"{layer}.attn.v_proj.weight": (transformer.num_kv_heads * e, dim),
                f"{layer}.attn.output_proj.weight": (dim, transformer.num_heads * e),
                f"{layer}.mlp.w1.weight": (hidden, dim),
                f"{layer}.mlp.w2.weight": (dim, hidden),
                f"{layer}.mlp.w3.weight": (hidden, dim),
                f"{layer}.sa_norm.scale": (dim,),
                f"{layer}.mlp_norm.scale": (dim,),
            }
        shapes[f"{prefix}.norm.scale"] = (dim,)
    return shapes


def write_float32_safetensors(path: Path, shapes: dict[str, tuple[int, ...]],
                              draw: Callable[[tuple[int, ...]], torch.Tensor]) -> None:
    """A safetensors file of float32 tensors of `shapes`, each drawn and written in turn, so that one tensor at a time
    is in memory (safetensors' own writer takes them all at once: 6.2 GB here)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        end = offset + 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for shape in shapes.values():
            draw(shape).numpy().tofile(file)
