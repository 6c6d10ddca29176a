"""`csm say` end to end, through typer's runner and as a subprocess where the environment matters."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from fake_hub import failing_hub
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
    ("--dtype", "float8", "--dtype float8 is not supported: choose bfloat16, float16, float32"),
])
def test_bad_numbers_devices_and_dtypes_name_the_option_before_loading(option, value, message):
    result = runner.invoke(app, ["say", "Hi", option, value, "--no-play", "--out", "x.wav", "--model", "/unused"])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, message)


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


def test_a_codec_that_is_not_mimi(tmp_path, transformers_dir):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hi", "--out", str(out), "--no-play", *model_args(transformers_dir, bogus)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "is not a Mimi checkpoint")
    assert not out.exists()


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
