"""The default voices' prefilled rows, kept in csm's cache: a later process reads them back and speaks exactly what a
fresh prefill speaks; a damaged entry is made again; `csm download` fills it, `csm cache` shows it. Through the CLI,
on the tiny copy of the hub repository (whose default voices are two short prompts with long transcripts)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.filesize import decimal
from test_cli import model_args
from typer.testing import CliRunner

from csm_cli.cli import app
from csm_cli.loading.cache import VOICE_ROWS

runner = CliRunner()
GREEDY = ("--topk", "1", "--seed", "3")  # a seed too: bfloat16 logits tie, and ties are drawn
SEEDED = ("--seed", "7")


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    """A cache of this module's: the int8 weights and voice codes made once for its tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("voice-rows-cache")))
        yield VOICE_ROWS.directory


@pytest.fixture
def own_cache(module_cache) -> Path:
    """The module's cache without voice rows."""
    VOICE_ROWS.clear()
    return module_cache


def say_args(out: Path, model_dir: Path, mimi_file: Path, quantize: str, sampling: tuple[str, ...]) -> list[str]:
    return ["say", "Hello there.", "--out", str(out), "--no-play", "--max-seconds", "0.4", "--quiet",
            "--quantize", quantize, *sampling, *model_args(model_dir, mimi_file)]


def say(*args: object) -> tuple[np.ndarray, str]:
    """In this process, which has no voice rows of its own: a new generator."""
    result = runner.invoke(app, say_args(*args))
    assert result.exit_code == 0, result.stderr
    return sf.read(args[0], dtype="int16")[0], result.stderr


def say_in_a_new_process(*args: object) -> np.ndarray:
    """Which also imports no torch._dynamo, seconds of a start (the int8 model's shell once did)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "csm_cli", *say_args(*args)],
                            capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch._dynamo" not in result.stderr
    return sf.read(args[0], dtype="int16")[0]


@pytest.mark.parametrize(("quantize", "sampling"), [("int8", SEEDED), ("int8", GREEDY), ("none", SEEDED),
                                                    ("none", GREEDY)], ids=["int8-seeded", "int8-greedy",
                                                                            "none-seeded", "none-greedy"])
def test_a_new_process_reads_the_voice_rows_and_says_what_a_fresh_prefill_says(tmp_path, hub_copy_dir, mimi_file,
                                                                               own_cache, quantize, sampling):
    fresh, _ = say(tmp_path / "fresh.wav", hub_copy_dir, mimi_file, quantize, sampling)
    [entry] = VOICE_ROWS.entries()
    inode = entry.path.stat().st_ino
    again = say_in_a_new_process(tmp_path / "again.wav", hub_copy_dir, mimi_file, quantize, sampling)
    np.testing.assert_array_equal(again, fresh)
    assert [e.path for e in VOICE_ROWS.entries()] == [entry.path] and entry.path.stat().st_ino == inode  # read
    if (quantize, sampling) != ("none", SEEDED):
        return
    # What a run speaks if it reads the cache rather than prefilling: other keys and values.
    keys_values = torch.load(entry.path, weights_only=True)["keys_values"]
    torch.save({"keys_values": -keys_values}, entry.path)
    other, _ = say(tmp_path / "other.wav", hub_copy_dir, mimi_file, quantize, sampling)
    assert not np.array_equal(other, fresh)


@pytest.mark.parametrize("damage", ["truncated", "other shapes"])
def test_damaged_voice_rows_are_made_again_with_one_warning(tmp_path, hub_copy_dir, mimi_file, own_cache, damage):
    fresh, _ = say(tmp_path / "fresh.wav", hub_copy_dir, mimi_file, "none", SEEDED)
    [entry] = VOICE_ROWS.entries()
    keys_values = torch.load(entry.path, weights_only=True)["keys_values"]
    if damage == "truncated":
        entry.path.write_bytes(entry.path.read_bytes()[: entry.bytes // 2])
    else:
        torch.save({"keys_values": keys_values[..., 1:, :]}, entry.path)
    again, stderr = say(tmp_path / "again.wav", hub_copy_dir, mimi_file, "none", SEEDED)
    np.testing.assert_array_equal(again, fresh)
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"csm: warning: the cached prefilled voice rows {entry.path} are damaged (") and \
        line.endswith("): they are made again"), stderr
    assert torch.equal(torch.load(entry.path, weights_only=True)["keys_values"], keys_values)  # written again, whole


def test_download_prefills_the_default_voices_and_csm_cache_shows_them(tmp_path, hub_copy_dir, mimi_file, own_cache):
    default = [] if not torch.cuda.is_available() else ["--int8"]  # what a machine without CUDA does by default
    result = runner.invoke(app, ["download", "-q", *default, *model_args(hub_copy_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    [entry] = VOICE_ROWS.entries()
    assert (f"prefilled rows of the voices conversational_a, conversational_b: {entry.bytes:,} bytes in "
            f"{entry.path}\n") in result.stdout
    inode = entry.path.stat().st_ino
    say(tmp_path / "speech.wav", hub_copy_dir, mimi_file, "int8", SEEDED)  # the CPU's default mode, read back
    assert [e.path for e in VOICE_ROWS.entries()] == [entry.path] and entry.path.stat().st_ino == inode

    shown = runner.invoke(app, ["cache"], terminal_width=200)
    assert shown.exit_code == 0, shown.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in shown.stdout.splitlines() if line.count("│") == 5}
    assert rows["prefilled voice rows (at most 1.1 GB)"][:2] == ["1", decimal(entry.bytes)]
    cleared = runner.invoke(app, ["cache", "--clear"])
    assert cleared.exit_code == 0, cleared.stderr
    assert VOICE_ROWS.entries() == []
