"""The `csm` command line: it parses options, loads the generator and sends its chunks where they are asked to go.
torch, moshi and sounddevice are imported inside the commands so that `csm --help` answers at once."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .config import DEFAULT_MODEL, DEFAULT_TOKENIZER
from .errors import CsmError

if TYPE_CHECKING:
    from .generator import StreamingGenerator
    from .prompt import Segment
    from .voice import Voice

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


EagerOption = Annotated[bool, typer.Option("--eager", help="Run every frame eagerly, without CUDA graphs.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or status on stderr.")]


@contextmanager
def user_errors() -> Iterator[None]:
    """A CsmError becomes one line on stderr and a non-zero exit; Ctrl-C exits with 130; a closed stdout ends
    quietly as a closed pipe does."""
    from .pcm import OutputClosed, exit_for_closed_output

    try:
        yield
    except CsmError as e:
        print(f"csm: error: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        print("csm: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except OutputClosed:
        exit_for_closed_output()


def parse_speaker(value: str, option: str = "--speaker") -> int:
    if not value.strip().isdigit():
        raise CsmError(f"{option} must be a non-negative integer, got {value!r}")
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


def voice_prompts(files: list[Path], texts: list[str], speakers: list[str], default_speaker: int) -> list["Segment"]:
    """--context FILE --context-text TEXT [--context-speaker N], each repeatable, read before the model loads."""
    from .prompt import Segment
    from .voice import load_voice_prompt

    if len(texts) != len(files):
        raise CsmError(f"give one --context-text per --context file ({len(files)} files, {len(texts)} texts)")
    if speakers and len(speakers) != len(files):
        raise CsmError(f"give one --context-speaker per --context file, or none ({len(files)} files, "
                       f"{len(speakers)} speakers)")
    ids = [parse_speaker(s, "--context-speaker") for s in speakers] or [default_speaker] * len(files)
    return [
        Segment(speaker, text, audio=load_voice_prompt(path))
        for path, text, speaker in zip(files, texts, ids, strict=True)
    ]


@app.command()
def say(
    text: Annotated[
        str | None, typer.Argument(help="What to say; '-' or nothing reads lines from standard input.")
    ] = None,
    speaker: Annotated[str, typer.Option(help="Speaker id, a non-negative integer.")] = "0",
    out: Annotated[
        str | None, typer.Option(help="Also record to this 24 kHz mono WAV file; '-' writes raw PCM to stdout.")
    ] = None,
    pcm_format: Annotated[str, typer.Option("--format", help="Raw PCM for --out -: s16 (16-bit LE) or f32.")] = "s16",
    out_dir: Annotated[Path | None, typer.Option(help="Write one numbered WAV per utterance here.")] = None,
    play: Annotated[
        bool | None, typer.Option(help="Play through the sound card [default: yes, unless --out -].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="Output device name or index (see `csm devices`).")] = None,
    pause: Annotated[float, typer.Option(help="Seconds of silence between utterances.")] = 0.2,
    memory: Annotated[bool, typer.Option(help="Keep what was said as context for what follows.")] = True,
    voice: Annotated[str | None, typer.Option(
        help="Voice of --speaker: a voice of the model (see `csm voices`), an audio file with --voice-text, or "
             "none [default: the model's conversational_a for speaker 0 and conversational_b for speaker 1, "
             "unless --context is given].")] = None,
    voice_text: Annotated[str | None, typer.Option(help="What is said in the --voice recording.")] = None,
    context: Annotated[list[Path] | None, typer.Option(help="Voice prompt audio file (repeatable).")] = None,
    context_text: Annotated[list[str] | None, typer.Option(help="What is said in each --context file.")] = None,
    context_speaker: Annotated[
        list[str] | None, typer.Option(help="Speaker of each --context file [default: --speaker].")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    topk: Annotated[int, typer.Option(help="Sample among the k most likely codes; 1 is greedy.")] = 50,
    seed: Annotated[int | None, typer.Option(help="Random seed, for reproducible speech.")] = None,
    max_seconds: Annotated[float, typer.Option(help="Most seconds of speech per utterance.")] = 30.0,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    eager: EagerOption = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print the run's statistics as JSON on stderr.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Say TEXT, or standard input sentence by sentence as it arrives."""
    with user_errors():
        from .generator import Settings
        from .pcm import prepare_out_dir
        from .say import Output, expected_seconds, say, warn
        from .script import passages
        from .text_input import Replacer, read_text
        from .voice import choose_voices

        speaker_id = parse_speaker(speaker)
        from_stdin = text is None or text == "-"
        if not from_stdin and not text.strip():
            raise CsmError("the text is empty: give something to say")
        if not from_stdin:
            text = Replacer("the text argument", warn)(text)
        if pcm_format not in ("s16", "f32"):
            raise CsmError(f"--format must be s16 or f32, got {pcm_format!r}")
        if out is not None and out_dir is not None:
            raise CsmError("choose --out FILE.wav for the whole run or --out-dir DIR for one file per utterance")
        raw = out == "-"
        play = not raw if play is None else play
        if not play and out is None and out_dir is None:
            raise CsmError("--no-play needs --out or --out-dir: otherwise the speech goes nowhere")
        if out is not None and not raw:
            check_writable(Path(out))
        if play:
            from .playback import check_output_device

            check_output_device(device)
        if pause < 0:
            raise CsmError(f"--pause must not be negative, got {pause:g}")
        settings = Settings(temperature, topk, seed, max_seconds)
        prompts = voice_prompts(context or [], context_text or [], context_speaker or [], speaker_id)
        voices = choose_voices(offered_voices(model, voice, bool(context), quiet), voice, voice_text, speaker_id,
                               has_context=bool(context))
        output = Output(
            play=play, device=device, wav=None if out is None or raw else Path(out),
            raw=pcm_format if raw else None, out_dir=prepare_out_dir(out_dir) if out_dir else None,
            quiet=quiet, stats=stats, live_status=not (from_stdin and sys.stdin.isatty()),
        )
        say(
            passages(read_text(sys.stdin, warn) if from_stdin else [text + "\n"]),  # the text as whole lines
            load=lambda: load_generator(model, codec, tokenizer, model_device, dtype, eager, quiet),
            speaker=speaker_id, settings=settings, prompts=prompts, memory=memory, pause_seconds=pause,
            output=output, expected_seconds=None if from_stdin else expected_seconds(text),
            voices=lambda generator: [generator.voice_segment(v, n) for n, v in voices],
        )


def offered_voices(model: str, voice: str | None, has_context: bool, quiet: bool) -> dict[str, "Voice"]:
    """The model repository's voices, fetched without its weights; none looked up when none is asked for."""
    from .progress import LoadProgress
    from .repository import resolve_voice_files
    from .voice import NO_VOICE, model_voices

    if voice == NO_VOICE or (voice is None and has_context):
        return {}
    with LoadProgress(enabled=not quiet) as shown:
        return model_voices(resolve_voice_files(model, shown))


def load_generator(model: str, codec: Path | None, tokenizer: str, model_device: str | None, dtype: str | None,
                   eager: bool, quiet: bool) -> "StreamingGenerator":
    from .generator import StreamingGenerator
    from .progress import LoadProgress

    return StreamingGenerator.load(model, codec=codec, device=model_device, dtype=dtype, tokenizer=tokenizer,
                                   progress=LoadProgress(enabled=not quiet), fast=not eager)


@app.command()
def devices() -> None:
    """List the audio output devices (for --device)."""
    with user_errors():
        from rich.console import Console

        from .playback import output_devices, render_device_table

        found = output_devices()
        if not found:
            raise CsmError("no audio output device found: write files with --out FILE --no-play")
        Console().print(render_device_table(found))




@app.command()
def download(
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    quiet: QuietOption = False,
) -> None:
    """Fetch the model (one layout, its tokenizer and voices), a tokenizer if it has none, and the codec into the
    Hugging Face cache, so that `say` starts without downloading and HF_HUB_OFFLINE=1 works."""
    with user_errors():
        from .progress import LoadProgress
        from .repository import fetch_model_files

        with LoadProgress(enabled=not quiet) as shown:
            files = fetch_model_files(model, tokenizer, codec, shown)
        size = sum(path.stat().st_size for path in files.paths)
        print(f"{model}: {files.repository.layout.value} layout, {len(files.paths)} files, {size:,} bytes "
              f"with the tokenizer and codec, in {files.repository.directory}")


@app.command()
def voices(model: ModelOption = DEFAULT_MODEL, quiet: QuietOption = False) -> None:
    """List the voices the model offers (its prompts/NAME.wav), for --voice NAME."""
    with user_errors():
        from rich.console import Console
        from rich.table import Table

        from .voice import DEFAULT_VOICES

        offered = offered_voices(model, None, False, quiet)
        if not offered:
            raise CsmError(f"{model} offers no voices (no prompts/*.wav): give a recording with --voice FILE "
                           "--voice-text TEXT")
        defaults = {name: speaker for speaker, name in DEFAULT_VOICES.items()}
        table = Table("name", "seconds", "transcript", "default for")
        for name, voice in offered.items():
            transcript = "known" if voice.text else "unknown: give it with --voice-text"
            speaker = f"speaker {defaults[name]}" if name in defaults and voice.text else ""
            table.add_row(name, f"{voice.seconds:.1f}", transcript, speaker)
        Console(width=120).print(table)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; beyond loopback, set --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        envvar="CSM_API_KEY", help="Require 'Authorization: Bearer KEY' on every request but /health.")] = None,
    max_streams: Annotated[int, typer.Option(
        help="Most requests and WebSocket connections generated at once; more are answered 429.")] = 4,
    max_input_chars: Annotated[int, typer.Option(help="Longest input of one request, in characters.")] = 4096,
    pause: Annotated[float, typer.Option(help="Seconds of silence between the sentences of a request.")] = 0.2,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    topk: Annotated[int, typer.Option(help="Sample among the k most likely codes; 1 is greedy.")] = 50,
    max_seconds: Annotated[float, typer.Option(help="Most seconds of speech per utterance.")] = 30.0,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    eager: EagerOption = False,
    quiet: QuietOption = False,
) -> None:
    """Serve speech over HTTP: OpenAI's /v1/audio/speech, and a WebSocket for text that arrives in pieces."""
    with user_errors():
        from .generator import Settings
        from .server import ServeOptions
        from .server import serve as run_server

        if max_streams < 1:
            raise CsmError(f"--max-streams must be at least 1, got {max_streams}")
        if max_input_chars < 1:
            raise CsmError(f"--max-input-chars must be at least 1, got {max_input_chars}")
        if not 0 <= port <= 65535:
            raise CsmError(f"--port must lie in 0..65535, got {port}")
        if pause < 0:
            raise CsmError(f"--pause must not be negative, got {pause:g}")
        options = ServeOptions(Settings(temperature, topk, None, max_seconds), pause, max_streams, max_input_chars,
                               api_key or None)
        run_server(lambda: load_generator(model, codec, tokenizer, model_device, dtype, eager, quiet), host, port,
                   options, quiet)


class CompareWith(StrEnum):
    eager = "eager"


@app.command()
def bench(
    frames: Annotated[int, typer.Option(help="Frames of 80 ms per text; end of speech is ignored.")] = 125,
    context_seconds: Annotated[
        float, typer.Option(help="Seconds of context (random audio codes) before each text.")
    ] = 0.0,
    random_weights: Annotated[bool, typer.Option(
        "--random-weights",
        help="Full-size CSM-1B and Mimi with random weights, to measure speed without the checkpoint "
             "(--model and --codec are not used; token ids are synthetic when no tokenizer is at hand).",
    )] = False,
    compare: Annotated[
        CompareWith | None, typer.Option(help="Also run this path in the same process and print the ratio.")
    ] = None,
    eager: EagerOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    quiet: QuietOption = False,
) -> None:
    """Measure speed on fixed texts and seeds: time to first audio, time per frame, real-time factor."""
    with user_errors():
        import json

        from rich.console import Console

        from .bench import RANDOM_WEIGHTS, BenchOptions, load_for_bench, render_table, run_bench
        from .progress import LoadProgress

        options = BenchOptions(frames, context_seconds, fast=not eager, compare_eager=compare is CompareWith.eager)
        report = run_bench(
            lambda: load_for_bench(model, codec, tokenizer, model_device, dtype, random_weights,
                                   LoadProgress(enabled=not quiet)),
            RANDOM_WEIGHTS if random_weights else model,
            options,
        )
        if json_output:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            Console().print(render_table(report))


def main() -> None:
    app()
