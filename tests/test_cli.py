"""`csm say` end to end, through typer's runner and as a subprocess where the environment matters."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fake_hub import failing_hub, refusing_hub, unreachable_hub
from typer.testing import CliRunner

from csm_cli.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from csm_cli.cli import app

runner = CliRunner()


def model_args(model_dir: Path, mimi_file: Path) -> list[str]:
    return ["--model", str(model_dir), "--codec", str(mimi_file)]


def assert_one_line_error(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("csm: error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr


def assert_valid_speech(path: Path) -> int:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert info.frames > 0 and info.frames % SAMPLES_PER_FRAME == 0
    return info.frames


def test_say_renders_a_wav_of_whole_frames(tmp_path, transformers_dir, mimi_file):
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hello there.", "--speaker", "0", "-o", str(out), "--no-play",
                                 "--seed", "1", "--max-seconds", "1", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    assert assert_valid_speech(out) <= SAMPLE_RATE


def test_say_with_the_original_layout_and_a_tokenizer_directory(tmp_path, original_dir, tokenizer_dir, mimi_file):
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hello.", "--out", str(out), "--no-play", "--max-seconds", "0.5", "--eager",
                                 "--tokenizer", str(tokenizer_dir), *model_args(original_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    assert_valid_speech(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["say", ""], "the text is empty"),
        (["say", "  \t "], "the text is empty"),
        (["say", "Hi", "--model", "/no/such/model"], "directory /no/such/model does not exist"),
        (["say", "Hi", "--max-seconds", "163.84"],
         "leaving room for 163.3 seconds of speech but --max-seconds is 163.84"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, transformers_dir, mimi_file, args, message):
    out = tmp_path / "speech.wav"
    full = [*args, "--out", str(out), "--no-play"]
    if "--model" not in args:
        full += model_args(transformers_dir, mimi_file)
    result = runner.invoke(app, full)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, message)
    assert not out.exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--max-seconds", "inf", "--max-seconds must be a number from 0.08 to 163.84 seconds, got "),
    ("--max-seconds", "nan", "--max-seconds must be a number from 0.08 to 163.84 seconds, got "),
    ("--max-seconds", "1e9", "--max-seconds must be a number from 0.08 to 163.84 seconds, got "),
    ("--max-seconds", "0.01", "--max-seconds must be a number from 0.08 to 163.84 seconds, got "),
    ("--pause", "nan", "--pause must be a number from 0 to 60 seconds, got "),
    ("--pause", "inf", "--pause must be a number from 0 to 60 seconds, got "),
    ("--pause", "1e300", "--pause must be a number from 0 to 60 seconds, got "),
    ("--pause", "-0.1", "--pause must be a number from 0 to 60 seconds, got "),
    ("--topk", "0", "--topk must be a whole number from 1 to 2051, got "),
    ("--topk", "100000", "--topk must be a whole number from 1 to 2051, got "),
    ("--seed", "-1", "--seed must be a whole number from 0 to 18446744073709551615, got "),
    ("--seed", str(2**64), "--seed must be a whole number from 0 to 18446744073709551615, got "),
    ("--speaker", "²", "--speaker must be a whole number from 0 to 999999, got "),
    ("--speaker", "\N{ARABIC-INDIC DIGIT THREE}", "--speaker must be a whole number from 0 to 999999, got "),
    ("--speaker", "-1", "--speaker must be a whole number from 0 to 999999, got "),
    ("--speaker", "1.5", "--speaker must be a whole number from 0 to 999999, got "),
    ("--speaker", "10000000", "--speaker must be a whole number from 0 to 999999, got "),
    ("--temperature", "nan", "--temperature must be a number from 0.01 to 10, got "),
    ("--temperature", "1e-300", "--temperature must be a number from 0.01 to 10, got "),
    ("--temperature", "0", "--temperature must be a number from 0.01 to 10, got "),
    ("--temperature", "inf", "--temperature must be a number from 0.01 to 10, got "),
    ("--model-device", "mps", "--model-device mps is not supported: csm runs on cpu or cuda"),
    ("--model-device", "tpu:9", "--model-device 'tpu:9' is not a torch device"),
    ("--model-device", "cuda:7", "--model-device cuda:7 was asked for but torch sees no CUDA GPU"),
    ("--model-device", "cpu:7", "--model-device cpu:7: the CPU is one device, cpu (cpu:0)"),
    ("--dtype", "float8", "--dtype float8 is not supported: choose bfloat16, float16, float32"),
])
def test_bad_numbers_devices_and_dtypes_name_the_option_before_loading(option, value, message):
    result = runner.invoke(app, ["say", "Hi", option, value, "--no-play", "--out", "x.wav", "--model", "/unused"])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, message)


def test_a_command_run_in_process_leaves_the_signal_handlers_as_they_were():
    """Commands catch SIGINT, SIGTERM and SIGHUP while they run, in the main thread, then put back the handlers of
    before: a test runner keeps its own, and ignores none (what it ignores, the processes it starts would)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    result = runner.invoke(app, ["say", "Hi", "--topk", "0", "--no-play", "--out", "x.wav", "--model", "/unused"])
    assert result.exit_code == 1
    assert {signum: signal.getsignal(signum) for signum in before} == before


@pytest.mark.parametrize(("args", "message"), [
    (["say", "Hi", "--foo"], "No such option: --foo"),
    (["say", "Hi", "--topk", "1.5"], "Invalid value for '--topk'"),
    (["say", "Hi", "--max-seconds"], "Option '--max-seconds' requires an argument"),
    (["bench", "--frames", "x"], "Invalid value for '--frames'"),
    (["speak", "Hi"], "No such command 'speak'"),
])
def test_usage_errors_are_one_line_with_status_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, message)


@pytest.mark.parametrize(("out", "message"), [
    ("missing-dir/speech.wav", "does not exist"),
    (".", "it is a directory"),
])
def test_unwritable_out_fails_before_loading(tmp_path, out, message):
    result = runner.invoke(app, ["say", "Hi", "--out", str(tmp_path / out), "--no-play", "--model", "/unused"])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, message)


def truncated(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(min(path.stat().st_size // 2, 1 << 20))


def not_json(path: Path) -> None:
    path.write_bytes(b"\xff\xfe<html>not found</html>")


def edited_json(**changes: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        content = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                del content[key]
            else:
                content[key] = value
        path.write_text(json.dumps(content))
    return edit


@pytest.mark.parametrize(("checkpoint", "name", "damage", "message"), [
    ("transformers_dir", "model.safetensors", truncated,
     "model.safetensors is damaged or not a safetensors file (Error while deserializing header: incomplete metadata"),
    ("original_dir", "model.safetensors", not_json, "model.safetensors is damaged or not a safetensors file"),
    ("transformers_dir", "config.json", not_json, "config.json is not valid JSON"),
    ("transformers_dir", "config.json", truncated, "config.json is not valid JSON"),
    ("transformers_dir", "config.json", edited_json(hidden_size=None),
     "config.json of the transformers layout is incomplete or invalid (KeyError('hidden_size'))"),
    ("transformers_dir", "config.json", edited_json(depth_decoder_config=3),
     "config.json of the transformers layout is incomplete or invalid"),
    ("original_dir", "config.json", edited_json(text_vocab_size="many"),
     'config.json: text_vocab_size must be a whole number from 1 to 1048576, got "many"'),
    ("transformers_dir", "tokenizer.json", truncated, "cannot read the tokenizer"),
    ("transformers_dir", "tokenizer_config.json", not_json, "tokenizer_config.json is not valid JSON"),
    ("transformers_dir", "tokenizer_config.json", edited_json(bos_token=5),
     "tokenizer_config.json has no valid bos_token (5)"),
    ("mimi_file", "", truncated, "is not a Mimi checkpoint (Error while deserializing header: incomplete metadata"),
    ("mimi_file", "", not_json, "is not a Mimi checkpoint"),
], ids=lambda value: value.__qualname__.split(".")[0] if callable(value) else "" if " " in value else value)
def test_a_damaged_file_is_one_line_naming_it(request, tmp_path, tokenizer_dir, checkpoint, name, damage, message):
    """Copies of the fixtures, one file damaged: the error names that file, and nothing is written."""
    source = request.getfixturevalue(checkpoint)
    model, codec = request.getfixturevalue("transformers_dir"), request.getfixturevalue("mimi_file")
    if checkpoint == "mimi_file":
        codec = tmp_path / source.name
        with source.open("rb") as whole:  # the first MiB is as damaged as a half, and cheaper to copy
            codec.write_bytes(whole.read(1 << 20))
        damaged = codec
    else:
        model = tmp_path / "model"
        shutil.copytree(source, model)
        damaged = model / name
    damage(damaged)
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hi.", "--out", str(out), "--no-play", "--tokenizer", str(tokenizer_dir),
                                 *model_args(model, codec)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, message)
    assert str(damaged) in result.stderr or damaged.name in result.stderr
    assert not out.exists()


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("mimi.json", b'{"model": {}}', "is not a .safetensors file"),
    ("hostname", b"myhost\n", "is not a .safetensors file"),
    ("mimi.pt", random_bytes, "is not a .safetensors file"),
    ("mimi.safetensors", random_bytes, "is not a Mimi checkpoint"),
    ("mimi.safetensors", b'{"model": {}}', "is not a Mimi checkpoint"),
    ("mimi.safetensors", "dir", "is a directory"),
    ("model.safetensors", "csm", "is not a Mimi checkpoint (Error(s) in loading state_dict"),
])
def test_a_codec_that_is_not_mimi_is_one_line_naming_it(tmp_path, transformers_dir, name, content, message):
    codec = tmp_path / name
    if content == "dir":
        codec.mkdir()
    elif content == "csm":
        codec = transformers_dir / name
    elif callable(content):
        content(codec)
    else:
        codec.write_bytes(content)
    result = runner.invoke(app, ["say", "Hi.", "--out", str(tmp_path / "x.wav"), "--no-play", "--voice", "none",
                                 *model_args(transformers_dir, codec)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, f"{codec} {message}")
    assert "give Mimi's safetensors file" in result.stderr


def nested(section: str, **changes: object) -> dict:
    return {section: changes}


@pytest.mark.parametrize(("checkpoint", "changes", "message"), [
    ("transformers_dir", {"num_attention_heads": 0}, "num_attention_heads must be a whole number from 1 to 128, got 0"),
    ("transformers_dir", {"num_attention_heads": 3},
     "hidden_size 128 must be num_attention_heads 3 times an even head dimension"),
    ("transformers_dir", {"num_key_value_heads": 3},
     "num_attention_heads 4 must be a multiple of num_key_value_heads 3"),
    ("transformers_dir", {"hidden_size": 0}, "hidden_size must be a whole number from 1 to 1048576, got 0"),
    ("transformers_dir", {"hidden_size": 10**6}, "head_dim 32 must be hidden_size / num_attention_heads = 250000"),
    ("transformers_dir", {"hidden_size": True}, "hidden_size must be a whole number from 1 to 1048576, got true"),
    ("transformers_dir", {"num_hidden_layers": 2.5}, "num_hidden_layers must be a whole number from 1 to 1048576"),
    ("transformers_dir", {"intermediate_size": -1}, "intermediate_size must be a whole number from 1 to 1048576"),
    ("transformers_dir", {"vocab_size": -5}, "vocab_size must be a whole number from 2048 to 1048576 (Mimi's codes"),
    ("transformers_dir", {"text_vocab_size": 0}, "text_vocab_size must be a whole number from 1 to 1048576, got 0"),
    ("transformers_dir", {"num_codebooks": 8}, "num_codebooks must be 32 (the codebooks Mimi decodes), got 8"),
    ("transformers_dir", {"max_position_embeddings": 10**9},
     "max_position_embeddings must be a whole number from 1 to 32768 (csm allocates the window's attention mask"),
    ("transformers_dir", {"rms_norm_eps": -1}, "rms_norm_eps must be a number above 0, got -1"),
    ("transformers_dir", nested("rope_parameters", rope_type="llama3", rope_theta=5e5, factor=32,
                                low_freq_factor=4, high_freq_factor=1, original_max_position_embeddings=1024),
     "high_freq_factor 1 must be above low_freq_factor 4"),
    ("transformers_dir", nested("rope_parameters", rope_type="default", rope_theta=0), "rope_theta must be a number"),
    ("transformers_dir", nested("depth_decoder_config", num_hidden_layers=0),
     "depth_decoder_config.num_hidden_layers must be a whole number from 1 to 1048576, got 0"),
    ("transformers_dir", nested("depth_decoder_config", max_position_embeddings=5),
     "depth_decoder_config.max_position_embeddings must be a whole number from 33 to 32768"),
    ("original_dir", {"text_vocab_size": 0}, "text_vocab_size must be a whole number from 1 to 1048576, got 0"),
    ("original_dir", {"audio_vocab_size": 100}, "audio_vocab_size must be a whole number from 2048 to 1048576"),
    ("original_dir", {"audio_num_codebooks": 0}, "audio_num_codebooks must be 32 (the codebooks Mimi decodes)"),
], ids=lambda value: json.dumps(value)[:60] if isinstance(value, dict) else None)
def test_every_dimension_of_a_config_is_checked_before_anything_is_allocated(request, tmp_path, tokenizer_dir,
                                                                             mimi_file, checkpoint, changes, message):
    """Both layouts: each size positive, consistent and within what csm runs, one line naming config.json and the
    key. The weights are not read (a link to them is enough)."""
    source = request.getfixturevalue(checkpoint)
    model = tmp_path / "model"
    model.mkdir()
    for file in source.iterdir():
        (model / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    (model / "config.json").unlink()
    (model / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["say", "Hi.", "--out", str(tmp_path / "x.wav"), "--no-play", "--voice", "none",
                                 "--tokenizer", str(tokenizer_dir), *model_args(model, mimi_file)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, f"config.json: {message}")


@pytest.mark.parametrize("hub", [unreachable_hub, refusing_hub])
def test_an_unreachable_hub_without_the_codec_cached_fails_at_once(tmp_path, transformers_dir, monkeypatch, hub):
    """A network that drops packets or refuses: no wait without end, no retries, one line that says what to do."""
    from huggingface_hub import constants

    from csm_cli.loading.repository import HUB_CONNECT_TIMEOUT_S

    with hub() as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
        started = time.monotonic()
        result = runner.invoke(app, ["say", "Hi.", "--out", str(tmp_path / "x.wav"), "--no-play", "--voice", "none",
                                     "--model", str(transformers_dir)])
        elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "the hub cannot be reached and kyutai/moshiko-pytorch-bf16 is not in the "
                                         "Hugging Face cache")
    # huggingface_hub's first request of a process first looks up its agent registry (3 s at most, then a day cached)
    assert elapsed < 2 * HUB_CONNECT_TIMEOUT_S + 3


def test_no_play_needs_out():
    result = runner.invoke(app, ["say", "Hi", "--no-play"])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "--no-play needs --out")


# Subprocesses: the hub's settings are read from the environment when huggingface_hub is imported.

def run_csm(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return subprocess.run([sys.executable, "-m", "csm_cli", *args], env={**clean, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def put_in_hub_cache(cache: Path, repo_id: str, files: list[Path], root: Path | None = None) -> None:
    """The Hugging Face cache's layout: refs/main names a commit whose snapshot holds the files (at their path
    relative to `root`, or by name)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in files:
        target = snapshot / (file.relative_to(root) if root else file.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target)


def test_offline_with_nothing_cached(tmp_path):
    result = run_csm(["say", "Hello.", "--out", str(tmp_path / "x.wav"), "--no-play"],
                     {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "HF_HUB_OFFLINE is set and sesame/csm-1b is not in the Hugging Face cache")
    assert "run `csm download` once online" in result.stderr
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize(("status", "code", "message"), [
    (401, "GatedRepo", "sesame/csm-1b is gated: accept its terms at https://huggingface.co/sesame/csm-1b, "
                       "then log in with `hf auth login` or set HF_TOKEN"),
    (404, "RepoNotFound", "sesame/csm-1b is neither a local directory nor a model on the Hugging Face hub"),
])
def test_hub_refusals_say_what_to_do(tmp_path, status, code, message):
    with failing_hub(status, code) as endpoint:
        result = run_csm(["say", "Hello.", "--out", str(tmp_path / "x.wav"), "--no-play"],
                         {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_ENDPOINT": endpoint}, tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, message)


def run_with_closed(streams: str, args: list[str]) -> subprocess.CompletedProcess:
    """`csm` started with standard streams closed by the shell (`streams`: `2>&-`, `<&- >&-`, ...)."""
    return subprocess.run(["bash", "-c", f'exec "$@" {streams}', "csm", sys.executable, "-m", "csm_cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_closed_stdin_and_stderr_end_a_stdin_run_as_empty_input(tmp_path, transformers_dir, mimi_file):
    result = run_with_closed("<&- 2>&-", ["say", "--out", str(tmp_path / "x.wav"), "--no-play", "--voice", "none",
                                          *model_args(transformers_dir, mimi_file)])
    assert result.returncode == 0
    assert result.stdout == ""  # the summary, for the closed stderr, is not printed on stdout instead


def test_raw_pcm_to_a_closed_stdout_is_refused():
    result = run_with_closed(">&-", ["say", "Hi.", "--out", "-", "--model", "/unused"])
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "--out - writes raw PCM to standard output, which is closed")


def test_help_does_not_import_torch():
    probe = "import sys; from csm_cli.cli import app; print('torch' in sys.modules, 'moshi' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
    help_text = subprocess.run([sys.executable, "-m", "csm_cli", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "say" in help_text.stdout


def csm_help(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "csm_cli", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


@pytest.mark.parametrize("command", [[], ["say"], ["devices"], ["bench"]])
def test_help_shows_metavars_and_defaults_not_python_types(command):
    text = csm_help(*command, "--help")
    assert text == csm_help(*command, "-h")
    assert text.startswith(f"Usage: {' '.join(['csm', *command])} ")
    assert re.search(r"<[\w|\[\]]+>", text) is None, text  # <str>, <list[Path]>, <bool>
    assert "-h, --help" in text


def test_say_help_names_each_value_and_default():
    text = " ".join(csm_help("say", "--help").split())  # unwrapped
    for expected in ("Usage: csm say [OPTIONS] [TEXT]", "-o, --out FILE", "--context FILE", "--speaker N",
                     "--pause SECONDS", "[default: 0.2]", "[default: (--speaker)]",
                     "Play through the sound card. [default: (yes, unless --out -)]",
                     "[default: (bfloat16 on CUDA, float32 on CPU)]"):
        assert expected in text, expected


def test_version():
    from importlib.metadata import version

    assert csm_help("--version") == f"csm {version('csm-cli')}\n"


def test_file_lines_are_said_like_standard_input(tmp_path, transformers_dir, mimi_file):
    text = tmp_path / "dialogue.txt"
    text.write_text("\ufeffHello there.\n\n1: How are you?\n", encoding="utf-8")
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "-f", str(text), "-o", str(out), "--no-play", "--stats", "-q", "--seed", "1",
                                 "--max-seconds", "2", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    assert [(u["speaker"], u["text"]) for u in stats["utterances"]] == [(0, "Hello there."), (1, "How are you?")]
    assert_valid_speech(out)


@pytest.mark.parametrize(("content", "message"), [
    (b"caf\xe9 au lait\n", "is not UTF-8 text (byte 0xe9 at offset 3): convert it, e.g. with iconv -t UTF-8"),
    (b"RIFF\x00\x00\x00\x00WAVE", "is not a text file (it holds NUL bytes)"),
    (b" \n\t\n", "is empty: give something to say"),
    (None, "does not exist: check the path"),
    ("dir", "is a directory: give a text file"),
])
def test_a_file_that_is_not_text_is_one_line_before_loading(tmp_path, content, message):
    path = tmp_path / "text.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["say", "--file", str(path), "-o", str(tmp_path / "x.wav"), "--no-play",
                                 "--model", "/unused"])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, f"--file {path} {message}")


def test_text_and_a_file_together_are_refused():
    result = runner.invoke(app, ["say", "Hi", "-f", "notes.txt", "-o", "x.wav", "--no-play", "--model", "/unused"])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "give TEXT or --file FILE, not both")
