"""The `csm` command line: it parses options, loads the generator and sends its chunks where they are asked to go.
torch, moshi and sounddevice are imported inside the commands so that `csm --help` answers at once."""

import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core

from . import stopping
from .checks import whole_number
from .errors import CsmError, CsmWarning, warn
from .loading.config import DEFAULT_MODEL, DEFAULT_TOKENIZER

if TYPE_CHECKING:
    from .generation.generator import StreamingGenerator
    from .generation.prompt import Segment
    from .loading.generator import LoadOptions
    from .loading.voice import Voice
    from .output.audiofile import SampleFormat

class CsmGroup(typer.core.TyperGroup):
    """Typer's command group, with its usage errors (an unknown option, `--topk 1.5`) on one line as every other
    error: `csm: error: MESSAGE (see csm say --help)`, with Typer's exit status (2 for usage errors)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            status = super().main(*args, **{**kwargs, "standalone_mode": False})
        except typer.TyperException as e:  # click's exceptions as Typer vendors them
            message = " ".join(e.format_message().split())
            if message:  # empty when the error was to show the help, which Typer has printed
                ctx = getattr(e, "ctx", None)
                hint = f" (see {_command_path(ctx)} --help)" if ctx is not None else ""
                print(f"csm: error: {message}{hint}", file=sys.stderr)
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)  # not standalone, Typer returns an Exit's status


def _command_path(ctx: typer.Context | None) -> str:
    """`csm say` whatever the program was started as (`python -m csm_cli` included)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["csm", *names])


# Help as Unix tools print it: plain text (no markup to swallow "[...]"), a metavar for each value, each default.
app = typer.Typer(
    cls=CsmGroup,
    help="Speak text aloud with Sesame's CSM-1B, playing the audio while it is being generated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[str, typer.Option(
    metavar="ID|DIR", help="Hub id or local directory of a CSM checkpoint (either layout).")]
CodecOption = Annotated[Path | None, typer.Option(
    metavar="FILE", show_default="moshi's Mimi from the hub", help="Local Mimi safetensors file.")]
TokenizerOption = Annotated[str, typer.Option(
    metavar="ID|DIR", help="Hub id or directory of the tokenizer, used when the model repo has none.")]
ModelDeviceOption = Annotated[str | None, typer.Option(
    metavar="DEVICE", show_default="cuda if present, else cpu",
    help="Torch device for the model, e.g. cuda, cuda:1, cpu.")]
DtypeOption = Annotated[str | None, typer.Option(
    metavar="DTYPE", show_default="bfloat16 on CUDA, float32 on CPU", help="bfloat16, float16 or float32.")]
QuantizeOption = Annotated[str | None, typer.Option(
    metavar="none|int8|int8-dynamic", show_default="int8 on a CPU unless --dtype is given, none on CUDA",
    help="Int8 weights on the CPU: none, int8 (bfloat16 activations, logits within cosine 0.99 of float32) or "
         "int8-dynamic (int8 activations too: faster, further from float32; see the README).")]

ThreadsOption = Annotated[int | None, typer.Option(
    metavar="N", show_default="the physical cores", help="CPU threads for the model.")]


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"csm {version('csm-cli')}")
        raise typer.Exit()


@app.callback()
def csm(
    version: Annotated[bool, typer.Option(
        "--version", callback=print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Speak text aloud with Sesame's CSM-1B, playing the audio while it is being generated."""


EagerOption = Annotated[bool, typer.Option("--eager", help="Run every frame eagerly, without CUDA graphs.")]
CompileOption = Annotated[bool, typer.Option(
    "--compile", help="On a CPU, compile the frame step's depth decoder with torch.compile (needs a C++ compiler): "
                      "about a third faster a frame in int8, for under a minute at first use and seconds at later "
                      "starts (its code cached).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or status on stderr.")]


@contextmanager
def user_errors() -> Iterator[None]:
    """A CsmError becomes one line on stderr and a non-zero exit; Ctrl-C, SIGTERM and SIGHUP one line and 128 + the
    signal (`stopping`); a closed stdout ends quietly as a closed pipe does. Outputs are closed by the time an
    exception gets here."""
    from .output.pcm import OutputClosed, exit_for_closed_output

    main_thread = threading.current_thread() is threading.main_thread()
    with stopping.raised_while() if main_thread else nullcontext():
        try:
            with one_line_warnings():
                yield
        except KeyboardInterrupt as e:
            stop(e if isinstance(e, stopping.Stopped) else stopping.Stopped())
        except BaseException as e:
            if (stopped := stopping.received()) is not None:  # an error a library made of the stop
                stop(stopped)
            if isinstance(e, CsmError):
                stopping.ending()
                print(f"csm: error: {e}", file=sys.stderr)
                leave(e.exit_code)
            if isinstance(e, OutputClosed):
                exit_for_closed_output()
            raise


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """CsmWarnings printed as one line, as `warn` prints them; other warnings as Python prints them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CsmWarning)
        show = warnings.showwarning

        def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, CsmWarning):
                warn(str(message))
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = show_warning
        yield


def stop(stopped: stopping.Stopped) -> NoReturn:
    stopping.ending()
    with suppress(OSError):  # the terminal is gone (SIGHUP): the exit status says it
        print(stopped.message, file=sys.stderr)
    leave(stopped.exit_status, at_once=True)


def leave(status: int, at_once: bool = False) -> NoReturn:
    """Ends the program with `status`. After a stop signal (`at_once`), or while the producer thread may still be
    inside torch, the interpreter's teardown takes seconds and can abort ("terminate called without an active
    exception"): the outputs are closed by then, so the standard streams are flushed and the process leaves at once."""
    if not at_once and not any(thread.name == "csm-producer" and thread.is_alive() for thread in threading.enumerate()):
        raise typer.Exit(status)
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError, AttributeError):  # closed, or None when started without it
            stream.flush()
    os._exit(status)


def parse_speaker(value: str, option: str = "--speaker") -> int:
    from .generation.generator import MAX_SPEAKER

    digits = value.strip()
    if not re.fullmatch("[0-9]+", digits):
        raise CsmError(f"{option} must be a whole number from 0 to {MAX_SPEAKER}, got {value!r}")
    return whole_number(option, int(digits), 0, MAX_SPEAKER)


def parse_counts(option: str, value: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers: `--prefill 64,512`."""
    parts = [part.strip() for part in value.split(",")]
    if not all(re.fullmatch("[0-9]+", part) for part in parts):
        raise CsmError(f"{option} takes whole numbers separated by commas (64,512), got {value!r}")
    return tuple(int(part) for part in parts)


def check_writable(path: Path, sample_format: "SampleFormat") -> None:
    """Fails before the model loads if `path` cannot be created or overwritten as an audio file."""
    from .output.audiofile import check_output_file

    check_output_file(path, sample_format)
    parent = path.parent
    if not parent.is_dir():
        raise CsmError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CsmError(f"cannot write {path}: permission denied")


def read_text_file(path: Path) -> str:
    """The text of --file FILE, read whole before the model loads: UTF-8, a byte-order mark dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CsmError(f"--file {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise CsmError(f"--file {path} is a directory: give a text file") from None
    except OSError as e:
        raise CsmError(f"cannot read --file {path} ({e.strerror}): give a readable text file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CsmError(f"--file {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}): "
                       "convert it, e.g. with iconv -t UTF-8") from None
    if "\0" in text:
        raise CsmError(f"--file {path} is not a text file (it holds NUL bytes): give a text file")
    if not text.strip():
        raise CsmError(f"--file {path} is empty: give something to say")
    return text


def voice_prompts(files: list[Path], texts: list[str], speakers: list[str], default_speaker: int) -> list["Segment"]:
    """--context FILE --context-text TEXT [--context-speaker N], each repeatable, read before the model loads."""
    from .generation.prompt import Segment
    from .loading.voice import load_voice_prompt

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
    text: Annotated[str | None, typer.Argument(metavar="TEXT", hidden=True)] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", metavar="FILE", help="Say the lines of this UTF-8 text file ('-': standard input).")] = None,
    speaker: Annotated[str, typer.Option(metavar="N", help="Speaker id, a non-negative integer.")] = "0",
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="FILE",
        help="Also write the speech to this 24 kHz mono file (.wav, .flac, .ogg, .opus, .mp3), its format by "
             "extension; '-' writes raw PCM to stdout.")
    ] = None,
    sample_format: Annotated[str, typer.Option(
        "--format", metavar="s16|f32", help="Samples of --out - (raw PCM) and WAV files: s16 (16-bit) or f32.")
    ] = "s16",
    out_dir: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Write one WAV per utterance here: LINE-PART.wav (0003-2.wav).")] = None,
    play: Annotated[bool | None, typer.Option(
        show_default="yes, unless --out -", help="Play through the sound card.")] = None,
    device: Annotated[str | None, typer.Option(
        metavar="NAME|INDEX", show_default="the system's",
        help="Output device (see `csm devices`).")] = None,
    pause: Annotated[float, typer.Option(metavar="SECONDS", help="Silence between utterances.")] = 0.2,
    memory: Annotated[bool, typer.Option(help="Keep what was said as context for what follows.")] = True,
    voice: Annotated[str | None, typer.Option(
        metavar="NAME|FILE|none",
        show_default="the model's conversational_a for speaker 0 and conversational_b for speaker 1, unless --context",
        help="Voice of --speaker: a voice of the model (see `csm voices`), an audio file with --voice-text, or "
             "none.")] = None,
    voice_text: Annotated[str | None, typer.Option(
        metavar="TEXT", help="What is said in the --voice recording.")] = None,
    context: Annotated[list[Path] | None, typer.Option(
        metavar="FILE", help="Voice prompt audio file (repeatable).")] = None,
    context_text: Annotated[list[str] | None, typer.Option(
        metavar="TEXT", help="What is said in each --context file.")] = None,
    context_speaker: Annotated[list[str] | None, typer.Option(
        metavar="N", show_default="--speaker", help="Speaker of each --context file.")] = None,
    temperature: Annotated[float, typer.Option(metavar="T", help="Sampling temperature.")] = 0.9,
    topk: Annotated[int, typer.Option(
        metavar="K", help="Sample among the k most likely codes; 1 is greedy.")] = 50,
    seed: Annotated[int | None, typer.Option(
        metavar="N", show_default="random", help="Random seed, for reproducible speech.")] = None,
    max_seconds: Annotated[float, typer.Option(
        metavar="SECONDS", help="Most seconds of speech per utterance.")] = 30.0,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    quantize: QuantizeOption = None,
    eager: EagerOption = False,
    compile_step: CompileOption = False,
    threads: ThreadsOption = None,
    stats: Annotated[bool, typer.Option("--stats", help="Print the run's statistics as JSON on stderr.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Say TEXT, or standard input sentence by sentence as it arrives.

    With no TEXT, or TEXT '-', the text comes from standard input; with --file FILE, from FILE."""
    with user_errors():
        from .generation.conversation import pause_frames
        from .generation.generator import Settings
        from .loading.generator import LoadOptions, resolve_device, resolve_dtype
        from .loading.voice import choose_voices, voice_segment
        from .output.audiofile import prepare_out_dir
        from .say import Output, expected_seconds, say
        from .text.script import passages
        from .text.text_input import Replacer, read_text
        from .threads import use_cpu_threads

        speaker_id = parse_speaker(speaker)
        settings = Settings(temperature, topk, seed, max_seconds)
        pause_frames(pause)
        resolve_dtype(dtype, resolve_device(model_device))
        if text is not None and file is not None:
            raise CsmError("give TEXT or --file FILE, not both")
        from_stdin = (text is None or text == "-") and (file is None or str(file) == "-")
        if not from_stdin:
            text = Replacer("the text argument", warn)(text) if file is None else read_text_file(file)
            if not text.strip():
                raise CsmError("the text is empty: give something to say")
        if sample_format not in ("s16", "f32"):
            raise CsmError(f"--format must be s16 or f32, got {sample_format!r}")
        if out is not None and out_dir is not None:
            raise CsmError("choose --out FILE.wav for the whole run or --out-dir DIR for one file per utterance")
        raw = out == "-"
        if raw and sys.stdout is None:
            raise CsmError("--out - writes raw PCM to standard output, which is closed: redirect it, or use --out FILE")
        play = not raw if play is None else play
        if not play and out is None and out_dir is None:
            raise CsmError("--no-play needs --out or --out-dir: otherwise the speech goes nowhere")
        if out is not None and not raw:
            check_writable(Path(out), sample_format)
        if play:
            from .output.playback import check_output_device

            check_output_device(device)
        prompts = voice_prompts(context or [], context_text or [], context_speaker or [], speaker_id)
        use_cpu_threads(threads)
        voices = choose_voices(offered_voices(model, voice, bool(context), quiet), voice, voice_text, speaker_id,
                               has_context=bool(context))
        typing = from_stdin and sys.stdin.isatty()
        output = Output(
            play=play, device=device, file=None if out is None or raw else Path(out), raw=raw,
            sample_format=sample_format, out_dir=prepare_out_dir(out_dir) if out_dir else None,
            quiet=quiet, stats=stats, live_status=not typing,
        )
        if typing and not quiet:
            print("csm: type what to say and press Enter; Ctrl-D ends the input", file=sys.stderr)
        say(
            passages(read_text(sys.stdin, warn) if from_stdin else [text + "\n"]),  # the text as whole lines
            load=lambda: load(LoadOptions(model, codec, tokenizer, model_device, dtype, quantize, not eager,
                                          compile=compile_step), quiet),
            speaker=speaker_id, settings=settings, prompts=prompts, memory=memory, pause_seconds=pause,
            output=output, expected_seconds=None if from_stdin else expected_seconds(text),
            voices=lambda generator: [voice_segment(v, n, generator.codec) for n, v in voices],
        )


def offered_voices(model: str, voice: str | None, has_context: bool, quiet: bool) -> dict[str, "Voice"]:
    """The model repository's voices, fetched without its weights; none looked up when none is asked for."""
    from .loading.generator import load_voices
    from .loading.voice import NO_VOICE
    from .progress import LoadProgress

    if voice == NO_VOICE or (voice is None and has_context):
        return {}
    return load_voices(model, LoadProgress(enabled=not quiet))


def load(options: "LoadOptions", quiet: bool) -> "StreamingGenerator":
    from .loading.generator import load_generator
    from .progress import LoadProgress

    return load_generator(options, LoadProgress(enabled=not quiet))


@app.command()
def devices() -> None:
    """List the audio output devices (for --device)."""
    with user_errors():
        from rich.console import Console

        from .output.playback import output_devices, render_device_table

        found = output_devices()
        if not found:
            raise CsmError("no audio output device found: write files with --out FILE --no-play")
        Console().print(render_device_table(found))




@app.command()
def download(
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    int8: Annotated[bool | None, typer.Option(
        "--int8/--no-int8", show_default="yes where torch sees no CUDA GPU",
        help="Also quantize the weights to int8 and prefill the default voices, as `csm say` runs them on a CPU, and "
             "keep both in csm's cache (see `csm cache`), so that the first `csm say` starts without either.")] = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Fetch the model (one layout, its tokenizer and voices), a tokenizer if it has none, and the codec into the
    Hugging Face cache, so that `say` starts without downloading and HF_HUB_OFFLINE=1 works; on a CPU, quantize it
    and prefill its default voices once for every start after."""
    with user_errors():
        import torch

        from .loading.repository import fetch_model_files
        from .progress import LoadProgress
        from .threads import use_cpu_threads

        with LoadProgress(enabled=not quiet) as shown:
            files = fetch_model_files(model, tokenizer, codec, shown)
        size = sum(path.stat().st_size for path in files.paths)
        print(f"{model}: {files.repository.layout.value} layout, {len(files.paths)} files, {size:,} bytes "
              f"with the tokenizer and codec, in {files.repository.directory}")
        if int8 if int8 is not None else not torch.cuda.is_available():
            from .loading.checkpoint import cache_int8_weights

            use_cpu_threads(threads)
            with LoadProgress(enabled=not quiet) as shown:
                entry = cache_int8_weights(files.repository, shown)
            if entry is not None:
                print(f"int8 weights for the CPU: {entry.stat().st_size:,} bytes in {entry}")
            from .loading.generator import LoadOptions, cache_voice_rows

            voices, entry = cache_voice_rows(LoadOptions(model, codec, tokenizer, device="cpu", quantize="int8"),
                                             LoadProgress(enabled=not quiet))
            if entry is not None:
                print(f"prefilled rows of the voices {', '.join(voices)}: {entry.stat().st_size:,} bytes in {entry}")


@app.command()
def cache(
    clear: Annotated[bool, typer.Option(
        "--clear", help="Remove all of it (the Hugging Face cache of downloaded models is left alone).")] = False,
) -> None:
    """Show what csm keeps between runs in its cache directory ($XDG_CACHE_HOME/csm, else ~/.cache/csm): int8 weights,
    voice codes, prefilled voice rows, bench models; or remove it."""
    with user_errors():
        from rich.console import Console
        from rich.filesize import decimal
        from rich.table import Table

        from .loading.cache import FOLDERS, cache_dir

        if clear:
            removed = [entry for folder in FOLDERS for entry in folder.clear()]
            entries = "entry" if len(removed) == 1 else "entries"
            print(f"removed {len(removed)} {entries}, {decimal(sum(entry.bytes for entry in removed))}, from "
                  f"{cache_dir()}")
            return
        table = Table("what", "entries", "size", "last used", title=f"csm's cache: {cache_dir()}")
        for folder in FOLDERS:
            entries = folder.entries()
            bound = ("" if folder.max_bytes is None else " (the last one)" if folder.max_bytes == 0
                     else f" (at most {decimal(folder.max_bytes)})")
            last = max((entry.last_used for entry in entries), default=None)
            table.add_row(folder.title + bound, str(len(entries)), decimal(sum(entry.bytes for entry in entries)),
                          "" if last is None else f"{last:%Y-%m-%d %H:%M}")
        Console(width=120).print(table)


@app.command()
def voices(model: ModelOption = DEFAULT_MODEL, quiet: QuietOption = False) -> None:
    """List the voices the model offers (its prompts/NAME.wav), for --voice NAME."""
    with user_errors():
        from rich.console import Console
        from rich.table import Table

        from .loading.voice import DEFAULT_VOICES

        offered = offered_voices(model, None, False, quiet)
        if not offered:
            raise CsmError(f"{model} offers no voices (no prompts/*.wav): give a recording with --voice FILE "
                           "--voice-text TEXT")
        defaults = {name: speaker for speaker, name in DEFAULT_VOICES.items()}
        table = Table("name", "seconds", "transcript", "default for")
        for name, voice in offered.items():
            seconds = voice.seconds
            if seconds is None:
                table.add_row(name, "-", f"unreadable: {voice.path.name} is not an audio file", "")
                continue
            transcript = "known" if voice.text else "unknown: give it with --voice-text"
            speaker = f"speaker {defaults[name]}" if name in defaults and voice.text else ""
            table.add_row(name, f"{seconds:.1f}", transcript, speaker)
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
    max_conversations: Annotated[int, typer.Option(
        help="Most conversations kept for requests that name one; the least recently used is forgotten.")] = 100,
    voice_alias: Annotated[list[str] | None, typer.Option(
        metavar="NAME=VOICE",
        help="Let requests name VOICE (a voice or a speaker id) NAME; repeatable. OpenAI's voice names (alloy, ash, "
             "...) take the voices with a known transcript in turn unless given here.")] = None,
    wyoming_port: Annotated[int | None, typer.Option(
        help="Also serve Home Assistant's Wyoming protocol on this TCP port (10200 is its usual one) of --host.")
    ] = None,
    pause: Annotated[float, typer.Option(help="Seconds of silence between the sentences of a request.")] = 0.2,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    topk: Annotated[int, typer.Option(help="Sample among the k most likely codes; 1 is greedy.")] = 50,
    max_seconds: Annotated[float, typer.Option(help="Most seconds of speech per utterance.")] = 30.0,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    quantize: QuantizeOption = None,
    eager: EagerOption = False,
    compile_step: CompileOption = False,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Serve speech over HTTP: OpenAI's /v1/audio/speech, and a WebSocket for text that arrives in pieces; with
    --wyoming-port, Home Assistant's Wyoming too."""
    with user_errors():
        from .generation.conversation import pause_frames
        from .generation.generator import Settings
        from .loading.generator import LoadOptions
        from .serve.server import ServeOptions
        from .serve.server import serve as run_server
        from .serve.speech import parse_voice_aliases
        from .threads import use_cpu_threads

        if max_streams < 1:
            raise CsmError(f"--max-streams must be at least 1, got {max_streams}")
        if max_input_chars < 1:
            raise CsmError(f"--max-input-chars must be at least 1, got {max_input_chars}")
        if max_conversations < 1:
            raise CsmError(f"--max-conversations must be at least 1, got {max_conversations}")
        for option, number in (("--port", port), ("--wyoming-port", wyoming_port)):
            if number is not None and not 0 <= number <= 65535:
                raise CsmError(f"{option} must lie in 0..65535, got {number}")
        pause_frames(pause)
        options = ServeOptions(Settings(temperature, topk, None, max_seconds), pause, max_streams, max_input_chars,
                               max_conversations, api_key or None, parse_voice_aliases(voice_alias or []))
        use_cpu_threads(threads)
        load_options = LoadOptions(model, codec, tokenizer, model_device, dtype, quantize, not eager, max_streams,
                                   compile=compile_step)
        run_server(lambda: (load(load_options, quiet), offered_voices(model, None, False, quiet)), host, port,
                   options, quiet, wyoming_port)


class CompareWith(StrEnum):
    eager = "eager"


@app.command()
def bench(
    frames: Annotated[int, typer.Option(
        metavar="N", help="Frames of 80 ms per text; end of speech is ignored.")] = 125,
    context_seconds: Annotated[float, typer.Option(
        metavar="SECONDS", help="Context (random audio codes) before each text.")] = 0.0,
    random_weights: Annotated[bool, typer.Option(
        "--random-weights",
        help="Full-size CSM-1B and Mimi with random weights, to measure speed without the checkpoint "
             "(--model and --codec are not used; token ids are synthetic when no tokenizer is at hand).",
    )] = False,
    compare: Annotated[CompareWith | None, typer.Option(
        metavar="eager", help="Also run this path in the same process and print the ratio.")] = None,
    conversation: Annotated[int, typer.Option(
        metavar="LINES",
        help="Also speak this many lines as a conversation after the context, each prompt prefilled whole, then "
             "with the prefix cache, and report each line's first audio both ways.",
    )] = 0,
    streams: Annotated[int, typer.Option(
        metavar="N",
        help="Also generate the texts as N streams started together in an engine of N slots (as csm serve does; "
             "Mimi decodes their frames together, each stream on its own row), then one stream in an engine of one "
             "slot; report each stream's first audio and time per frame, the frames per second of all, and the ratio "
             "to one stream.",
    )] = 0,
    cold_start: Annotated[bool, typer.Option(
        "--cold-start",
        help="Instead, run `csm say \"Hello there.\" --out FILE --no-play` twice as new processes, with a cache of "
             "their own, empty for the first run, and report each one's launch to first audio (with --random-weights: "
             "a repository of random weights with the default voices, written once into csm's cache).",
    )] = False,
    prefill: Annotated[str | None, typer.Option(
        metavar="ROWS,...",
        help="Also time the backbone's prefill of prompts of so many rows in each form of the int8 product (the int8 "
             "kernel, the weights converted to bfloat16 at each call, a kept bfloat16 copy): ms per prompt row.",
    )] = None,
    eager: EagerOption = False,
    compile_step: CompileOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    model: ModelOption = DEFAULT_MODEL,
    codec: CodecOption = None,
    tokenizer: TokenizerOption = DEFAULT_TOKENIZER,
    model_device: ModelDeviceOption = None,
    dtype: DtypeOption = None,
    quantize: QuantizeOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Measure speed on fixed texts and seeds: time to first audio, time per frame, real-time factor."""
    with user_errors():
        import json

        from rich.console import Console

        from .bench import RANDOM_WEIGHTS, BenchOptions, load_for_bench, render_table, run_bench
        from .loading.generator import LoadOptions, resolve_device, resolve_precision
        from .loading.quantize import Quantization
        from .progress import LoadProgress
        from .threads import use_cpu_threads

        device = resolve_device(model_device)
        if cold_start:
            if compare or conversation or streams or prefill:
                raise CsmError("--cold-start runs csm say in new processes, on its own: leave out --compare, "
                               "--conversation, --streams and --prefill")
            bench_cold_start(model, codec, tokenizer, model_device, dtype, quantize, threads, random_weights,
                             json_output, quiet, compile_step)
            return
        graphs = not eager and device.type == "cuda"
        prefill_rows = parse_counts("--prefill", prefill) if prefill is not None else ()
        if prefill_rows and resolve_precision(quantize, dtype, device)[0] is not Quantization.INT8:
            raise CsmError("--prefill times the forms of the int8 product: give --quantize int8 (or leave --quantize "
                           "and --dtype out on a CPU)")
        options = BenchOptions(frames, context_seconds, fast=graphs, compare_eager=compare is CompareWith.eager,
                               conversation_lines=conversation, streams=streams, prefill_rows=prefill_rows,
                               compiled=compile_step)
        use_cpu_threads(threads)
        report = run_bench(
            lambda: load_for_bench(LoadOptions(model, codec, tokenizer, model_device, dtype, quantize, fast=False),
                                   random_weights, LoadProgress(enabled=not quiet)),
            RANDOM_WEIGHTS if random_weights else model,
            options,
            LoadProgress(enabled=not quiet),
        )
        if json_output:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            Console().print(render_table(report))


def bench_cold_start(model: str, codec: Path | None, tokenizer: str, model_device: str | None, dtype: str | None,
                     quantize: str | None, threads: int | None, random_weights: bool, json_output: bool,
                     quiet: bool, compile_step: bool) -> None:
    import json

    from rich.console import Console

    from .bench import RANDOM_WEIGHTS
    from .cold_start import MIMI_FILE, random_repository, render_cold_start, run_cold_start
    from .progress import LoadProgress

    if random_weights:
        repository = random_repository(LoadProgress(enabled=not quiet))
        files = ["--model", str(repository), "--codec", str(repository / MIMI_FILE)]
    else:
        files = ["--model", model, "--tokenizer", tokenizer, *(["--codec", str(codec)] if codec else [])]
    given = {"--model-device": model_device, "--dtype": dtype, "--quantize": quantize, "--threads": threads}
    options = files + [part for name, value in given.items() if value is not None for part in (name, str(value))]
    options += ["--compile"] if compile_step else []
    report = run_cold_start(options, RANDOM_WEIGHTS if random_weights else model, LoadProgress(enabled=not quiet))
    if json_output:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        Console().print(render_cold_start(report))


def main() -> None:
    app(prog_name="csm")
