"""The `csm` command line: it parses options, loads the generator and sends its chunks where they are asked to go.
torch, moshi and sounddevice are imported inside the commands so that `csm --help` answers at once."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from .config import DEFAULT_MODEL, DEFAULT_TOKENIZER
from .errors import CsmError

app = typer.Typer(
    help="Speak text aloud with Sesame's CSM-1B, playing the audio while it is being generated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOption = Annotated[str, typer.Option(help="Hub id or local directory of a CSM checkpoint (either layout).")]
CodecOption = Annotated[
    Path | None, typer.Option(help="Local Mimi safetensors file [default: moshi's Mimi from the hub].")
]
TokenizerOption = Annotated[
    str, typer.Option(help="Hub id or directory of the tokenizer, used when the model repo has none.")
]
ModelDeviceOption = Annotated[
    str | None, typer.Option(help="Torch device for the model, e.g. cuda, cuda:1, cpu [default: cuda if present].")
]
DtypeOption = Annotated[
    str | None, typer.Option(help="bfloat16, float16 or float32 [default: bfloat16 on CUDA, float32 on CPU].")
]


@app.callback()
def csm() -> None:
    """Speak text aloud with Sesame's CSM-1B, playing the audio while it is being generated."""


QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or status on stderr.")]


@contextmanager
def user_errors() -> Iterator[None]:
    """A CsmError becomes one line on stderr and a non-zero exit; Ctrl-C exits with 130."""
    try:
        yield
    except CsmError as e:
        print(f"csm: error: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        print("csm: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


def parse_speaker(value: str) -> int:
    if not value.strip().isdigit():
        raise CsmError(f"--speaker must be a non-negative integer, got {value!r}")
    return int(value)


def check_writable(path: Path) -> None:
    """Fails before the model loads if `path` cannot be created or overwritten."""
    if path.is_dir():
        raise CsmError(f"cannot write {path}: it is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise CsmError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CsmError(f"cannot write {path}: permission denied")


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="What to say.")],
    speaker: Annotated[str, typer.Option(help="Speaker id, a non-negative integer.")] = "0",
    out: Annotated[Path | None, typer.Option(help="Also write the audio to this 24 kHz mono WAV file.")] = None,
    play: Annotated[bool, typer.Option(help="Play through the sound card (--no-play: only write --out).")] = True,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    topk: Annotated[int, typer.Option(help="Sample among the k most likely codes; 1 is greedy.")] = 50,
    seed: Annotated[int | None, typer.Option(help="Random seed, for reproducible speech.")] = None,
    max_seconds: Annotated[float, typer.Option(help="Most seconds of speech to generate.")] = 30.0,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    quiet: QuietOption = False,
) -> None:
    """Say TEXT."""
    with user_errors():
        speaker_id = parse_speaker(speaker)
        if not text.strip():
            raise CsmError("the text is empty: give something to say")
        if out is None and not play:
            raise CsmError("--no-play needs --out FILE.wav: otherwise the speech goes nowhere")
        if out is not None:
            check_writable(out)
        if play:
            raise CsmError("playback is not available yet: use --out FILE.wav --no-play")
        from .generator import StreamingGenerator
        from .progress import LoadProgress
        from .wav import WavWriter

        generator = StreamingGenerator.load(
            model, codec=codec, device=model_device, dtype=dtype, tokenizer=tokenizer,
            progress=LoadProgress(enabled=not quiet),
        )
        speech = generator.stream(
            text, speaker=speaker_id, temperature=temperature, topk=topk, seed=seed, max_seconds=max_seconds
        )
        assert out is not None
        with WavWriter(out) as wav:
            try:
                for chunk in speech:
                    wav.write(chunk)
            except Exception:
                out.unlink(missing_ok=True)
                raise


def main() -> None:
    app()
