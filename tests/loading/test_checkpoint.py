"""Both checkpoint layouts of the same weights, sharded checkpoints, and what is refused; int8 weights cached."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_cli import model_args
from typer.testing import CliRunner

from csm_cli.cli import app
from csm_cli.errors import CsmError
from csm_cli.loading.cache import INT8_WEIGHTS
from csm_cli.loading.generator import LoadOptions, load_generator

TEXT = "The quick brown fox."


def speak(model_dir, mimi_file, **load) -> tuple[np.ndarray, np.ndarray]:
    generator = load_generator(LoadOptions(str(model_dir), codec=mimi_file, device="cpu", **load))
    speech = generator.stream(TEXT, speaker=1, seed=11, max_seconds=1.0)
    audio = np.concatenate(list(speech))
    generator.close()
    return speech.codes, audio


@pytest.fixture(scope="module")
def transformers_output(transformers_dir, mimi_file):
    return speak(transformers_dir, mimi_file)


def test_original_and_transformers_layouts_give_identical_output(
    original_dir, transformers_dir, tokenizer_dir, mimi_file, transformers_output
):
    assert not (original_dir / "tokenizer.json").exists()
    codes, audio = speak(original_dir, mimi_file, tokenizer=str(tokenizer_dir))
    np.testing.assert_array_equal(codes, transformers_output[0])
    np.testing.assert_array_equal(audio, transformers_output[1])


def test_a_sharded_checkpoint_loads_the_same(tmp_path, hf_model, transformers_dir, mimi_file, transformers_output):
    hf_model.save_pretrained(tmp_path, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((transformers_dir / name).read_bytes())
    assert len(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    codes, _ = speak(tmp_path, mimi_file)
    np.testing.assert_array_equal(codes, transformers_output[0])


def test_weights_that_do_not_match_the_config_are_refused(tmp_path, transformers_dir, mimi_file):
    for item in transformers_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CsmError, match=r"do not match its config\.json"):
        load_generator(LoadOptions(str(tmp_path), codec=mimi_file, device="cpu"))


@pytest.mark.parametrize(("source", "message"), [
    ("/no/such/checkpoint", r"directory /no/such/checkpoint does not exist"),
    ("./relative/missing", "does not exist"),
])
def test_missing_local_directories_are_named(source, message, mimi_file):
    with pytest.raises(CsmError, match=message):
        load_generator(LoadOptions(source, codec=mimi_file, device="cpu"))


def test_a_directory_without_config_is_not_a_checkpoint(tmp_path, mimi_file):
    with pytest.raises(CsmError, match=r"has no config\.json"):
        load_generator(LoadOptions(str(tmp_path), codec=mimi_file, device="cpu"))


# --- int8 weights, made once and cached; through the CLI -----------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def int8_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return INT8_WEIGHTS.directory


def say_int8(out: Path, model_dir: Path, mimi_file: Path, *sampling: str) -> tuple[np.ndarray, str]:
    result = runner.invoke(app, ["say", TEXT, "--out", str(out), "--no-play", "--max-seconds", "0.5", "--quiet",
                                 "--quantize", "int8", *sampling, *model_args(model_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    return sf.read(out, dtype="int16")[0], result.stderr


def in_memory(entry: Path) -> dict[str, torch.Tensor]:
    """An entry's tensors, copied out of the file (which is mapped into memory, and about to be overwritten)."""
    return {name: tensor.clone() for name, tensor in torch.load(entry, mmap=True, weights_only=True).items()}


SEEDED = ("--seed", "7")


@pytest.fixture(scope="module")
def fresh_int8(tmp_path_factory, transformers_dir, mimi_file) -> tuple[np.ndarray, Path]:
    """Seeded speech of int8 weights quantized afresh, and the cache entry its run wrote."""
    directory = tmp_path_factory.mktemp("fresh-int8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(directory / "cache"))
        samples, _ = say_int8(directory / "fresh.wav", transformers_dir, mimi_file, *SEEDED)
        [entry] = INT8_WEIGHTS.directory.iterdir()
    return samples, entry


def cached(fresh_int8: tuple[np.ndarray, Path], int8_cache: Path) -> Path:
    """The fresh run's entry, in this test's cache."""
    int8_cache.mkdir(parents=True)
    return Path(shutil.copy(fresh_int8[1], int8_cache))


def test_int8_weights_are_made_once_then_read_from_the_cache(tmp_path, transformers_dir, mimi_file, int8_cache):
    greedy = ("--topk", "1", "--seed", "3")  # a seed too: bfloat16 logits tie, and ties are drawn
    fresh, _ = say_int8(tmp_path / "fresh.wav", transformers_dir, mimi_file, *greedy)
    [entry] = int8_cache.iterdir()
    inode = entry.stat().st_ino
    again, _ = say_int8(tmp_path / "cached.wav", transformers_dir, mimi_file, *greedy)
    np.testing.assert_array_equal(again, fresh)
    assert list(int8_cache.iterdir()) == [entry] and entry.stat().st_ino == inode  # read, not written again


def test_a_start_speaks_the_cached_int8_weights(tmp_path, transformers_dir, mimi_file, int8_cache, fresh_int8):
    entry = cached(fresh_int8, int8_cache)
    again, _ = say_int8(tmp_path / "cached.wav", transformers_dir, mimi_file, *SEEDED)
    np.testing.assert_array_equal(again, fresh_int8[0])
    # What the next run speaks if it reads the cache rather than quantizing: other int8 weights.
    state = in_memory(entry)
    torch.save({name: -tensor if tensor.dtype == torch.int8 else tensor for name, tensor in state.items()}, entry)
    other, _ = say_int8(tmp_path / "other.wav", transformers_dir, mimi_file, *SEEDED)
    assert not np.array_equal(other, fresh_int8[0])


@pytest.mark.parametrize("damage", ["truncated", "other tensors", "other shapes"])
def test_damaged_int8_weights_are_made_again_with_one_warning(tmp_path, transformers_dir, mimi_file, int8_cache,
                                                             fresh_int8, damage):
    entry = cached(fresh_int8, int8_cache)
    state = in_memory(entry)
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "other tensors":
        torch.save({f"old.{name}": tensor for name, tensor in state.items()}, entry)
    else:
        torch.save({name: t[1:] if t.dtype == torch.int8 else t for name, t in state.items()}, entry)
    again, stderr = say_int8(tmp_path / "again.wav", transformers_dir, mimi_file, *SEEDED)
    np.testing.assert_array_equal(again, fresh_int8[0])
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"csm: warning: the cached int8 weights {entry} are damaged (") and \
        line.endswith("): they are made again"), stderr
    assert in_memory(entry).keys() == state.keys()  # written again, whole
