"""`csm say` with text on standard input: lines spoken as they arrive, raw PCM out, files per line, voice
prompts. Playback itself is covered in test_playback.py."""

import itertools
import json
import os
import pty
import selectors
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from statistics import median

import numpy as np
import pytest
import soundfile as sf
from audio_readers import assert_readable, assert_readable_while_growing
from pulse import DEFAULT_SINK, RECORDED_SINK, aligned, similarity
from test_cli import assert_one_line_error
from typer.testing import CliRunner

from csm_cli.audio import SAMPLE_RATE, SAMPLES_PER_FRAME, seconds_to_frames
from csm_cli.cli import app

runner = CliRunner()
PAUSE_SAMPLES = 2 * SAMPLES_PER_FRAME  # --pause 0.2 in whole frames


@pytest.fixture
def model(transformers_dir, mimi_file) -> list[str]:
    return ["--model", str(transformers_dir), "--codec", str(mimi_file), "--max-seconds", "1.5", "--seed", "3"]


def csm_process(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen([sys.executable, "-m", "csm_cli", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def read_some(stream, timeout: float) -> bytes:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    ready = selector.select(timeout)
    selector.close()
    return os.read(stream.fileno(), 1 << 16) if ready else b""


def test_each_line_is_spoken_as_it_arrives(model):
    launched = time.monotonic()
    process = csm_process(["say", "--out", "-", "--stats", "-q", *model])
    process.stdin.write(b"Hello there.\n")
    process.stdin.flush()
    first = read_some(process.stdout, timeout=60)
    first_read_s = time.monotonic() - launched
    assert first, "no audio for the first line before the second was written"
    process.stdin.write(b"\n   \n1: How are you?\n")
    process.stdin.close()
    rest = process.stdout.read()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    stats = json.loads(stderr.strip().splitlines()[-1])
    assert 0 < stats["launch_to_first_written_s"] < first_read_s + 0.02  # the process's start time is in 10 ms ticks
    lines = stats["utterances"]
    assert [(u["speaker"], u["text"]) for u in lines] == [(0, "Hello there."), (1, "How are you?")]
    samples = (len(first) + len(rest)) // 2
    assert samples == round(stats["seconds"] * SAMPLE_RATE)
    assert samples - PAUSE_SAMPLES == sum(round((u["audio_end_s"] - u["audio_start_s"]) * SAMPLE_RATE) for u in lines)
    assert all(round((u["audio_end_s"] - u["audio_start_s"]) * SAMPLE_RATE) % SAMPLES_PER_FRAME == 0 for u in lines)


def test_a_sentence_is_spoken_before_its_line_ends(model):
    """`some-llm | csm say`: the first sentence's audio is out before the rest of its line is written."""
    process = csm_process(["say", "--out", "-", "--stats", "-q", *model])
    process.stdin.write(b"1: Hello there. How")
    process.stdin.flush()
    first = read_some(process.stdout, timeout=60)
    first_audio_at = time.monotonic()
    assert first, "no audio for the first sentence while its line was still being written"
    rest_written_at = time.monotonic()
    process.stdin.write(b" are you?\n0: Caf\xe9 au lait.\n")  # not UTF-8, after a line was spoken
    process.stdin.close()
    rest = process.stdout.read()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    warning, stats_line = stderr.strip().splitlines()
    assert warning == "csm: warning: standard input is not valid UTF-8: each undecodable byte is read as U+FFFD"
    spoken = json.loads(stats_line)["utterances"]
    assert first_audio_at <= rest_written_at
    assert (spoken[0]["speaker"], spoken[0]["text"]) == (1, "Hello there.")
    assert len(first) + len(rest) > 2 * round(spoken[0]["audio_end_s"] * SAMPLE_RATE)
    assert " ".join(u["text"] for u in spoken[1:-1]) == "How are you?" and {u["speaker"] for u in spoken[:-1]} == {1}
    assert (spoken[-1]["speaker"], spoken[-1]["text"]) == (0, "Caf\ufffd au lait.")


def test_lines_typed_on_a_terminal_are_spoken_until_ctrl_d(model):
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", "say", "--out", "-", "--stats", "-q", *model],
                               stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(terminal)
    os.write(controller, b"Hello there.\n")
    first = read_some(process.stdout, timeout=60)
    assert first, "no audio for a typed line before the next was typed"
    os.write(controller, b"1: Bye.\n\x04")  # Ctrl-D at the start of a line ends the input
    rest = process.stdout.read()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    os.close(controller)
    spoken = json.loads(stderr.strip().splitlines()[-1])["utterances"]
    assert [(u["speaker"], u["text"]) for u in spoken] == [(0, "Hello there."), (1, "Bye.")]
    assert len(first) + len(rest) == 2 * round(spoken[-1]["audio_end_s"] * SAMPLE_RATE)


def test_a_sentence_is_one_utterance_whatever_max_seconds_and_bad_bytes_are_replaced(model):
    result = subprocess.run([sys.executable, "-m", "csm_cli", "say", b"Hello from the full model, caf\xe9.",
                             "--out", "-", "--stats", "-q", *model, "--max-seconds", "1"], capture_output=True)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    warning, stats_line = stderr.strip().splitlines()
    assert warning == "csm: warning: the text argument is not valid UTF-8: each undecodable byte is read as U+FFFD"
    assert [u["text"] for u in json.loads(stats_line)["utterances"]] == ["Hello from the full model, caf\ufffd."]
    assert len(result.stdout) == 2 * seconds_to_frames(1) * SAMPLES_PER_FRAME  # its budget is more: the hard cap


def test_raw_pcm_formats_hold_the_same_samples(model):
    s16 = runner.invoke(app, ["say", "Hello there.", "--out", "-", "-q", *model])
    f32 = runner.invoke(app, ["say", "Hello there.", "--out", "-", "--format", "f32", "-q", *model])
    assert s16.exit_code == 0 and f32.exit_code == 0, s16.stderr + f32.stderr
    assert s16.stderr == "" and f32.stderr == ""
    ints = np.frombuffer(s16.stdout_bytes, dtype="<i2")
    floats = np.frombuffer(f32.stdout_bytes, dtype="<f4")
    assert len(ints) == len(floats) > 0 and len(ints) % SAMPLES_PER_FRAME == 0
    np.testing.assert_array_equal(ints, (np.clip(floats, -1, 1) * 32767).round().astype(np.int16))


def test_a_closed_pipe_ends_quietly(model):
    text = " ".join(["Hello there, how are you today?"] * 4)
    process = subprocess.Popen(
        f"{sys.executable} -m csm_cli say '{text}' --out - -q {' '.join(model)} | head -c 1000 >/dev/null; "
        'echo "${PIPESTATUS[0]}" >&2',
        shell=True, executable="/bin/bash", stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": ""},
    )
    _, stderr = process.communicate(timeout=120)
    assert stderr.decode().split() == ["141"]


def test_raw_pcm_to_a_full_device_is_one_line(model):
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "csm_cli", "say", "Hello there.", "--out", "-", "-q", *model],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "writing raw PCM to standard output failed (No space left on device)")


def test_out_dir_names_one_wav_per_line_and_part_and_never_mixes_runs(tmp_path, model):
    lines = tmp_path / "lines"
    long_line = " ".join(["Word."] * 4)  # more words than --max-seconds 1.5 holds: two parts
    result = runner.invoke(app, ["say", "--out-dir", str(lines), "--no-play", "-q", *model],
                           input=f"One.\n\n0: Two.\n{long_line}\n")
    assert result.exit_code == 0, result.stderr
    files = sorted(lines.iterdir())
    assert [f.name for f in files][:3] == ["0001-1.wav", "0003-1.wav", "0004-1.wav"]  # blank line 2 says nothing
    assert all(sf.info(str(f)).frames % SAMPLES_PER_FRAME == 0 for f in files)
    again = runner.invoke(app, ["say", "Hi.", "--out-dir", str(lines), "--no-play", "-q", *model])
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        f"csm: error: --out-dir {lines} already holds {len(files)} numbered files of an earlier run (0001-1.wav ...): "
        "choose another directory or remove them, so that runs do not mix")
    assert sorted(lines.iterdir()) == files


@pytest.mark.parametrize(("name", "container"), [("x.flac", "FLAC"), ("x.ogg", "OGG"), ("x.opus", "OGG"),
                                                 ("x.mp3", "MP3"), ("x.wav", "WAV")])
def test_out_writes_the_format_its_extension_names(tmp_path, model, name, container):
    result = runner.invoke(app, ["say", "Hello.", "--out", str(tmp_path / name), "--no-play", "-q", *model])
    assert result.exit_code == 0, result.stderr
    info = sf.info(str(tmp_path / name))
    assert (info.format, info.samplerate, info.channels) == (container, SAMPLE_RATE, 1) and info.frames > 0


def test_format_f32_writes_a_float_wav_with_the_samples_of_raw_pcm(tmp_path, model):
    result = runner.invoke(app, ["say", "Hello.", "--out", str(tmp_path / "x.wav"), "--format", "f32", "--no-play",
                                 "-q", *model])
    raw = runner.invoke(app, ["say", "Hello.", "--out", "-", "--format", "f32", "-q", *model])
    assert result.exit_code == 0 and raw.exit_code == 0, result.stderr + raw.stderr
    samples, _ = sf.read(str(tmp_path / "x.wav"), dtype="float32")
    assert sf.info(str(tmp_path / "x.wav")).subtype == "FLOAT"
    np.testing.assert_array_equal(samples, np.frombuffer(raw.stdout_bytes, dtype="<f4"))


def test_stdin_run_records_one_wav(tmp_path, model):
    out = tmp_path / "run.wav"
    result = runner.invoke(app, ["say", "-", "--out", str(out), "--no-play", "--stats", "-q", *model],
                           input="One.\nTwo.\n")
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    assert sf.info(str(out)).frames == round(stats["seconds"] * SAMPLE_RATE)
    assert len(stats["utterances"]) == 2


@pytest.mark.parametrize("tag", ["S1:", "1000000000000000000000000000000:"])
def test_an_unknown_speaker_tag_is_spoken_with_a_warning(tmp_path, model, tag):
    """A mistyped tag, or a number out of the speakers' range, is text, not the end of the run."""
    result = runner.invoke(app, ["say", "--speaker", "2", "--out", str(tmp_path / "x.wav"), "--no-play", "--stats",
                                 "-q", *model, "--max-seconds", "0.5"], input=f"{tag} hello there\n")
    assert result.exit_code == 0, result.stderr
    warning, stats = result.stderr.strip().splitlines()
    assert warning.startswith(f"csm: warning: '{tag}' is not a speaker tag (write 'N: text' with N a whole number "
                              "from 0 to 999999")
    assert [(u["speaker"], u["text"]) for u in json.loads(stats)["utterances"]] == [(2, f"{tag} hello there")]


def write_voice(path: Path, rate: int, channels: int, seconds: float = 0.5) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(str(path), np.stack([tone] * channels, axis=1) if channels > 1 else tone, rate)
    return path


def test_voice_prompts_of_any_rate_and_channels_are_used(tmp_path, model):
    stereo = write_voice(tmp_path / "stereo.wav", 44_100, 2)
    mono = write_voice(tmp_path / "mono.flac", 16_000, 1)
    args = ["say", "Hello.", "--out", str(tmp_path / "x.wav"), "--no-play", "-q",
            "--context", str(stereo), "--context-text", "A tone.", "--context-speaker", "1",
            "--context", str(mono), "--context-text", "Another tone.", "--context-speaker", "0", *model]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert sf.info(str(tmp_path / "x.wav")).frames > 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--context", "missing.wav", "--context-text", "hi", "--out", "a.wav"], "voice prompt missing.wav does not exist"),
    (["--context", "x.wav", "--out", "a.wav"], "give one --context-text per --context file"),
    (["--out", "a.wav", "--out-dir", "d"], "choose --out FILE.wav for the whole run or --out-dir"),
    (["--out", "-", "--format", "u8"], "--format must be s16 or f32"),
    (["--pause", "-1", "--out", "a.wav"], "--pause must be a number from 0 to 60 seconds, got -1.0"),
    (["--out", "a.aiff"], "cannot write a.aiff: the extension .aiff is not a supported format; use one of .wav, "
                          ".flac, .ogg, .opus, .mp3 (or --out - for raw PCM)"),
    (["--out", "a.flac", "--format", "f32"], "--format f32 is for .wav files and --out -"),
    (["--out", "/dev/full"], "cannot write /dev/full: it is not a regular file"),
])
def test_bad_options_fail_before_the_model_loads(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["say", "Hi", "--no-play", "--model", "/no/model", *extra])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"csm: error: {result.stderr.strip()[12:]}"]
    assert message in result.stderr


# Playback through a real PulseAudio null sink (tests/pulse.py), in subprocesses with the server's environment.

TAIL_SAMPLES = SAMPLE_RATE // 10


def run_say(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csm_cli", "say", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_say_plays_exactly_what_it_records(pulse_server, tmp_path, model):
    out = tmp_path / "said.wav"
    with pulse_server.record_monitor(tmp_path / "monitor.raw") as monitor:
        result = run_say(["Hello there.", "--out", str(out), "--stats", *model], pulse_server.env)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    assert stats["playback"]["underruns"] == 0
    said, rate = sf.read(str(out), dtype="float32")
    assert rate == SAMPLE_RATE and len(said) % SAMPLES_PER_FRAME == 0
    heard = aligned(monitor.samples(), said)
    assert similarity(heard, said) >= 0.999
    assert similarity(heard[-TAIL_SAMPLES:], said[-TAIL_SAMPLES:]) >= 0.999


@pytest.mark.parametrize("pulse_server", [RECORDED_SINK, DEFAULT_SINK], indirect=True,
                         ids=["norewinds null sink", "null sink with default options"])
def test_say_plays_to_the_end_on_a_sink_that_takes_audio_in_bursts(pulse_server, tmp_path, model):
    """A null sink with PulseAudio's defaults and nothing recording it takes nothing for up to 2 s, then a burst: not
    a frozen sound server. Every sample generated is handed to it."""
    result = run_say(["Hello there.", "--stats", "-q", *model], pulse_server.env)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    assert stats["playback"]["seconds_played"] == stats["playback"]["seconds_generated"] == stats["seconds"] > 0


def test_the_next_line_is_generated_while_the_current_one_plays(pulse_server, tmp_path, transformers_dir, mimi_file):
    lines = "Hello there.\nHow are you?\n"
    args = ["--model", str(transformers_dir), "--codec", str(mimi_file), "--max-seconds", "1", "--seed", "1",
            "--stats", "-q"]
    process = subprocess.run([sys.executable, "-m", "csm_cli", "say", *args], input=lines, capture_output=True,
                             text=True, env={**os.environ, **pulse_server.env}, timeout=120)
    assert process.returncode == 0, process.stderr
    stats = json.loads(process.stderr.strip().splitlines()[-1])
    first_audio = stats["playback"]["time_to_first_audio_s"]
    utterances = stats["utterances"]
    assert len(utterances) == 2
    if stats["playback"]["realtime_factor"] > 1:
        pytest.skip("generation is slower than real time on this machine: a line cannot be ready before the one "
                    "before it has played")
    for current, following in itertools.pairwise(utterances):
        # the current line cannot have finished playing before the stream reached its last sample
        assert following["generation_started_s"] < first_audio + current["audio_end_s"]


def test_ctrl_c_stops_playback_and_leaves_a_valid_wav(pulse_server, tmp_path, transformers_dir, mimi_file):
    out = tmp_path / "interrupted.wav"
    args = ["say", "One two three four five six seven eight nine ten.", "--out", str(out), "-q",
            "--model", str(transformers_dir), "--codec", str(mimi_file), "--max-seconds", "20"]
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], env={**os.environ, **pulse_server.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 44 + 2 * SAMPLE_RATE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists(), "playback never started"
    process.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert time.monotonic() - interrupted_at < 5
    assert stderr.strip() == "csm: interrupted"
    info = sf.info(str(out))
    assert info.frames >= SAMPLE_RATE and out.stat().st_size == 44 + 2 * info.frames


def test_playing_without_a_sound_device_suggests_a_file_before_loading(tmp_path):
    result = run_say(["Hello.", "--model", "/no/model"], {"PULSE_SERVER": f"unix:{tmp_path / 'nobody'}"})
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "no audio output device found")
    assert "--out FILE --no-play" in result.stderr


def test_an_unknown_device_is_named_before_loading(pulse_server):
    result = run_say(["Hello.", "--device", "no such card", "--model", "/no/model"], pulse_server.env)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "unknown output device 'no such card'")


def test_devices_are_listed(pulse_server):
    result = subprocess.run([sys.executable, "-m", "csm_cli", "devices"], env={**os.environ, **pulse_server.env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pulse" in result.stdout and "default" in result.stdout


# Ctrl-C in every state: exit 130 within 200 ms, one line, the output file valid, no abort.

INTERRUPT_REPEATS = 3
TEN_WORDS = "One two three four five six seven eight nine ten."


def wait_for(condition, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


def interrupt(process: subprocess.Popen) -> tuple[float, float]:
    """Sends SIGINT; returns how long the process took to say "csm: interrupted" (its outputs closed by then), and
    to exit."""
    lines: list[tuple[float, str]] = []

    def read_stderr() -> None:
        for line in iter(process.stderr.readline, b""):
            lines.append((time.monotonic(), line.decode()))

    reader = threading.Thread(target=read_stderr, daemon=True)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    reader.start()
    process.wait(timeout=30)
    exited = time.monotonic() - sent
    reader.join(timeout=5)
    stderr = "".join(line for _, line in lines)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1:] == ["csm: interrupted"], stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr, stderr
    said = next(at for at, line in lines if line.strip() == "csm: interrupted") - sent
    return said, exited


@pytest.mark.parametrize("state", ["starting", "generating", "waiting for stdin", "playing", "frozen sound server"])
def test_ctrl_c_exits_130_at_once_in_every_state(request, tmp_path, transformers_dir, mimi_file, state):
    model_args = ["--model", str(transformers_dir), "--codec", str(mimi_file), "-q"]
    playing = state in ("playing", "frozen sound server")
    server = request.getfixturevalue("pulse_server") if playing else None
    said, exited = [], []
    for attempt in range(INTERRUPT_REPEATS):
        out = tmp_path / f"{attempt}.wav"
        # playing: 1.5 s of speech. The tiny model generates it slower than real time, so playback starts once the
        # rest can play without a gap: near the end of its generation, seconds after the start, not tens of seconds
        args = ["say", *([] if state == "waiting for stdin" else [TEN_WORDS]), "--out", str(out),
                "--max-seconds", "1.5" if playing else "20", *([] if playing else ["--no-play"]), *model_args]
        with server.record_monitor(tmp_path / f"{attempt}.raw") if playing else nullcontext() as played:
            process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       env={**os.environ, **(server.env if server else {})})
            if state == "starting":
                time.sleep(0.5 + attempt)  # importing, then loading the model
            elif state == "waiting for stdin":
                process.stdin.write(b"Hello.\n")
                process.stdin.flush()
                wait_for(lambda out=out: out.exists() and out.stat().st_size > 44, "spoke the first line")
                time.sleep(0.5)
            elif state == "generating":
                wait_for(lambda out=out: out.exists() and out.stat().st_size > 44 + 2 * SAMPLE_RATE, "generated 1 s")
            else:
                wait_for(lambda played=played: np.abs(played.samples()).max(initial=0) > 1e-4, "played a sound")
                time.sleep(0.2)
            if state == "frozen sound server":
                os.kill(server.pid, signal.SIGSTOP)
                time.sleep(0.2)
            try:
                said_after, exited_after = interrupt(process)
                said.append(said_after)
                exited.append(exited_after)
            finally:
                if state == "frozen sound server":
                    os.kill(server.pid, signal.SIGCONT)
        if out.exists():
            assert_readable(out)
    # "csm: interrupted" comes once the outputs are closed, within 200 ms; then the process leaves without interpreter
    # teardown, and the kernel freeing its memory takes the rest: 0.15 s on two idle cores, 0.4-0.9 s under a load
    # average of 10-13, hence the looser bound on the exit
    assert median(said) < 0.2, said
    assert median(exited) < 1.0 and max(exited) < 2.0, exited


def mapped(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` mapped (safetensors maps the file it loads while it reads it)."""
    try:
        return str(path) in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def audio_files(out: Path) -> list[Path]:
    return sorted(out.iterdir()) if out.is_dir() else [out] if out.exists() else []


@pytest.mark.parametrize(("signum", "state", "output"), [
    (signal.SIGINT, "loading the codec", "x.wav"),
    (signal.SIGTERM, "loading the codec", "x.wav"),
    (signal.SIGHUP, "loading the codec", "x.wav"),
    (signal.SIGINT, "generating", "lines"),
    (signal.SIGHUP, "generating", "x.flac"),
    (signal.SIGTERM, "generating", "x.wav"),
    (signal.SIGTERM, "playing", "x.wav"),
    (signal.SIGHUP, "playing", "lines"),
], ids=lambda value: value.name if isinstance(value, signal.Signals) else value)
def test_each_stop_signal_in_each_state_leaves_every_file_readable(request, tmp_path, transformers_dir, mimi_file,
                                                                    signum, state, output):
    """SIGTERM (`timeout`, `systemctl stop`) and SIGHUP (a closed terminal) end a run as Ctrl-C does: one line, exit
    128 + the signal, each file written (--out, every --out-dir file) readable by wave, soundfile and ffmpeg; a WAV
    says its length while it grows, so that it is readable at every moment."""
    playing = state == "playing"
    server = request.getfixturevalue("pulse_server") if playing else None
    out = tmp_path / output
    where = ["--out-dir", str(out)] if output == "lines" else ["--out", str(out)]
    args = ["say", TEN_WORDS, *where, "--max-seconds", "1.5" if playing else "20", *([] if playing else ["--no-play"]),
            "--model", str(transformers_dir), "--codec", str(mimi_file), "-q"]
    with server.record_monitor(tmp_path / "monitor.raw") if playing else nullcontext() as played:
        process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   env={**os.environ, **(server.env if server else {})})
        if state == "loading the codec":
            wait_for(lambda: mapped(process.pid, mimi_file), "loaded the codec")
        elif state == "generating":
            wait_for(lambda: sum(f.stat().st_size for f in audio_files(out)) > 4 * SAMPLES_PER_FRAME, "generated")
            if output.endswith(".wav") or output == "lines":  # a WAV is readable while it grows
                assert all(assert_readable_while_growing(file) for file in audio_files(out))
        else:
            wait_for(lambda: np.abs(played.samples()).max(initial=0) > 1e-4, "played a sound")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, stderr
    message = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}[signum]
    assert stderr.decode().strip() == f"csm: {message}"
    files = audio_files(out)
    assert bool(files) == (state != "loading the codec")
    for file in files:
        assert assert_readable(file) > 0


def read_until(stream, marker: str, timeout: float) -> str:
    """What `stream` gives until `marker` has come, or the timeout."""
    text = ""
    deadline = time.monotonic() + timeout
    while marker not in text and time.monotonic() < deadline:
        text += read_some(stream, deadline - time.monotonic()).decode()
    return text


def test_typing_at_a_terminal_says_how_to_end_and_waits_for_text(pulse_server, model):
    terminal, keyboard = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", "say", "--stats", *model], stdin=keyboard,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **pulse_server.env})
    os.close(keyboard)
    try:
        before = read_until(process.stderr, "waiting for text", timeout=180)  # loading, on a shared machine
        lines = [line for line in before.splitlines() if line]
        assert lines[0] == "csm: type what to say and press Enter; Ctrl-D ends the input", before
        assert lines[1].startswith("waiting for text "), before  # not "buffering"
        os.write(terminal, b"Hello there.\n")
        spoken = read_until(process.stderr, "speaking", timeout=60)
        spoken += read_until(process.stderr, "waiting for text", timeout=60)
        assert "speaking" in spoken and "waiting for text" in spoken.split("speaking")[-1], spoken
        os.write(terminal, b"\x04")  # Ctrl-D
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
        os.close(terminal)
    assert process.returncode == 0, rest
    stats = json.loads(rest.decode().strip().splitlines()[-1])
    assert [u["text"] for u in stats["utterances"]] == ["Hello there."]


def test_stats_report_the_time_from_launch_to_first_sound(pulse_server, model):
    launched = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "csm_cli", "say", "Hello.", "--stats", "-q", *model],
                            env={**os.environ, **pulse_server.env}, capture_output=True, text=True, timeout=300)
    lifetime = time.monotonic() - launched
    assert result.returncode == 0, result.stderr
    playback = json.loads(result.stderr.strip().splitlines()[-1])["playback"]
    # the process starts, imports and loads the model before play() is called and the first sound is handed over
    assert playback["time_to_first_audio_s"] < playback["launch_to_first_sound_s"] < lifetime
