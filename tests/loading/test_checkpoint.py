"""Both checkpoint layouts of the same weights, sharded checkpoints, and what is refused."""

import json

import numpy as np
import pytest

from csm_cli.errors import CsmError
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
